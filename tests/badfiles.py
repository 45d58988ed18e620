"""Bad input for the tests: damaged files, made the way real ones get damaged, and --set strings."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from cyclegan.config import FIELD_NAMES


def slice_folder(folder: Path, n: int = 12) -> Path:
    """A small valid data folder: `n` grey PNG slices in each of T1/ and T2/."""
    for domain in ("T1", "T2"):
        (folder / domain).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (24, 20), 40 + 10 * i).save(folder / domain / f"s{i:02d}.png")
    return folder


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


# What a user may type after --set: values that YAML reads as something other than plain text, or fails on
# (numbers in every spelling, an impossible date, tags, anchors, flow collections, deep nesting, ints too long
# for Python to print), any text, and keys that are no knob.
TRICKY_VALUES = ["1", "-1", "0", "1.5", "1e-4", "1e400", "-1e400", ".nan", "nan", ".inf", "-.inf", "0x1F", "0o17",
                 "1_000", "true", "no", "null", "~", "", " ", "2024-01-01", "2024-13-45", "12:30:00", "[1, 2]",
                 "{a: 1}", "[", "{", "'", '"', ": x", "- x", "&a 1", "*a", "!!python/object/apply:os.system ['true']",
                 "!!binary aGk=", "[" * 2000, "9" * 5000, "0x" + "f" * 5000, "1" + "0" * 400, "4294967296", "lsgan",
                 "bce", "resize"]
_set_values = st.one_of(st.sampled_from(TRICKY_VALUES), st.text(max_size=12), st.integers().map(str),
                        st.floats(allow_nan=True, allow_infinity=True).map(repr))
set_items = st.one_of(
    st.tuples(st.sampled_from(FIELD_NAMES), st.sampled_from(["=", "==", " = ", ":"]), _set_values).map("".join),
    st.tuples(st.text(max_size=8), st.just("="), _set_values).map("".join),
    st.text(max_size=20),
)
