"""Population-based training (PBT, PB2) in the space file, and a real PBT search of tiny trials on the CPU.

    python -m pytest tests/search/test_pbt.py -q
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import ray
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator

from cyclegan.config import TrainConfig
from cyclegan.schedule import KNOBS, SCHEDULE, TRAINED_BY, Schedule
from search.population import MUTABLE, KeepInRange, Looks
from search.run import main as run_main
from search.space import SpaceError, space_from_dict
from tests.search.test_run import run

ROOT = Path(__file__).resolve().parents[2]
TINY = {"resize": 32, "unet_depth": 5, "disc_layers": 2, "ngf": 4, "ndf": 4, "batch_size": 4, "pool_size": 4}


def _space(**scheduler) -> dict:
    return {"fixed": {**TINY, "epochs": 4}, "search": {"num_samples": 4, "seed": 3},
            "scheduler": {"type": "pbt", "perturbation_interval": 2,
                          "mutations": {"lr": {"float": [1e-5, 1e-3], "log": True},
                                        "lambda_cycle": {"float": [5.0, 20.0]}},
                          **scheduler}}


def test_the_initial_population_is_drawn_from_the_space_and_the_searcher_is_off() -> None:
    raw = _space()
    raw["params"] = {"resize": {"choice": [32, 64]}, "unet_depth": {"int": [4, 6]}}
    del raw["fixed"]["resize"], raw["fixed"]["unet_depth"]
    raw["fixed"]["beta1"] = 0.5
    raw["scheduler"]["mutations"]["beta1"] = {"choice": [0.0, 0.5, 0.9]}
    space = space_from_dict(raw, "pbt.yaml")
    members = space.initial_population()
    assert len(members) == 4 and len({json.dumps(m, sort_keys=True) for m in members}) == 4
    for m in members:
        TrainConfig.from_dict(m)  # depth drawn within what its resize allows
        assert 1e-5 <= m["lr"] <= 1e-3 and 5 <= m["lambda_cycle"] <= 20 and m["beta1"] == 0.5  # fixed: the start
    assert members == space.initial_population()  # seeded
    config = space.tune_config()
    assert isinstance(config.search_alg, BasicVariantGenerator) and config.max_concurrent_trials is None
    assert isinstance(config.scheduler, PopulationBasedTraining) and not space.uses_optuna
    assert space.checkpoint_keep == 4  # PBT copies checkpoints other trials may be about to drop
    assert set(space.param_space()) == set(members[0])


def test_a_mutation_stays_in_its_range_and_on_its_step() -> None:
    space = space_from_dict(_space(mutations={"lr": {"float": [1e-5, 1e-3], "log": True},
                                              "dropout": {"float": [0.0, 0.5], "step": 0.1}}), "pbt.yaml")
    keep = KeepInRange(tuple(space.population.mutations.values()))
    assert keep({"lr": 1.2e-3, "dropout": 0.37}) == {"lr": 1e-3, "dropout": pytest.approx(0.4)}
    assert keep({"lr": 1e-6, "dropout": 0.6}) == {"lr": 1e-5, "dropout": 0.5}


def test_each_trial_checkpoints_at_every_epoch_pbt_looks_at_it() -> None:
    assert [e for e in range(1, 10) if e in Looks(first=3, interval=2)] == [3, 5, 7, 9]
    space = space_from_dict(_space(burn_in_period=3), "pbt.yaml")
    assert space.population.looks == Looks(3, 2)


@pytest.mark.parametrize("knob, spec, why", [
    ("unet_depth", {"int": [4, 5]}, "unet_depth is fixed for a trial's life"),
    ("ngf", {"choice": [4, 8]}, "ngf is fixed for a trial's life"),
    ("batch_size", {"choice": [2, 4]}, "batch_size is fixed for a trial's life"),
    ("upsample", {"choice": ["resize", "transpose"]}, "upsample is a str knob"),
    ("epochs", {"int": [2, 4]}, "epochs is not mutated"),
])
def test_a_mutation_of_a_knob_that_shapes_the_run_is_refused_by_name(knob: str, spec: dict, why: str) -> None:
    with pytest.raises(SpaceError, match=f"^pbt.yaml: scheduler.mutations.{knob}: {why}.*; allowed: "
                                         + ", ".join(MUTABLE)):
        space_from_dict(_space(mutations={knob: spec}), "pbt.yaml")


@pytest.mark.parametrize("change, key", [
    (lambda r: r["scheduler"].pop("perturbation_interval"), "scheduler.perturbation_interval"),
    (lambda r: r["scheduler"].update(mutations={}), "scheduler.mutations"),
    (lambda r: r["scheduler"].update(grace_period=3), "scheduler.grace_period"),
    (lambda r: r["scheduler"].update(quantile_fraction=0.7), "scheduler.quantile_fraction"),
    (lambda r: r.update(search={"sampler": "tpe"}), "search.sampler"),
    (lambda r: r.update(search={"num_samples": 1}), "search.num_samples"),
    (lambda r: r.update(params={"lr": {"float": [1e-4, 1e-3]}}), "params.lr"),
    (lambda r: r["fixed"].update(lr=0.1), "fixed.lr"),
    (lambda r: r.update(scheduler={"type": "asha", "perturbation_interval": 2}, params={"lr": {"float": [1e-4, 1e-3]}}),
     "scheduler.perturbation_interval"),
])
def test_a_wrong_pbt_section_is_refused_in_one_line(change, key: str) -> None:
    raw = _space()
    change(raw)
    with pytest.raises(SpaceError, match=f"^pbt.yaml: {re.escape(key)}: ") as e:
        space_from_dict(raw, "pbt.yaml")
    assert "\n" not in str(e.value)


def test_pb2_takes_linear_ranges_and_says_what_to_install() -> None:
    raw = _space(type="pb2")
    if importlib.util.find_spec("sklearn") is None:
        missing = r'scheduler.type: Ray\'s PB2 needs scikit-learn.*pip install -e "\.\[pb2\]"'
        with pytest.raises(SpaceError, match=missing):
            space_from_dict(raw, "pb2.yaml")
        return
    with pytest.raises(SpaceError, match="scheduler.mutations.lr: PB2 picks a value in a linear range"):
        space_from_dict(raw, "pb2.yaml")
    raw["scheduler"]["mutations"]["lr"] = {"float": [1e-5, 1e-3]}
    from ray.tune.schedulers.pb2 import PB2

    assert isinstance(space_from_dict(raw, "pb2.yaml").make_scheduler(), PB2)


def test_set_fixes_a_mutated_knob_and_with_none_left_the_space_is_no_longer_pbt() -> None:
    space = space_from_dict(_space(), "pbt.yaml")
    assert space.with_overrides({"lr": 3e-4}).mutated == ("lambda_cycle",)
    plain = space.with_overrides({"lr": 3e-4, "lambda_cycle": 8.0})
    assert plain.scheduler == "none" and plain.population is None and plain.trial_points() is not None


def test_a_pbt_space_mutating_unet_depth_is_refused_before_ray_starts(tmp_path: Path, capsys) -> None:
    raw = _space(mutations={"unet_depth": {"int": [4, 5]}})
    path = tmp_path / "pbt.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    assert run_main([str(path), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: scheduler.mutations.unet_depth: unet_depth is fixed") and "\n" not in err
    assert not ray.is_initialized()


def test_the_example_space_loads() -> None:
    from search.space import load_space

    space = load_space(ROOT / "spaces" / "pbt.yaml")
    assert space.population is not None and "lr" in space.mutated


# --- a real search -------------------------------------------------------------------------------------------------

TINY_PBT = f"""
objective: {{weights: {{contrast_t1_t2: 0.5, contrast_t2_t1: 0.5}}, mode: max}}
search: {{num_samples: 2, seed: 0}}
# Two members that look at each other once, both at epoch 2 (synch): the lower copies the upper, for certain, and
# trains epoch 3 with mutated knobs (a look at the last epoch would only copy, and restarting trials is what costs).
scheduler:
  type: pbt
  perturbation_interval: 2
  quantile_fraction: 0.5
  synch: true
  resample_probability: 0
  mutations:
    lr: {{float: [1.0e-4, 1.0e-2], log: true}}
    lambda_cycle: {{float: [2.0, 20.0]}}
