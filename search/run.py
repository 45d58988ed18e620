"""Runs a search: `python -m search.run SPACE.yaml [--data DIR|synthetic] [--num-samples N] ...`.

The space file says what to vary and how to select; Ray Tune runs the trials (several per GPU where the
space's `gpus_per_trial` is a fraction, or `auto`: each trial's share from its estimated memory, see
`search/packing.py`), Optuna picks what to try next, ASHA stops weak trials early, and at the end the best
trials on val are re-scored on val at full precision, the best there is exported, and test is only reported.
A run leaves, under STORAGE/NAME: one folder per trial (config, split, metrics, checkpoints, TensorBoard
events, `resources.json`), `summary/trials.csv`, `summary/report.md`, `best/` and, for a sampled space, the
Optuna study in `optuna.db` (or in the database given by `--optuna-storage`; see `search/study.py`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ray import tune

from cyclegan.clock import process_started
from cyclegan.config import ConfigError, parse_overrides
from cyclegan.data import SYNTHETIC, DataError, Slices, read_data, source_name
from cyclegan.sizes import DataSize
from search.cluster import NoGpuError, gpus_for_trials
from search.kernels_ahead import KernelsAhead
from search.mps import mps_note, mps_running
from search.packing import EstimatesAhead, check_trials_fit, driver_gpu_bytes, trial_config
from search.ray_owner import RayOwner
from search.space import AUTO, Space, SpaceError, load_space
from search.study import StudyStore, close_study, open_study_store, reconcile_study

if TYPE_CHECKING:
    from search.trainable import TensorBoardView

EXPERIMENT_STATE_GLOB = "experiment_state-*.json"
NO_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"  # Ray Tune's switch for its CSV, JSON and TensorBoard loggers
INTERRUPTED = 130  # the shell's exit status for a command ended by Ctrl-C (128 + SIGINT)
# Set when the search is stopped by Ctrl-C (or SIGUSR1, Ray's other stop signal); a module global because the
# callback that sets it is pickled with the run's config for --resume, and an Event is not picklable.
_interrupted = threading.Event()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.splitlines()[0])
    p.add_argument("space", type=Path, help="a search space file, e.g. spaces/unet_depth.yaml")
    p.add_argument("--data", default="synthetic",
                   help="a folder holding T1/ and T2/, an s3://, gs:// or file:// URI of one, or 'synthetic' "
                        "(default); read once here and handed to the trials through Ray's object store")
    p.add_argument("--num-samples", type=int, help="trials to run (default: the space's)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's)")
    p.add_argument("--gpus-per-trial", type=number_or_auto, metavar="F|auto",
                   help="GPU share of a trial, e.g. 0.25, or auto: from each trial's estimated memory "
                        "(default: the space's)")
    p.add_argument("--gpu-memory-gib", type=number_or_auto, metavar="GIB",
                   help="each GPU's memory, for gpus_per_trial auto where this machine has no GPU to read it from")
    p.add_argument("--cpus-per-trial", type=float, help="CPU cores of a trial (default: the space's)")
    p.add_argument("--storage", default="runs", help="where runs go: a folder or a URI such as s3://bucket/runs")
    p.add_argument("--name", help="the run's name (default: the space file's name)")
    p.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting a local one")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop starting and running trials after this long; what finished is still selected from")
    p.add_argument("--resume", action="store_true", help="continue the run STORAGE/NAME where it stopped")
    p.add_argument("--export-on-interrupt", action="store_true",
                   help="when interrupted (Ctrl-C), still write summary/ and export the best trial so far to best/")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="an Optuna storage URL for the study, e.g. postgresql://user@host/db "
                        "(default: sqlite:///STORAGE/NAME/optuna.db); the study is named NAME")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a knob for every trial, e.g. --set epochs=5 (repeatable)")
    return p.parse_args(argv)


def number_or_auto(text: str) -> float | str:
    """A flag's number, or the word auto. Anything else is passed on as typed, for the space to refuse in its one
    line that names the flag, the key and what it allows (argparse's own refusal is a usage block)."""
    if text == AUTO:
        return text
    try:
        return float(text)
    except ValueError:
        return text


def prepare(args: argparse.Namespace) -> tuple[Space, str, str]:
    """Checks everything the user gave before Ray starts; returns (space, storage, name).

    Joining a cluster (`--address`) with `gpus_per_trial: auto` it sets `args.gpu_bytes`, the memory of this
    machine's GPU, and refuses the search where neither that nor `gpu_memory_gib` is known; a search on this machine
    asks after its GPU in `main`, while Ray starts, since the answer needs torch. It reads `--data` (the only read of
    it: see `read_trial_data`) into `args.trial_data`. Nothing here imports torch (a test checks it): `main` imports
    it beside Ray's start.
    """
    space = load_space(args.space).with_overrides(parse_overrides(args.overrides))
    space = space.replace_search(num_samples=args.num_samples, max_concurrent=args.max_concurrent,
                                 gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                                 gpu_memory_gib=args.gpu_memory_gib)
    args.gpu_bytes = None
    if space.auto_gpus and space.gpu_memory_gib is None and args.address is not None:
        args.gpu_bytes = driver_gpu_bytes()
        space.resources(args.gpu_bytes)  # a cluster's GPUs may not have started yet: refuse now, not later
    name = args.name or args.space.stem
    storage = args.storage
    if "://" not in storage:
        root = Path(storage).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise DataError(f"--storage {storage}: is a file; expected a folder for runs")
        run_dir = root / name
        fresh = not run_dir.exists()
        started = run_dir.is_dir() and any(run_dir.glob(EXPERIMENT_STATE_GLOB))
        if started and not args.resume:
            raise DataError(f"{run_dir}: a run of this name exists; pass --resume to continue it, or --name")
        if args.resume and not started:
            raise DataError(f"{run_dir}: no run to resume there")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"--storage {storage}: cannot create {run_dir} ({e.strerror})") from None
        storage = str(root)
    if args.data != SYNTHETIC and "://" not in args.data:
        args.data = str(Path(args.data).expanduser().resolve())  # named so in the report, whatever the cwd
    try:  # last, as the slowest check: a large data set is read only once the rest is known to be right
        args.trial_data, args.read_seconds = read_trial_data(args.data)
        # What fits on a GPU depends on the data's size: a points space with its GPU memory stated is checked now.
        args.data_size = DataSize.of(args.trial_data) if isinstance(args.trial_data, Slices) else DataSize.of_phantom()
        refuse_unfit(space, args.data_size)
    except DataError:
        if "://" not in storage and fresh:
            run_dir.rmdir()  # made just above, still empty: a refused run leaves nothing behind
        raise
    return space, storage, name


