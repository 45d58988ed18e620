"""A checkpoint continued with other knobs (PBT's exploit, a replayed schedule): what changes, what persists.

    python -m pytest tests/cyclegan/test_continuable.py -q
"""

from __future__ import annotations

import pytest
import torch

from cyclegan import checkpoint, training_state
from cyclegan.config import CONTINUABLE, FIELD_TYPES, FIXED_FOR_RUN, TrainConfig
from cyclegan.data import load_data
from cyclegan.train import CycleGAN, Trainer, fit


def _other_value(cfg: TrainConfig, knob: str):
    value = getattr(cfg, knob)
    if FIELD_TYPES[knob] == "int":
        return value + 1
    return value * 0.5 if value > 0 else 0.1  # valid for every float knob: rates, weights, betas, dropout, noise


@pytest.mark.parametrize("knob", CONTINUABLE)
def test_no_continuable_knob_changes_a_networks_shape(tiny_cfg: TrainConfig, knob: str) -> None:
    # The rule is generic (every number knob not in FIXED_FOR_RUN); this is what keeps it true when knobs are added.
    shapes = lambda cfg: {f"{n}.{k}": v.shape for n, net in CycleGAN.build(cfg).named().items()  # noqa: E731
                          for k, v in net.state_dict().items()}
    assert shapes(tiny_cfg.replace(**{knob: _other_value(tiny_cfg, knob)})) == shapes(tiny_cfg)


def test_the_knobs_fixed_for_a_run_are_numbers_of_the_config() -> None:
    assert set(FIXED_FOR_RUN) <= {k for k, t in FIELD_TYPES.items() if t in ("int", "float")}
    assert not set(FIXED_FOR_RUN) & set(CONTINUABLE)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=4, epochs=2, pool_size=4,
                      lr_schedule="linear")
    path = tmp_path_factory.mktemp("ckpt") / checkpoint.CHECKPOINT
    fit(cfg.replace(epochs=4), load_data("synthetic", 32), device="cpu", until=2,
        report=lambda m, save: save(path))
    return checkpoint.load(path)


def test_an_exploit_trains_on_with_the_new_rates_and_keeps_what_was_learnt(one_epoch: dict) -> None:
    saved = TrainConfig.from_dict(one_epoch["config"])
    new = saved.replace(lr=saved.lr * 3, beta1=0.9, lambda_cycle=4.0)
    t = Trainer.build(new, "cpu")
    assert training_state.restore(one_epoch, t) == 2
    # Linear decay over 4 epochs keeps the rate for the first 2: the new base rate, at the checkpoint's epoch.
    factor = 1.0 - max(0, 2 - 2) / 3
    for opt in (t.opt_g, t.opt_d):
        for g in opt.param_groups:
            assert float(g["lr"]) == pytest.approx(new.lr * factor) and g["initial_lr"] == new.lr
            assert g["betas"] == (0.9, saved.beta2)
    for sched in t.scheds:
        assert sched.base_lrs == [new.lr] and sched.last_epoch == 2
    # Adam's moments and step counts, the pools and the weights are the checkpoint's.
    for name, opt in (("g", t.opt_g), ("d", t.opt_d)):
        saved_state = one_epoch["optim"][name]["state"]
        for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
            assert torch.equal(opt.state[p]["exp_avg"], saved_state[i]["exp_avg"])
            assert float(opt.state[p]["step"]) == float(saved_state[i]["step"]) > 0
    for pool, s in zip(t.pools, one_epoch["pools"]):
        assert int(pool.count) == int(s["count"]) == 4 and torch.equal(pool.stored, s["images"])
    for name, net in t.models.named().items():
        for k, v in net.state_dict().items():
            assert torch.equal(v, one_epoch["models"][name][k]), f"{name}.{k}"


def test_a_resume_with_the_same_knobs_keeps_the_scheduled_rate(one_epoch: dict) -> None:
    saved = TrainConfig.from_dict(one_epoch["config"])
    t = Trainer.build(saved.replace(epochs=4), "cpu")
    training_state.restore(one_epoch, t)
    assert [float(g["lr"]) for g in t.opt_g.param_groups] == [
        float(g["lr"]) for g in one_epoch["optim"]["g"]["param_groups"]]


def test_the_decayed_rate_follows_the_new_base_rate(one_epoch: dict) -> None:
    saved = TrainConfig.from_dict(one_epoch["config"])
    new = saved.replace(epochs=3, lr=1e-3)  # epoch 2 of 3 is in the decay: factor 1 - (2 - 1) / 3
    t = Trainer.build(new, "cpu")
    training_state.restore(one_epoch, t)
    assert float(t.opt_g.param_groups[0]["lr"]) == pytest.approx(1e-3 * (1 - 1 / 3))


@pytest.mark.parametrize("knob, value", [("ngf", 4), ("resize", 64), ("pool_size", 2), ("seed", 3),
                                         ("upsample", "resize"), ("gan_loss", "bce")])
def test_a_knob_fixed_for_the_run_is_still_refused_by_name(one_epoch: dict, knob: str, value) -> None:
    cfg = TrainConfig.from_dict(one_epoch["config"]).replace(**{knob: value})
    with pytest.raises(checkpoint.CheckpointError, match=f"other settings \\({knob}=.*only epochs, lr"):
        training_state.check_resumable(one_epoch, cfg)
