"""Times the trainer against the classic PyTorch CycleGAN step: `python -m benchmarks.bench --out bench.json`.

In one run on one device:
  steps      img-pairs/s of a train step at each batch for (a) the reference, the classic PyTorch CycleGAN
             step in eager fp32 with TF32 off (`Reference`, the yardstick) and (b) the project's trainer as a
             search trial runs it (`train.Trainer`, the fast path by default); the ratio (b)/(a), TFLOP/s
             (the FLOPs counted once with FlopCounterMode) and each one's peak GPU memory;
  processes  the aggregate img-pairs/s of K trials sharing the device as separate processes, started
             together, each capped to 1/K of the GPU's memory as the search caps a trial;
  epoch      whole epochs of `fit` on `--data` as a trial runs them (TensorBoard samples, checkpoints),
             so the time outside the training step is visible.
More sections (`--sections`): `quality` (the fast path against eager fp32 on the phantom at 128x128,
three seeds each), `check` (a graphed fit equals an eager one on the GPU), `memory` (estimate_memory
against measured peaks), `profile` (torch.profiler summaries of the fast step), `variants` (the fast
path with one switch changed, torch.compile on top among them). docs/benchmarks.md holds the results
and the commands. Each timing of `steps` and `variants` runs in a fresh process of its own, so that none runs
on the cuDNN algorithms another one picked (`_in_own_process`).

The tests' run (`python -m cyclegan.bench` runs it too):
    python -m benchmarks.bench --device cpu --size 32 --depth 5 --batches 2 --steps 2 --processes 1
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import math
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from cyclegan import checkpoint
from cyclegan.config import TrainConfig
from cyclegan.data import Dataset, load_data, synthetic_data
from cyclegan.networks import PatchDiscriminator, UNetGenerator
from cyclegan.precision import tf32
from cyclegan.train import ImagePool, Trainer, epoch_order, fit, train_step

SECTIONS = ("steps", "processes", "epoch", "quality", "check", "memory", "profile", "variants")
DEFAULT_SECTIONS = ("steps", "processes", "epoch")
REPO = Path(__file__).resolve().parents[1]
STARTED = time.perf_counter()


# ----------------------------------------------------------------------------------------------------------
# (a) The yardstick: junyanz/pytorch-CycleGAN-and-pix2pix, models/cycle_gan_model.py and util/image_pool.py,
# with the project's networks. A = T1, B = T2, so netG_A is the project's g_t1_t2 and netD_A judges T2.


class HostImagePool:
    """The reference's ImagePool: a Python list of past fakes and a host-side coin flip per image."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images:
            image = torch.unsqueeze(image.data, 0)
            if self.count < self.size:
                self.count += 1
                self.images.append(image)
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                i = random.randint(0, self.size - 1)
                old = self.images[i].clone()
                self.images[i] = image
                out.append(old)
            else:
                out.append(image)
        return torch.cat(out, 0)


