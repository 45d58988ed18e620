"""How fast a finished (or running) search trained: `python -m search.throughput RUN_DIR`.

Per trial: the image pairs it trained on and its mean training speed (pairs/s, the training step alone).
Aggregate: all trials' pairs over the wall time from the first trial's start to the last report, which is
what sharing GPUs between trials buys. Read from each trial's `result.json` (Ray Tune's own log).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def trial_rows(run_dir: Path) -> list[dict]:
    rows = []
    for result in sorted(run_dir.glob("trial_*/result.json")):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if not reports:
            continue
        pairs = sum(r["pairs_per_second"] * r["train_seconds"] for r in reports)
        train_s = sum(r["train_seconds"] for r in reports)
        rows.append({"trial": result.parent.name, "epochs": reports[-1]["epoch"], "pairs": pairs,
                     "pairs_per_second": pairs / train_s if train_s else 0.0,
                     "start": reports[0]["timestamp"] - reports[0]["time_total_s"], "end": reports[-1]["timestamp"],
                     "config": {k: reports[-1]["config"].get(k) for k in ("resize", "batch_size", "unet_depth")}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.throughput", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    rows = trial_rows(args.run_dir)
    if not rows:
        print(f"error: {args.run_dir}: no trial_*/result.json to read", file=sys.stderr)
        return 2
    wall = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    for r in rows:
        print(f"{r['trial']}: {r['epochs']} epochs, {r['pairs']:.0f} pairs, {r['pairs_per_second']:.1f} pairs/s "
              f"{r['config']}")
    total = sum(r["pairs"] for r in rows)
    print(json.dumps({"trials": len(rows), "wall_seconds": round(wall, 1), "pairs": round(total),
                      "aggregate_pairs_per_second": round(total / wall, 1),
                      "mean_trial_pairs_per_second": round(sum(r["pairs_per_second"] for r in rows) / len(rows), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
