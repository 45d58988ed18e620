"""The memory estimates a search's driver makes: `python -m benchmarks.estimates TRIALS --out out/estimates.json`.

With `gpus_per_trial: auto`, Tune's loop asks each new trial's memory estimate (`search.packing.needed_bytes`, which
traces a train step and a validation pass on the meta device) before it can place the trial, and while it does, no
other trial's report is taken in. This makes those estimates for a search's trials in one fresh process, in the
order the search made them, and times each: TRIALS is a run's folder (its trials' `params.json`, in the order they
started) or a JSON file holding a list of trial configs.

    python -m benchmarks.estimates runs/full --data DIR --out out/estimates.json

`--data` gives the slices' sizes as the driver counts them (default: the phantom's, as a search without --data).
It reaches the library only through `estimate_memory`, so it times an older checkout too, side by side:
`PYTHONPATH=OLD python benchmarks/estimates.py ...` with OLD a checkout of that commit. The counts kept on disk
(`cyclegan.trace_store`) are neither read nor written: every estimate traces, as on a machine's first search;
`--stored` reads and adds to them, as a search does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any


def trial_configs(source: Path) -> list[dict[str, Any]]:
    """The trials' configs: a JSON list, or a run folder's `trial_*/params.json` in the order the trials started."""
    if source.is_file():
        return json.loads(source.read_text())
    trials = sorted(source.glob("trial_*/params.json"), key=lambda p: (_started(p.parent), p.parent.name))
    if not trials:
        raise SystemExit(f"error: {source}: no trial_*/params.json in it; give a run's folder or a JSON list of "
                         "configs")
    return [json.loads(p.read_text()) for p in trials]


def _started(trial: Path) -> float:
    try:
        return float(json.loads((trial / "resources.json").read_text())["started"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("inf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trials", type=Path, help="a run's folder, or a JSON file with a list of trial configs")
    p.add_argument("--data", help="a folder of T1/ and T2/ slices, sized as the driver sizes them")
    p.add_argument("--out", type=Path, help="write the timings here as JSON")
    p.add_argument("--stored", action="store_true", help="read and add to the counts kept on disk")
    args = p.parse_args(argv)
    if not args.stored:
        os.environ["MRI_CYCLEGAN_CACHE"] = "off"  # cyclegan.trace_store.CACHE_ENV, named so for older checkouts
    configs = trial_configs(args.trials)

    start = time.perf_counter()
    from cyclegan.memory import DataSize, estimate_memory
    from search.packing import trial_config
    if args.data:
        from cyclegan.data import read_data
        data = DataSize.of(read_data(args.data))
    else:
        data = DataSize.of_phantom()
    imports = time.perf_counter() - start

    rows = []
    for config in configs:
        cfg = trial_config(config)  # as the driver reads a trial's config
        start = time.perf_counter()
        estimate = estimate_memory(cfg, data)
        rows.append({"config": config, "seconds": time.perf_counter() - start, "bytes": estimate})
    seconds = [r["seconds"] for r in rows]
    summary = {"trials": len(rows), "imports_seconds": imports, "total_seconds": sum(seconds),
               "first_seconds": seconds[0] if seconds else 0.0,
               "median_seconds": statistics.median(seconds) if seconds else 0.0,
               "traced": sum(s > 0.01 for s in seconds)}
    print(f"{len(rows)} estimates: {summary['total_seconds']:.2f} s in all (the first "
          f"{summary['first_seconds']:.2f} s, median {summary['median_seconds']:.3f} s; {summary['traced']} over "
          f"10 ms), after {imports:.1f} s of imports")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
