"""Population-based training: Ray Tune's `PopulationBasedTraining` and `PB2`, from a space's `scheduler:` section.

A GAN's right learning rate or loss weight at epoch 10 is not its right one at epoch 200. PBT trains a population
of trials side by side; every `perturbation_interval` epochs each trial looks at the others, and one in the bottom
`quantile_fraction` (by the objective) continues from the checkpoint of one in the top, with that trial's knobs
mutated (PBT: each multiplied by 0.8 or 1.2, or drawn anew with `resample_probability`; a choice moves to a
neighbour in its list). PB2 picks the new knobs with a Gaussian-process bandit instead (it needs scikit-learn).

    scheduler:
      type: pbt                       # or pb2
      perturbation_interval: 4        # epochs between looks (each trial checkpoints at each look)
      burn_in_period: 0               # PBT: epochs before the first look
      quantile_fraction: 0.25
      resample_probability: 0.25      # PBT only
      synch: false                    # true: the whole population looks at the same epochs (Ray's synchronous PBT)
      mutations:                      # what may change while a trial trains, and within what range
        lr: {float: [1.0e-5, 1.0e-3], log: true}
        lambda_cycle: {float: [5.0, 20.0]}

Only `MUTABLE` knobs can be mutated: numbers that act through the optimisers and losses. A knob that sets the
networks' shapes, the image pools, the data or a trial's memory (`cyclegan.config.FIXED_FOR_RUN`) is refused by
name: a checkpoint of one shape cannot continue as another. Each mutated knob starts where `fixed:` puts it, or
else is drawn from its range for each member of the initial population; a mutation never leaves its range.

Ray's PBT refuses a searcher (Optuna's TPE learns from finished trials, PBT replaces trials' knobs as they run):
the initial population is drawn at random from `params:` (Optuna's RandomSampler, seeded by `search.seed`), or
is the space's points or grid, and no Optuna study is kept.

    python -m pytest tests/search/test_pbt.py -q
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from cyclegan.config import CONTINUABLE, FIELD_NAMES, FIELD_TYPES, FIXED_FOR_RUN
from search.knobs import Param, parse_param
from search.schema import SchedulerSection, fail, key_name, show

# Not mutated though a run may continue with a new value: the trial's length (PBT's clock) and TensorBoard's pace.
NOT_MUTATED = ("epochs", "sample_every")
MUTABLE: tuple[str, ...] = tuple(k for k in CONTINUABLE if k not in NOT_MUTATED)
POPULATION_KINDS = ("pbt", "pb2")
ASHA_KEYS = ("grace_period", "reduction_factor", "max_t")
PBT_KEYS = ("perturbation_interval", "burn_in_period", "quantile_fraction", "resample_probability", "synch",
            "mutations")
PB2_KEYS = tuple(k for k in PBT_KEYS if k not in ("burn_in_period", "resample_probability"))
# Ray warns that PBT may lose a checkpoint another trial is about to copy when trials keep 2 or fewer.
PBT_CHECKPOINTS_KEPT = 4


@dataclass(frozen=True)
class Looks:
    """The epochs at which PBT looks at a trial (and may hand its checkpoint to another): the first at
    max(burn-in, interval), then every `interval`. A trial checkpoints at each, so that none is skipped for want of
    one (Ray asks a function trainable for its last reported checkpoint, and skips the exploit where there is none)."""

    first: int
    interval: int

    def __contains__(self, epoch: int) -> bool:
        return epoch >= self.first and (epoch - self.first) % self.interval == 0


@dataclass(frozen=True)
class KeepInRange:
    """PBT's `custom_explore_fn`: a mutated value back inside its knob's range (Ray's x1.2 would walk out of it, and a
    beta1 past 1 would be a config the trainer refuses), ints rounded and on their step."""

    mutations: tuple[Param, ...]

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for p in self.mutations:
            if p.kind == "choice":
                continue
            value = min(max(config[p.name], p.low), p.high)
            if p.step is not None:
                value = p.low + round((value - p.low) / p.step) * p.step
                value = min(value, p.high)
            config[p.name] = int(round(value)) if p.kind == "int" else float(value)
        return config


@dataclass(frozen=True)
class Population:
    """The checked `scheduler:` section of a PBT or PB2 space."""

    kind: str  # "pbt" or "pb2"
    perturbation_interval: int
    burn_in_period: int
    quantile_fraction: float
    resample_probability: float
    synch: bool
    mutations: dict[str, Param]  # file order

    @property
    def looks(self) -> Looks:
        return Looks(max(self.burn_in_period, self.perturbation_interval), self.perturbation_interval)

    def make(self) -> PopulationBasedTraining:
        """Ray's scheduler on the reported `epoch`; metric and mode come from the TuneConfig."""
        explore = KeepInRange(tuple(self.mutations.values()))
        if self.kind == "pb2":
            from ray.tune.schedulers.pb2 import PB2

            return PB2(time_attr="epoch", perturbation_interval=self.perturbation_interval,
                       hyperparam_bounds={p.name: [p.low, p.high] for p in self.mutations.values()},
                       quantile_fraction=self.quantile_fraction, synch=self.synch, custom_explore_fn=explore)
        return PopulationBasedTraining(
            time_attr="epoch", perturbation_interval=self.perturbation_interval,
            burn_in_period=self.burn_in_period,
            hyperparam_mutations={p.name: ray_distribution(p) for p in self.mutations.values()},
            quantile_fraction=self.quantile_fraction, resample_probability=self.resample_probability,
            synch=self.synch, custom_explore_fn=explore)


