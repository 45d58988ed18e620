"""Checkpoints written in the background reach Ray Tune whole, each with its own epoch, and a crash loses none.

A real Ray Tune run in this process (tests/conftest.py's `local_ray`), with checkpoints of a few bytes.

    python -m pytest tests/search/test_checkpoint_reports.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ray import tune

from cyclegan import checkpoint
from cyclegan.checkpoint_writer import CheckpointWriter
from search.checkpoint_reports import CheckpointReports

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
    reports.flush()
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
