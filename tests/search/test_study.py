"""Several objectives in a space, the Optuna study in a storage, and the Pareto front (no Ray cluster here)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from cyclegan.data import DataError
from search.report import pareto_front
from search.select import TrialOutcome
from search.space import Objective, SpaceError, load_space
from search.study import close_study, open_study_store

LR = "params: {lr: {float: [1.0e-5, 1.0e-3], log: true}}\n"
TWO = "objective: {metrics: [ssim_t1_t2_head, loss_cycle], modes: [max, min]}\n" + LR

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_two_objectives_read_alike_in_both_forms_and_the_first_leads(tmp_path):
    short = load_space(write(tmp_path, TWO))
    listed = load_space(write(tmp_path, "objective:\n  - {metric: ssim_t1_t2_head, mode: max}\n"
                                        "  - {metric: loss_cycle, mode: min}\n" + LR))
    assert short.objectives == listed.objectives and short.multi_objective
    assert short.objective == Objective({"ssim_t1_t2_head": 1.0}, "max", "ssim_t1_t2_head")
    report = short.reported_objectives()
    assert report.keys == ("objective_0", "objective_1")
    assert report({"ssim_t1_t2_head": 0.5, "loss_cycle": 2.0}) == {"objective": 0.5, "objective_0": 0.5,
                                                                   "objective_1": 2.0}
    config = short.tune_config()
    assert (config.metric, config.mode) == ("objective", "max")  # ASHA and Tune's best result: the first
    searcher = short.make_searcher()
    assert (searcher.metric, searcher.mode) == (["objective_0", "objective_1"], ["max", "min"])
    # One objective keeps reporting `objective` alone.
    assert load_space(write(tmp_path, LR)).reported_objectives().keys == ("objective",)
    # A weighted sum may be one of several.
    mixed = load_space(write(tmp_path, "objective:\n  - {weights: {ssim_t1_t1_head: 0.5, ssim_t2_t2_head: 0.5}}\n"
                                       "  - {metric: loss_G, mode: min}\n" + LR))
    assert mixed.objectives[0].weights == {"ssim_t1_t1_head": 0.5, "ssim_t2_t2_head": 0.5}


@pytest.mark.parametrize("text,key", [
    ("objective: {metrics: [ssim_t1_t2_head], modes: [max]}\n", "objective.metrics"),
    ("objective: {metrics: [ssim_t1_t2_head, loss_cycle], modes: [max]}\n", "objective.modes"),
    ("objective: {metrics: [ssim_t1_t2_head, loss_cycle]}\n", "objective.modes"),
    ("objective: {metrics: [ssim_t1_t2_head, loss_cycle], modes: [max, least]}\n", "objective.modes[1]"),
    ("objective: {metrics: [ssim_t1_t2_head, gpu_seconds], modes: [max, min]}\n", "objective.metrics[1]"),
    ("objective: {metrics: [ssim_t1_t2_head, ssim_t1_t2_head], modes: [max, max]}\n", "objective.metrics[1]"),
    ("objective: {metrics: [loss_cycle, ssim_t1_t2_head], modes: [min, max]}\n", "objective.metrics[0]"),
    ("objective: {metrics: [ssim_t1_t2_head, loss_cycle], modes: [max, min], mode: max}\n", "objective.mode"),
    ("objective: [{metric: ssim_t1_t2_head}]\n", "objective"),
    ("objective: [{metric: ssim_t1_t2_head}, loss_cycle]\n", "objective[1]"),
    ("objective: [{metric: ssim_t1_t2_head}, {metric: loss_G, mode: min, weight: 2}]\n", "objective[1].weight"),
    ("objective: 3\n", "objective"),
    ("search: {sampler: cmaes}\n" + "objective: {metrics: [ssim_t1_t2_head, loss_cycle], modes: [max, min]}\n",
     "search.sampler"),
])
def test_a_bad_multi_objective_is_refused_in_one_line_naming_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text + LR)
    with pytest.raises(SpaceError) as e:
        load_space(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {key}: ") and "\n" not in message and "; allowed: " in message


def test_optuna_search_keeps_its_study_in_the_storage_and_resumes_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = load_space(write(tmp_path, TWO))
    store = open_study_store(url, str(tmp_path), "run", resume=False, sampled=True)
    searcher = space.make_searcher(store.storage, store.name)
    assert isinstance(searcher, OptunaSearch)
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", result={"objective_0": 0.1 * i, "objective_1": 3.0 - i, **config})
    searcher.suggest("t3")  # asked, then the driver dies before telling it
    # Tune saves the searcher by pickling it and restores it into a new one: the same study, all its trials.
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = space.make_searcher(store.storage, store.name)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.suggest("t4")
    restored.on_trial_complete("t4", result={"objective_0": 0.9, "objective_1": 0.5})

    study = optuna.load_study(study_name="run", storage=url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.values for t in complete] == [[0.0, 3.0], [0.1, 2.0], [0.2, 1.0], [0.9, 0.5]]
    assert all(set(t.params) == {"lr"} for t in complete)
    assert close_study(store) == 1  # t3, never told
    assert {t.state for t in study.get_trials()} == {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL}
    # A new run may not take over the study; a resumed one finds it.
    with pytest.raises(DataError, match="holds a study named 'run' already; pass --resume"):
        open_study_store(url, str(tmp_path), "run", resume=False, sampled=True)
    assert open_study_store(url, str(tmp_path), "run", resume=True, sampled=True).name == "run"


def test_one_objective_study_records_each_epoch_as_an_intermediate_value(tmp_path):
    space = load_space(write(tmp_path, LR))
    (tmp_path / "one").mkdir()  # the run's folder, as search.run makes it
    store = open_study_store(None, str(tmp_path), "one", resume=False, sampled=True)
    assert store.url == f"sqlite:///{tmp_path / 'one' / 'optuna.db'}"
    searcher = space.make_searcher(store.storage, store.name)
    searcher.suggest("a")
    for epoch in (1, 2):
        searcher.on_trial_result("a", {"objective": 0.1 * epoch, "training_iteration": epoch})
    searcher.on_trial_complete("a", result={"objective": 0.2})
    (trial,) = optuna.load_study(study_name="one", storage=store.storage).trials
    assert trial.value == 0.2 and trial.intermediate_values == {1: 0.1, 2: 0.2}


def test_a_resumed_run_replaying_a_trial_the_study_has_finished_goes_on(tmp_path):
    # The driver's last checkpoint saw trial "a" running; the study saw it finish before the kill. On resume Tune
    # runs "a" again from its checkpoint, and the restored searcher must not end the run over it.
    space = load_space(write(tmp_path, LR))
    store = open_study_store(f"sqlite:///{tmp_path / 'o.db'}", str(tmp_path), "r", resume=False, sampled=True)
    searcher = space.make_searcher(store.storage, store.name)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"objective": 0.1, "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Ray's experiment checkpoint
    searcher.on_trial_result("a", {"objective": 0.2, "training_iteration": 2})
    searcher.on_trial_complete("a", result={"objective": 0.2})  # then the driver is killed

    resumed = space.make_searcher(store.storage, store.name)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("a", {"objective": 0.25, "training_iteration": 2})
    resumed.on_trial_complete("a", result={"objective": 0.25})
    resumed.suggest("b")  # and the search goes on, the sampler seeing "a"
    (first, second) = optuna.load_study(study_name="r", storage=store.storage).trials
    assert first.value == 0.2 and first.intermediate_values == {1: 0.1, 2: 0.2}
    assert second.state == optuna.trial.TrialState.RUNNING


def test_storage_that_cannot_be_opened_or_resumed_is_refused_in_one_line(tmp_path):
    with pytest.raises(DataError, match=r"--optuna-storage nosuchdb://x: cannot open it") as e:
        open_study_store("nosuchdb://x", str(tmp_path), "r", resume=False, sampled=True)
    assert "\n" not in str(e.value)
    url = "postgresql://me:secret@localhost:1/db"
    with pytest.raises(DataError) as e:
        open_study_store(url, str(tmp_path), "r", resume=False, sampled=True)
    assert "secret" not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="no study named 'r' to resume"):
        open_study_store(f"sqlite:///{tmp_path / 'x.db'}", str(tmp_path), "r", resume=True, sampled=True)
    # Points and grid spaces have no sampler, so no study.
    assert open_study_store(None, str(tmp_path), "r", resume=False, sampled=False) is None


def test_pareto_front_is_the_trials_no_other_beats_in_every_objective():
    def trial(tid: str, ssim: float, loss: float) -> TrialOutcome:
        return TrialOutcome(tid, "", {}, "finished", {}, {"objective_0": ssim, "objective_1": loss}, None)

    trials = [trial("a", 0.9, 3.0), trial("b", 0.8, 1.0), trial("c", 0.7, 2.0), trial("d", 0.9, 3.5),
              trial("e", 0.5, 0.5), TrialOutcome("f", "", {}, "error", {}, {}, None)]
    front = pareto_front(trials, ("objective_0", "objective_1"), ["max", "min"])
    assert [o.trial_id for o in front] == ["a", "b", "e"]


def test_a_trial_stopped_early_is_told_pruned_and_a_finished_one_complete(tmp_path):
    # Tune gives the result it stops a trial on to on_trial_complete only, so the searcher reports that epoch.
    space = load_space(write(tmp_path, "fixed: {epochs: 3}\n" + LR))
    store = open_study_store(f"sqlite:///{tmp_path / 'f.db'}", str(tmp_path), "f", resume=False, sampled=True)
    searcher = space.make_searcher(store.storage, store.name)
    for t in "abcd":
        searcher.suggest(t)
    searcher.on_trial_result("a", {"objective": 0.1, "epoch": 1, "training_iteration": 1})
    searcher.on_trial_complete("a", result={"objective": 0.15, "epoch": 2})  # ASHA stopped it at epoch 2
    for epoch in (1, 2, 3):
        searcher.on_trial_result("b", {"objective": 0.1 * epoch, "epoch": epoch, "training_iteration": epoch})
    searcher.on_trial_complete("b", result={"objective": 0.3, "epoch": 3})
    searcher.on_trial_complete("c", error=True)
    searcher.on_trial_complete("d")  # the time budget ran out before it began
    a, b, c, d = optuna.load_study(study_name="f", storage=store.storage).trials
    assert (a.state.name, a.value, a.intermediate_values, a.user_attrs) == ("PRUNED", 0.15, {1: 0.1, 2: 0.15},
                                                                            {"epochs_run": 2, "tune_trial_id": "a"})
    assert (b.state.name, b.value, b.user_attrs) == ("COMPLETE", 0.3, {"epochs_run": 3, "tune_trial_id": "b"})
    assert b.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3})
    assert (c.state.name, d.state.name) == ("FAIL", "FAIL")

    # A resume replays "a" from Ray's checkpoint taken before it was told: the study keeps what it was told.
    searcher.save(str(tmp_path / "s.pkl"))
    resumed = space.make_searcher(store.storage, store.name)
    resumed.restore(str(tmp_path / "s.pkl"))
    resumed._completed_trials.discard("a")  # as Ray's checkpoint from before the tell would hold it
    resumed.on_trial_result("a", {"objective": 0.2, "epoch": 2, "training_iteration": 2})
    resumed.on_trial_complete("a", result={"objective": 0.3, "epoch": 3})
    again = optuna.load_study(study_name="f", storage=store.storage).trials[0]
    assert (again.state.name, again.value, again.intermediate_values) == ("PRUNED", 0.15, {1: 0.1, 2: 0.15})
    assert resumed.suggest("e")["epochs"] == 3  # and the sampler goes on


def test_several_objectives_stopped_early_are_pruned_with_their_values_kept_aside(tmp_path):
    # Optuna takes no values with PRUNED, nor intermediate values with several objectives.
    space = load_space(write(tmp_path, "fixed: {epochs: 3}\n" + TWO))
    searcher = space.make_searcher()
    for t in "ab":
        searcher.suggest(t)
    searcher.on_trial_complete("a", result={"objective_0": 0.4, "objective_1": 2.0, "epoch": 1})
    searcher.on_trial_complete("b", result={"objective_0": 0.5, "objective_1": 1.0, "epoch": 3})
    a, b = searcher._ot_study.trials
    assert (a.state.name, a.values, a.user_attrs) == ("PRUNED", None, {"epochs_run": 1, "tune_trial_id": "a",
                                                             "values_at_stop": [0.4, 2.0]})
    assert (b.state.name, b.values) == ("COMPLETE", [0.5, 1.0])
    assert set(searcher.suggest("c")) == {"lr", "epochs"}
