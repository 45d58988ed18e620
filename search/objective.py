"""What a search selects on: one objective (a metric, or a weighted sum of several), or several.

    objective: {metric: ssim_t1_t2_head, mode: max}
    objective: {weights: {contrast_t1_t2: 0.45, contrast_t2_t1: 0.45, tissue_t1_t2: 0.05, tissue_t2_t1: 0.05},
                mode: max}                                                          # the default
    objective: {metrics: [ssim_t1_t2_head, loss_cycle], modes: [max, min]}           # or a list of the single forms

A trial reports the first as `objective`: ASHA stops trials by it, checkpoints are ranked by it and the winner is
re-scored on the test split by it. With several, each is also reported as `objective_0`, `objective_1`, ...,
and Optuna's sampler (TPE or NSGA-II) searches them all.

    python -m pytest tests/search/test_space.py -q
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from cyclegan.metric_names import IMAGE_METRICS
from cyclegan.metric_names import REPORTED_METRICS as TRAINER_METRICS
from search.schema import check_keys, fail, key_name, number, show

OBJECTIVE = "objective"  # the key every trial reports its (first) objective under, and what Tune selects on
# What a trial reports each epoch (DESIGN.md, "Contracts"): the trainer's losses and image metrics, and the
# objective the trainable computes from them.
REPORTED_METRICS: tuple[str, ...] = (*TRAINER_METRICS, OBJECTIVE)
# An objective may weigh any of the trainer's metrics except the epoch counter.
SELECTABLE: tuple[str, ...] = tuple(m for m in TRAINER_METRICS if m != "epoch")
# The objective measured to rank trials closest to the truth on the paired benchmarks (docs/selection.md): how
# closely the head's intensities follow real slices of the other contrast (contrast_*), and whether each tissue class
# of the input becomes the one it must (tissue_*, whose spread over trials is ~10x contrast's). Cycle SSIM, the old
# partner, rewards a generator that hides its input in its output.
DEFAULT_WEIGHTS: dict[str, float] = {"contrast_t1_t2": 0.45, "contrast_t2_t1": 0.45, "tissue_t1_t2": 0.05,
                                     "tissue_t2_t1": 0.05}
_OBJECTIVE_HELP = ("{metric: NAME, mode: max}, {weights: {NAME: w, ...}, mode: max}, or several: "
                   "{metrics: [NAME, NAME, ...], modes: [max, min, ...]} or a list of the single forms")


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




def parse_objectives(src: str, raw: Any) -> tuple[Objective, ...]:
    """The space's objectives: the default, one, or several (a list, or `{metrics: [...], modes: [...]}`)."""
    if raw is None:  # absent, or a YAML key whose entries are all commented out
        return (Objective(weights=dict(DEFAULT_WEIGHTS), mode="max"),)
    if isinstance(raw, dict) and not ({"metrics", "modes"} & raw.keys()):
        return (_objective(src, "objective", raw),)
    if isinstance(raw, list):
        if len(raw) < 2:
            fail(src, "objective", f"a list of {len(raw)} objective(s)",
                  "two or more in a list; a single objective as a mapping, " + _OBJECTIVE_HELP)
        keys = [f"objective[{i}]" for i in range(len(raw))]
        objectives = [_objective(src, key, item) for key, item in zip(keys, raw)]
    elif isinstance(raw, dict):
        for key in raw:
            if key not in ("metrics", "modes"):
                fail(src, f"objective.{key_name(key)}", "does not go with metrics/modes", "metrics, modes")
        metrics, modes = raw.get("metrics"), raw.get("modes")
        if not isinstance(metrics, list) or len(metrics) < 2:
            fail(src, "objective.metrics", f"expected a list of two or more metrics, got {show(metrics)}",
                  "[NAME, NAME, ...] of " + ", ".join(SELECTABLE))
        if not isinstance(modes, list) or len(modes) != len(metrics):
            fail(src, "objective.modes", f"expected one mode per metric, got {show(modes)}",
                  f"a list of {len(metrics)}: max or min")
        keys = [f"objective.metrics[{i}]" for i in range(len(metrics))]
        objectives = []
        for i, (metric, mode) in enumerate(zip(metrics, modes)):
            _check_mode(src, f"objective.modes[{i}]", mode)
            _check_metric(src, keys[i], metric)
            objectives.append(Objective(weights={metric: 1.0}, mode=mode, metric=metric))
    else:
        fail(src, "objective", f"expected a mapping or a list, got {show(raw)}", _OBJECTIVE_HELP)
    for i, objective in enumerate(objectives):
        if objective in objectives[:i]:
            fail(src, keys[i], f"repeats {keys[objectives.index(objective)]}", "different objectives")
    # The winner is re-scored on the test split by the first objective, and the test split is only scored by
    # its images: a loss has no test value.
    untestable = [m for m in objectives[0].weights if m not in IMAGE_METRICS]
    if untestable:
        fail(src, keys[0], f"{untestable[0]} is not measured on the test split, where the winner is re-scored by "
              "the first objective", "an image metric first (" + ", ".join(IMAGE_METRICS[:4]) + ", ...), losses after")
    return tuple(objectives)


def _check_mode(src: str, key: str, mode: Any) -> None:
    if mode not in ("max", "min"):
        fail(src, key, f"got {show(mode)}", "max or min")


def _check_metric(src: str, key: str, metric: Any) -> None:
    if metric not in SELECTABLE:
        fail(src, key, f"{show(metric)} is not a reported metric", ", ".join(SELECTABLE))


def _objective(src: str, key: str, raw: Any) -> Objective:
    """One objective: `{metric: NAME, mode: ...}` or `{weights: {NAME: w, ...}, mode: ...}`."""
    if not isinstance(raw, dict):
        fail(src, key, f"expected a mapping, got {show(raw)}", _OBJECTIVE_HELP)
    check_keys(src, key, raw, ("metric", "weights", "mode"))
    mode = raw.get("mode", "max")
    _check_mode(src, f"{key}.mode", mode)
    if ("metric" in raw) == ("weights" in raw):
        fail(src, key, "names both metric and weights" if "metric" in raw else "names no metric or weights",
              "{metric: NAME, mode: max} or {weights: {NAME: w, ...}, mode: max}")
    if "metric" in raw:
        metric = raw["metric"]
        _check_metric(src, f"{key}.metric", metric)
        return Objective(weights={metric: 1.0}, mode=mode, metric=metric)
    weights = raw["weights"]
    if not isinstance(weights, dict) or not weights:
        fail(src, f"{key}.weights", f"expected a non-empty mapping, got {show(weights)}", "{metric: weight, ...}")
    typed = {}
    for metric, weight in weights.items():
        wkey = f"{key}.weights.{key_name(metric)}"
        if metric not in SELECTABLE:
            fail(src, wkey, "not a reported metric", ", ".join(SELECTABLE))
        value = number(weight)
        if value is None or value == 0:
            fail(src, wkey, f"got {show(weight)}", "a non-zero number")
        typed[metric] = value
    return Objective(weights=typed, mode=mode)
