"""The search's Optuna study, kept in an Optuna storage so that Optuna's own tools can open it.

    optuna-dashboard sqlite:///runs/NAME/optuna.db             # trials, importances, Pareto front
    optuna.load_study(study_name="NAME", storage="sqlite:///runs/NAME/optuna.db")

A local run keeps its study in `RUN_DIR/optuna.db` (SQLite), named after the run; `--optuna-storage URL`
puts it in any database Optuna's `RDBStorage` takes (e.g. `postgresql://user@host/db` on a cluster).
OptunaSearch (`search.space.FidelityOptunaSearch`) creates the study and tells it each trial as Tune finishes
it, with the fidelity it reached: a trial that ran all its epochs is COMPLETE with its final values; one that
ASHA or the time budget stopped is PRUNED (with one objective its value is the one it stopped on; with several,
Optuna keeps no values for a pruned trial, so they are in its user attribute `values_at_stop`); one that
failed, or never reported anything, is FAIL. With one objective every epoch's value is an intermediate value
at that epoch; every told trial has `epochs_run`. `--resume` opens the same study: OptunaSearch calls
`optuna.create_study(load_if_exists=True)`, and its restored state points at the same database, so
the sampler sees every trial told before the interruption, even those after Ray's last checkpoint of
the searcher. A run on remote storage (s3://) without `--optuna-storage` keeps the study in memory,
saved with Ray's searcher state, as before. Points and grid spaces have no sampler and no study.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy

from cyclegan.data import DataError

STUDY_FILE = "optuna.db"
# What opening a database can raise: a bad URL, an unreachable server, a missing driver, a schema from
# another Optuna version.
_OPEN_ERRORS = (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, RuntimeError, OSError)


@dataclass(frozen=True)
class StudyStore:
    """Where a search's study lives: the storage OptunaSearch is given, the study's name, and how to show it."""

    storage: optuna.storages.RDBStorage
    name: str
    url: str  # with any password hidden: what messages and the report show

    @property
    def dashboard(self) -> str:
        return f"optuna-dashboard {self.url}"


def open_study_store(url: str | None, storage: str, name: str, *, resume: bool, sampled: bool) -> StudyStore | None:
    """Opens the study's storage before Ray starts, refusing a clash with a study already there.

    `storage` is the run's storage as `prepare` resolved it (a local folder or a URI), `sampled` whether
    Optuna samples the space's trials. Returns None where the search keeps no study in a database.
    """
    if not sampled:
        if url:
            print("note: a points or grid space has no Optuna sampler, so no study; --optuna-storage is ignored",
                  file=sys.stderr)
        return None
    if url is None:
        if "://" in storage:
            print("note: the Optuna study is kept with Ray's searcher state only; pass --optuna-storage URL to "
                  "keep it in a database that optuna-dashboard can open", file=sys.stderr)
            return None
        path = Path(storage) / name / STUDY_FILE
        if resume and not path.exists():
            return None  # a run begun before studies were kept in a database: nothing to reopen
        url, given = f"sqlite:///{path}", False
    else:
        given = True
    shown = _hide_password(url)
    try:
        rdb = optuna.storages.RDBStorage(url)
        exists = name in optuna.study.get_all_study_names(rdb)
    except _OPEN_ERRORS as e:
        raise DataError(f"--optuna-storage {shown}: cannot open it ({' '.join(str(e).split())})") from None
    if exists and not resume:
        raise DataError(f"{shown}: holds a study named {name!r} already; pass --resume to continue that run, "
                        "or another --name" + ("" if given else f" (or remove {STUDY_FILE})"))
    if resume and not exists and given:
        raise DataError(f"{shown}: no study named {name!r} to resume; give the --optuna-storage the run began with")
    return StudyStore(rdb, name, shown)


def close_study(store: StudyStore) -> int:
    """Marks trials that the study still holds as running as failed, once Tune has finished every trial.

    They are trials the driver asked for and never told about: asked after the searcher's last checkpoint
    before a kill. Returns how many there were.
    """
    study = optuna.load_study(study_name=store.name, storage=store.storage)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def _hide_password(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url  # not a URL at all: opening it fails with a message that shows it
