"""`python -m search.throughput RUN` accounts for a search's wall time: pairs trained, and where the rest went.

A run folder laid out as a search leaves it (each trial's result.json and resources.json, the driver's
driver.json), with times chosen so that every figure is known; and a real search's folder, read as a user would.

    python -m pytest tests/search/test_throughput.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from search.throughput import efficiency, idle_gaps, main, record_driver, sm_use, table
from tests.paths import pythonpath

ROOT = Path(__file__).resolve().parents[2]


def _trial(run: Path, name: str, process: float, first_step: float, epochs: list[dict], end: float,
           share: float = 0.25) -> None:
    folder = run / name
    folder.mkdir(parents=True)
    lines = []
    for i, e in enumerate(epochs, 1):
        lines.append({"epoch": i, "timestamp": int(end), "time_total_s": 0.0, "process_started": process,
                      "first_step_at": first_step, "startup_seconds": first_step - process, "val_seconds": 0.5,
                      "checkpoint_seconds": 0.25, "log_seconds": 0.1, "report_seconds": 0.45,
                      "config": {"batch_size": 2}, **e})
    (folder / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "resources.json").write_text(json.dumps({"gpu_share": share, "ended": end}))


def _epoch(seconds: float, rate: float, *, warmup: float = 0.0, steps: int = 0, graphed: bool = True) -> dict:
    return {"train_seconds": seconds, "pairs_per_second": rate, "warmup_seconds": warmup, "warmup_steps": steps,
            "graphed": graphed}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """Two trials one after the other on one slot, a third beside them; the command from t=0 to t=100."""
    run = tmp_path / "run"
    # Trial a: process at 10, first step at 13 (3 s start-up); epoch 1 is warm-up (captured in it: 2 s for 40 pairs
    # that take 1 s at the steady 40 pairs/s: 1 s lost), epochs 2-3 steady. Ends at 25.
    steady = _epoch(1.0, 40.0)
    _trial(run, "trial_a", 10.0, 13.0, [_epoch(2.0, 20.0, warmup=1.5, steps=27), steady, steady], end=25.0)
    # Trial b takes a's slot 2 s after a ended (an idle gap of 2 s), starts up in 4 s, never graphed (the CPU).
    cpu = _epoch(1.0, 40.0, graphed=False)
    _trial(run, "trial_b", 27.0, 31.0, [_epoch(1.5, 40.0 / 1.5, graphed=False), cpu], end=40.0)
    # Trial c runs beside them from 12 to 60 on a slot of its own.
    _trial(run, "trial_c", 12.0, 14.0, [steady] * 4, end=60.0, share=0.5)
    record_driver(str(run), {"started": 0.0, "gpus": 1.0, "rescore_seconds": 20.0, "export_seconds": 5.0,
                             "ended": 100.0})
    return run


def test_every_second_of_the_command_is_accounted_for(run: Path) -> None:
    e = efficiency(run, peak=10.0)
    rows = {r["trial"]: r for r in e["trials"]}
    a, b, c = rows["trial_a"], rows["trial_b"], rows["trial_c"]
    assert (a["pairs"], b["pairs"], c["pairs"]) == pytest.approx((120.0, 80.0, 160.0))
    assert (a["startup"], b["startup"], c["startup"]) == pytest.approx((3.0, 4.0, 2.0))
    assert (a["warmup"], a["warmup_lost"]) == pytest.approx((1.5, 1.0))
    assert b["warmup_lost"] == pytest.approx(0.5) and c["warmup_lost"] == 0.0  # b's first epoch; c never warmed
    # The report calls (0.45 s each) hold the checkpoints (0.25 s), which have a column of their own.
    assert (a["logging"], a["reports"]) == pytest.approx((0.3, 0.6))
    assert a["wall"] == pytest.approx(15.0) and a["other"] == pytest.approx(15.0 - 3 - 4 - 1.5 - 0.75 - 0.3 - 0.6)
    assert e["command_seconds"] == 100.0 and e["window_seconds"] == pytest.approx(50.0)
    assert e["pairs_per_second_command"] == pytest.approx(3.6) and e["of_peak_command"] == pytest.approx(0.36)
    assert e["pairs_per_second_window"] == pytest.approx(7.2)
    lost, gpu = e["lost_seconds"], e["lost_gpu_seconds"]
    assert lost["driver_startup"] == pytest.approx(10.0) and lost["tail"] == pytest.approx(40.0)
    assert lost["idle_gaps"] == pytest.approx(2.0) and gpu["idle_gaps"] == pytest.approx(0.5)
    assert lost["startup"] == pytest.approx(9.0) and gpu["startup"] == pytest.approx(0.75 + 1.0 + 1.0)
    assert lost["checkpoint"] == pytest.approx(0.25 * 9) and lost["validation"] == pytest.approx(0.5 * 9)
    assert lost["logging"] == pytest.approx(0.1 * 9) and lost["reports"] == pytest.approx(0.2 * 9)
    assert lost["other"] == pytest.approx(sum(r["other"] for r in (a, b, c)))
    # Every second of every trial is in one column.
    for r in (a, b, c):
        parts = ("startup", "train", "validation", "checkpoint", "logging", "reports", "other")
        assert sum(r[k] for k in parts) == pytest.approx(r["wall"])
    assert gpu["driver_startup"] == pytest.approx(10.0)  # the one GPU, idle while the driver started


def test_the_drivers_start_up_is_split_into_its_phases(run: Path) -> None:
    (run / "driver.json").unlink()  # the fixture's session, written again with every stamp
    record_driver(str(run), {"started": 0.0, "main": 1.5, "prepared": 3.0, "ray_starting": 3.5, "imported": 5.0,
                             "ray_started": 7.0, "trials_started": 8.0, "gpus": 1.0, "ended": 100.0})
    e = efficiency(run)
    assert e["driver_phases"] == pytest.approx({"imports": 1.5, "checks and data": 1.5, "first configs": 0.5,
                                                "Ray's start": 3.5, "Tune's set-up": 1.0, "to the first trial": 2.0})
    assert sum(e["driver_phases"].values()) == pytest.approx(e["lost_seconds"]["driver_startup"])
    assert e["imports_beside_ray_seconds"] == pytest.approx(1.5)
    assert "beside Ray's start, torch and the trainer were imported in 1.5 s" in table(e)
    assert e["first_step_seconds"] == pytest.approx(13.0)  # trial a's first step


def test_a_driver_that_imported_torch_before_ray_started_is_split_as_it_ran(run: Path) -> None:
    (run / "driver.json").unlink()
    record_driver(str(run), {"started": 0.0, "main": 1.5, "prepared": 3.0, "imported": 4.0, "ray_started": 7.0,
                             "trials_started": 8.0, "gpus": 1.0, "ended": 100.0})
    e = efficiency(run)
    assert e["driver_phases"] == pytest.approx({"imports": 1.5, "checks and data": 1.5, "Ray's import": 1.0,
                                                "Ray's start": 3.0, "Tune's set-up": 1.0, "to the first trial": 2.0})
    assert sum(e["driver_phases"].values()) == pytest.approx(e["lost_seconds"]["driver_startup"])
    assert "imports_beside_ray_seconds" not in e and "beside Ray's start" not in table(e)


def test_a_driver_from_before_the_stamps_shows_only_what_it_has(run: Path) -> None:
    e = efficiency(run)
    assert e["driver_phases"] == {}
    assert e["first_step_seconds"] == pytest.approx(13.0)


def test_a_process_ray_reused_counts_its_start_up_from_the_earlier_trials_end(run: Path) -> None:
    # Trial d ran in trial a's process (the same process start), its first step 1 s after a ended.
    _trial(run, "trial_d", 10.0, 26.0, [_epoch(1.0, 40.0)], end=30.0)
    rows = {r["trial"]: r for r in efficiency(run)["trials"]}
    assert rows["trial_d"]["startup"] == pytest.approx(1.0) and rows["trial_a"]["startup"] == pytest.approx(3.0)


def test_a_trial_whose_process_starts_as_the_last_one_ends_takes_its_slot() -> None:
    rows = [{"start": 0.0, "end": 10.0, "gpu_share": 0.5}, {"start": 9.5, "end": 20.0, "gpu_share": 0.5},
            {"start": 23.0, "end": 30.0, "gpu_share": 0.5}]
    # One trial at a time: the second is a hand-over (no gap), the third waited 3 s on the slot.
    assert idle_gaps(rows, most=1) == pytest.approx((3.0, 1.5))
    # Unbounded, the second took a slot of its own, and the third the one freed last (the second's).
    assert idle_gaps(rows) == pytest.approx((3.0, 1.5))
    assert idle_gaps(rows[:2] + [{"start": 12.0, "end": 30.0, "gpu_share": 1.0}]) == pytest.approx((2.0, 2.0))


def test_the_table_and_json_say_the_same(run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(run), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["pairs"] == pytest.approx(360.0)
    assert main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "command: 100.0 s, 360 pairs: 3.6 pairs/s" in out and "trial window: 50.0 s" in out
    assert "driver start-up" in out and "idle gaps between trials" in out and "final re-scoring 20.0 s" in out
    assert "reports to Ray Tune" in out and "logging (TensorBoard)" in out
    assert "of the tail: final re-scoring 20.0 s, export 5.0 s\n" in out + "\n"  # a run from before the later stamps
    (run / "driver.json").unlink()
    record_driver(str(run), {"started": 0.0, "gpus": 1.0, "rescore_seconds": 20.0, "export_seconds": 5.0,
                             "report_seconds": 1.5, "shutdown_seconds": 3.0, "ended": 100.0})
    assert main([str(run)]) == 0
    assert ("of the tail: final re-scoring 20.0 s, export 5.0 s, report 1.5 s, Ray's shutdown (beside them) 3.0 s"
            in capsys.readouterr().out)
    assert main([str(run.parent / "nothing")]) == 2
    assert "no trial_*/result.json" in capsys.readouterr().err


def test_mean_sm_use_is_read_from_dmon_as_the_benchmarks_report_it() -> None:
    # A search's own dmon output, as recorded on an H200 (docs/benchmarks.md gives its mean as 86.5%, 96.3% in use).
    sm = sm_use(ROOT / "docs/benchmarks/h200-2026-12-04g/z1-dmon.txt")
    assert sm["samples"] == 88 and sm["gpus"] == 1 and not sm["windowed"]
    assert round(sm["mean"], 1) == 86.5 and round(sm["in_use"], 1) == 96.3


def test_dated_dmon_samples_count_only_within_the_commands_time(run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    # `nvidia-smi dmon -s u -o DT` on two GPUs; the driver ran from 12:00:02 to 12:00:06 local time.
    lines = ["#Date       Time        gpu     sm    mem    enc    dec    jpg    ofa",
             "#YYYYMMDD   HH:MM:SS    Idx      %      %      %      %      %      %"]
    for second, (sm0, sm1) in enumerate([(90, 90), (0, 0), (80, 40), (100, 0), (0, 0), (-1, 60), (60, 60), (7, 7)]):
        lines += [f" 20261204   12:00:{second:02d}    {gpu}    {'-' if sm < 0 else sm}" + "      0" * 5
                  for gpu, sm in ((0, sm0), (1, sm1))]
    dmon = tmp_path / "dmon.txt"
    dmon.write_text("\n".join(lines) + "\n")
    start = datetime(2026, 12, 4, 12, 0, 2).timestamp()
    sm = sm_use(dmon, (start, start + 4))  # seconds 2-6: nine readings ("-" is none), four of them 0
    assert sm == {"samples": 9, "gpus": 2, "mean": pytest.approx(400 / 9), "in_use": pytest.approx(400 / 6),
                  "windowed": True}
    assert sm_use(dmon)["samples"] == 15  # no window: every reading
    (run / "driver.json").unlink()
    record_driver(str(run), {"started": start, "gpus": 2.0, "ended": start + 4})
    assert main([str(run), "--dmon", str(dmon)]) == 0
    assert ("SM use (nvidia-smi dmon, 9 samples of 2 GPUs, within the command's time): mean 44.4%, 66.7% while in use"
            in capsys.readouterr().out)
    (tmp_path / "other.txt").write_text("# gpu   pwr  gtemp\n    0    70     40\n")
    for bad, says in ((tmp_path / "other.txt", "other.txt: not `nvidia-smi dmon -s u` output"),
                      (tmp_path / "missing.txt", "missing.txt: cannot read the dmon output")):
        assert main([str(run), "--dmon", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1


SPACE = """
objective: {metric: ssim_t1_t1, mode: max}
search: {max_concurrent: 1}
scheduler: {type: none}
resources: {gpus_per_trial: 0, cpus_per_trial: 1}
checkpoint: {every: 1, keep: 2}
select: {top_k: 2}
fixed: {epochs: 3, resize: 32, unet_depth: 5, disc_layers: 2, ngf: 8, ndf: 8, batch_size: 4, pool_size: 4}
points: [{seed: 1}, {seed: 2}]
"""


@pytest.mark.slow  # a real search in a subprocess
def test_a_real_search_reports_its_fixed_costs(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    env = {**os.environ, "PYTHONPATH": pythonpath(), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "search.run", str(tmp_path / "space.yaml"), "--storage", str(tmp_path),
                        "--name", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    e = efficiency(tmp_path / "run")
    assert len(e["trials"]) == 2 and e["command_seconds"] > e["window_seconds"] > 0
    for r in e["trials"]:
        assert r["epochs"] == 3 and r["pairs"] > 0 and r["startup"] > 0 and r["checkpoint"] > 0
        assert 0 < r["train"] + r["startup"] + r["validation"] + r["checkpoint"] <= r["wall"]
    lost = e["lost_seconds"]
    assert lost["driver_startup"] > 0 and lost["tail"] > 0 and lost["idle_gaps"] >= 0
    phases = e["driver_phases"]
    assert set(phases) == {"imports", "checks and data", "first configs", "Ray's start", "Tune's set-up",
                           "to the first trial"} and min(phases.values()) >= 0
    assert sum(phases.values()) == pytest.approx(lost["driver_startup"])
    assert 0 < e["imports_beside_ray_seconds"] <= phases["Ray's start"]  # torch imported while Ray started
    assert lost["driver_startup"] < e["first_step_seconds"] < e["command_seconds"]
    # One trial at a time, the same resources: Ray ran the second in the first one's process (search.run asks it
    # to), so its start-up is not a new process's; each wrote its own folder.
    records = sorted((json.loads(p.read_text()) for p in (tmp_path / "run").glob("trial_*/resources.json")),
                     key=lambda r: r["trial_in_process"])
    assert [r["trial_in_process"] for r in records] == [1, 2] and records[0]["pid"] == records[1]["pid"]
    first, second = sorted(e["trials"], key=lambda r: r["start"])
    assert second["startup"] < first["startup"], (first["startup"], second["startup"])
    assert e["rescore_seconds"] > 0 and e["export_seconds"] > 0 and e["report_seconds"] > 0
    assert e["shutdown_seconds"] > 0
