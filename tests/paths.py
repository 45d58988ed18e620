"""Where the tests' child processes find the project: the repository first, then whatever the environment adds."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pythonpath(root: Path = ROOT) -> str:
    """PYTHONPATH for a child process: the checkout ahead of the caller's own PYTHONPATH (which may hold the
    dependencies, as on a machine that unpacks them beside an image's Python), never instead of it."""
    return os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
