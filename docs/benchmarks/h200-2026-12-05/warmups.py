"""Per trial of a search run: fresh or reused process, start-up and warm-up, and the medians of each kind.

    python docs/benchmarks/h200-2026-12-05/warmups.py RUNS/NAME

`start` is the trial's first training step, in seconds after the driver's process started.
"""

import json
import statistics
import sys
from pathlib import Path

run = Path(sys.argv[1])
t0 = json.loads((run / "driver.json").read_text())["sessions"][0]["started"]
rows = []
for d in sorted(run.glob("trial_*")):
    lines = [json.loads(x) for x in (d / "result.json").read_text().splitlines() if x.strip()]
    first = next((r for r in lines if "warmup_seconds" in r), None)
    if first is not None:
        rows.append((d.name, first))
rows.sort(key=lambda r: r[1]["first_step_at"])
seen, kinds = set(), {}
for name, r in rows:
    kinds[name] = "reused" if r["process_started"] in seen else "fresh"
    seen.add(r["process_started"])
    print(f"{name:28s} {kinds[name]:6s} start {r['first_step_at'] - t0:6.1f} startup {r['startup_seconds']:5.2f} "
          f"warm {r['warmup_seconds']:5.2f} step1 {r['warmup_first_step_seconds']:5.2f} "
          f"cap {r['warmup_capture_seconds']:5.2f}")
for kind in ("fresh", "reused"):
    w = [r["warmup_seconds"] for name, r in rows if kinds[name] == kind]
    s = [r["startup_seconds"] for name, r in rows if kinds[name] == kind]
    if w:
        print(f"{kind}: n={len(w)} median warm {statistics.median(w):.2f} max {max(w):.2f} "
              f"median startup {statistics.median(s):.2f}")
