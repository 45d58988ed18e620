from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan.data import DataError, load_data, read_image, split_labels


def _write(folder: Path, n: int, *, size=(30, 20), mode="L", start=0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        img = np.zeros(size[::-1], dtype=np.float64)
        img[4:-4, 3:-3] = rng.uniform(0.3, 1.0)
        if mode == "I;16":
            Image.fromarray((img * 65535).astype(np.uint16)).save(folder / f"slice_{start + i:03d}.png")
        else:
            Image.fromarray((img * 255).astype(np.uint8)).convert(mode).save(folder / f"slice_{start + i:03d}.png")


@pytest.fixture
def folder(tmp_path) -> Path:
    _write(tmp_path / "T1", 14, mode="L")
    _write(tmp_path / "T2", 12, mode="I;16", size=(24, 31), start=100)
    return tmp_path


def test_reads_8_and_16_bit_grey_and_rgb_of_any_size(folder, tmp_path):
    _write(tmp_path / "rgb", 1, mode="RGB")
    for path in [*(folder / "T1").iterdir(), *(folder / "T2").iterdir(), *(tmp_path / "rgb").iterdir()]:
        x = read_image(path)
        assert x.ndim == 2 and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 and x.max() > 0.25
    d = load_data(folder, 32)
    for s in (d.train, d.val, d.test):
        for x in (s.t1, s.t2):
            assert x.shape[1:] == (1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert len(d.train.t1) + len(d.val.t1) + len(d.test.t1) <= 14 and not d.val.paired


def test_sixteen_bit_keeps_its_precision(tmp_path):
    ramp = (np.linspace(0, 1, 64 * 64).reshape(64, 64) * 65535).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    assert len(np.unique(read_image(tmp_path / "r.png"))) > 1000


def test_split_has_no_test_or_val_slice_next_to_a_train_slice_and_spans_the_head():
    for n in (10, 23, 43, 46, 60, 200):
        labels = split_labels(n)
        assert labels == split_labels(n)  # deterministic
        for i, lab in enumerate(labels):
            if lab in ("val", "test"):
                neighbours = labels[max(0, i - 1):i + 2]
                assert "train" not in neighbours, (n, i)
        test = [i for i, lab in enumerate(labels) if lab == "test"]
        assert test and labels.count("val") and labels.count("train") >= n // 2
        if n >= 24:  # bottom, middle and top thirds each hold test slices
            assert {3 * i // n for i in test} == {0, 1, 2}


def test_split_is_written_with_slice_names(folder, tmp_path):
    d = load_data(folder, 32)
    d.save_split(tmp_path / "split.json")
    split = d.split()
    names = [n for part in ("train", "val", "test") for n in split[part]["T1"]]
    assert len(names) == len(set(names)) and all(n.startswith("slice_") for n in names)


def test_slices_sort_by_number_not_text(tmp_path):
    _write(tmp_path / "T1", 12, start=95)
    _write(tmp_path / "T2", 12)
    d = load_data(tmp_path, 32)
    # Text order would put 100-106 before 95-99 and so hold out other slices.
    labels = split_labels(12)
    for part in ("train", "val", "test"):
        expected = [f"slice_{95 + i:03d}.png" for i, lab in enumerate(labels) if lab == part]
        assert list(getattr(d, part).t1_names) == expected


def test_synthetic_data_is_paired_on_val_and_test_and_deterministic():
    a, b = load_data("synthetic", 32, seed=0), load_data("synthetic", 32, seed=0)
    assert a.val.paired and a.test.paired and not a.train.paired
    assert torch.equal(a.train.t1, b.train.t1) and torch.equal(a.test.t2, b.test.t2)
    assert not torch.equal(a.train.t1, load_data("synthetic", 32, seed=1).train.t1)
    assert a.val.t1_names == a.val.t2_names
    # Training T1 and T2 come from different subjects: unpaired.
    assert set(a.train.t1_names).isdisjoint(a.train.t2_names)


@pytest.mark.parametrize("case,match", [
    ("missing", "no such data folder"),
    ("no_t2", "T2: missing"),
    ("empty_t1", "T1: no slices"),
    ("not_image", "slice_005.png: not a readable image"),
    ("too_few", "at least 10 are needed"),
    ("one_pixel", "too small; expected at least 2x2"),
])
def test_bad_data_is_refused_with_the_culprit_named(tmp_path, case, match):
    _write(tmp_path / "T1", 12)
    _write(tmp_path / "T2", 12)
    root = tmp_path
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "no_t2":
        for p in (tmp_path / "T2").iterdir():
            p.unlink()
        (tmp_path / "T2").rmdir()
    elif case == "empty_t1":
        for p in (tmp_path / "T1").iterdir():
            p.unlink()
    elif case == "not_image":
        (tmp_path / "T1" / "slice_005.png").write_text("not a png")
    elif case == "too_few":
        for p in sorted((tmp_path / "T2").iterdir())[:5]:
            p.unlink()
    elif case == "one_pixel":
        Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "T1" / "slice_003.png")
    with pytest.raises(DataError, match=match):
        load_data(root, 32)