class GANLoss(nn.Module):
    """The reference's LSGAN loss: MSE against a label tensor expanded to the prediction's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("real_label", torch.tensor(1.0))
        self.register_buffer("fake_label", torch.tensor(0.0))
        self.loss = nn.MSELoss()

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = (self.real_label if target_is_real else self.fake_label).expand_as(prediction)
        return self.loss(prediction, target)


class Reference:
    """`CycleGANModel.optimize_parameters`: eager fp32, foreach Adam, batches copied from the host each step."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        torch.manual_seed(cfg.seed)
        gen = partial(UNetGenerator, cfg.unet_depth, 1, cfg.ngf, cfg.dropout, cfg.upsample)
        disc = partial(PatchDiscriminator, cfg.disc_layers, 1, cfg.ndf)
        self.netG_A, self.netG_B = gen().to(device), gen().to(device)
        self.netD_A, self.netD_B = disc().to(device), disc().to(device)
        self.criterionGAN = GANLoss().to(device)
        self.criterionCycle, self.criterionIdt = nn.L1Loss(), nn.L1Loss()
        adam = partial(torch.optim.Adam, lr=cfg.lr, betas=(cfg.beta1, 0.999))
        self.optimizer_G = adam(itertools.chain(self.netG_A.parameters(), self.netG_B.parameters()))
        self.optimizer_D = adam(itertools.chain(self.netD_A.parameters(), self.netD_B.parameters()))
        self.fake_A_pool, self.fake_B_pool = HostImagePool(cfg.pool_size), HostImagePool(cfg.pool_size)
        self.lambda_A = self.lambda_B = cfg.lambda_cycle
        self.lambda_idt = cfg.lambda_identity
        self.device = device

    def set_input(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.real_A, self.real_B = a.to(self.device), b.to(self.device)

    def forward(self) -> None:
        self.fake_B = self.netG_A(self.real_A)
        self.rec_A = self.netG_B(self.fake_B)
        self.fake_A = self.netG_B(self.real_B)
        self.rec_B = self.netG_A(self.fake_A)

    def backward_D_basic(self, netD: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        loss_D = (self.criterionGAN(netD(real), True) + self.criterionGAN(netD(fake.detach()), False)) * 0.5
        loss_D.backward()
        return loss_D

    def backward_G(self) -> None:
        if self.lambda_idt > 0:
            self.idt_A = self.netG_A(self.real_B)
            self.loss_idt_A = self.criterionIdt(self.idt_A, self.real_B) * self.lambda_B * self.lambda_idt
            self.idt_B = self.netG_B(self.real_A)
            self.loss_idt_B = self.criterionIdt(self.idt_B, self.real_A) * self.lambda_A * self.lambda_idt
        else:
            self.loss_idt_A = self.loss_idt_B = 0
        self.loss_G_A = self.criterionGAN(self.netD_A(self.fake_B), True)
        self.loss_G_B = self.criterionGAN(self.netD_B(self.fake_A), True)
        self.loss_cycle_A = self.criterionCycle(self.rec_A, self.real_A) * self.lambda_A
        self.loss_cycle_B = self.criterionCycle(self.rec_B, self.real_B) * self.lambda_B
        self.loss_G = (self.loss_G_A + self.loss_G_B + self.loss_cycle_A + self.loss_cycle_B + self.loss_idt_A
                       + self.loss_idt_B)
        self.loss_G.backward()

    def optimize_parameters(self) -> None:
        self.forward()
        for net in (self.netD_A, self.netD_B):
            net.requires_grad_(False)
        self.optimizer_G.zero_grad()
        self.backward_G()
        self.optimizer_G.step()
        for net in (self.netD_A, self.netD_B):
            net.requires_grad_(True)
        self.optimizer_D.zero_grad()
        self.loss_D_A = self.backward_D_basic(self.netD_A, self.real_B, self.fake_B_pool.query(self.fake_B))
        self.loss_D_B = self.backward_D_basic(self.netD_B, self.real_A, self.fake_A_pool.query(self.fake_A))
        self.optimizer_D.step()


# ----------------------------------------------------------------------------------------------------------
# Helpers


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def fresh(dev: torch.device) -> None:
    """Frees what earlier configurations left and restarts the peak-memory counters."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peaks(dev: torch.device) -> dict[str, int | None]:
    if dev.type != "cuda":
        return {"peak_allocated": None, "peak_reserved": None}
    return {"peak_allocated": torch.cuda.max_memory_allocated(dev),
            "peak_reserved": torch.cuda.max_memory_reserved(dev)}


def trial_config(args: argparse.Namespace, batch: int, **changes: Any) -> TrainConfig:
    """The search's trial at this size and depth: the config's defaults, which are the fast path."""
    small = {} if args.size >= 64 else {"disc_layers": 2, "ngf": 8, "ndf": 8}  # the tests' tiny networks
    return TrainConfig(resize=args.size, unet_depth=args.depth, batch_size=batch, **small).replace(**changes)


def flops_per_pair(cfg: TrainConfig) -> float:
    """FLOPs of one train step (forward and backward of all passes) per image pair, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from cyclegan.train import CycleGAN

    cfg = cfg.replace(batch_size=1, pool_size=0)
    with torch.device("meta"):
        m = CycleGAN.build(cfg)
    idle = SimpleNamespace(zero_grad=lambda set_to_none=True: None, step=lambda: None)
    x = torch.zeros(1, 1, cfg.resize, cfg.resize, device="meta")
    with FlopCounterMode(display=False) as counter:
        train_step(m, idle, idle, x, x.clone(), (ImagePool(0), ImagePool(0)), cfg)
    return float(counter.get_total_flops())


def train_slices(size: int, n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random slices in [-1, 1] for timing: the step's cost does not depend on what the pixels show."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(n, 1, size, size, generator=gen) * 2 - 1 for _ in range(2))


# ----------------------------------------------------------------------------------------------------------
# (a) and (b): one configuration's step rate


def time_reference(cfg: TrainConfig, slices: tuple[torch.Tensor, torch.Tensor], steps: int, warmup: int,
                   dev: torch.device, best: bool = False) -> dict[str, Any]:
    """The reference's step as it ships (eager fp32, TF32 off), or with `best` in its fastest eager mode at large
    batches: bf16 autocast, channels_last, TF32 as PyTorch leaves it (../reference/gpu-measurements.md's column)."""
    fresh(dev)
    cuda = dev.type == "cuda"
    with tf32(False) if not best else contextlib.nullcontext():
        torch.backends.cudnn.benchmark = True  # the reference's BaseModel sets it
        ref = Reference(cfg, dev)
        layout = torch.channels_last if best and cuda else torch.contiguous_format
        if best and cuda:
            for net in (ref.netG_A, ref.netG_B, ref.netD_A, ref.netD_B):
                net.to(memory_format=layout)
        rng = random.Random(0)
        b = cfg.batch_size
        # Batches come ready from the reference's DataLoader workers; set_input copies them to the device.
        pick = [(rng.sample(range(len(slices[0])), b), rng.sample(range(len(slices[1])), b))
                for _ in range(warmup + steps)]
        batches = [(slices[0][i].contiguous(memory_format=layout), slices[1][j].contiguous(memory_format=layout))
                   for i, j in pick]
        autocast = partial(torch.autocast, dev.type, dtype=torch.bfloat16, enabled=best and cuda)
        for k, (a, bb) in enumerate(batches):
            if k == warmup:
                sync(dev)
                t0 = time.perf_counter()
            ref.set_input(a, bb)
            with autocast():
                ref.optimize_parameters()
        sync(dev)
        dt = time.perf_counter() - t0
    out = {"pairs_per_s": steps * b / dt, "step_ms": 1000 * dt / steps, **peaks(dev)}
    del ref, batches
    fresh(dev)
    return out


def time_trainer(cfg: TrainConfig, slices: tuple[torch.Tensor, torch.Tensor], steps: int, dev: torch.device,
                 repeats: int = 3) -> dict[str, Any]:
    """The trial's step: `Trainer.runner` over resident slices, after warm-up (eager steps, capture)."""
    fresh(dev)
    t0 = time.perf_counter()
    t = Trainer.build(cfg, dev)
    t.compile()
    t1, t2 = (s.to(dev) for s in slices)
    if dev.type == "cuda" and cfg.use_channels_last:
        t1, t2 = (s.contiguous(memory_format=torch.channels_last) for s in (t1, t2))
    runner = t.runner(t.feed(t1, t2, steps, bits=None), steps)
    o1, o2 = (epoch_order(len(s), steps, cfg.batch_size, k, 0) for k, s in enumerate((t1, t2)))
    need = math.ceil((cfg.pool_size / cfg.batch_size + runner.replay.warmup + 1) / steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(max(1, need)):
            runner.run_epoch(o1, o2)
        sync(dev)
        warm_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            sync(dev)
            start = time.perf_counter()
            means = runner.run_epoch(o1, o2)  # ends in the epoch's one host sync
            times.append(time.perf_counter() - start)
    dt = statistics.median(times)
    out = {"pairs_per_s": steps * cfg.batch_size / dt, "step_ms": 1000 * dt / steps, "warmup_s": warm_s,
           "captured": runner.replay.captured, "warnings": [str(w.message) for w in caught],
           "finite": all(math.isfinite(v) for v in means.values()), **peaks(dev)}
    del runner, t, t1, t2
    fresh(dev)
    return out


def section_steps(args: argparse.Namespace, dev: torch.device, res: dict[str, Any], save: Callable[[], None]) -> None:
    slices = train_slices(args.size)
    flops = res["flops_per_pair"]
    rows = res.setdefault("steps", [])
    for b in args.batches:
        row: dict[str, Any] = {"batch": b}
        rows.append(row)
        cfg = trial_config(args, b)
        row["reference"] = _guard(partial(time_reference, cfg, slices, args.steps, args.ref_warmup, dev),
                                  own_process=True)
        log(f"batch {b}: reference {row['reference']}")
        if args.ref_best:
            row["reference_best"] = _guard(partial(time_reference, cfg, slices, args.steps, args.ref_warmup, dev,
                                                   best=True), own_process=True)
            log(f"batch {b}: reference, bf16 + channels_last {row['reference_best']}")
        row["fast"] = _guard(partial(time_trainer, cfg, slices, args.steps, dev), own_process=True)
        log(f"batch {b}: fast {row['fast']}")
        for name in args.step_variants:  # the trainer with one switch changed, in the same run
            row[name] = _guard(partial(time_trainer, cfg.replace(**VARIANTS[name]), slices, args.steps, dev),
                               own_process=True)
            log(f"batch {b}: {name} {row[name]}")
        if args.fp32_eager:
            eager = cfg.replace(**EAGER_FP32)
            row["fp32_eager"] = _guard(partial(time_trainer, eager, slices, args.steps, dev, repeats=1),
                                       own_process=True)
            log(f"batch {b}: trainer in eager fp32 {row['fp32_eager']}")
        for key in ("reference", "reference_best", "fast", "fp32_eager", *args.step_variants):
            if "pairs_per_s" in row.get(key, {}):
                row[key]["tflops"] = row[key]["pairs_per_s"] * flops / 1e12
        if "pairs_per_s" in row["reference"] and "pairs_per_s" in row["fast"]:
            row["ratio"] = row["fast"]["pairs_per_s"] / row["reference"]["pairs_per_s"]
        if "pairs_per_s" in row.get("reference_best", {}) and "pairs_per_s" in row["fast"]:
            row["ratio_best"] = row["fast"]["pairs_per_s"] / row["reference_best"]["pairs_per_s"]
        save()


def _guard(fn: Callable[[], dict[str, Any]], *, own_process: bool = False) -> dict[str, Any]:
    """Runs one measurement, with `own_process` in a fresh process; a failure is recorded instead of ending the
    whole benchmark."""
    try:
        return _in_own_process(fn) if own_process else fn()
    except Exception as e:  # noqa: BLE001
        log(f"  failed: {type(e).__name__}: {e}")
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _in_own_process(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`fn()` in a fresh process. cuDNN keeps the algorithm it first picked for a convolution (benchmarked, or
    from its heuristics) for the rest of the process, whichever setting a later caller runs with: timed one after
    the other in one process, the fast path ran on the algorithms the reference's benchmark had picked for the same
    shapes (566 pairs/s at batch 32 on one H200, against 447 alone, as a trial runs), and a variant on the choices
    of the one before it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn).result()


# ----------------------------------------------------------------------------------------------------------
# (c) K trials sharing the device as separate processes


def section_processes(args: argparse.Namespace, dev: torch.device, res: dict[str, Any], save: Callable[[], None],
                      ) -> None:
    rows = res.setdefault("processes", [])
    with tempfile.TemporaryDirectory(prefix="bench-procs-") as tmp:
        data = Path(tmp) / "slices.pt"
        torch.save(train_slices(args.size), data)
        for k in args.processes:
            sync_dir = Path(tmp) / f"k{k}"
            sync_dir.mkdir()
            row = {"k": k, "batch": args.process_batch, **_guard(partial(_run_workers, args, dev, k, sync_dir, data))}
            rows.append(row)
            log(f"{k} processes: {row}")
            save()


def _run_workers(args: argparse.Namespace, dev: torch.device, k: int, sync_dir: Path, data: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "benchmarks.bench", "--device", str(dev), "--size", str(args.size), "--depth",
           str(args.depth), "--steps", str(args.process_steps), "--sync", str(sync_dir), "--procs", str(k),
           "--slices", str(data), "--duration", str(args.duration), "--process-batch", str(args.process_batch)]
    procs = [subprocess.Popen([*cmd, "--worker", str(i)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(k)]
    try:
        deadline = time.time() + args.worker_timeout
        while len(list(sync_dir.glob("ready.*"))) < k:
            if any(p.poll() is not None for p in procs) or time.time() > deadline:
                raise RuntimeError("a worker stopped or was not ready in time: "
                                   + " | ".join((p.communicate(timeout=5)[0] or "")[-400:] for p in procs
                                                if p.poll() is not None))
            time.sleep(0.05)
        (sync_dir / "go").write_text(str(time.time() + 1.0))  # all start together, a second from now
        outputs = [p.communicate(timeout=args.duration + args.worker_timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for i, (p, text) in enumerate(zip(procs, outputs)):
        path = sync_dir / f"result.{i}.json"
        if p.returncode != 0 or not path.exists():
            raise RuntimeError(f"worker {i} exited with {p.returncode}: {text[-600:]}")
        results.append(json.loads(path.read_text()))
    return {"pairs_per_s": sum(r["pairs_per_s"] for r in results), "per_process": results}


def worker(args: argparse.Namespace) -> int:
    """One of K trials: warm up, wait for the others, then run steps for `--duration` seconds."""
    dev = torch.device(args.device)
    sync_dir = Path(args.sync)
    if dev.type == "cuda" and args.procs > 1:
        torch.cuda.set_per_process_memory_fraction(1.0 / args.procs)  # what the search does with a GPU share
    torch.set_num_threads(1)
    cfg = trial_config(args, args.process_batch)
    slices = torch.load(args.slices, weights_only=True)  # tensors only: no code runs on load
    t = Trainer.build(cfg, dev)
    t.compile()
    t1, t2 = (s.to(dev) for s in slices)
    if dev.type == "cuda" and cfg.use_channels_last:
        t1, t2 = (s.contiguous(memory_format=torch.channels_last) for s in (t1, t2))
    steps = args.steps
    runner = t.runner(t.feed(t1, t2, steps, bits=None), steps)
    o1, o2 = (epoch_order(len(s), steps, cfg.batch_size, k, 0) for k, s in enumerate((t1, t2)))
    for _ in range(max(1, math.ceil((cfg.pool_size / cfg.batch_size + runner.replay.warmup + 1) / steps))):
        runner.run_epoch(o1, o2)
    runner.run_epoch(o1, o2)
    (sync_dir / f"ready.{args.worker}").touch()
    while not (sync_dir / "go").exists():
        time.sleep(0.01)
    start = float((sync_dir / "go").read_text())
    time.sleep(max(0.0, start - time.time()))
    t0, done = time.time(), 0
    while time.time() - t0 < args.duration:
        runner.run_epoch(o1, o2)
        done += steps
    elapsed = time.time() - t0
    out = {"pairs_per_s": done * cfg.batch_size / elapsed, "steps": done, "seconds": elapsed, "start": t0,
           "end": t0 + elapsed, "captured": runner.replay.captured, **peaks(dev)}
    (sync_dir / f"result.{args.worker}.json").write_text(json.dumps(out))
    return 0


# ----------------------------------------------------------------------------------------------------------
# (d) whole epochs, as a trial runs them


def section_epoch(args: argparse.Namespace, dev: torch.device, res: dict[str, Any], save: Callable[[], None]) -> None:
    data = load_data(args.data, args.size, 0)
    cfg = trial_config(args, args.epoch_batch, epochs=args.epochs)
    fresh(dev)
    saves: dict[int, float] = {}
    copies: dict[int, float] = {}  # what the loop pays for a checkpoint written off the training path
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        trial = Path(tmp)

        def report(metrics: dict[str, Any], save_checkpoint: Callable[[Path], Any]) -> None:
            # What search/trainable.py does each epoch, less Ray: a metrics line and a checkpoint.
            with (trial / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            if args.checkpoint_every and metrics["epoch"] % args.checkpoint_every == 0:
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory(dir=trial) as d:
                    pending = save_checkpoint(Path(d) / checkpoint.CHECKPOINT)
                    copies[metrics["epoch"]] = time.perf_counter() - t0
                    pending.wait()  # the whole write, copy included, before its folder goes
                saves[metrics["epoch"]] = time.perf_counter() - t0

        t0 = time.perf_counter()
        result = fit(cfg, data, device=dev, report=report, log_dir=trial / "tb")
        total = time.perf_counter() - t0
    parts = [{**t, "checkpoint": saves.get(e, 0.0), "report": t["report"] - saves.get(e, 0.0)}
             for e, t in enumerate(result.timings, start=1)]
    # Means over the second half of the epochs: after the warm-up (eager steps, captures), and with the
    # TensorBoard samples of every `sample_every` epochs spread over the epochs they cover. The report's
    # checkpoint writes are counted apart.
    steady = parts[len(parts) // 2:]
    mean = {k: statistics.fmean(t[k] for t in steady) for k in ("train", "val", "log", "report")}
    epoch_s = mean["train"] + mean["val"] + mean["log"] + mean["report"]
    steps = _steps(data, cfg)
    each = statistics.median(saves.values()) if saves else 0.0
    res["epoch"] = {
        "data": str(args.data), "batch": cfg.batch_size, "epochs": cfg.epochs, "steps_per_epoch": steps,
        "total_s": total, "mean_s": mean, "checkpoint_every": args.checkpoint_every, "checkpoint_each_s": each,
        "checkpoint_copy_each_s": statistics.median(copies.values()) if copies else 0.0,
        "val_log_share": (mean["val"] + mean["log"]) / epoch_s,
        # The search's default writes a checkpoint every epoch: what share of the epoch that would be.
        "checkpoint_share_every_epoch": each / (epoch_s + each),
        "train_pairs_per_s": steps * cfg.batch_size / statistics.median(t["train"] for t in steady),
        "per_epoch": parts, "last_metrics": result.history[-1],
    }
    log(f"epoch: {mean}, validation+logging share {res['epoch']['val_log_share']:.3f}")
    save()


def _steps(data: Dataset, cfg: TrainConfig) -> int:
    return max(1, math.ceil(max(len(data.train.t1), len(data.train.t2)) / cfg.batch_size))


# ----------------------------------------------------------------------------------------------------------
# More sections


def section_quality(args: argparse.Namespace, dev: torch.device, res: dict[str, Any], save: Callable[[], None]
                    ) -> None:
    """The fast path against eager fp32 on the phantom at `--quality-size`, same data, `--seeds` seeds each."""
    size, depth = args.quality_size, args.quality_depth
    data = synthetic_data(size, 0)
    base = TrainConfig(resize=size, unet_depth=depth, epochs=args.quality_epochs)
    known = {"fp32_eager": base.replace(**EAGER_FP32),
             **{k: base.replace(**v) for k, v in VARIANTS.items()}}
    variants = {k: known[k] for k in args.quality_variants}
    out = res.setdefault("quality", {"size": size, "depth": depth, "epochs": args.quality_epochs, "runs": []})
    keys = ("ssim_t1_t2", "ssim_t2_t1", "ssim_t1_t2_head", "ssim_t2_t1_head", "ssim_t1_t1", "ssim_t2_t2")
    for seed in range(args.seeds):
        for name, cfg in variants.items():
            fresh(dev)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with tf32(False):
                    hist = fit(cfg.replace(seed=seed), data, device=dev).history
            run = {"variant": name, "seed": seed, "seconds": time.perf_counter() - t0,
                   **{k: hist[-1][k] for k in keys}, "loss_cycle": hist[-1]["loss_cycle"],
                   "warnings": [str(w.message) for w in caught]}
            out["runs"].append(run)
            log(f"quality: {run}")
            save()
    summary = {}
    for name in variants:
        for k in keys:
            vals = [r[k] for r in out["runs"] if r["variant"] == name]
            summary.setdefault(name, {})[k] = {"mean": statistics.fmean(vals),
                                               "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    out["summary"] = summary
    save()


@contextmanager
def deterministic():
    """cuDNN's deterministic algorithms, no benchmarking: two eager runs then give the same numbers."""
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def section_check(args: argparse.Namespace, dev: torch.device, res: dict[str, Any], save: Callable[[], None]) -> None:
    """A fit replayed as CUDA graphs trains the same networks as an eager fit, on the same seeds.

    Twice, over four epochs with a decaying learning rate, TF32 off and deterministic cuDNN: in fp32 with no
    dropout and no pool (no random draws), and with the defaults a trial trains with (bf16, dropout, the image pool
    filling then swapping, channels_last, fused Adam), whose random draws the graph must replay as eager draws them.
    For each, a second eager fit gives the run-to-run spread.
    """
    if dev.type != "cuda":
        res["check"] = {"skipped": "needs a GPU"}
        return
    data = synthetic_data(64, 0, n_slices=30)
    base = TrainConfig(resize=64, unet_depth=6, batch_size=2, epochs=4, lr_schedule="linear", ngf=32, ndf=32)
    cases = {"fp32_no_pool": base.replace(dropout=0.0, pool_size=0, precision="fp32", channels_last=False),
             "defaults": base}
    out: dict[str, Any] = {}
    with tf32(False), deterministic(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for case, cfg in cases.items():
            runs = {}
            for name, graphs in (("graphed", True), ("eager", False), ("eager_again", False)):
                fresh(dev)
                runs[name] = fit(cfg.replace(cuda_graphs=graphs), data, device=dev)
            out[case] = _agreement(runs, Trainer.build(cfg, dev).models)
    res["check"] = {**out, "warnings": [str(w.message) for w in caught], "ok": all(c["ok"] for c in out.values())}
    log(f"check: {res['check']}")
    save()


def _agreement(runs: dict[str, Any], init: Any) -> dict[str, Any]:
    """How far the graphed fit's weights and losses are from the eager fit's, against a second eager fit's."""
    def flat(models) -> torch.Tensor:
        return torch.cat([p.detach().float().flatten() for net in models.named().values() for p in net.parameters()])

    p0, eager = flat(init), flat(runs["eager"].models)

    def diff(name: str) -> dict[str, float]:
        other = runs[name]
        losses = max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-8) for x, y in zip(other.history, runs["eager"].history)
                     for k in ("loss_G", "loss_D", "loss_cycle"))
        return {"param_diff_over_update": ((flat(other.models) - eager).norm() / (eager - p0).norm()).item(),
                "loss_rel_diff": losses}

    graphed, spread = diff("graphed"), diff("eager_again")
    return {"graphed_vs_eager": graphed, "eager_vs_eager": spread,
            "update_over_param": ((eager - p0).norm() / p0.norm()).item(),
            "captured": runs["graphed"].history[-1]["graphed"],
            "ok": runs["graphed"].history[-1]["graphed"]
            and graphed["param_diff_over_update"] <= max(1e-4, 10 * spread["param_diff_over_update"])}


def section_memory(args: argparse.Namespace, dev: torch.device, res: dict[str, Any], save: Callable[[], None]
                   ) -> None:
    from cyclegan.memory import estimate_memory, footprint, measure_memory

    if dev.type != "cuda":
        res["memory"] = {"skipped": "needs a GPU"}
        return
    configs = [dict(batch_size=b) for b in args.batches] + [
        dict(resize=128, unet_depth=7, batch_size=2), dict(resize=128, unet_depth=7, batch_size=16),
        dict(unet_depth=6, batch_size=4), dict(ngf=32, ndf=32, batch_size=8), dict(pool_size=0, batch_size=2),
        *(dict(batch_size=b, **EAGER_FP32) for b in (2, 8)),
    ]
    rows = res.setdefault("memory", {"context_bytes": _context_bytes(dev), "rows": []})["rows"]
    for kw in configs:
        cfg = TrainConfig(**kw)
        fresh(dev)
        row = {"config": kw, **footprint(cfg).__dict__, "estimate": estimate_memory(cfg),
               **_guard(partial(measure_memory, cfg, dev))}
        rows.append(row)
        log(f"memory: {row}")
        save()


def _context_bytes(dev: torch.device) -> int:
    free, total = torch.cuda.mem_get_info(dev)
    return total - free - torch.cuda.memory_reserved(dev)


def section_profile(args: argparse.Namespace, dev: torch.device, res: dict[str, Any], save: Callable[[], None]
                    ) -> None:
    """Where the GPU's time goes in the fast step (and in the eager bf16 step, which shows the launch gaps)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    out = res.setdefault("profile", {})
    slices = train_slices(args.size)
    variants = [(b, name, VARIANTS[name]) for name in args.profile_variants for b in args.profile_batches]
    variants.append((args.profile_batches[0], "eager_bf16", {"cuda_graphs": False}))
    for b, name, changes in variants:
        cfg = trial_config(args, b, **changes)
        fresh(dev)
        t = Trainer.build(cfg, dev)
        t1, t2 = (s.to(dev) for s in slices)
        if cfg.use_channels_last:
            t1, t2 = (s.contiguous(memory_format=torch.channels_last) for s in (t1, t2))
        steps = 5
        runner = t.runner(t.feed(t1, t2, steps, bits=None), steps)
        o1, o2 = (epoch_order(len(s), steps, b, k, 0) for k, s in enumerate((t1, t2)))
        for _ in range(max(1, math.ceil((cfg.pool_size / b + 4) / steps))):
            runner.run_epoch(o1, o2)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        sync(dev)
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            runner.run_epoch(o1, o2)
            sync(dev)
        wall = time.perf_counter() - t0
        events = prof.key_averages()
        on_gpu = [e for e in events if e.device_type == DeviceType.CUDA]  # kernels, copies, memsets
        kernels = [(e.key, _self_device_us(e)) for e in on_gpu]
        busy = sum(us for _, us in kernels)
        top = sorted(kernels, key=lambda kv: -kv[1])[:12]
        out[f"{name}_b{b}"] = {
            "wall_ms_per_step": 1000 * wall / steps, "gpu_busy_ms_per_step": busy / 1000 / steps,
            "kernels_per_step": sum(e.count for e in on_gpu) / steps,
            "categories": _categories(kernels, busy),
            "top": [{"kernel": k[:90], "ms_per_step": us / 1000 / steps, "share": us / busy} for k, us in top],
            "captured": runner.replay.captured}
        if args.profile_dir:
            table = events.table(sort_by="self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total",
                                 row_limit=25, max_name_column_width=70)
            Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.profile_dir) / f"profile_{name}_b{b}.txt").write_text(table)
        log(f"profile {name} b{b}: {json.dumps({k: v for k, v in out[f'{name}_b{b}'].items() if k != 'top'})}")
        del runner, t, prof
        save()


def _self_device_us(e: Any) -> float:
    return float(getattr(e, "self_device_time_total", 0.0) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)


CATEGORIES = (("convolution", ("conv", "cudnn", "xmma", "gemm", "wgrad", "dgrad", "fprop", "sm90", "cutlass")),
              ("norm", ("norm", "welford")), ("optimizer", ("adam", "multi_tensor")),
              ("copy/cat/cast", ("copy", "cat", "cast", "to_copy")), ("reduce", ("reduce",)),
              ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise", "triton")))


def _categories(kernels: list[tuple[str, float]], busy: float) -> dict[str, float]:
    shares: dict[str, float] = {}
    for name, us in kernels:
        low = name.lower()
        cat = next((c for c, words in CATEGORIES if any(w in low for w in words)), "other")
        shares[cat] = shares.get(cat, 0.0) + us / max(busy, 1e-9)
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


# Every speed switch off: the trainer as plain eager fp32, in the reference's order of passes.
EAGER_FP32: dict[str, Any] = {"precision": "fp32", "channels_last": False, "cuda_graphs": False, "fused_adam": False,
                              "fused_norm": False, "stacked_passes": False}

VARIANTS: dict[str, dict[str, Any]] = {
    "fast": {},  # the defaults
    "nchw": {"channels_last": False},
    "nhwc": {"channels_last": True},
    "no_graphs": {"cuda_graphs": False},
    "compile": {"compile": True},
    "compile_nchw": {"compile": True, "channels_last": False},
    "native_norm": {"fused_norm": False},  # channels_last "auto" then follows the batch
    "native_norm_nhwc": {"fused_norm": False, "channels_last": True},
    # cuDNN times each new shape's algorithms, or picks them by its heuristics (the default: timed from batch 8 up).
    "cudnn_benchmark": {"cudnn_benchmark": True},
    "heuristics": {"cudnn_benchmark": False},
    "unstacked": {"stacked_passes": False},  # each generator and discriminator pass on its own batch
}


def section_variants(args: argparse.Namespace, dev: torch.device, res: dict[str, Any], save: Callable[[], None]
                     ) -> None:
    """The fast path with one switch changed, side by side (torch.compile on top: kept only if it pays)."""
    slices = train_slices(args.size)
    rows = res.setdefault("variants", [])
    for name in args.variants:
        for b in args.variant_batches:
            if time.perf_counter() - STARTED > args.budget:
                rows.append({"variant": name, "batch": b, "skipped": "over --budget"})
                continue
            cfg = trial_config(args, b, **VARIANTS[name])
            row = {"variant": name, "batch": b,
                   **_guard(partial(time_trainer, cfg, slices, args.steps, dev), own_process=True)}
            if "pairs_per_s" in row:
                row["tflops"] = row["pairs_per_s"] * res["flops_per_pair"] / 1e12
            rows.append(row)
            log(f"variant {name} b{b}: {row}")
            save()


# ----------------------------------------------------------------------------------------------------------


def summary(res: dict[str, Any]) -> str:
    gib = lambda v: f"{v / 2**30:.2f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    num = lambda v, f=".1f": format(v, f) if isinstance(v, (int, float)) else "-"  # noqa: E731
    lines = [f"device: {res['device']} | torch {res['torch']} | {res['size']}x{res['size']}, U-Net depth "
             f"{res['depth']} | {res['flops_per_pair'] / 1e9:.1f} GFLOP per pair"]
    if res.get("steps"):
        lines.append("batch | reference pairs/s | fast pairs/s | fast/ref | ref TFLOP/s | fast TFLOP/s | "
                     "ref peak GiB | fast peak GiB (reserved)")
        for r in res["steps"]:
            a, b = r.get("reference", {}), r.get("fast", {})
            lines.append(f"{r['batch']:5d} | {num(a.get('pairs_per_s')):>17} | {num(b.get('pairs_per_s')):>12} | "
                         f"{num(r.get('ratio'), '.2f'):>8} | {num(a.get('tflops')):>11} | {num(b.get('tflops')):>12} | "
                         f"{gib(a.get('peak_allocated')):>12} | {gib(b.get('peak_allocated'))} "
                         f"({gib(b.get('peak_reserved'))})")
    extra = [k for k in VARIANTS if k != "fast" and any(k in r for r in res.get("steps", []))]
    for r in res.get("steps", []):
        for k in extra:
            v = r.get(k, {})
            ratio = v["pairs_per_s"] / r["reference"]["pairs_per_s"] if "pairs_per_s" in v and "pairs_per_s" in r.get(
                "reference", {}) else None
            lines.append(f"{r['batch']:5d} | {k}: {num(v.get('pairs_per_s'))} pairs/s, {num(ratio, '.2f')}x the "
                         f"reference, {gib(v.get('peak_allocated'))} GiB")
    if res.get("processes"):
        one_ref = next((r["reference"].get("pairs_per_s") for r in res.get("steps", [])
                        if r["batch"] == res["processes"][0]["batch"] and "reference" in r), None)
        lines.append("K processes | aggregate pairs/s | x one reference trial")
        for r in res["processes"]:
            agg = r.get("pairs_per_s")
            ratio = agg / one_ref if agg and one_ref else None
            lines.append(f"{r['k']:11d} | {num(agg):>17} | {num(ratio, '.2f')}" + (f"  {r['error']}" if "error" in r
                                                                                  else ""))
    e = res.get("epoch")
    if e:
        m = e["mean_s"]
        lines.append(f"epoch ({e['steps_per_epoch']} steps at batch {e['batch']}, {e['data']}): train "
                     f"{1000 * m['train']:.1f} ms, validation {1000 * m['val']:.1f} ms, logging "
                     f"{1000 * m['log']:.1f} ms, report {1000 * m['report']:.1f} ms -> validation+logging "
                     f"{100 * e['val_log_share']:.1f}% of the epoch; a checkpoint takes "
                     f"{1000 * e['checkpoint_each_s']:.0f} ms")
    q = res.get("quality", {}).get("summary")
    if q:
        for name, s in q.items():
            lines.append(f"quality {name}: " + ", ".join(f"{k} {v['mean']:.4f}±{v['sd']:.4f}" for k, v in s.items()
                                                         if k in ("ssim_t1_t2", "ssim_t2_t1")))
    if res.get("variants"):
        lines.append("variant | batch | pairs/s | TFLOP/s | peak GiB (reserved) | captured")
        for r in res["variants"]:
            lines.append(f"{r['variant']:>12} | {r['batch']:5d} | {num(r.get('pairs_per_s')):>7} | "
                         f"{num(r.get('tflops')):>7} | {gib(r.get('peak_allocated'))} "
                         f"({gib(r.get('peak_reserved'))}) | "
                         f"{r.get('captured', r.get('skipped', r.get('error', '-')))}")
    c = res.get("check")
    for case, r in (c or {}).items():
        if isinstance(r, dict) and "graphed_vs_eager" in r:
            lines.append(f"graphed vs eager fit ({case}, deterministic): parameter difference "
                         f"{r['graphed_vs_eager']['param_diff_over_update']:.2e} of the update (eager vs eager "
                         f"{r['eager_vs_eager']['param_diff_over_update']:.2e}) -> {'ok' if r['ok'] else 'DIFFERENT'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 8, 32])
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    p.add_argument("--ref-warmup", type=int, default=5, help="reference steps before timing")
    p.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4, 8], help="K values for the shared-GPU run")
    p.add_argument("--process-batch", type=int, default=2)
    p.add_argument("--process-steps", type=int, default=10, help="steps between a worker's host syncs")
    p.add_argument("--duration", type=float, default=6.0, help="seconds each of the K workers runs")
    p.add_argument("--worker-timeout", type=float, default=180.0)
    p.add_argument("--data", default="synthetic", help="the slices for the epoch timing: a folder, or 'synthetic'")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the epoch timing")
    p.add_argument("--epoch-batch", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=1, help="as the search's default; 0: no checkpoints")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS))
    p.add_argument("--ref-best", action="store_true",
                   help="also time the reference in its best eager mode (bf16 autocast, channels_last)")
    p.add_argument("--fp32-eager", action="store_true", help="also time the trainer with every speed switch off")
    p.add_argument("--step-variants", nargs="*", choices=list(VARIANTS), default=[],
                   help="also time these variants of the fast path at each batch")
    p.add_argument("--quality-size", type=int, default=128)
    p.add_argument("--quality-depth", type=int, default=7)
    p.add_argument("--quality-epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--profile-batches", type=int, nargs="+", default=[2, 32])
    p.add_argument("--profile-dir", help="where to write the profiler tables")
    p.add_argument("--profile-variants", nargs="+", choices=list(VARIANTS), default=["fast"],
                   help="the variants to profile at each of --profile-batches")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["fast", "nchw", "compile"])
    p.add_argument("--variant-batches", type=int, nargs="+", default=[2, 32])
    p.add_argument("--quality-variants", nargs="+", choices=["fp32_eager", *VARIANTS], default=["fast", "fp32_eager"])
    p.add_argument("--budget", type=float, default=float("inf"), help="seconds; later variants are skipped after it")
    p.add_argument("--out", type=Path, help="write the results as JSON here (updated after every section)")
    # A worker of the K-process run (internal).
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--sync", help=argparse.SUPPRESS)
    p.add_argument("--slices", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker(args)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no GPU is visible")
    if dev.type == "cpu":
        torch.set_num_threads(1)  # tiny CPU runs: a second thread only contends (tests/conftest.py)
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
        "command": "python -m benchmarks.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "size": args.size, "depth": args.depth, "flops_per_pair": flops_per_pair(trial_config(args, 1)),
    }

    def save() -> None:
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=1, default=str) + "\n")

    save()
    run = {"steps": section_steps, "processes": section_processes, "epoch": section_epoch,
           "quality": section_quality, "check": section_check, "memory": section_memory,
           "profile": section_profile, "variants": section_variants}
    for name in args.sections:
        t0 = time.perf_counter()
        log(f"== {name}")
        try:
            run[name](args, dev, res, save)
        except Exception as e:  # noqa: BLE001 - keep the other sections' results
            log(f"section {name} failed: {type(e).__name__}: {e}")
            res.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"
        res.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
        save()
    print(summary(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
