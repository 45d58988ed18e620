"""The Ray Tune function trainable: one trial is one `cyclegan.fit` run.

Ray hands the trial a flat dict of knobs; it becomes a `TrainConfig`, the trial builds its data set at its
resize from the slices the driver read once (`search.run.read_trial_data`, handed over through Ray's object
store by `tune.with_parameters`: a trial never reads `--data`), and every epoch's metrics (plus `objective`, and
`objective_<i>` for a space of several objectives) go to `tune.report`, with a checkpoint every
`checkpoint_every` epochs and at the end (written off the training path, and reported with its epoch once whole:
`search/checkpoint_reports.py`). A retried or resumed trial restarts from `tune.get_checkpoint()`, or, where that
one is damaged, from the newest older checkpoint of the trial that still reads.

Under population-based training (search/population.py) each metrics row also names the knobs the epoch was
trained with (`knobs`: the mutated ones) and the trial that trained it (`trained_by`), and the trial checkpoints at
every epoch at which PBT looks at it. A trial that PBT tells to continue another's checkpoint with mutated knobs
starts again with its new config, restores that checkpoint (which `cyclegan.training_state` continues with the new
learning rates, betas and loss weights), takes its history as its own, and notes the change in `restore.log`; its
`metrics.jsonl` is then its lineage's schedule, epoch by epoch (`cyclegan/schedule.py`).

Each checkpoint carries the trial's `metrics.jsonl` up to its epoch. Ray runs a trial in a working folder of
its session and copies it to the run's storage; a trial resumed in a new session (after `--resume`) starts
in an empty folder, whose `metrics.jsonl` would replace the stored one. Restoring puts the history that led
to the checkpoint back first, so the file always holds one line per epoch of the weights it ends with.

Each trial's GPU share is the one Ray gave it (`tune.get_context().get_trial_resources()`: a fixed
`gpus_per_trial`, or for `auto` the share `search.packing` sized from its estimated memory), and its memory is
capped to that share, its CUDA context included (`search.packing.allocator_fraction`), of its GPU's memory or
of the space's `gpu_memory_gib` where set. Within that cap its training slices stay on the GPU (compact) when
the memory estimate with them fits, and are streamed from pinned host memory otherwise (`cyclegan.memory.plan_data`);
a trial that does not fit even streamed fails before it trains, in one line that names the data's size, the
budget and the knobs to change (`cyclegan.memory.check_fits`). `resources.json` in its
folder records what it was given: the share, the allocator's cap, its estimated memory, the GPU ids Ray
assigned and CUDA_VISIBLE_DEVICES (which Ray sets to them, so the trial's `cuda` device is its own GPU), how
long it took to estimate its memory (`estimate_seconds`) and to build its data set (`data_seconds`), and when it
started and ended (a trial that ASHA stops may be copied to storage before its end is written).

A trial that runs out of GPU memory fails with a message that names the knobs that set its memory use, so
the summary says which configurations did not fit.

Test hook (off unless the environment sets it): `SEARCH_TEST_FAULTS` holds a JSON list of faults such as
`[{"when": {"seed": 1}, "epoch": 2, "kind": "crash", "once": true}]`. A trial whose config matches `when`
raises at the end of `epoch`, before that epoch is reported or checkpointed: `kind` "crash" raises a
RuntimeError, "oom" a torch.OutOfMemoryError as CUDA would (so the out-of-memory path is tested on the
CPU). With `once` only a trial that did not start from a checkpoint fails, so a retry from its last
checkpoint passes; without it every attempt fails. The tests use it to inject real trial failures into
real Ray Tune searches; nothing else sets it.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from cyclegan import checkpoint
from cyclegan.checkpoint_writer import PendingCheckpoint
from cyclegan.config import CONTINUABLE, TrainConfig
from cyclegan.data import SYNTHETIC, Dataset, Slices, build_dataset, synthetic_data
from cyclegan.graphed import STOP_LAUNCHING
from cyclegan.memory import DataSize, check_fits, estimate_memory, plan_data
from cyclegan.schedule import KNOBS, TRAINED_BY, knobs_of
from cyclegan.tensorboard import TABLE3, HParams
from cyclegan.train import fit
from search.checkpoint_reports import CheckpointReports
from search.objective import OBJECTIVE
from search.packing import AutoResources, FixedShare, allocator_fraction, needed_bytes, trial_budget, trial_config
from search.population import Looks
from search.schema import POINT_NAME

FAULTS_ENV = "SEARCH_TEST_FAULTS"
METRICS = "metrics.jsonl"
RESTORE_LOG = "restore.log"
RESOURCES = "resources.json"
# The knobs that decide how much GPU memory a trial needs, named when it runs out.
# Trials this process has run: Ray reuses a trial's process for the next trial of the same resources (search.run
# asks it to), which spares that trial the process's start (imports, CUDA context) and cuDNN's algorithm search.
_trials_in_process = 0
# The thread the process's last trial trained in, and how long the process waits for it as it exits.
_trial_thread: threading.Thread | None = None
EXIT_JOIN_SECONDS = 20.0

MEMORY_KNOBS = ("resize", "batch_size", "unet_depth", "ngf", "disc_layers", "ndf", "pool_size", "precision",
                "compile", "generator")


def train_trial(config: dict[str, Any], *, data: Slices | str,
                objective: Callable[[dict[str, Any]], float | Mapping[str, float]],
                checkpoint_every: int = 1, resources: Mapping[str, float] | AutoResources | None = None,
                view: TensorBoardView | None = None, scheduled: tuple[str, ...] = (),
                looks: Looks | None = None) -> None:
    """`data` is the slices the driver read, or "synthetic" (the phantom, drawn here at the trial's resize and seed).
    `objective` gives the value reported as `objective`, or (`Space.reported_objectives()`) a mapping of
    every objective metric to report. `resources` is what the trainable was given to `tune.with_resources`
    (`Space.resources()`), used for the GPU share only where Ray does not say it. `view` says which knobs the
    search varies and which metrics HParams compares trials by (default: none varied, the objective first).
    Under PBT, `scheduled` names the mutated knobs each metrics row records, and `looks` the epochs at which PBT
    looks at the trial, at each of which it checkpoints."""
    global _trials_in_process
    entered = time.time()  # Ray's worker and the trainable's imports are behind; the CUDA context is not yet
    _trials_in_process += 1
    if _trials_in_process > 1:
        release_last_trial()
    wait_at_exit_for_this_thread()
    cfg = trial_config(config)
    trial_dir = Path.cwd()  # Ray runs each trial in its own folder and syncs it to the run's storage
    cfg.save(trial_dir / "config.json")
    gpu_share, record = record_resources(trial_dir / RESOURCES, config, resources)
    record.update(trial_in_process=_trials_in_process, entered=entered)
    view = view or TensorBoardView()
    # The knobs the trials differ in, taken from the config (so a default, like seed 0, has its value) and a
    # points space's label; every knob where none differ. HParams ticks five knobs and five metrics: knobs that
    # every trial shares would push the metrics off-screen.
    knobs = {**cfg.to_dict(), **{k: v for k, v in config.items() if k == POINT_NAME}}
    shown = {k: knobs[k] for k in view.varied if k in knobs} or knobs
    hparams = HParams(shown, view.metrics, frozenset(view.varied), trial_dir.name)
    try:
        start = time.perf_counter()
        dataset = trial_dataset(data, cfg)
        record["data_seconds"] = round(time.perf_counter() - start, 3)  # what the trial spent on its data
        write_record(trial_dir / RESOURCES, record)  # before the first report syncs the folder
        _train(cfg, trial_dir, dataset, objective, checkpoint_every, gpu_share, hparams, record, scheduled, looks)
    finally:
        record["ended"] = time.time()
        write_record(trial_dir / RESOURCES, record)


def wait_at_exit_for_this_thread() -> None:
    """Makes the process, as it exits, wait for the calling thread (the trial's) to finish (`join_trial_thread`)."""
    global _trial_thread
    if _trial_thread is None:
        atexit.register(join_trial_thread)
    _trial_thread = threading.current_thread()


def join_trial_thread(timeout: float = EXIT_JOIN_SECONDS) -> bool:
    """Stops, as the process exits, the last trial's thread at its next train step, waits for it to finish, then for
    the GPU's queued work; returns whether the thread has finished.

    Ray runs a trial in a daemon thread and, once the trial is stopped, ends the process without waiting for the
    thread to unwind (freeing CUDA graphs and tensors). A daemon thread still inside PyTorch as the interpreter
    finalises is stopped at its next GIL acquire, which in pybind11 code aborts the process ("Fatal Python error:
    Aborted", seen at a search's end). atexit handlers run before that point. The thread would learn of the stop
    only at its next report, an epoch away, so the epoch is told to stop launching steps (`STOP_LAUNCHING`).

    Under CUDA MPS a client that ends with work still queued on the GPU may leave the MPS server in an undefined
    state, in which every client can fail (NVIDIA's MPS guide, "Client Early Termination": the client must
    synchronize first). In one search four trials failed at one instant so, three crashing inside cuGraphLaunch and
    one with an illegal memory access, 0.9 s after another process's trial was stopped; that process ran no trial
    after it (docs/benchmarks.md).
    """
    thread = _trial_thread
    finished = True
    if thread is not None and thread is not threading.current_thread() and thread.is_alive():
        STOP_LAUNCHING.set()
        thread.join(timeout)
        finished = not thread.is_alive()
    drain_gpu()
    return finished


def drain_gpu() -> None:
    """Waits for the work this process queued on its GPUs, if it used any; an error there (a context already lost)
    is left to the exit. Only the GPUs it holds memory on: a synchronize on another would make a CUDA context there,
    as the process ends."""
    if not torch.cuda.is_initialized():
        return
    for device in range(torch.cuda.device_count()):
        try:
            if torch.cuda.memory_reserved(device):
                torch.cuda.synchronize(device)
        except RuntimeError:
            return


def release_last_trial() -> None:
    """Frees what the process's last trial left on the GPU before the next one starts in it: a trial ASHA stopped
    unwinds from its report, and its tensors and captured graphs are freed only once collected. Peak memory is
    counted afresh, per trial."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def trial_dataset(data: Slices | str, cfg: TrainConfig) -> Dataset:
    """The trial's data set at its resize, from the slices the driver read, or the phantom at its seed. From the
    driver's slices it holds what it uses (`build_dataset(..., for_trial=True)`): the training slices as the feed
    keeps them (compact codes), the val slices it scores, and no test slice.

    A path is refused: on a cluster it names a folder of the driver's machine, which the trial's may not have.
    """
    if isinstance(data, Slices):
        return build_dataset(data, cfg.resize, for_trial=True)
    if data == SYNTHETIC:
        return synthetic_data(cfg.resize, cfg.seed)
    raise TypeError(f"a trial takes the slices search.run read (cyclegan.data.read_data) or {SYNTHETIC!r}, "
                    f"not {data!r}")


def _train(cfg: TrainConfig, trial_dir: Path, dataset: Dataset,
           objective: Callable[[dict[str, Any]], float | Mapping[str, float]], checkpoint_every: int,
           gpu_share: float, hparams: HParams, record: dict[str, Any] | None = None, scheduled: tuple[str, ...] = (),
           looks: Looks | None = None) -> None:
    dataset.save_split(trial_dir / "split.json")
    record = record if record is not None else {}
    _budget(cfg, DataSize.of(dataset), gpu_share, record)

    trial_id = tune.get_context().get_trial_id() or trial_dir.name
    restored = tune.get_checkpoint()
    resume = restore(restored, trial_dir) if restored is not None else None
    if resume is not None:
        note_continuation(trial_dir, resume, cfg, trial_id)
    faults = _faults(cfg)

    # Checkpoints are written off the training path and reported once whole (search/checkpoint_reports.py).
    reports = CheckpointReports(trial_dir / METRICS)

    def report(metrics: dict[str, Any], save: Callable[[Path], PendingCheckpoint]) -> None:
        reports.flush()  # the previous epoch's checkpoint first, as a synchronous write had reported it by now
        for fault in faults:
            if fault.get("epoch") == metrics["epoch"] and not (fault.get("once") and resume is not None):
                _fail(fault, cfg, metrics["epoch"])
        if scheduled:
            metrics[TRAINED_BY] = trial_id
            metrics[KNOBS] = knobs_of(cfg, scheduled)
        looked_at = looks is not None and metrics["epoch"] in looks
        due = not metrics["epoch"] % checkpoint_every or metrics["epoch"] == cfg.epochs or looked_at
        # PBT decides on a look's own report, so that one waits for its write: a trial it exploits trains no
        # epoch in between.
        # Tune copies the file into the run's storage and the folder is deleted: flushing it to disk first would
        # only lengthen the write the report waits for.
        reports.epoch(metrics, partial(save, durable=False), with_checkpoint=due, at_once=looked_at)

    def objectives(metrics: dict[str, Any]) -> Mapping[str, float]:
        value = objective(metrics)
        return value if isinstance(value, Mapping) else {OBJECTIVE: value}

    try:
        # The trial writes its own TensorBoard run into its folder (search.run turns Ray's logger off): one run
        # a trial, with grouped tags and the objective logged beside the metrics it is made of.
        try:
            fit(cfg, dataset, report=report, resume=resume, log_dir=trial_dir, hparams=hparams, derived=objectives,
                stream=record.get("data_placement") == "streamed")
        except Exception:
            reports.flush_on_error()
            raise
        reports.finish()
    except torch.OutOfMemoryError as e:
        # Ray records the exception's last line as the trial's error: make it say what did not fit. The same
        # type is raised again, so the failure is still an out-of-memory one to Ray and to anyone catching it.
        raise torch.OutOfMemoryError(out_of_memory_message(cfg, gpu_share, e)) from e


def _budget(cfg: TrainConfig, size: DataSize, gpu_share: float, record: dict[str, Any]) -> int | None:
    """The bytes the trial's allocator may take (None: no GPU); refuses a trial that does not fit them even with its
    training slices streamed. Notes in `record` how the data is placed and the estimate with it."""
    gpu_bytes = record.get("cap_gpu_bytes")
    if not gpu_share or not gpu_bytes:
        return None
    budget = trial_budget(gpu_share, gpu_bytes)
    check_fits(cfg, size, budget, f"its share {gpu_share:g} of a {gpu_bytes / 2**30:.3g} GiB GPU, less its CUDA "
               "context")
    placement = plan_data(cfg, size, budget)
    record.update(budget_bytes=budget, data_placement=placement,
                  estimated_bytes=estimate_memory(cfg, size, placement == "streamed"),
                  data=asdict(size))
    return budget


def note_continuation(trial_dir: Path, state: dict[str, Any], cfg: TrainConfig, trial_id: str) -> None:
    """Adds a line to `restore.log` where the checkpoint is another trial's (PBT's exploit) or was trained with
    other knobs than the trial's config now has: which trial, which epoch, and each knob's old and new value."""
    try:
        origin = json.loads((trial_dir / METRICS).read_text().splitlines()[-1]).get(TRAINED_BY)
    except (OSError, IndexError, ValueError, AttributeError):
        origin = None  # a run without PBT's records, or a history cut short
    saved = state.get("config", {})
    changed = [f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in CONTINUABLE
               if k in saved and saved[k] != getattr(cfg, k) and k != "epochs"]
    if origin in (None, trial_id) and not changed:
        return
    whose = f"trial {origin}'s" if origin not in (None, trial_id) else "its own"
    line = f"continued {whose} checkpoint of epoch {state.get('epoch')}: " + (", ".join(changed) or "same knobs")
    with (trial_dir / RESTORE_LOG).open("a") as f:
        f.write(line + "\n")


@dataclass(frozen=True)
class TensorBoardView:
    """What every trial's HParams session shows (`cyclegan.tensorboard.HParams`): the knobs the search varies,
    listed first, and the metrics to compare trials by, in column order, the objective first."""

    varied: tuple[str, ...] = ()
    metrics: tuple[str, ...] = (OBJECTIVE, *TABLE3)


def out_of_memory_message(cfg: TrainConfig, gpu_share: float, error: BaseException) -> str:
    knobs = " ".join(f"{k}={getattr(cfg, k)}" for k in MEMORY_KNOBS)
    first = (str(error).strip().splitlines() or [""])[0]
    return (f"out of GPU memory at {knobs} (gpus_per_trial={gpu_share:g}); lower batch_size or resize, or give "
            f"each trial more of a GPU. CUDA said: {first}")


def restore(latest: tune.Checkpoint, trial_dir: Path | None = None) -> dict[str, Any]:
    """Loads the trial's latest checkpoint, or the newest older one that reads where the latest is damaged.

    Ray keeps several checkpoints per trial (`checkpoint.keep` in the space), as `checkpoint_NNNNNN` folders
    side by side; a truncated or corrupt one is named on stderr (the trial's log) and skipped. With
    `trial_dir`, the metrics history saved with the checkpoint used becomes `trial_dir/metrics.jsonl`, and
    `trial_dir/restore.log` gets a line for every checkpoint skipped and the one resumed from (Ray forwards a
    trial's stderr to the driver only eventually; the log travels with the trial's folder).
    """

    def note(line: str) -> None:
        print(line, file=sys.stderr)
        if trial_dir is not None:
            with (trial_dir / RESTORE_LOG).open("a") as f:
                f.write(line + "\n")

    errors = []
    for ckpt in [latest, *_older_checkpoints(latest)]:
        try:
            with ckpt.as_directory() as d:
                state = checkpoint.load(Path(d) / checkpoint.CHECKPOINT)
                if trial_dir is not None and (Path(d) / METRICS).is_file():
                    shutil.copy(Path(d) / METRICS, trial_dir / METRICS)
        except checkpoint.CheckpointError as e:
            errors.append(f"{ckpt.path}: {e}")
            note(f"warning: skipped {ckpt.path}: {e}")
            continue
        damaged = "" if ckpt is latest else f" instead of the damaged latest checkpoint {latest.path}"
        note(f"resumed from {ckpt.path} (epoch {state.get('epoch')}){damaged}")
        return state
    raise checkpoint.CheckpointError(f"no readable checkpoint to resume from: {'; '.join(errors)}")


def _older_checkpoints(latest: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other checkpoints older than `latest`, newest first (on its filesystem: a folder or s3://)."""
    import pyarrow.fs  # here: a trial that resumes from its latest checkpoint never needs it (0.1 s of import)

    name = Path(latest.path).name
    parent = Path(latest.path).parent.as_posix()
    try:
        infos = latest.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    except OSError:
        return []
    older = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                    and Path(i.path).name.startswith("checkpoint_") and Path(i.path).name < name), reverse=True)
    return [tune.Checkpoint(p, filesystem=latest.filesystem) for p in older]


