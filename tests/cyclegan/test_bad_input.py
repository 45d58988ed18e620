"""Bad input to `cyclegan.train` and `cyclegan.translate`: one line naming the culprit, exit 2, nothing damaged.

Each case runs the CLI's `main` in this process (a traceback would fail the test as an exception) on a real
trained run and a real export, and compares every file that was there before with what is there after.

    python -m pytest tests/cyclegan/test_bad_input.py -q
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import checkpoint, train, translate
from cyclegan.config import TrainConfig
from tests.badfiles import png_header_only, truncated_png
from tests.badfiles import slice_folder as _slices

TINY = ["--set", "resize=32", "--set", "unet_depth=5", "--set", "disc_layers=2", "--set", "ngf=8", "--set", "ndf=8"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` and its bytes: what a refused command must leave exactly as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture, match: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert match in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch training run (`run/`) and an export of it (`export/`), made once for the module."""
    root = tmp_path_factory.mktemp("made")
    assert train.main(["--data", "synthetic", *TINY, "--set", "epochs=1", "--out", str(root / "run")]) == 0
    state = checkpoint.load(root / "run" / checkpoint.CHECKPOINT)
    (root / "export").mkdir()
    checkpoint.save(root / "export" / checkpoint.MODEL, {"config": state["config"], "metrics": {}, "split": {},
                                                          "g_t1_t2": state["models"]["g_t1_t2"],
                                                          "g_t2_t1": state["models"]["g_t2_t1"]})
    return root


@pytest.fixture
def work(made: Path, tmp_path: Path) -> Path:
    """A fresh copy of the run and the export, which a test may damage on purpose."""
    for name in ("run", "export"):
        shutil.copytree(made / name, tmp_path / name)
    return tmp_path


# --- cyclegan.train ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sets,match", [
    (["lr=fast"], "--set 'lr=fast': lr='fast' has the wrong type: expected float, got str"),
    (["epochs=2.5"], "epochs=2.5 has the wrong type: expected int, got float"),
    (["compile=maybe"], "compile='maybe' has the wrong type: expected bool"),
    (["learning_rate=1e-3"], "unknown key 'learning_rate'"),
    (["lr"], "--set 'lr': expected key=value"),
    (["dropout=.nan"], "dropout must be a finite number, got nan"),
    (["seed=-3"], "seed must be >= 0, got -3"),
])
def test_train_refuses_bad_set_values(tmp_path: Path, capsys: pytest.CaptureFixture, sets: list[str],
                                      match: str) -> None:
    argv = ["--out", str(tmp_path / "o"), *[x for s in sets for x in ("--set", s)]]
    refused(train.main, argv, capsys, match)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("case,match", [
    ("one_domain_only", "T2: missing"),
    ("empty_domain", "T1: no slices"),
    ("truncated_png", "s03.png: not a readable image (image file is truncated"),
    ("zero_by_zero", "s04.png: not a readable image"),
    ("one_pixel", "s05.png: a (1, 1) image is too small"),
    ("text_as_png", "s06.png: not a readable image"),
    ("a_file_not_a_folder", "no such data folder"),
])
def test_train_refuses_bad_data_folders(tmp_path: Path, capsys: pytest.CaptureFixture, case: str, match: str) -> None:
    data = _slices(tmp_path / "data")
    if case == "one_domain_only":
        shutil.rmtree(data / "T2")
    elif case == "empty_domain":
        for p in (data / "T1").iterdir():
            p.unlink()
    elif case == "truncated_png":
        (data / "T2" / "s03.png").write_bytes(truncated_png())
    elif case == "zero_by_zero":
        (data / "T1" / "s04.png").write_bytes(png_header_only(0, 0))
    elif case == "one_pixel":
        Image.new("L", (1, 1), 200).save(data / "T1" / "s05.png")
    elif case == "text_as_png":
        (data / "T2" / "s06.png").write_text("P2 not a png")
    elif case == "a_file_not_a_folder":
        data = tmp_path / "data.txt"
        data.write_text("slices")
    refused(train.main, ["--data", str(data), *TINY, "--out", str(tmp_path / "o")], capsys, match)
    assert not (tmp_path / "o").exists()


