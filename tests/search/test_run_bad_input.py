"""Bad input to `python -m search.run`: one line naming the culprit, exit 2, before Ray starts, nothing damaged.

The CLI's `main` runs in this process: every case here is refused before Ray is started (which the test
checks), so no search runs. tests/search/test_run.py runs the same checks as a subprocess for a few cases.

    python -m pytest tests/search/test_run_bad_input.py -q
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclegan.config import ConfigError, TrainConfig, parse_overrides
from search import run
from search.space import SpaceError, load_space
from tests.badfiles import set_items, truncated_png
from tests.badfiles import slice_folder as _slices

ROOT = Path(__file__).resolve().parents[2]
SPACE = str(ROOT / "spaces" / "unet_depth.yaml")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys: pytest.CaptureFixture, match: str) -> None:
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not ray.is_initialized()


@pytest.mark.parametrize("storage,match", [
    # Tests run as root, which chmod does not stop: "not writable" is a path that runs through a regular file.
    ("FILE/runs", "--storage FILE/runs: cannot create"),
    ("FILE", "--storage FILE: is a file; expected a folder for runs"),
    ("runs_where_the_run_is_a_file", "runs_where_the_run_is_a_file/unet_depth (File exists)"),
])
def test_storage_that_cannot_hold_the_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, storage: str,
                                                     match: str) -> None:
    (tmp_path / "FILE").write_text("not a folder")
    (tmp_path / "runs_where_the_run_is_a_file").mkdir()
    (tmp_path / "runs_where_the_run_is_a_file" / "unet_depth").write_text("a file named like the run")
    before = snapshot(tmp_path)
    refused([SPACE, "--storage", str(tmp_path / storage)], capsys, match.replace("FILE", str(tmp_path / "FILE")))
    assert snapshot(tmp_path) == before


def test_an_existing_run_is_not_touched_without_resume_and_a_missing_one_cannot_be_resumed(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "runs" / "unet_depth"
    (run_dir / "trial_x").mkdir(parents=True)
    (run_dir / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (run_dir / "trial_x" / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = snapshot(tmp_path)
    refused([SPACE, "--storage", str(tmp_path / "runs")], capsys, "a run of this name exists; pass --resume")
    refused([SPACE, "--storage", str(tmp_path / "runs"), "--name", "other", "--resume"], capsys,
            "no run to resume there")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case,match", [
    ("one_domain_only", "T2: missing"),
    ("truncated_png", "s03.png: not a readable image (image file is truncated"),
    ("empty_domain", "T1: no slices"),
    ("too_few_slices", "cannot be split into train, val and test"),
])
def test_bad_data_is_refused_before_any_trial(tmp_path: Path, capsys: pytest.CaptureFixture, case: str,
                                              match: str) -> None:
    data = _slices(tmp_path / "data")
    if case == "one_domain_only":
        shutil.rmtree(data / "T2")
    elif case == "truncated_png":
        (data / "T1" / "s03.png").write_bytes(truncated_png())
    elif case == "empty_domain":
        for p in (data / "T1").iterdir():
            p.unlink()
    elif case == "too_few_slices":
        for p in sorted((data / "T2").iterdir())[:5]:
            p.unlink()
    refused([SPACE, "--data", str(data), "--storage", str(tmp_path / "runs")], capsys, match)
    assert not list((tmp_path / "runs").glob("*/experiment_state-*"))


@pytest.mark.parametrize("data,match", [
    ("http://example.org/slices", "http:// is not a filesystem this can read; expected a folder, or an s3://"),
    ("s3://", "s3://: no bucket; expected s3://BUCKET/FOLDER"),
    ("file://host/slices", "a file:// URI takes an absolute path"),
    ("file://TMP/nowhere", "file://TMP/nowhere: no such data folder"),
])
def test_a_data_uri_that_cannot_be_read_is_refused_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                     data: str, match: str) -> None:
    refused([SPACE, "--data", data.replace("TMP", str(tmp_path)), "--storage", str(tmp_path / "runs")], capsys,
            match.replace("TMP", str(tmp_path)))
    assert not (tmp_path / "runs" / "unet_depth").exists()  # a refused run leaves no folder behind


@pytest.mark.parametrize("sets,match", [
    (["epochs=2024-13-45"], "epochs='2024-13-45' has the wrong type"),  # once a ValueError traceback
    (["lr=.nan"], "lr must be a finite number"),
    (["unet_depth=1000000000"], "unet_depth"),
    (["resize=64", "unet_depth=7"], "unet_depth=7 needs resize >= 2**7 = 128"),
    (["gan_loss=wgan"], "gan_loss='wgan' is not allowed"),
    (["batch_size=two"], "batch_size='two' has the wrong type: expected int"),
])
def test_bad_set_values_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, sets: list[str],
                                    match: str) -> None:
    refused([SPACE, *[x for s in sets for x in ("--set", s)], "--storage", str(tmp_path / "runs")], capsys, match)


@pytest.mark.parametrize("text,match", [
    ("objective: {metric: ssim}\nparams: {lr: {float: [1.0e-4, 1.0e-3]}}\n",
     "objective.metric: 'ssim' is not a reported metric"),
    ("objective: {weights: {loss_total: 1}}\nparams: {lr: {float: [1.0e-4, 1.0e-3]}}\n",
     "objective.weights.loss_total"),
    ("params: {lr: {float: [1.0e-3, 1.0e-4]}}\n", "params.lr"),
    ("params: {lr: {float: [1.0e-4, 1.0e-3]}\n", "not valid YAML"),
])
def test_a_space_whose_objective_no_trial_reports_or_that_is_malformed_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture, text: str, match: str) -> None:
    (tmp_path / "s.yaml").write_text(text)
    refused([str(tmp_path / "s.yaml"), "--storage", str(tmp_path / "runs")], capsys, match)


@pytest.mark.parametrize("flags,match", [
    (["--gpus-per-trial", "lots"], "with --gpus-per-trial lots: resources.gpus_per_trial: got 'lots'; allowed: auto"),
    (["--gpus-per-trial", "-1"], "resources.gpus_per_trial: got -1.0"),
    (["--gpus-per-trial", "1.5"], "resources.gpus_per_trial: got 1.5"),
    (["--gpus-per-trial", "auto", "--gpu-memory-gib", "0"], "resources.gpu_memory_gib: got 0.0; allowed: a number"),
    (["--gpus-per-trial", "auto", "--gpu-memory-gib", "auto"], "resources.gpu_memory_gib: got 'auto'"),
    # Joining a cluster whose GPUs this machine cannot see (it has none): auto must be told their memory.
    (["--gpus-per-trial", "auto", "--address", "127.0.0.1:1"],
     "resources.gpu_memory_gib: gpus_per_trial auto sizes each trial's share from its GPU's memory, and this "
     "driver has no GPU to read it from; allowed: gpu_memory_gib: GIB under resources, or --gpu-memory-gib GIB"),
])
def test_bad_gpu_flags_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                                   flags: list[str], match: str) -> None:
    monkeypatch.setattr(run, "driver_gpu_bytes", lambda: None)  # as on a GPU-less head node, wherever this runs
    refused([SPACE, *flags, "--storage", str(tmp_path / "runs")], capsys, match)
    assert not (tmp_path / "runs").exists()  # refused before the run folder or the Optuna study is made


@settings(max_examples=200, deadline=None)
@given(st.lists(set_items, min_size=1, max_size=3))
def test_any_set_values_give_a_space_or_one_line_refusal(items: list[str]) -> None:
    # search.run's own path for --set: typed by the config, then applied to the space (where a searched knob
    # becomes fixed and depth constraints are checked again). Only the two refusals main catches may come out.
    try:
        space = load_space(SPACE).with_overrides(parse_overrides(items))
    except (ConfigError, SpaceError) as e:
        assert str(e) and "\n" not in str(e)
        return
    for config in space.trial_points() or []:
        TrainConfig.from_dict(config)


@pytest.mark.slow  # reads the phantom and counts a trial's memory on the meta device: about 10 s on 2 cores
def test_a_search_whose_trials_cannot_fit_their_share_is_refused_before_ray(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    runs = tmp_path / "runs"
    (runs / "earlier").mkdir(parents=True)
    (runs / "earlier" / "kept.txt").write_text("an earlier run's file\n")
    before = snapshot(runs)
    refused([str(ROOT / "spaces" / "study_v1_v4.yaml"), "--gpus-per-trial", "0.01", "--gpu-memory-gib", "22",
             "--storage", str(runs)], capsys,
            "error: synthetic: 156 training slices at 128x128 (4.9 MiB as int16): a trial of resize=128 batch_size=40 ")
    assert snapshot(runs) == before and not (runs / "study_v1_v4").exists()  # nothing written, nothing lost
