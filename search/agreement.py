"""How well each metric ranks a search's trials as the truth would: `python -m search.agreement RUN [RUN ...]`.

On paired data (the phantom, `python -m cyclegan.phantom --from DIR`, co-registered volumes) every trial reports,
beside the metrics that need no pairs, the true cross-contrast SSIM: its translations against the real other
contrast of the same anatomy. The truth here is the mean of the two directions' SSIM inside the head,
(`ssim_t1_t2_head` + `ssim_t2_t1_head`) / 2, on the val split, at each trial's last reported epoch (the model it
ended with, whether it ran its course or was stopped). For every candidate metric (each reported unpaired metric,
the run's own `objective`, and the objective of any `--space` file) this prints, per run:

- Spearman's rho between the metric, signed so that higher is better, and the truth, over the run's trials;
- where the trial that the metric ranks first stands by the truth (1 = the truly best trial).

    python -m search.agreement runs/phantom runs/anatomy --space spaces/full.yaml --markdown docs/x.md

Only runs whose trials report `paired: true` can be scored; the others are named and left out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.stats import spearmanr

from cyclegan.metrics import IMAGE_METRICS, LOSSES, LOWER_IS_BETTER

TRUTH = ("ssim_t1_t2_head", "ssim_t2_t1_head")
# Scored against the true other contrast on paired data: the truth itself, never a candidate.
CROSS = tuple(m for m in IMAGE_METRICS
              if m.startswith(("ssim_", "psnr_")) and any(d in m for d in ("_t1_t2", "_t2_t1")))
CANDIDATES = (*(m for m in IMAGE_METRICS if m not in CROSS), *LOSSES)
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class Run:
    name: str
    trials: dict[str, dict[str, float]]  # trial folder name: its last reported metrics


def read_run(path: Path, every_epoch: bool = False) -> Run | None:
    """The last metrics line of each trial of a run folder (with `every_epoch`, every line: each epoch's model is a
    point, as each is a checkpoint the search could have exported); None where the evaluation is not paired."""
    trials = {}
    for f in sorted(path.glob(f"trial_*/{METRICS_FILE}")):
        lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        for m in lines if every_epoch else lines[-1:]:
            if not m.get("paired"):
                return None
            key = f"{f.parent.name}@{m.get('epoch')}" if every_epoch else f.parent.name
            trials[key] = {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}
    return Run(path.name, trials)


def truth(metrics: Mapping[str, float]) -> float:
    return statistics.fmean(metrics[k] for k in TRUTH)


def sign(metric: str) -> float:
    """+1 where a higher value is better, -1 for the losses and the distances (`swd_*`)."""
    return -1.0 if metric in LOSSES or metric in LOWER_IS_BETTER else 1.0


@dataclass(frozen=True)
class Agreement:
    rho: float  # Spearman's rho of the signed metric with the truth
    rank: int  # the truth's rank (1 = best) of the trial the metric puts first
    n: int  # trials scored


def agreement(run: Run, score) -> Agreement:
    """How `score(metrics) -> float` (higher = better) ranks the run's trials against the truth."""
    pairs = []
    for m in run.trials.values():
        try:
            value = score(m)
        except KeyError:
            continue
        if math.isfinite(value) and all(math.isfinite(m.get(k, math.nan)) for k in TRUTH):
            pairs.append((value, truth(m)))
    if len(pairs) < 3:
        return Agreement(math.nan, 0, len(pairs))
    values, truths = zip(*pairs)
    rho = float(spearmanr(values, truths).statistic)
    picked = truths[max(range(len(values)), key=values.__getitem__)]
    return Agreement(rho, 1 + sum(t > picked for t in truths), len(pairs))


def weighted(weights: Mapping[str, float]):
    return lambda m: sum(w * m[k] for k, w in weights.items())


