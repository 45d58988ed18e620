"""Small image helpers shared by TensorBoard samples, translation and reports."""

from __future__ import annotations

import io
import math
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


def label_grid(image: np.ndarray, rows: list[str], columns: dict[int, list[str]]) -> np.ndarray:
    """A grid of equal cells (from `grid`, [H, W] in [0, 1]) with its rows named in a left margin and its columns
    named in header bands: `columns[i]` names the columns above row i (e.g. T1 slices above row 0, T2 slices above
    row 3 where they are other slices). Names too wide for a cell are written upwards. Returns [H', W'] in [0, 1]."""
    from PIL import ImageDraw, ImageFont

    height, width = image.shape
    cell_h = height // len(rows)
    n_cols = max(len(names) for names in columns.values())
    cell_w = width // n_cols
    font = ImageFont.load_default(size=max(10, min(cell_h, cell_w) // 8))
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    text_w = lambda s: int(math.ceil(measure.textlength(s, font=font)))  # noqa: E731
    pad = max(2, font.size // 3)
    line_h = font.size + 2 * pad
    upright = all(text_w(s) + 2 * pad <= cell_w for names in columns.values() for s in names)
    band = line_h if upright else max(text_w(s) for names in columns.values() for s in names) + 2 * pad
    left = max(text_w(s) for s in rows) + 2 * pad
    bands = sorted(columns)
    out = Image.new("L", (left + width, height + band * len(bands)), 255)
    draw = ImageDraw.Draw(out)
    y = 0
    for i, label in enumerate(rows):
        if i in columns:
            for j, name in enumerate(columns[i]):
                x = left + j * cell_w
                if upright:
                    draw.text((x + (cell_w - text_w(name)) / 2, y + pad), name, fill=0, font=font)
                else:  # drawn across, then turned a quarter upwards into the band
                    strip = Image.new("L", (band, line_h), 255)
                    ImageDraw.Draw(strip).text((pad, pad), name, fill=0, font=font)
                    out.paste(strip.rotate(90, expand=True), (x + (cell_w - line_h) // 2, y))
            y += band
        tile_ = Image.fromarray((np.clip(image[i * cell_h:(i + 1) * cell_h], 0, 1) * 255 + 0.5).astype(np.uint8))
        out.paste(tile_, (left, y))
        draw.text((pad, y + (cell_h - font.size) / 2), label, fill=0, font=font)
        y += cell_h
    return np.asarray(out, dtype=np.float32) / 255
