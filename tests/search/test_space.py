"""Tests of the search space loader: shipped spaces, refusals, Optuna draws, overrides and the Ray objects.

    python -m pytest tests/search/test_space.py -q
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

import cyclegan.metrics
from cyclegan.config import CHOICES, FIELD_NAMES, FIELD_TYPES, TrainConfig
from cyclegan.memory import DataSize
from search.packing import FixedShare
from search.population import MUTABLE
from search.space import (
    DEFAULT_WEIGHTS,
    POINT_NAME,
    REPORTED_METRICS,
    TOP_KEYS,
    Objective,
    PointsSearcher,
    Space,
    SpaceError,
    deepest_allowed,
    load_space,
    space_from_dict,
)

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "spaces").glob("*.yaml"))
LR = "params: {lr: {float: [1.0e-5, 1.0e-3], log: true}}\n"  # a minimal valid params section

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def deepest(resize: int) -> int:
    return int(math.log2(resize))


# --- the shipped spaces -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_space_loads_and_opens_with_a_comment(path: Path) -> None:
    space = load_space(path)
    assert path.read_text().startswith("# ")
    assert space.objective.weights == DEFAULT_WEIGHTS
    for config in space.trial_points() or []:
        TrainConfig.from_dict({k: v for k, v in config.items() if k != POINT_NAME})
    if path.name == "study_v1_v4.yaml":
        assert [c[POINT_NAME] for c in space.trial_points()] == ["V1", "V2", "V3", "V4"]


def test_shipped_spaces_are_the_three_of_the_design() -> None:
    # ... an example that compares the generators, which full.yaml leaves at the U-Net until a GPU run has, and one of
    # population-based training.
    assert [p.name for p in SPACES] == ["full.yaml", "generators.yaml", "pbt.yaml", "quickstart.yaml",
                                        "study_v1_v4.yaml", "unet_depth.yaml"]
    assert "generator" not in load_space(ROOT / "spaces/full.yaml").params
    generators = load_space(ROOT / "spaces/generators.yaml")
    assert set(generators.params["generator"].choices) == {"unet", "resnet_9blocks", "resnet_6blocks"}
    assert "lr_d_scale" in generators.params


def test_study_space_is_the_four_runs() -> None:
    space = load_space(ROOT / "spaces/study_v1_v4.yaml")
    knobs = ("resize", "batch_size", "unet_depth", "disc_layers", "epochs")
    runs = [tuple(c[k] for k in knobs) for c in space.trial_points()]
    assert runs == [(128, 40, 5, 2, 300), (256, 5, 5, 2, 300), (256, 2, 8, 3, 300), (256, 2, 8, 3, 100)]
    for config in space.trial_points():
        assert config["gan_loss"] == "bce" and config["lr"] == 2e-4 and config["upsample"] == "transpose"
        assert (config["lambda_cycle"], config["lambda_identity"], config["lambda_disc"]) == (10.0, 0.5, 0.5)
        assert config["dropout"] == 0.5
    assert space.scheduler == "none" and space.gpus_per_trial == 1
    assert isinstance(space.make_scheduler(), FIFOScheduler)


def test_unet_depth_space_is_every_allowed_combination() -> None:
    space = load_space(ROOT / "spaces/unet_depth.yaml")
    points = space.trial_points()
    combos = {(c["resize"], c["unet_depth"], c["batch_size"]) for c in points}
    expected = {(r, d, b) for r in (128, 256) for d in range(5, 9) for b in (2, 5) if 2**d <= r}
    assert combos == expected and len(points) == len(expected) == space.num_samples == 14
    assert all(c["epochs"] == 100 for c in points)
    assert space.max_t == 100 and space.grace_period == 10


# --- refusals -----------------------------------------------------------------------------------------------------

REFUSALS = {
    "bad yaml": ("params: {resize: [128,\n", "(file)"),
    "top level not a mapping": ("- resize\n- lr\n", "(top level)"),
    "empty file": ("", "(top level)"),
    "unknown top-level key": ("paramz: {lr: {float: [1.0e-5, 1.0e-3]}}\n", "paramz"),
    "both params and points": (LR + "points: [{resize: 128}]\n", "(top level)"),
    "neither params nor points": ("fixed: {lr: 1.0e-4}\n", "(top level)"),
    "unknown nested key": ("search: {samplr: tpe}\n" + LR, "search.samplr"),
    "section not a mapping": ("search: tpe\n" + LR, "search"),
    "unknown distribution key": ("params: {lr: {float: [1.0e-5, 1.0e-3], lg: true}}\n", "params.lr.lg"),
    "two distributions": ("params: {lr: {float: [1.0e-5, 1.0e-3], choice: [1.0e-4]}}\n", "params.lr"),
    "distribution not a mapping": ("params: {lr: [1.0e-5, 1.0e-3]}\n", "params.lr"),
    "unknown parameter": ("params: {learning_rate: {float: [1.0e-5, 1.0e-3]}}\n", "params.learning_rate"),
    "unknown fixed knob": ("fixed: {depth: 5}\n" + LR, "fixed.depth"),
    "fixed and searched": ("fixed: {lr: 1.0e-4}\n" + LR, "params.lr"),
    "wrong type in choice": ("params: {batch_size: {choice: [2, five]}}\n", "params.batch_size.choice[1]"),
    "bool for an int": ("params: {batch_size: {choice: [2, true]}}\n", "params.batch_size.choice[1]"),
    "wrong fixed type": ("fixed: {epochs: 1.5}\n" + LR, "fixed.epochs"),
    "not a finite float": ("fixed: {lambda_cycle: .nan}\n" + LR, "fixed.lambda_cycle"),
    "value out of the config's bounds": ("params: {lr: {float: [-1.0, 1.0e-3]}}\n", "params.lr.float[0]"),
    "choice outside CHOICES": ("params: {gan_loss: {choice: [lsgan, wgan]}}\n", "params.gan_loss.choice[1]"),
    "repeated choice": ("params: {resize: {choice: [128, 128]}}\n", "params.resize.choice[1]"),
    "empty choice": ("params: {resize: {choice: []}}\n", "params.resize.choice"),
    "float range on an int knob": ("params: {batch_size: {float: [1, 4]}}\n", "params.batch_size.float"),
    "int range on a float knob": ("params: {lr: {int: [1, 2]}}\n", "params.lr.int"),
    "range on a str knob": ("params: {gan_loss: {int: [1, 2]}}\n", "params.gan_loss.int"),
    "range of three": ("params: {epochs: {int: [1, 2, 3]}}\n", "params.epochs.int"),
    "empty range": ("params: {epochs: {int: [50, 50]}}\n", "params.epochs.int"),
    "reversed range": ("params: {epochs: {int: [300, 50]}}\n", "params.epochs.int"),
    "step not dividing": ("params: {epochs: {int: [50, 300], step: 60}}\n", "params.epochs.step"),
    "step below 1": ("params: {epochs: {int: [50, 300], step: 0}}\n", "params.epochs.step"),
    "float step not dividing": ("params: {lambda_cycle: {float: [1.0, 2.0], step: 0.3}}\n", "params.lambda_cycle.step"),
    "log with low 0": ("params: {lambda_identity: {float: [0.0, 1.0], log: true}}\n", "params.lambda_identity.log"),
    "log not a bool": ("params: {lr: {float: [1.0e-5, 1.0e-3], log: yes please}}\n", "params.lr.log"),
    "log with a step": ("params: {epochs: {int: [50, 300], step: 50, log: true}}\n", "params.epochs.step"),
    "metric not reported": ("objective: {metric: ssim}\n" + LR, "objective.metric"),
    "objective on itself": ("objective: {metric: objective}\n" + LR, "objective.metric"),
    "empty weights": ("objective: {weights: {}}\n" + LR, "objective.weights"),
    "weight of an unknown metric": ("objective: {weights: {ssim_t1: 1.0}}\n" + LR, "objective.weights.ssim_t1"),
    "zero weight": ("objective: {weights: {ssim_t1_t1: 0}}\n" + LR, "objective.weights.ssim_t1_t1"),
    "metric and weights": ("objective: {metric: ssim_t1_t1, weights: {ssim_t2_t2: 1}}\n" + LR, "objective"),
    "bad mode": ("objective: {metric: ssim_t1_t1, mode: maximize}\n" + LR, "objective.mode"),
    "unknown sampler": ("search: {sampler: bayes}\n" + LR, "search.sampler"),
    "grid over a float range": ("search: {sampler: grid}\n" + LR, "params.lr"),
    "grid too large": ("search: {sampler: grid}\nparams: {seed: {int: [0, 100000]}}\n", "search.sampler"),
    "num_samples 0": ("search: {num_samples: 0}\n" + LR, "search.num_samples"),
    "max_concurrent 0": ("search: {max_concurrent: 0}\n" + LR, "search.max_concurrent"),
    "negative seed": ("search: {seed: -1}\n" + LR, "search.seed"),
    "negative gpus": ("resources: {gpus_per_trial: -0.5}\n" + LR, "resources.gpus_per_trial"),
    "negative cpus": ("resources: {cpus_per_trial: -1}\n" + LR, "resources.cpus_per_trial"),
    "fractional gpus above one": ("resources: {gpus_per_trial: 1.5}\n" + LR, "resources.gpus_per_trial"),
    "gpus a word other than auto": ("resources: {gpus_per_trial: Auto}\n" + LR, "resources.gpus_per_trial"),
    "trials_per_gpu 0": ("resources: {gpus_per_trial: auto, trials_per_gpu: 0}\n" + LR, "resources.trials_per_gpu"),
    "trials_per_gpu above 100": ("resources: {gpus_per_trial: auto, trials_per_gpu: 101}\n" + LR,
                                 "resources.trials_per_gpu"),
    "trials_per_gpu a fraction": ("resources: {gpus_per_trial: auto, trials_per_gpu: 2.5}\n" + LR,
                                  "resources.trials_per_gpu"),
    "trials_per_gpu with a fixed share": ("resources: {gpus_per_trial: 0.25, trials_per_gpu: 4}\n" + LR,
                                          "resources.trials_per_gpu"),
    "gpu_memory_gib 0": ("resources: {gpus_per_trial: auto, gpu_memory_gib: 0}\n" + LR, "resources.gpu_memory_gib"),
    "gpu_memory_gib a word": ("resources: {gpus_per_trial: auto, gpu_memory_gib: lots}\n" + LR,
                              "resources.gpu_memory_gib"),
    "unknown scheduler": ("scheduler: {type: hyperband}\n" + LR, "scheduler.type"),
    "asha key with none": ("scheduler: {type: none, grace_period: 5}\n" + LR, "scheduler.grace_period"),
    "reduction factor 1": ("scheduler: {reduction_factor: 1}\n" + LR, "scheduler.reduction_factor"),
    "max_t below grace": ("scheduler: {grace_period: 10, max_t: 5}\n" + LR, "scheduler.max_t"),
    "checkpoint every 0": ("checkpoint: {every: 0}\n" + LR, "checkpoint.every"),
    "checkpoint keep 0": ("checkpoint: {keep: 0}\n" + LR, "checkpoint.keep"),
    "top_k 0": ("select: {top_k: 0}\n" + LR, "select.top_k"),
    "negative retries": ("failure: {max_failures: -1}\n" + LR, "failure.max_failures"),
    # Constraints no point satisfies.
    "depth no resize allows": ("params: {resize: {choice: [128, 256]}, unet_depth: {int: [9, 10]}}\n",
                               "params.unet_depth"),
    "disc depth no resize allows": ("fixed: {unet_depth: 5}\n"
                                    "params: {resize: {choice: [128, 256]}, disc_layers: {int: [8, 9]}}\n",
                                    "params.disc_layers"),
    "depth the small resize cannot take": ("params: {resize: {choice: [16, 256]}, unet_depth: {int: [5, 8]}}\n",
                                           "params.unet_depth"),
    "depth choice a resize cannot take": ("params: {resize: {choice: [128, 256]}, unet_depth: {choice: [5, 8]}}\n",
                                          "params.unet_depth"),
    "fixed depth, resize too small": ("fixed: {unet_depth: 8}\nparams: {resize: {choice: [128, 256]}}\n",
                                      "params.resize"),
    "default depth, resize too small": ("params: {resize: {choice: [64, 256]}}\n", "params.resize"),
    "fixed depth and resize clash": ("fixed: {resize: 64, unet_depth: 8}\n" + LR, "fixed.unet_depth"),
    "absurd depth": ("fixed: {unet_depth: 100000}\n" + LR, "fixed.unet_depth"),
    # Points.
    "points not a list": ("points: {resize: 128}\n", "points"),
    "empty points": ("points: []\n", "points"),
    "point not a mapping": ("points: [{lr: 1.0e-4}, 256]\n", "points[1]"),
    "point with an unknown knob": ("points: [{lr: 1.0e-4}, {size: 128}]\n", "points[1].size"),
    "point with a wrong type": ("points: [{resize: 128, lr: fast}]\n", "points[0].lr"),
    "point that is no config": ("points: [{resize: 128, unet_depth: 8}]\n", "points[0]"),
    "point knob also fixed": ("fixed: {lr: 1.0e-4}\npoints: [{lr: 2.0e-4}]\n", "points[0].lr"),
    "fixed that no point can use": ("fixed: {resize: 64}\npoints: [{lr: 2.0e-4}]\n", "points[0]"),
    "points with a sampler": ("search: {sampler: tpe}\npoints: [{resize: 128, unet_depth: 5}]\n", "search.sampler"),
    # The U-Net's knobs where no trial has a U-Net.
    "fixed depth with a ResNet": ("fixed: {generator: resnet_9blocks, unet_depth: 5}\n" + LR, "fixed.unet_depth"),
    "searched depth with a ResNet": ("fixed: {generator: resnet_6blocks}\nparams: {unet_depth: {int: [5, 8]}}\n",
                                     "params.unet_depth"),
    "upsample with only ResNets": ("params: {generator: {choice: [resnet_9blocks, resnet_6blocks]},"
                                   " upsample: {choice: [transpose, resize]}}\n", "params.upsample"),
    "depth in a ResNet's point": ("points: [{unet_depth: 6}, {generator: resnet_9blocks, unet_depth: 5}]\n",
                                  "points[1].unet_depth"),
    "fixed dropout, only ResNet points": ("fixed: {dropout: 0.0}\npoints: [{generator: resnet_9blocks}]\n",
                                          "fixed.dropout"),
    "ResNet size not a multiple of 4": ("fixed: {generator: resnet_9blocks, resize: 66}\n" + LR, "fixed"),
}


@pytest.mark.parametrize(("text", "key"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_names_file_and_key_in_one_line(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as caught:
        load_space(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert "; allowed: " in message


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError, match=rf"^{missing}: \(file\): cannot read it"):
        load_space(missing)


def test_unknown_key_message_lists_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(SpaceError) as caught:
        load_space(write(tmp_path, "params: {learning_rate: {float: [1.0e-5, 1.0e-3]}}\n"))
    assert "allowed: " + ", ".join(FIELD_NAMES) in str(caught.value)


def test_yaml_floats_without_a_point_and_ints_for_floats_are_accepted(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-4 as a string and 1 as an int; the config's own rules accept both for a float knob.
    space = load_space(write(tmp_path, "fixed: {lambda_cycle: 10}\nparams: {lr: {float: [1e-5, 1e-3], log: true}}\n"))
    assert space.fixed == {"lambda_cycle": 10.0}
    assert (space.params["lr"].low, space.params["lr"].high) == (1e-5, 1e-3)


def test_defaults_of_a_minimal_space(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, LR))
    assert (space.sampler, space.num_samples, space.max_concurrent, space.seed) == ("tpe", 16, None, 0)
    assert (space.scheduler, space.grace_period, space.reduction_factor) == ("asha", 10, 3.0)
    assert space.max_t == TrainConfig().epochs  # the longest run possible: the config's default epochs
    assert (space.checkpoint_every, space.checkpoint_keep, space.top_k, space.max_failures) == (1, 2, 3, 2)
    assert space.objective.weights == DEFAULT_WEIGHTS and space.objective.mode == "max"
    assert space.points is None and list(space.params) == ["lr"]


def test_max_t_follows_the_longest_epochs(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "params: {epochs: {int: [50, 300], step: 50}}\n"))
    assert space.max_t == 300
    space = load_space(write(tmp_path, "scheduler: {type: asha}\npoints: [{epochs: 20}, {epochs: 40}]\n"))
    assert space.max_t == 40


# --- Optuna draws -------------------------------------------------------------------------------------------------

CONSTRAINED = {
    "fixed": {"batch_size": 2, "gan_loss": "bce"},
    "params": {
        "lr": {"float": [1.0e-5, 1.0e-3], "log": True},
        "unet_depth": {"int": [3, 8]},  # listed before resize: still drawn after it
        "resize": {"choice": [32, 128, 256]},
        "disc_layers": {"int": [2, 6], "step": 2},
        "epochs": {"int": [50, 300], "step": 50},
        "lambda_cycle": {"float": [5.0, 20.0], "step": 0.5},
        "upsample": {"choice": ["transpose", "resize"]},
    },
}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_define_by_run_keeps_every_draw_inside_the_space(sampler: str) -> None:
    space = space_from_dict({**CONSTRAINED, "search": {"sampler": sampler, "seed": 0}})
    draw = space.define_by_run()
    study = optuna.create_study(sampler=space._optuna_sampler(), direction="maximize")
    configs: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        config = draw(trial)
        configs.append(config)
        return config["unet_depth"] - deepest(config["resize"]) + config["lr"]

    study.optimize(objective, n_trials=200)
    assert len(configs) == 200
    for c in configs:
        assert 2 ** c["unet_depth"] <= c["resize"] and 3 <= c["unet_depth"]
        assert c["disc_layers"] in (2, 4, 6)
        assert c["epochs"] in range(50, 301, 50)
        assert 1e-5 <= c["lr"] <= 1e-3
        assert 5.0 <= c["lambda_cycle"] <= 20.0 and (c["lambda_cycle"] * 2).is_integer()
        assert c["batch_size"] == 2 and c["gan_loss"] == "bce"  # the fixed knobs come back too
        assert set(c) == set(CONSTRAINED["fixed"]) | set(CONSTRAINED["params"])
        TrainConfig.from_dict(c)
    assert {c["resize"] for c in configs} == {32, 128, 256}
    assert {c["unet_depth"] for c in configs if c["resize"] == 256} >= {7, 8}  # the full range where it fits
    assert {c["disc_layers"] for c in configs if c["resize"] == 32} == {2}  # 4 * 2**disc_layers <= resize
    assert min(c["lr"] for c in configs) < 1e-4  # log scale: small rates are drawn as often as large ones


def _reward_depth(space: Space) -> Callable[[optuna.Trial], float]:
    draw = space.define_by_run()
    return lambda trial: draw(trial)["unet_depth"] - deepest(trial.params["resize"])


def test_tpe_learns_within_a_range_that_moves_with_resize() -> None:
    # The depth's upper bound changes with resize between trials; TPE must still model it, not fall back to noise.
    hits = {}
    for sampler in ("tpe", "random"):
        space = space_from_dict({**CONSTRAINED, "search": {"sampler": sampler, "seed": 0}})
        study = optuna.create_study(sampler=space._optuna_sampler(), direction="maximize")
        study.optimize(_reward_depth(space), n_trials=200)
        last = study.trials[-50:]
        hits[sampler] = sum(t.params["unet_depth"] == deepest(t.params["resize"]) for t in last)
    assert hits["tpe"] > 2 * hits["random"], hits


def test_optuna_search_suggests_flat_configs_and_pickles(tmp_path: Path) -> None:
    space = load_space(ROOT / "spaces/full.yaml")
    searcher = space.make_searcher()
    assert isinstance(searcher, OptunaSearch)
    for i in range(12):
        config = searcher.suggest(f"t{i}")
        assert set(config) <= set(FIELD_NAMES) and not any(isinstance(v, dict) for v in config.values())
        assert 2 ** config["unet_depth"] <= config["resize"]
        TrainConfig.from_dict(config)
        searcher.on_trial_complete(f"t{i}", result={"objective": 0.1 * i})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune saves it with the experiment, for --resume
    assert pickle.loads(pickle.dumps(space.define_by_run())) == space.define_by_run()


@pytest.mark.parametrize(("knob", "resize", "deepest"), [
    ("unet_depth", 256, 8), ("unet_depth", 128, 7), ("unet_depth", 255, 0), ("unet_depth", 96, 5),
    ("disc_layers", 256, 6), ("disc_layers", 32, 3), ("disc_layers", 7, 0)])
def test_deepest_allowed_is_the_configs_rule(knob: str, resize: int, deepest: int) -> None:
    assert deepest_allowed(knob, resize) == deepest


GENERATORS = {
    "fixed": {"upsample": "resize"},  # a U-Net knob in fixed: the U-Net trials take it, the ResNet ones ignore it
    "params": {
        "unet_depth": {"int": [5, 7]},  # listed first: still drawn after the generator that decides it
        "lr_d_scale": {"float": [0.25, 4.0], "log": True},
        "generator": {"choice": ["unet", "resnet_9blocks", "resnet_6blocks"]},
        "resize": {"choice": [128, 256]},
    },
}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_searched_generator_draws_the_unet_depth_for_the_unet_only(sampler: str) -> None:
    space = space_from_dict({**GENERATORS, "search": {"sampler": sampler, "seed": 0}})
    draw = space.define_by_run()
    study = optuna.create_study(sampler=space._optuna_sampler(), direction="maximize")
    configs: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        configs.append(draw(trial))
        return configs[-1]["lr_d_scale"] + (configs[-1]["generator"] == "resnet_6blocks")

    study.optimize(objective, n_trials=60)
    for c in configs:
        assert ("unet_depth" in c) == (c["generator"] == "unet"), c
        assert 0.25 <= c["lr_d_scale"] <= 4.0
        TrainConfig.from_dict(c)
    assert {c["generator"] for c in configs} == {"unet", "resnet_9blocks", "resnet_6blocks"}
    assert {c["unet_depth"] for c in configs if c["generator"] == "unet"} == {5, 6, 7}
    # Optuna records each trial's own knobs: a ResNet trial has no unet_depth to learn from.
    assert all(("unet_depth" in t.params) == (t.params["generator"] == "unet") for t in study.trials)


def test_a_grid_over_generators_varies_the_unet_knobs_for_the_unet_only() -> None:
    space = space_from_dict({"search": {"sampler": "grid"}, "fixed": {"resize": 128},
                             "params": {"generator": {"choice": ["unet", "resnet_6blocks"]},
                                        "unet_depth": {"int": [5, 7]}, "batch_size": {"choice": [1, 2]}}})
    points = space.trial_points()
    assert sorted((p["generator"], p.get("unet_depth"), p["batch_size"]) for p in points) == sorted(
        [("unet", d, b) for d in (5, 6, 7) for b in (1, 2)] + [("resnet_6blocks", None, b) for b in (1, 2)])


def test_a_resnet_space_needs_no_unet_depth_that_fits_its_resize() -> None:
    """The config's default unet_depth (8) would not fit resize 64; a ResNet-only space does not care."""
    space = space_from_dict({"fixed": {"generator": "resnet_9blocks"}, "params": {"resize": {"choice": [64, 128]}}})
    assert space.fixed == {"generator": "resnet_9blocks"}
    with pytest.raises(SpaceError, match="params.resize"):
        space_from_dict({"params": {"resize": {"choice": [64, 128]}}})  # a U-Net of the default depth 8


