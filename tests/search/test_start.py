"""The driver's start (`search.run`): its checks import no torch, and Ray starts in a thread of its own
(`search.ray_owner.RayOwner`) while the driver imports torch and the trainer.

    python -m pytest tests/search/test_start.py -q
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from search.ray_owner import RayOwner
from tests.paths import ROOT, pythonpath

# What `main` does before it starts Ray, in a fresh process: the checks, the study, the first configs, the child
# that compiles their kernels. Then whether torch has been imported.
CHECKS = """
import sys
from search import run
from search.study import open_study_store

args = run.parse_args(sys.argv[1:])
space, storage, name = run.prepare(args)
open_study_store(args.optuna_storage, storage, name, resume=args.resume, sampled=space.uses_optuna)
configs = space.first_configs(8)
run.KernelsAhead(configs).stop()
print(len(configs), "torch" in sys.modules)
"""


@pytest.mark.parametrize("data", ["study", "synthetic"])
def test_the_checks_before_ray_starts_import_no_torch(tmp_path: Path, data: str, request: pytest.FixtureRequest
                                                      ) -> None:
    folder = str(request.getfixturevalue("study_data")) if data == "study" else "synthetic"
    argv = [str(ROOT / "spaces" / "full.yaml"), "--gpus-per-trial", "auto", "--data", folder,
            "--storage", str(tmp_path / "runs")]
    p = subprocess.run([sys.executable, "-c", CHECKS, *argv], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": pythonpath()})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["8", "False"]  # torch is imported beside Ray's start, not before it


# A driver's use of RayOwner: Ray is used from the main thread seconds after `ray.init` returned in the owner's.
OWNED = """
import os, signal, time
from search.ray_owner import RayOwner, _exit_on_sigterm

owner = RayOwner(num_cpus=1, configure_logging=False, log_to_driver=False)
import torch  # what a driver imports meanwhile
owner.wait_started()
time.sleep(3)  # had the thread that started Ray ended, its GCS and raylet would be gone by now (PR_SET_PDEATHSIG)
import ray

@ray.remote
def pid():
    return os.getpid()

print(ray.get(pid.remote(), timeout=60) != os.getpid(), signal.getsignal(signal.SIGTERM) is _exit_on_sigterm)
seconds = owner.finish()
print(seconds > 0, ray.is_initialized(), owner.finish() == seconds)
"""


def test_ray_started_in_the_owners_thread_stays_up_until_it_is_stopped(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", OWNED], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": pythonpath()})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["True", "True", "True", "False", "True"], p.stdout
    assert "SIGTERM handler is not set" not in p.stderr  # Ray's warning for a thread: the owner sets the handler


def test_what_ray_init_raises_is_raised_by_wait_started() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        owner = RayOwner(no_such_argument=1)
        with pytest.raises(RuntimeError, match="no_such_argument"):
            owner.wait_started()
        assert owner.finish() == 0.0 and not ray.is_initialized()
    finally:
        signal.signal(signal.SIGTERM, before)
