"""Choosing the winner on val, then reporting it on the held-out test split.

Training loss says little about image quality (the study picked V4 by it). The `top_k` trials by the val
objective they reported while training (in bf16 on a GPU) are the finalists; each is re-scored on val
from its best checkpoint at full precision (fp32, autocast and TF32 off, every val slice), and the winner
is the best by that re-score, ties broken by the matching PSNRs. The finalists are independent, so they are scored side
by side (threads; on a GPU each on a CUDA stream of its own, the data built once for all: `Datasets`), their results
kept in rank order whatever order they finish in. Only then is test scored, for the winner
and the other finalists: the test split makes no decision, so its figures are one honest draw, not the
best of k noisy ones. The val figures, which steered the search (ASHA's stops, Optuna's draws), stay
optimistic; the test figures are what to quote.
"""

from __future__ import annotations

import json
import math
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from ray import tune

from cyclegan import checkpoint
from cyclegan.config import FIELD_NAMES, TrainConfig
from cyclegan.data import SYNTHETIC, Dataset, Slices, load_data, read_data
from cyclegan.evaluate import evaluate, yardstick
from cyclegan.precision import tf32
from search.space import POINT_NAME
from search.study import stopped_early
from search.trainable import RESOURCES


@dataclass
class TrialOutcome:
    """What one trial left: its knobs, its last and best reported metrics, its best checkpoint."""

    trial_id: str
    path: str
    config: dict[str, Any]
    status: str  # "finished", "stopped early", "not started" (no epoch reported: the time budget ran out) or "error"
    last: dict[str, Any]
    best: dict[str, Any]
    checkpoint: str | None  # the best checkpoint's folder (a path or URI)
    error: str = ""
    test: dict[str, float] = field(default_factory=dict)  # reported only: no decision reads it
    val_rescore: dict[str, float] = field(default_factory=dict)  # what the finalists are ranked on (`choose`)
    name: str = ""  # a points space's label for the trial, e.g. V4
    gpu_share: float | None = None  # the share of a GPU Ray gave it, from its resources.json

    @property
    def val_objective(self) -> float:
        return float(self.best.get("objective", math.nan))


def outcome(result: tune.Result, mode: str) -> TrialOutcome:
    """Summarises a Ray Tune `Result` (from `Tuner.fit()` or `Result.from_path`)."""
    config = {k: v for k, v in (result.config or {}).items() if k in FIELD_NAMES}
    last = dict(result.metrics or {})
    # The trial's folder names it (search.run's `trial_<id>`). Its last metrics may be another trial's: PBT hands a
    # trial that copies another's checkpoint that trial's last result too.
    folder = Path(result.path).name
    trial_id = folder.removeprefix("trial_") if folder.startswith("trial_") else str(last.get("trial_id") or folder)
    best: dict[str, Any] = {}
    ckpt = None
    if result.best_checkpoints:
        pick = max if mode == "max" else min
        best_ckpt, best = pick(result.best_checkpoints, key=lambda cm: _number(cm[1].get("objective"), mode))
        ckpt = best_ckpt.path
    df = result.metrics_dataframe
    if df is not None and "objective" in df and len(df):
        row = df["objective"].idxmax() if mode == "max" else df["objective"].idxmin()
        best = best or df.loc[row].to_dict()
    if result.error is not None:
        status = "error"
    elif not last.get("epoch"):
        status = "not started"
    elif stopped_early(last["epoch"], config.get("epochs", TrainConfig().epochs)):  # as Optuna was told
        status = "stopped early"
    else:
        status = "finished"
    error = str(result.error).strip().splitlines()[-1] if result.error is not None else ""
    name = str((result.config or {}).get(POINT_NAME, ""))
    return TrialOutcome(trial_id, str(result.path), config, status, last, best, ckpt, error, name=name,
                        gpu_share=_recorded_gpu_share(result))


