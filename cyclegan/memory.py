"""How much GPU memory one trial takes, so that the search can pack several trials on one GPU.

    from cyclegan.memory import CONTEXT_BYTES, estimate_memory
    share = (estimate_memory(cfg) + CONTEXT_BYTES) / torch.cuda.get_device_properties(0).total_memory

(`search/packing.py` does this for `gpus_per_trial: auto`, rounded to a share Ray can add up exactly.)

`estimate_memory(cfg, data)` predicts, without a GPU, the peak of what the trial's caching allocator reserves,
which is what `torch.cuda.set_per_process_memory_fraction` caps. It adds up the weights, gradients and
Adam moments of the four networks (16 bytes a parameter), the activations one train step keeps for its
backward passes (counted exactly by running the step's forward passes on PyTorch's meta device, which
allocates nothing), and the two image pools; the activation and fixed terms are scaled by constants
measured on an H100 for the fast path and for eager fp32 (`CALIBRATION`, docs/benchmarks.md). Then what
the data adds (`DataSize`): the training slices on the device (compact, `cyclegan.feed`; or only the
streaming slots when they are streamed), the val slices scored every epoch, and the validation pass, whose
CUDA graph keeps its peak allocated (`validation_bytes`: the live tensors of the pass, counted on the meta
device as it runs). A margin is added so that a cap set from the estimate does not stop a trial.

`plan_data(cfg, data, budget)` says whether a trial keeps its training slices resident or streams them, and
`check_fits` refuses, in one line, a trial that does not fit its budget even streamed.

`measure_memory(cfg)` runs a trial's first epochs on the GPU (through the CUDA-graph capture and one
validation pass) and reads the peak instead; `python -m benchmarks.bench --sections memory` compares the two.

Outside both figures: each process's CUDA context and library handles, 0.73 GiB on the H100
(`CONTEXT_BYTES`), which the allocator does not see. K trials fit on one GPU when
K * (estimate + CONTEXT_BYTES) <= its memory.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass, replace
from functools import partial
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from cyclegan.common import DataError
from cyclegan.config import TrainConfig
from cyclegan.evaluate import VAL_SLICES
from cyclegan.feed import SLOTS, bytes_per_pixel
from cyclegan.meta_ops import MetaOps
from cyclegan.sizes import CONTEXT_BYTES, EVAL_SIZE, DataSize, GiB  # noqa: F401 - the first two re-exported
from cyclegan.trace_store import stored

MARGIN = 1.10  # relative, on top of the calibrated estimate
MARGIN_BYTES = 256 * 2**20
# On the validation pass's live-tensor peak, counted in fp32 on the meta device: the graph's private pool rounds
# its blocks up (2 MiB), and the eager first pass's outputs are still held while the graph is captured. The
# generators run in bf16 on a GPU, so the fp32 count is already high there; not yet fitted to measured peaks
# (benchmarks/bigdata.py prints both).
VALIDATION_FACTOR = 1.1


def _no_data() -> DataSize:
    # Without a data set: no training slices, and validation at its bound (the most it can take).
    return DataSize(0, 0, VAL_SLICES, VAL_SLICES)


@dataclass(frozen=True)
class Calibration:
    """reserved ~= states * state_bytes + activations * activation_bytes + pools + fixed."""

    states: float
    activations: float
    fixed: float


# Least squares on measure_memory's peaks on an H100 over nine configurations of the fast path (batch 1 to 32,
# size 128 and 256, depth 6 to 8, ngf 32 and 64; docs/benchmarks.md). Reserved memory is about 1.5x the
# fp32 states (the CUDA graph's pool keeps its own gradients and bf16 weight copies) plus 0.58x the fp32
# activation count (bf16 halves it). Eager fp32 is not fitted: its measured peak (10.7 GiB at batch 2) is
# cuDNN's benchmark trying algorithms with large workspaces, which under a memory cap it simply skips; its
# constants are the fp32 states and activations with some slack.
CALIBRATION = {
    "fast": Calibration(states=1.55, activations=0.58, fixed=0.0),  # bf16 autocast, CUDA graphs
    "fp32": Calibration(states=1.25, activations=1.1, fixed=0.5 * GiB),  # eager fp32
}


@dataclass(frozen=True)
class Footprint:
    """What `estimate_memory` adds up, in bytes, before calibration."""

    params: int  # parameters of the four networks
    state_bytes: int  # weights, gradients and the two Adam moments, all fp32
    activation_bytes: int  # saved for backward by one train step at the config's batch, in fp32
    pool_bytes: int  # both image pools


# Knobs that change no tensor one train step saves for its backward passes: a search's trials that differ only in
# these share one count (the trace takes a second of the driver's loop per new trial). The batch and the pools scale
# the count afterwards. Any knob not named here is counted as it is.
NOT_SAVED_KNOBS = ("batch_size", "pool_size", "epochs", "lr", "lr_d_scale", "beta1", "beta2", "lr_schedule",
                   "lambda_cycle", "lambda_disc", "seed", "sample_every")
# Knobs whose value does not matter, only whether they are on: the identity passes, and the noise on the cycle.
ON_OFF_KNOBS = ("lambda_identity", "cycle_noise")


def footprint(cfg: TrainConfig) -> Footprint:
    """Counts the parameters and the saved activations of one train step of `cfg` on the meta device."""
    params, per_pair = _saved_per_pair(saved_knobs(cfg))
    return Footprint(params=params, state_bytes=16 * params, activation_bytes=per_pair * cfg.batch_size,
                     pool_bytes=2 * cfg.pool_size * cfg.resize**2 * 4)


def saved_knobs(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the knobs that save nothing at their defaults, and the on/off ones at their defaults where on."""
    default = TrainConfig()
    return replace(cfg, **{k: getattr(default, k) for k in NOT_SAVED_KNOBS},
                   **{k: getattr(cfg, k) and (getattr(default, k) or 0.1) for k in ON_OFF_KNOBS})


