"""Tests of the real-anatomy paired benchmark: shared anatomy, tissue order per contrast, the CLI and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cyclegan.anatomy import simulate
from cyclegan.data import HEAD_THRESHOLD, head_mask, read_image
from cyclegan.phantom import CSF, GM, WM

REPO = Path(__file__).resolve().parents[2]
SUBSET = {"T1": ("slice_010", "slice_030", "slice_055"), "T2": ("slice_070", "slice_095", "slice_125")}


@pytest.fixture
def subset(study_data: Path, tmp_path: Path) -> Path:
    """A few of the study's slices, linked (not copied) into a data folder of their own."""
    for contrast, names in SUBSET.items():
        (tmp_path / "src" / contrast).mkdir(parents=True)
        for n in names:
            (tmp_path / "src" / contrast / f"{n}.png").symlink_to(study_data / contrast / f"{n}.png")
    return tmp_path / "src"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cyclegan.phantom", *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize("contrast", ["T1", "T2"])
def test_both_contrasts_share_the_source_anatomy_in_literature_order(subset: Path, contrast: str) -> None:
    for n in SUBSET[contrast]:
        image = read_image(subset / contrast / f"{n}.png")
        pair = simulate(image, contrast, np.random.default_rng(0))
        assert pair.t1.shape == pair.t2.shape == image.shape
        # Everything above the noise floor, filled: `head_mask` keeps only the largest component, and at the top
        # of the head the simulated dark skull cuts the scalp ring off a brain larger than it (slices 054, 055).
        h1, h2 = (ndimage.binary_fill_holes(img > HEAD_THRESHOLD) for img in (pair.t1, pair.t2))
        hs = head_mask(image)
        assert (h1 & h2).sum() / (h1 | h2).sum() > 0.95, n
        assert (h1 & hs).sum() / (h1 | hs).sum() > 0.95, n
        labels = pair.anatomy.labels
        assert all((labels == t).sum() > 200 for t in (CSF, GM, WM)), n
        t1 = {t: pair.t1[labels == t].mean() for t in (CSF, GM, WM)}
        t2 = {t: pair.t2[labels == t].mean() for t in (CSF, GM, WM)}
        assert t1[WM] > t1[GM] > t1[CSF], (n, t1)
        assert t2[CSF] > t2[GM] > t2[WM], (n, t2)
        # Soft fractions, not hard labels only: partial volume at tissue borders.
        soft = (pair.anatomy.fractions > 0.05) & (pair.anatomy.fractions < 0.95)
        assert soft.any(axis=0).mean() > 0.02
        assert np.allclose(pair.anatomy.fractions.sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.slow  # builds a folder from the study's slices in a subprocess
def test_cli_writes_a_paired_folder_deterministically(subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run("--from", str(subset), "--out", str(out), "--seed", "3")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (out / "T1").iterdir())
    assert names == sorted(p.name for p in (out / "T2").iterdir())
    assert names == sorted(f"{c}-{n}.png" for c, ns in SUBSET.items() for n in ns)
    for d in ("T1", "T2"):
        with Image.open(out / d / "T1-slice_010.png") as img:
            assert img.mode == "L" and img.size == Image.open(subset / "T1" / "slice_010.png").size
    record = json.loads((out / "phantom.json").read_text())
    assert record["seed"] == 3 and Path(record["source"]) == subset.resolve()
    assert [a["name"] for a in record["anatomies"]] == [f"{c}-{n}.png" for c, ns in SUBSET.items() for n in ns]
    assert {"csf", "gm", "wm"} <= set(record["tissues"])
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
    # A previous output may be replaced; the same seed gives the same bytes, another seed other noise.
    assert run("--from", str(subset), "--out", str(out), "--seed", "3").returncode == 0
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")} == first
    assert run("--from", str(subset), "--out", str(out), "--seed", "4").returncode == 0
    assert (out / "T1" / "T1-slice_010.png").read_bytes() != first[Path("T1/T1-slice_010.png")]


@pytest.mark.parametrize("layout", ["missing", "no_domains", "empty_domain", "unreadable"])
def test_refuses_a_bad_source_in_one_line(tmp_path: Path, layout: str) -> None:
    src = tmp_path / "src"
    if layout != "missing":
        (src / ("other" if layout == "no_domains" else "T1")).mkdir(parents=True)
    if layout == "unreadable":
        (src / "T1" / "slice_001.png").write_bytes(b"not a png")
    done = run("--from", str(src), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and str(src) in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_out_that_is_not_a_phantom(subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = run("--from", str(subset), "--out", str(out))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and str(out) in done.stderr, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