def test_points_space_has_nothing_to_sample() -> None:
    with pytest.raises(ValueError, match="nothing to sample"):
        load_space(ROOT / "spaces/study_v1_v4.yaml").define_by_run()


# --- overrides ----------------------------------------------------------------------------------------------------

def test_override_moves_a_searched_knob_to_fixed() -> None:
    space = load_space(ROOT / "spaces/full.yaml").with_overrides({"lr": 1e-4, "resize": 32, "epochs": 1})
    assert "lr" not in space.params and "resize" not in space.params
    assert space.fixed == {"lr": 1e-4, "resize": 32, "epochs": 1}
    assert space.max_t == 1 and space.grace_period == 1  # ASHA shrinks to the one-epoch smoke run
    config = space.define_by_run()(optuna.create_study().ask())
    assert config["lr"] == 1e-4 and config["resize"] == 32 and 2 ** config["unet_depth"] <= 32


def test_override_replaces_a_fixed_knob_in_every_point() -> None:
    space = load_space(ROOT / "spaces/study_v1_v4.yaml").with_overrides({"epochs": 2, "lr": 1e-3})
    assert [c["epochs"] for c in space.trial_points()] == [2, 2, 2, 2]
    assert all(c["lr"] == 1e-3 for c in space.trial_points())


def test_overriding_every_searched_knob_leaves_one_trial() -> None:
    space = load_space(ROOT / "spaces/unet_depth.yaml").with_overrides(
        {"resize": 32, "unet_depth": 5, "batch_size": 2, "epochs": 1})
    assert space.params == {} and space.num_samples == 1
    assert space.trial_points() == [{**space.fixed}]
    assert isinstance(space.make_searcher(), PointsSearcher)


