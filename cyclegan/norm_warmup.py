"""Compiles the fused norm for a search's first trials before they start: `python -m cyclegan.norm_warmup`.

A fresh process compiles `cyclegan.fused_norm` once per variant it meets (train and validation, dtype, layout,
batch of one), which Inductor keeps in its on-disk cache for every later process on the machine. The first wave of
a search starts together on an empty cache, and each of its trials compiled every variant itself: 7-17 s of warm-up
each, with the GPU waiting (docs/benchmarks.md). `search.run` starts this in a child process as soon as the
search's inputs are checked, with the configs its first trials will have (`Space.first_configs`): while Ray and Tune
start, it runs one eager train step and one validation pass of each on random slices, so that those trials, minutes
of driver start-up later, load the compiled kernels instead. It touches no file of the search and prints one JSON
line (what it compiled, how long it took); a machine without a GPU, or a config without the fused norm, has nothing
to compile.

    python -m cyclegan.norm_warmup CONFIGS.json --val 16 16 --eval-size 256   # a JSON list of TrainConfig dicts

Its memory is capped at `MEMORY_FRACTION` of the GPU, and it runs before the trials take theirs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from cyclegan.config import TrainConfig

MEMORY_FRACTION = 0.1
# What changes the shapes, dtypes and layouts the norm sees: one warm-up per distinct set of these.
SHAPE_KNOBS = ("resize", "batch_size", "generator", "unet_depth", "ngf", "ndf", "disc_layers", "upsample", "dropout",
               "precision", "channels_last", "fused_norm", "lambda_identity", "pool_size")


def distinct(cfgs: list[TrainConfig]) -> list[TrainConfig]:
    """The configs that differ in what the norm sees, in order; those without the fused norm left out."""
    seen: dict[tuple, TrainConfig] = {}
    for cfg in cfgs:
        if cfg.fused_norm:
            seen.setdefault(tuple(bool(getattr(cfg, k)) if k == "lambda_identity" else getattr(cfg, k)
                                  for k in SHAPE_KNOBS), cfg)
    return list(seen.values())


def warm(cfgs: list[TrainConfig], val: tuple[int, int], eval_size: int, device: str = "cuda") -> dict:
    """One eager train step and one validation pass of each distinct config on random slices; what was done."""
    from cyclegan.evaluate import validation_pass
    from cyclegan.train import Trainer

    todo = distinct(cfgs)
    if not torch.cuda.is_available() or not todo:
        return {"warmed": 0, "seconds": 0.0, "why": "no GPU" if todo else "nothing uses the fused norm"}
    dev = torch.device(device)
    if dev.index is None:  # the cap is set per device, by its index
        dev = torch.device(dev.type, torch.cuda.current_device())
    torch.cuda.set_per_process_memory_fraction(MEMORY_FRACTION, dev)
    start, done = time.perf_counter(), 0
    for cfg in todo:
        t = Trainer.build(cfg, dev)
        fmt = torch.channels_last if cfg.use_channels_last else torch.contiguous_format
        x1, x2 = (torch.rand(cfg.batch_size, 1, cfg.resize, cfg.resize, device=dev).mul(2).sub(1)
                  .contiguous(memory_format=fmt) for _ in range(2))
        t.step(x1, x2)
        v1, v2 = (torch.rand(n, 1, eval_size, eval_size, device=dev).mul(2).sub(1) for n in val)
        split = SimpleNamespace(t1=v1, t2=v2, t1_head=v1 > -0.9, t2_head=v2 > -0.9, paired=val[0] == val[1],
                                resize=cfg.resize, size=eval_size)
        validation_pass(t.models.g_t1_t2, t.models.g_t2_t1, split, t.autocast)
        torch.cuda.synchronize(dev)
        done += 1
        del t, x1, x2, v1, v2, split
        torch.cuda.empty_cache()
    # When it ended, as wall-clock time: whether the first trials' warm-ups came after it (`search.throughput`).
    return {"warmed": done, "seconds": round(time.perf_counter() - start, 2), "ended": time.time()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cyclegan.norm_warmup", description=__doc__.splitlines()[0])
    p.add_argument("configs", type=Path, help="a JSON file holding a list of TrainConfig dicts")
    p.add_argument("--val", type=int, nargs=2, default=(16, 16), metavar=("T1", "T2"),
                   help="val slices scored per domain (default: 16 16)")
    p.add_argument("--eval-size", type=int, default=256, help="the side of the val slices (default: 256)")
    args = p.parse_args(argv)
    cfgs = [TrainConfig.from_dict(c) for c in json.loads(args.configs.read_text())]
    print(json.dumps(warm(cfgs, tuple(args.val), args.eval_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
