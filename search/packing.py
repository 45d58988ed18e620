"""Each trial's share of a GPU from its estimated memory (`gpus_per_trial: auto`), so that trials of different
sizes pack onto GPUs and none starves the others.

    from search.packing import gpu_share
    share = gpu_share(cfg, gpu_bytes=80 * 2**30, most_per_gpu=8)   # e.g. 0.13: thirteen hundredths of a GPU

A trial needs `cyclegan.memory.estimate_memory(cfg, data)` (the peak its caching allocator reserves, with a
margin; no GPU needed) plus `CONTEXT_BYTES` (its CUDA context, outside the allocator). Its data counts as it will
sit on the device: resident when the compact training slices are at most `RESIDENT_BYTES`, else streamed, so a
large data set does not cost a GPU's worth of shares (streaming overlaps the steps). Its share is that over the GPU's
memory, rounded up to whole hundredths, at least 1/most_per_gpu (more trials on one GPU add nothing: on an H100
the aggregate is flat from two trials on without MPS, docs/benchmarks.md) and at most one whole GPU (a trial
that needs more gets one GPU, and a warning). `AutoResources` is that rule as Ray Tune takes it:
`tune.with_resources(trainable, AutoResources(...))` calls it with each trial's config when the trial is
created (ray/tune/trainable/function_trainable.py, `default_resource_request`), and the trainable caps the
trial's allocator at the share Ray gave it less the context (`allocator_fraction`, `search/trainable.py`).

Ray counts resources in fixed point, ten-thousandths of a unit (`ray_constants.MIN_RESOURCE_GRANULARITY`;
`FixedPoint(double d)` in src/ray/common/scheduling/fixed_point.h truncates `d * 10000`), so shares that Ray adds
up are exact; but a float such as 0.57 is read as 5699 units. `ray_amount` gives the float Ray reads as exactly
the units meant, so K trials of 1/K (K dividing 100) add up to one GPU to the unit, and the memory cap a trial
sets is the share Ray reserved for it.

    python -m pytest tests/search/test_packing.py -q
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

from cyclegan.config import TrainConfig
from cyclegan.sizes import CONTEXT_BYTES, DataSize, GiB
from search.schema import POINT_NAME

RAY_UNITS = 10_000  # Ray's fixed point: one GPU is 10000 units
STEPS = 100  # shares are whole hundredths of a GPU, rounded up
DEFAULT_TRIALS_PER_GPU = 8  # `trials_per_gpu` unless a space sets it: on an H100 more add nothing without MPS
MOST_TRIALS_PER_GPU = STEPS  # each trial takes at least one hundredth
# Training slices up to this size (compact) count as resident in auto's shares: the study's set, a 3,000-slice
# one at 256x256 (0.2-0.4 GiB). Larger sets count as streamed, the least a trial trains in; a trial whose share
# then has room keeps them resident anyway (`cyclegan.memory.plan_data`).
RESIDENT_BYTES = GiB // 2


def ray_amount(units: int) -> float:
    """The smallest float that Ray reads as exactly `units` ten-thousandths (0.57 alone would be 5699)."""
    x = units / RAY_UNITS
    while int(x * RAY_UNITS) < units:
        x = math.nextafter(x, math.inf)
    return x


def ray_units(amount: float) -> int:
    """What Ray makes of a resource amount: `FixedPoint(double)` truncates amount * 10000."""
    return int(amount * RAY_UNITS)


@functools.lru_cache(maxsize=4096)
def needed_bytes(cfg: TrainConfig, data: DataSize | None = None) -> int:
    """GPU memory one trial of `cfg` on `data` takes, its CUDA context included (the data resident or streamed as
    `RESIDENT_BYTES` says). Cached: a new architecture's estimate holds Tune's loop for a fraction of a second, and
    Tune asks for a trial's resources more than once."""
    from cyclegan.memory import estimate_memory  # torch: the driver's checks before Ray starts go without it

    streamed = data is not None and data.train_bytes(cfg.resize) > RESIDENT_BYTES
    return estimate_memory(cfg, data, streamed) + CONTEXT_BYTES


