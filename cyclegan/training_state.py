"""What `fit` saves every epoch and continues from: the state of a training run, as one checkpoint dict.

`capture` gathers the config, the epoch, the split, the four networks, both optimizers, the schedulers, the
image pools and the random number generators' states; `check_resumable` refuses a checkpoint that `fit`
cannot continue with a config; `restore` loads one into a `Trainer`. A checkpoint moves between devices and
precisions: everything is read onto the CPU (`checkpoint.load`) and put on the trainer's device, in the
dtype of the trainer's own tensors (a GPU run's image pools hold bf16 fakes, a CPU run's fp32 ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from cyclegan import checkpoint
from cyclegan.config import CONTINUABLE, ConfigError, TrainConfig

if TYPE_CHECKING:
    from cyclegan.data import Dataset
    from cyclegan.train import Trainer

TRAINING_STATE = ("epoch", "models", "optim", "sched", "pools", "rng")


def capture(cfg: TrainConfig, epoch: int, t: Trainer, data: Dataset, metrics: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of a run at the end of `epoch`."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return {"config": cfg.to_dict(), "epoch": epoch, "split": data.split(), "metrics": metrics,
            "models": {k: checkpoint.state_dict(v) for k, v in t.models.named().items()},
            "optim": {"g": t.opt_g.state_dict(), "d": t.opt_d.state_dict()},
            "sched": [s.state_dict() for s in t.scheds], "pools": [p.state() for p in t.pools], "rng": rng}


def saved_config(state: dict[str, Any]) -> TrainConfig:
    """The config a checkpoint was trained with."""
    try:
        return TrainConfig.from_dict(state["config"])
    except (ConfigError, KeyError) as e:
        raise checkpoint.CheckpointError(f"checkpoint holds a config this code refuses ({e})") from None


def check_resumable(state: dict[str, Any], cfg: TrainConfig,
                    networks: Callable[[TrainConfig], dict[str, torch.nn.Module]] | None = None) -> None:
    """Refuses a loaded checkpoint that `fit` cannot continue with `cfg`: an export, or other fixed settings.

    The `CONTINUABLE` knobs may differ: `epochs` (to train on for longer) and those that act through the optimisers
    and losses (a population-based search's exploit, a replayed schedule); the knobs that shape the networks, the
    state or the data (`FIXED_FOR_RUN`) and the switches may not. With `networks`, the four networks' weights are also
    loaded into the fresh networks `networks(cfg)` builds (name -> module, on the CPU), so an edited or mixed-up
    file is caught too. The CLI calls this before it writes anything, so a refused resume leaves the run as it was.
    """
    missing = [k for k in TRAINING_STATE if k not in state]
    if missing:
        raise checkpoint.CheckpointError(f"not a training checkpoint (no {', '.join(missing)}); an export "
                                         "(model.pt) holds the generators only and cannot be resumed")
    saved = saved_config(state)
    if saved.replace(**{k: getattr(cfg, k) for k in CONTINUABLE}) != cfg:
        changed = sorted(f"{k}={v!r}, not {saved.to_dict()[k]!r}" for k, v in cfg.to_dict().items()
                         if saved.to_dict()[k] != v and k not in CONTINUABLE)
        raise checkpoint.CheckpointError(f"checkpoint was trained with other settings ({'; '.join(changed)}); "
                                         f"only {', '.join(CONTINUABLE)} may change when a run continues")
    if networks is not None:
        try:
            for name, net in networks(cfg).items():
                net.load_state_dict(state["models"][name])
        except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
            raise _unfit(e) from None


def restore(state: dict[str, Any], t: Trainer) -> int:
    """Loads a checkpoint into `t` (on its device, in its dtypes); returns the epoch it ended.

    What the run has learnt comes from the checkpoint: the weights, Adam's moments and step counts, the image pools,
    the schedulers' epoch counts, the random states. What its config sets stays `t`'s own: the learning rates (the
    config's base rate, at the checkpoint's point of the schedule), Adam's betas, and the loss weights and dropout
    that `t` was built with. A checkpoint continued with other `CONTINUABLE` knobs (an exploit of population-based
    training) therefore trains on with the new ones and loses nothing it had learnt.
    """
    check_resumable(state, t.cfg)
    try:
        for name, net in t.models.named().items():
            net.load_state_dict(state["models"][name])
        load_optimizer(t.opt_g, state["optim"]["g"])
        load_optimizer(t.opt_d, state["optim"]["d"])
        for opt, sched, s in zip((t.opt_g, t.opt_d), t.scheds, state["sched"]):
            load_scheduler(opt, sched, s)
        for pool, s in zip(t.pools, state["pools"]):
            pool.load(s, t.device)
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and t.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        return int(state["epoch"])
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise _unfit(e) from None


def _unfit(e: Exception) -> checkpoint.CheckpointError:
    # A file that reads but whose parts do not fit the networks its own config builds: damaged or edited.
    # load_state_dict's first line only says "Error(s) in loading state_dict"; the next says which keys.
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return checkpoint.CheckpointError(f"checkpoint's state does not fit its config ({type(e).__name__}: "
                                      f"{' '.join(lines)[:300]})")


def load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Loads an optimizer's per-parameter state (Adam's moments and step counts) and keeps every setting of this
    run's groups: its hyperparameters (lr, initial_lr, betas: a continued run may change them) and its kind of
    optimizer (fused, capturable, the GPU lr tensor a captured step reads). `load_optimizer` leaves the learning rate
    at the schedule's start; `load_scheduler` moves it to the checkpoint's epoch.

    `load_state_dict` takes all of those from the checkpoint, and a checkpoint read onto the CPU holds the learning
    rate as a CPU tensor when it was written by a capturable optimizer.
    """
    own = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, mine in zip(opt.param_groups, own):
        g.update(mine)
        on_device = bool(g["capturable"] or g["fused"])
        for p in g["params"]:
            s = opt.state.get(p)
            if s and "step" in s:
                s["step"] = s["step"].to(dtype=torch.float32, device=p.device if on_device else "cpu")
            for key, value in (s or {}).items():
                # A checkpoint holds the moments contiguous (its pinned copies, cyclegan.checkpoint_writer), and a
                # channels_last network's parameters are not: the fused step takes them only in one layout
                # ("params, grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and layout").
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    s[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def load_scheduler(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any]) -> None:
    """Loads a LambdaLR's epoch count but keeps this run's base rates (its config's), then sets each group's rate
    to base * factor(epoch), what the scheduler would have set had the run used them from the start. For a run
    that continues with its own config this is the rate the checkpoint holds, computed the same way."""
    base = list(sched.base_lrs)
    sched.load_state_dict(state)
    sched.base_lrs = base
    rates = [b * factor(sched.last_epoch) for b, factor in zip(base, sched.lr_lambdas)]
    for g, rate in zip(opt.param_groups, rates):
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(rate)  # in place: a captured step reads this tensor
        else:
            g["lr"] = rate
    sched._last_lr = rates  # what get_last_lr() reports; LambdaLR keeps it in this attribute
