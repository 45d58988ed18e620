"""The search's Optuna study, kept in an Optuna storage so that Optuna's own tools can open it.

    optuna-dashboard sqlite:///runs/NAME/optuna.db             # trials, importances, Pareto front
    optuna.load_study(study_name="NAME", storage="sqlite:///runs/NAME/optuna.db")

A local run keeps its study in `RUN_DIR/optuna.db` (SQLite), named after the run; `--optuna-storage URL`
puts it in any database Optuna's `RDBStorage` takes (e.g. `postgresql://user@host/db` on a cluster).
OptunaSearch (`FidelityOptunaSearch`, below) creates the study and tells it each trial as Tune finishes
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

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from cyclegan.config import TrainConfig
from cyclegan.data import DataError

STUDY_FILE = "optuna.db"
TUNE_TRIAL_ID = "tune_trial_id"  # the user attribute that names each Optuna trial's Tune trial
OBJECTIVE = "objective"  # what a trial reports its (first) objective as; objective_0, ... with several
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


class FidelityOptunaSearch(OptunaSearch):
    """OptunaSearch that tells the study how far each trial ran, and whose study may outlive the driver.

    OptunaSearch tells every trial that reported a value as COMPLETE, so a trial ASHA (or the time budget)
    stopped after a few epochs would teach the sampler its low-fidelity value as if it had run to the end.
    Here a trial whose last result is before its config's `epochs` is told PRUNED, as Optuna's own pruners
    would: with one objective its per-epoch values are its intermediate values (keyed by `epoch`, the last one
    included: Tune sends the result ASHA stops on to `on_trial_complete` only), and Optuna records the last one
    as its value; TPE ranks pruned trials below complete ones, deeper first. Optuna refuses values with a PRUNED
    tell and intermediate values in a study of several objectives, so there the values at the stop go to the
    trial's user attribute `values_at_stop` instead, and TPE sees a pruned trial without values (NSGA-II skips
    it). A trial that ran all its epochs is COMPLETE with its final values; one that errored, never reported
    anything, or ended on a value Optuna refuses (NaN) is FAIL. Every told trial gets the user attribute
    `epochs_run`.

    Its study may live in a database (`search/study.py`). A resumed run restores the searcher and the trials
    from Ray's last experiment checkpoint, but the study was told everything up to the moment the driver
    stopped. A trial that finished after that checkpoint is run again by Tune from its own last checkpoint;
    the study keeps what it was told first, and the replayed epochs and end are not sent (Optuna refuses to
    update a finished trial, and OptunaSearch would let that refusal end the whole run).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._epochs: dict[str, int] = {}  # each suggested trial's planned epochs
        self._reported: dict[str, int] = {}  # each trial's last epoch given to the study

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A searcher pickled before these records existed (a run begun then and resumed now).
        self.__dict__.update({"_epochs": {}, "_reported": {}, **state})

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._epochs[trial_id] = int(config.get("epochs", TrainConfig().epochs))
            # Which Tune trial this is, so that the study can be checked against the run (`reconcile_study`).
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if "epoch" in result:  # the epoch, not Tune's count of reports, is what metrics.jsonl and ASHA count by
            result = {**result, TRAINING_ITERATION: result["epoch"]}
            self._reported[trial_id] = max(self._reported.get(trial_id, 0), int(result["epoch"]))
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)  # OptunaSearch warns of a repeat
        trial = self._ot_trials[trial_id]
        result = result or {}
        state, values = self.fidelity(trial_id, result, error)
        try:
            if state != TrialState.FAIL and result.get("epoch", 0) > self._reported.get(trial_id, 0):
                # Tune gives the result it stops a trial on (ASHA's, or at max_t) to on_trial_complete only.
                self.on_trial_result(trial_id, result)
            if "epoch" in result:
                trial.set_user_attr("epochs_run", int(result["epoch"]))
            if state == TrialState.PRUNED:
                if self.multi_objective:
                    trial.set_user_attr("values_at_stop", values)
                values = None  # Optuna takes a pruned trial's value from its last intermediate value
            self._ot_study.tell(trial, values, state=state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # a trial replayed after a resume, told before the interruption
        self._completed_trials.add(trial_id)

    @property
    def multi_objective(self) -> bool:
        return isinstance(self.metric, list)

    def fidelity(self, trial_id: str, result: Mapping[str, Any], error: bool) -> tuple[TrialState, list | None]:
        """(the state to tell, the values at the trial's last epoch) of a trial Tune has ended."""
        metrics = self.metric if self.multi_objective else [self.metric]
        planned = self._epochs.get(trial_id) or result.get("config/epochs") or TrainConfig().epochs
        return fidelity(metrics, result, error, planned)


def fidelity(metrics: list[str], result: Mapping[str, Any], error: bool, planned: int
             ) -> tuple[TrialState, list[float] | None]:
    """(the state, the values of `metrics` at its last epoch) of a trial that ended on `result` (its last
    reported metrics), `error` whether it failed, `planned` the epochs its config asked for."""
    values = [result.get(m) for m in metrics]
    if error or not result:  # a failure, or a trial stopped before it reported anything (the time budget)
        return TrialState.FAIL, None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return TrialState.FAIL, None  # Optuna refuses NaN; OptunaSearch would leave the trial RUNNING
    if "epoch" in result and stopped_early(result["epoch"], planned):
        return TrialState.PRUNED, [float(v) for v in values]
    return TrialState.COMPLETE, [float(v) for v in values]


def reconcile_study(store: StudyStore, results: Any) -> list[int]:
    """Makes the study say what the run says of every trial: its state and its values; returns the trial
    numbers it changed.

    They can differ after a resume. A driver killed (SIGKILL, a lost head node) after the study was told a trial's
    end, and before Ray's next save of the run's state, leaves a run that does not know the end: `--resume` runs
    that trial on from its last checkpoint (or from the start) while the study holds what it was told first, and
    Optuna refuses to change a finished trial. Here the run, which holds the weights and metrics that selection
    reads, wins: the study's record of each trial is rewritten to match what Tune ended with. `results` are the
    run's `tune.Result`s; trials are matched by the user attribute `tune_trial_id` (set when each was asked for).
    """
    study = optuna.load_study(study_name=store.name, storage=store.storage)
    metrics = [OBJECTIVE] if len(study.directions) == 1 else [f"{OBJECTIVE}_{i}" for i in range(len(study.directions))]
    by_tune_id = {t.user_attrs.get(TUNE_TRIAL_ID): t for t in study.get_trials(deepcopy=False)}
    changed = []
    for result in results:
        last = dict(result.metrics or {})
        trial = by_tune_id.get(str(last.get("trial_id") or Path(result.path).name.removeprefix("trial_")))
        if trial is None:
            continue
        planned = int((result.config or {}).get("epochs", TrainConfig().epochs))
        state, values = fidelity(metrics, last, result.error is not None, planned)
        if state == TrialState.PRUNED and len(metrics) > 1:
            values = None  # as FidelityOptunaSearch tells it: Optuna keeps no values for a pruned multi-objective trial
        if trial.state == state and (values is None or trial.values == values):
            continue
        _rewrite(store.storage, trial._trial_id, state, values, int(last["epoch"]) if "epoch" in last else None)
        changed.append(trial.number)
    return changed


def _rewrite(storage: optuna.storages.RDBStorage, trial_id: int, state: TrialState, values: list[float] | None,
             epochs_run: int | None) -> None:
    """Sets a trial's state, values and `epochs_run` even where it is finished, which Optuna's API refuses
    (RDBStorage's own `set_trial_state_values`, less its check that the trial is still running)."""
    import json
    from datetime import datetime

    from optuna.storages._rdb import models

    session = storage.scoped_session()
    try:
        trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        session.query(models.TrialValueModel).filter_by(trial_id=trial_id).delete()
        for objective, v in enumerate(values or []):
            session.add(models.TrialValueModel(trial_id=trial_id, objective=objective, value=v,
                                               value_type=models.TrialValueModel.TrialValueType.FINITE))
        trial.state = state
        trial.datetime_complete = trial.datetime_complete or datetime.now()
        if epochs_run is not None:
            attr = models.TrialUserAttributeModel.find_by_trial_and_key(trial, "epochs_run", session)
            if attr is None:
                session.add(models.TrialUserAttributeModel(trial_id=trial_id, key="epochs_run",
                                                           value_json=json.dumps(epochs_run)))
            else:
                attr.value_json = json.dumps(epochs_run)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def stopped_early(epoch: int, epochs: int) -> bool:
    """Whether a trial whose last result is `epoch` stopped before its planned `epochs` (ASHA, a time budget)."""
    return epoch < epochs


def _hide_password(url: str) -> str:
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url  # not a URL at all: opening it fails with a message that shows it