def test_setting_a_resnet_generator_drops_the_unet_knobs_and_refuses_them_set_with_it() -> None:
    space = load_space(ROOT / "spaces/full.yaml").with_overrides({"generator": "resnet_6blocks"})
    assert space.fixed == {"generator": "resnet_6blocks"}
    assert not {"unet_depth", "dropout", "upsample"} & set(space.params) and "resize" in space.params
    points = load_space(ROOT / "spaces/study_v1_v4.yaml").with_overrides({"generator": "resnet_9blocks"}).trial_points()
    assert all("unet_depth" not in p and "dropout" not in p and p["generator"] == "resnet_9blocks" for p in points)
    path = ROOT / "spaces/full.yaml"
    with pytest.raises(SpaceError) as caught:
        load_space(path).with_overrides({"generator": "resnet_9blocks", "unet_depth": 5})
    assert str(caught.value).startswith(f"{path} with --set generator='resnet_9blocks' --set unet_depth=5: "
                                        "fixed.unet_depth: shapes the U-Net only")


@pytest.mark.parametrize(("overrides", "key"), [
    ({"learning_rate": 1e-4}, "--set learning_rate"),
    ({"lr": "fast"}, "--set lr"),
    ({"batch_size": 2.5}, "--set batch_size"),
    ({"gan_loss": "wgan"}, "--set gan_loss"),
    ({"resize": 16}, "params.unet_depth"),  # depth 5 at least: resize 16 leaves it nothing
])
def test_override_refusals(overrides: dict, key: str) -> None:
    path = ROOT / "spaces/unet_depth.yaml"
    with pytest.raises(SpaceError) as caught:
        load_space(path).with_overrides(overrides)
    message = str(caught.value)
    assert message.startswith(f"{path}") and f": {key}: " in message and "\n" not in message


