"""The summary a finished search leaves: `summary/trials.csv`, `summary/report.md` and its pictures.

The parameter importances and the parallel-coordinates plot are Optuna's own: the trials are loaded
into an Optuna study (their knobs and best val objective) and drawn with `optuna.visualization.matplotlib`.
For a space of several objectives the report also shows the Pareto front on val (`pareto_front`) as a
table and as Optuna's Pareto-front plot, and says where the exported trial lies on it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import warnings
from pathlib import Path
from typing import Any

import optuna

from cyclegan.config import TrainConfig
from cyclegan.metrics import DIRECTIONS, IMAGE_METRICS, SLICE_METRICS
from search.select import TrialOutcome, status_counts
from search.study import StudyStore
from search.trainable import METRICS

# The study's V4 on its own test slices (report's Table 3), cross-contrast rows against the input slice.
STUDY_TABLE3 = {"t1_t1": (0.94, 33.09), "t2_t2": (0.87, 30.72), "t1_t2": (0.35, 28.48), "t2_t1": (0.55, 29.03)}
# The study's final training losses (report's Table 2): cycle, G, D, identity.
STUDY_TABLE2 = {"V1": (5.10, 2.30, 1.90, 1.60), "V2": (4.80, 2.10, 1.80, 1.30), "V3": (3.85, 1.20, 0.96, 0.39),
                "V4": (3.75, 0.93, 0.79, 0.20)}
DEFAULTS = TrainConfig()  # what a trial ran with where its config does not set a knob
YARDSTICKS = {"copied": "the input copied", "truth": "the truth at the model's size"}
ROW_NAMES = {"t1_t1": "T1 -> T2 -> T1", "t2_t2": "T2 -> T1 -> T2", "t1_t2": "T1 -> T2", "t2_t1": "T2 -> T1"}


def knob(o: TrialOutcome, key: str) -> Any:
    """A trial's value of a knob; one its config leaves out is the trainer's default (a seed of 0, not a blank).
    A trial with no config at all (Ray made its folder and the time budget ran out before it wrote its params)
    has no values: None, shown as "-", rather than the defaults it was never going to train with."""
    if not o.config:
        return None
    return o.config.get(key, getattr(DEFAULTS, key, None))


def show(value: Any) -> str:
    """A value as a table shows it: floats to 4 significant digits (a learning rate stays readable)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def varied_knobs(outcomes: list[TrialOutcome]) -> list[str]:
    keys = sorted({k for o in outcomes for k in o.config})
    return [k for k in keys if len({json.dumps(knob(o, k)) for o in outcomes}) > 1]


