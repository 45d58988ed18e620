"""The space file's refusals, and its simple sections checked with pydantic.

A file that cannot run is refused with a `SpaceError` whose message is one line:
`FILE: key.path: what is wrong; allowed: what would be accepted`. The sections of plain settings (`search:`,
`scheduler:`, `checkpoint:`, `select:`, `failure:`; `resources:` in search/resources.py) are pydantic models:
each field's `description` is what the refusal says is allowed. The knobs (`fixed:`, `params:`, `points:`) are
checked by the config's own rules in `search/knobs.py`, the objective in `search/objective.py`.

    python -m pytest tests/search/test_space.py -q
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NoReturn, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

AUTO = "auto"  # `gpus_per_trial: auto`: each trial's share from its estimated memory (search/packing.py)
# A point may carry a label (`name: V1`); it travels in the trial's config beside the knobs, for the report.
POINT_NAME = "name"
SAMPLERS = ("tpe", "random", "cmaes", "nsga2", "grid")
SCHEDULERS = ("asha", "pbt", "pb2", "none")


class SpaceError(ValueError):
    """A space file, or an override of it, that cannot run; one line: `FILE: key: problem; allowed: ...`."""


def fail(source: str, key: str, problem: str, allowed: str) -> NoReturn:
    raise SpaceError(" ".join(f"{source}: {key}: {problem}; allowed: {allowed}".splitlines()))


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def key_name(key: Any) -> str:
    return key if isinstance(key, str) else repr(key)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(value: Any) -> float | None:
    """A finite number as a float, or None. YAML 1.1 reads `1e-4` (no point) as a string, so such strings count."""
    if not (is_int(value) or isinstance(value, (float, str))):
        return None
    try:
        as_float = float(value)
    except (ValueError, OverflowError):
        return None
    return as_float if math.isfinite(as_float) else None


def _to_number(value: Any) -> Any:
    as_float = number(value)
    return value if as_float is None else as_float  # not a number: pydantic's float check refuses it


# A finite number, as `number` reads one; ints stay ints (strict) so that `1.5` is refused where an int is wanted.
Number = Annotated[float, BeforeValidator(_to_number), Field(strict=True, allow_inf_nan=False)]
Int = Annotated[int, Field(strict=True)]
Bool = Annotated[bool, Field(strict=True)]


class Section(BaseModel):
    """A section of plain settings. Unknown keys are refused before the types (`check_section`)."""

    model_config = ConfigDict(frozen=True)


MAX_SAMPLES = 100_000


class SearchSection(Section):
    sampler: Literal["tpe", "random", "cmaes", "nsga2", "grid"] | None = Field(None, description=", ".join(SAMPLERS))
    # Ray lists every trial of a points or grid space (and of a PBT population) up front: a billion would hang the
    # driver before anything ran, so the count is bounded far above any search a cluster runs.
    num_samples: Int | None = Field(None, ge=1, le=MAX_SAMPLES, description=f"an int in 1..{MAX_SAMPLES}")
    max_concurrent: Int | None = Field(None, ge=1, description="an int >= 1")
    seed: Int = Field(0, ge=0, le=2**32 - 1, description="an int in 0..4294967295 (numpy seeds are 32-bit)")


class SchedulerSection(Section):
    type: Literal["asha", "pbt", "pb2", "none"] | None = Field(None, description=", ".join(SCHEDULERS))
    # ASHA's (search/sampling.py)
    grace_period: Int = Field(10, ge=1, description="an int >= 1")
    reduction_factor: Number = Field(3.0, gt=1, description="a number > 1")
    max_t: Int | None = Field(None, ge=1, description="an int >= 1, at least grace_period")
    # Population-based training's and PB2's (search/population.py), in epochs
    perturbation_interval: Int | None = Field(None, ge=1, description="an int >= 1 (epochs between a trial's looks "
                                                                       "at the population)")
    burn_in_period: Int = Field(0, ge=0, description="an int >= 0 (epochs before the first look)")
    quantile_fraction: Number = Field(0.25, gt=0, le=0.5, description="a number in (0, 0.5]")
    resample_probability: Number = Field(0.25, ge=0, le=1, description="a number in [0, 1]")
    synch: Bool = Field(False, description="true or false")
    mutations: dict[Any, Any] | None = Field(None, description="a mapping of knob: distribution")


class CheckpointSection(Section):
    every: Int = Field(1, ge=1, description="an int >= 1")
    keep: Int = Field(2, ge=1, description="an int >= 1")


class SelectSection(Section):
    top_k: Int = Field(3, ge=1, description="an int >= 1")


class FailureSection(Section):
    max_failures: Int = Field(2, ge=0, description="an int >= 0")


OBJECTIVE_KEYS = ("metric", "weights", "mode", "metrics", "modes")
S = TypeVar("S", bound=Section)


def check_keys(src: str, where: str, value: Any, allowed: tuple[str, ...] | list[str]) -> dict:
    """A mapping (None reads as empty: a YAML key whose entries are all commented out) of only `allowed` keys;
    `where` is its key path ("" for the top level)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(src, where, f"expected a mapping, got {show(value)}", f"a mapping of {', '.join(allowed)}")
    for key in value:
        if key not in allowed:
            fail(src, f"{where}.{key_name(key)}" if where else key_name(key), "unknown key", ", ".join(allowed))
    return value


def check_section(src: str, name: str, value: Any, model: type[S]) -> S:
    """The section `name` as its model; the first wrong value is refused in one line naming its key."""
    raw = check_keys(src, name, value, list(model.model_fields))
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        error = e.errors()[0]
        field = str(error["loc"][0])
        fail(src, f"{name}.{field}", f"got {show(raw[field])}", model.model_fields[field].description or "")