def test_replace_search_applies_the_command_line_flags() -> None:
    space = load_space(ROOT / "spaces/full.yaml").replace_search(
        num_samples=2, max_concurrent=1, gpus_per_trial=0, cpus_per_trial=2)
    assert (space.num_samples, space.max_concurrent, space.gpus_per_trial, space.cpus_per_trial) == (2, 1, 0, 2)
    assert space.resources() == {"cpu": 2, "gpu": 0}
    with pytest.raises(SpaceError, match=r"with --num-samples 0: search\.num_samples: "):
        space.replace_search(num_samples=0)
    assert load_space(ROOT / "spaces/study_v1_v4.yaml").replace_search(num_samples=5).trial_points()[4]["seed"] == 1


def test_auto_gpus_give_tune_a_callable_that_sizes_each_trial(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "resources: {gpus_per_trial: auto, cpus_per_trial: 2}\n" + LR))
    assert space.auto_gpus and space.wants_gpus and (space.trials_per_gpu, space.gpu_memory_gib) == (8, None)
    # Without the GPU's memory (no GPU on the driver, no gpu_memory_gib) auto cannot size anything: it says so.
    with pytest.raises(SpaceError, match=r"resources\.gpu_memory_gib: .*--gpu-memory-gib") as caught:
        space.resources()
    assert "\n" not in str(caught.value)
    phantom = DataSize(40, 40, 7, 7)  # the built-in phantom's counts: its val pass is small
    resources = space.resources(gpu_bytes=16 * 2**30, data=phantom)
    assert (resources.cpus, resources.gpu_bytes, resources.most_per_gpu) == (2, 16 * 2**30, 8)
    tiny = {"resize": 32, "unet_depth": 5, "disc_layers": 2, "ngf": 8, "ndf": 8, "name": "a label"}
    assert resources(tiny) == {"cpu": 2, "gpu": 0.125}  # about 1 GiB: the floor, an eighth
    # Without the data, validation is counted at its bound (64 slices a domain at 256x256): more than the floor.
    assert space.resources(gpu_bytes=16 * 2**30)(tiny)["gpu"] > 0.125
    assert pickle.loads(pickle.dumps(resources)) == resources  # Ray pickles it with the trainable
    # The space's (or the flag's) gpu_memory_gib wins over the driver's GPU: the trials' GPUs may be others.
    sized = space.replace_search(gpu_memory_gib=22).resources(gpu_bytes=80 * 2**30)
    assert sized.gpu_bytes == 22 * 2**30
    # A fixed share from the command line drops auto's own keys, rather than refusing the file's; the GPU's memory
    # stays: a fixed share of it is each trial's cap (an H200 running trials as a 24 GB GPU would).
    packed = load_space(write(tmp_path, "resources: {gpus_per_trial: auto, trials_per_gpu: 4, gpu_memory_gib: 22}\n"
                                        + LR))
    assert packed.replace_search(gpus_per_trial=0.5).resources() == FixedShare(1, 0.5, 22 * 2**30)
    assert packed.replace_search(gpus_per_trial="auto").resources().most_per_gpu == 4
    fixed = space.replace_search(gpus_per_trial=0.5, gpu_memory_gib=22).resources()
    assert fixed({"resize": 32}) == {"cpu": 2, "gpu": 0.5} and pickle.loads(pickle.dumps(fixed)) == fixed
    assert space.replace_search(gpus_per_trial=0.5).resources() == {"cpu": 2, "gpu": 0.5}
    with pytest.raises(SpaceError, match=r"with --gpus-per-trial lots: resources\.gpus_per_trial: got 'lots'; "
                                         r"allowed: auto"):
        space.replace_search(gpus_per_trial="lots")


