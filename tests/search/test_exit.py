"""`search.run`'s end (`exit_now`): what any exit does is done, the interpreter's own teardown skipped.

    python -m pytest tests/search/test_exit.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.paths import pythonpath

PROGRAM = """
import atexit, sys, tempfile, threading, time
from pathlib import Path
from search.run import exit_now

out = Path(sys.argv[1])
kept = tempfile.TemporaryDirectory(dir=out)  # removed by its finalizer, which runs at exit
(Path(kept.name) / "inside").write_text("x")
atexit.register(lambda: (out / "atexit").write_text("ran"))

def late():
    time.sleep(0.5)
    (out / "thread").write_text("done")
    print("the thread's line", file=sys.stderr, end="")

threading.Thread(target=late).start()  # not a daemon: an exit waits for it
print("printed, not flushed", end="")
exit_now(3)
"""


def test_exit_now_waits_for_threads_runs_exit_handlers_flushes_and_keeps_the_code(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": pythonpath()})
    assert p.returncode == 3, p.stderr[-2000:]
    assert p.stdout == "printed, not flushed" and p.stderr.endswith("the thread's line")
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["atexit", "thread"]  # the temporary folder is gone