def ray_distribution(p: Param) -> Any:
    """What PBT resamples from: a list for a choice (a mutation moves to a neighbour), else Tune's own domain."""
    if p.kind == "choice":
        return list(p.choices)
    if p.kind == "int":
        if p.log:
            return tune.lograndint(p.low, p.high + 1)
        return tune.randint(p.low, p.high + 1) if p.step == 1 else tune.qrandint(p.low, p.high, p.step)
    if p.step is not None:
        return tune.quniform(p.low, p.high, p.step)
    return tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)


def check_population(src: str, raw: dict, section: SchedulerSection, fixed: dict[str, Any], params: dict[str, Param],
                     sampler: str | None, num_samples: int) -> Population:
    """The `scheduler:` section of type pbt or pb2; `raw` tells which keys the file set."""
    kind = section.type
    allowed = PBT_KEYS if kind == "pbt" else PB2_KEYS
    for key in raw:
        if key != "type" and key not in allowed:
            takes = "ASHA" if key in ASHA_KEYS else "PBT"
            fail(src, f"scheduler.{key}", f"only {takes} takes it", f"with type {kind}: {', '.join(allowed)}")
    if kind == "pb2" and importlib.util.find_spec("sklearn") is None:
        fail(src, "scheduler.type", "Ray's PB2 needs scikit-learn, which is not installed",
             'pip install -e ".[pb2]" (or pip install scikit-learn), or type pbt')
    if section.perturbation_interval is None:
        fail(src, "scheduler.perturbation_interval", f"{kind} needs it",
             "an int >= 1 (epochs between a trial's looks at the population)")
    if not section.mutations:
        fail(src, "scheduler.mutations", f"{kind} needs at least one knob to mutate",
             f"a mapping of knob: distribution; knobs {', '.join(MUTABLE)}")
    if sampler not in (None, "random", "grid"):
        fail(src, "search.sampler", f"Ray's {kind.upper()} takes no searcher ({sampler} learns from finished "
             "trials; PBT changes trials as they run)", "random or grid (the initial population), or no sampler")
    if num_samples < 2:
        fail(src, "search.num_samples", f"a population of {num_samples} has no other trial to learn from",
             "an int >= 2 (the population's size)")
    mutations = {}
    for name, spec in section.mutations.items():
        key = f"scheduler.mutations.{key_name(name)}"
        _check_mutable(src, key, name)
        if name in params:
            fail(src, f"params.{name}", f"is also in {key}",
                 "each knob searched in params or mutated (its first value is drawn from the mutation's range)")
        p = parse_param(src, key, name, spec)
        if kind == "pb2" and (p.kind == "choice" or p.log):
            fail(src, key, f"PB2 picks a value in a linear range, got {show(spec)}",
                 "{float: [low, high]} or {int: [low, high]} without log, or type pbt")
        if name in fixed and not _within(p, fixed[name]):
            fail(src, f"fixed.{name}", f"the start value {fixed[name]} is outside {key}", "a value in its range")
        mutations[name] = p
    return Population(kind, section.perturbation_interval, section.burn_in_period, section.quantile_fraction,
                      section.resample_probability, section.synch, mutations)


def _check_mutable(src: str, key: str, name: Any) -> None:
    if name not in FIELD_NAMES:
        fail(src, key, "unknown knob", ", ".join(MUTABLE))
    if name in MUTABLE:
        return
    if name in FIXED_FOR_RUN:
        why = (f"{name} is fixed for a trial's life (it sets the networks' shapes, the image pools, the data or the "
               "memory a trial was given), and a mutated trial continues another's checkpoint")
    elif name in NOT_MUTATED:
        why = f"{name} is not mutated ({'the trial length PBT counts in' if name == 'epochs' else 'TensorBoard'})"
    else:
        why = f"{name} is a {FIELD_TYPES[name]} knob; only number knobs that act through the optimisers and losses"
    fail(src, key, why, ", ".join(MUTABLE))


def _within(p: Param, value: Any) -> bool:
    if p.kind == "choice":
        return value in p.choices
    return p.low <= value <= p.high
