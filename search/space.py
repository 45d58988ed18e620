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
`FILE: key.path: what is wrong; allowed: what would be accepted`.

What a trial receives: its Ray config is always a flat dict of knob -> value, the field names of
`cyclegan.config.TrainConfig`: the `fixed:` knobs plus those drawn or listed for that trial. Knobs it does not
name keep the config's defaults, so `TrainConfig.from_dict(config)` is the trial's whole configuration.
- `params:` with sampler tpe, random or cmaes: `OptunaSearch` calls `define_by_run()` once per trial. `resize` is
  drawn first, then each depth knob within what that resize allows, then the rest in file order.
- `points:`, and `params:` with sampler grid (expanded to every allowed combination): `PointsSearcher` hands out
  one point per trial, in order. Unlike `tune.grid_search`, which would nest them under one key, each trial's
  config is the point itself.
In both cases the Tuner's `param_space` stays empty: the searcher supplies the whole config.

Objectives: one (a metric, or a weighted sum of several), or several for a multi-objective search, e.g.
`objective: {metrics: [ssim_t1_t2_head, loss_cycle], modes: [max, min]}` or a list of the single forms. A trial
reports the first as `objective`: ASHA stops trials by it, checkpoints are ranked by it and the winner is
re-scored on the test split by it. With several, each is also reported as `objective_0`, `objective_1`, ...,
and Optuna's sampler (TPE or NSGA-II) searches them all: `make_searcher` gives OptunaSearch the lists.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import optuna
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from cyclegan.config import CHOICES, FIELD_NAMES, FIELD_TYPES, ConfigError, TrainConfig
from cyclegan.metrics import IMAGE_METRICS
from cyclegan.metrics import REPORTED_METRICS as TRAINER_METRICS
from search.study import FidelityOptunaSearch

if TYPE_CHECKING:
    from search.packing import AutoResources

OBJECTIVE = "objective"  # the key every trial reports its (first) objective under, and what Tune selects on
# What a trial reports each epoch (DESIGN.md, "Contracts"): the trainer's losses and image metrics, and the
# objective the trainable computes from them.
REPORTED_METRICS: tuple[str, ...] = (*TRAINER_METRICS, OBJECTIVE)
# An objective may weigh any of the trainer's metrics except the epoch counter.
SELECTABLE: tuple[str, ...] = tuple(m for m in TRAINER_METRICS if m != "epoch")
# The objective measured to rank trials closest to the truth on the paired benchmarks (docs/selection.md): how
# closely the head's intensities in each translation follow real slices of the other contrast, both directions
# alike. Cycle SSIM, the old partner, rewards a generator that hides its input in its output.
DEFAULT_WEIGHTS: dict[str, float] = {"contrast_t1_t2": 0.5, "contrast_t2_t1": 0.5}

SAMPLERS = ("tpe", "random", "cmaes", "nsga2", "grid")
SCHEDULERS = ("asha", "none")
# Each halves the image once per level, so resize caps it; cyclegan.config owns the exact rule.
DEPTH_KNOBS = ("unet_depth", "disc_layers")
MAX_DEPTH = 30  # 2**30-pixel slices are beyond any data; the cap also keeps 2**depth cheap to compute
_ANY_RESIZE = 2 ** (MAX_DEPTH + 4)  # large enough for any depth
MAX_GRID_POINTS = 10_000
DEFAULT_NUM_SAMPLES = 16
_DEFAULTS = TrainConfig()
_SECTIONS: dict[str, tuple[str, ...]] = {
    "objective": ("metric", "weights", "mode", "metrics", "modes"),
    "search": ("sampler", "num_samples", "max_concurrent", "seed"),
    "scheduler": ("type", "grace_period", "reduction_factor", "max_t"),
    "resources": ("gpus_per_trial", "cpus_per_trial", "trials_per_gpu", "gpu_memory_gib"),
    "checkpoint": ("every", "keep"),
    "select": ("top_k",),
    "failure": ("max_failures",),
}
# `gpus_per_trial: auto` sizes each trial's GPU share from its estimated memory (search/packing.py); these two keys
# go with it only: at most so many trials on one GPU, and each GPU's memory where the driver has no GPU to ask.
AUTO = "auto"
AUTO_ONLY = ("trials_per_gpu", "gpu_memory_gib")
DEFAULT_TRIALS_PER_GPU = 8
MOST_TRIALS_PER_GPU = 100  # shares are whole hundredths of a GPU
# A point may carry a label (`name: V1`); it travels in the trial's config beside the knobs, for the report.
POINT_NAME = "name"
TOP_KEYS: tuple[str, ...] = (*_SECTIONS, "fixed", "params", "points")
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "choice": ("choice",), "int": ("int", "step", "log"), "float": ("float", "step", "log")}
_DISTRIBUTION_HELP = "{choice: [a, ...]}, {int: [low, high], step: 1, log: false} or {float: [low, high], log: false}"
_OBJECTIVE_HELP = ("{metric: NAME, mode: max}, {weights: {NAME: w, ...}, mode: max}, or several: "
                   "{metrics: [NAME, NAME, ...], modes: [max, min, ...]} or a list of the single forms")


