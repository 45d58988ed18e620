"""Data of real size on a GPU: `python -m benchmarks.bigdata --sizes 1000 10000 50000 --out out/bigdata.json`.

For each size N (slices a contrast, drawn as phantom heads of --slices slices at --size): writes the NIfTI heads
once under --data-root (`cyclegan.phantom.write_volumes`), reads them once (timed) and keeps them as one file with
the training slices compact, then trains --trials trials side by side, each in its own process with its memory
capped as a search caps it (--share of a --gpu-memory-gib GPU, less its CUDA context), for --epochs epochs
(depth 8, batch 2 by default). Per trial it prints where its training slices went (resident or streamed), its
peak reserved memory against `estimate_memory` with its data, its start-up (process start to its first step
done), epoch and validation seconds and pairs/s; per size, the aggregate pairs/s.

Peak against the estimate at three sizes, one trial each, the whole GPU:
    python -m benchmarks.bigdata --sizes 1000 10000 50000 --epochs 2 --max-steps 300 --out out/bigdata.json
Four trials sharing one GPU, each capped as a quarter of a 24 GB A10G:
    python -m benchmarks.bigdata --sizes 50000 --trials 4 --share 0.25 --gpu-memory-gib 22 --epochs 2 \\
        --max-steps 300 --out out/bigdata4.json
The same as a search (each trial reads --data itself until the driver hands it over):
    python -m cyclegan.phantom --volumes 340 --slices 150 --size 256 --out DATA
    python -m search.run spaces/unet_depth.yaml --data DATA --gpus-per-trial 0.25 --gpu-memory-gib 22 \\
        --num-samples 4 --max-concurrent 4 --set resize=256 --set unet_depth=8 --set batch_size=2 --set epochs=2
The CPU smoke run (tests/cyclegan/test_bigdata_bench.py):
    python -m benchmarks.bigdata --device cpu --sizes 24 --slices 12 --size 32 --depth 5 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

GiB = 2**30


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bigdata", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000], help="slices a contrast")
    p.add_argument("--slices", type=int, default=150, help="slices a head")
    p.add_argument("--size", type=int, default=256, help="the slices' side, and resize")
    p.add_argument("--depth", type=int, default=8, help="unet_depth")
    p.add_argument("--batch", type=int, default=2, help="batch_size")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, help="steps an epoch at most: a 50k-slice epoch is 25k steps, so its "
                   "time is measured on the first --max-steps and scaled to the whole epoch")
    p.add_argument("--trials", type=int, default=1, help="trials side by side, each its own process")
    p.add_argument("--share", type=float, default=1.0, help="each trial's share of a GPU (its memory cap)")
    p.add_argument("--gpu-memory-gib", type=float, help="the GPU's memory the share is of (default: the GPU's own)")
    p.add_argument("--feed", choices=("auto", "resident", "streamed"), default="auto",
                   help="where the training slices go: as a search plans it from the budget, or forced")
    p.add_argument("--threads", type=int, help="each trial's CPU threads (default: the cores over --trials, as Ray "
                   "gives a trial its CPUs)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--data-root", type=Path, help="where the heads and their cache go (default: a temporary folder)")
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # a trial: the cache it trains on
    p.add_argument("--started", type=float, help=argparse.SUPPRESS)  # when its process was started
    return p.parse_args(argv)


def prepare(args: argparse.Namespace, n: int, root: Path) -> tuple[Path, dict[str, Any]]:
    """The heads of an n-slice set (written once) and its cache: train compact, the scored val slices, no test."""
    import torch

    from cyclegan.data import load_data
    from cyclegan.evaluate import validation_subset
    from cyclegan.feed import compact, compact_dtype
    from cyclegan.phantom import write_volumes

    heads = math.ceil(n / args.slices)
    folder = root / f"phantom-{heads}x{args.slices}-{args.size}"
    cache = folder / "dataset.pt"
    info: dict[str, Any] = {"heads": heads, "folder": str(folder)}
    if not cache.is_file():
        start = time.perf_counter()
        if not (folder / "T2").is_dir():
            write_volumes(folder, heads, args.slices, args.size)
        info["write_s"] = time.perf_counter() - start
        start = time.perf_counter()
        data = load_data(folder, args.size)
        info["read_s"] = time.perf_counter() - start
        dtype = compact_dtype(data.bits)
        train = replace(data.train, t1=compact(data.train.t1, dtype), t2=compact(data.train.t2, dtype))
        val = validation_subset(data.val)
        data = replace(data, train=train, val=val, test=val)  # what a trial holds: no test, val as scored
        torch.save(data, cache)
    return cache, info


def worker(args: argparse.Namespace) -> int:
    """One trial: capped as a search caps it, trained on the cache, its figures as one JSON line."""
    import torch

    from cyclegan.config import TrainConfig
    from cyclegan.graphed import StepRunner
    from cyclegan.memory import CONTEXT_BYTES, DataSize, estimate_memory, plan_data
    from cyclegan.train import fit

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and dev.index is None:  # the allocator's cap is set per device, by index
        dev = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(dev).total_memory if cuda else None
    gpu_bytes = int(args.gpu_memory_gib * GiB) if args.gpu_memory_gib else total
    budget = None
    if cuda:
        budget = (max(args.share * gpu_bytes - CONTEXT_BYTES, args.share * gpu_bytes / 2) if args.share < 1
                  else gpu_bytes - CONTEXT_BYTES)
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), dev)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.trials))
    start = time.perf_counter()
    data = torch.load(args.worker, weights_only=False, mmap=True)
    load_s = time.perf_counter() - start
    cfg = TrainConfig(resize=args.size, unet_depth=args.depth, batch_size=args.batch, epochs=args.epochs,
                      **({} if cuda else {"ngf": 8, "ndf": 8, "disc_layers": 2}))
    first: dict[str, float] = {}
    one = StepRunner._one

    def timed(self: StepRunner) -> None:  # the first steps run eagerly, before the capture: it may wait for them
        one(self)
        if "step" not in first:
            if cuda:
                torch.cuda.synchronize(dev)
            first["step"] = time.time()

    StepRunner._one = timed
    from cyclegan import train
    from cyclegan.train import Trainer

    full_steps = math.ceil(max(len(data.train.t1), len(data.train.t2)) / cfg.batch_size)
    steps = min(full_steps, args.max_steps or full_steps)
    if steps < full_steps:  # the same data on the device, fewer steps an epoch: every cost but the epoch's length
        runner, feed = Trainer.runner, Trainer.feed
        Trainer.runner = lambda self, f, _: runner(self, f, steps)
        Trainer.feed = lambda self, t1, t2, _, **kw: feed(self, t1, t2, steps, **kw)
        order = train.epoch_order
        train.epoch_order = lambda n, _, batch, seed, epoch: order(n, steps, batch, seed, epoch)
    size = DataSize.of(data)
    stream = cuda and (args.feed == "streamed" or args.feed == "auto" and plan_data(cfg, size, budget) == "streamed")
    result = fit(cfg, data, device=dev, stream=stream)
    streamed = result.placement["train"] == "streamed"
    out = {"placement": result.placement, "load_s": load_s, "budget_gib": budget / GiB if budget else None,
           "estimate_gib": estimate_memory(cfg, size, streamed) / GiB,
           "peak_reserved_gib": torch.cuda.max_memory_reserved(dev) / GiB if cuda else None,
           "peak_allocated_gib": torch.cuda.max_memory_allocated(dev) / GiB if cuda else None,
           "startup_s": first["step"] - args.started,
           "steps": steps, "full_steps": full_steps,
           "epoch_s": [h["train_seconds"] for h in result.history],
           "full_epoch_s": [h["train_seconds"] * full_steps / steps for h in result.history],
           "val_s": [h["val_seconds"] for h in result.history],
           "pairs_per_s": [steps * cfg.batch_size / h["train_seconds"] for h in result.history],
           "graphed": result.history[-1]["graphed"], "warmup_s": result.history[-1]["warmup_seconds"],
           "train_slices": [size.train_t1, size.train_t2]}
    print(json.dumps(out))
    return 0


def run_trials(args: argparse.Namespace, cache: Path) -> list[dict[str, Any]]:
    common = ["--size", str(args.size), "--depth", str(args.depth), "--batch", str(args.batch),
              "--epochs", str(args.epochs), "--share", str(args.share), "--device", args.device,
              "--trials", str(args.trials), "--feed", args.feed,
              *(["--threads", str(args.threads)] if args.threads else []),
              *(["--max-steps", str(args.max_steps)] if args.max_steps else []),
              *(["--gpu-memory-gib", str(args.gpu_memory_gib)] if args.gpu_memory_gib else [])]
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.bigdata", "--worker", str(cache), "--started",
                               repr(time.time()), *common], stdout=subprocess.PIPE, text=True)
             for _ in range(args.trials)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        lines = out.strip().splitlines()
        results.append(json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.returncode})
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    root = args.data_root or Path(tempfile.mkdtemp(prefix="bigdata-"))
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "sizes": {}}
    for n in args.sizes:
        cache, info = prepare(args, n, root)
        trials = run_trials(args, cache)
        ok = [t for t in trials if "error" not in t]
        aggregate = sum(t["pairs_per_s"][-1] for t in ok)
        report["sizes"][n] = {**info, "trials": trials, "aggregate_pairs_per_s": aggregate}
        print(f"{n:,} slices a contrast ({info['heads']} heads): {len(ok)}/{len(trials)} trials ran; aggregate "
              f"{aggregate:.1f} pairs/s" + (f"; read in {info['read_s']:.0f} s" if "read_s" in info else ""))
        for t in ok:
            peak = f"{t['peak_reserved_gib']:.2f}" if t["peak_reserved_gib"] is not None else "-"
            print(f"  {t['placement']['train']} {t['placement']['train_dtype']}: peak {peak} GiB vs estimate "
                  f"{t['estimate_gib']:.2f} GiB; start-up {t['startup_s']:.1f} s; epoch {t['full_epoch_s'][-1]:.1f} s "
                  f"({t['steps']} of {t['full_steps']} steps timed); "
                  f"val {t['val_s'][-1]:.2f} s; {t['pairs_per_s'][-1]:.1f} pairs/s; "
                  f"{'graphed' if t['graphed'] else 'eager'} after {t['warmup_s']:.1f} s")
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all("error" not in t for s in report["sizes"].values() for t in s["trials"]) else 1


if __name__ == "__main__":
    sys.exit(main())
