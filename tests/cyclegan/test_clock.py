"""`cyclegan.clock.process_started` gives a process's start as wall-clock time, to the hundredth of a second.

    python -m pytest tests/cyclegan/test_clock.py -q
"""

from __future__ import annotations

import subprocess
import sys
import time

from tests.paths import pythonpath

SAY_WHEN = ("import time; from cyclegan.clock import process_started; a = process_started(); time.sleep(0.05); "
            "assert process_started() == a; print(a, time.time())")


def test_a_process_started_between_its_spawn_and_its_first_line() -> None:
    for _ in range(3):
        before = time.time()
        out = subprocess.run([sys.executable, "-c", SAY_WHEN], env={"PYTHONPATH": pythonpath()}, capture_output=True,
                             text=True, check=True).stdout
        started, imported = map(float, out.split())
        # The OS counts a process's start in clock ticks (10 ms) and the boot's time from the uptime (10 ms).
        assert before - 0.03 <= started <= imported
