"""How much GPU memory one trial takes, so that the search can pack several trials on one GPU.

    from cyclegan.memory import CONTEXT_BYTES, estimate_memory
    share = (estimate_memory(cfg) + CONTEXT_BYTES) / torch.cuda.get_device_properties(0).total_memory

(`search/packing.py` does this for `gpus_per_trial: auto`, rounded to a share Ray can add up exactly.)

`estimate_memory(cfg)` predicts, without a GPU, the peak of what the trial's caching allocator reserves,
which is what `torch.cuda.set_per_process_memory_fraction` caps. It adds up the weights, gradients and
Adam moments of the four networks (16 bytes a parameter), the activations one train step keeps for its
backward passes (counted exactly by running the step's forward passes on PyTorch's meta device, which
allocates nothing), and the two image pools; the activation and fixed terms are scaled by constants
measured on an H100 for the fast path and for eager fp32 (`CALIBRATION`, docs/benchmarks.md), and a
margin is added so that a cap set from the estimate does not stop a trial.

`measure_memory(cfg)` runs a trial's first epochs on the GPU (through the CUDA-graph capture and one
validation pass) and reads the peak instead; `python -m benchmarks.bench --sections memory` compares the two.

Outside both figures: each process's CUDA context and library handles, 0.73 GiB on the H100
(`CONTEXT_BYTES`), which the allocator does not see. K trials fit on one GPU when
K * (estimate + CONTEXT_BYTES) <= its memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace

import torch

from cyclegan.config import TrainConfig

GiB = 2**30
CONTEXT_BYTES = 3 * GiB // 4
MARGIN = 1.10  # relative, on top of the calibrated estimate
MARGIN_BYTES = 256 * 2**20


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


def footprint(cfg: TrainConfig) -> Footprint:
    """Counts the parameters and the saved activations of one train step of `cfg` on the meta device."""
    from cyclegan.train import CycleGAN, ImagePool, discriminator_update, generator_update

    with torch.device("meta"):
        m = CycleGAN.build(cfg)
    params = {id(p) for p in _parameters(m)}
    n_params = sum(p.numel() for p in _parameters(m))
    idle = SimpleNamespace(zero_grad=lambda set_to_none=True: None, step=lambda: None)
    x1 = torch.zeros(1, 1, cfg.resize, cfg.resize, device="meta")
    x2 = torch.zeros(1, 1, cfg.resize, cfg.resize, device="meta")

    def count() -> tuple[dict[int, int], object]:
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in params:
                saved[id(t)] = t.numel() * t.element_size()
            return t

        return saved, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    # The generator update holds the most: six generator passes and two discriminator passes at once.
    saved_g, hooks = count()
    with hooks:
        _, fake_t1, fake_t2 = generator_update(m, idle, x1, x2, cfg)
    saved_d, hooks = count()
    with hooks:
        discriminator_update(m, idle, x1, x2, ImagePool(0).query(fake_t1), ImagePool(0).query(fake_t2), cfg)
    per_pair = max(sum(saved_g.values()), sum(saved_d.values()))
    return Footprint(params=n_params, state_bytes=16 * n_params, activation_bytes=per_pair * cfg.batch_size,
                     pool_bytes=2 * cfg.pool_size * cfg.resize**2 * 4)


def estimate_memory(cfg: TrainConfig) -> int:
    """Peak bytes one trial of `cfg` reserves on a GPU (margin included); needs no GPU.

    Calibrated for the fast path (the defaults: bf16, CUDA graphs) and for eager fp32; any other mix of
    the speed switches gets the larger of the two.
    """
    f = footprint(cfg)
    fast = cfg.precision != "fp32" and cfg.cuda_graphs
    fp32 = cfg.precision == "fp32" and not cfg.cuda_graphs
    modes = ["fast"] if fast else ["fp32"] if fp32 else ["fast", "fp32"]
    pool_scale = 0.5 if cfg.precision != "fp32" else 1.0  # pools hold fakes in the autocast dtype
    best = max(c.states * f.state_bytes + c.activations * f.activation_bytes + c.fixed
               for c in (CALIBRATION[k] for k in modes))
    return int(math.ceil((best + pool_scale * f.pool_bytes) * MARGIN + MARGIN_BYTES))


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
    if cfg.use_channels_last:
        slices = [s.contiguous(memory_format=torch.channels_last) for s in slices]
    steps = max(1, math.ceil(n_slices / cfg.batch_size))
    runner = t.runner(slices[0], slices[1], steps)
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
