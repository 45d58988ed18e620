"""How efficiently a search used its machines: `python -m search.throughput RUN_DIR [--peak PAIRS_PER_S] [--dmon F]`.

What a user pays for is the command's whole wall time, so that is what pairs are counted against: image pairs
trained over the command's wall time (from `driver.json`, which `search.run` writes: when the command started and
ended, when the trials ran, how long the final re-scoring and export took; summed over a resumed run's commands)
and over the trial window (first trial's start to last trial's end). Then where the rest went, per trial and
summed, in seconds and in GPU-seconds (seconds times the trial's GPU share; the driver's own time times the
GPUs Ray saw):

- start-up: a trial's process start to its first training step (imports, CUDA context, data, networks);
- warm-up: the training time of the epochs before the step runs at full speed (cuDNN's benchmark, the eager
  steps before the capture, the CUDA graph captures) beyond what those pairs take at full speed; the
  trainer's own figure, first step to first graphed step, is shown beside it;
- checkpoints: the training loop's time on them (the copy to host memory and any wait for the write);
- validation: each epoch's val pass;
- logging: each epoch's TensorBoard events and sample images;
- reports: the training loop's time in each epoch's report to Ray Tune beyond the checkpoint's own, which the report
  call holds (`tune.report` waits until the driver has taken the result in and asked the trial for the next, and
  copies a checkpoint into the run's storage);
- other: the rest of a trial's wall time (the last epoch's report, the process's end, Ray's own time between);
- idle gaps: a slot (one trial's place on the machines) left empty between one trial's end and the next one's
  start on it;
- driver start-up (the command's start to the first trial's) and tail (the last trial's end to the command's end:
  the final re-scoring, the export, the report's plots and files, and Ray's shutdown, which runs beside these three).

Read from each trial's `result.json` (Ray Tune's log of its reports, where the trainer's timing fields are) and
`resources.json` (search/trainable.py), and the run's `driver.json`. `--peak` (the packed peak, pairs/s, e.g.
from `python -m cyclegan.bench --sections processes`) adds each rate as a share of it. `--dmon` (what
`nvidia-smi dmon -s u -o DT` wrote while the command ran) adds the GPUs' mean SM use over the command's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

DRIVER = "driver.json"
LOSSES = ("startup", "warmup_lost", "checkpoint", "validation", "logging", "reports", "other")


def record_driver(run_path: str, session: dict[str, Any]) -> None:
    """Appends one command's times to RUN/driver.json (a folder or a URI such as s3://bucket/runs/NAME)."""
    import pyarrow.fs

    if "://" in run_path:
        fs, path = pyarrow.fs.FileSystem.from_uri(f"{run_path.rstrip('/')}/{DRIVER}")
    else:
        fs, path = pyarrow.fs.LocalFileSystem(), str(Path(run_path).resolve() / DRIVER)
    sessions = []
    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(path) as f:
            sessions = json.loads(f.read()).get("sessions", [])
    with fs.open_output_stream(path) as f:
        f.write((json.dumps({"sessions": [*sessions, session]}, indent=1) + "\n").encode())


