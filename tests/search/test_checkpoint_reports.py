"""Checkpoints written in the background reach Ray Tune whole, each with its own epoch, and a crash loses none.

A real Ray Tune run in this process (tests/conftest.py's `local_ray`), with checkpoints of a few bytes.

    python -m pytest tests/search/test_checkpoint_reports.py -q
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ray import tune

from cyclegan import checkpoint
from cyclegan.checkpoint_writer import CheckpointWriter
from search import checkpoint_reports
from search.checkpoint_reports import CheckpointReports, in_background

pytestmark = pytest.mark.slow  # starts Ray and runs Tune


def trial(config: dict) -> None:
    """Three epochs, each with a checkpoint; with `crash_after`, fails once that epoch's write has begun."""
    writer = CheckpointWriter()
    reports = CheckpointReports(Path.cwd() / "metrics.jsonl")
    try:
        for epoch in (1, 2, 3):
            state = {"config": {}, "epoch": epoch, "w": torch.full((1000,), float(epoch))}
            save = lambda path, state=state: writer.save(path, state)  # noqa: E731
            reports.epoch({"epoch": epoch, "objective": float(epoch)}, save, True)
            if epoch == config["crash_after"]:
                raise RuntimeError(f"crashed in epoch {epoch + 1}, before epoch {epoch} was reported")
    except Exception:
        reports.flush_on_error()
        raise
    reports.finish()
    writer.close()


def _run(tmp_path: Path, crash_after: int | None) -> tune.Result:
    tuner = tune.Tuner(trial, param_space={"crash_after": crash_after},
                       tune_config=tune.TuneConfig(metric="objective", mode="max"),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="run", verbose=0,
                                                 checkpoint_config=tune.CheckpointConfig(num_to_keep=5)))
    return tuner.fit()[0]


def _saved(ckpt: tune.Checkpoint) -> tuple[int, list[int]]:
    """(the checkpoint file's epoch, the epochs of the metrics history it carries)."""
    with ckpt.as_directory() as d:
        history = [json.loads(x)["epoch"] for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]
        return int(checkpoint.load(Path(d) / checkpoint.CHECKPOINT)["epoch"]), history


def test_every_epoch_is_reported_with_the_checkpoint_of_that_epoch(local_ray: None, tmp_path: Path) -> None:
    result = _run(tmp_path, crash_after=None)
    assert result.error is None
    reported = sorted((m["epoch"], *_saved(c)) for c, m in result.best_checkpoints)
    assert reported == [(1, 1, [1]), (2, 2, [1, 2]), (3, 3, [1, 2, 3])]
    assert all(m["checkpoint_write_seconds"] > 0 and m["checkpoint_seconds"] >= 0 for _, m in result.best_checkpoints)


def test_a_crash_after_a_write_began_still_reports_that_checkpoint(local_ray: None, tmp_path: Path) -> None:
    result = _run(tmp_path, crash_after=2)
    assert result.error is not None and "crashed in epoch 3" in str(result.error)
    assert result.metrics["epoch"] == 2 and _saved(result.checkpoint) == (2, [1, 2])


def counting_trial(config: dict) -> None:
    """Many short epochs without checkpoints; each epoch it trains is counted in a file of its own."""
    reports = CheckpointReports(Path.cwd() / "metrics.jsonl")
    trained = Path(config["dir"]) / f"trained-{config['seed']}.txt"
    for epoch in range(1, 201):
        time.sleep(0.02)  # the epoch
        with trained.open("a") as f:
            f.write(f"{epoch} {os.getpid()}\n")
        # Reported as taking no time: every report after the first goes in the background.
        reports.epoch({"epoch": epoch, "objective": float(epoch), "train_seconds": 0.0}, lambda path: None, False)
    reports.finish()


