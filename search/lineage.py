"""The winner's schedule in the report of a population-based search: each mutated knob over the epochs.

The exported model was trained by a lineage of trials (PBT copies good trials' checkpoints into weak ones and
mutates their knobs), so its knobs are a schedule, not one value each. `schedule_plot` draws each mutated knob
against the epoch: the winner's lineage bold, each stretch coloured by the trial that trained it, and every trial's
own reported knobs faint behind it, so the population's exploration shows too. `schedule_lines` is its table.

    python -m pytest tests/search/test_pbt.py -q
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cyclegan.schedule import KNOBS, Schedule

SCHEDULE_PLOT = "schedule.png"


def schedule_plot(schedule: Schedule, population: dict[str, list[dict[str, Any]]], out_dir: Path) -> str | None:
    """Draws `schedule.png` in `out_dir`; `population` is each trial's id -> its reported rows (Ray's result rows,
    every epoch it trained, before and after an exploit). Returns the file's name, or None with no knob to draw."""
    if not schedule.knobs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(schedule.knobs), 1, figsize=(9, 2.6 * len(schedule.knobs)), sharex=True,
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    stretches = schedule.lineage()
    for ax, knob in zip(axes[:, 0], schedule.knobs):
        for rows in population.values():
            own = sorted((r["epoch"], r[KNOBS][knob]) for r in rows
                         if isinstance(r.get(KNOBS), dict) and knob in r[KNOBS] and isinstance(r.get("epoch"), int))
            if own:
                ax.plot(*zip(*own), color="0.8", lw=1, marker=".", ms=3, zorder=1)
        for i, (first, last, trial) in enumerate(stretches):
            # Each stretch starts where the last ended, so that the line shows the step an exploit made.
            start = max(first - 1, 1)
            xs = list(range(start, last + 1))
            ys = [schedule.epochs[e - 1][knob] for e in xs]
            ax.plot(xs, ys, color=colours[i % len(colours)], lw=2.5, marker="o", ms=4, zorder=2,
                    label=f"epochs {first}-{last}: trial {trial}")
        ax.set_ylabel(knob)
        ax.grid(alpha=0.3)
        if all(r[knob] > 0 for r in schedule.epochs) and _spread(schedule, knob) > 10:
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("epoch")
    fig.suptitle("The winner's schedule (bold, by the trial that trained each stretch) and every trial's (grey)")
    fig.tight_layout()
    fig.savefig(out_dir / SCHEDULE_PLOT, dpi=100)
    plt.close(fig)
    return SCHEDULE_PLOT


def _spread(schedule: Schedule, knob: str) -> float:
    values = [r[knob] for r in schedule.epochs]
    return max(values) / min(values) if min(values) > 0 else 0.0


def schedule_lines(schedule: Schedule, picture: str | None) -> list[str]:
    """The report's section: the lineage as a table of stretches, and the picture."""
    lines = ["## The winner's schedule (population-based training)", "",
             f"The exported model was trained by {len({t for *_, t in schedule.lineage()})} trial(s) in turn, "
             "each continuing the last one's checkpoint with its own knobs. `best/schedule.json` holds them epoch "
             "by epoch; `python -m cyclegan.train --schedule best/schedule.json --out DIR` replays them as one run.",
             "", "| epochs | trained by | " + " | ".join(schedule.knobs) + " |",
             "|---|---|" + "---|" * len(schedule.knobs)]
    for first, last, trial in schedule.lineage():
        knob_changes = []
        for knob in schedule.knobs:
            values = [schedule.epochs[e - 1][knob] for e in range(first, last + 1)]
            shown = f"{values[0]:.4g}" if len(set(values)) == 1 else f"{values[0]:.4g} .. {values[-1]:.4g}"
            knob_changes.append(shown)
        epochs = str(first) if first == last else f"{first}-{last}"
        lines.append(f"| {epochs} | `{trial}` | " + " | ".join(knob_changes) + " |")
    lines.append("")
    if picture:
        lines += [f"![each mutated knob by epoch: the winner's lineage and every trial]({picture})", ""]
    return lines