resources: {{gpus_per_trial: 0, cpus_per_trial: 1}}
checkpoint: {{every: 10}}      # no checkpoint of their own before the end: only those PBT's looks ask for
select: {{top_k: 1}}
fixed: {json.dumps({**TINY, "epochs": 3})}
"""


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # a real search in a subprocess
def test_a_pbt_search_exploits_and_the_winner_s_schedule_is_exported_reported_and_replayed(tmp_path: Path) -> None:
    (tmp_path / "pbt.yaml").write_text(TINY_PBT)
    p = run("search.run", str(tmp_path / "pbt.yaml"), "--storage", str(tmp_path / "runs"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp_path / "runs" / "pbt"
    trials = {d.name.removeprefix("trial_"): d for d in run_dir.glob("trial_*")}
    # What each trial trained itself, by epoch: its result rows and its lineage's rows that name it. Under synch PBT
    # Ray may pause the upper member too and restore it from its own checkpoint, and its result.json then starts
    # again after that epoch; metrics.jsonl keeps every epoch.
    own = {t: {r["epoch"]: r for r in [*_rows(d / "result.json"), *_rows(d / "metrics.jsonl")] if r[TRAINED_BY] == t}
           for t, d in trials.items()}

    # A member continued another's checkpoint with mutated knobs, as its own records say: restore.log names the
    # trial and epoch, and its next result row was trained by itself with the new knobs.
    exploits = []
    for t, d in trials.items():
        log = (d / "restore.log").read_text() if (d / "restore.log").is_file() else ""
        for m in re.finditer(r"continued trial (\S+)'s checkpoint of epoch (\d+): (.*)", log):
            exploits.append((t, m.group(1), int(m.group(2)), m.group(3)))
    first = next(e for e in exploits if e[2] == 2)
    member, clone, epoch, changes = first
    assert clone != member and clone in trials
    after, before = own[member][epoch + 1], own[clone][epoch]
    assert after[TRAINED_BY] == member and before[TRAINED_BY] == clone
    assert after[KNOBS] != before[KNOBS]  # mutated: each knob x0.8 or x1.2 of the clone's, kept in its range
    # Its metrics.jsonl is its lineage: the clone's epochs, then its own with the new knobs.
    lineage = [(r["epoch"], r[TRAINED_BY], r[KNOBS]) for r in _rows(trials[member] / "metrics.jsonl")]
    assert lineage[:epoch + 1] == [*((e, clone, own[clone][e][KNOBS]) for e in range(1, epoch + 1)),
                                   (epoch + 1, member, after[KNOBS])]
    for knob, value in after[KNOBS].items():
        assert f"{knob} {before[KNOBS][knob]!r} -> {value!r}" in changes
        ratio = value / before[KNOBS][knob]
        assert any(math.isclose(ratio, f, rel_tol=1e-9) for f in (0.8, 1.2)) or value in (1e-4, 1e-2, 2.0, 20.0)

    # The export carries the winner's schedule: its rows' knobs epoch by epoch, and the lineage that trained them.
    best = run_dir / "best"
    schedule = Schedule.load(best / SCHEDULE)
    winner = json.loads((best / "metrics.json").read_text())["trial_id"]
    assert schedule.knobs == ("lr", "lambda_cycle") and schedule.last_epoch in (2, 3)  # the best checkpoint's
    for row in schedule.epochs:
        trained = own[row[TRAINED_BY]][row["epoch"]]
        assert trained[KNOBS] == {k: row[k] for k in schedule.knobs}
    assert winner in trials
    report = (run_dir / "summary" / "report.md").read_text()
    assert "## The winner's schedule (population-based training)" in report and "](schedule.png)" in report
    assert (run_dir / "summary" / "schedule.png").stat().st_size > 1000
    assert not (run_dir / "optuna.db").exists()  # the searcher is off under PBT

    # Replaying the exported schedule trains each epoch with the same knobs.
    from cyclegan.train import main as train_main

    assert train_main(["--schedule", str(best / SCHEDULE), "--out", str(tmp_path / "replay"), "--device", "cpu"]) == 0
    replayed = _rows(tmp_path / "replay" / "metrics.jsonl")
    assert [(r["epoch"], r[KNOBS]) for r in replayed] == [
        (e["epoch"], {k: e[k] for k in schedule.knobs}) for e in schedule.epochs]
