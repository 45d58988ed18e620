"""Tests of the paired T1/T2 phantom: shapes, determinism, contrast physics, slice continuity, refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from cyclegan.phantom import BONE, CSF, FAT, GM, T1W_TE, T1W_TR, T2W_TE, T2W_TR, WM, make_phantom, spin_echo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(12, 128, seed=0)


@pytest.mark.parametrize(("n_slices", "size"), [(1, 8), (3, 32), (5, 64)])
def test_shapes_dtypes_ranges(n_slices: int, size: int) -> None:
    ph = make_phantom(n_slices, size, seed=1)
    for img in (ph.t1, ph.t2):
        assert img.shape == (n_slices, size, size) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0 and np.isfinite(img).all()
    assert ph.head.shape == (n_slices, size, size) and ph.head.dtype == np.bool_
    assert ph.labels.shape == (n_slices, size, size)
    assert ph.levels.shape == (n_slices,)
    assert np.all(np.diff(ph.levels) > 0) and 0.0 < ph.levels[0] and ph.levels[-1] < 1.0
    assert ph.head.any() and not ph.head.all()


def test_same_seed_is_bit_identical_other_seed_differs() -> None:
    a, b, c = make_phantom(4, 48, seed=7), make_phantom(4, 48, seed=7), make_phantom(4, 48, seed=8)
    for field in ("t1", "t2", "head", "levels", "labels"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    # Another seed is another head, not just other noise.
    assert (a.labels != c.labels).mean() > 0.02
    assert not np.array_equal(a.head, c.head)


def test_noiseless_signal_equation_orders_tissues() -> None:
    t1w, t2w = spin_echo(T1W_TR, T1W_TE), spin_echo(T2W_TR, T2W_TE)
    assert t1w[FAT] > t1w[WM] > t1w[GM] > t1w[CSF] > t1w[BONE]
    assert t2w[CSF] > t2w[GM] > t2w[WM]
    assert t1w.max() == pytest.approx(0.9) and t2w.max() == pytest.approx(0.9)


def test_contrast_ordering_measured_on_images(phantom) -> None:
    # Tissue interiors only: partial volume mixes the classes at their edges.
    def mean(img: np.ndarray, tissue: int) -> float:
        core = ndimage.binary_erosion(phantom.labels == tissue, structure=np.ones((1, 3, 3), bool))
        assert core.sum() > 100, tissue
        return float(img[core].mean())

    t1 = {k: mean(phantom.t1, k) for k in (FAT, WM, GM, CSF)}
    t2 = {k: mean(phantom.t2, k) for k in (CSF, GM, WM)}
    assert t1[FAT] > t1[WM] > t1[GM] > t1[CSF]
    assert t2[CSF] > t2[GM] > t2[WM]
    # The brightest tissue sits near the top of the range without being washed out by clipping.
    assert 0.8 < t1[FAT] < 1.0 and 0.8 < t2[CSF] < 1.0
    assert (phantom.t1 >= 1.0).mean() < 1e-3 and (phantom.t2 >= 1.0).mean() < 1e-3


def test_neighbouring_slices_are_near_copies() -> None:
    ph = make_phantom(32, 64, seed=2)
    for img in (ph.t1, ph.t2):
        near = np.abs(np.diff(img, axis=0)).mean()
        far = np.abs(img[:16] - img[16:]).mean()
        assert near < 0.5 * far, (near, far)
    near_labels = (ph.labels[1:] != ph.labels[:-1]).mean()
    far_labels = (ph.labels[:16] != ph.labels[16:]).mean()
    assert near_labels < 0.3 * far_labels


def test_ventricles_come_and_go_with_level() -> None:
    ph = make_phantom(24, 64, seed=3)
    c = (np.arange(64) + 0.5) / 64 * 2 - 1
    # Beside the midline (which the fissure occupies) and well inside the brain: only ventricles are CSF there.
    region = (np.abs(c)[None, :] > 0.04) & (np.abs(c)[None, :] < 0.14) & (np.abs(c)[:, None] < 0.2)
    ventricle_px = ((ph.labels == CSF) & region).sum(axis=(1, 2))
    assert ventricle_px[0] == 0 and ventricle_px[-1] == 0 and ventricle_px[len(ventricle_px) // 2] > 0


def test_head_mask_matches_signal(phantom) -> None:
    for img, tissue_signal in ((phantom.t1, spin_echo(T1W_TR, T1W_TE)), (phantom.t2, spin_echo(T2W_TR, T2W_TE))):
        # Half the scalp's signal marks the scalp's edge; the noise floor (~0.01) is far below it.
        bright = img > 0.5 * tissue_signal[FAT]
        filled = np.stack([ndimage.binary_fill_holes(s) for s in bright])  # the dark skull is inside the scalp ring
        iou = (filled & phantom.head).sum() / (filled | phantom.head).sum()
        assert iou > 0.98, iou
        outside = ~ndimage.binary_dilation(phantom.head, structure=np.ones((1, 5, 5), bool))
        assert bright[outside].mean() < 1e-4
        assert img[outside].mean() < 0.03  # air: Rayleigh noise only


@pytest.mark.parametrize(("n_slices", "size", "match"), [(0, 32, "n_slices"), (-3, 32, "n_slices"), (4, 7, "size")])
def test_refuses_bad_arguments(n_slices: int, size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_phantom(n_slices, size)


def test_cli_writes_pngs(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "cyclegan.phantom", "--out", str(tmp_path), "--n-slices", "6", "--size", "32"]
    subprocess.run([*cmd, "--count", "2"], cwd=REPO, check=True, capture_output=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1_00.png", "t1_05.png", "t2_00.png", "t2_05.png"]


def test_anatomy_is_not_mirror_symmetric() -> None:
    # The first phantom's heads and brains were left/right mirror images to within ~3% of their area; the
    # deformation, uneven cortex and asymmetric ventricles make each head its own.
    for seed in range(4):
        ph = make_phantom(12, 64, seed=seed)
        for mask in (ph.head, ph.labels >= CSF):
            mismatch = (mask ^ mask[:, :, ::-1]).sum() / mask.sum()
            assert mismatch > 0.05, (seed, mismatch)