def _lines(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []


def _attempts(reports: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A trial's reports split by the process that made them (a retried or resumed trial has several)."""
    runs: list[list[dict[str, Any]]] = []
    for r in reports:
        if not runs or r.get("process_started") != runs[-1][-1].get("process_started"):
            runs.append([])
        runs[-1].append(r)
    return runs


def _warmup_lost(attempt: list[dict[str, Any]]) -> float:
    """Training seconds of the epochs before the first at full speed, beyond what their pairs take at full speed
    (the median rate of the later epochs). Full speed: after the epoch whose step was captured, or after the first
    epoch where the step is never captured. 0 where no later epoch gives the rate."""
    graphs = any(r.get("warmup_steps", 0) > 0 or r.get("graphed") for r in attempt)
    if graphs:
        first = next((i for i, r in enumerate(attempt) if r.get("graphed")), len(attempt) - 1)
    else:
        first = 0
    steady = [r["pairs_per_second"] for r in attempt[first + 1:] if r.get("pairs_per_second")]
    if not steady:
        return 0.0
    rate = statistics.median(steady)
    return sum(max(0.0, r["train_seconds"] - r["pairs_per_second"] * r["train_seconds"] / rate)
               for r in attempt[:first + 1])


def trial_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row a trial that reported: its pairs, its wall time and where that time went (seconds)."""
    rows = []
    for result in sorted(run_dir.glob("trial_*/result.json")):
        reports = _lines(result)
        if not reports:
            continue
        try:
            resources = json.loads((result.parent / "resources.json").read_text())
        except (OSError, ValueError):
            resources = {}
        attempts = _attempts(reports)
        timed = [a for a in attempts if "first_step_at" in a[0]]
        end = max(reports[-1]["timestamp"], resources.get("ended") or 0.0)
        pairs = sum(r["pairs_per_second"] * r["train_seconds"] for r in reports)
        rows.append({
            "trial": result.parent.name, "epochs": reports[-1]["epoch"], "pairs": pairs,
            "gpu_share": float(resources.get("gpu_share") or 0.0),
            # A process's start where the trainer recorded it; else (a run from before it did) Ray's own count.
            "process_starts": [a[0]["process_started"] for a in timed],
            "first_steps": [a[0]["first_step_at"] for a in timed],
            "start": min([a[0]["process_started"] for a in timed]
                         or [reports[0]["timestamp"] - reports[0]["time_total_s"]]),
            "end": end,
            "train": sum(r["train_seconds"] for r in reports),
            "validation": sum(r.get("val_seconds", 0.0) for r in reports),
            "checkpoint": sum(r.get("checkpoint_seconds", 0.0) for r in reports),
            "checkpoint_write": sum(r.get("checkpoint_write_seconds", 0.0) for r in reports),
            # Trainers from before these were reported leave them in `other`.
            "logging": sum(r.get("log_seconds", 0.0) for r in reports),
            "reports": max(0.0, sum(r.get("report_seconds", 0.0) for r in reports)
                           - sum(r.get("checkpoint_seconds", 0.0) for r in reports if "report_seconds" in r)),
            "warmup": sum(max(r.get("warmup_seconds", 0.0) for r in a) for a in timed),
            "warmup_lost": sum(_warmup_lost(a) for a in timed),
            "config": {k: reports[-1].get("config", {}).get(k) for k in ("resize", "batch_size", "unet_depth")},
        })
    _own_starts(rows)
    for r in rows:
        r["wall"] = r["end"] - r["start"]
        r["pairs_per_second"] = r["pairs"] / r["train"] if r["train"] else 0.0
        r["other"] = (r["wall"] - r["startup"] - r["train"] - r["validation"] - r["checkpoint"] - r["logging"]
                      - r["reports"])
        r["first_step"] = min(r["first_steps"], default=None)
        for k in ("process_starts", "first_steps"):
            del r[k]
    return rows


def _own_starts(rows: list[dict[str, Any]]) -> None:
    """Start-up from the process start, or, where Ray ran an earlier trial in the same process (it can reuse one),
    from that trial's end."""
    ends = {}  # process start -> the ends of trials that ran in that process
    for r in rows:
        for p in r["process_starts"]:
            ends.setdefault(p, []).append(r["end"])
    for r in rows:
        starts = [max([p, *(e for e in ends[p] if e <= f)]) for p, f in zip(r["process_starts"], r["first_steps"])]
        r["startup"] = sum(f - s for s, f in zip(starts, r["first_steps"]))
        if starts:
            r["start"] = min(starts)


def idle_gaps(rows: list[dict[str, Any]], most: int | None = None) -> tuple[float, float]:
    """(seconds, GPU-seconds) of slots left empty between trials: each trial takes the slot freed last before its
    start (as Ray gives a freed place to the next trial), else a new slot; with all `most` slots taken (the
    search's max_concurrent), the one that frees first, whose trial was still ending as this one's process
    started (Ray starts the next trial's process while the last one shuts down)."""
    slots: list[float] = []
    seconds = gpu_seconds = 0.0
    for r in sorted(rows, key=lambda r: r["start"]):
        free = [i for i, end in enumerate(slots) if end <= r["start"]]
        if free:
            i = max(free, key=lambda i: slots[i])
        elif most is not None and len(slots) >= most:
            i = min(range(len(slots)), key=lambda i: slots[i])
        else:
            slots.append(r["end"])
            continue
        gap = max(0.0, r["start"] - slots[i])
        seconds += gap
        gpu_seconds += gap * r["gpu_share"]
        slots[i] = max(slots[i], r["end"])
    return seconds, gpu_seconds


def efficiency(run_dir: Path, peak: float | None = None) -> dict[str, Any]:
    rows = trial_rows(run_dir)
    if not rows:
        raise FileNotFoundError(f"{run_dir}: no trial_*/result.json to read")
    sessions = _lines_json(run_dir / DRIVER)
    first, last = min(r["start"] for r in rows), max(r["end"] for r in rows)
    pairs = sum(r["pairs"] for r in rows)
    gpu = lambda key: sum(r[key] * r["gpu_share"] for r in rows)  # noqa: E731
    out: dict[str, Any] = {"trials": rows, "pairs": pairs, "window_seconds": last - first,
                           "pairs_per_second_window": pairs / (last - first) if last > first else 0.0}
    lost = {k: sum(r[k] for r in rows) for k in LOSSES}
    lost_gpu = {k: gpu(k) for k in LOSSES}
    lost["idle_gaps"], lost_gpu["idle_gaps"] = idle_gaps(rows, max((s.get("max_concurrent") or 0 for s in sessions),
                                                                   default=0) or None)
    if sessions:
        gpus = max(s.get("gpus", 0.0) for s in sessions)
        command = sum(s["ended"] - s["started"] for s in sessions)
        tail = sessions[-1]
        lost["driver_startup"] = first - sessions[0]["started"]
        out["driver_phases"] = driver_phases(sessions[0], first)
        if sessions[0].get("ray_starting") is not None and sessions[0].get("imported") is not None:
            out["imports_beside_ray_seconds"] = sessions[0]["imported"] - sessions[0]["ray_starting"]
        if sessions[0].get("kernels_ahead"):
            out["kernels_ahead_seconds"] = max(k["seconds"] for k in sessions[0]["kernels_ahead"])
        steps = [r["first_step"] for r in rows if r["first_step"] is not None]
        if steps:
            out["first_step_seconds"] = min(steps) - sessions[0]["started"]
        lost["tail"] = max(0.0, tail["ended"] - last)
        lost_gpu["driver_startup"], lost_gpu["tail"] = lost["driver_startup"] * gpus, lost["tail"] * gpus
        out.update(command_seconds=command, pairs_per_second_command=pairs / command, gpus=gpus,
                   **{k: tail.get(k) for k in ("rescore_seconds", "export_seconds", "report_seconds",
                                               "shutdown_seconds")})
    out.update(lost_seconds=lost, lost_gpu_seconds=lost_gpu if any(r["gpu_share"] for r in rows) else None)
    if peak:
        out["peak_pairs_per_second"] = peak
        for key in ("pairs_per_second_command", "pairs_per_second_window"):
            if key in out:
                out[key.replace("pairs_per_second", "of_peak")] = out[key] / peak
    return out


# The driver's start-up, phase by phase: (name, stamp it starts at, stamp it ends at) in driver.json's session;
# "first_trial" is the first trial process's start. Ray starts beside the imports of torch and the trainer
# (`ray_starting` to `imported`, shown apart); a session from before that (no `ray_starting`) imported them first
# ("Ray's import") and started Ray after. Runs from before a stamp was written leave its phases out.
DRIVER_PHASES = (("imports", "started", "main"), ("checks and data", "main", "prepared"),
                 ("first configs", "prepared", "ray_starting"), ("Ray's start", "ray_starting", "ray_started"),
                 ("Tune's set-up", "ray_started", "trials_started"), ("to the first trial", "trials_started",
                                                                       "first_trial"))
IMPORTS_THEN_RAY = (*DRIVER_PHASES[:2], ("Ray's import", "prepared", "imported"),
                    ("Ray's start", "imported", "ray_started"), *DRIVER_PHASES[4:])


def driver_phases(session: dict[str, Any], first_trial: float) -> dict[str, float]:
    """Seconds of each phase of the driver's start-up that `session` has both stamps of."""
    stamps = {**session, "first_trial": first_trial}
    phases = DRIVER_PHASES if "ray_starting" in session else IMPORTS_THEN_RAY
    return {name: stamps[end] - stamps[start] for name, start, end in phases
            if stamps.get(start) is not None and stamps.get(end) is not None}


def _lines_json(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text()).get("sessions", [])
    except (OSError, ValueError):
        return []


def table(e: dict[str, Any]) -> str:
    head = ("trial", "epochs", "pairs", "pairs/s", "wall s", "start-up", "warm-up (lost)", "train", "val",
            "ckpt", "log", "report", "other", "GPU")
    lines = ["  ".join(f"{h:>14}" if i == 6 else f"{h:>8}" if i else f"{h:<16}" for i, h in enumerate(head))]
    rows = e["trials"]
    total = {k: sum(r[k] for r in rows) for k in ("pairs", "wall", "startup", "warmup", "warmup_lost", "train",
                                                 "validation", "checkpoint", "logging", "reports", "other")}
    for r in [*rows, {**total, "trial": "all trials", "epochs": sum(r["epochs"] for r in rows),
                      "pairs_per_second": total["pairs"] / total["train"] if total["train"] else 0.0,
                      "gpu_share": None}]:
        warm = f"{r['warmup']:.1f} ({r['warmup_lost']:.1f})"
        share = "" if r["gpu_share"] is None else f"{r['gpu_share']:g}"
        lines.append(f"{r['trial']:<16}  {r['epochs']:>8}  {r['pairs']:>8.0f}  {r['pairs_per_second']:>8.1f}  "
                     f"{r['wall']:>8.1f}  {r['startup']:>8.1f}  {warm:>14}  {r['train']:>8.1f}  "
                     f"{r['validation']:>8.1f}  {r['checkpoint']:>8.1f}  {r['logging']:>8.1f}  {r['reports']:>8.1f}  "
                     f"{r['other']:>8.1f}  {share:>8}")
    lines.append("")
    of = lambda key: f" ({e[key]:.0%} of the peak)" if key in e else ""  # noqa: E731
    if "command_seconds" in e:
        lines.append(f"command: {e['command_seconds']:.1f} s, {e['pairs']:.0f} pairs: "
                     f"{e['pairs_per_second_command']:.1f} pairs/s{of('of_peak_command')}")
    lines.append(f"trial window: {e['window_seconds']:.1f} s: {e['pairs_per_second_window']:.1f} pairs/s"
                 f"{of('of_peak_window')}")
    names = {"driver_startup": "driver start-up", "startup": "trial start-ups", "warmup_lost": "warm-up",
             "checkpoint": "checkpoints", "validation": "validation", "logging": "logging (TensorBoard)",
             "reports": "reports to Ray Tune", "other": "other time in trials", "idle_gaps": "idle gaps between trials",
             "tail": "tail (re-score, export, shutdown)"}
    gpu = e["lost_gpu_seconds"]
    lines.append("time lost, seconds" + (" (GPU-seconds)" if gpu else "") + ":")
    for key, name in names.items():
        if key in e["lost_seconds"]:
            extra = f" ({gpu[key]:.1f})" if gpu else ""
            lines.append(f"  {name:<36} {e['lost_seconds'][key]:>8.1f}{extra}")
    if e.get("driver_phases"):
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in e["driver_phases"].items())
        lines.append(f"  of the driver's start-up: {phases}")
    if e.get("imports_beside_ray_seconds") is not None:
        lines.append(f"  beside Ray's start, torch and the trainer were imported in "
                     f"{e['imports_beside_ray_seconds']:.1f} s")
    if e.get("kernels_ahead_seconds") is not None:
        lines.append(f"  beside them, a child process compiled the first trials' norm kernels in "
                     f"{e['kernels_ahead_seconds']:.1f} s")
    if e.get("first_step_seconds") is not None:
        lines.append(f"  the first training step began {e['first_step_seconds']:.1f} s after the command started")
    if e.get("rescore_seconds") is not None:
        later = "".join(f", {name} {e[key]:.1f} s" for key, name in (
            ("report_seconds", "report"), ("shutdown_seconds", "Ray's shutdown (beside them)"))
            if e.get(key) is not None)  # runs from before these were stamped leave them out
        lines.append(f"  of the tail: final re-scoring {e['rescore_seconds']:.1f} s, export "
                     f"{e.get('export_seconds') or 0.0:.1f} s{later}")
    return "\n".join(lines)


def sm_use(path: Path, window: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean SM use from `nvidia-smi dmon -s u` output, over all samples and over those with any SM busy.

    With the dates and times dmon writes under `-o DT`, only samples within `window` (epoch seconds; the command's
    start and end) count; without them, every sample does, so dmon should run just around the command.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the dmon output ({e.strerror})") from e
    header = next((line.lstrip("#").split() for line in lines if line.startswith("#")), [])
    if "sm" not in header:
        raise ValueError(f"{path}: not `nvidia-smi dmon -s u` output (no sm column in its header)")
    dated = header[:2] == ["Date", "Time"]
    samples = []
    for line in lines:
        fields = line.split()
        if line.startswith("#") or len(fields) != len(header):
            continue
        row = dict(zip(header, fields))
        if not row["sm"].isdigit():
            continue  # "-": no reading this sample
        if dated and window is not None:
            at = datetime.strptime(row["Date"] + row["Time"], "%Y%m%d%H:%M:%S").timestamp()  # dmon's local time
            if not window[0] <= at <= window[1]:
                continue
        samples.append((row["gpu"], int(row["sm"])))
    if not samples:
        raise ValueError(f"{path}: no SM samples" + (" within the command's time" if dated and window else ""))
    busy = [sm for _, sm in samples if sm > 0]
    return {"samples": len(samples), "gpus": len({gpu for gpu, _ in samples}),
            "mean": sum(sm for _, sm in samples) / len(samples), "in_use": sum(busy) / len(busy) if busy else 0.0,
            "windowed": dated and window is not None}


def sm_line(sm: dict[str, Any]) -> str:
    where = "within the command's time" if sm["windowed"] else "every sample of the file"
    gpus = f"{sm['gpus']} GPU" + ("s" if sm["gpus"] > 1 else "")
    return (f"SM use (nvidia-smi dmon, {sm['samples']} samples of {gpus}, {where}): mean {sm['mean']:.1f}%, "
            f"{sm['in_use']:.1f}% while in use")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.throughput", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.add_argument("--peak", type=float, metavar="PAIRS_PER_S", help="the packed peak, to show rates as a share of")
    p.add_argument("--dmon", type=Path, metavar="FILE",
                   help="`nvidia-smi dmon -s u [-o DT]` output of the command's time, to add its mean SM use")
    args = p.parse_args(argv)
    try:
        e = efficiency(args.run_dir, args.peak)
        if args.dmon is not None:
            sessions = _lines_json(args.run_dir / DRIVER)
            window = (sessions[0]["started"], sessions[-1]["ended"]) if sessions else None
            e["sm_use"] = sm_use(args.dmon, window)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(e, indent=1) if args.json else table(e) + ("\n" + sm_line(e["sm_use"]) if "sm_use" in e else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
