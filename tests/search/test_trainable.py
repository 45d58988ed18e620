"""The trainable's own recovery paths, on real checkpoints laid out as Ray Tune lays them out.

    python -m pytest tests/search/test_trainable.py -q
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ray import tune

from cyclegan import checkpoint
from cyclegan.config import TrainConfig
from cyclegan.data import load_data, read_data
from cyclegan.feed import compact
from cyclegan.memory import DataSize
from cyclegan.train import fit
from search.packing import AutoResources, needed_bytes
from search.trainable import RESOURCES, out_of_memory_message, record_resources, restore, trial_dataset, write_record


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trial folder holding checkpoint_000000..2 (epochs 1-3), each a real checkpoint.pt from `fit`."""
    root = tmp_path_factory.mktemp("trial")

    def report(metrics: dict, save) -> None:
        folder = root / f"checkpoint_{metrics['epoch'] - 1:06d}"
        folder.mkdir()
        save(folder / checkpoint.CHECKPOINT)

    cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=4, epochs=3, pool_size=4)
    fit(cfg, load_data("synthetic", 32), report=report)
    return root


@pytest.fixture
def trial_dir(three_checkpoints: Path, tmp_path: Path) -> Path:
    shutil.copytree(three_checkpoints, tmp_path / "trial")
    return tmp_path / "trial"


def _latest(trial_dir: Path) -> tune.Checkpoint:
    return tune.Checkpoint(str(trial_dir / "checkpoint_000002"))  # what tune.get_checkpoint() hands a retry