def gpu_share(cfg: TrainConfig, gpu_bytes: int, most_per_gpu: int = DEFAULT_TRIALS_PER_GPU,
              data: DataSize | None = None) -> float:
    """The fraction of a GPU of `gpu_bytes` that a trial of `cfg` needs, as Ray should be asked for it.

    Whole hundredths of the GPU, rounded up; at least 1/most_per_gpu (in Ray's units, rounded down, so that
    `most_per_gpu` such trials fit on one GPU and one more does not); at most 1.0.
    """
    if gpu_bytes <= 0:
        raise ValueError(f"gpu_bytes must be > 0, got {gpu_bytes}")
    if not 1 <= most_per_gpu <= MOST_TRIALS_PER_GPU:
        raise ValueError(f"most_per_gpu must be in 1..{MOST_TRIALS_PER_GPU}, got {most_per_gpu}")
    hundredths = -(-needed_bytes(cfg, data) * STEPS // gpu_bytes)  # rounded up, in integers: no float error
    units = hundredths * (RAY_UNITS // STEPS)
    units = min(RAY_UNITS, max(units, RAY_UNITS // most_per_gpu))
    return ray_amount(units)


class EstimatesAhead:
    """Makes the memory estimates of `configs` in a thread until `stop`: `search.run` starts it as Ray starts.

    With `gpus_per_trial: auto` the driver estimates each new trial's memory as Tune creates it, and Tune creates a
    whole first wave before it starts any trial. The first trace in a process also pays for imports and every
    op's first meta kernel (1-3 s), and each later one is quicker for the ops it repeats (`cyclegan.meta_ops`): done
    here, beside Ray's start, that time leaves the path to the first trial. The estimates are `needed_bytes`'s own,
    so a config met again is answered from its cache; one that fails is left to the trial to report."""

    def __init__(self, configs: list[dict[str, Any]], data: DataSize | None) -> None:
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(configs, data), name="estimates-ahead", daemon=True)
        self._thread.start()

    def _run(self, configs: list[dict[str, Any]], data: DataSize | None) -> None:
        for config in configs:
            if self._stop.is_set():
                return
            try:
                needed_bytes(trial_config(config), data)
            except Exception:  # noqa: BLE001, S112 - the trial that draws it reports it, in its own words
                continue
            self.done += 1

    def stop(self) -> int:
        """Stops after the estimate under way; returns how many were made."""
        self._stop.set()
        self._thread.join()
        return self.done


def trial_config(config: dict[str, Any]) -> TrainConfig:
    """A trial's Ray config (knobs, and a points space's label) as its TrainConfig."""
    return TrainConfig.from_dict({k: v for k, v in config.items() if k != POINT_NAME})


@dataclass(frozen=True)
class AutoResources:
    """What `tune.with_resources` takes for `gpus_per_trial: auto`: called with a trial's config, it returns the
    trial's resources, its GPU share from `gpu_share`. A class, not a closure, so that Ray can pickle it."""

    cpus: float
    gpu_bytes: int
    most_per_gpu: int = DEFAULT_TRIALS_PER_GPU
    data: DataSize | None = None  # the search's data, which counts in each trial's memory

    def __call__(self, config: dict[str, Any]) -> dict[str, float]:
        cfg = trial_config(config)
        share = gpu_share(cfg, self.gpu_bytes, self.most_per_gpu, self.data)
        if needed_bytes(cfg, self.data) > self.gpu_bytes:
            _warn_once(cfg, self.gpu_bytes, self.data)
        return {"cpu": self.cpus, "gpu": share}


@dataclass(frozen=True)
class FixedShare:
    """A fixed share of a GPU whose memory the space states (`gpu_memory_gib`): Ray is asked for `gpu` of a GPU,
    and the trial caps its memory at `gpu` of `gpu_bytes`, whatever its GPU has (an H200 runs trials as an A10G
    would). A callable as `AutoResources` is, so that it travels to the trainable with the share."""

    cpus: float
    gpu: float
    gpu_bytes: int

    def __call__(self, config: dict[str, Any]) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpu}


def trial_budget(share: float, gpu_bytes: int) -> int:
    """The bytes a trial's allocator may take with `share` of a GPU of `gpu_bytes` (`allocator_fraction`)."""
    # A whole GPU (or more: a trial trains on one) sets no cap; its allocator has the GPU less the context.
    return int(allocator_fraction(share, gpu_bytes) * gpu_bytes) if share < 1 else gpu_bytes - CONTEXT_BYTES


def check_trials_fit(configs: list[TrainConfig], data: DataSize, share: float, gpu_bytes: int) -> None:
    """Refuses (DataError, one line) the first config that does not fit `share` of a GPU of `gpu_bytes` even with
    its training slices streamed."""
    from cyclegan.memory import check_fits

    budget = trial_budget(share, gpu_bytes)
    text = f"gpus_per_trial {share:g} of a {gpu_bytes / GiB:.3g} GiB GPU, less its CUDA context"
    for cfg in dict.fromkeys(configs):
        check_fits(cfg, data, budget, text)


@functools.cache
def _warn_once(cfg: TrainConfig, gpu_bytes: int, data: DataSize | None = None) -> None:
    # Tune asks for a trial's resources when it creates the trial and again when it resets it: one warning.
    print(f"warning: a trial needs an estimated {needed_bytes(cfg, data) / GiB:.1f} GiB, more than a GPU's "
          f"{gpu_bytes / GiB:.1f} GiB; it gets one whole GPU and may run out of memory (resize={cfg.resize} "
          f"batch_size={cfg.batch_size} generator={cfg.generator} unet_depth={cfg.unet_depth} ngf={cfg.ngf})",
          file=sys.stderr)


def driver_gpu_bytes() -> int | None:
    """Memory of this machine's first visible GPU, or None without one (or where this torch cannot use it).

    Never through CUDA in the driver: a context there (about 0.7 GiB) would sit on a GPU its trials share, for the
    whole search, outside every trial's share. `nvidia-smi` answers in milliseconds; a child process that imports
    torch and starts CUDA took 4-5 s of the driver's start-up on an H200 node (docs/benchmarks.md), and is the
    fallback where `nvidia-smi` cannot answer (no NVIDIA driver tools, a MIG or other device name it does not take).
    """
    import torch

    if torch.version.cuda is None:  # a CPU or ROCm build: the trials' torch could not use an NVIDIA GPU either
        return _gpu_bytes_from_torch()
    return _gpu_bytes_from_nvidia_smi() or _gpu_bytes_from_torch()


def _gpu_bytes_from_nvidia_smi() -> int | None:
    """The first visible GPU's memory as `nvidia-smi` reports it (MiB), or None where it cannot say."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = "0" if visible is None else visible.split(",")[0].strip()
    if not (first.isdigit() or first.startswith("GPU-")):  # none visible ("", "-1"), or a MIG instance
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total,memory.reserved", "--format=csv,noheader,nounits",
                              "-i", first], capture_output=True, text=True, timeout=30, check=True)
        total, reserved = (int(v) for v in out.stdout.strip().splitlines()[0].split(","))
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    # The driver's reserve is not the program's: CUDA's total (what torch reports) is the rest, to the MiB.
    return (total - reserved) * 2**20 or None


def _gpu_bytes_from_torch() -> int | None:
    ask = "import torch; print(torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, timeout=300, check=True)
        total = int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None
    return total or None


def allocator_fraction(share: float, gpu_bytes: int) -> float:
    """The fraction of a GPU's memory a trial's caching allocator may take, given the trial's share of the GPU.

    The share pays for the trial's CUDA context too, which the allocator does not see (`CONTEXT_BYTES`), so the
    cap is the share less the context: K trials of 1/K then fit, contexts included, where capping the allocator
    at 1/K would leave K contexts over the GPU's memory. A share too small to hold a context keeps half of itself.
    """
    return max(share - CONTEXT_BYTES / gpu_bytes, share / 2)