def _recorded_gpu_share(result: tune.Result) -> float | None:
    """The GPU share the trial recorded (search/trainable.py), read where the run is stored (a folder or s3://)."""
    try:
        with result.filesystem.open_input_stream(f"{result.path}/{RESOURCES}") as f:
            return float(json.loads(f.read())["gpu_share"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a trial that failed before it wrote one, or a run from before the record existed


def status_counts(outcomes: list[TrialOutcome]) -> str:
    """'12 finished, 3 stopped early, 0 failed' (and how many never reported an epoch, where any did not)."""
    count = lambda status: sum(o.status == status for o in outcomes)  # noqa: E731
    unstarted = count("not started")
    return (f"{count('finished')} finished, {count('stopped early')} stopped early, "
            + (f"{unstarted} not started, " if unstarted else "") + f"{count('error')} failed")


def rank_by_val(outcomes: list[TrialOutcome], mode: str) -> list[TrialOutcome]:
    """The candidates for the final choice, best val objective first: trials with a checkpoint that did not fail
    (a trial whose retries all crashed never finished the training its config asked for)."""
    usable = [o for o in outcomes if o.checkpoint and o.status != "error" and not math.isnan(o.val_objective)]
    return sorted(usable, key=lambda o: o.val_objective, reverse=mode == "max")


def rescore(o: TrialOutcome, data: str | Slices, device: str | None = None, split: str = "test",
            datasets: Datasets | None = None) -> dict[str, float]:
    """The trial's best checkpoint scored on a split ("val" or "test") of its own data and size, every slice of it,
    at full precision (fp32, no autocast, no TF32), with the spread over slices. The split stays on the host and is
    scored a chunk at a time on `device` (`cyclegan.evaluate.evaluate`), so a split of any size fits. `datasets`
    keeps the data built for the trials that share it."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tune.Checkpoint(o.checkpoint).as_directory() as d:
        cfg, g_t1_t2, g_t2_t1 = checkpoint.load_generators(Path(d), dev)
    dataset = (datasets or Datasets(data)).get(cfg.resize, cfg.seed)
    with tf32(False):  # training scored val in bf16 on a GPU; a decision made here should not hang on rounding
        return evaluate(g_t1_t2, g_t2_t1, {"val": dataset.val, "test": dataset.test}[split], spread=True, device=dev)


def yardsticks(o: TrialOutcome, data: str | Slices, split: str = "test",
               datasets: Datasets | None = None) -> dict[str, dict[str, float]]:
    """On paired data, the split scored as if translated by copying each input ("copied") and by the truth
    ("truth"), both through the trial's size (`cyclegan.evaluate.yardstick`): where a model's figures lie between
    not translating and the best its size allows. {} on unpaired data."""
    dataset = (datasets or Datasets(data)).get(int(o.config.get("resize", TrainConfig.resize)),
                                               int(o.config.get("seed", TrainConfig.seed)))
    s = {"val": dataset.val, "test": dataset.test}[split]
    if not s.paired:
        return {}
    return {"copied": yardstick(s, dataset.resize), "truth": yardstick(s, dataset.resize, truth=True)}


class Datasets:
    """The data the end of a search scores on, built once per (resize, seed) and shared by whatever scores trials
    or exports one (`choose`, its threads, `yardsticks`, `search.export.export`).

    A folder (or URI) is read once, whatever sizes its trials took, and its data sets do not depend on the seed
    (only the phantom's do). Only val and test are kept, as a copy of their own: the training slices, most of a
    data set, are not squared and resized again at each resize, for nothing here reads them, and slices handed
    over as views of Ray's object store (`search.run.hand_over`) are read here after Ray has stopped.
    """

    def __init__(self, data: str | Slices) -> None:
        self.data = held_out(data) if isinstance(data, Slices) else data
        self._loaded: dict[tuple[int, int], Dataset] = {}
        self._lock = threading.Lock()

    def get(self, resize: int, seed: int) -> Dataset:
        with self._lock:  # one build a key, the others wait for it
            if not isinstance(self.data, Slices) and str(self.data) != SYNTHETIC:
                self.data = held_out(read_data(self.data), copy=False)  # read here: its own arrays
            if isinstance(self.data, Slices):
                seed = 0
            if (resize, seed) not in self._loaded:
                self._loaded[resize, seed] = load_data(self.data, resize=resize, seed=seed)
            return self._loaded[resize, seed]


def held_out(data: Slices, copy: bool = True) -> Slices:
    """`data` without its training slices (their names stay: a data set's split still lists them); its val and
    test copied unless `copy` is false."""
    if copy:
        data = replace(data, held_out={part: {domain: (images.copy(), masks.copy())
                                              for domain, (images, masks) in domains.items()}
                                       for part, domains in data.held_out.items()})
    return replace(data, train={domain: [] for domain in data.train})


Scorer = Callable[[TrialOutcome, str], dict[str, float]]  # (trial, split) -> its metrics on that split


def choose(outcomes: list[TrialOutcome], objective, data: str | Slices, top_k: int, device: str | None = None,
           score: Scorer | None = None, workers: int | None = None, datasets: Datasets | None = None
           ) -> tuple[TrialOutcome | None, list[TrialOutcome]]:
    """Picks the winner on val and only then scores test; returns (winner, the finalists best first).

    The finalists are the top_k trials by the val objective they reported while training; each is re-scored
    on val from its best checkpoint (`score(o, "val")`, by default `rescore`: fp32, all val slices) into
    `o.val_rescore`, and ranked by that objective, ties broken by the matching PSNRs. The winner is fixed
    before any test slice is scored; then every finalist is scored on test (`o.test`) for the report.
    Up to `workers` trials are scored at once (default: top_k), each result kept in rank order. `datasets`: the
    data built so far, shared with the rest of the search's end (default: built here).
    """
    datasets = datasets or Datasets(data)
    score = _own_stream(score or (lambda o, split: rescore(o, data, device, split, datasets)), device)
    mode = objective.mode
    psnr_twin = {k.replace("ssim_", "psnr_", 1): w for k, w in objective.weights.items()}

    def key(o: TrialOutcome) -> tuple[float, float]:
        tie = sum(w * o.val_rescore.get(k, 0.0) for k, w in psnr_twin.items())
        sign = 1 if mode == "max" else -1
        return (sign * _number(o.val_rescore["objective"], mode), sign * tie)

    finalists: list[TrialOutcome] = []
    candidates = rank_by_val(outcomes, mode)
    # TF32 off once around all threads: each rescore's own switch then saves and restores this same setting,
    # where threads each switching the global one could restore it to on under another's scoring.
    with ThreadPoolExecutor(max_workers=max(1, workers or top_k)) as pool, tf32(False):
        while len(finalists) < top_k and candidates:  # the next best replace any whose checkpoint is damaged
            batch, candidates = candidates[:top_k - len(finalists)], candidates[top_k - len(finalists):]
            for o, scored in zip(batch, pool.map(lambda o: _or_error(score, o, "val"), batch)):
                if isinstance(scored, checkpoint.CheckpointError):
                    # A damaged best checkpoint costs that trial its place among the finalists, not the whole search.
                    print(f"warning: trial {o.trial_id} left out of the final choice: {scored}", file=sys.stderr)
                    continue
                o.val_rescore = _scored(scored, objective)
                finalists.append(o)
        ranked = sorted(finalists, key=key, reverse=True)
        # The winner is fixed before test is read; test is reported, never ranked on.
        for o, scored in zip(ranked, pool.map(lambda o: score(o, "test"), ranked)):
            o.test = _scored(scored, objective)
    return (ranked[0] if ranked else None), ranked


def _own_stream(score: Scorer, device: str | None) -> Scorer:
    """`score` run on a CUDA stream of the calling thread's own, so that finalists scored side by side overlap on
    one GPU instead of queueing on its default stream; as it is on the CPU."""
    if not torch.cuda.is_available() or (device is not None and not str(device).startswith("cuda")):
        return score

    def scored(o: TrialOutcome, split: str) -> dict[str, float]:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            out = score(o, split)
        stream.synchronize()
        return out

    return scored


def _or_error(score: Scorer, o: TrialOutcome, split: str) -> dict[str, float] | checkpoint.CheckpointError:
    try:
        return score(o, split)
    except checkpoint.CheckpointError as e:
        return e


def _scored(metrics: dict[str, float], objective) -> dict[str, float]:
    return {**metrics, "objective": objective.value(metrics)}


def _number(value: Any, mode: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if math.isnan(v):
        return -math.inf if mode == "max" else math.inf
    return v