def _faults(cfg: TrainConfig) -> list[dict[str, Any]]:
    # The test hook: see the module docstring. Unset (always, outside the tests) it returns no faults.
    text = os.environ.get(FAULTS_ENV)
    if not text:
        return []
    values = cfg.to_dict()
    return [f for f in json.loads(text) if all(values.get(k) == v for k, v in f.get("when", {}).items())]


def _fail(fault: dict[str, Any], cfg: TrainConfig, epoch: int) -> None:
    if fault.get("kind") == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by "
                                     f"{FAULTS_ENV} at epoch {epoch})")
    raise RuntimeError(f"injected fault at epoch {epoch} ({FAULTS_ENV}, seed={cfg.seed})")


def granted_gpu_share(config: dict[str, Any], resources: Mapping[str, float] | AutoResources | None
                      ) -> tuple[float, str]:
    """The trial's GPU share and where it came from: "ray" (the resources of the trial's placement group, what
    Ray reserved), or outside a Tune session "computed" from `resources` by the same rule."""
    granted = tune.get_context().get_trial_resources()
    if granted is not None:
        return float(granted.required_resources.get("GPU", 0.0)), "ray"
    if isinstance(resources, (AutoResources, FixedShare)):
        return resources(config)["gpu"], "computed"
    return float((resources or {}).get("gpu", 0.0)), "computed"