def test_restore_takes_the_latest_checkpoint(trial_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert restore(_latest(trial_dir))["epoch"] == 3
    assert capsys.readouterr().err.strip() == f"resumed from {trial_dir}/checkpoint_000002 (epoch 3)"


def test_a_damaged_latest_checkpoint_is_named_and_the_previous_one_used(trial_dir: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    latest = trial_dir / "checkpoint_000002" / checkpoint.CHECKPOINT
    latest.write_bytes(latest.read_bytes()[:4096])  # cut short, as a copy to storage interrupted leaves it
    assert restore(_latest(trial_dir))["epoch"] == 2
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "checkpoint_000002/checkpoint.pt: unreadable or truncated checkpoint" in err
    assert "checkpoint_000001 (epoch 2) instead of the damaged latest checkpoint" in err


def test_every_damaged_checkpoint_is_skipped_back_to_one_that_reads(trial_dir: Path) -> None:
    (trial_dir / "checkpoint_000002" / checkpoint.CHECKPOINT).write_bytes(b"")
    (trial_dir / "checkpoint_000001" / checkpoint.CHECKPOINT).unlink()
    (trial_dir / "checkpoint_000003").mkdir()  # newer than the one Ray hands over: never used
    assert restore(_latest(trial_dir))["epoch"] == 1


def test_no_readable_checkpoint_is_a_clear_error(trial_dir: Path) -> None:
    for folder in trial_dir.glob("checkpoint_*"):
        (folder / checkpoint.CHECKPOINT).write_text("garbage")
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint to resume from: .*checkpoint_000002"):
        restore(_latest(trial_dir))


def test_out_of_memory_names_the_knobs_that_set_memory_use(tiny_cfg) -> None:
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    text = out_of_memory_message(tiny_cfg.replace(batch_size=32), 0.25, error)
    assert text.startswith("out of GPU memory at resize=32 batch_size=32 unet_depth=5 ngf=8")
    assert "(gpus_per_trial=0.25)" in text
    assert text.endswith("CUDA said: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "\n" not in text


def test_restore_puts_back_the_metrics_history_of_the_checkpoint_it_uses(trial_dir: Path, tmp_path: Path) -> None:
    # A trial resumed in a new Ray session starts in an empty working folder: the history comes from the checkpoint.
    (trial_dir / "checkpoint_000001" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (trial_dir / "checkpoint_000002" / checkpoint.CHECKPOINT).write_bytes(b"damaged")
    work = tmp_path / "working_dir"
    work.mkdir()
    (work / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epoch": 4}\n')
    assert restore(_latest(trial_dir), work)["epoch"] == 2
    assert (work / "metrics.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    log = (work / "restore.log").read_text().splitlines()  # what was skipped and used, kept with the trial
    assert len(log) == 2 and "skipped" in log[0] and "checkpoint_000002" in log[0]
    assert log[1].startswith(f"resumed from {trial_dir}/checkpoint_000001 (epoch 2) instead of the damaged")


@pytest.mark.filterwarnings("ignore:`get_trial_resources` is meant to only be called inside")  # Ray's, expected here
def test_outside_tune_the_gpu_share_is_computed_by_the_same_rule_and_recorded(tiny_cfg, tmp_path: Path) -> None:
    # In a trial the share is Ray's (tests/search/test_placement.py); without a Tune session it comes from the
    # resources the trainable was given, by the rule Tune would have asked.
    config = {**tiny_cfg.to_dict(), "name": "V1"}
    phantom = DataSize(40, 40, 7, 7)  # the built-in phantom's counts, as search.run hands them over
    share, record = record_resources(tmp_path / "resources.json", config, AutoResources(1, 3 * 2**30, 4, phantom))
    assert share == 0.38 and record["share_from"] == "computed" and record["gpus_per_trial"] == "auto"  # val counts
    assert record["estimated_bytes"] == needed_bytes(tiny_cfg, phantom) and record["gpu_bytes"] == 3 * 2**30
    assert record["estimate_seconds"] >= 0.0  # how long the trial's own estimate took (cached: near nothing here)
    assert record["memory_fraction"] is None and record["device"] == "cpu"  # no GPU here: nothing to cap
    share, record = record_resources(tmp_path / "resources.json", config, {"cpu": 1, "gpu": 0.25})
    assert (share, record["gpus_per_trial"], record["gpu_bytes"]) == (0.25, 0.25, None)
    assert json.loads((tmp_path / "resources.json").read_text())["gpu_share"] == 0.25


@pytest.mark.slow  # counts three trials' memory on the meta device: about 10 s on 2 cores
def test_a_trial_keeps_its_data_resident_when_it_fits_streams_it_when_not_and_refuses_what_cannot_fit() -> None:
    from cyclegan.data import DataError
    from cyclegan.memory import DataSize, GiB, estimate_memory
    from search.packing import trial_budget
    from search.trainable import _budget

    cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8)
    small, large = DataSize(100, 100, 7, 7, 32), DataSize(3_000_000, 3_000_000, 7, 7, 32, 16, "big")
    record = {"cap_gpu_bytes": 22 * GiB}
    assert _budget(cfg, small, 0.25, record) == trial_budget(0.25, 22 * GiB) == int(4.75 * GiB)
    assert record["data_placement"] == "resident" and record["estimated_bytes"] == estimate_memory(cfg, small)
    assert _budget(cfg, large, 0.25, record) and record["data_placement"] == "streamed"  # 11 GiB of slices
    with pytest.raises(DataError, match=r"^big: 6,000,000 training slices at 32x32 \(11\.44 GiB as int16\): .* "
                                        r"over its budget of 0\.11 GiB \(its share 0\.01 of a 22 GiB GPU"):
        _budget(cfg, large, 0.01, record)
    assert _budget(cfg, large, 0.0, {"cap_gpu_bytes": None}) is None  # on the CPU: no budget


def test_a_trial_builds_its_data_from_the_slices_it_is_handed_and_refuses_a_path(tiny_cfg, study_data: Path) -> None:
    slices = read_data(study_data)
    for resize in (32, 64):
        built, loaded = trial_dataset(slices, tiny_cfg.replace(resize=resize)), load_data(study_data, resize)
        assert built.split() == loaded.split() and built.train.t1.shape[-1] == resize
        # Its training slices come as the feed keeps them: the study's 8-bit PNGs as uint8 codes, never floats.
        assert built.train.t1.dtype == torch.uint8 and len(built.test.t1) == 0  # it never scores test
        assert torch.equal(built.train.t2, compact(loaded.train.t2, torch.uint8))
    phantom = trial_dataset("synthetic", tiny_cfg)  # drawn in the trial, at its resize and seed
    assert torch.equal(phantom.train.t1, load_data("synthetic", 32, seed=0).train.t1)
    # A path names a folder on the driver's machine; a trial on another node may not have it.
    with pytest.raises(TypeError, match="a trial takes the slices search.run read"):
        trial_dataset(str(study_data), tiny_cfg)


def test_a_record_appears_in_the_trial_folder_whole_and_nothing_else_ever_does(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray copies the trial's folder while the trial writes: a temporary file it lists and that is renamed away
    # before it reads it fails the copy, and with it the next trial of a reused process (seen in a CI run).
    trial = tmp_path / "trial_1"
    trial.mkdir()
    seen = []
    rename = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((Path(src).parent, sorted(p.name for p in trial.iterdir())))
        rename(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_record(trial / RESOURCES, {"epoch": 1})
    write_record(trial / RESOURCES, {"epoch": 2})
    assert seen == [(tmp_path, []), (tmp_path, [RESOURCES])]
    assert json.loads((trial / RESOURCES).read_text()) == {"epoch": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["trial_1"]  # no temporary file left beside it


def test_the_process_waits_as_it_exits_for_the_trial_thread_to_unwind(tmp_path: Path) -> None:
    # As Ray ends a stopped trial's process: the trial's daemon thread is still unwinding when the main thread
    # returns. Without the wait, the interpreter stops it mid-way (in PyTorch, an abort) and "done" is never written.
    script = f"""
import threading, time
from pathlib import Path
from search.trainable import wait_at_exit_for_this_thread

def trial():
    wait_at_exit_for_this_thread()
    time.sleep(1.0)
    Path({str(tmp_path / "done")!r}).write_text("unwound")

threading.Thread(target=trial, daemon=True).start()
time.sleep(0.2)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert (tmp_path / "done").read_text() == "unwound"


def test_at_exit_the_trial_thread_stops_at_its_next_step_not_its_next_report(tmp_path: Path) -> None:
    # A trial in the middle of an epoch of hours on this CPU, as Ray ends its process: the process ends within
    # seconds, after the thread has left the epoch (and, on a GPU, after the GPU has done what it queued).
    script = f"""
import threading, time
from pathlib import Path
from cyclegan.config import TrainConfig
from cyclegan.data import load_data
from cyclegan.graphed import EpochHalted
from cyclegan.train import Trainer, epoch_order
from search.trainable import wait_at_exit_for_this_thread

cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=4, pool_size=4)
data = load_data("synthetic", 32).train
steps = 100_000
trainer = Trainer.build(cfg, "cpu")
runner = trainer.runner(trainer.feed(data.t1, data.t2, steps, bits=None), steps)
orders = [epoch_order(len(x), steps, 4, k, 1) for k, x in enumerate((data.t1, data.t2))]
training = threading.Event()

def trial():
    wait_at_exit_for_this_thread()
    training.set()
    try:
        runner.run_epoch(*orders)
    except EpochHalted as e:
        Path({str(tmp_path / "halted")!r}).write_text(f"{{e}}; counter {{runner.counter.item()}}")

threading.Thread(target=trial, daemon=True).start()
training.wait()
time.sleep(1.0)
"""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert time.perf_counter() - start < 60
    message = (tmp_path / "halted").read_text()
    steps = int(re.fullmatch(r"the process is exiting: the epoch stopped after (\d+) of 100000 steps; counter \1",
                             message).group(1))
    assert 0 < steps < 100_000
