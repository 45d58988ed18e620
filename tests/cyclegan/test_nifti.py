"""NIfTI volumes in and out: the axial axis from the affine, empty slices, scaling, the split by subject, refusals."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from cyclegan.data import DataError, load_data, split_labels, subject_of
from cyclegan.nifti import PERCENTILES, read_volume, write_volume
from cyclegan.phantom import make_phantom

# Array axis 0 runs to superior, axis 1 to posterior, axis 2 to the patient's left (codes S, P, L), with
# anisotropic voxels and a 10 degree tilt: the axial axis is the first one, not the usual last.
_TILT = np.deg2rad(10)
SPL = np.array([[0.0, 0.0, -0.9, 60.0],
                [0.0, -0.9 * np.cos(_TILT), 0.0, 40.0],
                [2.5, -0.9 * np.sin(_TILT), 0.0, -20.0],
                [0.0, 0.0, 0.0, 1.0]])
EMPTY_BELOW, EMPTY_ABOVE = 3, 2  # air-only slices around the head


def phantom_volume(path: Path, *, seed: int = 0, contrast: str = "t1", n: int = 14, size: int = 24,
                   affine: np.ndarray = SPL) -> np.ndarray:
    """Writes a phantom head as an int16 volume, slices along array axis 0; returns its display slices."""
    ph = make_phantom(n, size, seed=seed)
    head = getattr(ph, contrast)
    stack = np.concatenate([np.zeros((EMPTY_BELOW, size, size)), head, np.zeros((EMPTY_ABOVE, size, size))])
    data = np.round(stack * 1000).astype(np.int16)  # scanner-like integers
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(data, affine).to_filename(path)
    return data


def test_slices_come_along_the_axis_the_affine_calls_superior_facing_the_usual_way(tmp_path):
    data = phantom_volume(tmp_path / "a.nii.gz")
    vol = read_volume(tmp_path / "a.nii.gz")
    assert vol.axis == 0 and vol.slices.shape == data.shape
    # Empty slices are marked, and the head's slices are the phantom's own, anterior up, scaled by percentiles.
    assert vol.head.tolist() == [False] * EMPTY_BELOW + [True] * 14 + [False] * EMPTY_ABOVE
    low, high = np.percentile(data.astype(np.float32), PERCENTILES)
    assert (vol.low, vol.high) == pytest.approx((low, high))
    np.testing.assert_allclose(vol.slices, np.clip((data - low) / (high - low), 0, 1), atol=1e-6)
    assert vol.names[EMPTY_BELOW] == f"a.nii.gz:z{EMPTY_BELOW:03d}"

    # The same anatomy stored the common way round (x to the right, y to anterior, z up) reads the same.
    ras = np.flip(data, axis=(1, 2)).transpose(2, 1, 0)
    nib.Nifti1Image(ras, np.diag([0.9, 0.9, 2.5, 1.0])).to_filename(tmp_path / "b.nii")
    other = read_volume(tmp_path / "b.nii")
    assert other.axis == 2
    np.testing.assert_allclose(other.slices, vol.slices, atol=1e-6)
    # Flipped on disk (z down): slices still run bottom to top, and keep their on-disk index in their names.
    nib.Nifti1Image(ras[..., ::-1].copy(), np.diag([0.9, 0.9, -2.5, 1.0])).to_filename(tmp_path / "c.nii")
    flipped = read_volume(tmp_path / "c.nii")
    np.testing.assert_allclose(flipped.slices, vol.slices, atol=1e-6)
    assert flipped.names[0] == f"c.nii:z{data.shape[0] - 1:03d}"


def test_restore_and_write_give_back_the_input_layout_range_affine_and_header(tmp_path):
    data = phantom_volume(tmp_path / "a.nii.gz")
    vol = read_volume(tmp_path / "a.nii.gz")
    back = vol.restore(vol.slices)
    # Identity within the percentile range; the hottest 0.5% are clipped to the 99.5th percentile.
    inside = data <= vol.high
    np.testing.assert_allclose(back[inside], data[inside], atol=0.5)
    assert back.max() <= vol.high + 0.5
    # Empty slices come back as they were, whatever is passed for them.
    noise = np.random.default_rng(0).random(vol.slices.shape, dtype=np.float32)
    restored = vol.restore(noise)
    assert np.array_equal(restored[~vol.head], data[~vol.head])
    write_volume(vol, restored, tmp_path / "out.nii.gz")
    out = nib.load(tmp_path / "out.nii.gz")
    assert out.shape == data.shape and np.allclose(out.affine, SPL) and out.get_data_dtype() == np.int16
    assert data.min() <= out.get_fdata().min() and out.get_fdata().max() <= vol.high + 0.5


def test_whole_subjects_go_to_one_split_in_both_domains_mixed_with_png(tmp_path):
    for k in range(5):
        phantom_volume(tmp_path / "T1" / f"sub-{k:02d}_T1w.nii.gz", seed=k)
        phantom_volume(tmp_path / "T2" / f"sub-{k:02d}_T2w.nii.gz", seed=k, contrast="t2")
    for i in range(12):  # PNG slices of one more head, beside the volumes
        Image.fromarray(np.full((20, 16), 120, np.uint8)).save(tmp_path / "T1" / f"slice_{i:03d}.png")
    d = load_data(tmp_path, 32)
    where: dict[str, set[str]] = {}
    for part in ("train", "val", "test"):
        s = getattr(d, part)
        assert len(s.t1) and len(s.t2), part
        for name in s.t1_names + s.t2_names:
            subject = subject_of(name.split(":")[0]) if ":" in name else "png"
            where.setdefault(subject, set()).add(part)
    assert all(len(parts) == 1 for parts in where.values()), where  # no subject in two splits, either domain
    assert len(where) == 6 and not any(":z000" in n for n in d.split()["train"]["T1"])  # empty slices dropped
    assert sum(len(getattr(d, p).t1) for p in ("train", "val", "test")) == 12 + 5 * 14


def test_one_volume_per_domain_is_split_by_blocks_of_slices(tmp_path):
    phantom_volume(tmp_path / "T1" / "a_t1.nii.gz", n=30)
    phantom_volume(tmp_path / "T2" / "b_t2.nii", seed=1, contrast="t2", n=30)
    d = load_data(tmp_path, 32)
    labels = split_labels(30)
    expected = [f"a_t1.nii.gz:z{EMPTY_BELOW + i:03d}" for i, lab in enumerate(labels) if lab == "test"]
    assert list(d.test.t1_names) == expected and len(d.val.t2) == labels.count("val")


def _four_d(path: Path) -> None:
    nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)).to_filename(path)


def _empty(path: Path) -> None:
    nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)).to_filename(path)


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a volume at all" * 40)


def _truncated(path: Path) -> None:
    phantom_volume(path)
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:600]))


@pytest.mark.parametrize("make,match", [
    (_four_d, "a 4-D volume of shape (8, 8, 8, 3); expected one 3-D volume"),
    (_empty, "no head voxels"),
    (_garbage, "not a readable NIfTI volume"),
    (_truncated, "not a readable NIfTI volume"),
])
def test_bad_volumes_are_refused_in_one_line_naming_the_file(tmp_path, make, match):
    phantom_volume(tmp_path / "T1" / "good.nii.gz")
    phantom_volume(tmp_path / "T2" / "good.nii.gz", contrast="t2")
    make(tmp_path / "T2" / "bad.nii.gz")
    with pytest.raises(DataError) as e:
        load_data(tmp_path, 32)
    message = str(e.value)
    assert message.startswith(str(tmp_path / "T2" / "bad.nii.gz")) and match in message
    assert "\n" not in message


def test_a_single_volume_saved_with_a_time_axis_of_one_is_read_and_written_as_it_was(tmp_path):
    data = phantom_volume(tmp_path / "a.nii")[..., None]
    nib.Nifti1Image(data, SPL).to_filename(tmp_path / "a.nii")
    vol = read_volume(tmp_path / "a.nii")
    write_volume(vol, vol.restore(vol.slices), tmp_path / "b.nii")
    assert nib.load(tmp_path / "b.nii").shape == data.shape


def test_a_volume_through_an_identity_generator_comes_back_as_it_was(tmp_path):
    # Non-square slices, stored along the first axis: any slip in orientation, padding or scaling shows.
    import torch

    from cyclegan.translate import translate_volume

    data = phantom_volume(tmp_path / "a.nii.gz", size=24)[:, 3:-2, :].copy()  # 19 x 24 in-plane
    nib.Nifti1Image(data, SPL).to_filename(tmp_path / "a.nii.gz")
    identity = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.ones_(identity.weight)
    torch.nn.init.zeros_(identity.bias)
    assert translate_volume(identity, tmp_path / "a.nii.gz", 24, tmp_path / "b.nii.gz") == 14
    high = read_volume(tmp_path / "a.nii.gz").high
    out = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj)
    assert out.shape == data.shape and out.dtype == data.dtype
    np.testing.assert_allclose(out, np.minimum(data, np.round(high)), atol=1)
