"""A trial's reports to Ray Tune, each checkpoint reported once its file is whole, without holding up training.

`tune.report(metrics, checkpoint=...)` persists the checkpoint's folder as it is when called, so the file must be on
disk by then; `fit` writes it from a background thread (`cyclegan.checkpoint_writer`). Waiting for it at once would
put the write back on the training path, so an epoch with a checkpoint is reported at the next report (the next
epoch's, or the trial's end), by when the thread has had an epoch of training to finish it. Reports stay one an
epoch, in order, each with the checkpoint of its own epoch (what `search.select` picks the best one by); ASHA and
Optuna hear of such an epoch one epoch later.

Each checkpoint carries the trial's `metrics.jsonl` up to its epoch, which a resumed trial puts back
(search/trainable.py). Each report also says what its checkpoint cost: `checkpoint_seconds`, the training
loop's time on it (the copy to host memory, waiting for the previous write, waiting before the report), and
`checkpoint_write_seconds`, the thread's (both 0 for an epoch without one); `search.throughput` sums them.

A trial that fails after a checkpoint's write began reports it on its way out (`flush`), as the synchronous write
had reported it before the next epoch started: a retry loses no epoch it would have kept before.

    reports = CheckpointReports(trial_dir / "metrics.jsonl")
    reports.epoch(metrics, save, with_checkpoint=True)   # save(path) -> PendingCheckpoint, from `fit`'s report
    reports.flush()                                 # at the end: the last checkpoint, reported
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
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


class CheckpointReports:
    def __init__(self, metrics_file: Path) -> None:
        self.metrics_file = metrics_file
        self._pending: _Pending | None = None

    def epoch(self, metrics: dict[str, Any], save: Callable[[Path], PendingCheckpoint], with_checkpoint: bool,
              at_once: bool = False) -> None:
        """Reports an epoch now, or `with_checkpoint` starts its checkpoint and reports it at the next call (or,
        `at_once`, once its write is done: for a scheduler that decides on this very report, such as PBT)."""
        self.flush()
        if not with_checkpoint:
            self._report({**metrics, "checkpoint_seconds": 0.0, "checkpoint_write_seconds": 0.0}, None)
            return
        folder = Path(tempfile.mkdtemp(prefix="checkpoint-"))
        try:
            self._pending = _Pending(metrics, folder, save(folder / checkpoint.CHECKPOINT))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if at_once:
            self.flush()

    def flush(self) -> None:
        """Waits for the pending checkpoint's write, then reports its epoch with it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            write_seconds = pending.write.wait()
            costs = {"checkpoint_seconds": pending.write.copy_seconds + pending.write.waited_seconds,
                     "checkpoint_write_seconds": write_seconds}
            self._report({**pending.metrics, **costs}, pending.folder)
        finally:
            shutil.rmtree(pending.folder, ignore_errors=True)  # tune.report has persisted it by now

    def flush_on_error(self) -> None:
        """`flush` on a failing trial's way out; a second failure here is named, not raised over the first."""
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 - the trial's own error is the one to raise
            print(f"warning: the last checkpoint could not be reported ({type(e).__name__}: {e})", file=sys.stderr)

    def _report(self, metrics: dict[str, Any], folder: Path | None) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if folder is None:
            tune.report(metrics)
            return
        shutil.copy(self.metrics_file, folder / self.metrics_file.name)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
