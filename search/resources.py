"""What each trial may use: the space file's `resources:` section, and what `tune.with_resources` is given for it.

    resources: {gpus_per_trial: 0.25, cpus_per_trial: 2}              # a fixed share of a GPU for every trial
    resources: {gpus_per_trial: auto, trials_per_gpu: 8, gpu_memory_gib: 22}   # each trial's share from its memory
    resources: {gpus_per_trial: 0.25, gpu_memory_gib: 22}             # a quarter of a 24 GB GPU, on any GPU

`auto` sizes each trial's GPU share from its estimated memory (`search/packing.py`); `trials_per_gpu` goes with it
only: at most so many trials on one GPU. `gpu_memory_gib` is each GPU's memory: for `auto` where the driver has no
GPU to ask; with a fixed share, each trial is capped to its share of that much (so a large GPU runs trials as a
smaller one would), and a trial whose data cannot fit its share is refused before the search starts.

    python -m pytest tests/search/test_space.py -q -k "resources or gpus"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from cyclegan.sizes import DataSize
from search.packing import DEFAULT_TRIALS_PER_GPU, MOST_TRIALS_PER_GPU, AutoResources, FixedShare
from search.schema import AUTO, Int, Number, Section, fail, show

AUTO_ONLY = ("trials_per_gpu",)
_SHARE = "a number >= 0: a fraction of one device, or whole devices"


class ResourcesSection(Section):
    gpus_per_trial: Literal["auto"] | Number = Field(
        0.25, description="auto (a share from each trial's estimated memory), or a number >= 0: a fraction of one "
        "GPU, or whole GPUs")
    cpus_per_trial: Number = Field(1.0, ge=0, description=_SHARE)
    trials_per_gpu: Int | None = Field(
        None, ge=1, le=MOST_TRIALS_PER_GPU,
        description=f"an int in 1..{MOST_TRIALS_PER_GPU} (shares are whole hundredths of a GPU)")
    gpu_memory_gib: Number | None = Field(
        None, gt=0, description="a number of GiB > 0: each GPU's memory, e.g. 22 for a 24 GB A10G or L4, 79 for an "
        "80 GB H100 (with a fixed share, each trial is capped to its share of this much)")


@dataclass(frozen=True)
class Resources:
    gpus_per_trial: float | str  # a number, or "auto": each trial's share from its estimated memory
    cpus_per_trial: float
    trials_per_gpu: int  # auto: at most so many trials on one GPU
    gpu_memory_gib: float | None  # each GPU's memory: auto's where the driver has no GPU; a fixed share's cap

    def for_tune(self, src: str, gpu_bytes: int | None = None, data: DataSize | None = None
                 ) -> dict[str, float] | AutoResources | FixedShare:
        """A fixed share as a dict (as a `FixedShare` with `gpu_memory_gib`), or for `auto` the callable that gives
        each trial its share from its estimated memory on `data`, which needs each GPU's memory: `gpu_memory_gib`
        where set, else `gpu_bytes` (the driver's GPU); without either, refused."""
        if self.gpus_per_trial != AUTO:
            if self.gpu_memory_gib is not None:
                return FixedShare(self.cpus_per_trial, self.gpus_per_trial, int(self.gpu_memory_gib * 2**30))
            return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}
        if self.gpu_memory_gib is not None:
            gpu_bytes = int(self.gpu_memory_gib * 2**30)
        if gpu_bytes is None:
            fail(src, "resources.gpu_memory_gib", "gpus_per_trial auto sizes each trial's share from its GPU's "
                 "memory, and this driver has no GPU to read it from",
                 "gpu_memory_gib: GIB under resources, or --gpu-memory-gib GIB (e.g. 22 for a 24 GB A10G or L4)")
        return AutoResources(cpus=self.cpus_per_trial, gpu_bytes=gpu_bytes, most_per_gpu=self.trials_per_gpu,
                             data=data)


def _devices(n: float) -> bool:
    """A share Ray can give: a fraction of one device, or whole devices."""
    return n >= 0 and (n <= 1 or n.is_integer())


def parse_resources(src: str, raw: dict, section: ResourcesSection) -> Resources:
    """The checked section as Resources; `raw` tells which keys the file set."""
    fields = ResourcesSection.model_fields
    for name in ("gpus_per_trial", "cpus_per_trial"):
        value = getattr(section, name)
        if value != AUTO and not _devices(value):
            fail(src, f"resources.{name}", f"got {show(raw[name])}", fields[name].description or "")
    gpus = section.gpus_per_trial
    if gpus != AUTO:
        for key in AUTO_ONLY:
            if key in raw:
                fail(src, f"resources.{key}", f"goes with gpus_per_trial auto, and it is {gpus:g}",
                     f"gpus_per_trial: auto with {key}, or no {key}")
    most = section.trials_per_gpu if section.trials_per_gpu is not None else DEFAULT_TRIALS_PER_GPU
    return Resources(gpus, section.cpus_per_trial, most, section.gpu_memory_gib)