# --- the Ray objects ----------------------------------------------------------------------------------------------

def test_sampled_space_makes_optuna_and_asha() -> None:
    space = load_space(ROOT / "spaces/full.yaml")
    assert isinstance(space.make_searcher(), OptunaSearch)
    scheduler = space.make_scheduler()
    assert isinstance(scheduler, ASHAScheduler)
    assert (scheduler._time_attr, scheduler._max_t) == ("epoch", 300)
    config = space.tune_config()
    assert isinstance(config, tune.TuneConfig)
    assert (config.metric, config.mode) == ("objective", "max")
    assert (config.num_samples, config.max_concurrent_trials) == (64, 16)
    checkpoint = space.checkpoint_config()
    assert (checkpoint.num_to_keep, checkpoint.checkpoint_score_attribute) == (2, "objective")
    assert space.failure_config().max_failures == 2


def test_samplers_are_seeded_optuna_samplers(tmp_path: Path) -> None:
    kinds = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    for name, kind in kinds.items():
        space = load_space(write(tmp_path, f"search: {{sampler: {name}, seed: 3}}\n" + LR))
        assert isinstance(space._optuna_sampler(), kind)
        first = [space.define_by_run()(optuna.create_study(sampler=space._optuna_sampler()).ask())["lr"]
                 for _ in range(2)]
        assert first[0] == first[1]


