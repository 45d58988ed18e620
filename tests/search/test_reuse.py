"""A trial's process serves the next trial even when epochs take longer than Ray's wait for a stopped trial's thread.

Ray Tune reuses a stopped trial's process for the next trial (`reuse_actors`, as search.run asks) only if the
stopped trial's training thread ends within TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s) of the reset; otherwise the next
trial fails ("Trainable runner reuse requires reset_config()..."). A function trainable's thread waits at each
report until Tune asks for the next result, so a trial stopped after a report trains nothing more and ends at the
reset, however long its epochs (minutes, at data of real size). A real Ray Tune run in this process.

    python -m pytest tests/search/test_reuse.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray import tune

from search.trainable import RESOURCES, train_trial

pytestmark = pytest.mark.slow  # starts Ray and trains two trials


def test_a_trial_stopped_mid_epoch_ends_at_once_and_leaves_its_process_to_the_next(local_ray: None,
                                                                                   tmp_path: Path) -> None:
    # Epochs of 78 steps at batch 1: about 4 s each on two cores, twice the reset's wait. Each trial is stopped
    # after its first report.
    knobs = dict(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=1, epochs=5, pool_size=4)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data="synthetic", objective=lambda m: m["ssim_t1_t2"],
                             checkpoint_every=100),
        {"cpu": 1})
    tuner = tune.Tuner(
        trainable, param_space={**knobs, "seed": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="reuse", verbose=0,
                                  stop={"training_iteration": 1}, sync_config=tune.SyncConfig(sync_artifacts=True)))
    results = tuner.fit()
    assert not results.errors, results.errors
    records = [json.loads(p.read_text()) for p in (tmp_path / "reuse").glob("*/" + RESOURCES)]
    assert sorted(r["trial_in_process"] for r in records) == [1, 2]
    assert len({r["pid"] for r in records}) == 1
