"""Damaged files for the bad-input tests, made the way real ones get damaged."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels and whose data is empty: what a broken writer or a
    hostile file looks like. PIL itself refuses to write a 0x0 image, so the chunks are made by hand."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def truncated_png(size: tuple[int, int] = (40, 40)) -> bytes:
    """The first half of a valid PNG, as a copy cut short leaves it."""
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random(size) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]