def test_points_searcher_hands_out_each_point_once_then_finishes(tmp_path: Path) -> None:
    space = load_space(ROOT / "spaces/study_v1_v4.yaml")
    searcher = space.make_searcher()
    assert isinstance(searcher, PointsSearcher) and isinstance(searcher, Searcher)
    first = searcher.suggest("a")
    assert first == space.trial_points()[0]
    searcher.save(str(tmp_path / "state.pkl"))
    rest = [searcher.suggest(t) for t in "bcd"]
    assert [first, *rest] == space.trial_points()
    assert searcher.suggest("e") == Searcher.FINISHED
    resumed = PointsSearcher([])
    resumed.restore(str(tmp_path / "state.pkl"))
    assert resumed.suggest("b") == rest[0]


def test_objective_value_is_the_weighted_sum() -> None:
    objective = Objective(weights={"ssim_t1_t1": 0.5, "psnr_t1_t2": 0.01})
    assert objective.value({"ssim_t1_t1": 0.8, "psnr_t1_t2": 30.0, "loss_G": 2.0}) == pytest.approx(0.7)
    assert objective.name == "objective"
    with pytest.raises(KeyError, match="psnr_t1_t2"):
        objective.value({"ssim_t1_t1": 0.8})


def test_reported_metrics_are_the_trainers_and_the_objective() -> None:
    assert REPORTED_METRICS == (*cyclegan.metrics.REPORTED_METRICS, "objective")
    assert REPORTED_METRICS[:5] == ("epoch", "loss_cycle", "loss_identity", "loss_G", "loss_D")
    assert "ssim_t2_t1_head" in REPORTED_METRICS and "psnr_t1_t2" in REPORTED_METRICS
    assert REPORTED_METRICS[-1] == "objective" and len(REPORTED_METRICS) == 36
    assert "contrast_t1_t2" in REPORTED_METRICS and "contrast_t2_t1" in REPORTED_METRICS
    assert "tissue_t1_t2" in REPORTED_METRICS and "tissue_t2_t1" in REPORTED_METRICS


