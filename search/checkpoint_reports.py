"""A trial's reports to Ray Tune, each checkpoint reported once its file is whole, without holding up training.

`tune.report(metrics, checkpoint=...)` persists the checkpoint's folder as it is when called, so the file must be on
disk by then; `fit` writes it from a background thread (`cyclegan.checkpoint_writer`). Waiting for it at once would
put the write back on the training path, so an epoch with a checkpoint is reported at the next report (the next
epoch's, or the trial's end), by when the thread has had an epoch of training to finish it; where that report is
queued (below), the sender waits for the write, not the training thread. Reports stay one an
epoch, in order, each with the checkpoint of its own epoch (what `search.select` picks the best one by); ASHA and
Optuna hear of such an epoch one epoch later.

Each checkpoint carries the trial's `metrics.jsonl` up to its epoch, which a resumed trial puts back
(search/trainable.py). Each report also says what its checkpoint cost: `checkpoint_seconds`, the training
loop's time on it (the copy to host memory, waiting for the previous write, waiting before the report), and
`checkpoint_write_seconds`, the thread's (both 0 for an epoch without one); `search.throughput` sums them.

A trial that fails after a checkpoint's write began reports it on its way out (`flush`), as the synchronous write
had reported it before the next epoch started: a retry loses no epoch it would have kept before.

`tune.report` returns only once the driver has taken the result in and asked the trial for the next (a round trip
through Tune's event loop, which serves every trial), and a report with a checkpoint first copies the file into the
run's storage (in a search on one H200, ~1.6 s for a 128 px trial's checkpoint, three times its write). That loop
also stalls for a second at a time while it makes a new trial (`gpus_per_trial: auto` estimates its memory) or
writes to the Optuna study, and every trial waiting on a report then waits for it. So the reports of epochs shorter
than `BACKGROUND_EPOCH_MAX` are queued and sent, in order, by a thread of the trial's own while training goes on; the
training thread waits only when the oldest report still undelivered was queued more than `MAX_LAG` seconds ago.
What that costs: a trial the scheduler stops learns of it at its next report after the stop arrives, having trained
at most about `MAX_LAG` seconds past the epoch it was stopped on (typically one epoch), and it is done only for short
epochs, which keeps the trial's unwinding within Ray's wait before it reuses the process. Longer epochs, and PBT's
looks (`at_once`), are reported synchronously, after the queue. Each report carries the round trip of the last one
delivered before it (`report_round_trip_seconds`).

    reports = CheckpointReports(trial_dir / "metrics.jsonl")
    reports.epoch(metrics, save, with_checkpoint=True)   # save(path) -> PendingCheckpoint, from `fit`'s report
    reports.finish()                                # at the end: the last checkpoint reported, every report delivered
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from cyclegan import checkpoint
from cyclegan.checkpoint_writer import PendingCheckpoint


@dataclass
class _Pending:
    metrics: dict[str, Any]
    folder: Path
    write: PendingCheckpoint


@dataclass
class _Queued:
    metrics: dict[str, Any]
    folder: Path | None
    queued: float  # time.perf_counter() when it was queued
    write: PendingCheckpoint | None = None  # the checkpoint the sender waits for before it records and reports


# An epoch (train, val, logging) shorter than this is reported in the background: a stopped trial then trains at most
# about this long (and MAX_LAG) before it unwinds, within the 2 s Ray waits for it before reusing the process
# (TUNE_FUNCTION_THREAD_TIMEOUT_S).
BACKGROUND_EPOCH_MAX = 1.0
# The training thread waits for the sender while the oldest undelivered report was queued longer ago than this.
MAX_LAG = 1.0


def in_background(epoch_seconds: float) -> bool:
    return epoch_seconds < BACKGROUND_EPOCH_MAX


class CheckpointReports:
    def __init__(self, metrics_file: Path) -> None:
        self.metrics_file = metrics_file
        self._pending: _Pending | None = None
        self._queue: deque[_Queued] = deque()  # queued reports, the first one being sent
        self._changed = threading.Condition()  # guards _queue, _sender and _outcome
        self._sender: threading.Thread | None = None
        self._outcome: BaseException | None = None
        self.round_trip = 0.0  # the last delivered report's seconds in tune.report (0: none yet)

    def epoch(self, metrics: dict[str, Any], save: Callable[[Path], PendingCheckpoint], with_checkpoint: bool,
              at_once: bool = False) -> None:
        """Reports an epoch now, or `with_checkpoint` starts its checkpoint and reports it at the next call (or,
        `at_once`, once its write is done and the report delivered: for a scheduler that decides on this very
        report, such as PBT)."""
        self.flush()
        if not with_checkpoint:
            self._report(metrics, None, at_once)
            return
        folder = Path(tempfile.mkdtemp(prefix="checkpoint-"))
        try:
            self._pending = _Pending(metrics, folder, save(folder / checkpoint.CHECKPOINT))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if at_once:
            self.flush(at_once=True)

    def flush(self, at_once: bool = False) -> None:
        """Reports the pending checkpoint's epoch with it once its write is done: in the sender thread for a short
        epoch (the training thread goes on meanwhile), else here."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self._report(pending.metrics, pending.folder, at_once, pending.write)
        except BaseException:
            shutil.rmtree(pending.folder, ignore_errors=True)  # never handed to Ray (a delivery removes its own)
            raise

    def finish(self) -> None:
        """At the trial's end: the last checkpoint reported, and every report delivered."""
        self.flush()
        self.wait()

    def flush_on_error(self) -> None:
        """`finish` on a failing trial's way out; a second failure here is named, not raised over the first."""
        try:
            self.finish()
        except Exception as e:  # noqa: BLE001 - the trial's own error is the one to raise
            print(f"warning: the last checkpoint could not be reported ({type(e).__name__}: {e})", file=sys.stderr)

    def wait(self, lag: float = 0.0) -> None:
        """Waits until no queued report is older than `lag` seconds (0: until all are delivered), then raises in
        this thread what a delivery raised: SystemExit where Ray stopped the trial (Tune ends a trial's thread that
        way, from its report), as a synchronous report would have."""
        with self._changed:
            while (self._queue and self._outcome is None
                   and (not lag or time.perf_counter() - self._queue[0].queued > lag)):
                self._changed.wait()
            outcome, self._outcome = self._outcome, None
        if outcome is not None:
            raise outcome

    def _report(self, metrics: dict[str, Any], folder: Path | None, at_once: bool = False,
                write: PendingCheckpoint | None = None) -> None:
        epoch_seconds = sum(metrics.get(k, 0.0) for k in ("train_seconds", "val_seconds", "log_seconds"))
        queued = not at_once and in_background(epoch_seconds)
        self.wait(MAX_LAG if queued else 0.0)  # in order, and raises a stop a delivery heard of
        if not queued:
            self._deliver(self._record(metrics, folder, write, in_loop=True), folder)
            return
        with self._changed:
            self._queue.append(_Queued(metrics, folder, time.perf_counter(), write))
            if self._sender is None:
                self._sender = threading.Thread(target=self._send, name="tune-report", daemon=True)
                self._sender.start()

    def _record(self, metrics: dict[str, Any], folder: Path | None, write: PendingCheckpoint | None,
                in_loop: bool) -> dict[str, Any]:
        """Waits for the checkpoint's write (`in_loop`: in the training thread, whose wait it counts), adds what it cost
        and the last round trip, and appends the epoch to the metrics file, which the checkpoint's folder then gets
        a copy of."""
        costs = {"checkpoint_seconds": 0.0, "checkpoint_write_seconds": 0.0}
        if write is not None:
            write_seconds = write.wait() if in_loop else write.written()
            costs = {"checkpoint_seconds": write.copy_seconds + write.waited_seconds,
                     "checkpoint_write_seconds": write_seconds}
        metrics = {**metrics, **costs, "report_round_trip_seconds": self.round_trip}
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if folder is not None:
            shutil.copy(self.metrics_file, folder / self.metrics_file.name)
        return metrics

    def _send(self) -> None:
        """The sender thread: delivers the queue in order, and ends when it is empty. Once a delivery raised, the
        reports after that one are dropped (their checkpoints removed) and the trial's thread raises it (`wait`)."""
        while True:
            with self._changed:
                if not self._queue:
                    self._sender = None
                    self._changed.notify_all()
                    return
                first = self._queue[0]
            failed = None
            try:
                self._deliver(self._record(first.metrics, first.folder, first.write, in_loop=False), first.folder)
            except BaseException as e:  # noqa: BLE001 - raised in the trial's thread at its next report
                failed = e
                if first.folder is not None:
                    shutil.rmtree(first.folder, ignore_errors=True)  # a failed write never reached Ray
            with self._changed:
                self._queue.popleft()
                if failed is not None:
                    self._outcome = failed
                    for dropped in self._queue:
                        if dropped.folder is not None:
                            shutil.rmtree(dropped.folder, ignore_errors=True)
                    self._queue.clear()
                self._changed.notify_all()

    def _deliver(self, metrics: dict[str, Any], folder: Path | None) -> None:
        start = time.perf_counter()
        try:
            if folder is None:
                tune.report(metrics)
            else:
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        finally:
            self.round_trip = time.perf_counter() - start
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)  # tune.report has persisted it by now
