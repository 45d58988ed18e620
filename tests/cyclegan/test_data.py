from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cyclegan import data
from cyclegan.data import (
    SYNTHETIC_SLICES,
    DataError,
    build_dataset,
    load_data,
    read_data,
    read_domain,
    read_image,
    split_labels,
    synthetic_data,
    to_square,
)
from cyclegan.evaluate import VAL_SLICES, resample, validation_subset
from cyclegan.feed import compact, compact_dtype
from cyclegan.nifti import read_volume
from cyclegan.sizes import DataSize
from tests.badfiles import png_header_only, truncated_png
from tests.cyclegan.test_nifti import phantom_volume


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
    # Train at resize; val and test at one eval size for every resize: 256, as T1's and T2's sizes differ.
    assert d.eval_size == 256
    for s, size in ((d.train, 32), (d.val, 256), (d.test, 256)):
        for x in (s.t1, s.t2):
            assert x.shape[1:] == (1, size, size) and x.min() >= -1 and x.max() <= 1
    assert len(d.train.t1) + len(d.val.t1) + len(d.test.t1) <= 14 and not d.val.paired
    assert d.split()["evaluation"] == "unpaired" and not d.split()["paired_eval"]


def test_sixteen_bit_keeps_its_precision(tmp_path):
    ramp = (np.linspace(0, 1, 64 * 64).reshape(64, 64) * 65535).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    assert len(np.unique(read_image(tmp_path / "r.png"))) > 1000


def test_a_heads_16_bit_slices_of_12_bit_values_are_scaled_as_its_volume_is(tmp_path):
    # Scanner integers under 4096 stored in 16 bits: over 65535 they would be nearly black, their masks empty.
    data = phantom_volume(tmp_path / "a.nii.gz")  # data[k] is display slice k (see tests/cyclegan/test_nifti.py)
    assert 0 < data.max() < 4096
    for domain, start in (("T1", 0), ("T2", 100)):  # other names in T2/: unpaired, each split the same way
        (tmp_path / domain).mkdir()
        for k, img in enumerate(data):
            png = img.astype(np.uint16) if domain == "T1" else np.round(img / data.max() * 255).astype(np.uint8)
            Image.fromarray(png).save(tmp_path / domain / f"slice_{start + k:03d}.png")
    [stack] = read_domain(tmp_path / "T1")  # scaled together, per head, not each slice by its own percentiles
    np.testing.assert_allclose(np.stack(stack.images), read_volume(tmp_path / "a.nii.gz").slices, atol=1e-6)
    # The head masks of the 16-bit T1 slices cover what those of the same head in 8 bits (T2/) cover.
    d = load_data(tmp_path, 32)
    t1, t2 = torch.cat([d.val.t1_head, d.test.t1_head]), torch.cat([d.val.t2_head, d.test.t2_head])
    assert t2.sum() > 0 and (t1 & t2).sum() / (t1 | t2).sum() > 0.9
    # A 16-bit slice read alone (as `cyclegan.translate` reads one) is scaled by its own percentiles.
    assert read_image(tmp_path / "T1" / f"slice_{len(data) // 2:03d}.png").max() == 1.0


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


def test_a_gap_parts_each_val_block_from_its_test_block():
    # Neighbouring slices are near copies: a test slice beside a val slice is scored on what chose the winner.
    for n in (10, 12, 23, 43, 46, 60, 200):
        labels = split_labels(n)
        for i in range(n - 1):
            assert {labels[i], labels[i + 1]} != {"val", "test"}, (n, i, labels)
        # The gap costs one training slice a segment, not held-out slices: the study's 43 keep 6 val and 6 test.
        if n == 43:
            assert (labels.count("val"), labels.count("test"), labels.count("train")) == (6, 6, 22)


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