# --- anything thrown at the loader --------------------------------------------------------------------------------

_WORDS = [*TOP_KEYS, *FIELD_NAMES, *REPORTED_METRICS, "choice", "int", "float", "step", "log", "metric", "weights",
          "mode", "max", "min", "sampler", "tpe", "grid", "random", "cmaes", "num_samples", "type", "asha", "none",
          "grace_period", "max_t", "gpus_per_trial", "lsgan", "bce", "transpose", "pbt", "pb2", "perturbation_interval",
          "mutations", "synch", "quantile_fraction"]
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 600), st.integers(), st.floats(), st.text(max_size=8),
                     st.sampled_from(_WORDS))
_keys = st.one_of(st.sampled_from(_WORDS), st.text(max_size=6), st.integers(-2, 2))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_keys, inner, max_size=4)), max_leaves=12)
_distribution = st.one_of(
    st.fixed_dictionaries({"choice": st.lists(_scalars, max_size=4)}),
    st.fixed_dictionaries({"int": st.lists(st.integers(-2, 400), min_size=2, max_size=2)},
                          optional={"step": _scalars, "log": _scalars}),
    st.fixed_dictionaries({"float": st.lists(st.floats(-1, 2), min_size=2, max_size=2)},
                          optional={"step": _scalars, "log": _scalars}),
    _values,
)
def _knob_values(name: str) -> st.SearchStrategy:
    """Values near what a knob accepts, with some just outside it, so that many generated spaces load."""
    kind = FIELD_TYPES[name]
    if name in CHOICES:
        return st.sampled_from([*CHOICES[name], "bogus"])
    if name == "resize":
        return st.sampled_from([1, 16, 32, 64, 128, 256, 300])
    if kind == "int":
        return st.integers(-1, 10) if name in ("unet_depth", "disc_layers") else st.integers(-1, 400)
    if kind == "float":
        return st.one_of(st.floats(-0.1, 1.2), st.floats(1e-6, 30.0), st.integers(0, 3))
    return st.booleans()