def test_short_epochs_report_in_the_background_and_a_stopped_trial_ends_soon_after(local_ray: None,
                                                                                 tmp_path: Path) -> None:
    # Tune stops each trial after its fifth report; one trial at a time, so the second reuses the first's process.
    tuner = tune.Tuner(counting_trial, param_space={"dir": str(tmp_path), "seed": tune.grid_search([1, 2])},
                       tune_config=tune.TuneConfig(metric="objective", mode="max", max_concurrent_trials=1,
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name="run", verbose=0,
                                                 stop={"epoch": 5}))
    results = tuner.fit()
    assert not results.errors
    pids = set()
    for seed in (1, 2):
        lines = (tmp_path / f"trained-{seed}.txt").read_text().split()
        trained = [int(x) for x in lines[::2]]
        pids |= set(lines[1::2])
        # Stopped on epoch 5's report, a trial trained on while that report was queued or in flight, by at most the
        # epochs of MAX_LAG (0.02 s each, and a few of slack for a slow machine), and ended in time for Ray to reuse
        # its process for the second trial.
        assert trained[:5] == [1, 2, 3, 4, 5] and trained == list(range(1, len(trained) + 1))
        assert len(trained) <= 5 + checkpoint_reports.MAX_LAG / 0.02 + 5, len(trained)
    assert len(pids) == 1, pids
    for result in results:  # Tune heard of epochs 1-5 only
        assert list(result.metrics_dataframe["epoch"]) == [1, 2, 3, 4, 5]
        trips = list(result.metrics_dataframe["report_round_trip_seconds"])
        assert trips[0] == 0.0 and trips[-1] > 0


def test_a_report_goes_in_the_background_only_for_a_short_epoch() -> None:
    assert in_background(0.01) and in_background(0.5)
    assert not in_background(1.5)  # never for an epoch a stopped trial would take long to end


def _recorded(calls: list, stop_at: int | None = None, seconds: float = 0.05) -> Callable:
    def report(metrics: dict, checkpoint: tune.Checkpoint | None = None) -> None:
        calls.append((metrics["epoch"], time.perf_counter()))
        time.sleep(seconds)
        if metrics["epoch"] == stop_at:
            raise SystemExit(0)  # what Tune raises in a report once it has stopped the trial
    return report


def test_what_a_background_report_raised_is_raised_in_the_trials_thread_and_later_reports_are_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(checkpoint_reports.tune, "report", _recorded(calls, stop_at=2))
    reports = CheckpointReports(tmp_path / "metrics.jsonl")
    for epoch in (1, 2, 3):  # queued at once: the sender is still on epoch 1
        reports.epoch({"epoch": epoch, "train_seconds": 0.01}, lambda path: None, False)
    with pytest.raises(SystemExit):
        reports.wait()
    assert [e for e, _ in calls] == [1, 2]  # epoch 3 was queued after the stop's report, and never sent
    with pytest.raises(SystemExit):  # and the trial's next report raises too, had it not waited
        reports2 = CheckpointReports(tmp_path / "metrics2.jsonl")
        monkeypatch.setattr(checkpoint_reports.tune, "report", _recorded(calls, stop_at=4, seconds=0.0))
        for epoch in range(4, 100):
            reports2.epoch({"epoch": epoch, "train_seconds": 0.01}, lambda path: None, False)
            time.sleep(0.01)