def test_train_on_slices_of_mixed_sizes_and_bit_depths_works(tmp_path: Path) -> None:
    data = _slices(tmp_path / "data")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((217, 181)) * 65535).astype(np.uint16)).save(data / "T1" / "s03.png")
    Image.fromarray((rng.random((40, 300, 3)) * 255).astype(np.uint8)).save(data / "T2" / "s07.png")
    Image.new("L", (2, 2), 255).save(data / "T1" / "s08.png")
    assert train.main(["--data", str(data), *TINY, "--set", "epochs=1", "--out", str(tmp_path / "o")]) == 0


def test_train_refuses_an_out_it_cannot_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Tests run as root, which chmod does not stop, so "not writable" is a path that runs through a regular file:
    # no user, root included, can create a folder there.
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    refused(train.main, [*TINY, "--set", "epochs=1", "--out", str(blocker / "run")], capsys, "Not a directory")
    refused(train.main, [*TINY, "--set", "epochs=1", "--out", str(blocker)], capsys, "File exists")
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("damage,match", [
    ("missing", "checkpoint.pt: no such checkpoint file"),
    ("truncated", "checkpoint.pt: unreadable or truncated checkpoint"),
    ("empty", "checkpoint.pt: unreadable or truncated checkpoint"),
    ("not_torch", "checkpoint.pt: unreadable or truncated checkpoint"),
    ("other_project", "checkpoint.pt: not a checkpoint of this project"),
    ("an_export", "checkpoint.pt: not a training checkpoint (no epoch, models, optim, sched, pools, rng)"),
    ("other_architecture", "checkpoint.pt: checkpoint was trained with other settings (ngf=4, not 8)"),
    ("edited_weights", "checkpoint.pt: checkpoint's state does not fit its config"),
    ("code_on_load", "checkpoint.pt: unreadable or truncated checkpoint (Weights only load failed"),
])
def test_train_resume_refuses_a_bad_checkpoint_and_leaves_the_run_as_it_was(
        work: Path, capsys: pytest.CaptureFixture, damage: str, match: str) -> None:
    run = work / "run"
    ckpt = run / checkpoint.CHECKPOINT
    argv = ["--out", str(run), "--resume", "--config", str(run / "config.json"), "--set", "epochs=2"]
    if damage == "missing":
        ckpt.unlink()
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "not_torch":
        ckpt.write_text("just text")
    elif damage == "other_project":
        torch.save({"state_dict": {}}, ckpt)
    elif damage == "an_export":
        shutil.copy(work / "export" / checkpoint.MODEL, ckpt)
    elif damage == "other_architecture":
        argv += ["--set", "ngf=4"]
    elif damage == "edited_weights":
        state = checkpoint.load(ckpt)
        state["models"]["g_t1_t2"] = {"bogus.weight": torch.zeros(3)}
        checkpoint.save(ckpt, state)
    elif damage == "code_on_load":
        torch.save({"format": checkpoint.FORMAT, "config": {}, "x": _RunsCode()}, ckpt)
    before = snapshot(run)
    refused(train.main, argv, capsys, match)
    assert snapshot(run) == before  # config.json, split.json, metrics.jsonl and the checkpoint untouched
    assert not (work / "PWNED").exists()


class _RunsCode:
    """Unpickling this runs a shell command: what a checkpoint from a stranger may hold. weights_only refuses it."""

    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'PWNED'}",))


