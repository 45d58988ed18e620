"""How a space's trials are chosen and stopped: Optuna's samplers, the points searcher, and ASHA.

- `params:` with sampler tpe, random, cmaes or nsga2: `OptunaSearch` calls `DefineByRun` once per trial. `resize` is
  drawn first, then `generator`, then each depth knob within what that resize allows and the rest in file order,
  the U-Net's knobs only for a U-Net (Optuna's define-by-run takes such conditional knobs as they come).
- `points:`, and `params:` with sampler grid (expanded to every allowed combination): `PointsSearcher` hands out
  one point per trial, in order. Unlike `tune.grid_search`, which would nest them under one key, each trial's
  config is the point itself.
- `scheduler: {type: asha, ...}` stops trials early by the first objective; `{type: none}` runs each to the end;
  `{type: pbt, ...}` and `{type: pb2, ...}` are population-based training (search/population.py).

    python -m pytest tests/search/test_space.py -q
"""

from __future__ import annotations

import importlib.util
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from search.knobs import DEFAULTS, Param, applies, depth_limit, grid
from search.population import ASHA_KEYS
from search.schema import SchedulerSection, SearchSection, fail

MAX_GRID_POINTS = 10_000
DEFAULT_NUM_SAMPLES = 16


@dataclass(frozen=True)
class DefineByRun:
    """Optuna's define-by-run space. A class, not a closure, so that OptunaSearch can pickle it with its state."""

    params: tuple[Param, ...]  # in draw order: resize before the depth knobs
    fixed: dict[str, Any]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        drawn: dict[str, Any] = {}
        for param in self.params:
            if applies(param.name, {**self.fixed, **drawn}):  # a ResNet trial draws no U-Net knob
                drawn[param.name] = param.suggest(trial, depth_limit(param.name, {**self.fixed, **drawn}))
        return {**self.fixed, **drawn}



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



def check_sampler(src: str, search: SearchSection, params: dict[str, Param], points: list | None,
                  default: str = "tpe") -> str | None:
    """The sampler's name (`default` unless named), or None for a points space, which runs its points as listed."""
    if points is not None:
        if search.sampler is not None:
            fail(src, "search.sampler", "a points space runs its points as listed",
                 "no sampler with points:, or params: with sampler grid")
        return None
    sampler = search.sampler or default
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        fail(src, "search.sampler", "Optuna's CMA-ES needs the cmaes package, which is not installed",
             "tpe, random or grid, or `pip install cmaes`")
    if sampler == "grid":
        for param in params.values():
            if param.kind == "float":
                fail(src, f"params.{param.name}", "a float range has no grid", "choice or int ranges with grid")
    return sampler


def grid_size(src: str, params: dict[str, Param], fixed: dict[str, Any]) -> int:
    bound = math.prod(p.count() for p in params.values())  # before the depth ranges shrink per resize
    if bound > MAX_GRID_POINTS:
        fail(src, "search.sampler", f"the grid has up to {bound} points", f"grids of at most {MAX_GRID_POINTS} points")
    return len(grid(params, fixed))


def optuna_sampler(name: str | None, seed: int) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles numbers only; Optuna draws the choices (and the per-resize depth ranges) at random.
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)  # multi-objective too (MOTPE)


def max_epochs(fixed: dict[str, Any], params: dict[str, Param], points: list[dict] | None) -> int:
    """The longest run the space can make."""
    if "epochs" in params:
        return params["epochs"].bounds()[1]
    epochs = fixed.get("epochs", DEFAULTS.epochs)
    return max((p.get("epochs", epochs) for p in points), default=epochs) if points else epochs


@dataclass(frozen=True)
class Schedule:
    """The checked `scheduler:` section: ASHA's settings, or all None for `type: none`."""

    kind: str  # "asha" or "none"
    grace_period: int | None = None  # ASHA only, in epochs
    reduction_factor: float | None = None
    max_t: int | None = None

    def make(self) -> TrialScheduler:
        """ASHA on the reported `epoch`, or FIFO; metric and mode come from the TuneConfig."""
        if self.kind == "asha":
            return ASHAScheduler(time_attr="epoch", grace_period=self.grace_period,
                                 reduction_factor=self.reduction_factor, max_t=self.max_t)
        return FIFOScheduler()


def check_schedule(src: str, raw: dict, section: SchedulerSection, longest: int, default: str) -> Schedule:
    """`raw` tells which keys the file set; `longest` is the longest run (`max_epochs`)."""
    kind = section.type or default
    if kind == "none":
        for key in raw:
            if key != "type":
                takes = "ASHA" if key in ASHA_KEYS else "PBT"
                fail(src, f"scheduler.{key}", f"only {takes} takes it", "scheduler: {type: none}, or type "
                     + ("asha" if takes == "ASHA" else "pbt or pb2"))
        return Schedule(kind)
    for key in raw:
        if key != "type" and key not in ASHA_KEYS:
            fail(src, f"scheduler.{key}", "only PBT and PB2 take it", f"with type asha: {', '.join(ASHA_KEYS)}")
    grace_period, reduction_factor = section.grace_period, section.reduction_factor
    if section.max_t is not None:
        if section.max_t < grace_period:
            fail(src, "scheduler.max_t", f"got {section.max_t} (grace_period is {grace_period})",
                 f"an int >= {grace_period}")
        return Schedule(kind, grace_period, reduction_factor, section.max_t)
    # max_t follows the longest run. A short one (--set epochs=2) shortens the grace period so that ASHA still has
    # a rung below max_t at which to stop trials.
    return Schedule(kind, max(1, min(grace_period, int(longest // reduction_factor))), reduction_factor, longest)
