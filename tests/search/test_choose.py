"""The final choice on real tiny checkpoints: the winner is fixed on a val re-score, test is only reported.

    python -m pytest tests/search/test_choose.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cyclegan import checkpoint
from cyclegan import data as data_module
from cyclegan.config import TrainConfig
from cyclegan.data import load_data
from cyclegan.metrics import IMAGE_METRICS
from cyclegan.train import fit
from search.export import export
from search.report import evaluation, evaluation_line, selection_line
from search.run import summarise
from search.select import Datasets, TrialOutcome, choose, rescore
from search.space import Objective, load_space

pytestmark = pytest.mark.slow  # trains two models, then re-scores them on val and test

DATA = "synthetic"
OBJECTIVE = Objective({"ssim_t1_t1_head": 0.5, "ssim_t2_t2_head": 0.5}, "max")


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Two tiny models trained on the CPU for one epoch (seeds 0 and 1): {name: (checkpoint folder, val metrics)}."""
    root = tmp_path_factory.mktemp("trials")
    made = {}
    for seed in (0, 1):
        cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=4, epochs=1, pool_size=4,
                          seed=seed)
        folder = root / f"trial_{seed}" / "checkpoint_000000"
        folder.mkdir(parents=True)

        def report(metrics: dict, save, folder: Path = folder, seed: int = seed) -> None:
            save(folder / checkpoint.CHECKPOINT)
            made[f"s{seed}"] = (folder, dict(metrics))

        fit(cfg, load_data(DATA, cfg.resize, cfg.seed), device="cpu", report=report)
    return made


def finalist(name: str, folder: Path, val_objective: float) -> TrialOutcome:
    best = {"objective": val_objective, "epoch": 1, "paired": True}
    return TrialOutcome(name, str(folder.parent), {"epochs": 1}, "finished", dict(best), best, str(folder))


def test_a_val_rescore_is_the_trials_own_val_split_in_full_precision(two_checkpoints):
    # On the CPU training scored val in fp32 too, so a re-score of the same weights on all val slices gives back
    # what the trial reported; test is another set of slices.
    folder, reported = two_checkpoints["s0"]
    o = finalist("s0", folder, 0.5)
    val = rescore(o, DATA, "cpu", "val")
    for m in IMAGE_METRICS:
        assert val[m] == pytest.approx(reported[m], abs=1e-5), m
    test = rescore(o, DATA, "cpu")
    assert test["ssim_t1_t1"] != pytest.approx(val["ssim_t1_t1"], abs=1e-6)
    assert all(f"{m}_sd" in val for m in ("ssim_t1_t1", "psnr_t2_t1_head"))


def test_the_best_on_test_is_not_chosen_when_its_val_rescore_is_worse(two_checkpoints, tmp_path):
    # "lucky" is the best finalist on test and led on val in training; "steady" wins the val re-score. A third
    # trial is outside the top 2 and is never scored.
    outcomes = [finalist("lucky", two_checkpoints["s0"][0], 0.9), finalist("steady", two_checkpoints["s1"][0], 0.8),
                finalist("third", two_checkpoints["s1"][0], 0.1)]
    planted = {("lucky", "val"): 0.60, ("lucky", "test"): 0.95, ("steady", "val"): 0.70, ("steady", "test"): 0.65}
    calls = []

    def score(o: TrialOutcome, split: str) -> dict[str, float]:
        calls.append((o.trial_id, split))
        metrics = rescore(o, DATA, "cpu", split)  # the real scoring, with the objective's SSIMs planted
        return {**metrics, "ssim_t1_t1_head": planted[o.trial_id, split], "ssim_t2_t2_head": planted[o.trial_id, split]}

    winner, finalists = choose(outcomes, OBJECTIVE, DATA, top_k=2, score=score)
    assert winner.trial_id == "steady" and [o.trial_id for o in finalists] == ["steady", "lucky"]
    # Every val re-score came before the first test score: the winner was fixed when test was first read. (The
    # finalists are scored side by side, so in either order within a split.)
    assert sorted(calls[:2]) == [("lucky", "val"), ("steady", "val")]
    assert sorted(calls[2:]) == [("lucky", "test"), ("steady", "test")]
    assert outcomes[2].test == {} and outcomes[2].val_rescore == {}
    lucky, steady = outcomes[0], outcomes[1]
    assert (lucky.test["objective"], steady.test["objective"]) == pytest.approx((0.95, 0.65))
    assert (lucky.val_rescore["objective"], steady.val_rescore["objective"]) == pytest.approx((0.60, 0.70))
    assert lucky.test["objective"] > steady.test["objective"]  # test would have picked the other one

    best = export(winner, DATA, tmp_path / "best")
    exported = json.loads((best / "metrics.json").read_text())
    assert exported["trial_id"] == "steady" and exported["test"]["objective"] == pytest.approx(0.65)


