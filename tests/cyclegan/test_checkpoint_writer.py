"""Checkpoints written off the training path hold the state of their epoch, whatever training does meanwhile.

    python -m pytest tests/cyclegan/test_checkpoint_writer.py -q
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from cyclegan import checkpoint, checkpoint_writer
from cyclegan.checkpoint_writer import CheckpointWriter
from cyclegan.data import load_data
from cyclegan.train import TIMING_METRICS, fit


def _same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


@pytest.mark.slow  # trains 2 epochs, twice
def test_a_checkpoint_written_while_training_goes_on_loads_equal_to_one_written_before(
        tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_data("synthetic", 32)
    cfg = tiny_cfg.replace(epochs=2)

    def written_at_once(metrics: dict, save) -> None:
        if metrics["epoch"] == 1:
            save(tmp_path / "sync.pt").wait()  # on disk before epoch 2 trains, as a synchronous write is

    fit(cfg, data, device="cpu", report=written_at_once)

    # The second run's epoch-1 write is held until epoch 2 has trained, changing every weight, moment and pool
    # in place: the file must still hold epoch 1.
    epoch2_done = threading.Event()
    real_save = checkpoint_writer.checkpoint.save

    def held_save(path: Path, payload: dict, **options: Any) -> None:
        assert epoch2_done.wait(60), "epoch 2 never reported"
        real_save(path, payload, **options)

    monkeypatch.setattr(checkpoint_writer.checkpoint, "save", held_save)
    pending = []

    def written_later(metrics: dict, save) -> None:
        if metrics["epoch"] == 1:
            pending.append(save(tmp_path / "async.pt"))
            assert not pending[0].done()
        else:
            epoch2_done.set()

    fit(cfg, data, device="cpu", report=written_later)
    assert pending[0].done() and pending[0].wait() > 0  # fit returned once the write was done
    sync, held = checkpoint.load(tmp_path / "sync.pt"), checkpoint.load(tmp_path / "async.pt")
    for state in (sync, held):
        state["metrics"] = {k: v for k, v in state["metrics"].items() if k not in TIMING_METRICS}
    assert held["epoch"] == 1
    _same(held, sync)


def test_a_failed_write_is_raised_by_whoever_waits_for_it(tmp_path: Path) -> None:
    writer = CheckpointWriter()
    pending = writer.save(tmp_path / "no_such_folder" / "checkpoint.pt", {"config": {}, "w": torch.ones(2)})
    with pytest.raises(FileNotFoundError):
        pending.wait()
    with pytest.raises(FileNotFoundError):  # and by the next save, which waits for it first
        writer.save(tmp_path / "checkpoint.pt", {"config": {}, "w": torch.ones(2)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned copies on a side stream need a GPU")
def test_on_a_gpu_the_copy_is_ordered_before_what_the_loop_does_next(tmp_path: Path) -> None:
    writer = CheckpointWriter()
    w = torch.randn(64, 1024, 1024, device="cuda")  # 256 MB: the copy takes long enough to overlap the change
    expected = w.cpu()
    pending = writer.save(tmp_path / "checkpoint.pt", {"config": {}, "models": {"w": w}})
    w.add_(1.0)  # on the loop's stream, queued right behind the copy
    pending.wait()
    writer.close()
    assert torch.equal(checkpoint.load(tmp_path / "checkpoint.pt")["models"]["w"], expected)
    assert torch.equal(w.cpu(), expected + 1.0)


@pytest.mark.parametrize("durable,syncs", [(True, 2), (False, 0)])
def test_a_file_that_need_not_be_durable_is_written_whole_without_fsync(tmp_path, monkeypatch, durable, syncs):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    writer = CheckpointWriter()
    writer.save(tmp_path / "c.pt", {"config": {}, "epoch": 3, "w": torch.arange(5.0)},
                durable=durable).wait()
    writer.close()
    assert len(calls) == syncs
    got = checkpoint.load(tmp_path / "c.pt")
    assert got["epoch"] == 3 and torch.equal(got["w"], torch.arange(5.0))
    assert not list(tmp_path.glob(".*.tmp"))