def _under_meta_ops(trace):
    """`trace` with its meta-device ops answered from the process's memo where they repeat (`cyclegan.meta_ops`)."""
    @functools.wraps(trace)
    def run(*args, **kwargs):
        with MetaOps():
            return trace(*args, **kwargs)
    return run


@functools.lru_cache(maxsize=1024)
@stored("saved_per_pair")
@_under_meta_ops
def _saved_per_pair(cfg: TrainConfig) -> tuple[int, int]:
    """(parameters of the four networks, bytes one train step saves for backward per pair of slices)."""
    from cyclegan.train import CycleGAN, discriminator_loss, generator_losses, set_requires_grad

    with torch.device("meta"):
        m = CycleGAN.build(cfg)
    params = {id(p) for p in _parameters(m)}
    n_params = sum(p.numel() for p in _parameters(m))
    x1 = torch.zeros(1, 1, cfg.resize, cfg.resize, device="meta")
    x2 = torch.zeros(1, 1, cfg.resize, cfg.resize, device="meta")

    def count() -> tuple[dict[int, int], object]:
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in params:
                saved[id(t)] = t.numel() * t.element_size()
            return t

        return saved, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    # The generator update holds the most: six generator passes and two discriminator passes at once. What a step
    # saves for backward is saved by its forward passes, so only those run (the backward passes on the meta device
    # took a third of the trace), with the discriminators frozen for the generators' as `generator_update` does.
    saved_g, hooks = count()
    set_requires_grad([m.d_t1, m.d_t2], False)
    with hooks:
        _, _, fake_t1, fake_t2 = generator_losses(m, x1, x2, cfg)
    set_requires_grad([m.d_t1, m.d_t2], True)
    saved_d, hooks = count()
    with hooks:
        discriminator_loss(m, x1, x2, fake_t1.detach(), fake_t2.detach(), cfg)
    return n_params, max(sum(saved_g.values()), sum(saved_d.values()))


def estimate_memory(cfg: TrainConfig, data: DataSize | None = None, streamed: bool = False) -> int:
    """Peak bytes one trial of `cfg` on `data` reserves on a GPU (margin included); needs no GPU.

    Calibrated for the fast path (the defaults: bf16, CUDA graphs) and for eager fp32; any other mix of
    the speed switches gets the larger of the two. `streamed`: the training slices stay in host memory and
    only the streaming slots are on the device. Without `data`: no training slices, and validation at its
    bound (VAL_SLICES a domain at EVAL_SIZE).
    """
    return int(math.ceil(sum(memory_terms(cfg, data, streamed).values()) * MARGIN + MARGIN_BYTES))


