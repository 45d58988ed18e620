"""`python -m cyclegan.train` and `python -m cyclegan.translate` as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.paths import pythonpath

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "resize=32", "--set", "unet_depth=5", "--set", "disc_layers=2", "--set", "ngf=8", "--set", "ndf=8"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": pythonpath(), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_line_error(p: subprocess.CompletedProcess, match: str) -> None:
    assert p.returncode == 2, p.stderr
    assert match in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.slow  # trains three times in subprocesses
@pytest.mark.parametrize("data", ["synthetic", "study"])
def test_train_leaves_config_metrics_checkpoint_and_events_then_resumes(tmp_path, data, request):
    source = "synthetic" if data == "synthetic" else str(request.getfixturevalue("study_data"))
    out = tmp_path / "run"
    p = cli("cyclegan.train", "--data", source, *TINY, "--set", "epochs=2", "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for name in ("config.json", "split.json", "metrics.jsonl", "checkpoint.pt"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[0]["paired"] is (data == "synthetic")
    assert json.loads((out / "config.json").read_text())["resize"] == 32

    # Running again into the same folder without --resume would overwrite a run: refused.
    again = cli("cyclegan.train", "--data", source, *TINY, "--set", "epochs=2", "--out", str(out), cwd=tmp_path)
    _one_line_error(again, "already holds a run; pass --resume")
    more = cli("cyclegan.train", "--data", source, "--config", str(out / "config.json"), "--set", "epochs=3",
               "--out", str(out), "--resume", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow  # trains and translates in subprocesses
def test_translate_writes_each_slice_at_its_own_size_and_bit_depth(tmp_path):
    out = tmp_path / "run"
    assert cli("cyclegan.train", *TINY, "--set", "epochs=1", "--out", str(out), cwd=tmp_path).returncode == 0
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((np.random.default_rng(0).random((217, 181)) * 255).astype(np.uint8)).save(src / "a.png")
    Image.fromarray((np.random.default_rng(1).random((40, 64)) * 65535).astype(np.uint16)).save(src / "b.png")
    p = cli("cyclegan.translate", "--checkpoint", str(out), "--direction", "t1-t2", str(src), "--out",
            str(tmp_path / "t"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    a, b = Image.open(tmp_path / "t" / "a.png"), Image.open(tmp_path / "t" / "b.png")
    assert (a.size, a.mode) == ((181, 217), "L")
    assert b.size == (64, 40) and b.mode.startswith("I")


@pytest.mark.parametrize("args,match", [
    (["cyclegan.train", "--set", "unet_depth=6", "--set", "resize=32", "--out", "o"], "unet_depth=6 needs resize"),
    (["cyclegan.train", "--set", "colour=red", "--out", "o"], "unknown key 'colour'"),
    (["cyclegan.train", "--data", "nowhere", "--out", "o"], "nowhere: no such data folder"),
    (["cyclegan.train", "--resume", "--out", "o"], "o/checkpoint.pt: no such checkpoint file"),
    (["cyclegan.translate", "--checkpoint", "o", "--direction", "t1-t2", "x.png", "--out", "t"],
     "x.png: no such file or folder"),
    (["cyclegan.translate", "--checkpoint", "nowhere", "--direction", "t1-t2", "IMG", "--out", "t"],
     "holds neither model.pt"),
])
def test_bad_input_gets_one_clear_line(tmp_path, args, match):
    Image.new("L", (20, 20)).save(tmp_path / "ok.png")
    args = [str(tmp_path / "ok.png") if a == "IMG" else a for a in args]
    _one_line_error(cli(*args, cwd=tmp_path), match)


@pytest.mark.slow  # trains and translates in subprocesses
def test_train_on_nifti_volumes_then_translate_one_back_to_a_volume(tmp_path):
    import nibabel as nib

    from tests.cyclegan.test_nifti import SPL, phantom_volume

    data = tmp_path / "data"
    for k in range(3):  # three subjects: whole volumes go to train, val and test
        phantom_volume(data / "T1" / f"sub-{k}_T1w.nii.gz", seed=k)
        phantom_volume(data / "T2" / f"sub-{k}_T2w.nii.gz", seed=k, contrast="t2")
    out = tmp_path / "run"
    p = cli("cyclegan.train", "--data", str(data), *TINY, "--set", "epochs=1", "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    split = json.loads((out / "split.json").read_text())
    assert all(n.startswith("sub-") and ":z" in n for part in ("train", "val", "test") for n in split[part]["T1"])

    source = data / "T1" / "sub-0_T1w.nii.gz"
    p = cli("cyclegan.translate", "--checkpoint", str(out), "--direction", "t1-t2", str(source), "--out",
            str(tmp_path / "t"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "(1 volume(s))" in p.stdout
    before, after = nib.load(source), nib.load(tmp_path / "t" / source.name)
    assert after.shape == before.shape and np.allclose(after.affine, SPL)
    assert after.get_data_dtype() == before.get_data_dtype()
    x, y = before.get_fdata(), after.get_fdata()
    assert x.min() <= y.min() and y.max() <= x.max() and y.std() > 0  # the input's range, not [0, 1]
    assert np.array_equal(y[:3], x[:3])  # the empty slices below the head, as they were