def test_the_real_choice_ranks_on_the_val_rescore_and_reports_test(two_checkpoints):
    outcomes = [finalist(name, folder, 0.5) for name, (folder, _) in two_checkpoints.items()]
    winner, finalists = choose(outcomes, OBJECTIVE, DATA, top_k=2, device="cpu")
    scores = {o.trial_id: o.val_rescore["objective"] for o in outcomes}
    assert winner.trial_id == max(scores, key=scores.get) and len(finalists) == 2
    for o in outcomes:
        assert o.val_rescore["objective"] == pytest.approx(OBJECTIVE.value(o.val_rescore))
        assert o.test["objective"] == pytest.approx(OBJECTIVE.value(o.test)) and not math.isnan(o.test["objective"])


def test_the_report_says_how_the_winner_was_chosen_and_how_it_was_evaluated(tmp_path):
    o = TrialOutcome("t", str(tmp_path), {}, "finished", {}, {}, None)
    assert evaluation(o) == (None, None)  # no metrics, no split.json
    (tmp_path / "split.json").write_text(json.dumps({"paired_eval": False}))
    assert evaluation(o) == (False, None)
    (tmp_path / "split.json").write_text(json.dumps({"evaluation": "paired", "eval_size": 64}))
    assert evaluation(o) == (True, 64)
    o.best["paired"] = False  # what the trial reported comes first
    assert evaluation(o) == (False, 64)
    assert "unpaired" in evaluation_line(False, 64) and "64 x 64" in evaluation_line(False, 64)
    assert "own `resize`" in evaluation_line(True, None) and "true other contrast" in evaluation_line(True, None)
    line = selection_line(3)
    assert "top 3" in line and "fp32" in line and "every val slice" in line and "never ranked on" in line


def test_a_finalist_whose_checkpoint_is_damaged_drops_out_before_any_test_score(two_checkpoints, tmp_path):
    bad = tmp_path / "checkpoint_000000"
    bad.mkdir()
    (bad / checkpoint.CHECKPOINT).write_bytes(b"not a checkpoint")
    outcomes = [finalist("bad", bad, 0.9), finalist("ok", two_checkpoints["s0"][0], 0.8)]
    winner, finalists = choose(outcomes, OBJECTIVE, DATA, top_k=2, device="cpu")
    assert winner.trial_id == "ok" and [o.trial_id for o in finalists] == ["ok"] and outcomes[0].test == {}



def test_scoring_side_by_side_chooses_and_scores_as_one_at_a_time(two_checkpoints):
    def run(workers: int) -> list[tuple[str, dict, dict]]:
        made = enumerate(two_checkpoints.items())
        outcomes = [finalist(name, folder, 0.5 + i / 10) for i, (name, (folder, _)) in made]
        _, finalists = choose(outcomes, OBJECTIVE, DATA, top_k=2, device="cpu", workers=workers)
        return [(o.trial_id, o.val_rescore, o.test) for o in finalists]

    assert run(2) == run(1)


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple]:
    """Every call of `cyclegan.data.<name>` (what `load_data` builds with), as its arguments; the real one runs."""
    calls, real = [], getattr(data_module, name)
    monkeypatch.setattr(data_module, name, lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_the_end_of_a_search_builds_each_finalists_data_once(two_checkpoints, tmp_path, monkeypatch):
    # The real end of a search (choice, yardsticks, export, report) on two finalists of seeds 0 and 1 at 32 px: the
    # phantom is drawn once a seed, where the choice, the yardsticks and the export each drew their own.
    (tmp_path / "space.yaml").write_text(
        "objective: {weights: {ssim_t1_t1_head: 0.5, ssim_t2_t2_head: 0.5}, mode: max}\n"
        "select: {top_k: 2}\nfixed: {resize: 32, unet_depth: 5}\npoints: [{seed: 0}, {seed: 1}]\n")
    space = load_space(tmp_path / "space.yaml")
    outcomes = []
    for seed in (0, 1):
        o = finalist(f"s{seed}", two_checkpoints[f"s{seed}"][0], 0.5 + seed / 10)
        o.config.update(resize=32, seed=seed)
        outcomes.append(o)
    built = _counting(monkeypatch, "synthetic_data")
    assert summarise(None, space, DATA, str(tmp_path / "run"), outcomes=outcomes, tail={}) == 0
    assert sorted(built) == [(32, 0), (32, 1)]
    assert (tmp_path / "run" / "best" / "model.pt").is_file() and all(o.test for o in outcomes)
    assert "| T1 -> T2, the input copied |" in (tmp_path / "run" / "summary" / "report.md").read_text()  # yardsticks


def test_a_folder_is_read_once_and_built_once_a_resize_with_its_held_out_slices_only(study_data, monkeypatch):
    read, built = _counting(monkeypatch, "read_domain"), _counting(monkeypatch, "build_dataset")
    datasets = Datasets(str(study_data))
    a, b, c = datasets.get(32, 0), datasets.get(32, 1), datasets.get(64, 0)
    assert [folder.name for folder, in read] == ["T1", "T2"] and [resize for _, resize in built] == [32, 64]
    assert a is b and (a.resize, c.resize) == (32, 64)  # a folder's data set does not depend on the seed
    whole = load_data(study_data, 32)
    assert len(a.train.t1) == 0 and a.split() == whole.split()  # no training slice built, the split as it was
    assert torch.equal(a.val.t1, whole.val.t1) and torch.equal(a.test.t2_head, whole.test.t2_head)

