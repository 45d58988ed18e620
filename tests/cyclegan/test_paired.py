"""Paired folders (same PNG names, co-registered volumes): paired val/test, unpaired training, one eval size."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cyclegan.data import load_data, split_labels, subject_of
from cyclegan.evaluate import evaluate, translations
from cyclegan.networks import UNetGenerator
from cyclegan.phantom import make_phantom
from tests.cyclegan.test_cli import TINY, cli


def paired_pngs(root: Path, n: int = 30, size: int = 32) -> Path:
    """n phantom levels as T1/slice_XXX.png and T2/slice_XXX.png: one name, one anatomy in both contrasts."""
    ph = make_phantom(n, size, seed=0)
    for domain, stack in (("T1", ph.t1), ("T2", ph.t2)):
        (root / domain).mkdir(parents=True)
        for i, img in enumerate(stack):
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(root / domain / f"slice_{i:03d}.png")
    return root


def paired_volumes(root: Path, subjects: int = 4, n: int = 12, size: int = 24) -> Path:
    """Co-registered volumes: T1 and T2 of a subject are two intensity functions of one phantom's tissue labels."""
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    t1_lut, t2_lut = np.array([0, 900, 300, 150, 600, 800]), np.array([0, 700, 50, 1000, 650, 450])
    for k in range(subjects):
        labels = make_phantom(n, size, seed=k).labels.transpose(2, 1, 0)[::-1, ::-1]  # display -> RAS+ (x, y, z)
        for domain, lut in (("T1", t1_lut), ("T2", t2_lut)):
            (root / domain).mkdir(parents=True, exist_ok=True)
            nib.Nifti1Image(lut[labels].astype(np.int16), affine).to_filename(
                root / domain / f"sub-{k:02d}_{domain}w.nii.gz")
    return root


def test_a_paired_png_folder_gives_paired_val_and_test_and_training_from_disjoint_slices(tmp_path):
    d = load_data(paired_pngs(tmp_path), 32)
    assert d.paired and d.val.paired and d.test.paired and not d.train.paired
    split = d.split()
    assert split["evaluation"] == "paired" and split["paired_eval"] is True
    for part in (d.val, d.test):
        assert part.t1_names == part.t2_names and len(part.t1_names)
    train1, train2 = set(d.train.t1_names), set(d.train.t2_names)
    assert train1 and train2 and train1.isdisjoint(train2)
    held = set(d.val.t1_names) | set(d.test.t1_names)
    assert held.isdisjoint(train1 | train2)
    # One head: its training slices alternate between the contrasts in chunks, a slice left out between two,
    # so no T1 training slice has its neighbour (a near copy) among the T2 training slices.
    level = lambda name: int(name[6:9])  # noqa: E731
    t1_levels, t2_levels = {level(x) for x in train1}, {level(x) for x in train2}
    assert not any(i - 1 in t2_levels or i + 1 in t2_levels for i in t1_levels)
    assert len(t1_levels) + len(t2_levels) >= 0.8 * split_labels(30).count("train")  # most are still used
    # Val and test at the slices' own size, whatever the resize.
    assert d.eval_size == 32 and torch.equal(d.val.t2, load_data(tmp_path, 64).val.t2)


def test_other_names_or_sizes_on_each_side_leave_a_folder_unpaired_as_before(tmp_path):
    root = paired_pngs(tmp_path)
    (root / "T2" / "slice_029.png").rename(root / "T2" / "slice_030.png")
    d = load_data(root, 32)
    assert not d.paired and d.split()["evaluation"] == "unpaired"
    # As before: each domain split on its own, the same slices trained on in both.
    assert d.train.t1_names == tuple(n.replace("030", "029") for n in d.train.t2_names)
    (root / "T2" / "slice_030.png").rename(root / "T2" / "slice_029.png")
    assert load_data(root, 32).paired
    Image.fromarray(np.zeros((32, 30), np.uint8)).save(root / "T2" / "slice_005.png")  # one name, other sizes
    assert not load_data(root, 32).paired


