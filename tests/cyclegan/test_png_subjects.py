"""PNG slices of several subjects in one folder: each subject a head, never interleaved with the others."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cyclegan.data import load_data, png_subject, split_labels
from cyclegan.phantom import make_phantom

PARTS = ("train", "val", "test")


def write_subjects(root: Path, subjects: int, n: int, *, t2_names: str = "{s}_T2w_slice_{i:03d}.png",
                   size: int = 32) -> Path:
    """Phantom heads as PNG slices, all subjects numbering their slices from 0 (so a sort by number interleaves)."""
    for k in range(subjects):
        ph = make_phantom(n, size, seed=k)
        for domain, stack, pattern in (("T1", ph.t1, "{s}_slice_{i:03d}.png"), ("T2", ph.t2, t2_names)):
            (root / domain).mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(stack):
                name = pattern.format(s=f"sub-{k + 1:02d}", i=i)
                Image.fromarray(np.round(img * 255).astype(np.uint8)).save(root / domain / name)
    return root


def where(d) -> dict[tuple[str, str], set[str]]:
    """(domain, subject) -> the parts its slices went to."""
    out: dict[tuple[str, str], set[str]] = {}
    for part in PARTS:
        s = getattr(d, part)
        for domain, names in (("T1", s.t1_names), ("T2", s.t2_names)):
            for name in names:
                out.setdefault((domain, png_subject(name)), set()).add(part)
    return out


@pytest.mark.parametrize("name,subject", [
    ("sub-01_slice_012.png", "sub-01"),
    ("sub-01_T1w_slice_012.png", "sub-01"),
    ("sub-A7_acq-fast_T2w_012.png", "sub-A7"),
    ("IXI002_slice_050.png", "IXI002"),
    ("IXI002-Guys-0828-T1_slice_050.png", "IXI002-Guys-0828"),
    ("patient7_Slice12.png", "patient7"),
    ("slice_050.png", None),
    ("T1_slice_050.png", None),
    ("Image #10.png", None),
    ("brain_050.png", None),
])
def test_the_subject_a_png_name_carries(name, subject):
    assert png_subject(name) == subject


def test_subjects_of_a_png_folder_go_whole_to_one_split_the_same_in_both_contrasts(tmp_path):
    d = load_data(write_subjects(tmp_path, subjects=6, n=12), 32)
    assert not d.paired
    parts = where(d)
    assert {subject for _, subject in parts} == {f"sub-{k:02d}" for k in range(1, 7)}
    assert all(len(p) == 1 for p in parts.values()), parts  # a subject is never split across train/val/test
    for k in range(1, 7):  # ... and is in the same part in T1 and in T2
        assert parts[("T1", f"sub-{k:02d}")] == parts[("T2", f"sub-{k:02d}")]
    assert all(len(getattr(d, p).t1) for p in PARTS)
    assert d.split()["subjects"]["test"]["T1"] == sorted(s for (dom, s), p in parts.items()
                                                          if dom == "T1" and p == {"test"})
    assert sum(len(getattr(d, p).t1) for p in PARTS) == 6 * 12  # whole subjects: no slice is left out as a gap


def test_two_subjects_are_split_by_blocks_of_each_ones_own_neighbours(tmp_path):
    # Too few subjects to hold whole ones out: blocks of slices, as for one head, but a subject's slices stay
    # in their own order, so no held-out slice has its neighbour (the same subject, next level) in train.
    d = load_data(write_subjects(tmp_path, subjects=2, n=15), 32)
    for domain in ("T1", "T2"):
        part_of = {name: part for part in PARTS for name in getattr(getattr(d, part), f"{domain.lower()}_names")}
        level = {name: (png_subject(name), int(re.findall(r"\d+", name)[-1])) for name in part_of}
        by_level = {v: part_of[name] for name, v in level.items()}
        held = [v for name, v in level.items() if part_of[name] in ("val", "test")]
        assert held
        for subject, i in held:
            assert "train" not in {by_level.get((subject, i - 1)), by_level.get((subject, i + 1))}, (subject, i)
        # The two heads one after the other: the labels of 30 slices, sub-01's then sub-02's.
        order = sorted(level, key=level.get)
        assert [part_of[name] for name in order] == [
            lab for lab in split_labels(30) if lab != "gap"]


def test_a_paired_png_folder_of_subjects_holds_out_whole_subjects_and_trains_on_disjoint_heads(tmp_path):
    d = load_data(write_subjects(tmp_path, subjects=5, n=12, t2_names="{s}_slice_{i:03d}.png"), 32)
    assert d.paired
    parts = where(d)
    assert all(len(p) == 1 for p in parts.values()), parts
    held = {s for (_, s), p in parts.items() if p & {"val", "test"}}
    train = {dom: {s for (dd, s), p in parts.items() if dd == dom and p == {"train"}} for dom in ("T1", "T2")}
    assert held and train["T1"] and train["T2"]
    assert train["T1"].isdisjoint(train["T2"]) and held.isdisjoint(train["T1"] | train["T2"])
    for part in (d.val, d.test):
        assert part.t1_names == part.t2_names and len(part.t1_names)


def test_the_study_folder_is_still_one_head_a_domain_split_by_blocks(study_data):
    d = load_data(study_data, 32)
    assert d.split()["subjects"]["train"] == {"T1": ["T1 PNG slices"], "T2": ["T2 PNG slices"]}
    for domain in ("T1", "T2"):
        files = sorted((study_data / domain).glob("*.png"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
        labels = split_labels(len(files))
        for part in PARTS:
            expected = [p.name for p, lab in zip(files, labels) if lab == part]
            assert list(getattr(getattr(d, part), f"{domain.lower()}_names")) == expected, (domain, part)
