"""A trial's fixed costs on a GPU: `python -m benchmarks.warmup --data DIR --out out/warmup.json`.

What a search pays before a trial trains at full speed, measured the way a search runs trials: each worker is a
fresh process that loads the data and calls `cyclegan.train.fit` for --epochs epochs, twice with the same config
(the second as a trial that reuses the process, as Ray's `reuse_actors` does), --parallel workers at once (a
search's first wave of trials starting together). Per fit it records `fit`'s own figures (`startup_seconds`,
`warmup_seconds`: the first step to the first replay of the captured step, `warmup_steps`), and the split of the
warm-up: each step's seconds until the step is a replayed graph (synchronised after each, so the first shows
cuDNN's benchmark and the capture shows in the step that makes it). Then the steady speed of the last epoch.

    python -m benchmarks.warmup --data DIR --parallel 1 8 --out out/warmup.json
    python -m benchmarks.warmup --data DIR --parallel 8 --reuse-with next --share 0.125 --threads 1   # as a search
    python -m benchmarks.warmup --data DIR --parallel 8 --set fused_norm=false   # a knob changed in every config

A search differs from the first command in three ways, each an option: the trial that reuses a process mostly
has other shapes than the last one (`--reuse-with next`), so cuDNN's benchmark runs again; each trial's memory is
capped to its share (`--share`); and it has the CPUs Ray gave it as threads (`--threads`, a search's default 1).

It reaches the trainer only through `fit` and `Trainer`, so it measures an older checkout too, side by side:
`PYTHONPATH=OLD python benchmarks/warmup.py ...` with OLD a checkout of that commit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Trials of `spaces/full.yaml`'s kinds: the largest and the smallest steps, at both sizes.
CONFIGS = {
    "256-d8-b1": dict(resize=256, unet_depth=8, batch_size=1),
    "256-d8-b2": dict(resize=256, unet_depth=8, batch_size=2),
    "256-d6-b5": dict(resize=256, unet_depth=6, batch_size=5, disc_layers=2),
    "128-d7-b2": dict(resize=128, unet_depth=7, batch_size=2, ngf=32),
    "128-d5-b1": dict(resize=128, unet_depth=5, batch_size=1, ngf=32, ndf=32),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.warmup", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic", help="a folder holding T1/ and T2/, or 'synthetic'")
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    p.add_argument("--parallel", type=int, nargs="+", default=[1], help="workers at once (one run per value)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--resize", type=int, help="every config at this size instead of its own (a CPU smoke run)")
    p.add_argument("--reuse-with", choices=("same", "next"), default="same",
                   help="the reused fit's config: the worker's own (cuDNN's choices cached), or the next one in "
                        "--configs (new shapes in a warm process, as a search's next trial mostly is)")
    p.add_argument("--share", type=float, help="cap each worker's memory to this share of the GPU, as a search "
                   "caps a trial (search.trainable.cap_gpu_memory)")
    p.add_argument("--threads", type=int, help="each worker's CPU threads (default: the cores over the workers)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one knob of every config, e.g. --set fused_norm=true (repeatable)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # a config's name: run it in this process and print JSON
    p.add_argument("--then", help=argparse.SUPPRESS)  # the reused fit's config
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> int:
    import torch

    from cyclegan.config import TrainConfig, parse_overrides
    from cyclegan.data import load_data
    from cyclegan.train import Trainer, epoch_order, fit

    def knobs_of(name: str) -> dict[str, Any]:
        return {**CONFIGS[name], **({"resize": args.resize} if args.resize else {}), **parse_overrides(args.overrides)}

    dev = torch.device(args.device)
    if args.share and dev.type == "cuda":
        from search.trainable import cap_gpu_memory

        cap_gpu_memory(args.share)
    datasets: dict[int, Any] = {}
    rows = []
    for run, name in (("fresh", args.worker), ("reused", args.then or args.worker)):
        knobs = knobs_of(name)
        data = datasets.setdefault(knobs["resize"], load_data(args.data, knobs["resize"], 0))
        cfg = TrainConfig(**knobs, epochs=args.epochs, seed=len(rows))
        history = fit(cfg, data, device=dev).history
        last = history[-1]
        rows.append({"run": run, "config": name, "set": {k: getattr(cfg, k) for k in parse_overrides(args.overrides)},
                     "startup_seconds": history[0]["startup_seconds"] if run == "fresh" else None,
                     "warmup_seconds": last["warmup_seconds"], "warmup_steps": last["warmup_steps"],
                     # Where it went, on the host (an older trainer does not report them).
                     "first_step_seconds": last.get("warmup_first_step_seconds"),
                     "first_step_cpu_seconds": last.get("warmup_first_step_cpu_seconds"),
                     "first_step_process_cpu_seconds": last.get("warmup_first_step_process_cpu_seconds"),
                     "capture_seconds": last.get("warmup_capture_seconds"),
                     "graphed": last["graphed"], "pairs_per_second": last["pairs_per_second"],
                     "val_seconds": [h["val_seconds"] for h in history]})
    # The split, in the same (now warm) process for a new seed: each step timed on its own until it replays.
    cfg = TrainConfig(**knobs, epochs=args.epochs, seed=len(rows))
    t = Trainer.build(cfg, dev)
    steps = max(len(data.train.t1), len(data.train.t2)) // cfg.batch_size
    runner = t.runner(t.feed(data.train.t1, data.train.t2, steps, bits=data.bits), steps)
    split: list[float] = []

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for epoch in range(1, 101):  # until a replay follows the capture (an older trainer filled its pools first)
        runner.feed.start_epoch(epoch_order(len(data.train.t1), steps, cfg.batch_size, 0, epoch),
                                epoch_order(len(data.train.t2), steps, cfg.batch_size, 1, epoch))
        runner.counter.zero_()  # as `run_epoch` does: the step counter indexes this epoch's batches
        for k in range(steps):
            sync()
            start = time.perf_counter()
            runner.feed.before_step(k)
            runner.replay()
            runner.feed.after_step(k)
            sync()
            split.append(time.perf_counter() - start)
            if runner.replay.captured and len(split) > runner.replay.eager_calls + 1:
                break
            if not runner.replay.enabled and len(split) >= 3:  # the CPU: never captured
                break
        if runner.replay.captured or not runner.replay.enabled:
            break
    rows.append({"run": "split", "step_seconds": split, "captured_at_step": runner.replay.eager_calls + 1})
    print(json.dumps({"config": args.worker, "pid": os.getpid(), "rows": rows}), flush=True)
    return 0


def run_wave(args: argparse.Namespace, names: list[str]) -> list[dict[str, Any]]:
    """Starts one worker per name, all at once; returns what each printed."""
    script = Path(__file__).resolve()
    # The workers import the trainer this process would: this checkout's, or the one PYTHONPATH names first.
    root = Path(importlib.util.find_spec("cyclegan").origin).parent.parent
    # Each its share of the cores as its threads, as Ray gives a trial its CPUs (OMP_NUM_THREADS).
    threads = str(args.threads or max(1, (os.cpu_count() or 1) // len(names)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": threads}
    def then(name: str) -> str:
        return args.configs[(args.configs.index(name) + 1) % len(args.configs)] if args.reuse_with == "next" else name

    procs = [subprocess.Popen([sys.executable, str(script), "--worker", name, "--then", then(name),
                               "--data", args.data, "--epochs", str(args.epochs), "--device", args.device,
                               *(["--resize", str(args.resize)] if args.resize else []),
                               *(["--share", str(args.share)] if args.share else []),
                               *(f"--set={o}" for o in args.overrides)],
                              stdout=subprocess.PIPE, text=True, env=env) for name in names]
    out = []
    for name, proc in zip(names, procs):
        stdout, _ = proc.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        out.append(json.loads(lines[-1]) if proc.returncode == 0 and lines else {"config": name,
                                                                                  "error": proc.returncode})
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    res: dict[str, Any] = {"command": " ".join(sys.argv), "waves": []}
    for k in args.parallel:
        # One at a time (k = 1) runs every config in turn; k > 1 starts k workers together, cycling the configs.
        names = [args.configs[i % len(args.configs)] for i in range(k)]
        for wave in ([[n] for n in args.configs] if k == 1 else [names]):
            results = run_wave(args, wave)
            res["waves"].append({"parallel": k, "results": results})
            for r in results:
                print(line(k, r), flush=True)
    res["summary"] = summary(res["waves"])
    print(json.dumps(res["summary"], indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


def line(k: int, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"parallel {k} {r['config']}: failed ({r['error']})"
    fresh, reused, split = r["rows"]
    steps = " ".join(f"{s:.2f}" for s in split["step_seconds"])
    return (f"parallel {k} {r['config']:10s} start-up {fresh['startup_seconds']:5.1f} s, warm-up fresh "
            f"{fresh['warmup_seconds']:5.2f} s ({fresh['warmup_steps']} eager), reused "
            f"{reused['warmup_seconds']:5.2f} s, {reused['pairs_per_second']:6.1f} pairs/s; "
            f"steps to the first replay: {steps}")


def summary(waves: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in sorted({w["parallel"] for w in waves}):
        ok = [r for w in waves if w["parallel"] == k for r in w["results"] if "error" not in r]
        if not ok:
            continue
        fresh = [r["rows"][0]["warmup_seconds"] for r in ok]
        reused = [r["rows"][1]["warmup_seconds"] for r in ok]
        out[f"parallel_{k}"] = {"runs": len(ok), "warmup_fresh_median": statistics.median(fresh),
                                "warmup_fresh_max": max(fresh), "warmup_reused_median": statistics.median(reused),
                                "warmup_reused_max": max(reused),
                                "startup_median": statistics.median(r["rows"][0]["startup_seconds"] for r in ok)}
    return out


if __name__ == "__main__":
    sys.exit(main())
