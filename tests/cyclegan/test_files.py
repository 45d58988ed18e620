"""Data folders behind URIs (`cyclegan.files`): the parsing, and file:// read as s3:// would be (no network here).

    python -m pytest tests/cyclegan/test_files.py -q
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from cyclegan.data import DataError, Slices, build_dataset, load_data, read_data
from cyclegan.files import Uri, open_folder, parse_uri
from tests.cyclegan.test_data import _write
from tests.cyclegan.test_paired import paired_volumes


@pytest.mark.parametrize("text,uri", [
    ("data/slices", None),
    ("/data/slices", None),
    ("~/slices", None),
    ("synthetic", None),
    ("slices:v2", None),  # a colon in a folder's name does not make it a URI
    ("s3://bucket/slices/ixi", Uri("s3", "bucket/slices/ixi")),
    ("S3://bucket", Uri("s3", "bucket")),
    ("s3://bucket/x?region=eu-west-1", Uri("s3", "bucket/x?region=eu-west-1")),
    ("gs://bucket/slices", Uri("gs", "bucket/slices")),
    ("gcs://bucket/slices", Uri("gcs", "bucket/slices")),
    ("file:///data/slices", Uri("file", "/data/slices")),
])
def test_uris_and_paths_are_told_apart(text: str, uri: Uri | None) -> None:
    assert parse_uri(text) == uri


def test_a_uris_bucket_is_its_first_part() -> None:
    assert parse_uri("s3://bucket/a/b").bucket == "bucket"
    assert parse_uri("s3://bucket?region=x").bucket == "bucket"


@pytest.mark.parametrize("text,match", [
    ("http://example.org/slices", "http://example.org/slices: http:// is not a filesystem this can read; expected a "
                                  "folder, or an s3://, gs:// or file:// URI"),
    ("hdfs://name/slices", "hdfs:// is not a filesystem this can read"),
    ("s3://", "s3://: no bucket; expected s3://BUCKET/FOLDER"),
    ("s3:///slices", "no bucket"),
    ("gs://", "gs://: no bucket; expected gs://BUCKET/FOLDER"),
    ("file://host/slices", "a file:// URI takes an absolute path after it (file:///data/slices)"),
    ("file://", "a file:// URI takes an absolute path"),
])
def test_a_uri_that_cannot_be_read_is_refused_in_one_line(text: str, match: str) -> None:
    with pytest.raises(DataError) as e:
        parse_uri(text)
    assert match in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(DataError, match="no bucket|not a filesystem|absolute path"):
        read_data(text)  # before any filesystem is asked


def test_a_folder_behind_a_file_uri_lists_and_reads_what_the_folder_holds(tmp_path) -> None:
    _write(tmp_path / "T1", 3)
    folder = open_folder(f"file://{tmp_path}") / "T1"
    assert folder.is_dir() and str(folder) == f"file://{tmp_path}/T1" and folder.name == "T1"
    assert folder.entries() == {f"slice_{i:03d}.png": True for i in range(3)}
    assert folder.read("slice_001.png") == (tmp_path / "T1" / "slice_001.png").read_bytes()
    assert not (folder / "T2").is_dir()
    with pytest.raises(DataError, match=f"file://{tmp_path}/T1/gone.png: cannot be read"):
        folder.read("gone.png")


def _same(a: Slices, b: Slices) -> None:
    assert (a.paired, a.eval_size, a.names) == (b.paired, b.eval_size, b.names)
    for domain in a.train:
        for x, y in zip(a.train[domain], b.train[domain], strict=True):
            np.testing.assert_array_equal(x, y)
    for part in a.held_out:
        for domain in a.held_out[part]:
            for x, y in zip(a.held_out[part][domain], b.held_out[part][domain], strict=True):
                np.testing.assert_array_equal(x, y)


def test_a_png_folder_reads_the_same_through_a_file_uri_as_through_its_path(tmp_path) -> None:
    _write(tmp_path / "T1", 14, mode="L")
    _write(tmp_path / "T2", 12, mode="I;16", size=(24, 31), start=100)
    by_uri = read_data(f"file://{tmp_path}")
    _same(by_uri, read_data(tmp_path))
    assert by_uri.source == f"file://{tmp_path}"  # as typed, so that a report names it and an export reads it again
    d = load_data(f"file://{tmp_path}", 32)
    assert d.source == f"file://{tmp_path}" and d.train.t1.shape[-1] == 32


def test_volumes_read_the_same_through_a_file_uri_gzipped_or_not(tmp_path) -> None:
    root = paired_volumes(tmp_path / "data")
    plain = root / "T2" / "sub-00_T2w.nii"
    plain.write_bytes(gzip.decompress((root / "T2" / "sub-00_T2w.nii.gz").read_bytes()))
    (root / "T2" / "sub-00_T2w.nii.gz").unlink()  # one volume as .nii: read from its bytes as nibabel reads the file
    by_uri = read_data(f"file://{root}")
    assert by_uri.paired
    _same(by_uri, read_data(root))


def test_one_read_builds_every_resize_as_loading_anew_would(tmp_path) -> None:
    _write(tmp_path / "T1", 14)
    _write(tmp_path / "T2", 12, start=100)
    slices = read_data(tmp_path)
    assert slices.count == sum(len(ds) for p in slices.names.values() for ds in p.values()) > 0
    assert slices.nbytes > sum(img.nbytes for ds in slices.train.values() for img in ds) > 0
    for resize in (32, 64):
        built, loaded = build_dataset(slices, resize), load_data(tmp_path, resize)
        assert built.split() == loaded.split()
        for part in ("train", "val", "test"):
            for key in ("t1", "t2", "t1_head", "t2_head")[:2 if part == "train" else 4]:  # train has no masks
                assert torch.equal(getattr(getattr(built, part), key), getattr(getattr(loaded, part), key))
    assert build_dataset(slices, 64).val.t1.shape == build_dataset(slices, 32).val.t1.shape  # eval size: one


def test_a_missing_folder_behind_a_file_uri_is_named_as_typed(tmp_path) -> None:
    with pytest.raises(DataError, match=f"file://{tmp_path}/nowhere: no such data folder"):
        read_data(f"file://{tmp_path}/nowhere")
    _write(tmp_path / "T1", 12)
    with pytest.raises(DataError, match=f"file://{tmp_path}/T2: missing"):
        read_data(f"file://{tmp_path}")
