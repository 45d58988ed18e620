"""NIfTI volumes as axial slices, and back: what `cyclegan.data` trains on and `cyclegan.translate` writes.

    vol = read_volume(Path("T1/sub-01_T1w.nii.gz"))   # slices in [0, 1], which show the head, how to go back
    write_volume(vol, vol.restore(translated), Path("out/sub-01_T1w.nii.gz"))

A volume is cut into axial slices along the array axis that its affine points closest to superior-inferior
(`nibabel.orientations.io_orientation`), whatever the axis order on disk. Each slice is shown as radiologists
look at it: anterior at the top, the patient's right on the left, so slices of any volume (and PNG slices
exported the usual way) face the same way. In-plane voxels are taken as square, as PNG pixels are; the
translation goes back pixel for pixel, so the geometry of a written volume is exactly the input's.

Intensities are scaled per volume by robust percentiles: the 0.5th percentile of all voxels maps to 0 and the
99.5th to 1, clipped, so a few hot voxels (vessels, artefacts) do not squash the tissue's contrast (a head's
16-bit PNG slices are scaled the same way, `cyclegan.data.robust_scale`). A slice
is empty (no head, only air) when fewer than 1% of its voxels are above `HEAD_THRESHOLD` on that scale;
empty slices are not trained on, and `restore` gives them back exactly as they were read.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from nibabel.spatialimages import HeaderDataError

from cyclegan.common import HEAD_THRESHOLD, PERCENTILES, DataError, robust_range, robust_scale

NIFTI_SUFFIXES = (".nii", ".nii.gz")
EMPTY_SLICE_FRACTION = 0.01  # a slice with fewer head voxels than this share of its voxels shows no head
_RAS = axcodes2ornt(("R", "A", "S"))
# Reading a damaged file fails in any of these, depending on where the damage is (header, gzip stream, data).
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, TypeError, zlib.error, struct.error,
                MemoryError)
# sizeof_hdr, a NIfTI file's first 4 bytes (in either byte order): which of the two formats the bytes hold.
_NIFTI2_HEADER_SIZE = 540


def is_nifti(path: Path | str) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def stem(name: str) -> str:
    """The file name without .nii or .nii.gz."""
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)


@dataclass(frozen=True)
class Volume:
    """One 3-D volume read as axial slices.

    `slices[k]` is the k-th slice from inferior to superior, in display orientation (anterior up, patient's
    right on the left), scaled to [0, 1]; `head[k]` says whether it shows the head. `index[k]` is that slice's
    index along `axis` of the array on disk, which names it: `sub-01.nii.gz:z042` is `data[..., 42]` when
    `axis` is 2.
    """

    path: Path
    image: nib.spatialimages.SpatialImage  # as loaded: its affine, header and on-disk dtype are written back
    data: np.ndarray  # float32, the array on disk with its scaling applied (the values `restore` maps back to)
    slices: np.ndarray  # float32 [n, rows, cols] in [0, 1]
    head: np.ndarray  # bool [n]
    index: np.ndarray  # int [n]
    axis: int
    low: float  # the intensity mapped to 0 ...
    high: float  # ... and to 1

    @property
    def names(self) -> list[str]:
        return [f"{self.path.name}:z{i:03d}" for i in self.index]

    def restore(self, slices: np.ndarray) -> np.ndarray:
        """Maps display slices in [0, 1] (all n of them) back to the on-disk array and intensity range.

        Empty slices are taken from the input as they were, whatever `slices` holds there.
        """
        if slices.shape != self.slices.shape:
            raise ValueError(f"expected slices of shape {self.slices.shape}, got {slices.shape}")
        values = self.low + np.clip(slices, 0.0, 1.0).astype(np.float32) * (self.high - self.low)
        out = _from_display(values, io_orientation(self.image.affine))
        empty = np.zeros(self.data.shape[self.axis], dtype=bool)
        empty[self.index[~self.head]] = True
        where = [slice(None)] * 3
        where[self.axis] = empty
        out[tuple(where)] = self.data[tuple(where)]
        return out


def read_volume(path: Path | str, raw: bytes | None = None) -> Volume:
    """Reads a .nii or .nii.gz file; raises DataError (naming the file) for a 4-D, empty or unreadable one.

    With `raw`, the file's bytes (read through `cyclegan.files`, from a folder or a URI), `path` only names it.
    """
    where, path = str(path), Path(path)
    try:
        image = nib.load(path) if raw is None else _from_bytes(raw)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except _READ_ERRORS as e:
        raise DataError(f"{where}: not a readable NIfTI volume ({_one_line(e)})") from None
    if not isinstance(image, nib.spatialimages.SpatialImage) or image.affine is None:
        raise DataError(f"{where}: not a NIfTI volume with an affine")
    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:  # (x, y, z, 1): one volume saved with a time axis
        data = data[..., 0]
    if data.ndim != 3:
        hint = " (split a series into its volumes first, e.g. with fslsplit)" if data.ndim > 3 else ""
        raise DataError(f"{where}: a {data.ndim}-D volume of shape {shape}; expected one 3-D volume{hint}")
    ornt = io_orientation(image.affine)
    if np.isnan(ornt).any():
        raise DataError(f"{where}: the affine {np.round(image.affine, 3).tolist()} is degenerate; expected one that "
                        "maps the three array axes to three directions")
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # the axis closest to superior-inferior (RAS+ axis 2)
    if min(s for i, s in enumerate(data.shape) if i != axis) < 2:
        raise DataError(f"{where}: slices of shape {shape} are too small; expected at least 2x2 voxels in-plane")
    finite = np.isfinite(data)
    if not finite.any():
        raise DataError(f"{where}: no head voxels (no finite value)")
    # NaN outside a brain mask, as registration tools write, is background; `restore` gives back the original.
    filled = data if finite.all() else np.where(finite, data, data[finite].min())
    low, high = robust_range(filled)
    if not high > low:
        raise DataError(f"{where}: no head voxels (the {PERCENTILES[0]}th and {PERCENTILES[1]}th percentiles are "
                        f"both {low:g}); expected a volume showing a head")
    slices = robust_scale(_to_display(filled, ornt), low, high)
    head = (slices > HEAD_THRESHOLD).mean(axis=(1, 2)) >= EMPTY_SLICE_FRACTION
    if not head.any():
        raise DataError(f"{where}: no head voxels (no slice has {EMPTY_SLICE_FRACTION:.0%} of its voxels above "
                        f"{HEAD_THRESHOLD:g} of the intensity range)")
    n = data.shape[axis]
    index = np.arange(n) if ornt[axis, 1] > 0 else np.arange(n)[::-1]
    return Volume(path, image, data, slices, head, index, axis, low, high)


def _from_bytes(raw: bytes) -> nib.Nifti1Image:
    """A .nii or .nii.gz file's bytes as nibabel reads the file (gzip is known by its magic number, not a name)."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    nifti2 = _NIFTI2_HEADER_SIZE in (int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big"))
    return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(raw)


def write_volume(vol: Volume, data: np.ndarray, out: Path) -> None:
    """Writes `data` (on-disk layout, as `vol.restore` returns it) with the input's affine and header."""
    dtype = vol.image.get_data_dtype()
    slope, inter = (getattr(vol.image.dataobj, k, None) for k in ("slope", "inter"))
    if np.issubdtype(dtype, np.integer) and slope in (1, None) and inter in (0, None):
        # Stored as plain integers: round to them, rather than letting nibabel add a scale factor.
        info = np.iinfo(dtype)
        data = np.clip(np.round(data), info.min, info.max).astype(dtype)
    data = data.reshape(vol.image.shape)  # puts back a trailing time axis of length 1
    type(vol.image)(data, vol.image.affine, vol.image.header).to_filename(out)


def _to_display(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    # RAS+ array [x (to the right), y (to anterior), z (to superior)] -> [z, rows from anterior, cols from right].
    ras = apply_orientation(data, ornt)
    return np.ascontiguousarray(ras[::-1, ::-1, :].transpose(2, 1, 0))


def _from_display(slices: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    ras = slices.transpose(2, 1, 0)[::-1, ::-1, :]
    return np.ascontiguousarray(apply_orientation(ras, ornt_transform(_RAS, ornt)))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
