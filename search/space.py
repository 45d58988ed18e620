"""One search, read from a YAML space file and checked before anything starts.

    from ray import tune
    from search.space import load_space

    space = load_space("spaces/unet_depth.yaml").with_overrides({"epochs": 1})   # --set epochs=1
    tuner = tune.Tuner(
        tune.with_resources(trainable, space.resources()),
        tune_config=space.tune_config(),
        run_config=tune.RunConfig(checkpoint_config=space.checkpoint_config(),
                                  failure_config=space.failure_config()),
    )

The file's shape is DESIGN.md's ("The search space file"); every section is optional except `params:` or
`points:`. A file that cannot run is refused with a `SpaceError` whose message is one line:
`FILE: key.path: what is wrong; allowed: what would be accepted`. The parts live in their own modules:
`schema.py` (the refusals and the plain sections, with pydantic), `knobs.py` (fixed, params, points and the
depth rules), `objective.py`, `sampling.py` (samplers, the points searcher, ASHA), `population.py` (PBT and PB2)
and `resources.py`.

What a trial receives: its Ray config is always a flat dict of knob -> value, the field names of
`cyclegan.config.TrainConfig`: the `fixed:` knobs plus those drawn or listed for that trial. Knobs it does not
name keep the config's defaults, so `TrainConfig.from_dict(config)` is the trial's whole configuration. The
Tuner's `param_space` stays empty: the searcher supplies the whole config. Under PBT or PB2 (`scheduler: {type:
pbt, ...}`) Ray takes no searcher: the initial population (`initial_population`) goes to Tune's
BasicVariantGenerator as its points to evaluate, one trial each, and PBT then changes the mutated knobs of trials'
configs as they run. A PBT space may leave out both `params:` and `points:`: its members then differ only in the
mutated knobs, each drawn from its range.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm, Searcher

from cyclegan.config import UNET_KNOBS, TrainConfig
from cyclegan.sizes import DataSize
from search.knobs import (
    DEPTH_KNOBS,
    MAX_DEPTH,
    Param,
    check_depths,
    check_knob,
    check_together,
    check_unet_knobs,
    deepest_allowed,
    draw_order,
    generators,
    grid,
    parse_fixed,
    parse_params,
    parse_points,
)
from search.objective import (
    DEFAULT_WEIGHTS,
    OBJECTIVE,
    REPORTED_METRICS,
    SELECTABLE,
    Objective,
    ReportedObjectives,
    parse_objectives,
)
from search.packing import AutoResources, FixedShare
from search.population import PBT_CHECKPOINTS_KEPT, POPULATION_KINDS, Population, check_population
from search.resources import AUTO_ONLY, Resources, ResourcesSection, parse_resources
from search.sampling import (
    DEFAULT_NUM_SAMPLES,
    MAX_GRID_POINTS,
    DefineByRun,
    PointsSearcher,
    Schedule,
    check_sampler,
    check_schedule,
    grid_size,
    max_epochs,
    optuna_sampler,
)
from search.schema import (
    AUTO,
    OBJECTIVE_KEYS,
    POINT_NAME,
    SAMPLERS,
    SCHEDULERS,
    CheckpointSection,
    FailureSection,
    SchedulerSection,
    SearchSection,
    SelectSection,
    SpaceError,
    check_keys,
    check_section,
    fail,
    key_name,
    show,
)
from search.study import FidelityOptunaSearch

# The names callers import from here; Ray's pickles of a run (searcher state, trainables) also name some of them
# here, so that runs begun before the split resume.
__all__ = [
    "AUTO", "AUTO_ONLY", "DEFAULT_NUM_SAMPLES", "DEFAULT_WEIGHTS", "DEPTH_KNOBS", "MAX_DEPTH", "MAX_GRID_POINTS",
    "OBJECTIVE", "POINT_NAME", "REPORTED_METRICS", "SAMPLERS", "SCHEDULERS", "SELECTABLE", "TOP_KEYS",
    "DefineByRun", "Objective", "Param", "PointsSearcher", "ReportedObjectives", "Space", "SpaceError",
    "StoredOptunaSearch", "deepest_allowed", "load_space", "space_from_dict",
]
# Ray's pickles (a run's searcher state) name the class they hold; runs begun before it moved to study.py resume.
StoredOptunaSearch = FidelityOptunaSearch
DEFAULT_CONFIG = TrainConfig()
_PLAIN_SECTIONS = {"search": SearchSection, "scheduler": SchedulerSection, "resources": ResourcesSection,
                   "checkpoint": CheckpointSection, "select": SelectSection, "failure": FailureSection}
TOP_KEYS: tuple[str, ...] = ("objective", *_PLAIN_SECTIONS, "fixed", "params", "points")


@dataclass(frozen=True)
class Space:
    """A checked search space. Build it with `load_space`; change it with `with_overrides` / `replace_search`."""

    path: str
    objectives: tuple[Objective, ...]  # the first is `objective`; more than one: a multi-objective search
    sampler: str | None  # None for a points space
    num_samples: int  # trials to run; for points and grid spaces at most the number of points (the first ones run)
    max_concurrent: int | None  # None: as many as the resources allow
    seed: int  # seeds the Optuna sampler; the trainer's own `seed` is a knob like any other
    scheduler: str  # "asha" or "none"
    grace_period: int | None  # ASHA only, in epochs
    reduction_factor: float | None
    max_t: int | None
    gpus_per_trial: float | str  # a number, or "auto": each trial's share from its estimated memory
    cpus_per_trial: float
    trials_per_gpu: int  # auto: at most so many trials on one GPU
    gpu_memory_gib: float | None  # auto: each GPU's memory, where the driver cannot read it from its own GPU
    checkpoint_every: int  # epochs between a trial's checkpoints
    checkpoint_keep: int  # checkpoints Ray keeps per trial, the best by the objective (it also keeps the latest)
    top_k: int  # trials re-scored on the test split at the end
    max_failures: int  # retries of a crashed trial, from its last checkpoint
    fixed: dict[str, Any]
    params: dict[str, Param]  # file order; empty for a points space
    points: list[dict[str, Any]] | None  # as listed (without `fixed`), or None
    raw: dict[str, Any] = field(repr=False, compare=False)  # the mapping it was built from, for overrides
    population: Population | None = None  # PBT's or PB2's settings and mutations (scheduler pbt or pb2)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Space:
        """Applies `--set key=value` values (typed by `cyclegan.config.parse_overrides`) to every trial.

        A searched knob becomes fixed, a fixed one is replaced, and a points space's points lose the key. A ResNet
        generator set so drops the file's U-Net knobs too (they would shape nothing; set with it, they are refused).
        If no knob is left to search, the space becomes one point: a single trial.
        """
        if not overrides:
            return self
        for name, value in overrides.items():
            check_knob(self.path, f"--set {key_name(name)}", name, value)
        raw = copy.deepcopy(self.raw)
        dropped = set(overrides)
        if overrides.get("generator", "unet") != "unet":
            dropped |= set(UNET_KNOBS)
        for point in raw.get("points") or []:
            for name in dropped:
                point.pop(name, None)
        raw["fixed"] = {**{k: v for k, v in (raw.get("fixed") or {}).items() if k not in dropped}, **overrides}
        population = self.population is not None
        if population:
            # A mutated knob that --set fixes (or a ResNet leaves out) is no longer mutated; with none left, the
            # space is no longer PBT.
            mutations = {k: v for k, v in raw["scheduler"]["mutations"].items() if k not in dropped}
            raw["scheduler"] = {**raw["scheduler"], "mutations": mutations} if mutations else {"type": "none"}
            population = bool(mutations)
        params = raw.get("params")
        if isinstance(params, dict):
            for name in dropped:
                params.pop(name, None)
            if not params:
                del raw["params"]  # a PBT space needs none: its members differ in the mutated knobs
        if "params" not in raw and "points" not in raw and not population:
            raw["points"] = [{}]
            raw["search"] = {k: v for k, v in (raw.get("search") or {}).items() if k not in ("sampler", "num_samples")}
        setting = " ".join(f"--set {k}={v!r}" for k, v in overrides.items())
        return space_from_dict(raw, self.path, f"{self.path} with {setting}")

    def replace_search(self, *, num_samples: int | None = None, max_concurrent: int | None = None,
                       seed: int | None = None, gpus_per_trial: float | str | None = None,
                       cpus_per_trial: float | None = None, gpu_memory_gib: float | str | None = None) -> Space:
        """Applies the command line's `--num-samples`, `--max-concurrent`, ... flags; None leaves a value as it is.

        A fixed `gpus_per_trial` drops the file's `trials_per_gpu`, which only `auto` reads.
        """
        changes = {("search", "num_samples"): num_samples, ("search", "max_concurrent"): max_concurrent,
                   ("search", "seed"): seed, ("resources", "gpus_per_trial"): gpus_per_trial,
                   ("resources", "cpus_per_trial"): cpus_per_trial, ("resources", "gpu_memory_gib"): gpu_memory_gib}
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        raw = copy.deepcopy(self.raw)
        if gpus_per_trial is not None and gpus_per_trial != AUTO and isinstance(raw.get("resources"), dict):
            raw["resources"] = {k: v for k, v in raw["resources"].items() if k not in AUTO_ONLY}
        for (section, key), value in changes.items():
            raw[section] = {**(raw.get(section) or {}), key: value}
        flags = " ".join(f"--{key.replace('_', '-')} {value}" for (_, key), value in changes.items())
        return space_from_dict(raw, self.path, f"{self.path} with {flags}")

    @property
    def objective(self) -> Objective:
        """The first objective: what ASHA, checkpoint ranking and the test re-scoring use."""
        return self.objectives[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def reported_objectives(self) -> ReportedObjectives:
        """For the trainable: computes every objective from a trial's metrics."""
        return ReportedObjectives(self.objectives)

    def define_by_run(self) -> DefineByRun:
        """The function OptunaSearch takes as its `space`: draws one trial's knobs, returns its flat config."""
        if self.points is not None:
            raise ValueError(f"{self.path} lists points: there is nothing to sample")
        return DefineByRun(tuple(draw_order(self.params)), dict(self.fixed))

    def trial_points(self) -> list[dict[str, Any]] | None:
        """The flat configs a points or grid space runs, in order; None where Optuna samples the trials.

        More samples than points run the points again with the next seeds (seed + 1, + 2, ...): a repeat with
        the same seed would only reproduce a trial, while other seeds show the run-to-run spread.
        """
        if self.points is not None:
            points = self.points
        elif self.sampler == "grid":
            points = grid(self.params, self.fixed)
        else:
            return None
        configs = []
        for i in range(self.num_samples):
            config = {**self.fixed, **points[i % len(points)]}
            repeat = i // len(points)
            if repeat:
                config["seed"] = config.get("seed", TrainConfig().seed) + repeat
            configs.append(config)
        return configs

    @property
    def mutated(self) -> tuple[str, ...]:
        """The knobs PBT or PB2 mutates while trials train (none for other schedulers)."""
        return tuple(self.population.mutations) if self.population is not None else ()

    @property
    def uses_optuna(self) -> bool:
        """Whether Optuna's sampler chooses the trials (and a study records them): not for points, grid or PBT."""
        return self.population is None and self.trial_points() is None

    def initial_population(self) -> list[dict[str, Any]]:
        """PBT's first members: the points or grid configs, or configs drawn at random from `params:` (Optuna's
        RandomSampler, seeded by `search.seed`, through the same define-by-run function as a sampled space, so
        depth follows resize), each mutated knob not in `fixed:` drawn from its mutation's range."""
        if self.population is None:
            raise ValueError(f"{self.path} is not a PBT or PB2 space")
        points = self.trial_points()
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=self.seed))
        members = []
        for i in range(self.num_samples):
            trial = study.ask()
            config = dict(points[i]) if points is not None else self.define_by_run()(trial)
            for p in self.population.mutations.values():
                if p.name not in config:
                    config[p.name] = p.suggest(trial)
            members.append(config)
        return members

    def first_configs(self, n: int) -> list[dict[str, Any]]:
        """Up to `n` flat configs like the search's first trials: the points (or grid) it runs, PBT's first members,
        or for a sampled space the space's sampler's first draws, which are the first trials of a new study where
        the space sets a seed (TPE's first trials are its random start-up draws)."""
        points = self.trial_points()
        if points is not None:
            return points[:n]
        if self.population is not None:
            return self.initial_population()[:n]
        study = optuna.create_study(sampler=self._optuna_sampler())
        draw = self.define_by_run()
        return [draw(study.ask()) for _ in range(n)]

    def param_space(self) -> dict[str, Any]:
        """The Tuner's `param_space`: empty (the searcher supplies each trial's whole config) except under PBT,
        where Tune's BasicVariantGenerator takes only points whose keys its param_space has; each knob is there at
        the config's default, which a member that does not set it trains with anyway."""
        if self.population is None:
            return {}
        keys = {k for member in self.initial_population() for k in member}
        return {k: "" if k == POINT_NAME else getattr(DEFAULT_CONFIG, k) for k in sorted(keys)}

    def make_searcher(self, storage: optuna.storages.BaseStorage | None = None, study_name: str | None = None
                      ) -> Searcher | SearchAlgorithm:
        """OptunaSearch for sampled spaces, PointsSearcher for points and grid spaces, and for PBT and PB2 (which
        refuse a searcher) Tune's BasicVariantGenerator with the initial population as its points.

        With `storage` (e.g. `optuna.storages.RDBStorage("sqlite:///runs/NAME/optuna.db")`) the Optuna study
        `study_name` lives there: OptunaSearch creates it, or loads it if it exists (`load_if_exists=True`), and
        tells it every trial, so optuna-dashboard and `optuna.load_study` see the search as it runs. Points and
        grid spaces have no sampler and no study; they ignore both. Several objectives go to OptunaSearch as
        lists of metrics and modes (Optuna's multi-objective study; it then records no intermediate values).
        Either way the study is told each trial's fidelity: stopped early is PRUNED (`FidelityOptunaSearch`).

        Not wrapped in a ConcurrencyLimiter: `tune_config()` passes `max_concurrent_trials`, which does that.
        """
        if self.population is not None:
            return BasicVariantGenerator(points_to_evaluate=self.initial_population(),
                                         max_concurrent=self.max_concurrent or 0)
        points = self.trial_points()
        if points is not None:
            return PointsSearcher(points, metric=OBJECTIVE, mode=self.objective.mode)
        if self.multi_objective:
            metric: str | list[str] = list(self.reported_objectives().keys)
            mode: str | list[str] = [o.mode for o in self.objectives]
        else:
            metric, mode = OBJECTIVE, self.objective.mode
        return FidelityOptunaSearch(space=self.define_by_run(), metric=metric, mode=mode,
                                    sampler=self._optuna_sampler(), storage=storage, study_name=study_name)

    def _optuna_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna_sampler(self.sampler, self.seed)

    def make_scheduler(self) -> TrialScheduler:
        """ASHA, PBT or PB2 on the reported `epoch`, or FIFO; metric and mode come from the TuneConfig."""
        if self.population is not None:
            return self.population.make()
        return Schedule(self.scheduler, self.grace_period, self.reduction_factor, self.max_t).make()

    def tune_config(self, storage: optuna.storages.BaseStorage | None = None, study_name: str | None = None
                    ) -> tune.TuneConfig:
        """Tune selects, schedules and keeps checkpoints by the first objective; the searcher sees them all."""
        return tune.TuneConfig(metric=OBJECTIVE, mode=self.objective.mode,
                               search_alg=self.make_searcher(storage, study_name),
                               scheduler=self.make_scheduler(), num_samples=self.num_samples,
                               # PBT's BasicVariantGenerator limits itself (Tune wraps only a Searcher).
                               max_concurrent_trials=None if self.population else self.max_concurrent)

    @property
    def auto_gpus(self) -> bool:
        return self.gpus_per_trial == AUTO

    @property
    def wants_gpus(self) -> bool:
        return self.auto_gpus or self.gpus_per_trial > 0

    def resources(self, gpu_bytes: int | None = None, data: DataSize | None = None
                  ) -> dict[str, float] | AutoResources | FixedShare:
        """For `tune.with_resources(trainable, space.resources(...))`: a fixed share as a dict, or for `auto` the
        callable that gives each trial its share (`search.packing.AutoResources`), which needs each GPU's memory:
        `gpu_memory_gib` where the space sets it, else `gpu_bytes` (the driver's GPU). Without either, auto is
        refused with a SpaceError that says to set it. `data` sizes auto's shares with the data (default: none).
        """
        return Resources(self.gpus_per_trial, self.cpus_per_trial, self.trials_per_gpu,
                         self.gpu_memory_gib).for_tune(self.path, gpu_bytes, data)

    def checkpoint_config(self) -> tune.CheckpointConfig:
        return tune.CheckpointConfig(num_to_keep=self.checkpoint_keep, checkpoint_score_attribute=OBJECTIVE,
                                     checkpoint_score_order=self.objective.mode)

    def failure_config(self) -> tune.FailureConfig:
        return tune.FailureConfig(max_failures=self.max_failures)


