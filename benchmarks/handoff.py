"""What handing the data to trials through Ray costs against each trial reading it: `python -m benchmarks.handoff DATA`.

    python -m benchmarks.handoff /data/slices --resize 128 256 --repeat 3

Times, for a data folder (or URI): the driver's one read (`cyclegan.data.read_data`) and its `ray.put`; then, in a
Ray worker process as a trial runs, what a trial spends before it can train: `ray.get` of the slices plus
`build_dataset` at each resize (what `search.trainable` does), against `load_data` from the folder (what a trial
did when it read `--data` itself). Prints one JSON object; medians over `--repeat` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.handoff", description=__doc__.splitlines()[0])
    p.add_argument("data", help="a folder holding T1/ and T2/, or a URI of one")
    p.add_argument("--resize", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    import ray

    from cyclegan.data import build_dataset, load_data, read_data

    reads = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        slices = read_data(args.data)
        reads.append(time.perf_counter() - start)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    ref = ray.put(slices)
    put_s = time.perf_counter() - start

    @ray.remote(num_cpus=1)
    def trial(ref_list: list, resize: int, from_store: bool) -> dict[str, float]:
        # The slices come as a list, so that Ray hands the task the reference and the task times its own get.
        start = time.perf_counter()
        if from_store:
            data = ray.get(ref_list[0])
            got = time.perf_counter()
            build_dataset(data, resize)
        else:
            got = start
            load_data(args.data, resize)
        return {"get": got - start, "total": time.perf_counter() - start}

    ray.get(trial.remote([ref], args.resize[0], True))  # a warm worker, as a trial's process has imported torch
    out = {"data": args.data, "slices": slices.count, "mib": round(slices.nbytes / 2**20, 1),
           "driver_read_s": round(statistics.median(reads), 3), "driver_put_s": round(put_s, 3), "trial": {}}
    for resize in args.resize:
        store = [ray.get(trial.remote([ref], resize, True)) for _ in range(args.repeat)]
        folder = [ray.get(trial.remote([ref], resize, False)) for _ in range(args.repeat)]
        out["trial"][resize] = {
            "object_store_get_s": round(statistics.median(r["get"] for r in store), 3),
            "object_store_get_and_build_s": round(statistics.median(r["total"] for r in store), 3),
            "own_read_s": round(statistics.median(r["total"] for r in folder), 3)}
    ray.shutdown()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