class SpaceError(ValueError):
    """A space file, or an override of it, that cannot run; one line: `FILE: key: problem; allowed: ...`."""


def _fail(source: str, key: str, problem: str, allowed: str) -> NoReturn:
    raise SpaceError(" ".join(f"{source}: {key}: {problem}; allowed: {allowed}".splitlines()))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    """A finite number as a float, or None. YAML 1.1 reads `1e-4` (no point) as a string, so such strings count."""
    if not (_is_int(value) or isinstance(value, (float, str))):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


@functools.cache
def deepest_allowed(knob: str, resize: int) -> int:
    """The deepest value of a depth knob that the config accepts at this resize (0: none).

    Asked of TrainConfig itself (resize a multiple of 2**unet_depth, 4 * 2**disc_layers <= resize today), so the search
    follows the config's rule as it is, not a copy of it.
    """
    depth = 0
    while depth < MAX_DEPTH:
        try:
            TrainConfig.from_dict({**{k: 1 for k in DEPTH_KNOBS}, "resize": resize, knob: depth + 1})
        except ConfigError:
            break
        depth += 1
    return depth


def _allowed(name: str) -> str:
    if name in CHOICES:
        return f"one of {list(CHOICES[name])}"
    kind = FIELD_TYPES[name]
    return f"{'an' if kind == 'int' else 'a'} {kind} that cyclegan.config.TrainConfig accepts for {name}"


def _knob(source: str, key: str, name: Any, value: Any) -> Any:
    """Checks one knob's value with the config's own rules and returns it as the config types it (1 -> 1.0)."""
    if name not in FIELD_NAMES:
        _fail(source, key, "unknown knob", ", ".join(FIELD_NAMES))
    if name in DEPTH_KNOBS and _is_int(value) and value > MAX_DEPTH:
        _fail(source, key, f"{name}={value} needs resize >= 2**{value}", f"{name} <= {MAX_DEPTH}")
    if FIELD_TYPES[name] == "float" and _is_int(value) and _number(value) is None:
        _fail(source, key, f"{name}={value} is too large for a float", _allowed(name))
    # Probe the value alone: the other depth knob at 1, and for a depth a resize that fits any, so that the only
    # rule the probe can break is one about this value. How depth and resize go together is checked later.
    probe: dict[str, Any] = {name: value, **{k: 1 for k in DEPTH_KNOBS if k != name}}
    if name in DEPTH_KNOBS:
        probe["resize"] = _ANY_RESIZE
    try:
        typed = getattr(TrainConfig.from_dict(probe), name)
    except ConfigError as e:
        _fail(source, key, str(e), _allowed(name))
    if isinstance(typed, float) and not math.isfinite(typed):
        _fail(source, key, f"{name}={typed} is not a finite number", _allowed(name))
    return typed


