"""What `cyclegan.data` and `cyclegan.nifti` share, kept below both so that neither imports the other.

`cyclegan.data` re-exports these names; import them from there.
"""

from __future__ import annotations

import numpy as np

# Intensity above which a pixel of a [0, 1] slice belongs to the head, not the black background.
HEAD_THRESHOLD = 0.05


class DataError(ValueError):
    """Data that cannot be used; the message names the file or folder and what was expected."""


# Of all values of a NIfTI volume, or of a head's 16-bit PNG slices: mapped to 0 and 1 (`robust_scale`).
PERCENTILES = (0.5, 99.5)


def robust_range(values: np.ndarray) -> tuple[float, float]:
    """The PERCENTILES of `values`: the intensities mapped to 0 and 1, so a few hot pixels do not squash the rest."""
    low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    return low, high


def robust_scale(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """`array` mapped from [low, high] to [0, 1], clipped; a flat range (a blank slice) spans one unit."""
    return np.clip((array - low) / (high - low if high > low else 1.0), 0.0, 1.0).astype(np.float32)
