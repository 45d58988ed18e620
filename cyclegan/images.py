"""Small image helpers shared by TensorBoard samples, translation and reports."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Tiles rows of [N, 1, S, S] images in [-1, 1] into one [1, rows*S, N*S] image in [0, 1], on the host."""
    return tile(rows).float().cpu()


def tile(rows: list[torch.Tensor]) -> torch.Tensor:
    """`grid` on the rows' own device, without a host sync."""
    lines = [torch.cat(list(r.float()), dim=-1) for r in rows]
    return ((torch.cat(lines, dim=-2) + 1) / 2).clamp(0, 1)


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """An image in [0, 1] as 8-bit grey levels, rounded as `png_bytes` rounds them."""
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8)


def save_png(image: np.ndarray, path: Path, bits: int = 8) -> None:
    """Writes an [H, W] array in [0, 1] as an 8- or 16-bit grey PNG."""
    image = np.clip(image, 0.0, 1.0)
    if bits == 16:
        Image.fromarray((image * 65535 + 0.5).astype(np.uint16)).save(path)
    else:
        Image.fromarray((image * 255 + 0.5).astype(np.uint8), mode="L").save(path)


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    """An [H, W] array in [0, 1] (or already uint8 grey levels) as the bytes of an 8-bit grey PNG; level 1
    compresses several times faster than PIL's default 6, for files a few percent larger."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image, mode="L").save(out, format="PNG", compress_level=compress_level)
    return out.getvalue()
