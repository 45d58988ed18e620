"""The finalists scored on the cluster's GPUs for a driver that has none, on a real Ray instance of this CPU machine.

Ray is started in this process with one GPU declared, not detected: the cluster then "has a GPU" while torch here
finds none, as on `cluster.yaml`'s CPU head. The actors get their GPU share and score on the CPU, so their figures
must equal the driver's own, exactly.

    python -m pytest tests/search/test_cluster_scoring.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from cyclegan import checkpoint
from cyclegan.config import TrainConfig
from cyclegan.data import load_data
from cyclegan.train import fit
from search import cluster_scoring
from search.cluster_scoring import ClusterScorer
from search.select import TrialOutcome, choose, rescore
from search.space import Objective

pytestmark = pytest.mark.slow  # starts Ray and trains two tiny models

ROOT = Path(__file__).resolve().parents[2]
DATA = "synthetic"
OBJECTIVE = Objective({"ssim_t1_t1_head": 0.5, "ssim_t2_t2_head": 0.5}, "max")


@pytest.fixture(scope="module")
def declared_gpu():  # noqa: ANN201
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny models trained on the CPU for one epoch (seeds 0 and 1): their checkpoint folders."""
    folders = []
    for seed in (0, 1):
        cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=4, epochs=1, pool_size=4,
                          seed=seed)
        folder = tmp_path_factory.mktemp("trials") / f"trial_{seed}" / "checkpoint_000000"
        folder.mkdir(parents=True)
        fit(cfg, load_data(DATA, cfg.resize, cfg.seed), device="cpu",
            report=lambda metrics, save, folder=folder: save(folder / checkpoint.CHECKPOINT))
        folders.append(folder)
    return folders


def finalists(folders: list[Path]) -> list[TrialOutcome]:
    outcomes = []
    for i, folder in enumerate(folders):
        best = {"objective": 0.9 - i / 10, "epoch": 1}
        outcomes.append(TrialOutcome(f"s{i}", str(folder.parent), {"epochs": 1}, "finished", dict(best), best,
                                     str(folder), gpu_share=0.25))
    return outcomes


def local(o: TrialOutcome, split: str) -> dict[str, float]:
    return rescore(o, DATA, "cpu", split)


def test_a_cpu_driver_beside_a_gpu_wants_the_cluster_and_without_ray_does_not(declared_gpu) -> None:
    assert cluster_scoring.wanted()
    ray.shutdown()
    try:
        assert not cluster_scoring.wanted()
    finally:
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})


def test_the_cluster_chooses_and_scores_as_the_driver_does(declared_gpu, checkpoints) -> None:
    here = finalists(checkpoints)
    winner_here, ranked_here = choose(here, OBJECTIVE, DATA, top_k=2, device="cpu")
    there = finalists(checkpoints)
    scorer = ClusterScorer(DATA, local)
    try:
        winner, ranked = choose(there, OBJECTIVE, DATA, top_k=2, score=scorer)
    finally:
        scorer.close()
    assert winner.trial_id == winner_here.trial_id
    assert [(o.trial_id, o.val_rescore, o.test) for o in ranked] == [
        (o.trial_id, o.val_rescore, o.test) for o in ranked_here]
    # Every finalist on val and test, each in an actor on a node of the cluster (here its one node), none on the driver.
    assert sorted(scorer.nodes) == ["s0/test", "s0/val", "s1/test", "s1/val"]
    assert set(scorer.nodes.values()) == {ray.get_runtime_context().get_node_id()}


def test_the_data_the_trials_were_handed_is_scored_from_ray_s_object_store(declared_gpu, checkpoints, study_data):
    from cyclegan.data import read_data

    o = finalists(checkpoints)[0]
    slices = read_data(study_data)
    scorer = ClusterScorer(ray.put(slices), local)
    try:
        there = scorer(o, "val")
    finally:
        scorer.close()
    assert there == rescore(o, slices, "cpu", "val")
    assert scorer.nodes == {"s0/val": ray.get_runtime_context().get_node_id()}


def test_a_damaged_checkpoint_drops_its_finalist_as_on_the_driver(declared_gpu, checkpoints, tmp_path) -> None:
    bad = tmp_path / "checkpoint_000000"
    bad.mkdir()
    (bad / checkpoint.CHECKPOINT).write_bytes(b"not a checkpoint")
    outcomes = finalists([bad, checkpoints[0]])
    scorer = ClusterScorer(DATA, local)
    try:
        winner, ranked = choose(outcomes, OBJECTIVE, DATA, top_k=2, score=scorer)
    finally:
        scorer.close()
    assert winner.trial_id == "s1" and [o.trial_id for o in ranked] == ["s1"] and outcomes[0].test == {}


def test_a_finalist_whose_actor_died_is_scored_on_the_driver_with_a_warning(declared_gpu, checkpoints, capsys):
    o = finalists(checkpoints)[0]
    scorer = ClusterScorer(DATA, local)
    try:
        val = scorer(o, "val")
        ray.kill(scorer._actors[o.trial_id])  # as a lost node leaves it
        test = scorer(o, "test")
    finally:
        scorer.close()
    assert val == local(o, "val") and test == local(o, "test")
    assert scorer.nodes["s0/val"] != "driver" and scorer.nodes["s0/test"] == "driver"
    assert "warning: trial s0 scored on test on this machine, not on the cluster:" in capsys.readouterr().err


@ray.remote(num_gpus=1, num_cpus=0)
class _Holder:
    """Holds the declared GPU, as trials of another search would."""


def test_a_finalist_no_gpu_node_takes_is_scored_on_the_driver_in_both_splits(declared_gpu, checkpoints, capsys):
    holder = _Holder.remote()
    ray.get(holder.__ray_ready__.remote())
    o = finalists(checkpoints)[0]
    scorer = ClusterScorer(DATA, local, placement_seconds=2)
    try:
        val, test = scorer(o, "val"), scorer(o, "test")
    finally:
        scorer.close()
        ray.kill(holder)
    assert val == local(o, "val") and test == local(o, "test")
    assert scorer.nodes == {"s0/val": "driver", "s0/test": "driver"}
    err = capsys.readouterr().err
    assert err.count("warning: trial s0 scored on") == 2 and "no GPU node took it in 2 s" in err