def refuse_unfit(space: Space, data: DataSize) -> None:
    """Refuses (DataError, one line) a search whose trials cannot fit their fixed GPU share of `gpu_memory_gib`
    even with the training slices streamed, before anything is written. Only where both are known here: a
    points (or grid) space with a fixed share and the GPU's memory stated; otherwise each trial checks itself
    before it trains (search/trainable.py)."""
    points = space.trial_points()
    if space.auto_gpus or not space.gpus_per_trial or space.gpu_memory_gib is None or points is None:
        return
    check_trials_fit([trial_config(p) for p in points], data, float(space.gpus_per_trial),
                     int(space.gpu_memory_gib * 2**30))


def read_trial_data(data: str) -> tuple[Slices | str, float]:
    """What every trial builds its data from: the folder (or URI) `data` read once, here, or "synthetic".

    The slices go to the trials through Ray's object store (`tune.with_parameters` puts them there once), so a
    trial on any node of a cluster starts from memory and never reads `--data`, which a worker node may not
    have. A missing or unreadable folder is refused here, before Ray starts. The phantom is not read but drawn
    in each trial: it is a function of the trial's resize and seed, takes about a second, and reads no file.
    Returns the data and the seconds its reading took.
    """
    if data == SYNTHETIC:
        return data, 0.0
    start = time.perf_counter()
    slices = read_data(data)
    return slices, time.perf_counter() - start


