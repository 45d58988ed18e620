"""The memory traces' counts, kept on disk: a machine traces an architecture once per version of the code.

`cyclegan.memory` counts a trial's bytes by running its train step and validation pass on the meta device, 0.1-1 s
for each new architecture and several seconds for the first in a process (imports, every op's first meta kernel):
eight fresh trial processes at once took 6.4-8.3 s each on an H200 node (docs/benchmarks.md). A search counts each
trial twice, in the driver for its GPU share and in the trial for how its data is placed, and the next search counts
the same architectures again. A count depends only on its arguments and the code, so each is kept in one JSON file
per version of torch and of this package (`version()`), which every process on the machine reads and adds to.

Where: `$MRI_CYCLEGAN_CACHE` if set (`off`: nothing is kept or read), else `$XDG_CACHE_HOME/mri-cyclegan-search`,
else `~/.cache/mri-cyclegan-search`. A folder that cannot be written only means counting again; two processes that
add at once may lose one count, which the next process that needs it makes again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CACHE_ENV = "MRI_CYCLEGAN_CACHE"
OFF = "off"
_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def version() -> str:
    """A digest of torch's version and of every source file of this package: a change to either is a new file."""
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(_PACKAGE.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def store_path() -> Path | None:
    """The file this process reads and adds counts to, or None where keeping them is off."""
    folder = os.environ.get(CACHE_ENV)
    if folder == OFF:
        return None
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "mri-cyclegan-search"
    return Path(folder) / f"memory-traces-{version()}.json"


_known: dict[str, Any] = {}  # what this process has read or counted, by key


def _read(path: Path) -> dict[str, Any]:
    try:
        counts = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return counts if isinstance(counts, dict) else {}


def _add(path: Path, key: str, value: Any) -> None:
    """Adds one count to the file, written whole under a temporary name and renamed over it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        counts = {**_read(path), key: value}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".memory-traces-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(counts, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full disk: the count is made again next time


def _is_count(value: Any) -> bool:
    """An int, or a list of ints (a tuple as JSON keeps it), not a bool."""
    ints = value if isinstance(value, list) and value else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) for v in ints)


def stored(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Keeps `trace`'s results (ints, or tuples of ints) in the store, by `name` and the repr of its arguments."""
    def decorate(trace: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(trace)
        def run(*args: Any) -> Any:
            path = store_path()
            if path is None:
                return trace(*args)
            key = f"{name}{args!r}"
            if key not in _known:
                _known.update(_read(path))  # another process may have counted it since this one last looked
            value = _known.get(key)
            if _is_count(value):
                return tuple(value) if isinstance(value, list) else value
            value = trace(*args)  # not there, or not a count (a file edited or damaged): counted again
            _known[key] = value
            _add(path, key, value)
            return value
        return run
    return decorate
