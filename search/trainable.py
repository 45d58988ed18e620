"""The Ray Tune function trainable: one trial is one `cyclegan.fit` run.

Ray hands the trial a flat dict of knobs; it becomes a `TrainConfig`, the data is loaded on the trial's
device, and every epoch's metrics (plus `objective`, and `objective_<i>` for a space of several objectives)
go to `tune.report`, with a checkpoint every `checkpoint_every` epochs and at the end. A retried or resumed
trial restarts from `tune.get_checkpoint()`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ray import tune

from cyclegan import checkpoint
from cyclegan.config import TrainConfig
from cyclegan.data import load_data
from cyclegan.train import fit
from search.space import OBJECTIVE, POINT_NAME


def train_trial(config: dict[str, Any], *, data: str,
                objective: Callable[[dict[str, Any]], float | Mapping[str, float]],
                checkpoint_every: int = 1, gpu_share: float = 0.0) -> None:
    """`objective` gives the value reported as `objective`, or (`Space.reported_objectives()`) a mapping of
    every objective metric to report."""
    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if k != POINT_NAME})
    trial_dir = Path.cwd()  # Ray runs each trial in its own folder and syncs it to the run's storage
    cfg.save(trial_dir / "config.json")
    dataset = load_data(data, cfg.resize, cfg.seed)
    dataset.save_split(trial_dir / "split.json")
    cap_gpu_memory(gpu_share)

    resume = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            resume = checkpoint.load(Path(d) / checkpoint.CHECKPOINT)

    def report(metrics: dict[str, Any], save: Callable[[Path], None]) -> None:
        value = objective(metrics)
        metrics = {**metrics, **(value if isinstance(value, Mapping) else {OBJECTIVE: value})}
        with (trial_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if metrics["epoch"] % checkpoint_every and metrics["epoch"] != cfg.epochs:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            save(Path(tmp) / checkpoint.CHECKPOINT)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    fit(cfg, dataset, report=report, resume=resume, log_dir=trial_dir / "tb", log_scalars=False)


def cap_gpu_memory(share: float) -> None:
    """Caps this trial's memory to its share of the GPU, so that trials sharing one cannot starve each other."""
    if torch.cuda.is_available() and 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share)