def test_train_refuses_a_config_file_that_is_not_a_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for text, match in (("[1, 2]", "expected a mapping of knobs, got list"), ("{", "Expecting property name"),
                        ('{"resize": "big"}', "resize='big' has the wrong type")):
        (tmp_path / "c.json").write_text(text)
        refused(train.main, ["--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")], capsys, match)
    refused(train.main, ["--config", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")], capsys,
            "No such file or directory")


# --- cyclegan.translate --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,match", [
    ("missing_input", "nowhere.png: no such file or folder"),
    ("text_input", "notes.png: not a readable image"),
    ("truncated_input", "cut.png: not a readable image (image file is truncated"),
    ("one_pixel_input", "dot.png: a (1, 1) image is too small"),
    ("folder_without_pngs", "empty: a folder with no .png/.nii/.nii.gz files"),
    ("export_truncated", "model.pt: unreadable or truncated checkpoint"),
    ("export_of_other_architecture", "model.pt: does not match its own config"),
    ("export_with_a_config_this_code_refuses", "model.pt: does not match its own config (unet_depth=9 needs"),
    ("checkpoint_missing", "holds neither model.pt (an export) nor checkpoint.pt"),
    ("out_is_a_file", "File exists"),
])
def test_translate_refuses_bad_input_and_writes_nothing(work: Path, capsys: pytest.CaptureFixture, case: str,
                                                        match: str) -> None:
    src = work / "in"
    src.mkdir()
    Image.new("L", (30, 20), 90).save(src / "good.png")  # a good slice first: nothing may be written for it either
    inputs = [src / "good.png"]
    model, out = work / "export", work / "out"
    out.mkdir()
    Image.new("L", (5, 5), 7).save(out / "good.png")  # an earlier result that must survive
    if case == "missing_input":
        inputs.append(work / "nowhere.png")
    elif case == "text_input":
        (src / "notes.png").write_text("not an image")
        inputs.append(src / "notes.png")
    elif case == "truncated_input":
        (src / "cut.png").write_bytes(truncated_png())
        inputs.append(src / "cut.png")
    elif case == "one_pixel_input":
        Image.new("L", (1, 1)).save(src / "dot.png")
        inputs.append(src / "dot.png")
    elif case == "folder_without_pngs":
        (work / "empty").mkdir()
        (work / "empty" / "readme.txt").write_text("no slices here")
        inputs.append(work / "empty")
    elif case == "export_truncated":
        f = model / checkpoint.MODEL
        f.write_bytes(f.read_bytes()[:1000])
    elif case == "export_of_other_architecture":
        payload = checkpoint.load(model / checkpoint.MODEL)
        other = TrainConfig.from_dict(payload["config"]).replace(ngf=16)
        checkpoint.save(model / checkpoint.MODEL, {**payload, "config": other.to_dict()})
    elif case == "export_with_a_config_this_code_refuses":
        payload = checkpoint.load(model / checkpoint.MODEL)
        checkpoint.save(model / checkpoint.MODEL, {**payload, "config": {**payload["config"], "unet_depth": 9}})
    elif case == "checkpoint_missing":
        model = work / "no_model_here"
        model.mkdir()
    elif case == "out_is_a_file":
        shutil.rmtree(out)
        out.write_text("a file")
    before = snapshot(work)
    argv = ["--checkpoint", str(model), "--direction", "t1-t2", *map(str, inputs), "--out", str(out), "--device",
            "cpu"]
    refused(translate.main, argv, capsys, match)
    assert snapshot(work) == before


def test_translate_loads_an_export_without_running_code_in_it(work: Path, capsys: pytest.CaptureFixture) -> None:
    payload = checkpoint.load(work / "export" / checkpoint.MODEL)
    torch.save({**payload, "format": checkpoint.FORMAT, "extra": _RunsCode()}, work / "export" / checkpoint.MODEL)
    Image.new("L", (30, 20), 90).save(work / "a.png")
    refused(translate.main, ["--checkpoint", str(work / "export"), "--direction", "t2-t1", str(work / "a.png"),
                             "--out", str(work / "out")], capsys, "Weights only load failed")
    assert not (work / "PWNED").exists() and not (work / "out").exists()


def test_the_export_made_here_translates(work: Path) -> None:
    # The fixture's export is a real one: the refusals above are of damage, not of a broken fixture.
    Image.new("L", (30, 20), 90).save(work / "a.png")
    assert translate.main(["--checkpoint", str(work / "export"), "--direction", "t1-t2", str(work / "a.png"),
                           "--out", str(work / "out"), "--device", "cpu"]) == 0
    assert Image.open(work / "out" / "a.png").size == (30, 20)
