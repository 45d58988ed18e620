"""Shared fixtures: the study's slices (read from ../shared, never copied) and tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyclegan.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
STUDY_DATA = ROOT.parent / "shared" / "data" / "mri-t1t2"


@pytest.fixture
def study_data() -> Path:
    if not (STUDY_DATA / "T1").is_dir():
        pytest.skip(f"the study's slices are not at {STUDY_DATA}")
    return STUDY_DATA


@pytest.fixture
def tiny_cfg() -> TrainConfig:
    """A CycleGAN small enough to train an epoch on the CPU in about a second."""
    return TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=4, epochs=2, pool_size=4)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # Tiny networks gain nothing from a second thread, and two processes (a test and a Ray trial) each
    # spinning two OpenMP threads on two cores slow each other down many times over.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _own_trace_store(tmp_path_factory: pytest.TempPathFactory):
    # The memory traces' counts in a folder of this session's, for every test and the searches they start: the
    # user's own store is neither read nor added to, and every session traces afresh.
    import os

    from cyclegan.trace_store import CACHE_ENV

    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("trace-store"))


@pytest.fixture(scope="module")
def local_ray():  # noqa: ANN201
    """One in-process Ray instance (2 CPUs, no dashboard) for the tests of a module that runs Tune in this process.

    Started once a module, since a start costs seconds, and stopped after it: tests elsewhere that record what a
    process outside Ray sees, or that must see Ray stopped (a refusal before Ray starts), then run as they would
    alone, whatever the order; and one that needs a cluster of its own (nodes to kill, declared GPUs) starts real
    nodes with tests/raynodes.py. Workers import the test modules and the project by name, so the project need
    not be pip-installed.
    """
    import ray

    path = ":".join(str(p) for p in (ROOT, ROOT / "tests" / "search", ROOT / "tests" / "cyclegan"))
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()
