"""Where a data folder's files come from: a local folder, or an s3://, gs:// or file:// URI, through `pyarrow.fs`.

    folder = open_folder("s3://bucket/slices")        # a bad URI is refused in one line (DataError)
    t1 = folder / "T1"
    raw = t1.read("slice_010.png")                   # the file's bytes, decoded by the caller

A local folder is read through pyarrow's local filesystem too, so a plain path, a file:// URI and s3:// run the
same listing and reading code; only the filesystem under it differs. Cloud credentials and regions are pyarrow's
(AWS_* environment variables, ~/.aws, a query such as `s3://bucket/x?region=eu-west-1`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cyclegan.common import DataError

if TYPE_CHECKING:
    import pyarrow.fs

SCHEMES = ("s3", "gs", "gcs", "file")
EXPECTED = "expected a folder, or an s3://, gs:// or file:// URI"
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)


@dataclass(frozen=True)
class Uri:
    """A data URI taken apart: its scheme (lower case) and what follows `scheme://` (bucket and key, or path)."""

    scheme: str
    rest: str

    @property
    def bucket(self) -> str:
        return self.rest.split("/", 1)[0].split("?", 1)[0]


def parse_uri(text: str) -> Uri | None:
    """`text` as a data URI, or None where it is a local path; a URI this project cannot read raises DataError.

    s3:// and gs:// (or gcs://) need a bucket; file:// an absolute path (file:///data/slices), since a host in
    it would name another machine.
    """
    found = _URI.fullmatch(text)
    if found is None:
        return None
    uri = Uri(found.group(1).lower(), found.group(2))
    if uri.scheme not in SCHEMES:
        raise DataError(f"{text}: {uri.scheme}:// is not a filesystem this can read; {EXPECTED}")
    if uri.scheme == "file":
        if not uri.rest.startswith("/"):
            raise DataError(f"{text}: a file:// URI takes an absolute path after it (file:///data/slices)")
    elif not uri.bucket:
        raise DataError(f"{text}: no bucket; expected {uri.scheme}://BUCKET/FOLDER")
    return uri


@dataclass(frozen=True)
class Folder:
    """A folder on a filesystem: its files' names and bytes. `shown` names it in messages, as the user wrote it."""

    fs: pyarrow.fs.FileSystem
    path: str
    shown: str

    def __truediv__(self, name: str) -> Folder:
        return Folder(self.fs, f"{self.path.rstrip('/')}/{name}", self.where(name))

    def __str__(self) -> str:
        return self.shown

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def where(self, name: str) -> str:
        return f"{self.shown.rstrip('/')}/{name}"

    def is_dir(self) -> bool:
        import pyarrow.fs

        try:
            return self.fs.get_file_info(self.path).type == pyarrow.fs.FileType.Directory
        except OSError as e:  # a bucket that does not exist or that these credentials may not read
            raise DataError(f"{self.shown}: cannot be read ({_one_line(e)})") from None

    def entries(self) -> dict[str, bool]:
        """What the folder holds (not what folders below it hold), each name with whether it is a regular file."""
        import pyarrow.fs

        try:
            infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path))
        except OSError as e:
            raise DataError(f"{self.shown}: cannot be listed ({_one_line(e)})") from None
        return {i.base_name: i.type == pyarrow.fs.FileType.File for i in infos}

    def read(self, name: str) -> bytes:
        try:
            # As stored: pyarrow would otherwise gunzip a .gz by its name, and fail on one that is not gzip.
            with self.fs.open_input_stream(f"{self.path.rstrip('/')}/{name}", compression=None) as f:
                return f.readall()
        except OSError as e:
            raise DataError(f"{self.where(name)}: cannot be read ({_one_line(e)})") from None


def open_folder(source: str | Path) -> Folder:
    """A local folder (`~` expanded) or a URI as a `Folder`; a URI that cannot be opened raises DataError.

    Opening an s3:// URI asks the bucket's region, so a bucket that does not exist is refused here.
    """
    import pyarrow.fs

    text = str(source)
    uri = parse_uri(text)
    if uri is None:
        path = Path(text).expanduser()
        return Folder(pyarrow.fs.LocalFileSystem(), str(path.resolve()), str(path))
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(text)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{text}: cannot be opened ({_one_line(e)}); {EXPECTED}") from None
    return Folder(fs, path, f"{uri.scheme}://{path}")


def _one_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
