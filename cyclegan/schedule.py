"""A run's schedule: the knobs it trained with at each epoch, and how to replay one as a single run.

Population-based training (search/population.py) changes some knobs of a trial while it trains and copies good
trials' weights into weak ones, so the model a search exports was trained by a lineage of trials, with knobs that
changed on the way. Its schedule (`schedule.json` beside the export) says so epoch by epoch:

    {"config": {... the exported checkpoint's config ...},
     "knobs": ["lr", "lambda_cycle"],
     "epochs": [{"epoch": 1, "trained_by": "3f2a1_00001", "lr": 0.0002, "lambda_cycle": 10.0}, ...]}

`python -m cyclegan.train --schedule schedule.json --out DIR` trains one run with those knobs at those epochs, as
Ray Tune's `PopulationBasedTrainingReplay` replays a trial's policy: each stretch of epochs with the same knobs
continues the checkpoint of the stretch before it (the path an exploit takes, with no other trial's weights).
Only `CONTINUABLE` knobs can change along a schedule; the rest are the config's.

    python -m pytest tests/cyclegan/test_schedule.py -q
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclegan.config import CONTINUABLE, ConfigError, TrainConfig

SCHEDULE = "schedule.json"
KNOBS = "knobs"  # a metrics row's scheduled knobs, as the epoch was trained with them
TRAINED_BY = "trained_by"  # a metrics row's trial: the one that trained that epoch (after an exploit, another one's)


class ScheduleError(ValueError):
    """A schedule file that cannot be replayed; one line naming the file and the key."""


@dataclass(frozen=True)
class Schedule:
    config: TrainConfig  # every knob but the scheduled ones, as the last epoch had them
    knobs: tuple[str, ...]  # the knobs that change along the schedule
    epochs: tuple[dict[str, Any], ...]  # epoch 1, 2, ...: {"epoch", "trained_by", and each knob's value}

    @classmethod
    def from_rows(cls, config: TrainConfig, rows: Iterable[dict[str, Any]]) -> Schedule | None:
        """The schedule of a run's metrics rows (those of `metrics.jsonl` that carry `knobs`), or None where the
        rows carry none (a run whose knobs never changed)."""
        rows = [r for r in rows if isinstance(r.get(KNOBS), dict)]
        if not rows:
            return None
        knobs = tuple(rows[-1][KNOBS])
        epochs = tuple({"epoch": r["epoch"], TRAINED_BY: r.get(TRAINED_BY), **{k: r[KNOBS][k] for k in knobs}}
                       for r in rows)
        return cls(config, knobs, epochs)

    @property
    def last_epoch(self) -> int:
        return self.epochs[-1]["epoch"] if self.epochs else 0

    def config_at(self, epoch: int) -> TrainConfig:
        """The config epoch `epoch` was trained with."""
        row = self.epochs[epoch - 1]
        return self.config.replace(**{k: row[k] for k in self.knobs})

    def stretches(self, after: int = 0, until: int | None = None) -> list[tuple[int, TrainConfig]]:
        """(last epoch, config) of each stretch of epochs with the same knobs, from epoch `after + 1` to `until`
        (default: the schedule's end)."""
        end = self.last_epoch if until is None else min(until, self.last_epoch)
        out: list[tuple[int, TrainConfig]] = []
        for epoch in range(after + 1, end + 1):
            cfg = self.config_at(epoch)
            if out and out[-1][1] == cfg:
                out[-1] = (epoch, cfg)
            else:
                out.append((epoch, cfg))
        return out

    def lineage(self) -> list[tuple[int, int, str | None]]:
        """(first epoch, last epoch, trial) of each stretch trained by one trial, in order."""
        out: list[tuple[int, int, str | None]] = []
        for row in self.epochs:
            if out and out[-1][2] == row[TRAINED_BY]:
                out[-1] = (out[-1][0], row["epoch"], row[TRAINED_BY])
            else:
                out.append((row["epoch"], row["epoch"], row[TRAINED_BY]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "knobs": list(self.knobs), "epochs": [dict(r) for r in self.epochs]}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Schedule:
        """Reads and checks a schedule file; raises ScheduleError naming the file and the key."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScheduleError(f"{path}: not a readable schedule ({e})") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<schedule>") -> Schedule:
        def fail(key: str, problem: str) -> ScheduleError:
            return ScheduleError(f"{source}: {key}: {problem}")

        if not isinstance(raw, dict) or set(raw) != {"config", "knobs", "epochs"}:
            raise fail("(top level)", "expected a mapping of config, knobs and epochs")
        try:
            config = TrainConfig.from_dict(raw["config"])
        except ConfigError as e:
            raise fail("config", str(e)) from None
        knobs = raw["knobs"]
        if not isinstance(knobs, list) or not all(isinstance(k, str) for k in knobs):
            raise fail("knobs", f"expected a list of knob names, got {knobs!r}"[:200])
        for k in knobs:
            if k not in CONTINUABLE:
                raise fail("knobs", f"{k!r} cannot change while a run trains; allowed: {', '.join(CONTINUABLE)}")
        epochs = raw["epochs"]
        if not isinstance(epochs, list) or not epochs:
            raise fail("epochs", "expected a non-empty list of {epoch, trained_by, knob: value}")
        for i, row in enumerate(epochs):
            if not isinstance(row, dict) or row.get("epoch") != i + 1:
                raise fail(f"epochs[{i}]", f"expected epoch {i + 1} (one row an epoch, from 1, in order)")
            missing = [k for k in knobs if k not in row]
            if missing:
                raise fail(f"epochs[{i}]", f"no value for {', '.join(missing)}")
            try:
                config.replace(**{k: row[k] for k in knobs})
            except ConfigError as e:
                raise fail(f"epochs[{i}]", str(e)) from None
        rows = tuple({"epoch": r["epoch"], TRAINED_BY: r.get(TRAINED_BY), **{k: r[k] for k in knobs}} for r in epochs)
        return cls(config, tuple(knobs), rows)


def knobs_of(cfg: TrainConfig, names: Iterable[str]) -> dict[str, Any]:
    """A metrics row's `knobs`: the values of `names` in the config an epoch was trained with."""
    return {k: getattr(cfg, k) for k in names}