def hand_over(data: Slices | str) -> tuple[Any, Slices | str]:
    """(what the trials are handed, what the driver keeps) of the data `read_trial_data` read, once Ray has started.

    The slices are put in Ray's object store once, and the driver keeps the store's copy, not its own: `ray.get`
    gives numpy arrays as read-only views of the store, so the driver's scoring of the finalists (`summarise`)
    reads the data without a second copy of it in the driver's memory (at IXI's size, gigabytes).
    """
    if not isinstance(data, Slices):
        return data, data
    import ray

    ref = ray.put(data)  # what tune.with_parameters would put; it hands a ref on as it is
    return ref, ray.get(ref)


# Ray's hint names its staging folder under /tmp, which the run leaves behind (the events are in the trials'
# folders); Ray Train's note of every checkpoint a trial saves says nothing the run's folder does not.
NOISE = re.compile(r"^To visualize your results with TensorBoard, run: |^\(\S+ pid=\d+[^)]*\) Checkpoint successfully "
                   r"created at: ")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def quiet_console() -> None:
    """Leaves out Optuna's info lines, which a user cannot act on ("A new study created in memory ...", each trial's
    value, which Tune's table shows), keeping its warnings and errors."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not sys.stderr.isatty():
        # Ray's prefixes of the trials' lines, for any that arrive after `tidy_output` has ended.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


class _Tidy(io.TextIOBase):
    """A text stream that passes whole lines on, less Ray's `NOISE`, and without colour codes unless the
    stream it writes to is a terminal (Ray colours the trials' prefixes and its "[repeated Nx across cluster]" notes
    whatever the output). Ray's log thread and Tune's loop both write to it."""

    def __init__(self, stream: Any):
        self.stream, self.pending, self.lock = stream, "", threading.Lock()
        self.keep_colour = stream.isatty()

    def write(self, text: str) -> int:
        with self.lock:
            *lines, self.pending = (self.pending + text).split("\n")
            for line in lines:
                if not NOISE.match(ANSI.sub("", line)):
                    self.stream.write((line if self.keep_colour else ANSI.sub("", line)) + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.keep_colour

    def fileno(self) -> int:
        return self.stream.fileno()

    def close_out(self) -> None:
        if self.pending:
            self.stream.write(self.pending if self.keep_colour else ANSI.sub("", self.pending))
            self.pending = ""
        self.stream.flush()


@contextlib.contextmanager
def tidy_output() -> Iterator[None]:
    """Ray Tune's console output (its table, the trials' lines) through `_Tidy`."""
    out, err = _Tidy(sys.stdout), _Tidy(sys.stderr)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        out.close_out()
        err.close_out()


def main(argv: list[str] | None = None) -> int:
    # When this command started and where its time went, for `search.throughput` (STORAGE/NAME/driver.json).
    driver: dict[str, Any] = {"started": process_started(), "main": time.time()}
    args = parse_args(argv)
    try:
        space, storage, name = prepare(args)
        study = open_study_store(args.optuna_storage, storage, name, resume=args.resume,
                                 sampled=space.uses_optuna)
    except (SpaceError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    driver["prepared"] = time.time()
    quiet_console()
    # The first wave's configs: their norm kernels are compiled, and their memory estimated, while Ray starts.
    first_wave = min(space.max_concurrent or space.num_samples, space.num_samples)
    first_configs = space.first_configs(first_wave)
    kernels = KernelsAhead(first_configs) if args.address is None else None  # a cluster's trials run elsewhere
    import ray
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    # Ray starts in a thread while torch and the trainer are imported here: the checks above needed neither.
    owner = RayOwner(args.address, log_to_driver=True, configure_logging=False)
    driver["ray_starting"] = time.time()
    try:
        from search.trainable import train_trial

        driver["imported"] = time.time()
        if space.auto_gpus and space.gpu_memory_gib is None and args.address is None:
            args.gpu_bytes = driver_gpu_bytes()  # it asks torch's build, imported only now (see `prepare`)
        if isinstance(args.trial_data, Slices):
            print(f"data: read {args.data} in {args.read_seconds:.1f} s: {args.trial_data.count} slices for train, "
                  f"val and test ({args.trial_data.nbytes / 2**20:.1f} MiB), handed to the trials by Ray",
                  file=sys.stderr)
        # The first wave's memory estimates, made while Ray starts rather than while Tune holds every trial for them.
        packs = space.auto_gpus and (args.gpu_bytes or space.gpu_memory_gib)  # else no trial is estimated here
        ahead = EstimatesAhead(first_configs, args.data_size) if packs else None
        try:
            owner.wait_started()
        finally:
            if ahead is not None:
                driver["estimates_ahead"] = ahead.stop()
    except BaseException:
        owner.finish()
        if kernels is not None:
            kernels.stop()
        raise
    try:
        space = gpus_for_trials(space)  # a cluster keeps the share while a GPU node can join; see search/cluster.py
        # A dict, or for auto a callable Tune asks for each trial's resources when it creates the trial.
        resources = space.resources(args.gpu_bytes, args.data_size)
    except (NoGpuError, SpaceError) as e:  # or auto, Ray sees GPUs, and this machine's torch does not (a CPU build)
        print(f"error: {e}", file=sys.stderr)
        owner.finish()
        if kernels is not None:
            kernels.stop()
        return 2
    driver.update(ray_started=time.time(), gpus=ray.cluster_resources().get("GPU", 0.0),
                  max_concurrent=space.max_concurrent)
    if args.address is None:  # a cluster's workers are not this machine; cluster.yaml starts MPS on them
        note = mps_note(space.gpus_per_trial, space.trials_per_gpu, first_wave, driver["gpus"], mps_running())
        if note:
            print(note, file=sys.stderr)
    to_trials, args.trial_data = hand_over(args.trial_data)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=to_trials, objective=space.reported_objectives(),
                             checkpoint_every=space.checkpoint_every, resources=resources,
                             view=tensorboard_view(space), scheduled=space.mutated,
                             looks=space.population.looks if space.population else None),
        resources)
    # Each trial writes its own TensorBoard run (search/trainable.py). Ray's logger would add a second one per
    # trial, its tags `ray/tune/...` mixed with its own bookkeeping (`done`, `should_checkpoint`, ...) and an
    # HParams session whose metric columns are those. Switching Ray's automatic loggers off drops it; the CSV and
    # JSON loggers, which the results and `search.throughput` read, are then given explicitly.
    os.environ[NO_AUTO_LOGGERS] = "1"
    run_path = f"{storage.rstrip('/')}/{name}"
    if args.resume:
        tuner = tune.Tuner.restore(run_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tune_config = dataclasses.replace(
            space.tune_config(study.storage if study else None, study.name if study else None),
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}", time_budget_s=args.time_budget,
            # A trial that ends leaves its process to the next trial of the same resources: no second start of
            # Python, CUDA and cuDNN's algorithm search (search/trainable.py frees the last trial's memory).
            reuse_actors=True)
        # Each trial writes its config, split, metrics and TensorBoard events in its working folder; syncing
        # artifacts brings them to the run's storage (a local folder or s3://) beside Ray's own files.
        run_config = tune.RunConfig(name=name, storage_path=storage, checkpoint_config=space.checkpoint_config(),
                                    failure_config=space.failure_config(),
                                    sync_config=tune.SyncConfig(sync_artifacts=True),
                                    callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), WatchInterrupt()])
        tuner = tune.Tuner(trainable, param_space=space.param_space(), tune_config=tune_config, run_config=run_config)
    quiet = _DropRayResumeHint()
    logging.getLogger("ray.tune.tune").addFilter(quiet)
    with tidy_output():  # to the end: Ray's log thread brings the trials' last lines while the summary is made
        driver["trials_started"] = time.time()
        try:
            results = tuner.fit()
        finally:
            driver["trials_ended"] = time.time()
            logging.getLogger("ray.tune.tune").removeFilter(quiet)
        if _interrupted.is_set():
            # Ray's workers stop before the line that says how to continue, so that no trial's output follows it. The
            # study is left as it is: the trials it holds as running continue on --resume, and are told then.
            try:
                code = interrupted(results, space, args, run_path, study, argv, tail=driver, ray_stop=owner,
                                   handed=to_trials)
            finally:
                owner.finish()
        else:
            if study is not None:
                close_study(study)
                reconcile_study(study, results)
            # Ray stops while the finalists are scored and the report written, rather than after them; here, not
            # at exit: the trials' last lines its shutdown flushes still pass the filter.
            try:
                code = summarise(results, space, args.trial_data, run_path, study, tail=driver, ray_stop=owner,
                                 handed=to_trials)
            finally:
                owner.finish()
    if kernels is not None:
        driver["kernels_ahead"] = kernels.finish()
    from search.throughput import record_driver

    record_driver(run_path, {**driver, "ended": time.time(), "exit_code": code})
    return code


def tensorboard_view(space: Space) -> TensorBoardView:
    """The knobs the trials of `space` differ in, and the metrics HParams compares them by: the objective(s), the
    metrics the objective weighs, then the study's SSIM/PSNR (`cyclegan.tensorboard.TABLE3`)."""
    from cyclegan.tensorboard import TABLE3
    from search.trainable import TensorBoardView  # imports Ray, which the checks before it starts do not need

    points = space.trial_points()
    if points is None:
        varied = (*space.params, *space.mutated)
    else:
        keys = sorted({k for p in points for k in p})
        varied = (*(k for k in keys if len({json.dumps(p.get(k)) for p in points}) > 1 and k not in space.mutated),
                  *space.mutated)
    reported = space.reported_objectives()
    weighed = [m for o in space.objectives for m in o.weights]
    return TensorBoardView(varied, tuple(dict.fromkeys([*reported.keys, *weighed, *TABLE3])))


