"""The optimizers: TTUR's two learning rates, and moving a live run to new rates without losing Adam's state."""

from __future__ import annotations

import pytest
import torch

from cyclegan.config import ConfigError, TrainConfig
from cyclegan.train import Trainer


def _lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in opt.param_groups]


def test_discriminators_learn_at_lr_times_lr_d_scale(tiny_cfg):
    t = Trainer.build(tiny_cfg.replace(lr=3e-4, lr_d_scale=0.25), "cpu")
    assert _lrs(t.opt_g) == [pytest.approx(3e-4)]
    assert _lrs(t.opt_d) == [pytest.approx(3e-4 * 0.25)]
    # The D rate decays with the same schedule from its own base.
    t = Trainer.build(tiny_cfg.replace(lr=3e-4, lr_d_scale=4.0, lr_schedule="linear", epochs=4), "cpu")
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    t.step(x, x.flip(0))  # an optimizer step before the schedule's, as PyTorch expects
    for _ in range(3):
        t.end_epoch()
    assert _lrs(t.opt_d)[0] == pytest.approx(4 * _lrs(t.opt_g)[0]) and _lrs(t.opt_g)[0] < 3e-4


def test_set_learning_rates_moves_a_live_run_and_keeps_adams_moments(tiny_cfg):
    cfg = tiny_cfg.replace(lr_schedule="linear", epochs=6)
    t = Trainer.build(cfg, "cpu")
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    t.step(x, x.flip(0))
    for _ in range(4):  # into the decay: factor 1 - (4 - 3) / 4 = 0.75
        t.end_epoch()
    moments = {id(p): s["exp_avg"].clone() for p, s in t.opt_d.state.items()}
    new = cfg.replace(lr=1e-3, lr_d_scale=0.5)
    t.set_learning_rates(new)
    assert _lrs(t.opt_g)[0] == pytest.approx(1e-3 * 0.75)
    assert _lrs(t.opt_d)[0] == pytest.approx(5e-4 * 0.75)
    assert all(torch.equal(s["exp_avg"], moments[id(p)]) for p, s in t.opt_d.state.items())
    t.end_epoch()  # the schedule goes on from the new base rates: 1 - 2 / 4 = 0.5
    assert _lrs(t.opt_g)[0] == pytest.approx(1e-3 * 0.5) and _lrs(t.opt_d)[0] == pytest.approx(5e-4 * 0.5)


def test_set_learning_rates_fills_a_tensor_rate_in_place(tiny_cfg):
    """A captured CUDA graph reads the lr tensor's memory, so a new rate must land there."""
    t = Trainer.build(tiny_cfg, "cpu")
    held = torch.tensor(t.opt_d.param_groups[0]["lr"])
    t.opt_d.param_groups[0]["lr"] = held
    t.set_learning_rates(tiny_cfg.replace(lr_d_scale=2.0))
    assert t.opt_d.param_groups[0]["lr"] is held and held.item() == pytest.approx(2 * tiny_cfg.lr)


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_lr_d_scale_must_be_positive(value):
    with pytest.raises(ConfigError, match="lr_d_scale must be > 0"):
        TrainConfig(lr_d_scale=value)


def test_a_config_without_lr_d_scale_means_one_rate(tmp_path):
    """Checkpoints and spaces from before TTUR name no lr_d_scale: both networks then learn at lr, as before."""
    values = TrainConfig().to_dict()
    del values["lr_d_scale"], values["generator"]
    cfg = TrainConfig.from_dict(values)
    assert cfg.lr_d_scale == 1.0 and cfg.generator == "unet"
