"""K processes at batch 2 (256/8), all starting together; process 0 profiles two epochs mid-run.

    PYTHONPATH=. python packprof.py OUT K [seconds]     # writes OUT/pack-K.json; DEV=cpu SIZE=32 DEPTH=3 to try it

Its output: the processes' pairs/s, and process 0's kernels by name with their time per step.
"""
import json
import math
import multiprocessing as mp
import os
import sys
import time
from types import SimpleNamespace


def kernel_table(events, steps: int) -> dict:
    kern: dict[str, list] = {}
    for e in events:
        entry = kern.setdefault(e.name, [0, 0.0])
        entry[0] += 1
        entry[1] += e.time_range.end - e.time_range.start
    spans = sorted((e.time_range.start, e.time_range.end) for e in events)
    covered, cur_s, cur_e = 0.0, None, None  # the union of the kernels' intervals
    for s, e in spans:
        if cur_e is None or s > cur_e:
            covered += 0.0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    covered += 0.0 if cur_e is None else cur_e - cur_s
    return {"kernels_per_step": len(events) / steps,
            "kernel_sum_ms_per_step": sum(v[1] for v in kern.values()) / 1000 / steps,
            "covered_ms_per_step": covered / 1000 / steps,
            "kernels": {n: [c / steps, us / steps] for n, (c, us) in kern.items()}}


def work(i: int, k: int, barrier, out: str, duration: float) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.bench import epoch_order, sync, train_slices, trial_config
    from cyclegan.train import Trainer

    dev = torch.device(os.environ.get("DEV", "cuda"))
    gpu = dev.type == "cuda"
    size, depth = int(os.environ.get("SIZE", 256)), int(os.environ.get("DEPTH", 8))
    if k > 1 and gpu:
        torch.cuda.set_per_process_memory_fraction(1.0 / k)
    torch.set_num_threads(1)
    cfg = trial_config(SimpleNamespace(size=size, depth=depth), 2)
    t = Trainer.build(cfg, dev)
    layout = torch.channels_last if gpu else torch.contiguous_format
    t1, t2 = (s.to(dev).contiguous(memory_format=layout) for s in train_slices(size))
    steps = 10
    runner = t.runner(t.feed(t1, t2, steps, bits=None), steps)
    o1, o2 = (epoch_order(len(s), steps, 2, j, 0) for j, s in enumerate((t1, t2)))
    for _ in range(max(1, math.ceil((cfg.pool_size / 2 + runner.replay.warmup + 1) / steps)) + 1):
        runner.run_epoch(o1, o2)
    sync(dev)
    barrier.wait()
    t0, done, res = time.time(), 0, None
    while time.time() - t0 < duration:
        if i == 0 and res is None and time.time() - t0 > duration / 3:
            sync(dev)
            w0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CUDA if gpu else ProfilerActivity.CPU]) as prof:
                runner.run_epoch(o1, o2)
                runner.run_epoch(o1, o2)
                sync(dev)
            wall = time.perf_counter() - w0
            kind = "CUDA" if gpu else "CPU"
            res = {"prof_wall_ms_per_step": 1000 * wall / (2 * steps),
                   **kernel_table([e for e in prof.events() if e.device_type.name == kind], 2 * steps)}
            continue
        runner.run_epoch(o1, o2)
        done += steps
    with open(f"{out}/p{k}-{i}.json", "w") as f:
        json.dump({"pairs_per_s": done * 2 / (time.time() - t0), **(res or {})}, f)


if __name__ == "__main__":
    out, k = sys.argv[1], int(sys.argv[2])
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 8
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(k)
    procs = [ctx.Process(target=work, args=(i, k, barrier, out, duration)) for i in range(k)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rs = [json.load(open(f"{out}/p{k}-{i}.json")) for i in range(k)]
    summary = {"k": k, "pairs_per_s": sum(r["pairs_per_s"] for r in rs), "per": [r["pairs_per_s"] for r in rs],
               **{key: v for key, v in rs[0].items() if key != "pairs_per_s"}}
    with open(f"{out}/pack-{k}.json", "w") as f:
        json.dump(summary, f, indent=1)
    print(k, round(summary["pairs_per_s"], 1), {key: round(v, 3) for key, v in summary.items() if key.endswith("step")})