def write_trials_csv(path: Path, outcomes: list[TrialOutcome]) -> None:
    knobs = sorted({k for o in outcomes for k in o.config})
    # A multi-objective space's trials also report objective_0, objective_1, ...
    each = sorted({k for o in outcomes for k in (*o.last, *o.best) if re.fullmatch(r"objective_\d+", k)},
                  key=lambda k: int(k.rsplit("_", 1)[1]))
    metrics = ["epoch", "objective", *each, "loss_cycle", "loss_identity", "loss_G", "loss_D", *IMAGE_METRICS]
    tests = ["objective", *IMAGE_METRICS, *(f"{m}_sd" for m in SLICE_METRICS)]  # _sd: spread over the slices
    # rescore_val_*: the finalists' val re-score at full precision, what the winner was chosen by.
    header = ["trial_id", "status", "gpu_share", *knobs, *(f"last_{m}" for m in metrics),
              *(f"best_{m}" for m in metrics), *(f"rescore_val_{m}" for m in tests), *(f"test_{m}" for m in tests),
              "error", "path"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for o in outcomes:
            w.writerow([o.trial_id, o.status, "" if o.gpu_share is None else o.gpu_share,
                        *(knob(o, k) for k in knobs),
                        *(o.last.get(m, "") for m in metrics), *(o.best.get(m, "") for m in metrics),
                        *(o.val_rescore.get(m, "") for m in tests), *(o.test.get(m, "") for m in tests),
                        o.error, o.path])


def plot_study(outcomes: list[TrialOutcome], space: Any, store: StudyStore | None = None
               ) -> tuple[optuna.Study, str] | None:
    """The study Optuna's plots are drawn from, and a line that says what it holds; None with nothing to draw.

    The run's own study (`optuna.db`) where it has two complete trials or more: the knobs with the distributions
    they were drawn from, valued as the sampler was told (the val objective at the last epoch; Optuna's plots leave
    pruned trials out). Otherwise one rebuilt from the trials' best val objective, each knob with its distribution
    in the space (a float range stays a float range, on a log axis where the space samples it so), and a knob the
    space lists as points as a range of its numbers, or a choice where its values are not numbers.
    """
    if store is not None:
        try:
            study = optuna.load_study(study_name=store.name, storage=store.storage)
            complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        except (KeyError, ValueError, RuntimeError):
            complete = []
        if len(complete) >= 2 and any(t.params for t in complete):
            left_out = len(study.trials) - len(complete)
            return study, (f"From the run's Optuna study `{store.name}`: its {plural(len(complete), 'complete trial')}"
                           f" (val objective at the last epoch, as the sampler was told)"
                           + (f"; {left_out} pruned or failed left out, as Optuna's plots do." if left_out else "."))
    knobs = varied_knobs(outcomes)
    done = [o for o in outcomes if knobs and not math.isnan(o.val_objective)]
    if len(done) < 2:
        return None
    dists = {k: _distribution(space.params.get(k), [knob(o, k) for o in done]) for k in knobs}
    study = optuna.create_study(direction="maximize" if space.objective.mode == "max" else "minimize")
    for o in done:
        params = {k: _plain(knob(o, k)) for k in knobs}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=o.val_objective))
    return study, (f"From the {plural(len(done), 'trial')}' best val objective, each knob with its distribution in "
                   "the space.")


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _distribution(param: Any, values: list[Any]) -> optuna.distributions.BaseDistribution:
    """The space's distribution of a knob where every value lies in it, else one read off the values."""
    values = [_plain(v) for v in values]
    dist: optuna.distributions.BaseDistribution | None = None
    if param is not None and param.kind == "choice":
        dist = optuna.distributions.CategoricalDistribution([_plain(c) for c in param.choices])
    elif param is not None and param.kind == "int":
        dist = optuna.distributions.IntDistribution(param.low, param.high, log=param.log, step=param.step)
    elif param is not None:
        dist = optuna.distributions.FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    try:
        if dist is not None and all(dist._contains(dist.to_internal_repr(v)) for v in values):
            return dist
    except (ValueError, TypeError):
        pass  # a value the space's distribution cannot hold (a run resumed with another space): read off the values
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) == len(values) and min(numbers) < max(numbers):
        if all(isinstance(v, int) for v in numbers):
            return optuna.distributions.IntDistribution(min(numbers), max(numbers))
        return optuna.distributions.FloatDistribution(min(numbers), max(numbers))
    return optuna.distributions.CategoricalDistribution(sorted(set(values), key=lambda v: (str(type(v)), str(v))))


def optuna_plots(outcomes: list[TrialOutcome], space: Any, out_dir: Path, store: StudyStore | None = None
                 ) -> tuple[list[str], str]:
    """Draws Optuna's importance and parallel-coordinate plots (`plot_study`); returns the files made and the line
    that says what they were drawn from."""
    found = plot_study(outcomes, space, store)
    if found is None:
        return [], ""
    study, source = found
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    # A study of several objectives: the plots show the first, the one that selects.
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    made = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, plot in (("importances.png", oplt.plot_param_importances),
                           ("parallel_coordinates.png", oplt.plot_parallel_coordinate)):
            try:
                ax = plot(study, target=target, target_name="val objective")
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need the objective to vary
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=100)
            made.append(name)
            plt.close(fig)
    return made, source


