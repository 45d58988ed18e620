"""Exports a search's winner (or any trial) as a model that `cyclegan.translate` uses as is.

    python -m search.export RUN_DIR --out DIR [--trial ID]

An export is self-describing: `model.pt` (both generators, the resolved config, the metrics it was
chosen on and the data split it was scored on), the same config, metrics and split as JSON beside it,
and `samples.png`, a grid of test slices: T1, G(T1), F(G(T1)), T2, F(T2), G(F(T2)).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from ray import tune

from cyclegan import checkpoint
from cyclegan.data import DataError, load_data
from cyclegan.evaluate import translate_all
from cyclegan.images import grid, save_png
from search.select import TrialOutcome, outcome, rescore

SELECTION = "selection.json"


def export(o: TrialOutcome, data: str, out: Path) -> Path:
    """Writes trial `o`'s best checkpoint as an export in `out` (replaced whole, never half-written)."""
    with tune.Checkpoint(o.checkpoint).as_directory() as d:
        state = checkpoint.load(Path(d) / checkpoint.CHECKPOINT)
    cfg, g_t1_t2, g_t2_t1 = checkpoint.generators(state)
    dataset = load_data(data, cfg.resize, cfg.seed)
    metrics = {"trial_id": o.trial_id, "epoch": state["epoch"], "val": state["metrics"], "test": o.test,
               "data": data}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    checkpoint.save(tmp / checkpoint.MODEL, {"config": state["config"], "metrics": metrics, "split": state["split"],
                                             "g_t1_t2": state["models"]["g_t1_t2"],
                                             "g_t2_t1": state["models"]["g_t2_t1"]})
    (tmp / "config.json").write_text(json.dumps(state["config"], indent=2) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (tmp / "split.json").write_text(json.dumps(state["split"], indent=1) + "\n")
    save_png(sample_grid(g_t1_t2, g_t2_t1, dataset.test.t1[:4], dataset.test.t2[:4])[0].numpy(),
             tmp / "samples.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def sample_grid(g_t1_t2, g_t2_t1, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    fake_t2, fake_t1 = translate_all(g_t1_t2, t1), translate_all(g_t2_t1, t2)
    return grid([t1, fake_t2, translate_all(g_t2_t1, fake_t2), t2, fake_t1, translate_all(g_t1_t2, fake_t1)])


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
        o.test = trials[trial_id].get("test") or rescore(o, selection["data"])
        export(o, selection["data"], args.out)
    except (checkpoint.CheckpointError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported trial {trial_id} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