@st.composite
def _plausible_spaces(draw: st.DrawFn) -> dict:
    names = st.sampled_from(FIELD_NAMES)
    params = draw(_plausible_params())
    raw: dict = {"params": params, "fixed": draw(st.dictionaries(names, st.deferred(lambda: _any_knob), max_size=3))}
    if draw(st.booleans()):
        raw["search"] = {"sampler": draw(st.sampled_from(["tpe", "random", "grid"]))}
    if draw(st.booleans()):
        del raw["params"]
        raw["points"] = draw(st.lists(st.dictionaries(names, st.deferred(lambda: _any_knob), max_size=3),
                                      min_size=1, max_size=3))
        raw.pop("search", None)
    if draw(st.booleans()):
        raw["scheduler"] = {"type": "pbt", "perturbation_interval": draw(st.integers(0, 3)),
                            "mutations": draw(_plausible_params(knobs=st.sampled_from(MUTABLE + ("ngf",))))}
        if draw(st.booleans()):
            raw.pop("params", None)
    return raw


@st.composite
def _plausible_params(draw: st.DrawFn, knobs: st.SearchStrategy | None = None) -> dict:
    names = st.sampled_from(FIELD_NAMES) if knobs is None else knobs
    params = {}
    for name in draw(st.lists(names, min_size=1, max_size=4, unique=True)):
        values = _knob_values(name)
        kind = draw(st.sampled_from(["choice", FIELD_TYPES[name]]))
        if kind == "choice" or kind not in ("int", "float"):
            params[name] = {"choice": draw(st.lists(values, min_size=1, max_size=3))}
            continue
        low, high = sorted(draw(st.lists(values, min_size=2, max_size=2)))
        spec = {kind: [low, high]}
        if draw(st.booleans()):
            spec["step"] = draw(st.sampled_from([1, 2, 0.5, 50]))
        if draw(st.booleans()):
            spec["log"] = True
        params[name] = spec
    return params


_any_knob = st.sampled_from(FIELD_NAMES).flatmap(_knob_values)
_spaces = st.one_of(
    _plausible_spaces(),
    st.dictionaries(_keys, _values, max_size=5),
    st.fixed_dictionaries({}, optional={
        "params": st.dictionaries(st.sampled_from(FIELD_NAMES), _distribution, max_size=4),
        "points": st.lists(st.dictionaries(st.sampled_from(FIELD_NAMES), _scalars, max_size=4), max_size=3),
        "fixed": st.dictionaries(st.sampled_from(FIELD_NAMES), _scalars, max_size=3),
        "search": st.dictionaries(st.sampled_from(["sampler", "num_samples", "seed"]), _scalars, max_size=2),
        "scheduler": st.one_of(
            st.dictionaries(st.sampled_from(["type", "grace_period", "max_t"]), _scalars, max_size=2),
            st.fixed_dictionaries({"type": st.sampled_from(["pbt", "pb2"]), "perturbation_interval": _scalars},
                                  optional={"mutations": st.dictionaries(st.sampled_from(FIELD_NAMES), _distribution,
                                                                         max_size=3),
                                            "quantile_fraction": _scalars, "synch": _scalars})),
        "objective": st.dictionaries(st.sampled_from(["metric", "weights", "mode"]), _values, max_size=2),
    }),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_spaces)
def test_loader_returns_a_space_or_a_space_error(raw: object) -> None:
    try:
        space = space_from_dict(raw, "fuzz.yaml")
    except SpaceError as e:
        assert str(e).startswith("fuzz.yaml: ") and "\n" not in str(e)
        return
    assert isinstance(space, Space)
    # A space that loads runs: every trial it can produce is a valid config.
    for config in space.trial_points() or []:
        TrainConfig.from_dict({k: v for k, v in config.items() if k != POINT_NAME})
    if space.population is not None:
        for config in space.initial_population():
            TrainConfig.from_dict({k: v for k, v in config.items() if k != POINT_NAME})
    if space.points is None and space.sampler != "grid":
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(3):
            TrainConfig.from_dict(space.define_by_run()(study.ask()))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=80), _spaces.map(lambda d: yaml.safe_dump(d, default_flow_style=True))))
def test_any_text_loads_or_is_refused(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "space.yaml"
    path.write_text(text)
    try:
        load_space(path)
    except SpaceError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)


def test_more_samples_than_points_repeat_the_points_with_the_next_seeds(tmp_path):
    path = tmp_path / "repeat.yaml"
    path.write_text("search: {num_samples: 5}\npoints: [{lr: 1.0e-4}, {lr: 2.0e-4, seed: 7}]\n")
    configs = load_space(path).trial_points()
    assert [(c["lr"], c.get("seed")) for c in configs] == [
        (1e-4, None), (2e-4, 7), (1e-4, 1), (2e-4, 8), (1e-4, 2)]


def test_a_points_space_refuses_more_samples_than_a_driver_can_list() -> None:
    # Ray lists a points space's trials up front: a billion of them hung the driver (found by the fuzz test above).
    with pytest.raises(SpaceError, match=r"search\.num_samples: got 1000000000; allowed: an int in 1\.\.100000"):
        load_space(ROOT / "spaces/study_v1_v4.yaml").replace_search(num_samples=10**9)
    assert len(load_space(ROOT / "spaces/study_v1_v4.yaml").replace_search(num_samples=8).trial_points()) == 8
