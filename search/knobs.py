"""The knobs of a space file: `fixed:`, `params:` (distributions) and `points:`, each value checked by the config.

Every value is typed and checked by `cyclegan.config.TrainConfig` itself, not by a copy of its rules, and the
depth knobs are checked against resize (a U-Net of depth d needs 2**d <= resize) so that no trial the space can
produce is refused later. The U-Net's own knobs (`UNET_KNOBS`) apply only where the generator is the U-Net: a
space whose generator is always a ResNet may not set them, and one that searches the generator draws them only
for its U-Net trials. `Param` is one searched knob; `grid` expands a space of choices and int ranges.

    python -m pytest tests/search/test_space.py -q
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from cyclegan.config import CHOICES, FIELD_NAMES, FIELD_TYPES, UNET_KNOBS, ConfigError, TrainConfig
from search.schema import POINT_NAME, check_keys, fail, is_int, key_name, number, show

if TYPE_CHECKING:
    import optuna

# Each halves the image once per level, so resize caps it; cyclegan.config owns the exact rule.
DEPTH_KNOBS = ("unet_depth", "disc_layers")
MAX_DEPTH = 30  # 2**30-pixel slices are beyond any data; the cap also keeps 2**depth cheap to compute
_ANY_RESIZE = 2 ** (MAX_DEPTH + 4)  # large enough for any depth
DEFAULTS = TrainConfig()
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "choice": ("choice",), "int": ("int", "step", "log"), "float": ("float", "step", "log")}
_DISTRIBUTION_HELP = "{choice: [a, ...]}, {int: [low, high], step: 1, log: false} or {float: [low, high], log: false}"


@functools.cache
def deepest_allowed(knob: str, resize: int) -> int:
    """The deepest value of a depth knob that the config accepts at this resize (0: none).

    Asked of TrainConfig itself (2**unet_depth <= resize, 4 * 2**disc_layers <= resize today), so the search
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


def check_knob(source: str, key: str, name: Any, value: Any) -> Any:
    """Checks one knob's value with the config's own rules and returns it as the config types it (1 -> 1.0)."""
    if name not in FIELD_NAMES:
        fail(source, key, "unknown knob", ", ".join(FIELD_NAMES))
    if name in DEPTH_KNOBS and is_int(value) and value > MAX_DEPTH:
        fail(source, key, f"{name}={value} needs resize >= 2**{value}", f"{name} <= {MAX_DEPTH}")
    if FIELD_TYPES[name] == "float" and is_int(value) and number(value) is None:
        fail(source, key, f"{name}={value} is too large for a float", _allowed(name))
    # Probe the value alone: the other depth knob at 1, and for a depth a resize that fits any, so that the only
    # rule the probe can break is one about this value. How depth and resize go together is checked later.
    probe: dict[str, Any] = {name: value, **{k: 1 for k in DEPTH_KNOBS if k != name}}
    if name in DEPTH_KNOBS:
        probe["resize"] = _ANY_RESIZE
    try:
        typed = getattr(TrainConfig.from_dict(probe), name)
    except ConfigError as e:
        fail(source, key, str(e), _allowed(name))
    if isinstance(typed, float) and not math.isfinite(typed):
        fail(source, key, f"{name}={typed} is not a finite number", _allowed(name))
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




def depth_limit(name: str, values: Mapping[str, Any]) -> int | None:
    return deepest_allowed(name, values.get("resize", DEFAULTS.resize)) if name in DEPTH_KNOBS else None


def applies(name: str, values: Mapping[str, Any]) -> bool:
    """Whether a knob shapes the trial whose knobs so far are `values`: the U-Net's only with the U-Net."""
    return name not in UNET_KNOBS or values.get("generator", DEFAULTS.generator) == "unet"


def draw_order(params: Mapping[str, Param]) -> list[Param]:
    # resize before the depths it caps, generator before the U-Net knobs it decides; stable: the rest keep file order
    return sorted(params.values(), key=lambda p: {"resize": 0, "generator": 1}.get(p.name, 2))


