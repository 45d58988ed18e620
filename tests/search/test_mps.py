"""search.run says how to start CUDA MPS exactly when trials will share a GPU without it.

    python -m pytest tests/search/test_mps.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest

from search.mps import PIPE_ENV, START, STOP, mps_note, mps_running


@pytest.mark.parametrize("gpus_per_trial, trials_per_gpu, concurrent, gpus, running, noted", [
    (0.25, 8, 4, 1, False, True),      # four trials on a GPU, no MPS: say so
    (0.25, 8, 4, 1, True, False),      # MPS already running
    (0.25, 8, 4, 0, False, False),     # no GPU on this machine: trials run on the CPU
    (0.25, 8, 1, 1, False, False),     # one trial at a time shares nothing
    (1, 8, 4, 4, False, False),        # a whole GPU each
    (2, 8, 2, 4, False, False),        # two whole GPUs each
    (0, 8, 4, 1, False, False),        # CPU trials
    ("auto", 8, 8, 1, False, True),    # auto packs several on a GPU
    ("auto", 1, 8, 1, False, False),   # auto with one trial a GPU at most
])
def test_the_note_appears_only_where_trials_share_a_gpu_without_mps(gpus_per_trial, trials_per_gpu, concurrent,
                                                                    gpus, running, noted) -> None:
    note = mps_note(gpus_per_trial, trials_per_gpu, concurrent, gpus, running)
    assert (note is not None) == noted
    if noted:
        assert note.startswith("note: ") and "\n" not in note and START in note and STOP in note
        assert f"gpus_per_trial {gpus_per_trial}" in note


def test_mps_is_seen_by_its_control_pipe_or_its_process(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "comm").write_text("python\n")
    pipes = tmp_path / "pipes"
    pipes.mkdir()
    env = {PIPE_ENV: str(pipes)}
    assert not mps_running(env, proc)
    (pipes / "control").write_text("")  # the daemon's control pipe, in the folder CUDA_MPS_PIPE_DIRECTORY names
    assert mps_running(env, proc)
    (pipes / "control").unlink()
    (proc / "77").mkdir()
    (proc / "77" / "comm").write_text("nvidia-cuda-mps\n")  # nvidia-cuda-mps-control, cut to 15 characters
    assert mps_running(env, proc)
