"""The CycleGAN's optimizers: one Adam for both generators and one for both discriminators, each at its own rate.

`lr` is the generators' learning rate and `lr * lr_d_scale` the discriminators' (TTUR, Heusel et al. 2017);
`lr_d_scale: 1` is the reference's single rate. `make_optimizers` builds both with their learning-rate schedules;
`set_learning_rates` moves existing ones to another config's rates in place, keeping Adam's moments and step
counts (a run whose knobs change mid-training, as population-based training changes them).

    python -m pytest tests/cyclegan/test_optim.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cyclegan.config import TrainConfig


def base_rates(cfg: TrainConfig) -> tuple[float, float]:
    """(generators', discriminators') learning rate before the schedule's factor."""
    return cfg.lr, cfg.lr * cfg.lr_d_scale


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Per-epoch learning-rate multiplier: constant, or the reference's linear decay over the last half."""
    if cfg.lr_schedule == "constant":
        return lambda epoch: 1.0
    keep = cfg.epochs // 2
    return lambda epoch: 1.0 - max(0, epoch - keep) / float(cfg.epochs - keep + 1)


def make_adam(cfg: TrainConfig, params: list[nn.Parameter], device: torch.device, lr: float | None = None
              ) -> torch.optim.Adam:
    """The reference's Adam at `lr` (default `cfg.lr`); on a GPU fused (`fused_adam`), and capturable when the step
    is a CUDA graph.

    A capturable Adam keeps its step counts on the GPU and reads its learning rate from a GPU tensor;
    the LR scheduler changes that tensor in place, so the replayed step follows the schedule.
    """
    lr = cfg.lr if lr is None else lr
    kw: dict[str, Any] = {"betas": (cfg.beta1, cfg.beta2)}
    if device.type != "cuda":
        return torch.optim.Adam(params, lr=lr, **kw)
    if cfg.fused_adam:
        kw["fused"] = True
    if cfg.cuda_graphs:
        return torch.optim.Adam(params, lr=torch.tensor(lr, device=device), capturable=True, **kw)
    return torch.optim.Adam(params, lr=lr, **kw)


def make_optimizers(cfg: TrainConfig, generators: list[nn.Module], discriminators: list[nn.Module],
                    device: torch.device
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, list[torch.optim.lr_scheduler.LambdaLR]]:
    """(generators' Adam, discriminators' Adam, their two LR schedulers) at `base_rates(cfg)`."""
    lr_g, lr_d = base_rates(cfg)
    opt_g = make_adam(cfg, [p for net in generators for p in net.parameters()], device, lr_g)
    opt_d = make_adam(cfg, [p for net in discriminators for p in net.parameters()], device, lr_d)
    for opt, base in ((opt_g, lr_g), (opt_d, lr_d)):
        for group in opt.param_groups:
            # The schedule's base rate as a plain number, never an alias of a GPU lr tensor it then rescales.
            group["initial_lr"] = base
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_factor(cfg)) for o in (opt_g, opt_d)]
    return opt_g, opt_d, scheds


def set_learning_rates(opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                       scheds: list[torch.optim.lr_scheduler.LambdaLR], cfg: TrainConfig) -> None:
    """Moves both optimizers to `cfg`'s rates at the schedulers' current epoch, in place.

    The schedules' base rates change too, so later epochs follow the new rates; a GPU learning-rate tensor is
    filled, not replaced, since a captured CUDA graph reads its memory. Adam's moments and steps are untouched.
    """
    for opt, sched, base in zip((opt_g, opt_d), scheds, base_rates(cfg)):
        sched.base_lrs = [base] * len(opt.param_groups)
        factor = sched.lr_lambdas[0](sched.last_epoch)
        for group in opt.param_groups:
            group["initial_lr"] = base
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(base * factor)
            else:
                group["lr"] = base * factor