def memory_terms(cfg: TrainConfig, data: DataSize | None = None, streamed: bool = False) -> dict[str, float]:
    """What `estimate_memory` adds up before its margin: networks, data, validation (bytes)."""
    data = data or _no_data()
    f = footprint(cfg)
    fast = cfg.precision != "fp32" and cfg.cuda_graphs
    fp32 = cfg.precision == "fp32" and not cfg.cuda_graphs
    modes = ["fast"] if fast else ["fp32"] if fp32 else ["fast", "fp32"]
    pool_scale = 0.5 if cfg.precision != "fp32" else 1.0  # pools hold fakes in the autocast dtype
    best = max(c.states * f.state_bytes + c.activations * f.activation_bytes + c.fixed
               for c in (CALIBRATION[k] for k in modes))
    pixel = bytes_per_pixel(data.bits)
    if streamed:
        train = 2 * SLOTS * cfg.batch_size * cfg.resize**2 * pixel
    else:  # the slices and the epoch's order (8 bytes an index)
        steps = max(1, math.ceil(max(data.train_t1, data.train_t2) / cfg.batch_size))
        train = data.train_bytes(cfg.resize) + 2 * 8 * steps * cfg.batch_size
    v1, v2 = data.scored()
    stored = (v1 + v2) * data.eval_size**2 * 5  # fp32 slices and their bool head masks
    return {"networks": best + pool_scale * f.pool_bytes, "train_data": train,
            "validation": stored + VALIDATION_FACTOR * validation_bytes(cfg, v1, v2, data.eval_size)}


_MODEL_KNOBS = ("resize", "generator", "ngf", "unet_depth", "dropout", "upsample")  # what the generators are


def validation_bytes(cfg: TrainConfig, v1: int, v2: int, eval_size: int) -> int:
    """The peak of the live tensors of one validation pass over v1 T1 and v2 T2 slices (fp32, on meta)."""
    if not v1 and not v2:
        return 0
    return _validation_bytes(tuple(getattr(cfg, k) for k in _MODEL_KNOBS), v1, v2, eval_size)


@functools.lru_cache(maxsize=256)
@stored("validation_bytes")
@_under_meta_ops
def _validation_bytes(knobs: tuple, v1: int, v2: int, eval_size: int) -> int:
    from cyclegan.evaluate import translations
    from cyclegan.train import CycleGAN

    cfg = TrainConfig(**dict(zip(_MODEL_KNOBS, knobs)))
    with torch.device("meta"):
        m = CycleGAN.build(cfg)
    s = _meta_split(v1, v2, eval_size, cfg.resize)
    # The pass is the translations, then their scores (`validation_pass`). Scoring depends on the translations'
    # shapes only, not on the generators, so its rise above what the translations leave is counted once a split.
    # A first pass makes what the process caches (the cycle noise): counted, it would make the count depend on
    # what this process ran before, and it is cheap, its ops answered from the memo on the second pass.
    translations(m.g_t1_t2, m.g_t2_t1, s, resize=cfg.resize)
    with LiveBytes() as live:
        outs = translations(m.g_t1_t2, m.g_t2_t1, s, resize=cfg.resize)
        held = live.live
    del outs
    return max(live.peak, held + _scoring_bytes(v1, v2, eval_size))


@functools.lru_cache(maxsize=64)
@stored("scoring_bytes")
@_under_meta_ops
def _scoring_bytes(v1: int, v2: int, eval_size: int) -> int:
    """How far the live tensors rise above the translations while `scores` runs on them."""
    from cyclegan.evaluate import scores

    s = _meta_split(v1, v2, eval_size, eval_size)
    with torch.device("meta"):
        outs = {k: torch.zeros(v, 1, eval_size, eval_size) for k, v in (
            ("fake_t2", v1), ("rec_t1", v1), ("rec_t1_noisy", v1), ("fake_t1", v2), ("rec_t2", v2),
            ("rec_t2_noisy", v2))}
    scores(outs, s)  # makes the cached constants first, as `_validation_bytes` does
    with LiveBytes() as live:
        scores(outs, s)
    return live.peak


def _meta_split(v1: int, v2: int, eval_size: int, resize: int) -> SimpleNamespace:
    with torch.device("meta"):
        x1, x2 = (torch.zeros(v, 1, eval_size, eval_size) for v in (v1, v2))
    return SimpleNamespace(t1=x1, t2=x2, t1_head=x1 > 0, t2_head=x2 > 0, paired=v1 == v2, resize=resize,
                           size=eval_size)


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages that ops create while it is on, and their peak.

    A storage counts from the op that made it until it is freed; on the meta device nothing is allocated, so
    this is how much a pass would hold at once on a real one (before the allocator's rounding)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage) if t.device.type == "meta" else storage.data_ptr()
                if key in self._seen:
                    continue
                self._seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)


