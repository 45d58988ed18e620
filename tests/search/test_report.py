"""The report a search leaves, built from trial outcomes without running a search: what a reader sees."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import torch

from cyclegan.data import load_data
from cyclegan.metrics import DIRECTIONS
from search.export import SAMPLE_ROWS, labelled_samples, sample_grid
from search.report import (
    FAR_FROM_TRUTH,
    convergence_line,
    optuna_plots,
    plot_study,
    repeats,
    selection_line,
    write_report,
)
from search.select import TrialOutcome, yardsticks
from search.space import load_space
from search.study import StudyStore

ROOT = Path(__file__).resolve().parents[2]
TEST = {f"{m}_{d}{h}": v for d in DIRECTIONS for h in ("", "_head") for m, v in (("ssim", 0.5), ("psnr", 20.0))}


def trial(tmp_path: Path, tid: str, config: dict, epoch: int, objective: float, curve: list[float] | None = None,
          **kw) -> TrialOutcome:
    path = tmp_path / tid
    path.mkdir(parents=True)
    if curve:
        (path / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "objective": v}) + "\n"
                                                    for i, v in enumerate(curve)))
    last = {"epoch": epoch, "objective": objective, "loss_G": 1.23456789, "loss_cycle": 2.3456789}
    return TrialOutcome(tid, str(path), config, "finished", last, dict(last), None, **kw)


def report(tmp_path: Path, outcomes: list[TrialOutcome], winner: TrialOutcome | None = None,
           space: str = "full.yaml", baseline: dict[str, dict[str, float]] | None = None) -> str:
    path = tmp_path / "report.md"
    write_report(path, outcomes, winner, [winner] if winner else [], load_space(ROOT / "spaces" / space), "synthetic",
                 [], None, yardsticks=baseline)
    return path.read_text()


def table(text: str, heading: str) -> list[str]:
    return [x for x in text.split(heading)[1].split("\n#")[0].splitlines() if x.startswith("|")]


def test_the_tables_round_floats_show_a_default_seed_and_have_one_epochs_column(tmp_path):
    base = {"lr": 0.000123456789, "lambda_cycle": 9.43923492301, "epochs": 10}
    runs = [trial(tmp_path, "a", base, 10, 0.9439234923),  # no seed in its config: it ran with seed 0
            trial(tmp_path, "b", {**base, "seed": 1, "lr": 0.0005, "epochs": 20}, 7, 0.5)]
    runs[0].test = TEST
    text = report(tmp_path, runs, runs[0])
    long = [x for x in re.findall(r"\d+\.\d+", text) if len(x.replace(".", "").lstrip("0")) > 4]
    assert not long, long  # 4 significant digits at most
    assert "`lr=0.0001235`" in text and "`lambda_cycle=9.439`" in text
    rows = table(text, "## All trials")
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header.count("epochs") == 1 and "seed" in header
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in rows[2:]}
    assert cells["`a`"][header.index("seed")] == "0" and cells["`b`"][header.index("seed")] == "1"
    assert cells["`a`"][header.index("epochs")] == "10 of 10" and cells["`b`"][header.index("epochs")] == "7 of 20"
    assert cells["`a`"][header.index("lr")] == "0.0001235"


def test_plurals_follow_the_count():
    one, three = selection_line(1), selection_line(3)
    assert "top trial " in one and "1 trials" not in one and "were" not in one
    assert "top 3 trials" in three
    assert "1 epoch " in convergence_line([{"objective": 0.1}], 1, 1, "max")
    assert "last 1 epoch of 2" in convergence_line([{"objective": 0.1}, {"objective": 0.3}], 2, 2, "max")


def test_the_seeds_table_compares_only_trials_that_ran_as_long(tmp_path):
    cfg = {"resize": 32, "epochs": 10}
    runs = [trial(tmp_path, "s0", cfg, 10, 0.6), trial(tmp_path, "s1", {**cfg, "seed": 1}, 10, 0.7),
            trial(tmp_path, "s2", {**cfg, "seed": 2}, 3, 0.1)]  # ASHA stopped it at epoch 3
    groups = repeats(runs)
    assert [[o.trial_id for o in g] for g in groups] == [["s0", "s1"]]
    rows = table(report(tmp_path, runs), "## Configurations run with several seeds")
    assert len(rows) == 3 and "| 0, 1 | 10 |" in rows[2]


def test_on_paired_data_the_seeds_table_shows_the_truth(tmp_path):
    cfg = {"resize": 32, "epochs": 10}
    runs = [trial(tmp_path, f"s{i}", {**cfg, "seed": i}, 10, 0.6) for i in range(2)]
    for o, truth in zip(runs, (0.40, 0.60)):
        o.last["paired"] = True
        o.test = {**TEST, "ssim_t1_t2_head": truth, "objective": 0.6}
    rows = table(report(tmp_path, runs), "## Configurations run with several seeds")
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert "test ssim_t1_t2_head" in header and "test ssim_t1_t1_head" not in header
    assert rows[2].split("|")[header.index("test ssim_t1_t2_head") + 1].strip() == "0.5000 ± 0.1414"


def test_a_trial_the_budget_left_without_a_config_shows_no_knobs(tmp_path):
    # Ray made its folder, and the time budget ran out before it wrote its params: no config, not the defaults.
    ran = trial(tmp_path, "ran", {"resize": 128, "unet_depth": 5, "gan_loss": "bce", "epochs": 10}, 10, 0.6)
    ghost = trial(tmp_path, "ghost", {}, 0, float("nan"))
    ghost.status = "not started"
    rows = table(report(tmp_path, [ran, ghost]), "## All trials")
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    cells = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in rows[2:]}
    assert cells["`ghost`"][header.index("gan_loss")] == "-" and cells["`ghost`"][header.index("resize")] == "-"
    assert cells["`ran`"][header.index("gan_loss")] == "bce"


@pytest.mark.parametrize("curve,last,planned,says", [
    ([0.1, 0.2, 0.3], 3, 100, "stopped at epoch 3 of 100"),
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], 10, 10, "was still improving"),  # a straight climb
    ([0.1, 0.5, 0.7, 0.8, 0.85, 0.88, 0.89, 0.895, 0.897, 0.898], 10, 10, None),  # levelled off
    ([0.1, 0.6, 0.8, 0.8, 0.79, 0.8, 0.81, 0.8, 0.8, 0.79], 10, 10, None),  # a plateau with noise
    ([0.5, 0.4, 0.3, 0.2, 0.1], 5, 5, None),  # got worse: better epochs are in the checkpoints, not ahead
])
def test_a_winner_far_from_converged_is_named_in_one_line(curve, last, planned, says):
    line = convergence_line([{"epoch": i + 1, "objective": v} for i, v in enumerate(curve)], last, planned, "max")
    assert (line is None) if says is None else (says in line and "the rule" in line and "\n" not in line)
    # Minimising, the same curve upside down reads the same.
    flipped = convergence_line([{"objective": -v} for v in curve], last, planned, "min")
    assert (flipped is None) == (line is None)


def test_the_report_says_so_when_the_winner_is_far_from_converged(tmp_path):
    climbing = trial(tmp_path, "w", {"epochs": 5}, 5, 0.5, curve=[0.1, 0.2, 0.3, 0.4, 0.5])
    climbing.test = TEST
    text = report(tmp_path, [climbing], climbing)
    assert sum("Far from converged" in x for x in text.splitlines()) == 1
    flat = trial(tmp_path, "f", {"epochs": 5}, 5, 0.5, curve=[0.1, 0.49, 0.5, 0.5, 0.5])
    flat.test = TEST
    assert "Far from converged" not in report(tmp_path, [flat], flat)


def test_on_paired_data_the_report_places_the_winner_between_a_copy_and_the_truth(tmp_path):
    # The quickstart's old winner had a level val curve (not "far from converged" by it), yet samples that showed the
    # input's contrast. The yardsticks are the phantom's test split really copied and really the truth, at 32 px.
    sticks = yardsticks(trial(tmp_path, "c", {"resize": 32}, 1, 0.0), "synthetic")
    objective = load_space(ROOT / "spaces" / "full.yaml").objective
    copy, truth = objective.value(sticks["copied"]), objective.value(sticks["truth"])
    assert copy < truth  # the shipped objective ranks the truth above not translating at all
    assert sticks["truth"]["ssim_t1_t2"] > sticks["copied"]["ssim_t1_t2"]
    w = trial(tmp_path, "w", {"epochs": 5, "resize": 32}, 5, 0.9, curve=[0.1, 0.89, 0.9, 0.9, 0.9])
    w.best["paired"] = True
    for share, far in ((0.3, True), (0.7, False)):
        # A test objective `share` of the way from the copy to the truth: every weighted metric moved alike.
        w.test = {**TEST, **{k: sticks["copied"][k] + share * (sticks["truth"][k] - sticks["copied"][k])
                             for k in objective.weights}}
        lines = report(tmp_path, [w], w, baseline=sticks).splitlines()
        placed = [x for x in lines if "of the way from the input copied" in x]
        assert len(placed) == 1 and f"{share:.0%} of the way" in placed[0]
        assert ("Far from the truth" in placed[0]) == far and (share < FAR_FROM_TRUTH) == far
        assert not any("Far from converged" in x for x in lines)
        assert sum("the input copied |" in x or "the truth at the model's size |" in x for x in lines) == 4
    w.best["paired"] = False  # no truth to place it against
    assert "of the way" not in report(tmp_path, [w], w, baseline=sticks)


def space_trials(tmp_path: Path) -> list[TrialOutcome]:
    draws = [(1e-4, 5, "lsgan", 0.5), (9e-4, 7, "bce", 0.7), (3e-4, 6, "lsgan", 0.6), (6e-5, 5, "bce", 0.4)]
    return [trial(tmp_path, f"t{i}", {"lr": lr, "unet_depth": d, "gan_loss": g, "resize": 128}, 10, v)
            for i, (lr, d, g, v) in enumerate(draws)]


def test_optunas_plots_are_drawn_from_the_runs_own_study(tmp_path):
    store = StudyStore(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"), "run", "sqlite:///x")
    study = optuna.create_study(study_name="run", storage=store.storage, direction="maximize")
    dists = {"lr": optuna.distributions.FloatDistribution(5e-5, 1e-3, log=True),
             "unet_depth": optuna.distributions.IntDistribution(5, 8)}
    for lr, depth, value in ((1e-4, 5, 0.5), (9e-4, 7, 0.7), (3e-4, 6, 0.6)):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr, "unet_depth": depth}, distributions=dists,
                                                  value=value))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    space = load_space(ROOT / "spaces" / "full.yaml")
    drawn, source = plot_study(space_trials(tmp_path), space, store)
    assert drawn.study_name == "run" and len(drawn.trials) == 4
    assert drawn.trials[0].distributions == dists  # not one category per value
    assert "study `run`" in source and "3 complete trials" in source and "1 pruned or failed left out" in source
    made, _ = optuna_plots(space_trials(tmp_path / "again"), space, tmp_path, store)
    assert made == ["importances.png", "parallel_coordinates.png"]


def test_without_a_study_the_plots_keep_the_spaces_distributions(tmp_path):
    drawn, source = plot_study(space_trials(tmp_path), load_space(ROOT / "spaces" / "full.yaml"))
    dists = drawn.trials[0].distributions
    assert dists["lr"] == optuna.distributions.FloatDistribution(5e-5, 1e-3, log=True)
    assert dists["unet_depth"] == optuna.distributions.IntDistribution(5, 8)
    assert dists["gan_loss"] == optuna.distributions.CategoricalDistribution(["lsgan", "bce"])
    assert [t.params["lr"] for t in drawn.trials] == [1e-4, 9e-4, 3e-4, 6e-5] and "4 trials'" in source
    # A points space lists values, not ranges: numbers become a range of numbers, sorted as numbers.
    points = plot_study(space_trials(tmp_path / "p"), load_space(ROOT / "spaces" / "study_v1_v4.yaml"))[0]
    assert points.trials[0].distributions["lr"] == optuna.distributions.FloatDistribution(6e-5, 9e-4)


def test_the_exported_sample_grid_names_its_rows_and_columns():
    data = load_data("synthetic", 32, 0)
    same = torch.nn.Identity()
    plain = sample_grid(same, same, data.test)[0].numpy()
    image = labelled_samples(same, same, data.test)
    assert image.shape[0] > plain.shape[0] and image.shape[1] > plain.shape[1]
    left = image.shape[1] - plain.shape[1]
    top = image.shape[0] - plain.shape[0]
    cell = plain.shape[0] // len(SAMPLE_ROWS)
    for i in range(len(SAMPLE_ROWS)):  # each row's name is written in the margin beside it
        assert (image[top + i * cell: top + (i + 1) * cell, :left] < 0.5).any(), SAMPLE_ROWS[i]
    assert (image[:top, left:] < 0.5).any()  # the slices' names above the columns
    assert abs(image[top:, left:] - plain).max() < 1 / 255 + 1e-6  # the pictures themselves untouched