def record_resources(path: Path, config: dict[str, Any], resources: Mapping[str, float] | AutoResources | None
                     ) -> tuple[float, dict[str, Any]]:
    """Caps the trial's GPU memory at its share and writes what it was given to `path`; returns (share, record).

    gpu_ids are Ray's (`ray.get_gpu_ids()`), as is `assigned` (`get_assigned_resources()`: what Ray's scheduler
    reserved for this process, in its own fixed point); `cuda_visible_devices` is what torch sees.
    """
    share, source = granted_gpu_share(config, resources)
    stated = resources.gpu_bytes if isinstance(resources, (AutoResources, FixedShare)) else None
    capped = cap_gpu_memory(share, stated)
    start = time.perf_counter()
    # Context included, data not yet: replaced (without the context) by the estimate with the data, once read.
    estimated = needed_bytes(trial_config(config), getattr(resources, "data", None)) if share > 0 else None
    estimate_seconds = round(time.perf_counter() - start, 3)  # the trial's own trace, on its CPU
    record: dict[str, Any] = {
        "gpu_share": share, "share_from": source,
        "gpus_per_trial": "auto" if isinstance(resources, AutoResources) else share,
        "memory_fraction": capped,  # the cap set with torch.cuda.set_per_process_memory_fraction, or null
        "estimated_bytes": estimated, "estimate_seconds": estimate_seconds,
        "gpu_bytes": stated,
        # The GPU memory the trial's cap is a share of: the space's gpu_memory_gib, else its own GPU's.
        "cap_gpu_bytes": stated or (torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
                                    if torch.cuda.is_available() else None),
        "gpu_ids": [], "assigned": {}, "node_id": None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "pid": os.getpid(), "started": time.time(), "ended": None,
    }
    if ray.is_initialized():
        context = ray.get_runtime_context()
        record.update(gpu_ids=[str(i) for i in ray.get_gpu_ids()], assigned=context.get_assigned_resources(),
                      node_id=context.get_node_id())
    write_record(path, record)
    return share, record


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Writes `record` as JSON whole or not at all: Ray copies the trial's folder to storage while the trial
    runs, and a trial stopped by ASHA is ended wherever it is; a copy or an end mid-write left an empty file.

    The temporary file is written beside the trial's folder, not in it: a file that Ray's copy lists and that is
    renamed away before it is read fails the copy, and the copy Ray makes when it hands a stopped trial's process
    to the next trial then fails that next trial (its thread writes this record as it ends)."""
    text = json.dumps(record, indent=1) + "\n"
    try:
        _replace_from(path.parent.parent, path, text)
    except OSError:  # the folder above is not writable, or on another filesystem
        _replace_from(path.parent, path, text)


def _replace_from(folder: Path, path: Path, text: str) -> None:
    """Writes `text` to a new temporary file in `folder`, then renames it to `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.parent.name}-{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cap_gpu_memory(share: float, gpu_bytes: int | None = None) -> float | None:
    """Caps this trial's memory to its share of its GPU (the current device: Ray's CUDA_VISIBLE_DEVICES makes it
    the one Ray assigned), its CUDA context included, so that trials sharing one cannot starve each other;
    returns the fraction set on the allocator, if any (`search.packing.allocator_fraction`). With `gpu_bytes`
    (the space's gpu_memory_gib) the share is of that much memory, not of the GPU's own."""
    if torch.cuda.is_available() and 0 < share < 1:
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        stated = gpu_bytes or total
        fraction = min(1.0, allocator_fraction(share, stated) * stated / total)
        torch.cuda.set_per_process_memory_fraction(fraction)
        return fraction
    return None
