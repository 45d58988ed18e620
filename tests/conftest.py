"""Shared fixtures: the study's slices (read from ../shared, never copied) and tiny configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cyclegan.config import TrainConfig

STUDY_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mri-t1t2"


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