class WatchInterrupt(tune.Callback):
    """Notes a Ctrl-C of the search, then lets Ray Tune stop as it does (a last save of the run's state).

    Tune installs its own SIGINT handler when `fit` starts and calls `setup` after it, so the handler found here
    is Tune's: this one wraps it. Tune's restores the handler from before `fit`, so a second Ctrl-C stops at once.
    """

    def setup(self, **info: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGUSR1):
            tune_handler = signal.getsignal(sig)
            if callable(tune_handler):
                signal.signal(sig, _noting(tune_handler))


def _noting(tune_handler: Any) -> Any:
    def handler(sig: int, frame: Any) -> None:
        if not _interrupted.is_set():
            print("\ninterrupted: saving the run's state so that --resume continues it (Ctrl-C again to skip)",
                  file=sys.stderr, flush=True)
        _interrupted.set()
        tune_handler(sig, frame)
    return handler


class _DropRayResumeHint(logging.Filter):
    """Drops Tune's own lines about an interruption: its `Tuner.restore(...)` hint, its stop notice and its list
    of the trials it did not complete. `search.run` says what to type instead (the same command with --resume)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(x in text for x in ("Tuner.restore(", "Stop signal received", "Trials did not complete"))


def interrupted(results: Any, space: Space, args: argparse.Namespace, run_path: str, study: StudyStore | None,
                argv: list[str] | None, tail: dict[str, Any] | None = None, ray_stop: RayOwner | None = None,
                handed: Any = None) -> int:
    """Says how far an interrupted search got and how to continue it; summarises and exports only if asked.
    `ray_stop` is finished before that line (by `summarise` where it exports)."""
    from search.select import outcome

    outcomes = [outcome(r, space.objective.mode) for r in results]
    running = [o for o in outcomes if o.status != "error" and not o.last.get("done")]
    for o in running:
        o.status = "interrupted"  # neither finished nor stopped by the scheduler: --resume continues it
    done = len(outcomes) - len(running)
    code = INTERRUPTED
    if args.export_on_interrupt:
        summarise(results, space, args.trial_data, run_path, study, outcomes=outcomes, tail=tail, ray_stop=ray_stop,
                  handed=handed)
    elif ray_stop is not None:
        ray_stop.finish()
    command = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--export-on-interrupt"]
    again = shlex.join(["python", "-m", "search.run", *command, *([] if args.resume else ["--resume"])])
    print(f"interrupted: {done} of {len(outcomes)} trials ended, {len(running)} interrupted"
          + ("" if args.export_on_interrupt else "; nothing exported") + f". Continue with: {again}", file=sys.stderr)
    return code


def summarise(results: Any, space: Space, data: Slices | str, run_path: str, study: StudyStore | None = None,
              outcomes: list | None = None, tail: dict[str, Any] | None = None, ray_stop: RayOwner | None = None,
              handed: Any = None) -> int:
    """Selects the winner, writes summary/ and best/, and says which trials failed; returns the exit code. `tail`
    gets the seconds the final re-scoring (`rescore_seconds`), the export (`export_seconds`) and the report
    (`report_seconds`: its files, and the plots still being drawn once the winner is exported) took.

    `data` is what the trials were handed (`read_trial_data`): the finalists are scored on it, not on `--data`.
    `ray_stop`, where given, is started as soon as `data` (views of Ray's object store, see `hand_over`) is no
    longer read, its val and test copied (`Datasets`), so that Ray stops while the finalists are scored and the
    report written; it is finished before the summary's lines are printed, which then follow the trials' last lines
    that Ray's shutdown flushes. A driver without a GPU on a cluster with GPUs (`cluster.yaml`'s head) has the
    finalists scored there instead (`search.cluster_scoring`), from `handed`, what the trials were handed, and stops
    Ray once they are; `tail["rescored_on"]` then says on which node each was scored.
    """
    import tempfile

    from cyclegan.schedule import SCHEDULE, Schedule
    from search import cluster_scoring
    from search.export import SELECTION, export
    from search.lineage import schedule_lines, schedule_plot
    from search.report import curves_plot, optuna_plots, read_metrics, write_report, write_trials_csv
    from search.select import Datasets, choose, outcome, rescore, status_counts, yardsticks

    local = "://" not in run_path
    run_dir = Path(run_path) if local else Path(tempfile.mkdtemp(prefix="search-summary-"))
    summary = run_dir / "summary"
    summary.mkdir(parents=True, exist_ok=True)
    if outcomes is None:
        outcomes = [outcome(r, space.objective.mode) for r in results]
    tail = {} if tail is None else tail
    clock = time.perf_counter()
    datasets = Datasets(data)  # each finalist's val and test built once, for the choice, the yardsticks and the export
    on_cluster = None
    if handed is not None and cluster_scoring.wanted():
        share = space.gpus_per_trial if isinstance(space.gpus_per_trial, (int, float)) else 1.0
        on_cluster = cluster_scoring.ClusterScorer(handed, lambda o, split: rescore(o, data, None, split, datasets),
                                                   float(share or 1.0))
        print("scoring the finalists on the cluster's GPUs (this machine has none)", file=sys.stderr)
    elif ray_stop is not None:
        ray_stop.stop()
    # The plots need neither the GPU nor the finalists' scores: one thread draws them (pyplot's state is the
    # process's) while the finalists are scored and the winner exported.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="plots") as draw:
        study_plots = draw.submit(optuna_plots, outcomes, space, summary, study)
        try:
            winner, finalists = choose(outcomes, space.objective, data, space.top_k, datasets=datasets,
                                       score=on_cluster)
        finally:
            if on_cluster is not None:
                on_cluster.close()
                tail["rescored_on"] = on_cluster.nodes
                if ray_stop is not None:
                    ray_stop.stop()
        tail["rescore_seconds"] = time.perf_counter() - clock
        samples = schedule = baseline = curves = None
        if winner is not None:
            # On paired data, what copying and the truth score: the yardsticks the report holds the winner to.
            baseline = yardsticks(winner, data, datasets=datasets) if winner.last.get("paired") else None
            curves = draw.submit(curves_plot, read_metrics(winner.path), f"winner {winner.trial_id}", summary)
            clock = time.perf_counter()
            best = export(winner, data, run_dir / "best", datasets)
            tail["export_seconds"] = time.perf_counter() - clock
            (summary / "samples.png").write_bytes((best / "samples.png").read_bytes())
            samples = "samples.png"
            if (best / SCHEDULE).is_file():
                lineage = Schedule.load(best / SCHEDULE)
                # Every epoch each trial trained, as it reported it (its metrics.jsonl keeps only its last lineage).
                reported = {o.trial_id: read_metrics(o.path, "result.json") for o in outcomes}
                schedule = schedule_lines(lineage, draw.submit(schedule_plot, lineage, reported, summary).result())
        clock = time.perf_counter()
        plots, plots_source = study_plots.result()
        if curves is not None:
            curves.result()
    write_trials_csv(summary / "trials.csv", outcomes)
    write_report(summary / "report.md", outcomes, winner, finalists, space, source_name(data), plots, samples, study,
                 run_path, plots_source, schedule, baseline)
    (summary / SELECTION).write_text(json.dumps({
        "winner": winner.trial_id if winner else None, "mode": space.objective.mode, "data": source_name(data),
        "chosen_by": "rescore_val",  # the finalists' val re-score at full precision; test is only reported
        "trials": [{"trial_id": o.trial_id, "path": o.path, "status": o.status, "rescore_val": o.val_rescore,
                    "test": o.test} for o in outcomes],
    }, indent=1) + "\n")
    if not local:
        import pyarrow.fs

        pyarrow.fs.copy_files(str(run_dir), run_path)
    tail["report_seconds"] = time.perf_counter() - clock
    if ray_stop is not None:
        tail["shutdown_seconds"] = ray_stop.finish()
    print(f"\n{len(outcomes)} trials: {status_counts(outcomes)}")
    if winner is not None:
        print(f"winner {winner.trial_id}: val objective re-scored at full precision "
              f"{winner.val_rescore['objective']:.4f} (in training {winner.val_objective:.4f}); test objective "
              f"{winner.test['objective']:.4f}, reported only; exported to {run_path}/best")
    print(f"report: {run_path}/summary/report.md")
    if study is not None:
        print(f"Optuna study {study.name!r}: {study.dashboard}")
    failed = [o for o in outcomes if o.status == "error"]
    for o in failed:
        print(f"error: trial {o.trial_id} failed: {o.error} (logs: {o.path})", file=sys.stderr)
    if winner is None:
        print("error: no trial left a checkpoint to choose from", file=sys.stderr)
    return 1 if failed or winner is None else 0


def exit_now(code: int) -> NoReturn:
    """Ends the command with `code` as an exit would, once its other threads have ended and its exit handlers have
    run, but leaves the interpreter's own teardown (every module and object: torch's, Ray's, the slices read) to
    the operating system, which frees a process at once. After a search on an H200 that teardown took 2 s, the
    GPU idle (docs/benchmarks.md)."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    # Run as `search.run`, not `__main__`, so that the callback pickled with the run's state for --resume is
    # found by its module's name whichever way the run is continued.
    from search.run import main as run_main

    exit_now(run_main())
