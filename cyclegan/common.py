"""What `cyclegan.data` and `cyclegan.nifti` share, kept below both so that neither imports the other.

`cyclegan.data` re-exports both names; import them from there.
"""

from __future__ import annotations

# Intensity above which a pixel of a [0, 1] slice belongs to the head, not the black background.
HEAD_THRESHOLD = 0.05


class DataError(ValueError):
    """Data that cannot be used; the message names the file or folder and what was expected."""