def test_the_training_thread_waits_once_the_oldest_queued_report_is_older_than_the_lag(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    ended: list = []
    report = _recorded(calls, seconds=0.1)

    def timed(metrics: dict, checkpoint: tune.Checkpoint | None = None) -> None:
        report(metrics, checkpoint)
        ended.append((metrics["epoch"], time.perf_counter()))

    monkeypatch.setattr(checkpoint_reports.tune, "report", timed)
    monkeypatch.setattr(checkpoint_reports, "MAX_LAG", 0.25)
    reports = CheckpointReports(tmp_path / "metrics.jsonl")
    queued = {}
    for epoch in range(1, 21):  # epochs of 0.03 s against reports of 0.1 s
        time.sleep(0.03)
        reports.epoch({"epoch": epoch, "train_seconds": 0.03}, lambda path: None, False)
        queued[epoch] = time.perf_counter()  # by now it is queued
    reports.finish()
    assert [e for e, _ in calls] == list(range(1, 21))
    delivered = dict(ended)
    # When an epoch was queued, every report queued more than the lag (and some slack) before it had been delivered.
    # Without the wait all twenty are queued within 0.6 s, while the sender is on its sixth.
    late = [(i, j) for j in queued for i in queued if queued[i] < queued[j] - 0.25 - 0.05 and delivered[i] > queued[j]]
    assert not late, late


def test_a_checkpoint_report_goes_in_the_background_for_a_short_epoch_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    delivered = []
    in_thread = []

    def report(metrics: dict, checkpoint: tune.Checkpoint | None = None) -> None:
        delivered.append((metrics["epoch"], checkpoint is not None))
        in_thread.append(threading.current_thread().name)

    monkeypatch.setattr(checkpoint_reports.tune, "report", report)

    class Written:  # a checkpoint whose background write took 0.2 s
        copy_seconds, waited_seconds = 0.0, 0.0

        def wait(self) -> float:
            return 0.2

        written = wait

    reports = CheckpointReports(tmp_path / "metrics.jsonl")
    reports.epoch({"epoch": 1, "train_seconds": 0.1}, lambda path: Written(), True)
    reports.finish()
    assert delivered == [(1, True)] and in_thread == ["tune-report"]
    # An epoch of 3 s is long: synchronous, so a stop is heard at once.
    reports.epoch({"epoch": 2, "train_seconds": 3.0}, lambda path: Written(), True)
    reports.flush()
    assert delivered == [(1, True), (2, True)] and in_thread[1] == threading.current_thread().name
    assert not list(tmp_path.glob("checkpoint-*"))


class SlowWrite:
    """A checkpoint still being written for `seconds` after the save returned; says which thread waited for it."""

    def __init__(self, seconds: float) -> None:
        self.copy_seconds, self.waited_seconds, self.seconds = 0.01, 0.0, seconds
        self.start, self.waiters = time.perf_counter(), []

    def _wait(self) -> float:
        self.waiters.append(threading.current_thread().name)
        time.sleep(max(0.0, self.start + self.seconds - time.perf_counter()))
        return self.seconds

    def wait(self) -> float:
        started = time.perf_counter()
        try:
            return self._wait()
        finally:
            self.waited_seconds += time.perf_counter() - started

    def written(self) -> float:
        return self._wait()


def test_a_short_epochs_checkpoint_is_waited_for_by_the_sender_not_the_training_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    delivered: list = []
    monkeypatch.setattr(checkpoint_reports.tune, "report",
                        lambda metrics, checkpoint=None: delivered.append((metrics, checkpoint is not None)))
    reports = CheckpointReports(tmp_path / "metrics.jsonl")
    write, paths = SlowWrite(0.5), []
    started = time.perf_counter()
    reports.epoch({"epoch": 1, "train_seconds": 0.05}, lambda path: paths.append(path) or write, True)
    for epoch in (2, 3):  # the next epochs' reports queue behind the checkpoint's, in order
        reports.epoch({"epoch": epoch, "train_seconds": 0.05}, lambda path: None, False)
    held = time.perf_counter() - started
    reports.finish()
    assert held < 0.3, held  # the training thread went on while the file was written
    assert write.waiters == ["tune-report"]
    assert [(m["epoch"], ckpt) for m, ckpt in delivered] == [(1, True), (2, False), (3, False)]
    first = delivered[0][0]
    assert first["checkpoint_write_seconds"] == 0.5 and first["checkpoint_seconds"] == pytest.approx(0.01)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3] and lines[0]["checkpoint_write_seconds"] == 0.5
    assert not paths[0].parent.exists()  # handed to Tune, then removed


def test_a_long_epochs_checkpoint_is_waited_for_by_the_training_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    delivered: list = []
    monkeypatch.setattr(checkpoint_reports.tune, "report",
                        lambda metrics, checkpoint=None: delivered.append(metrics))
    reports = CheckpointReports(tmp_path / "metrics.jsonl")
    write = SlowWrite(0.3)
    reports.epoch({"epoch": 1, "train_seconds": 3.0}, lambda path: write, True)
    reports.flush()
    assert write.waiters == [threading.current_thread().name] and write.waited_seconds > 0.2
    assert delivered[0]["checkpoint_seconds"] == pytest.approx(0.01 + write.waited_seconds)


def test_a_failed_background_write_is_raised_in_the_training_thread_and_never_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    delivered: list = []
    monkeypatch.setattr(checkpoint_reports.tune, "report", lambda metrics, checkpoint=None: delivered.append(metrics))

    class Failed(SlowWrite):
        def _wait(self) -> float:
            raise OSError("No space left on device")

    reports, paths = CheckpointReports(tmp_path / "metrics.jsonl"), []
    reports.epoch({"epoch": 1, "train_seconds": 0.05}, lambda path: paths.append(path) or Failed(0.0), True)
    with pytest.raises(OSError, match="No space left"):
        reports.finish()
    assert delivered == [] and not paths[0].parent.exists()