def load_space(path: str | Path) -> Space:
    """Reads and checks one space file; raises SpaceError naming the file and the key."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        fail(source, "(file)", f"cannot read it: {e}", "a readable UTF-8 YAML file")
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as e:  # PyYAML raises ValueError for impossible dates
        fail(source, "(file)", f"not valid YAML: {e}", "a YAML mapping")
    return space_from_dict(raw, source)


def space_from_dict(raw: Any, path: str = "<dict>", source: str | None = None) -> Space:
    """Checks a space given as the mapping a YAML file holds; `source` names it in errors (default: `path`)."""
    src = source or path
    if not isinstance(raw, dict):
        fail(src, "(top level)", f"expected a mapping, got {show(raw)}", f"a mapping of {', '.join(TOP_KEYS)}")
    check_keys(src, "", raw, TOP_KEYS)
    scheduler_raw = raw.get("scheduler")
    population = isinstance(scheduler_raw, dict) and scheduler_raw.get("type") in POPULATION_KINDS
    if "params" in raw and "points" in raw or not ("params" in raw or "points" in raw or population):
        fail(src, "(top level)", "has both params and points" if "params" in raw else "has neither params nor points",
             "params: (knobs to search) or points: (configurations to run), one of them (PBT: or neither)")
    if isinstance(raw.get("objective"), dict):
        check_keys(src, "objective", raw["objective"], OBJECTIVE_KEYS)
    search, scheduler, resources, checkpoint, select, failure = (
        check_section(src, name, raw.get(name), model) for name, model in _PLAIN_SECTIONS.items())
    fixed = parse_fixed(src, raw.get("fixed"))
    if "params" in raw:
        params, points = parse_params(src, raw["params"], fixed), None
        check_unet_knobs(src, generators(fixed, params), fixed, params)
        check_depths(src, fixed, params)
        check_together(src, fixed, params)
    elif "points" in raw:
        params, points = {}, parse_points(src, raw["points"], fixed)
    else:
        params, points = {}, None  # a PBT space whose members differ only in the mutated knobs

    objectives = parse_objectives(src, raw.get("objective"))
    sampler = check_sampler(src, search, params, points, default="random" if population else "tpe")
    if sampler == "cmaes" and len(objectives) > 1:
        fail(src, "search.sampler", "Optuna's CMA-ES optimises one objective, and the space names several",
             "tpe or nsga2 (multi-objective), random or grid")
    n_points = len(points) if points is not None else grid_size(src, params, fixed) if sampler == "grid" else None
    num_samples = search.num_samples or (DEFAULT_NUM_SAMPLES if n_points is None else n_points)
    pbt = None
    if population:
        pbt = check_population(src, scheduler_raw, scheduler, fixed, params, search.sampler, num_samples)
        schedule = Schedule(scheduler.type)
        if "keep" not in (raw.get("checkpoint") or {}):
            checkpoint = checkpoint.model_copy(update={"keep": PBT_CHECKPOINTS_KEPT})
    else:
        schedule = check_schedule(src, scheduler_raw or {}, scheduler, max_epochs(fixed, params, points),
                                  default="asha" if points is None else "none")
    share = parse_resources(src, raw.get("resources") or {}, resources)
    return Space(
        path=path,
        objectives=objectives,
        sampler=sampler,
        num_samples=num_samples,
        max_concurrent=search.max_concurrent,
        seed=search.seed,
        scheduler=schedule.kind,
        grace_period=schedule.grace_period,
        reduction_factor=schedule.reduction_factor,
        max_t=schedule.max_t,
        gpus_per_trial=share.gpus_per_trial,
        cpus_per_trial=share.cpus_per_trial,
        trials_per_gpu=share.trials_per_gpu,
        gpu_memory_gib=share.gpu_memory_gib,
        checkpoint_every=checkpoint.every,
        checkpoint_keep=checkpoint.keep,
        top_k=select.top_k,
        max_failures=failure.max_failures,
        fixed=fixed,
        params=params,
        points=points,
        raw=copy.deepcopy(raw),
        population=pbt,
    )
