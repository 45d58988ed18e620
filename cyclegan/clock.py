"""When this process started, as wall-clock seconds since the epoch, to time a trial's start-up from it.

A trial's start-up (its process start to its first training step: Python imports, CUDA context, data) costs
GPU time no training step shows; `fit` reports it (`startup_seconds`) and `search.throughput` sums it.
"""

from __future__ import annotations

import functools
import os
import time

_IMPORTED = time.time()  # the fallback where /proc is missing: this module's import, early in a trial


@functools.cache
def process_started() -> float:
    """The OS's start time of this process (Linux: /proc), else the time this module was first imported.

    Worked out once: every trial a process runs gives the same value, which is how `search.throughput` tells a
    reused process from a new one."""
    try:
        with open("/proc/self/stat") as f:
            # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        # The boot's time from the uptime (to the hundredth), not /proc/stat's btime (whole seconds, up to a second
        # early), so that a start-up measured against time.time() is not off by that second.
        with open("/proc/uptime") as f:
            boot = time.time() - float(f.read().split()[0])
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED
