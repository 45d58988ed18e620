"""Several trials of one architecture as one fused network (HFTA), against one trial a process under MPS.

Wang et al., "Horizontally Fused Training Array" (MLSys 2021): trials that share an architecture (seed repeats, a
population's members, a grid's repeats) train faster as one network whose every layer holds all of their weights,
one kernel doing the work of K, than as K processes each launching its own small kernels. Here the fusion is
`torch.func`'s: the K copies' weights are stacked (`stack_module_state`) and each network's forward is vmapped over
them, which turns every convolution into one grouped convolution and every norm into one kernel for all K. The
train step is the trainer's own (`train.train_step`) on the stacked networks, captured as one CUDA graph.

    python -m benchmarks.hfta --ks 1 2 4 8 --batch 2 --out out/hfta.json

Prints pairs/s (K trials' pairs together) for each K, beside one trial's; compare with the MPS packing of
`python -m benchmarks.bench --sections processes --processes 8`. A measurement, not yet a trainer: the losses are
means over the K trials too, so each trial's gradient is 1/K of its own (Adam, being scale-free, barely minds),
and the image pool is shared (one pool of the trainer's size over the K trials' fakes).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from cyclegan.config import TrainConfig
from cyclegan.graphed import Replay
from cyclegan.optim import make_optimizers
from cyclegan.train import CycleGAN, ImagePool, train_step


class Stacked(nn.Module):
    """K networks of one architecture as one module: their weights stacked on a leading dimension, its forward
    vmapped over them. Takes and gives [K, N, C, H, W]."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        params, buffers = stack_module_state(nets)
        self.names = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[k]) for k in self.names])
        self.buffers_ = buffers
        base = copy.deepcopy(nets[0]).to("meta")
        object.__setattr__(self, "_base", base)  # not a submodule: its (meta) weights are never trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
            return functional_call(self._base, (params, buffers), (xi,))

        params = dict(zip(self.names, self.stacked))
        return torch.vmap(one, randomness="different")(params, self.buffers_, x)

    def train(self, mode: bool = True) -> Stacked:
        self._base.train(mode)
        return super().train(mode)


class FlatPool(ImagePool):
    """The trainer's image pool over the K trials' fakes taken as one batch ([K, N, ...] in and out)."""

    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        return super().query(fakes.flatten(0, 1)).view_as(fakes)


def fused(cfg: TrainConfig, k: int, dev: torch.device) -> CycleGAN:
    """K CycleGANs of `cfg` (seeds cfg.seed, cfg.seed + 1, ...) fused into one of stacked networks."""
    copies = []
    for i in range(k):
        torch.manual_seed(cfg.seed + i)
        copies.append(CycleGAN.build(cfg))
    nets = {name: Stacked([c.named()[name] for c in copies]).to(dev) for name in copies[0].named()}
    return CycleGAN(**nets)


def time_step(cfg: TrainConfig, k: int, dev: torch.device, steps: int) -> dict[str, Any]:
    m = fused(cfg, k, dev)
    gpu = dev.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and gpu)  # as Trainer.build chooses
    autocast = partial(torch.autocast, device_type=dev.type, dtype=torch.bfloat16) if bf16 else nullcontext
    opt_g, opt_d, _ = make_optimizers(cfg, [m.g_t1_t2, m.g_t2_t1], [m.d_t1, m.d_t2], dev)
    pools = (FlatPool(cfg.pool_size), FlatPool(cfg.pool_size))
    shape = (k, cfg.batch_size, 1, cfg.resize, cfg.resize)
    x1, x2 = (torch.rand(shape, device=dev) * 2 - 1 for _ in range(2))
    replay = Replay(lambda: train_step(m, opt_g, opt_d, x1, x2, pools, cfg, autocast),
                    enabled=gpu and cfg.cuda_graphs, name=f"fused step of {k}")

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(dev)

    for _ in range(3):
        replay()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        losses = replay()
    sync()
    seconds = time.perf_counter() - start
    return {"k": k, "batch": cfg.batch_size, "pairs_per_s": k * cfg.batch_size * steps / seconds,
            "step_ms": 1000 * seconds / steps, "captured": replay.captured,
            "finite": all(torch.isfinite(v).all().item() for v in losses.values()),
            "peak_reserved": torch.cuda.max_memory_reserved(dev) if gpu else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hfta", description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="trials fused")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    # Its networks take [K, N, C, H, W]: passes stacked on the first axis would mix trials, not batches.
    cfg = TrainConfig(resize=args.size, unet_depth=args.depth, batch_size=args.batch, channels_last=False,
                      stacked_passes=False)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for k in args.ks:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        try:
            row = time_step(cfg, k, dev, args.steps)
        except Exception as e:  # noqa: BLE001 - report it and go on to the next K
            row = {"k": k, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
