"""The labelled picture grid: names beside the rows, above the columns, the pictures untouched."""

from __future__ import annotations

import numpy as np

from cyclegan.images import label_grid


def test_labels_go_in_margins_and_differ_with_the_names():
    image = np.full((3 * 32, 2 * 32), 0.5, dtype=np.float32)  # 3 rows, 2 columns of 32 px cells
    a = label_grid(image, ["A", "B", "C"], {0: ["x", "y"]})
    b = label_grid(image, ["A", "B", "Q"], {0: ["x", "y"]})
    top, left = a.shape[0] - image.shape[0], a.shape[1] - image.shape[1]
    assert top > 0 and left > 0 and a.shape == b.shape
    assert np.abs(a[top:, left:] - image).max() <= 0.5 / 255 + 1e-6  # the pictures, to the grey level
    assert not np.array_equal(a, b) and np.array_equal(a[: top + 2 * 32], b[: top + 2 * 32])  # only row C changed


def test_names_too_wide_for_a_cell_are_written_upwards_and_a_second_header_sits_above_its_row():
    image = np.zeros((2 * 32, 2 * 32), dtype=np.float32)
    short = label_grid(image, ["T1", "T2"], {0: ["a", "b"]})
    long = label_grid(image, ["T1", "T2"], {0: ["a_very_long_slice_name", "b"]})
    assert long.shape[0] > short.shape[0] and long.shape[1] == short.shape[1]
    two = label_grid(image, ["T1", "T2"], {0: ["a", "b"], 1: ["c", "d"]})
    band = two.shape[0] - short.shape[0]
    assert band > 0 and (two[32 + band: 32 + 2 * band, -64:] < 0.5).any()  # ink in the band above row 2
