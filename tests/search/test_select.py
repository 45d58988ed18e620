"""How a trial's Ray Tune `Result` is summarised, and which trials count as repeats of one configuration."""

from __future__ import annotations

from ray import tune

from search.report import repeats
from search.select import outcome, status_counts


def result(tmp_path, config: dict, metrics: dict, error: Exception | None = None) -> tune.Result:
    # A Result reads its config from what the trial reported (Tune adds `config` to every reported result).
    return tune.Result(metrics={**metrics, "config": config}, checkpoint=None, error=error, path=str(tmp_path))


def test_status_says_finished_stopped_not_started_or_failed(tmp_path):
    cfg = {"epochs": 10, "resize": 32}
    runs = [outcome(result(tmp_path, cfg, {"epoch": 10}), "max"),
            outcome(result(tmp_path, cfg, {"epoch": 3}), "max"),
            outcome(result(tmp_path, {}, {}), "max"),  # the time budget ended the search before it began
            outcome(result(tmp_path, cfg, {"epoch": 2}, RuntimeError("boom")), "max")]
    assert [o.status for o in runs] == ["finished", "stopped early", "not started", "error"]
    assert status_counts(runs) == "1 finished, 1 stopped early, 1 not started, 1 failed"
    assert status_counts(runs[:2]) == "1 finished, 1 stopped early, 0 failed"


def test_repeats_are_trials_of_one_point_that_differ_only_in_seed(tmp_path):
    a = {"epochs": 10, "resize": 32, "name": "V2"}
    runs = [outcome(result(tmp_path, a, {"epoch": 10}), "max"),
            outcome(result(tmp_path, {**a, "seed": 1}, {"epoch": 10}), "max"),
            outcome(result(tmp_path, {**a, "name": "V4"}, {"epoch": 10}), "max"),  # same knobs, another point
            outcome(result(tmp_path, {**a, "resize": 64}, {"epoch": 10}), "max"),
            outcome(result(tmp_path, {}, {}), "max"), outcome(result(tmp_path, {}, {}), "max")]  # never started
    groups = repeats(runs)
    assert [[o.config.get("seed", 0) for o in g] for g in groups] == [[0, 1]]
    assert {o.name for o in groups[0]} == {"V2"}