def scorers(spaces: Sequence[Path]) -> dict[str, Any]:
    """Each candidate metric (signed), the runs' own `objective`, and each space file's objective."""
    out: dict[str, Any] = {m: (lambda m_: lambda x: sign(m_) * x[m_])(m) for m in CANDIDATES}
    out["objective (as the run reported it)"] = lambda x: x["objective"]
    for path in spaces:
        from search.space import load_space  # only here: it imports Ray

        objective = load_space(path).objective
        flip = 1.0 if objective.mode == "max" else -1.0
        out[f"objective of {path.name}"] = (lambda w, f: lambda x: f * weighted(w)(x))(dict(objective.weights), flip)
    return out


def combinations(runs: Sequence[Run], pool: Sequence[str], most: int = 3) -> list[tuple[dict[str, float], float]]:
    """Weighted sums of up to `most` metrics of `pool`, each weight its sign over the metric's spread across all
    trials of all runs (so that each counts alike); best first by their worst rho over the runs."""
    spread = {}
    for k in pool:
        values = [m[k] for r in runs for m in r.trials.values() if math.isfinite(m.get(k, math.nan))]
        spread[k] = statistics.pstdev(values) if len(values) > 1 else 0.0
    usable = [k for k in pool if spread[k] > 0]
    found = []
    for size in range(1, most + 1):
        for names in itertools.combinations(usable, size):
            weights = {k: round(sign(k) / spread[k], 6) for k in names}
            worst = min(agreement(r, weighted(weights)).rho for r in runs)
            found.append((weights, worst))
    return sorted(found, key=lambda wf: -wf[1] if math.isfinite(wf[1]) else math.inf)


def table(runs: Sequence[Run], named: Mapping[str, Any]) -> list[str]:
    head = ["metric", *(f"{r.name}: rho / pick's rank of n" for r in runs), "mean rho"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for name, score in named.items():
        results = [agreement(r, score) for r in runs]
        rhos = [a.rho for a in results if math.isfinite(a.rho)]
        mean = statistics.fmean(rhos) if rhos else math.nan
        cells = [f"{a.rho:+.2f} / {a.rank} of {a.n}" if math.isfinite(a.rho) else "-" for a in results]
        rows.append((mean, [f"`{name}`", *cells, f"{mean:+.2f}" if rhos else "-"]))
    rows.sort(key=lambda r: -r[0] if math.isfinite(r[0]) else math.inf)
    return lines + ["| " + " | ".join(cells) + " |" for _, cells in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m search.agreement", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (STORAGE/NAME) of searches on paired data")
    p.add_argument("--space", action="append", type=Path, default=[], help="also score this space file's objective")
    p.add_argument("--combine", nargs="*", metavar="METRIC",
                   help="also search weighted sums of up to 3 of these metrics (default pool: every candidate)")
    p.add_argument("--every-epoch", action="store_true",
                   help="score every epoch of every trial (each a model the search could export), not only the last")
    p.add_argument("--markdown", type=Path, help="write the tables here as well")
    args = p.parse_args(argv)
    runs = []
    for path in args.runs:
        if not path.is_dir():
            print(f"error: {path}: no such run folder", file=sys.stderr)
            return 2
        run = read_run(path, args.every_epoch)
        if run is None or not run.trials:
            print(f"note: {path}: no trials scored against a truth (unpaired data or no metrics); left out",
                  file=sys.stderr)
            continue
        runs.append(run)
    if not runs:
        print("error: no run with paired evaluation to score", file=sys.stderr)
        return 2
    unit = "every epoch of every trial" if args.every_epoch else "trials, each at its last epoch"
    out = [f"Agreement with the truth (Spearman's rho over {unit}; rank 1 = the metric's pick is truly the best)", "",
           *table(runs, scorers(args.space))]
    if args.combine is not None:
        pool = args.combine or list(CANDIDATES)
        unknown = [m for m in pool if m not in CANDIDATES]
        if unknown:
            print(f"error: --combine {unknown[0]}: not a candidate metric; expected one of {', '.join(CANDIDATES)}",
                  file=sys.stderr)
            return 2
        best = combinations(runs, pool)[:10]
        out += ["", "Weighted sums, best first by their worst rho over the runs:", "",
                *table(runs, {json.dumps(w): weighted(w) for w, _ in best})]
    text = "\n".join(out) + "\n"
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
