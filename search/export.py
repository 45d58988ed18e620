"""Exports a search's winner (or any trial) as a model that `cyclegan.translate` uses as is.

    python -m search.export RUN_DIR --out DIR [--trial ID]

An export is self-describing: `model.pt` (both generators, the resolved config, the metrics it was
chosen on and the data split it was scored on), the same config, metrics and split as JSON beside it,
for a trial of a population-based search `schedule.json` (the knobs its lineage trained with, epoch by epoch, up to
the exported checkpoint; `python -m cyclegan.train --schedule best/schedule.json --out DIR` replays it), and
`samples.png`, a grid of test slices: T1, G(T1), F(G(T1)), T2, F(T2), G(F(T2)), each row and column
named (the columns by the slices' names).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ray import tune

from cyclegan import checkpoint
from cyclegan.data import DataError, Slices, SliceSet, source_name
from cyclegan.evaluate import translations
from cyclegan.images import grid, label_grid, save_png
from cyclegan.schedule import SCHEDULE, Schedule
from search.select import Datasets, TrialOutcome, outcome, rescore
from search.trainable import METRICS

SELECTION = "selection.json"


def export(o: TrialOutcome, data: str | Slices, out: Path, datasets: Datasets | None = None) -> Path:
    """Writes trial `o`'s best checkpoint as an export in `out` (replaced whole, never half-written).

    `data` is a folder, URI or "synthetic", or the slices a search already read (`cyclegan.data.read_data`);
    `datasets`, the data sets built from it so far (`search.select.Datasets`), shared with the final choice."""
    with tune.Checkpoint(o.checkpoint).as_directory() as d:
        state = checkpoint.load(Path(d) / checkpoint.CHECKPOINT, mmap=True)  # of the trainer's state, the generators
        history = Path(d) / METRICS  # the rows of the epochs that led to this checkpoint (search/trainable.py)
        rows = _rows(history.read_text()) if history.is_file() else []
    cfg, g_t1_t2, g_t2_t1 = checkpoint.generators(state)
    schedule = Schedule.from_rows(cfg, rows)
    dataset = (datasets or Datasets(data)).get(cfg.resize, cfg.seed)
    # Whether the cross-contrast figures compare with the true other contrast (paired) or the input slice.
    metrics = {"trial_id": o.trial_id, "epoch": state["epoch"], "val": state["metrics"],
               "rescore_val": o.val_rescore, "test": o.test,
               "data": source_name(data), "evaluation": dataset.split()["evaluation"], "eval_size": dataset.eval_size}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    checkpoint.save(tmp / checkpoint.MODEL, {"config": state["config"], "metrics": metrics, "split": state["split"],
                                             "g_t1_t2": state["models"]["g_t1_t2"],
                                             "g_t2_t1": state["models"]["g_t2_t1"]})
    (tmp / "config.json").write_text(json.dumps(state["config"], indent=2) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (tmp / "split.json").write_text(json.dumps(state["split"], indent=1) + "\n")
    if schedule is not None:
        schedule.save(tmp / SCHEDULE)
    save_png(labelled_samples(g_t1_t2, g_t2_t1, dataset.test), tmp / "samples.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _rows(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short ends the history
    return rows


def sample_grid(g_t1_t2, g_t2_t1, s: SliceSet, n: int = 4) -> torch.Tensor:
    """The first n slices of a split and their translations, at the split's size (the models run at theirs)."""
    first = replace(s, **{k: getattr(s, k)[:n] for k in ("t1", "t2", "t1_head", "t2_head")})
    outs = translations(g_t1_t2, g_t2_t1, first)
    return grid([first.t1, outs["fake_t2"], outs["rec_t1"], first.t2, outs["fake_t1"], outs["rec_t2"]])


SAMPLE_ROWS = ["T1", "G(T1)", "F(G(T1))", "T2", "F(T2)", "G(F(T2))"]


def labelled_samples(g_t1_t2, g_t2_t1, s: SliceSet, n: int = 4) -> np.ndarray:
    """`sample_grid` with its rows named and its columns named by the slices' files; [H, W] in [0, 1].

    Unpaired, a column's T1 and T2 are different slices: the T2 names get a header of their own above the T2 rows.
    """
    image = sample_grid(g_t1_t2, g_t2_t1, s, n)[0].numpy()
    t1, t2 = ([x[:-4] if x.lower().endswith(".png") else x for x in names[:n]] for names in (s.t1_names, s.t2_names))
    return label_grid(image, SAMPLE_ROWS, {0: t1} if t1 == t2 else {0: t1, 3: t2})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a search's run folder (holding summary/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--trial", help="a trial id from summary/trials.csv (default: the winner)")
    args = p.parse_args(argv)
    selection_file = args.run_dir / "summary" / SELECTION
    try:
        selection = json.loads(selection_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"error: {selection_file}: not a finished search's selection ({e})", file=sys.stderr)
        return 2
    trial_id = args.trial or selection.get("winner")
    trials = {t["trial_id"]: t for t in selection["trials"]}
    if trial_id not in trials:
        print(f"error: --trial {trial_id!r}: no such trial in {args.run_dir}; known: {', '.join(trials)}",
              file=sys.stderr)
        return 2
    # Ray warns of a checkpoint whose metrics it never recorded (a trial that crashed right after saving it);
    # the checkpoint is still whole, and a refusal below must stay one line.
    logging.getLogger("ray.air.result").setLevel(logging.ERROR)
    try:
        o = outcome(tune.Result.from_path(trials[trial_id]["path"]), selection["mode"])
        if not o.checkpoint:
            raise checkpoint.CheckpointError(f"trial {trial_id} left no checkpoint")
        datasets = Datasets(selection["data"])  # the folder read once, for the test score and the export
        o.test = trials[trial_id].get("test") or rescore(o, selection["data"], datasets=datasets)
        export(o, selection["data"], args.out, datasets)
    except (checkpoint.CheckpointError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported trial {trial_id} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
