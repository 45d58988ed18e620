"""K processes at batch 2 (256/8), all starting together; process 0 profiles two epochs mid-run.
argv: OUT K [duration]. Writes OUT/pack-K.json: pairs/s per process, process 0's kernels by name."""
import json, math, os, sys, time
import multiprocessing as mp
from types import SimpleNamespace


def work(i, k, barrier, out, duration):
    import torch
    from torch.profiler import ProfilerActivity, profile
    from benchmarks.bench import train_slices, trial_config, epoch_order, sync
    from cyclegan.train import Trainer
    dev = torch.device(os.environ.get("DEV", "cuda"))
    size, depth = int(os.environ.get("SIZE", 256)), int(os.environ.get("DEPTH", 8))
    if k > 1 and dev.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0 / k)
    torch.set_num_threads(1)
    cfg = trial_config(SimpleNamespace(size=size, depth=depth), 2)
    t = Trainer.build(cfg, dev)
    t.compile()
    t1, t2 = (s.to(dev).contiguous(memory_format=torch.channels_last if dev.type == "cuda" else torch.contiguous_format) for s in train_slices(size))
    steps = 10
    runner = t.runner(t.feed(t1, t2, steps, bits=None), steps)
    o1, o2 = (epoch_order(len(s), steps, 2, j, 0) for j, s in enumerate((t1, t2)))
    for _ in range(max(1, math.ceil((cfg.pool_size / 2 + runner.replay.warmup + 1) / steps)) + 1):
        runner.run_epoch(o1, o2)
    sync(dev)
    barrier.wait()
    t0, done, prof_done, res = time.time(), 0, False, {}
    while time.time() - t0 < duration:
        if i == 0 and not prof_done and time.time() - t0 > duration / 3:
            sync(dev)
            w0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CUDA if dev.type == "cuda" else ProfilerActivity.CPU]) as prof:
                runner.run_epoch(o1, o2); runner.run_epoch(o1, o2)
                sync(dev)
            wall = time.perf_counter() - w0
            kern = {}
            evs = [e for e in prof.events() if e.device_type.name == ("CUDA" if dev.type == "cuda" else "CPU")]
            for e in evs:
                a = kern.setdefault(e.name, [0, 0.0])
                a[0] += 1; a[1] += e.time_range.end - e.time_range.start
            spans = sorted((e.time_range.start, e.time_range.end) for e in evs)
            covered, cur_s, cur_e = 0.0, None, None
            for s, e in spans:
                if cur_e is None or s > cur_e:
                    if cur_e is not None: covered += cur_e - cur_s
                    cur_s, cur_e = s, e
                else:
                    cur_e = max(cur_e, e)
            if cur_e is not None: covered += cur_e - cur_s
            res = {"prof_wall_ms_per_step": 1000 * wall / (2 * steps), "kernels_per_step": len(evs) / (2 * steps),
                   "kernel_sum_ms_per_step": sum(v[1] for v in kern.values()) / 1000 / (2 * steps),
                   "covered_ms_per_step": covered / 1000 / (2 * steps),
                   "kernels": {n: [c / (2 * steps), us / (2 * steps)] for n, (c, us) in kern.items()}}
            prof_done = True
            continue
        runner.run_epoch(o1, o2)
        done += steps
    el = time.time() - t0
    json.dump({"pairs_per_s": done * 2 / el, **res}, open(f"{out}/p{k}-{i}.json", "w"))


if __name__ == "__main__":
    out, k = sys.argv[1], int(sys.argv[2])
    duration = float(sys.argv[3]) if len(sys.argv) > 3 else 8
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(k)
    ps = [ctx.Process(target=work, args=(i, k, barrier, out, duration)) for i in range(k)]
    [p.start() for p in ps]; [p.join() for p in ps]
    rs = [json.load(open(f"{out}/p{k}-{i}.json")) for i in range(k)]
    summ = {"k": k, "pairs_per_s": sum(r["pairs_per_s"] for r in rs), "per": [r["pairs_per_s"] for r in rs],
            **{key: v for key, v in rs[0].items() if key != "pairs_per_s"}}
    json.dump(summ, open(f"{out}/pack-{k}.json", "w"), indent=1)
    print(k, round(summ["pairs_per_s"], 1), {key: round(v, 3) for key, v in summ.items() if key.endswith("step")})
