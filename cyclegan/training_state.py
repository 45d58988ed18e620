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
from cyclegan.config import ConfigError, TrainConfig

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
    """Refuses a loaded checkpoint that `fit` cannot continue with `cfg`: an export, or other settings.

    Only `epochs` may differ (to train on for longer). With `networks`, the four networks' weights are also
    loaded into the fresh networks `networks(cfg)` builds (name -> module, on the CPU), so an edited or mixed-up
    file is caught too. The CLI calls this before it writes anything, so a refused resume leaves the run as it was.
    """
    missing = [k for k in TRAINING_STATE if k not in state]
    if missing:
        raise checkpoint.CheckpointError(f"not a training checkpoint (no {', '.join(missing)}); an export "
                                         "(model.pt) holds the generators only and cannot be resumed")
    saved = saved_config(state)
    if saved.replace(epochs=cfg.epochs) != cfg:
        changed = sorted(f"{k}={v!r}, not {saved.to_dict()[k]!r}" for k, v in cfg.to_dict().items()
                         if saved.to_dict()[k] != v and k != "epochs")
        raise checkpoint.CheckpointError(f"checkpoint was trained with other settings ({'; '.join(changed)})")
    if networks is not None:
        try:
            for name, net in networks(cfg).items():
                net.load_state_dict(state["models"][name])
        except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
            raise _unfit(e) from None


def restore(state: dict[str, Any], t: Trainer) -> int:
    """Loads a checkpoint into `t` (on its device, in its dtypes); returns the epoch it ended."""
    check_resumable(state, t.cfg)
    try:
        for name, net in t.models.named().items():
            net.load_state_dict(state["models"][name])
        load_optimizer(t.opt_g, state["optim"]["g"])
        load_optimizer(t.opt_d, state["optim"]["d"])
        for sched, s in zip(t.scheds, state["sched"]):
            sched.load_state_dict(s)
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
    """Loads an optimizer's state but keeps this run's kind of optimizer (fused, capturable, GPU lr tensor).

    `load_state_dict` takes those settings from the checkpoint, and a checkpoint read onto the CPU holds
    the learning rate as a CPU tensor when it was written by a capturable optimizer.
    """
    own = [{k: g[k] for k in ("lr", "capturable", "fused", "foreach")} for g in opt.param_groups]
    opt.load_state_dict(state)
    for g, kind in zip(opt.param_groups, own):
        lr = float(g["lr"])
        if isinstance(kind["lr"], torch.Tensor):
            kind["lr"].fill_(lr)
            lr = kind["lr"]
        g.update({**kind, "lr": lr})
        on_device = bool(g["capturable"] or g["fused"])
        for p in g["params"]:
            s = opt.state.get(p)
            if s and "step" in s:
                s["step"] = s["step"].to(dtype=torch.float32, device=p.device if on_device else "cpu")