def test_training_slices_are_each_slice_squared_in_order_on_several_threads_without_masks(folder):
    # Squared on the trial's threads into one array: each slice must land at its own index, scaled to [-1, 1]. The
    # training split carries no head masks (nothing scores it); val and test keep theirs.
    slices = read_data(folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        d = build_dataset(slices, 48)
    finally:
        torch.set_num_threads(threads)
    for domain, x in (("T1", d.train.t1), ("T2", d.train.t2)):
        expected = np.stack([to_square(img, 48) for img in slices.train[domain]])[:, None] * 2 - 1
        assert np.array_equal(x.numpy(), expected) and x.dtype == torch.float32
    assert d.train.t1_head is None and d.train.t2_head is None
    assert d.val.t1_head.shape == d.val.t1.shape and d.test.t2_head.dtype == torch.bool


@pytest.mark.parametrize("chunk", [3, 512])
def test_compact_training_slices_are_the_codes_the_feed_makes_of_the_floats(folder, monkeypatch, chunk):
    # A trial builds its training slices as compact codes, a chunk at a time: the same codes the feed would have
    # made of the whole float set (T1/ is 8-bit, T2/ 16-bit: the folder's codes are int16).
    slices = read_data(folder)
    monkeypatch.setattr(data, "TRAINING_CHUNK", chunk)
    floats, codes = build_dataset(slices, 40), build_dataset(slices, 40, for_trial=True)
    assert codes.train.t1.dtype == compact_dtype(slices.bits) == torch.int16
    for key in ("t1", "t2"):
        assert torch.equal(getattr(codes.train, key), compact(getattr(floats.train, key), torch.int16))
    assert torch.equal(codes.val.t1, floats.val.t1) and codes.val.t1.dtype == torch.float32  # held out: as read


def test_a_trial_holds_the_val_slices_it_scores_and_no_test_slice_but_names_the_whole_split(tmp_path):
    _write(tmp_path / "T1", 700)
    _write(tmp_path / "T2", 650, start=1000)
    slices = read_data(tmp_path)
    whole, trial = build_dataset(slices, 32), build_dataset(slices, 32, for_trial=True)
    assert len(whole.val.t1) > VAL_SLICES and len(whole.val.t2) > VAL_SLICES  # so that the subset is a subset
    scored = validation_subset(whole.val)
    for key in ("t1", "t2", "t1_head", "t2_head", "t1_names", "t2_names"):
        a, b = getattr(trial.val, key), getattr(scored, key)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, key
    assert validation_subset(trial.val) is trial.val  # what fit scores of it: all of it
    assert len(trial.test.t1) == len(trial.test.t2) == 0 and trial.test.t1.shape[1:] == whole.test.t1.shape[1:]
    assert trial.split() == whole.split() and len(trial.split()["test"]["T1"]) == len(whole.test.t1) > 0
    assert DataSize.of(trial) == DataSize.of(whole) == DataSize.of(slices)  # the data's size, not what is held


def test_synthetic_data_is_paired_on_val_and_test_and_deterministic():
    a, b = load_data("synthetic", 32, seed=0), load_data("synthetic", 32, seed=0)
    assert a.val.paired and a.test.paired and not a.train.paired and a.split()["evaluation"] == "paired"
    # val and test are drawn at the eval size whatever the resize; training at the resize.
    assert a.train.t1.shape[-1] == 32 and a.val.t1.shape[-1] == a.test.t2.shape[-1] == a.eval_size == 256
    assert torch.equal(a.train.t1, b.train.t1) and torch.equal(a.test.t2, b.test.t2)
    assert not torch.equal(a.train.t1, load_data("synthetic", 32, seed=1).train.t1)
    assert a.val.t1_names == a.val.t2_names
    # Training T1 and T2 come from different subjects: unpaired.
    assert set(a.train.t1_names).isdisjoint(a.train.t2_names)


def test_synthetic_training_slices_are_made_as_the_val_slices_a_model_is_scored_on():
    # A head drawn at the model's size has its noise and edges made at that scale: at 64 px its air was 6x as
    # noisy as a val slice brought to 64 px, so a model trained on one was scored on images of another kind.
    d = load_data("synthetic", 64, seed=0)
    val = resample(d.val.t1, 64)
    for train in (d.train.t1, d.train.t2):
        ratio = train[..., :6, :6].std().item() / val[..., :6, :6].std().item()  # the corners: air, noise only
        assert 0.7 < ratio < 1.4
        edge = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean().item()  # noqa: E731  partial volume, aliasing
        assert 0.8 < edge(train) / edge(val) < 1.25


@pytest.mark.parametrize("heads", [1, 3])
def test_synthetic_training_comes_from_several_heads_never_the_held_out_one(heads):
    d = synthetic_data(32, seed=1, heads=heads)
    train = d.subjects["train"]
    assert len(set(train["T1"])) == len(set(train["T2"])) == heads and set(train["T1"]).isdisjoint(train["T2"])
    assert d.subjects["val"]["T1"] == d.subjects["test"]["T2"] == ["phantom5"]  # the held-out head of seed 1
    assert "phantom5" not in train["T1"] + train["T2"]
    assert len(d.train.t1) == heads * split_labels(SYNTHETIC_SLICES).count("train")
    # More heads leave val and test as they were: the paired benchmark does not move.
    assert torch.equal(d.val.t2, synthetic_data(32, seed=1, heads=1).val.t2)
    # Different heads show different anatomy.
    per = len(d.train.t1) // heads
    assert heads == 1 or not torch.allclose(d.train.t1[:per], d.train.t1[per:2 * per], atol=0.2)


@pytest.mark.parametrize("case,match", [
    ("missing", "no such data folder"),
    ("no_t2", "T2: missing"),
    ("empty_t1", "T1: no slices"),
    ("not_image", "slice_005.png: not a readable image"),
    ("too_few", "at least 10 are needed"),
    ("one_pixel", "too small; expected at least 2x2"),
    ("one_domain_only", "T2: missing; a data folder must hold T1/ and T2/"),
    ("truncated", "slice_005.png: not a readable image \\(image file is truncated"),
    ("zero_by_zero", "slice_004.png: not a readable image"),
    ("bomb", "slice_006.png: not a readable image \\(Image size .* could be decompression bomb"),
    ("folder_named_png", "slice_007.png: not a readable image"),
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
    elif case == "one_domain_only":  # all slices put in T1/, none in T2/
        for p in (tmp_path / "T2").iterdir():
            p.rename(tmp_path / "T1" / f"t2_{p.name}")
        (tmp_path / "T2").rmdir()
    elif case == "truncated":
        (tmp_path / "T1" / "slice_005.png").write_bytes(truncated_png())
    elif case == "zero_by_zero":
        (tmp_path / "T2" / "slice_004.png").write_bytes(png_header_only(0, 0))
    elif case == "bomb":  # 10 billion pixels claimed in 60 bytes: refused before any is decoded
        (tmp_path / "T1" / "slice_006.png").write_bytes(png_header_only(100_000, 100_000))
    elif case == "folder_named_png":
        (tmp_path / "T2" / "slice_007.png").unlink()
        (tmp_path / "T2" / "slice_007.png").mkdir()
    with pytest.raises(DataError, match=match):
        load_data(root, 32)


def test_a_domain_of_mixed_sizes_bit_depths_and_colour_modes_loads(tmp_path):
    # Slices exported by different tools into one folder: 8- and 16-bit grey, palette, grey+alpha, RGB, RGBA and
    # 1-bit, portrait, landscape and square, from 2x2 up. All must load, each padded to a square and resized.
    rng = np.random.default_rng(0)
    sizes = [(2, 2), (181, 217), (217, 181), (64, 64), (31, 7), (256, 256), (3, 40)]
    modes = ["L", "I;16", "P", "LA", "RGB", "RGBA", "1"]
    for domain in ("T1", "T2"):
        (tmp_path / domain).mkdir()
        for i in range(14):
            w, h = sizes[i % len(sizes)]
            mode = modes[(i + (domain == "T2")) % len(modes)]
            grey = rng.uniform(0.2, 1.0, (h, w))
            if mode == "I;16":
                img = Image.fromarray((grey * 65535).astype(np.uint16))
            else:
                img = Image.fromarray((grey * 255).astype(np.uint8)).convert(mode)
            # Other names in T2/ than in T1/: unrelated slices, so an unpaired folder.
            img.save(tmp_path / domain / f"slice_{i + 100 * (domain == 'T2'):03d}.png")
    d = load_data(tmp_path, 32)
    assert not d.paired
    for part, size in ((d.train, 32), (d.val, 256), (d.test, 256)):
        for x in (part.t1, part.t2):
            assert x.shape[1:] == (1, size, size) and torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1
    n = sum(len(s.t1) for s in (d.train, d.val, d.test))
    assert n == sum(lab != "gap" for lab in split_labels(14))
    for path in (tmp_path / "T1").iterdir():  # every mode carries its picture, not a blank
        assert read_image(path).max() > 0.1, path.name