def plan_data(cfg: TrainConfig, data: DataSize, budget: int | None) -> str:
    """"resident" when the trial's estimate with its training slices on the device fits `budget` (bytes its
    allocator may take; None: no limit), else "streamed"."""
    if budget is None or estimate_memory(cfg, data, streamed=False) <= budget:
        return "resident"
    return "streamed"


def device_budget(dev: torch.device) -> int:
    """What this process's allocator may take on the GPU `dev` in all: its memory, or its per-process cap."""
    total = torch.cuda.get_device_properties(dev).total_memory
    return int(total * torch.cuda.get_per_process_memory_fraction(dev))


def check_fits(cfg: TrainConfig, data: DataSize, budget: int, budget_text: str) -> None:
    """Raises DataError, in one line, when a trial of `cfg` does not fit `budget` bytes even streamed.

    `budget_text` says where the budget comes from, e.g. "0.25 of a 22 GiB GPU less its CUDA context"."""
    need = estimate_memory(cfg, data, streamed=True)
    if need <= budget:
        return
    terms = memory_terms(cfg, data, streamed=True)
    raise DataError(
        f"{data.describe(cfg.resize)}: a trial of resize={cfg.resize} batch_size={cfg.batch_size} "
        f"unet_depth={cfg.unet_depth} needs an estimated {need / GiB:.2f} GiB with its training slices streamed "
        f"from host memory (networks {terms['networks'] / GiB:.2f} GiB, validation {terms['validation'] / GiB:.2f} "
        f"GiB, before its margin), over its budget of {budget / GiB:.2f} GiB ({budget_text}); raise gpus_per_trial or "
        f"--gpu-memory-gib, or lower resize or batch_size")


def measure_memory(cfg: TrainConfig, device: str | torch.device = "cuda", n_slices: int = 32) -> dict[str, int]:
    """Peak bytes a trial of `cfg` allocates and reserves on `device` over its first epochs.

    Runs the trainer on random slices until its step is captured (or for two epochs when it runs
    eagerly), one more epoch of replays, and a validation pass twice (eager, then captured). Call it
    in a process with nothing else on the GPU, or with everything else freed.
    """
    from cyclegan.evaluate import validation_pass
    from cyclegan.graphed import Replay
    from cyclegan.train import Trainer, epoch_order

    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    base_alloc, base_reserved = torch.cuda.memory_allocated(dev), torch.cuda.memory_reserved(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    t = Trainer.build(cfg, dev)
    t.compile()
    gen = torch.Generator().manual_seed(0)
    slices = [torch.rand(n_slices, 1, cfg.resize, cfg.resize, generator=gen).to(dev) * 2 - 1 for _ in range(2)]
    steps = max(1, math.ceil(n_slices / cfg.batch_size))
    runner = t.runner(t.feed(slices[0], slices[1], steps, bits=None), steps)
    order = epoch_order(n_slices, steps, cfg.batch_size, 0, 0)
    for _ in range(math.ceil((cfg.pool_size / cfg.batch_size + runner.replay.warmup + 2) / steps) + 1):
        runner.run_epoch(order, order)
        if runner.replay.captured:
            break
    runner.run_epoch(order, order)
    val = SimpleNamespace(t1=slices[0][:6], t2=slices[1][:6], t1_head=slices[0][:6] > -0.9,
                          t2_head=slices[1][:6] > -0.9, paired=True)
    validate = Replay(partial(validation_pass, t.models.g_t1_t2, t.models.g_t2_t1, val, t.autocast),
                      enabled=t.graphs, name="validation", warmup=1)
    for _ in range(3):
        validate()[0].tolist()
    torch.cuda.synchronize(dev)
    out = {"allocated": torch.cuda.max_memory_allocated(dev) - base_alloc,
           "reserved": torch.cuda.max_memory_reserved(dev) - base_reserved,
           "captured": int(runner.replay.captured)}
    del runner, validate, t, slices
    torch.cuda.empty_cache()
    return out


def _parameters(m) -> list[torch.nn.Parameter]:
    return [p for net in m.named().values() for p in net.parameters()]