@dataclass(frozen=True)
class Param:
    """One searched knob: a choice of values, or an int or float range (inclusive, optional step, optional log)."""

    name: str
    kind: str  # "choice", "int" or "float"
    choices: tuple[Any, ...] = ()
    low: Any = None
    high: Any = None
    step: Any = None  # ints: >= 1; floats: None (continuous) or > 0
    log: bool = False

    def suggest(self, trial: optuna.Trial, deepest: int | None = None) -> Any:
        """Draws this knob in an Optuna trial; `deepest` caps a depth range at what the trial's resize allows."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self._high(deepest), step=self.step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def values(self, deepest: int | None = None) -> list[Any]:
        """Every value, for a grid (not for float ranges)."""
        if self.kind == "choice":
            return list(self.choices)
        return list(range(self.low, self._high(deepest) + 1, self.step))

    def count(self) -> int:
        return len(self.choices) if self.kind == "choice" else (self.high - self.low) // self.step + 1

    def bounds(self) -> tuple[Any, Any]:
        return (min(self.choices), max(self.choices)) if self.kind == "choice" else (self.low, self.high)

    def _high(self, deepest: int | None) -> int:
        # TPE accepts a range whose upper end moves between trials (only a choice's values must stay the same);
        # the clamped end stays on the step grid so Optuna does not have to adjust it.
        if deepest is None or deepest >= self.high:
            return self.high
        return deepest - (deepest - self.low) % self.step


@dataclass(frozen=True)
class Objective:
    """What the search selects on: one reported metric, or a weighted sum of several (`metric` is then None)."""

    weights: dict[str, float]
    mode: str = "max"
    metric: str | None = None
    name: ClassVar[str] = OBJECTIVE

    def value(self, metrics: Mapping[str, Any]) -> float:
        missing = [m for m in self.weights if m not in metrics]
        if missing:
            raise KeyError(f"the objective needs {missing[0]!r}, which the reported metrics lack")
        return float(sum(w * float(metrics[m]) for m, w in self.weights.items()))


@dataclass(frozen=True)
class ReportedObjectives:
    """What a trial adds to its metrics each epoch: `objective` (the first) and, for several, `objective_<i>`.

    A class, not a closure, so that `tune.with_parameters` can pickle it for the trials.
    """

    objectives: tuple[Objective, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The reported metric of each objective, in order: what OptunaSearch is told to optimise."""
        if len(self.objectives) == 1:
            return (OBJECTIVE,)
        return tuple(f"{OBJECTIVE}_{i}" for i in range(len(self.objectives)))

    def __call__(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        values = [o.value(metrics) for o in self.objectives]
        return {OBJECTIVE: values[0], **dict(zip(self.keys, values))}


@dataclass(frozen=True)
class DefineByRun:
    """Optuna's define-by-run space. A class, not a closure, so that OptunaSearch can pickle it with its state."""

    params: tuple[Param, ...]  # in draw order: resize before the depth knobs
    fixed: dict[str, Any]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        drawn: dict[str, Any] = {}
        for param in self.params:
            drawn[param.name] = param.suggest(trial, _depth_limit(param.name, {**self.fixed, **drawn}))
        return {**self.fixed, **drawn}


def _depth_limit(name: str, values: Mapping[str, Any]) -> int | None:
    return deepest_allowed(name, values.get("resize", _DEFAULTS.resize)) if name in DEPTH_KNOBS else None


def _draw_order(params: Mapping[str, Param]) -> list[Param]:
    return sorted(params.values(), key=lambda p: p.name != "resize")  # stable: the rest keep file order


def _grid(params: Mapping[str, Param], fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for param in _draw_order(params):
        combos = [{**c, param.name: v} for c in combos
                  for v in param.values(_depth_limit(param.name, {**fixed, **c}))]
    return combos


class PointsSearcher(Searcher):
    """A Tune searcher that runs a list of configs, one trial each, in order, then tells Tune it has finished."""

    def __init__(self, points: list[dict[str, Any]], metric: str | None = None, mode: str | None = None):
        super().__init__(metric=metric, mode=mode)
        self._points = [dict(p) for p in points]
        self._next = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self._next >= len(self._points):
            return Searcher.FINISHED
        self._next += 1
        return dict(self._points[self._next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # a list learns nothing from results

    def get_state(self) -> dict[str, Any]:
        return {"points": self._points, "next": self._next}

    def set_state(self, state: dict[str, Any]) -> None:
        self._points, self._next = state["points"], state["next"]

    # Tune saves the searcher with the experiment, so a resumed search does not rerun the points it handed out.
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(pickle.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(pickle.loads(Path(checkpoint_path).read_bytes()))


# Ray's pickles (a run's searcher state) name the class they hold; runs begun before it moved to study.py resume.
StoredOptunaSearch = FidelityOptunaSearch


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

    def with_overrides(self, overrides: Mapping[str, Any]) -> Space:
        """Applies `--set key=value` values (typed by `cyclegan.config.parse_overrides`) to every trial.

        A searched knob becomes fixed, a fixed one is replaced, and a points space's points lose the key. If no
        knob is left to search, the space becomes one point: a single trial.
        """
        if not overrides:
            return self
        for name, value in overrides.items():
            _knob(self.path, f"--set {_key(name)}", name, value)
        raw = copy.deepcopy(self.raw)
        for point in raw.get("points") or []:
            for name in overrides:
                point.pop(name, None)
        raw["fixed"] = {**(raw.get("fixed") or {}), **overrides}
        params = raw.get("params")
        if isinstance(params, dict):
            for name in overrides:
                params.pop(name, None)
            if not params:
                del raw["params"]
                raw["points"] = [{}]
                raw["search"] = {k: v for k, v in (raw.get("search") or {}).items()
                                 if k not in ("sampler", "num_samples")}
        setting = " ".join(f"--set {k}={v!r}" for k, v in overrides.items())
        return space_from_dict(raw, self.path, f"{self.path} with {setting}")

    def replace_search(self, *, num_samples: int | None = None, max_concurrent: int | None = None,
                       seed: int | None = None, gpus_per_trial: float | str | None = None,
                       cpus_per_trial: float | None = None, gpu_memory_gib: float | str | None = None) -> Space:
        """Applies the command line's `--num-samples`, `--max-concurrent`, ... flags; None leaves a value as it is.

        A fixed `gpus_per_trial` drops the file's `trials_per_gpu` and `gpu_memory_gib`, which only `auto` reads.
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
        return DefineByRun(tuple(_draw_order(self.params)), dict(self.fixed))

    def trial_points(self) -> list[dict[str, Any]] | None:
        """The flat configs a points or grid space runs, in order; None where Optuna samples the trials.

        More samples than points run the points again with the next seeds (seed + 1, + 2, ...): a repeat with
        the same seed would only reproduce a trial, while other seeds show the run-to-run spread.
        """
        if self.points is not None:
            points = self.points
        elif self.sampler == "grid":
            points = _grid(self.params, self.fixed)
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

    def make_searcher(self, storage: optuna.storages.BaseStorage | None = None, study_name: str | None = None
                      ) -> Searcher:
        """OptunaSearch for sampled spaces, PointsSearcher for points and grid spaces.

        With `storage` (e.g. `optuna.storages.RDBStorage("sqlite:///runs/NAME/optuna.db")`) the Optuna study
        `study_name` lives there: OptunaSearch creates it, or loads it if it exists (`load_if_exists=True`), and
        tells it every trial, so optuna-dashboard and `optuna.load_study` see the search as it runs. Points and
        grid spaces have no sampler and no study; they ignore both. Several objectives go to OptunaSearch as
        lists of metrics and modes (Optuna's multi-objective study; it then records no intermediate values).
        Either way the study is told each trial's fidelity: stopped early is PRUNED (`FidelityOptunaSearch`).

        Not wrapped in a ConcurrencyLimiter: `tune_config()` passes `max_concurrent_trials`, which does that.
        """
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
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.sampler == "cmaes":
            # CMA-ES handles numbers only; Optuna draws the choices (and the per-resize depth ranges) at random.
            return optuna.samplers.CmaEsSampler(seed=self.seed)
        if self.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed)  # multi-objective too (MOTPE)

    def make_scheduler(self) -> TrialScheduler:
        """ASHA on the reported `epoch`, or FIFO; metric and mode come from the TuneConfig."""
        if self.scheduler == "asha":
            return ASHAScheduler(time_attr="epoch", grace_period=self.grace_period,
                                 reduction_factor=self.reduction_factor, max_t=self.max_t)
        return FIFOScheduler()

    def tune_config(self, storage: optuna.storages.BaseStorage | None = None, study_name: str | None = None
                    ) -> tune.TuneConfig:
        """Tune selects, schedules and keeps checkpoints by the first objective; the searcher sees them all."""
        return tune.TuneConfig(metric=OBJECTIVE, mode=self.objective.mode,
                               search_alg=self.make_searcher(storage, study_name),
                               scheduler=self.make_scheduler(), num_samples=self.num_samples,
                               max_concurrent_trials=self.max_concurrent)

    @property
    def auto_gpus(self) -> bool:
        return self.gpus_per_trial == AUTO

    @property
    def wants_gpus(self) -> bool:
        return self.auto_gpus or self.gpus_per_trial > 0

    def resources(self, gpu_bytes: int | None = None) -> dict[str, float] | AutoResources:
        """For `tune.with_resources(trainable, space.resources(...))`: a fixed share as a dict, or for `auto` the
        callable that gives each trial its share (`search.packing.AutoResources`), which needs each GPU's memory:
        `gpu_memory_gib` where the space sets it, else `gpu_bytes` (the driver's GPU). Without either, auto is
        refused with a SpaceError that says to set it.
        """
        if not self.auto_gpus:
            return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}
        from search.packing import AutoResources  # packing imports this module

        if self.gpu_memory_gib is not None:
            gpu_bytes = int(self.gpu_memory_gib * 2**30)
        if gpu_bytes is None:
            _fail(self.path, "resources.gpu_memory_gib", "gpus_per_trial auto sizes each trial's share from its "
                  "GPU's memory, and this driver has no GPU to read it from",
                  "gpu_memory_gib: GIB under resources, or --gpu-memory-gib GIB (e.g. 22 for a 24 GB A10G or L4)")
        return AutoResources(cpus=self.cpus_per_trial, gpu_bytes=gpu_bytes, most_per_gpu=self.trials_per_gpu)

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
        _fail(source, "(file)", f"cannot read it: {e}", "a readable UTF-8 YAML file")
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as e:  # PyYAML raises ValueError for impossible dates
        _fail(source, "(file)", f"not valid YAML: {e}", "a YAML mapping")
    return space_from_dict(raw, source)


def space_from_dict(raw: Any, path: str = "<dict>", source: str | None = None) -> Space:
    """Checks a space given as the mapping a YAML file holds; `source` names it in errors (default: `path`)."""
    src = source or path
    if not isinstance(raw, dict):
        _fail(src, "(top level)", f"expected a mapping, got {_show(raw)}", f"a mapping of {', '.join(TOP_KEYS)}")
    for key in raw:
        if key not in TOP_KEYS:
            _fail(src, _key(key), "unknown key", ", ".join(TOP_KEYS))
    if ("params" in raw) == ("points" in raw):
        _fail(src, "(top level)", "has both params and points" if "params" in raw else "has neither params nor points",
              "params: (knobs to search) or points: (configurations to run), one of them")
    sections = {name: _section(src, raw, name) for name in _SECTIONS if name != "objective"}
    fixed = _fixed(src, raw.get("fixed"))
    if "params" in raw:
        params, points = _params(src, raw["params"], fixed), None
        _check_depths(src, fixed, params)
        _check_together(src, fixed, params)
    else:
        params, points = {}, _points(src, raw["points"], fixed)

    search = sections["search"]
    objectives = _objectives(src, raw.get("objective"))
    sampler = _sampler(src, search, params, points)
    if sampler == "cmaes" and len(objectives) > 1:
        _fail(src, "search.sampler", "Optuna's CMA-ES optimises one objective, and the space names several",
              "tpe or nsga2 (multi-objective), random or grid")
    n_points = len(points) if points is not None else _grid_size(src, params, fixed) if sampler == "grid" else None
    if n_points is None:
        num_samples = _int(src, "search.num_samples", search.get("num_samples", DEFAULT_NUM_SAMPLES), 1)
    else:
        num_samples = _int(src, "search.num_samples", search.get("num_samples", n_points), 1)
    max_concurrent = search.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = _int(src, "search.max_concurrent", max_concurrent, 1)
    seed = _int(src, "search.seed", search.get("seed", 0), 0, high=2**32 - 1, why="numpy seeds are 32-bit")

    scheduler, grace_period, reduction_factor, max_t = _scheduler(
        src, sections["scheduler"], _max_epochs(fixed, params, points), default="asha" if points is None else "none")
    resources, checkpoint = sections["resources"], sections["checkpoint"]
    gpus_per_trial, trials_per_gpu, gpu_memory_gib = _gpus(src, resources)
    return Space(
        path=path,
        objectives=objectives,
        sampler=sampler,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        seed=seed,
        scheduler=scheduler,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
        max_t=max_t,
        gpus_per_trial=gpus_per_trial,
        cpus_per_trial=_resource(src, "resources.cpus_per_trial", resources.get("cpus_per_trial", 1)),
        trials_per_gpu=trials_per_gpu,
        gpu_memory_gib=gpu_memory_gib,
        checkpoint_every=_int(src, "checkpoint.every", checkpoint.get("every", 1), 1),
        checkpoint_keep=_int(src, "checkpoint.keep", checkpoint.get("keep", 2), 1),
        top_k=_int(src, "select.top_k", sections["select"].get("top_k", 3), 1),
        max_failures=_int(src, "failure.max_failures", sections["failure"].get("max_failures", 2), 0),
        fixed=fixed,
        params=params,
        points=points,
        raw=copy.deepcopy(raw),
    )


def _section(src: str, raw: dict, name: str) -> dict:
    value = raw.get(name)
    if value is None:  # absent, or a YAML key whose entries are all commented out
        return {}
    allowed = _SECTIONS[name]
    if not isinstance(value, dict):
        _fail(src, name, f"expected a mapping, got {_show(value)}", f"a mapping of {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            _fail(src, f"{name}.{_key(key)}", "unknown key", ", ".join(allowed))
    return value


def _int(src: str, key: str, value: Any, low: int, high: int | None = None, why: str = "") -> int:
    in_range = _is_int(value) and value >= low and (high is None or value <= high)
    if not in_range:
        span = f"an int >= {low}" if high is None else f"an int in {low}..{high}"
        _fail(src, key, f"got {_show(value)}" + (f" ({why})" if why else ""), span)
    return value


def _resource(src: str, key: str, value: Any) -> float:
    number = _number(value)
    if number is None or number < 0 or (number > 1 and not number.is_integer()):
        _fail(src, key, f"got {_show(value)}", "a number >= 0: a fraction of one device, or whole devices")
    return number


def _gpus(src: str, resources: dict) -> tuple[float | str, int, float | None]:
    """gpus_per_trial (a number, or auto), and auto's trials_per_gpu and gpu_memory_gib."""
    value = resources.get("gpus_per_trial", 0.25)
    if value != AUTO:
        number = _number(value)
        if number is None or number < 0 or (number > 1 and not number.is_integer()):
            _fail(src, "resources.gpus_per_trial", f"got {_show(value)}",
                  "auto (a share from each trial's estimated memory), or a number >= 0: a fraction of one GPU, "
                  "or whole GPUs")
        for key in AUTO_ONLY:
            if key in resources:
                _fail(src, f"resources.{key}", f"goes with gpus_per_trial auto, and it is {number:g}",
                      f"gpus_per_trial: auto with {key}, or no {key}")
        return number, DEFAULT_TRIALS_PER_GPU, None
    most = _int(src, "resources.trials_per_gpu", resources.get("trials_per_gpu", DEFAULT_TRIALS_PER_GPU), 1,
                high=MOST_TRIALS_PER_GPU, why="shares are whole hundredths of a GPU")
    gib = resources.get("gpu_memory_gib")
    if gib is not None:
        number = _number(gib)
        if number is None or number <= 0:
            _fail(src, "resources.gpu_memory_gib", f"got {_show(gib)}",
                  "a number of GiB > 0: each GPU's memory, e.g. 22 for a 24 GB A10G or L4, 79 for an 80 GB H100")
        gib = number
    return AUTO, most, gib


def _fixed(src: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        _fail(src, "fixed", f"expected a mapping, got {_show(raw)}", "a mapping of knob: value")
    return {name: _knob(src, f"fixed.{_key(name)}", name, value) for name, value in raw.items()}


def _params(src: str, raw: Any, fixed: dict[str, Any]) -> dict[str, Param]:
    if not isinstance(raw, dict) or not raw:
        _fail(src, "params", f"expected a non-empty mapping of knob: distribution, got {_show(raw)}",
              f"knobs {', '.join(FIELD_NAMES)}, each {_DISTRIBUTION_HELP}")
    params = {}
    for name, spec in raw.items():
        key = f"params.{_key(name)}"
        if name not in FIELD_NAMES:
            _fail(src, key, "unknown knob", ", ".join(FIELD_NAMES))
        if name in fixed:
            _fail(src, key, "is also in fixed", "each knob either fixed or searched")
        params[name] = _param(src, key, name, spec)
    return params


def _param(src: str, key: str, name: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        _fail(src, key, f"expected a distribution, got {_show(spec)}", _DISTRIBUTION_HELP)
    kinds = [k for k in _DISTRIBUTIONS if k in spec]
    if len(kinds) != 1:
        _fail(src, key, f"names {' and '.join(kinds) or 'no distribution'}", f"exactly one of {_DISTRIBUTION_HELP}")
    kind = kinds[0]
    for k in spec:
        if k not in _DISTRIBUTIONS[kind]:
            _fail(src, f"{key}.{_key(k)}", "unknown key", ", ".join(_DISTRIBUTIONS[kind]))
    if kind == "choice":
        return _choice(src, f"{key}.choice", name, spec["choice"])
    return _range(src, key, name, kind, spec)


def _choice(src: str, key: str, name: str, values: Any) -> Param:
    if not isinstance(values, list) or not values:
        _fail(src, key, f"expected a non-empty list, got {_show(values)}", f"a list of {_allowed(name)}")
    typed = [_knob(src, f"{key}[{i}]", name, v) for i, v in enumerate(values)]
    for i, value in enumerate(typed):
        if value in typed[:i]:
            _fail(src, f"{key}[{i}]", f"{_show(value)} is listed twice", "each value once")
    return Param(name, "choice", choices=tuple(typed))


def _range(src: str, key: str, name: str, kind: str, spec: dict) -> Param:
    knob_type = FIELD_TYPES[name]
    if knob_type != kind:
        _fail(src, f"{key}.{kind}", f"{name} is a {knob_type} knob",
              "a choice" + (f" or a {knob_type} range" if knob_type in _DISTRIBUTIONS else ""))
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        _fail(src, f"{key}.{kind}", f"expected [low, high], got {_show(bounds)}", f"two {kind}s, low < high")
    low, high = (_knob(src, f"{key}.{kind}[{i}]", name, v) for i, v in enumerate(bounds))
    if not low < high:
        _fail(src, f"{key}.{kind}", f"low {low} is not below high {high}", "low < high (one value belongs in fixed)")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        _fail(src, f"{key}.log", f"got {_show(log)}", "true or false")
    if log and low <= 0:
        _fail(src, f"{key}.log", f"a log range needs low > 0, got {low}", "log: false, or low > 0")
    step = spec.get("step")
    if kind == "int":
        step = 1 if step is None else step
        if not _is_int(step) or step < 1:
            _fail(src, f"{key}.step", f"got {_show(step)}", "an int >= 1")
    elif step is not None:
        step = _number(step)
        if step is None or step <= 0:
            _fail(src, f"{key}.step", f"got {_show(spec['step'])}", "a number > 0, or no step")
    if step is not None:
        span = Decimal(str(high)) - Decimal(str(low))
        if span % Decimal(str(step)) != 0:
            _fail(src, f"{key}.step", f"{step} does not divide high - low = {span}", "a step that divides high - low")
        if log and step != 1:
            _fail(src, f"{key}.step", "Optuna draws a log range without a step", "no step (int: step 1) with log")
    return Param(name, kind, low=low, high=high, step=step, log=log)


def _check_depths(src: str, fixed: dict[str, Any], params: dict[str, Param]) -> None:
    """Refuses a space in which some resize leaves a depth knob nothing to draw."""
    resize_low = params["resize"].bounds()[0] if "resize" in params else fixed.get("resize", _DEFAULTS.resize)
    for knob in DEPTH_KNOBS:
        deepest = deepest_allowed(knob, resize_low)
        fits = f"{knob} <= {deepest} at resize {resize_low}, or a larger resize" if deepest else "a larger resize"
        if knob in params:
            param = params[knob]
            low, high = param.bounds()
            if low > deepest:
                _fail(src, f"params.{knob}", f"no {knob} fits resize={resize_low}: {_why(knob, low, resize_low)}", fits)
            # Optuna refuses a choice whose values change between trials, so a choice cannot be shrunk per resize.
            if param.kind == "choice" and high > deepest:
                _fail(src, f"params.{knob}", _why(knob, high, resize_low),
                      f"choices <= {deepest}, or an int range, which each trial clamps to its resize")
            continue
        depth = fixed.get(knob, getattr(_DEFAULTS, knob))
        if depth > deepest:
            where = "params.resize" if "resize" in params else f"fixed.{knob}" if knob in fixed else "fixed.resize"
            default = "" if knob in fixed else f" ({knob} is the config's default)"
            _fail(src, where, _why(knob, depth, resize_low) + default, f"a larger resize, or a shallower {knob}")


def _why(knob: str, depth: int, resize: int) -> str:
    """The config's own words for why `depth` does not fit `resize`."""
    try:
        TrainConfig.from_dict({**{k: 1 for k in DEPTH_KNOBS}, "resize": resize, knob: depth})
    except ConfigError as e:
        return str(e)
    return f"{knob}={depth} does not fit resize={resize}"


def _check_together(src: str, fixed: dict[str, Any], params: dict[str, Param]) -> None:
    # Each value was checked alone; now the fixed knobs with the searched ones at both ends of resize.
    for resize_end in (0, 1):
        config = dict(fixed)
        for param in params.values():
            if param.name == "resize":
                config[param.name] = param.bounds()[resize_end]
            elif param.name in DEPTH_KNOBS:
                config[param.name] = param.bounds()[0]
            else:
                config[param.name] = param.choices[0] if param.kind == "choice" else param.low
        try:
            TrainConfig.from_dict(config)
        except ConfigError as e:
            _fail(src, "fixed", str(e), "fixed knobs that, with the searched ones, make a valid TrainConfig")


def _points(src: str, raw: Any, fixed: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        _fail(src, "points", f"expected a non-empty list, got {_show(raw)}", "a list of {knob: value, ...}")
    points = []
    for i, point in enumerate(raw):
        key = f"points[{i}]"
        if not isinstance(point, dict):
            _fail(src, key, f"expected a mapping, got {_show(point)}", "{knob: value, ...}")
        label = point.get(POINT_NAME)
        if POINT_NAME in point and not isinstance(label, str):
            _fail(src, f"{key}.{POINT_NAME}", f"expected a string, got {_show(label)}", "a label such as V1")
        point = {k: v for k, v in point.items() if k != POINT_NAME}
        for name in point:
            if name in fixed:
                _fail(src, f"{key}.{name}", "is also in fixed", "each knob in fixed or in the points, not both")
        typed = {name: _knob(src, f"{key}.{_key(name)}", name, value) for name, value in point.items()}
        try:
            TrainConfig.from_dict({**fixed, **typed})
        except ConfigError as e:
            _fail(src, key, str(e), "points that, with fixed and the config's defaults, make a valid TrainConfig")
        points.append({**typed, POINT_NAME: label} if label is not None else typed)
    return points


def _sampler(src: str, search: dict, params: dict[str, Param], points: list | None) -> str | None:
    if points is not None:
        if "sampler" in search:
            _fail(src, "search.sampler", "a points space runs its points as listed",
                  "no sampler with points:, or params: with sampler grid")
        return None
    sampler = search.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        _fail(src, "search.sampler", f"got {_show(sampler)}", ", ".join(SAMPLERS))
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        _fail(src, "search.sampler", "Optuna's CMA-ES needs the cmaes package, which is not installed",
              "tpe, random or grid, or `pip install cmaes`")
    if sampler == "grid":
        for param in params.values():
            if param.kind == "float":
                _fail(src, f"params.{param.name}", "a float range has no grid", "choice or int ranges with grid")
    return sampler


def _grid_size(src: str, params: dict[str, Param], fixed: dict[str, Any]) -> int:
    bound = math.prod(p.count() for p in params.values())  # before the depth ranges shrink per resize
    if bound > MAX_GRID_POINTS:
        _fail(src, "search.sampler", f"the grid has up to {bound} points", f"grids of at most {MAX_GRID_POINTS} points")
    return len(_grid(params, fixed))


def _max_epochs(fixed: dict[str, Any], params: dict[str, Param], points: list[dict] | None) -> int:
    if "epochs" in params:
        return params["epochs"].bounds()[1]
    epochs = fixed.get("epochs", _DEFAULTS.epochs)
    return max((p.get("epochs", epochs) for p in points), default=epochs) if points else epochs


def _scheduler(src: str, raw: dict, max_epochs: int, default: str) -> tuple[str, int | None, float | None, int | None]:
    kind = raw.get("type", default)
    if kind not in SCHEDULERS:
        _fail(src, "scheduler.type", f"got {_show(kind)}", ", ".join(SCHEDULERS))
    if kind == "none":
        for key in raw:
            if key != "type":
                _fail(src, f"scheduler.{key}", "only ASHA takes it", "scheduler: {type: none}, or type asha")
        return kind, None, None, None
    grace_period = _int(src, "scheduler.grace_period", raw.get("grace_period", 10), 1)
    reduction_factor = _number(raw.get("reduction_factor", 3))
    if reduction_factor is None or reduction_factor <= 1:
        _fail(src, "scheduler.reduction_factor", f"got {_show(raw.get('reduction_factor'))}", "a number > 1")
    if "max_t" in raw:
        max_t = _int(src, "scheduler.max_t", raw["max_t"], grace_period, why=f"grace_period is {grace_period}")
    else:
        # max_t follows the longest run. A short one (--set epochs=2) shortens the grace period so that ASHA
        # still has a rung below max_t at which to stop trials.
        max_t = max_epochs
        grace_period = max(1, min(grace_period, int(max_t // reduction_factor)))
    return kind, grace_period, reduction_factor, max_t


def _objectives(src: str, raw: Any) -> tuple[Objective, ...]:
    """The space's objectives: the default, one, or several (a list, or `{metrics: [...], modes: [...]}`)."""
    if raw is None:  # absent, or a YAML key whose entries are all commented out
        return (Objective(weights=dict(DEFAULT_WEIGHTS), mode="max"),)
    if isinstance(raw, dict) and not ({"metrics", "modes"} & raw.keys()):
        return (_objective(src, "objective", raw),)
    if isinstance(raw, list):
        if len(raw) < 2:
            _fail(src, "objective", f"a list of {len(raw)} objective(s)",
                  "two or more in a list; a single objective as a mapping, " + _OBJECTIVE_HELP)
        keys = [f"objective[{i}]" for i in range(len(raw))]
        objectives = [_objective(src, key, item) for key, item in zip(keys, raw)]
    elif isinstance(raw, dict):
        for key in raw:
            if key not in ("metrics", "modes"):
                _fail(src, f"objective.{_key(key)}", "does not go with metrics/modes", "metrics, modes")
        metrics, modes = raw.get("metrics"), raw.get("modes")
        if not isinstance(metrics, list) or len(metrics) < 2:
            _fail(src, "objective.metrics", f"expected a list of two or more metrics, got {_show(metrics)}",
                  "[NAME, NAME, ...] of " + ", ".join(SELECTABLE))
        if not isinstance(modes, list) or len(modes) != len(metrics):
            _fail(src, "objective.modes", f"expected one mode per metric, got {_show(modes)}",
                  f"a list of {len(metrics)}: max or min")
        keys = [f"objective.metrics[{i}]" for i in range(len(metrics))]
        objectives = []
        for i, (metric, mode) in enumerate(zip(metrics, modes)):
            _check_mode(src, f"objective.modes[{i}]", mode)
            _check_metric(src, keys[i], metric)
            objectives.append(Objective(weights={metric: 1.0}, mode=mode, metric=metric))
    else:
        _fail(src, "objective", f"expected a mapping or a list, got {_show(raw)}", _OBJECTIVE_HELP)
    for i, objective in enumerate(objectives):
        if objective in objectives[:i]:
            _fail(src, keys[i], f"repeats {keys[objectives.index(objective)]}", "different objectives")
    # The winner is re-scored on the test split by the first objective, and the test split is only scored by
    # its images: a loss has no test value.
    untestable = [m for m in objectives[0].weights if m not in IMAGE_METRICS]
    if untestable:
        _fail(src, keys[0], f"{untestable[0]} is not measured on the test split, where the winner is re-scored by "
              "the first objective", "an image metric first (" + ", ".join(IMAGE_METRICS[:4]) + ", ...), losses after")
    return tuple(objectives)


def _check_mode(src: str, key: str, mode: Any) -> None:
    if mode not in ("max", "min"):
        _fail(src, key, f"got {_show(mode)}", "max or min")


def _check_metric(src: str, key: str, metric: Any) -> None:
    if metric not in SELECTABLE:
        _fail(src, key, f"{_show(metric)} is not a reported metric", ", ".join(SELECTABLE))


def _objective(src: str, key: str, raw: Any) -> Objective:
    """One objective: `{metric: NAME, mode: ...}` or `{weights: {NAME: w, ...}, mode: ...}`."""
    if not isinstance(raw, dict):
        _fail(src, key, f"expected a mapping, got {_show(raw)}", _OBJECTIVE_HELP)
    for k in raw:
        if k not in ("metric", "weights", "mode"):
            _fail(src, f"{key}.{_key(k)}", "unknown key", "metric, weights, mode")
    mode = raw.get("mode", "max")
    _check_mode(src, f"{key}.mode", mode)
    if ("metric" in raw) == ("weights" in raw):
        _fail(src, key, "names both metric and weights" if "metric" in raw else "names no metric or weights",
              "{metric: NAME, mode: max} or {weights: {NAME: w, ...}, mode: max}")
    if "metric" in raw:
        metric = raw["metric"]
        _check_metric(src, f"{key}.metric", metric)
        return Objective(weights={metric: 1.0}, mode=mode, metric=metric)
    weights = raw["weights"]
    if not isinstance(weights, dict) or not weights:
        _fail(src, f"{key}.weights", f"expected a non-empty mapping, got {_show(weights)}", "{metric: weight, ...}")
    typed = {}
    for metric, weight in weights.items():
        wkey = f"{key}.weights.{_key(metric)}"
        if metric not in SELECTABLE:
            _fail(src, wkey, "not a reported metric", ", ".join(SELECTABLE))
        number = _number(weight)
        if number is None or number == 0:
            _fail(src, wkey, f"got {_show(weight)}", "a non-zero number")
        typed[metric] = number
    return Objective(weights=typed, mode=mode)