def grid(params: Mapping[str, Param], fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    combos: list[dict[str, Any]] = [{}]
    for param in draw_order(params):
        grown = []
        for c in combos:
            values = {**fixed, **c}
            if applies(param.name, values):
                grown += [{**c, param.name: v} for v in param.values(depth_limit(param.name, values))]
            else:
                grown.append(c)  # a ResNet trial has no U-Net knob to vary
        combos = grown
    return combos


def generators(fixed: Mapping[str, Any], params: Mapping[str, Param]) -> tuple[str, ...]:
    """The generators a space's trials can have."""
    return params["generator"].choices if "generator" in params else (fixed.get("generator", DEFAULTS.generator),)


def check_unet_knobs(src: str, kinds: tuple[str, ...], fixed: Mapping[str, Any], params: Mapping[str, Param]) -> None:
    """Refuses U-Net knobs in a space whose every trial (of generators `kinds`) has a ResNet: they would shape
    nothing."""
    kinds = tuple(dict.fromkeys(kinds))
    if "unet" in kinds:
        return
    for name in UNET_KNOBS:
        for where, section in (("fixed", fixed), ("params", params)):
            if name in section:
                fail(src, f"{where}.{name}", f"shapes the U-Net only, and every trial's generator is "
                     f"{' or '.join(map(repr, kinds))}",
                     f"no {', '.join(UNET_KNOBS)} with a ResNet generator, or generator unet among its values")



def parse_fixed(src: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail(src, "fixed", f"expected a mapping, got {show(raw)}", "a mapping of knob: value")
    return {name: check_knob(src, f"fixed.{key_name(name)}", name, value) for name, value in raw.items()}


def parse_params(src: str, raw: Any, fixed: dict[str, Any]) -> dict[str, Param]:
    if not isinstance(raw, dict) or not raw:
        fail(src, "params", f"expected a non-empty mapping of knob: distribution, got {show(raw)}",
              f"knobs {', '.join(FIELD_NAMES)}, each {_DISTRIBUTION_HELP}")
    params = {}
    for name, spec in raw.items():
        key = f"params.{key_name(name)}"
        if name not in FIELD_NAMES:
            fail(src, key, "unknown knob", ", ".join(FIELD_NAMES))
        if name in fixed:
            fail(src, key, "is also in fixed", "each knob either fixed or searched")
        params[name] = parse_param(src, key, name, spec)
    return params


def parse_param(src: str, key: str, name: str, spec: Any) -> Param:
    """One knob's distribution (`{choice: [...]}`, `{int: [low, high], ...}` or `{float: ...}`), each value checked."""
    if not isinstance(spec, dict):
        fail(src, key, f"expected a distribution, got {show(spec)}", _DISTRIBUTION_HELP)
    kinds = [k for k in _DISTRIBUTIONS if k in spec]
    if len(kinds) != 1:
        fail(src, key, f"names {' and '.join(kinds) or 'no distribution'}", f"exactly one of {_DISTRIBUTION_HELP}")
    kind = kinds[0]
    check_keys(src, key, spec, _DISTRIBUTIONS[kind])
    if kind == "choice":
        return _choice(src, f"{key}.choice", name, spec["choice"])
    return _range(src, key, name, kind, spec)


def _choice(src: str, key: str, name: str, values: Any) -> Param:
    if not isinstance(values, list) or not values:
        fail(src, key, f"expected a non-empty list, got {show(values)}", f"a list of {_allowed(name)}")
    typed = [check_knob(src, f"{key}[{i}]", name, v) for i, v in enumerate(values)]
    for i, value in enumerate(typed):
        if value in typed[:i]:
            fail(src, f"{key}[{i}]", f"{show(value)} is listed twice", "each value once")
    return Param(name, "choice", choices=tuple(typed))


def _range(src: str, key: str, name: str, kind: str, spec: dict) -> Param:
    knob_type = FIELD_TYPES[name]
    if knob_type != kind:
        fail(src, f"{key}.{kind}", f"{name} is a {knob_type} knob",
              "a choice" + (f" or a {knob_type} range" if knob_type in _DISTRIBUTIONS else ""))
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        fail(src, f"{key}.{kind}", f"expected [low, high], got {show(bounds)}", f"two {kind}s, low < high")
    low, high = (check_knob(src, f"{key}.{kind}[{i}]", name, v) for i, v in enumerate(bounds))
    if not low < high:
        fail(src, f"{key}.{kind}", f"low {low} is not below high {high}", "low < high (one value belongs in fixed)")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        fail(src, f"{key}.log", f"got {show(log)}", "true or false")
    if log and low <= 0:
        fail(src, f"{key}.log", f"a log range needs low > 0, got {low}", "log: false, or low > 0")
    step = spec.get("step")
    if kind == "int":
        step = 1 if step is None else step
        if not is_int(step) or step < 1:
            fail(src, f"{key}.step", f"got {show(step)}", "an int >= 1")
    elif step is not None:
        step = number(step)
        if step is None or step <= 0:
            fail(src, f"{key}.step", f"got {show(spec['step'])}", "a number > 0, or no step")
    if step is not None:
        span = Decimal(str(high)) - Decimal(str(low))
        if span % Decimal(str(step)) != 0:
            fail(src, f"{key}.step", f"{step} does not divide high - low = {span}", "a step that divides high - low")
        if log and step != 1:
            fail(src, f"{key}.step", "Optuna draws a log range without a step", "no step (int: step 1) with log")
    return Param(name, kind, low=low, high=high, step=step, log=log)


def check_depths(src: str, fixed: dict[str, Any], params: dict[str, Param]) -> None:
    """Refuses a space in which some resize leaves a depth knob nothing to draw."""
    resize_low = params["resize"].bounds()[0] if "resize" in params else fixed.get("resize", DEFAULTS.resize)
    for knob in DEPTH_KNOBS:
        if "unet" not in generators(fixed, params) and knob in UNET_KNOBS:
            continue
        deepest = deepest_allowed(knob, resize_low)
        fits = f"{knob} <= {deepest} at resize {resize_low}, or a larger resize" if deepest else "a larger resize"
        if knob in params:
            param = params[knob]
            low, high = param.bounds()
            if low > deepest:
                fail(src, f"params.{knob}", f"no {knob} fits resize={resize_low}: {_why(knob, low, resize_low)}", fits)
            # Optuna refuses a choice whose values change between trials, so a choice cannot be shrunk per resize.
            if param.kind == "choice" and high > deepest:
                fail(src, f"params.{knob}", _why(knob, high, resize_low),
                      f"choices <= {deepest}, or an int range, which each trial clamps to its resize")
            continue
        depth = fixed.get(knob, getattr(DEFAULTS, knob))
        if depth > deepest:
            where = "params.resize" if "resize" in params else f"fixed.{knob}" if knob in fixed else "fixed.resize"
            default = "" if knob in fixed else f" ({knob} is the config's default)"
            fail(src, where, _why(knob, depth, resize_low) + default, f"a larger resize, or a shallower {knob}")


def _why(knob: str, depth: int, resize: int) -> str:
    """The config's own words for why `depth` does not fit `resize`."""
    try:
        TrainConfig.from_dict({**{k: 1 for k in DEPTH_KNOBS}, "resize": resize, knob: depth})
    except ConfigError as e:
        return str(e)
    return f"{knob}={depth} does not fit resize={resize}"


def check_together(src: str, fixed: dict[str, Any], params: dict[str, Param]) -> None:
    # Each value was checked alone; now the fixed knobs with the searched ones at both ends of resize, with each
    # generator the space can draw (a ResNet's size rule is not the U-Net's).
    for resize_end, generator in itertools.product((0, 1), generators(fixed, params)):
        config = dict(fixed)
        for param in params.values():
            if param.name == "resize":
                config[param.name] = param.bounds()[resize_end]
            elif param.name == "generator":
                config[param.name] = generator
            elif param.name in DEPTH_KNOBS:
                config[param.name] = param.bounds()[0]
            else:
                config[param.name] = param.choices[0] if param.kind == "choice" else param.low
        try:
            TrainConfig.from_dict(config)
        except ConfigError as e:
            fail(src, "fixed", str(e), "fixed knobs that, with the searched ones, make a valid TrainConfig")


def parse_points(src: str, raw: Any, fixed: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        fail(src, "points", f"expected a non-empty list, got {show(raw)}", "a list of {knob: value, ...}")
    points = []
    for i, point in enumerate(raw):
        key = f"points[{i}]"
        if not isinstance(point, dict):
            fail(src, key, f"expected a mapping, got {show(point)}", "{knob: value, ...}")
        label = point.get(POINT_NAME)
        if POINT_NAME in point and not isinstance(label, str):
            fail(src, f"{key}.{POINT_NAME}", f"expected a string, got {show(label)}", "a label such as V1")
        point = {k: v for k, v in point.items() if k != POINT_NAME}
        for name in point:
            if name in fixed:
                fail(src, f"{key}.{name}", "is also in fixed", "each knob in fixed or in the points, not both")
        typed = {name: check_knob(src, f"{key}.{key_name(name)}", name, value) for name, value in point.items()}
        for name in typed:
            if not applies(name, {**fixed, **typed}):
                fail(src, f"{key}.{name}", f"shapes the U-Net only, and this point's generator is "
                     f"{({**fixed, **typed})['generator']!r}", "no U-Net knob in a point of a ResNet generator")
        try:
            TrainConfig.from_dict({**fixed, **typed})
        except ConfigError as e:
            fail(src, key, str(e), "points that, with fixed and the config's defaults, make a valid TrainConfig")
        points.append({**typed, POINT_NAME: label} if label is not None else typed)
    check_unet_knobs(src, tuple({**fixed, **p}.get("generator", DEFAULTS.generator) for p in points), fixed, {})
    return points

