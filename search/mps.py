"""CUDA MPS where it pays: a one-line note from `search.run` when trials will share a GPU and MPS is not running.

Without MPS, the processes of trials that share a GPU take turns on it (time-slicing); one graphed trial at batch 2
already keeps it about 95% busy, so packing adds nothing. Under MPS their kernels run side by side: 1.65x the
aggregate of eight trials at batch 2 on an H100 (docs/benchmarks.md). The search does not start MPS itself: the
daemon serves every CUDA process of the machine (other users' included), outlives the search, and one started by
a user other than those processes' owner refuses them; so starting it is left to whoever owns the machine, and
the note says how. On a cluster (`--address`) the driver cannot see the workers' GPUs; `cluster.yaml` starts MPS
on its workers.

    python -m pytest tests/search/test_mps.py -q
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
DEFAULT_PIPE = "/tmp/nvidia-mps"  # the control daemon's default pipe folder
DAEMON_NAME = "nvidia-cuda-mps"  # nvidia-cuda-mps-control and -server as /proc/PID/comm shows them (15 characters)
START = "nvidia-cuda-mps-control -d"
STOP = "echo quit | nvidia-cuda-mps-control"


def mps_running(env: Mapping[str, str] = os.environ, proc: Path = Path("/proc")) -> bool:
    """Whether an MPS control daemon serves this machine: its process is seen, or its control pipe exists (a
    daemon outside this container, its pipe folder shared, shows only the pipe)."""
    if (Path(env.get(PIPE_ENV) or DEFAULT_PIPE) / "control").exists():
        return True
    for comm in proc.glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip().startswith(DAEMON_NAME):
                return True
        except OSError:  # a process that ended while being read
            continue
    return False


def mps_note(gpus_per_trial: float | str, trials_per_gpu: int, concurrent: int, machine_gpus: float,
             running: bool) -> str | None:
    """The note to print, or None: trials share a GPU (a fixed share under 1, or `auto` with more than one trial a
    GPU allowed), more than one runs at a time, this machine has a GPU, and MPS is not running."""
    if gpus_per_trial == "auto":
        shared = trials_per_gpu > 1
    else:
        shared = 0 < float(gpus_per_trial) < 1
    if not shared or concurrent < 2 or machine_gpus <= 0 or running:
        return None
    share = "auto" if gpus_per_trial == "auto" else f"{float(gpus_per_trial):g}"
    return (f"note: trials share each GPU (gpus_per_trial {share}) and CUDA MPS is not running, so their kernels "
            f"take turns instead of running side by side; for up to 1.65x the throughput, start it before the "
            f"search with `{START}` (and stop it after with `{STOP}`)")