CURVES = "curves.png"
SPLIT = "split.json"  # what every trial writes beside its metrics (search/trainable.py)
CURVE_LOSSES = ("loss_G", "loss_D", "loss_cycle", "loss_identity")
CURVE_SCORES = ("objective", "ssim_t1_t1_head", "ssim_t2_t2_head", "contrast_t1_t2", "contrast_t2_t1")


def read_metrics(trial_path: str, name: str = METRICS) -> list[dict[str, Any]]:
    """A trial's `metrics.jsonl` (one line per epoch; or another JSON-lines file of it, such as Ray's `result.json`),
    from a local folder or a storage URI; [] if missing."""
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(trial_path if "://" in trial_path else Path(trial_path).resolve())
        with fs.open_input_stream(f"{path}/{name}") as f:
            text = f.read().decode()
    except (OSError, ValueError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a killed trial ends the history
    return rows


def curves_plot(rows: list[dict[str, Any]], title: str, out_dir: Path) -> str | None:
    """The winner's training losses and val scores against the epoch, as TensorBoard shows them; the file made."""
    rows = [r for r in rows if isinstance(r.get("epoch"), int)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in rows]
    for ax, keys, label in ((left, CURVE_LOSSES, "training loss (epoch mean)"), (right, CURVE_SCORES, "val")):
        for k in keys:
            if all(k in r for r in rows):
                ax.plot(epochs, [r[k] for r in rows], label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_dir / CURVES, dpi=100)
    plt.close(fig)
    return CURVES


def pareto_front(outcomes: list[TrialOutcome], keys: tuple[str, ...], modes: list[str]) -> list[TrialOutcome]:
    """The trials no other trial dominates on val: none is at least as good in every objective and better in one.

    A trial's point is its objectives at its best checkpoint by the first objective, the model it would export;
    trials that reported no objective are left out.
    """
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    scored = [(o, p) for o in outcomes if (p := _point(o, keys, sign)) is not None]

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [o for o, p in scored if not any(dominates(q, p) for _, q in scored)]


def pareto_plot(outcomes: list[TrialOutcome], keys: tuple[str, ...], modes: list[str], labels: list[str],
                out_dir: Path) -> str | None:
    """Optuna's Pareto-front plot of the trials' val points (2 or 3 objectives); returns the file made."""
    scored = [(o, p) for o in outcomes if (p := _point(o, keys, [1.0] * len(keys))) is not None]
    if len(scored) < 2 or len(keys) > 3:
        return None
    study = optuna.create_study(directions=["maximize" if m == "max" else "minimize" for m in modes])
    for o, p in scored:
        study.add_trial(optuna.trial.create_trial(values=list(p), user_attrs={"trial_id": o.trial_id}))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = oplt.plot_pareto_front(study, target_names=labels)
    fig = ax.figure
    fig.set_size_inches(7, 5)
    fig.tight_layout()
    fig.savefig(out_dir / "pareto_front.png", dpi=100)
    plt.close(fig)
    return "pareto_front.png"


def _point(o: TrialOutcome, keys: tuple[str, ...], sign: list[float]) -> tuple[float, ...] | None:
    values = []
    for key, s in zip(keys, sign):
        v = o.best.get(key)
        if not isinstance(v, (int, float)) or math.isnan(v):
            return None
        values.append(s * float(v))
    return tuple(values)


def _pareto_lines(outcomes: list[TrialOutcome], winner: TrialOutcome | None, space: Any, out_dir: Path,
                  run_dir: str) -> list[str]:
    keys = space.reported_objectives().keys
    modes = [o.mode for o in space.objectives]
    labels = [f"{k}: {_objective_text(o)} ({o.mode})" for k, o in zip(keys, space.objectives)]
    plain = [f"{_objective_text(o, quote='')} ({o.mode})" for o in space.objectives]  # plot axes: no Markdown
    front = pareto_front(outcomes, keys, modes)
    on_front = {o.trial_id for o in front}
    lines = ["## Pareto front on val", "",
             f"The space names {len(keys)} objectives: " + "; ".join(labels) + ". A trial is on the front when "
             "no other trial is at least as good in every objective and better in one. A trial's point is its "
             "objectives at its best checkpoint by the first objective, the model it would export (Optuna's study "
             "holds each trial's last reported values: what the sampler was told).", "",
             "| trial | on the front | " + " | ".join(f"{k} ({m})" for k, m in zip(keys, modes)) + " | "
             + " | ".join(varied_knobs(outcomes)) + " |",
             "|---" * (2 + len(keys) + len(varied_knobs(outcomes))) + "|"]
    sign = -1 if space.objective.mode == "max" else 1
    shown = sorted((o for o in outcomes if _point(o, keys, [1.0] * len(keys))),
                   key=lambda o: (o.trial_id not in on_front, sign * o.best[keys[0]]))
    for o in shown:
        lines.append(f"| `{o.trial_id}` | {'yes' if o.trial_id in on_front else ''} | "
                     + " | ".join(f"{o.best[k]:.4f}" for k in keys) + " | "
                     + " | ".join(show(knob(o, k)) for k in varied_knobs(outcomes)) + " |")
    lines.append("")
    if winner is not None:
        where = "on the front" if winner.trial_id in on_front else "not on the front (a trial of the front is " \
            "better in some objective and no worse in the others)"
        lines += [f"Exported: trial `{winner.trial_id}`, {where}. The export is chosen by the first objective "
                  f"(`{keys[0]}`): the top {plural(space.top_k, 'trial')} by it on val are re-scored on val at full "
                  "precision, "
                  "and the best there is exported (test is only reported). Another trial of the front is one "
                  "command away: "
                  f"`python -m search.export {run_dir} --out DIR --trial ID`.", ""]
    plot = pareto_plot(outcomes, keys, modes, plain, out_dir)
    if plot:
        lines += [f"![Pareto front on val]({plot})", ""]
    return lines


def convergence_line(rows: list[dict[str, Any]], last_epoch: int, planned: int, mode: str) -> str | None:
    """One line where the winner is far from converged, else None.

    The rule: it stopped before its planned epochs, or it ran 1 epoch only, or its val objective was still climbing
    steeply: its last fifth of epochs (at least 1) brought more than a tenth of its whole rise since epoch 1 (a curve
    that levels off brings a few percent there; val noise on a plateau, a fraction of a percent of a real rise).
    """
    sign = 1.0 if mode == "max" else -1.0
    values = [sign * float(r["objective"]) for r in rows
              if isinstance(r.get("objective"), (int, float)) and math.isfinite(r["objective"])]
    head = "**Far from converged:** the winner "
    if last_epoch and last_epoch < planned:
        return head + (f"stopped at epoch {last_epoch} of {planned}; its figures are those of a model cut short "
                       "(the rule: fewer epochs run than planned).")
    if last_epoch == 1 or len(values) == 1:
        return head + "trained for 1 epoch only, too few to tell a trend (the rule: at least 2 epochs to judge)."
    if len(values) < 2:
        return None
    k = max(1, math.ceil(len(values) / 5))
    recent, whole = values[-1] - values[-1 - k], max(values) - values[0]
    if whole <= 0 or recent <= 0.1 * whole:
        return None
    return head + (f"was still improving: its val objective moved {sign * recent:+.4f} over its last "
                   f"{plural(k, 'epoch')} of {len(values)}, {recent / whole:.0%} of its whole rise since epoch 1 (the "
                   "rule: a last fifth of the epochs that brings more than a tenth of the rise); more epochs would "
                   "likely change it.")


# Below this share of the way from the input copied to the truth (on the test objective), the winner's translations
# are named far from the truth. Judged by eye on the phantom at 64 px: winners at 34% and 52% (U-Nets of the old
# quickstart) still showed the input's contrast, blurred; one at 69% (spaces/quickstart.yaml) showed the other.
FAR_FROM_TRUTH = 0.6


def truth_line(test: dict[str, float], yardsticks: dict[str, dict[str, float]], objective: Any) -> str | None:
    """On paired data, one line placing the winner's test objective between the input copied (0%) and the true
    other contrast brought through the model's size (100%); "far from the truth" below FAR_FROM_TRUTH.

    Pixel scores alone cannot say this: SSIM against the truth rewards a sharp copy of the input's structure over a
    coarse translation that shows the other contrast, so a model that translates can score below a copy."""
    try:
        won, copy, truth = (objective.value(m) for m in (test, yardsticks["copied"], yardsticks["truth"]))
    except KeyError:
        return None
    if objective.mode == "min":
        won, copy, truth = -won, -copy, -truth
    if not truth > copy:
        return None  # an objective that does not rank the truth above a copy cannot place the winner between them
    share = (won - copy) / (truth - copy)
    sign = -1 if objective.mode == "min" else 1
    head = "**Far from the truth:** " if share < FAR_FROM_TRUTH else "Against the truth: "
    far = ("; its samples may still show the input's contrast, and it needs more training (the rule: under "
           f"{FAR_FROM_TRUTH:.0%} of the way)." if share < FAR_FROM_TRUTH else ".")
    return head + (f"the winner's test objective {sign * won:.4f} lies {share:.0%} of the way from the input copied "
                   f"unchanged ({sign * copy:.4f}) to the true other contrast ({sign * truth:.4f}, through the model's "
                   "size)" + far)


def selection_line(finalists: int) -> str:
    """How the winner was chosen, in one line: the val re-score decides, test is only reported."""
    if finalists == 1:
        chosen = ("Chosen on val: the top trial by the val objective it reported while training was re-scored from "
                  "its best checkpoint at full precision (fp32, no autocast, every val slice).")
    else:
        chosen = (f"Chosen on val: the top {finalists} trials by the val objective they reported while training were "
                  "re-scored from their best checkpoints at full precision (fp32, no autocast, every val slice), and "
                  "the best by that re-score won (ties broken by the matching PSNRs).")
    return chosen + " Test was scored only after the winner was fixed: its figures are reported, never ranked on."


def evaluation_line(paired: bool | None, eval_size: int | None) -> str:
    """Whether the figures are paired (against the true other contrast) or not, and at what resolution."""
    what = ("paired: cross-contrast rows against the true other contrast" if paired else
            "unpaired: cross-contrast rows against the input slice (the data has no pairs)" if paired is not None
            else "paired or not: not recorded")
    size = (f"at {eval_size} x {eval_size} px for every trial" if eval_size else
            "at each trial's own `resize` (the split records no common evaluation size)")
    return f"Evaluation: {what}; {size}."


def evaluation(o: TrialOutcome) -> tuple[bool | None, int | None]:
    """(paired, evaluation size) of a trial: from its reported metrics and its `split.json`, where recorded."""
    split = read_split(o.path)
    recorded = split.get("evaluation")
    details = recorded if isinstance(recorded, dict) else {}
    paired = o.best.get("paired", o.last.get("paired"))
    if paired is None:
        paired = split.get("paired_eval", details.get("paired"))
    if paired is None and isinstance(recorded, str):
        paired = recorded.lower().startswith("paired")
    size = split.get("eval_size", details.get("eval_size"))
    return (None if paired is None else bool(paired)), (int(size) if isinstance(size, (int, float)) else None)


def read_split(trial_path: str) -> dict[str, Any]:
    """A trial's `split.json`, from a local folder or a storage URI; {} if missing or unreadable."""
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(trial_path if "://" in trial_path else Path(trial_path).resolve())
        with fs.open_input_stream(f"{path}/{SPLIT}") as f:
            split = json.loads(f.read().decode())
    except (OSError, ValueError):
        return {}
    return split if isinstance(split, dict) else {}


def write_report(path: Path, outcomes: list[TrialOutcome], winner: TrialOutcome | None, finalists: list[TrialOutcome],
                 space: Any, data: str, plots: list[str], samples: str | None, study: StudyStore | None = None,
                 run_dir: str = "RUN_DIR", plots_source: str = "", schedule: list[str] | None = None,
                 yardsticks: dict[str, dict[str, float]] | None = None) -> None:
    """`schedule`: the lines of the winner's schedule under PBT (`search.lineage.schedule_lines`). `yardsticks`: on
    paired data, the test split scored with the inputs copied and with the truth as translations
    (`search.select.yardsticks`)."""
    knobs = varied_knobs(outcomes) or sorted({k for o in outcomes for k in o.config})[:6]
    knobs = [k for k in knobs if k != "epochs"]  # the table's `epochs` column shows them: run of planned
    if space.multi_objective:
        objective = ("Objectives: " + "; ".join(f"{_objective_text(o)} ({o.mode})" for o in space.objectives)
                     + " on the val split; the first also ranks, stops and selects")
    else:
        objective = f"Objective: {_objective_text(space.objective)} on the val split ({space.objective.mode})"
    lines = [f"# Search report: {Path(space.path).name}", "",
             f"Data: `{data}`. {objective}. Trials: {len(outcomes)} ({status_counts(outcomes)}).", ""]
    if study is not None:
        lines += [f"Optuna study `{study.name}` in `{study.url}`; open it with `{study.dashboard}`.", ""]
    if winner is not None:
        paired, eval_size = evaluation(winner)
        lines += [f"## Winner: trial `{winner.trial_id}`", ""]
        unfinished = convergence_line(read_metrics(winner.path), winner.last.get("epoch", 0), knob(winner, "epochs"),
                                      space.objective.mode)
        lines += [unfinished, ""] if unfinished else []
        placed = truth_line(winner.test, yardsticks, space.objective) if paired and yardsticks else None
        lines += [placed, ""] if placed else []
        lines += [
                  selection_line(len(finalists)) + " Exported to `best/`.", "",
                  evaluation_line(paired, eval_size), "",
                  "Knobs: " + ", ".join(f"`{k}={show(winner.config[k])}`" for k in sorted(winner.config)), "",
                  "| row | test SSIM | test PSNR (dB) | test SSIM, head | test PSNR, head | study V4 SSIM "
                  "| study V4 PSNR |",
                  "|---|---|---|---|---|---|---|"]
        for d in DIRECTIONS:
            t = winner.test
            lines.append(f"| {ROW_NAMES[d]} | {_pm(t, f'ssim_{d}', 3)} | {_pm(t, f'psnr_{d}', 2)} | "
                         f"{_pm(t, f'ssim_{d}_head', 3)} | {_pm(t, f'psnr_{d}_head', 2)} | {STUDY_TABLE3[d][0]:.2f} | "
                         f"{STUDY_TABLE3[d][1]:.2f} |")
        for (name, c), d in ((kv, d) for kv in (yardsticks or {}).items() if paired for d in ("t1_t2", "t2_t1")):
            lines.append(f"| {ROW_NAMES[d]}, {YARDSTICKS[name]} | {_fmt(c.get(f'ssim_{d}'))} | "
                         f"{_fmt(c.get(f'psnr_{d}'), 2)} | {_fmt(c.get(f'ssim_{d}_head'))} | "
                         f"{_fmt(c.get(f'psnr_{d}_head'), 2)} | | |")
        lines += ["", "Same-contrast rows are cycle reconstructions. "
                  + ("The yardstick rows score each input copied as its own translation, and the truth brought "
                     "through the model's size; SSIM favours the copy's sharp structure, so a coarse translation "
                     "can score below it while showing the other contrast. " if paired and yardsticks else "")
                  + "Cross-contrast rows compare with the "
                  + ("true other contrast (paired data)." if paired else
                     "input slice, as the study did: a weak yardstick (the data has no pairs)."
                     if paired is not None else "true other contrast where the data has pairs."),
                  "SSIM: 7x7 uniform window, data_range 1 on [0, 1]; 'head' averages inside the head mask. "
                  "Mean ± sample standard deviation over the test slices. The study's figures are on its own "
                  "test slices, not these.", ""]
        if samples:
            lines += [f"![test slices: T1, G(T1), F(G(T1)), T2, F(T2), G(F(T2))]({samples})", ""]
        if (path.parent / CURVES).is_file():
            lines += [f"![the winner's training losses and val scores by epoch]({CURVES})", ""]
        lines += schedule or []
    if space.multi_objective:
        lines += _pareto_lines(outcomes, winner, space, path.parent, run_dir)
    named = [o for o in outcomes if o.name]
    if named:
        lines += ["## The named runs beside the study", "",
                  "Final training losses (ours / the study's Table 2, where the run is one of V1-V4) and test SSIM "
                  "(whole image). Our losses are means over each run's last epoch; the study's loss definitions "
                  "follow the TensorFlow tutorial, so compare trends more than values.", "",
                  "| run | seed | resize | batch | depth | D blocks | epochs | loss_cycle | loss_G | loss_D "
                  "| loss_identity | "
                  + " | ".join(f"test ssim {ROW_NAMES[d]}" for d in DIRECTIONS) + " |",
                  "|---" * (11 + len(DIRECTIONS)) + "|"]
        for o in sorted(named, key=lambda o: (o.name, knob(o, "seed"))):
            table2 = STUDY_TABLE2.get(o.name)
            losses = [_fmt(o.last.get(k)) + (f" / {table2[i]:.2f}" if table2 else "")
                      for i, k in enumerate(("loss_cycle", "loss_G", "loss_D", "loss_identity"))]
            tests = [f"{o.test[f'ssim_{d}']:.3f}" if o.test else "-" for d in DIRECTIONS]
            shown = (show(knob(o, k)) for k in ("seed", "resize", "batch_size", "unet_depth", "disc_layers"))
            lines.append(f"| {o.name} | " + " | ".join(shown) + f" | {o.last.get('epoch', 0)} of {knob(o, 'epochs')} | "
                         + " | ".join(losses + tests) + " |")
        lines.append("")
    if not getattr(space, "mutated", ()):  # under PBT, equal configs at the end are copies, not repeats
        lines += _repeat_lines(outcomes)
    lines += ["## Finalists, ranked by the val re-score (test reported, not ranked on)", "",
              "| trial | val objective (training) | val objective (re-scored, fp32) | test objective | "
              + " | ".join(f"test ssim_{d}" for d in DIRECTIONS) + " |", "|---" * (4 + len(DIRECTIONS)) + "|"]
    for o in finalists:
        tests = [_fmt(o.test.get("objective"), 4), *(_fmt(o.test.get(f"ssim_{d}")) for d in DIRECTIONS)]
        lines.append(f"| `{o.trial_id}` | {o.val_objective:.4f} | {_fmt(o.val_rescore.get('objective'), 4)} | "
                     + " | ".join(tests) + " |")
    lines += ["", "## All trials, best val objective first", "", "`epochs`: run of planned.", "",
              "| trial | status | epochs | " + " | ".join(knobs) + " | best val objective | last loss_G | "
              "last loss_cycle |", "|---" * (6 + len(knobs)) + "|"]
    order = sorted(outcomes, key=lambda o: -math.inf if math.isnan(o.val_objective) else o.val_objective,
                   reverse=space.objective.mode == "max")
    for o in order:
        label = f"`{o.trial_id}`" + (f" ({o.name})" if o.name else "")
        lines.append(f"| {label} | {o.status} | {o.last.get('epoch', 0)} of {knob(o, 'epochs')} | "
                     + " | ".join(show(knob(o, k)) for k in knobs)
                     + f" | {o.val_objective:.4f} | {_fmt(o.last.get('loss_G'))} | {_fmt(o.last.get('loss_cycle'))} |")
    failed = [o for o in outcomes if o.status == "error"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- `{o.trial_id}`: {o.error} (logs: `{o.path}`)" for o in failed]
    if plots:
        lines += ["", "## What the search learnt (Optuna)", ""] + ([plots_source, ""] if plots_source else []) \
            + [f"![{p}]({p})" for p in plots]
    path.write_text("\n".join(lines) + "\n")


def repeats(outcomes: list[TrialOutcome]) -> list[list[TrialOutcome]]:
    """Trials of one point (or configuration) that differ only in `seed` and ran as many epochs, grouped; a group of
    one is no repeat. A trial ASHA stopped at epoch 3 is no sample of what its configuration does in 30."""
    groups: dict[str, list[TrialOutcome]] = {}
    for o in outcomes:
        if o.status == "not started":
            continue
        key = json.dumps([o.name, o.last.get("epoch"), {k: v for k, v in o.config.items() if k != "seed"}],
                         sort_keys=True)
        groups.setdefault(key, []).append(o)
    return [g for g in groups.values() if len(g) > 1]


def _repeat_lines(outcomes: list[TrialOutcome]) -> list[str]:
    """Mean ± sd over seeds of each configuration that ran more than once: the run-to-run spread."""
    groups = repeats(outcomes)
    if not groups:
        return []
    # On paired data the truth itself: the translations against the true other contrast; else the study's rows.
    paired = all(o.last.get("paired") for g in groups for o in g)
    keys = ("objective", "ssim_t1_t2_head", "ssim_t2_t1_head", "psnr_t1_t2_head", "psnr_t2_t1_head") if paired else \
        ("objective", "ssim_t1_t1_head", "ssim_t2_t2_head", "contrast_t1_t2", "contrast_t2_t1")
    knobs = [k for k in varied_knobs([g[0] for g in groups]) if k != "seed"] if len(groups) > 1 else []
    lines = ["## Configurations run with several seeds", "",
             "Mean ± sample standard deviation over the seeds (test figures over the seeds re-scored on test), "
             "each row over trials that ran the same number of epochs.", "",
             "| configuration | seeds | epochs | val objective | " + " | ".join(f"test {k}" for k in keys) + " |",
             "|---" * (4 + len(keys)) + "|"]
    for g in groups:
        g = sorted(g, key=lambda o: knob(o, "seed"))
        label = g[0].name or ", ".join(f"{k}={show(knob(g[0], k))}" for k in knobs) or "all"
        val = _mean_sd([o.val_objective for o in g])
        tests = [_mean_sd([o.test[k] for o in g if k in o.test]) for k in keys]
        seeds = ", ".join(str(knob(o, "seed")) for o in g)
        lines.append(f"| {label} | {seeds} | {g[0].last.get('epoch', 0)} | {val} | " + " | ".join(tests) + " |")
    return lines + [""]


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def _objective_text(objective, quote: str = "`") -> str:
    if objective.metric is not None:
        return f"{quote}{objective.metric}{quote}"
    return " + ".join(f"{w:g} x {quote}{m}{quote}" for m, w in objective.weights.items())


def _pm(metrics: dict[str, float], key: str, digits: int) -> str:
    """'mean ± sd' of a test metric over slices, or the mean alone where no spread was recorded."""
    sd = metrics.get(f"{key}_sd")
    return f"{metrics[key]:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"
