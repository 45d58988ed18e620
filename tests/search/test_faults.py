"""Trial faults in a real Ray Tune search: retried from the last checkpoint, or recorded as failed, never lost.

Faults are injected into real trials through the trainable's test hook (`SEARCH_TEST_FAULTS`, see
search/trainable.py); Ray's own FailureConfig retries them. Tiny trials on the CPU, about a minute and a half.

    python -m pytest tests/search/test_faults.py -q
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import pythonpath

pytestmark = pytest.mark.slow  # real Ray Tune searches with injected faults

ROOT = Path(__file__).resolve().parents[2]
SPACE = """
objective: {metric: ssim_t1_t1, mode: max}
search: {max_concurrent: 2}
scheduler: {type: none}
resources: {gpus_per_trial: 0, cpus_per_trial: 1}
checkpoint: {every: 1, keep: 3}
select: {top_k: 2}
failure: {max_failures: 1}
fixed: {epochs: 3, resize: 32, unet_depth: 5, disc_layers: 2, ngf: 8, ndf: 8, batch_size: 4, pool_size: 4}
points: [{seed: 1}, {seed: 2}]
"""
FAULTS = [
    {"when": {"seed": 1}, "epoch": 2, "kind": "crash", "once": True},  # crashes once: the retry must pass
    {"when": {"seed": 2}, "epoch": 3, "kind": "oom"},  # out of memory on every attempt: recorded as failed
]


def search(*args: str, cwd: Path, faults: list | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath(), "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1"}
    env.pop("SEARCH_TEST_FAULTS", None)
    if faults:
        env["SEARCH_TEST_FAULTS"] = json.dumps(faults)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def by_seed(run_dir: Path) -> dict[int, dict]:
    with (run_dir / "summary" / "trials.csv").open() as f:
        return {int(r["seed"]): r for r in csv.DictReader(f)}


def epochs(row: dict) -> list[int]:
    return [json.loads(x)["epoch"] for x in (Path(row["path"]) / "metrics.jsonl").read_text().splitlines()]


def failures(row: dict) -> int:
    """How many times Ray recorded this trial failing (its error.txt gets one 'Failure # N' per failure)."""
    error_file = Path(row["path"]) / "error.txt"
    return error_file.read_text().count("Failure # ") if error_file.is_file() else 0


def test_crashed_trials_are_retried_from_their_checkpoint_or_recorded_and_resumed(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "faults.yaml").write_text(SPACE)
    args = ["search.run", str(tmp_path / "faults.yaml"), "--storage", str(tmp_path / "runs")]
    p = search(*args, cwd=tmp_path, faults=FAULTS)
    run_dir = tmp_path / "runs" / "faults"
    rows = by_seed(run_dir)
    assert p.returncode == 1, p.stderr[-3000:]

    # A trial that crashed once was retried by Ray from its epoch-1 checkpoint: epoch 1 is not trained again.
    assert rows[1]["status"] == "finished" and epochs(rows[1]) == [1, 2, 3] and failures(rows[1]) == 1
    # One out of memory on every attempt (1 + max_failures): failed, with the knobs that did not fit.
    assert rows[2]["status"] == "error" and failures(rows[2]) == 2 and epochs(rows[2]) == [1, 2]
    assert rows[2]["error"].startswith("torch.OutOfMemoryError: out of GPU memory at resize=32 batch_size=4 "
                                       "unet_depth=5 ngf=8"), rows[2]["error"]
    # The command says which trial failed, why, and where its logs are; the report lists it.
    line = next(x for x in p.stderr.splitlines() if x.startswith(f"error: trial {rows[2]['trial_id']} failed"))
    assert "out of GPU memory at resize=32" in line and line.endswith(f"(logs: {rows[2]['path']})")
    report = (run_dir / "summary" / "report.md").read_text()
    assert "1 finished, 0 stopped early, 1 failed" in report and "## Failed trials" in report
    assert f"`{rows[2]['trial_id']}`: torch.OutOfMemoryError: out of GPU memory at resize=32" in report
    # The search still chose and exported a winner from the trials that finished.
    assert json.loads((run_dir / "best" / "metrics.json").read_text())["trial_id"] == rows[1]["trial_id"]
    kept = (Path(rows[1]["path"]) / "metrics.jsonl").read_bytes()

    # The failed trial's latest checkpoint (epoch 2) is then damaged; with the cause gone, --resume reruns the
    # failed trial, which names the damaged checkpoint and continues from the previous one (epoch 1). The
    # finished trial is not run again.
    latest = Path(rows[2]["path"]) / "checkpoint_000001" / "checkpoint.pt"
    assert latest.is_file()
    latest.write_bytes(latest.read_bytes()[:2048])
    p = search(*args, "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = by_seed(run_dir)
    assert all(r["status"] == "finished" for r in rows.values()), {s: r["status"] for s, r in rows.items()}
    log = (Path(rows[2]["path"]) / "restore.log").read_text()
    assert "skipped" in log and "checkpoint_000001/checkpoint.pt: unreadable or truncated checkpoint" in log, log
    assert "checkpoint_000000 (epoch 1) instead of the damaged latest checkpoint" in log.splitlines()[-1], log
    assert epochs(rows[2]) == [1, 2, 3]  # metrics.jsonl: the history of the weights it ends with
    assert (Path(rows[1]["path"]) / "metrics.jsonl").read_bytes() == kept, "the finished trial was run again"

    # search.export refuses a trial it cannot export, in one line, and leaves an earlier export whole. (Its main
    # runs in this process: it reads the run's files and starts no Ray.)
    from search import export

    out = tmp_path / "export"
    assert export.main([str(run_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for ckpt in Path(rows[1]["path"]).glob("checkpoint_*/checkpoint.pt"):
        ckpt.write_bytes(b"")
    for argv, match in (([str(run_dir), "--trial", rows[1]["trial_id"]], "unreadable or truncated checkpoint"),
                        ([str(run_dir), "--trial", "nope"], "--trial 'nope': no such trial"),
                        ([str(tmp_path / "no_run")], "no_run/summary/selection.json: not a finished search's")):
        assert export.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