@pytest.mark.slow  # trains in a subprocess
def test_paired_volumes_train_end_to_end_with_disjoint_training_subjects(tmp_path):
    root = paired_volumes(tmp_path / "data")
    out = tmp_path / "run"
    p = cli("cyclegan.train", "--data", str(root), *TINY, "--set", "epochs=1", "--set", "batch_size=4",
            "--out", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["paired"] is True
    split = json.loads((out / "split.json").read_text())
    assert split["evaluation"] == "paired" and split["eval_size"] == 24 and split["resize"] == 32
    subjects = {part: {d: {subject_of(n.split(":")[0]) for n in split[part][d]} for d in ("T1", "T2")}
                for part in ("train", "val", "test")}
    assert subjects["train"]["T1"] and subjects["train"]["T2"]
    assert subjects["train"]["T1"].isdisjoint(subjects["train"]["T2"])
    assert {d: sorted(s) for d, s in subjects["train"].items()} == split["subjects"]["train"]
    for part in ("val", "test"):
        assert subjects[part]["T1"] == subjects[part]["T2"]
        assert [n.replace("_T1w", "") for n in split[part]["T1"]] == [n.replace("_T2w", "") for n in split[part]["T2"]]
        assert subjects[part]["T1"].isdisjoint(subjects["train"]["T1"] | subjects["train"]["T2"])
    assert list((out / "tb").glob("events.out.tfevents.*"))  # the sample grid at eval size was written


def test_a_subject_whose_t2_affine_differs_leaves_the_folder_unpaired(tmp_path):
    root = paired_volumes(tmp_path)
    assert load_data(root, 32).paired
    path = root / "T2" / "sub-02_T2w.nii.gz"
    img = nib.load(path)
    shifted = img.affine.copy()
    shifted[0, 3] += 5.0  # the same grid 5 mm to the side: not co-registered
    nib.Nifti1Image(np.asarray(img.dataobj), shifted).to_filename(path)
    d = load_data(root, 32)
    assert not d.paired and d.split()["evaluation"] == "unpaired"


class Oracle(torch.nn.Module):
    """A 'generator' that answers each input slice with the truth stored for it."""

    def __init__(self, inputs: torch.Tensor, answers: torch.Tensor) -> None:
        super().__init__()
        self.inputs, self.answers = inputs, answers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        match = (x[:, None] == self.inputs[None]).flatten(2).all(-1)  # [batch, known]
        return self.answers[match.float().argmax(1)]


def test_a_perfect_generator_scores_one_against_the_truth_and_copying_the_input_does_not(tmp_path):
    test = load_data(paired_pngs(tmp_path), 32).test
    g, f = Oracle(test.t1, test.t2), Oracle(test.t2, test.t1)
    got = evaluate(g, f, test)
    for row in ("t1_t2", "t2_t1", "t1_t1", "t2_t2"):
        assert got[f"ssim_{row}"] == pytest.approx(1.0, abs=1e-6) and got[f"ssim_{row}_head"] == pytest.approx(1.0)
    identity = torch.nn.Identity()
    copied = evaluate(identity, identity, test)
    assert copied["ssim_t1_t1"] == pytest.approx(1.0) and copied["ssim_t1_t2"] < 0.9  # scored against T2, not T1


def test_models_of_any_resize_are_scored_at_the_eval_size_and_differ_only_by_the_resampling(tmp_path):
    d = load_data(paired_pngs(tmp_path, size=48), 32)
    assert d.eval_size == 48 and d.val.t1.shape[-1] == 48 and d.train.t1.shape[-1] == 32
    torch.manual_seed(0)
    g, f = UNetGenerator(5, 1, 8), UNetGenerator(5, 1, 8)
    for resize in (32, 64):
        outs = translations(g, f, d.val, resize=resize)
        assert all(v.shape == d.val.t1.shape for v in outs.values()), resize
        assert all(np.isfinite(v) for v in evaluate(g, f, d.val, resize=resize).values())
    identity = torch.nn.Identity()
    same = translations(identity, identity, d.val, resize=48)
    assert torch.equal(same["fake_t2"], d.val.t1) and torch.equal(same["rec_t2"], d.val.t2)
    small = translations(identity, identity, d.val, resize=24)
    down_up = F.interpolate(F.interpolate(d.val.t1, size=24, mode="bilinear", antialias=True), size=48,
                            mode="bilinear")
    torch.testing.assert_close(small["rec_t1"], down_up)
    assert 0.5 < evaluate(identity, identity, d.val, resize=24)["ssim_t1_t1"] < 0.999
    # A split's own resize is the default: the val of a load at 24 is the same slices, scored the same way.
    assert evaluate(identity, identity, load_data(tmp_path, 24).val) == evaluate(identity, identity, d.val, resize=24)
