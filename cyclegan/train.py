"""Trains one CycleGAN: `python -m cyclegan.train [--data DIR|synthetic] [--set key=value ...] --out DIR`.

`--schedule FILE` replays a schedule (`cyclegan/schedule.py`: a population-based search's winner's knobs, epoch by
epoch) as one run.

The names follow the study: G translates T1 -> T2 (`g_t1_t2`), F translates T2 -> T1 (`g_t2_t1`), D_T2
judges T2 slices and D_T1 judges T1 slices. (In the reference code these are G_A, G_B, D_A, D_B with
A = T1 and B = T2.) `fit` is the loop; it takes a `report` callable, so the CLI, Ray Tune and the tests
each decide what happens with the metrics and the checkpoint of every epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cyclegan import checkpoint, training_state
from cyclegan.checkpoint_writer import CheckpointWriter, PendingCheckpoint
from cyclegan.clock import process_started
from cyclegan.config import ConfigError, TrainConfig, parse_overrides
from cyclegan.data import DataError, Dataset, load_data
from cyclegan.evaluate import validation_pass, validation_subset
from cyclegan.feed import Feed, Resident, Streamed
from cyclegan.fused_norm import fuse_instance_norms, skip_cancelled_biases
from cyclegan.graphed import Replay, StepRunner
from cyclegan.losses import gan_loss, l1
from cyclegan.metrics import IMAGE_METRICS
from cyclegan.networks import PatchDiscriminator, build_generator
from cyclegan.one_channel import patch_one_channel_convs
from cyclegan.optim import make_optimizers, set_learning_rates
from cyclegan.schedule import KNOBS, Schedule, ScheduleError, knobs_of
from cyclegan.tensorboard import HParams, TensorBoard

Report = Callable[[dict[str, Any], Callable[[Path], PendingCheckpoint]], None]
# What each epoch's metrics say about time rather than about the model (they differ between two equal runs).
# The fixed costs of a run (`fixed_costs`), for `search.throughput`: wall-clock times are seconds since the epoch.
TIMING_METRICS = ("train_seconds", "val_seconds", "pairs_per_second", "process_started", "first_step_at",
                  "startup_seconds", "warmup_seconds", "warmup_steps", "warmup_first_step_seconds",
                  "warmup_first_step_cpu_seconds", "warmup_first_step_process_cpu_seconds",
                  "warmup_capture_seconds", "graphed", "log_seconds", "report_seconds")


@dataclass
class CycleGAN:
    g_t1_t2: nn.Module
    g_t2_t1: nn.Module
    d_t1: nn.Module
    d_t2: nn.Module

    @classmethod
    def build(cls, cfg: TrainConfig) -> CycleGAN:
        disc = partial(PatchDiscriminator, cfg.disc_layers, 1, cfg.ndf)
        return cls(build_generator(cfg), build_generator(cfg), disc(), disc())

    def named(self) -> dict[str, nn.Module]:
        return {"g_t1_t2": self.g_t1_t2, "g_t2_t1": self.g_t2_t1, "d_t1": self.d_t1, "d_t2": self.d_t2}


class ImagePool:
    """The reference's history of past fakes, kept on the training device.

    Until the pool is full every fake is stored and passed through; after that each fake is, with
    probability 1/2, swapped for a random stored one (which it replaces). The count of stored fakes lives on
    the device and both branches run as the same kernels every query, with the choice made per fake by
    `torch.where`: querying never waits for the host, and a step that fills the pool can be captured in a CUDA
    graph, so the trainer need not run the pool's fill eagerly first (at batch 1, 50 eager steps).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.count: torch.Tensor | None = None  # fakes stored so far (at most `size`), a 0-d tensor on the device
        self.images: torch.Tensor | None = None  # `size` stored fakes and one scratch row (below)

    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return fakes
        fakes = fakes.detach()
        if self.images is None:
            self.images = fakes.new_zeros((self.size + 1, *fakes.shape[1:]))
            self.count = torch.zeros((), dtype=torch.long, device=fakes.device)
        elif self.images.dtype != fakes.dtype or self.images.device != fakes.device:
            # A pool restored from a checkpoint of another device or precision (bf16 fakes on a GPU, fp32 on
            # the CPU): it takes this run's, once.
            self.images = self.images.to(device=fakes.device, dtype=fakes.dtype)
            self.count = self.count.to(fakes.device)
        scratch = self.size  # the row that writes which must not happen go to: one index_copy_ serves both cases
        out = []
        # A batch larger than the pool goes in pool-sized chunks, one after the other, each seeing the last's writes.
        for chunk in fakes.split(self.size):
            n = len(chunk)
            slot = self.count + torch.arange(n, device=chunk.device)
            filling = slot < self.size
            self.images.index_copy_(0, torch.where(filling, slot, scratch), chunk)
            # The others meet a full pool (the fakes before them in the chunk filled it). Distinct slots within one
            # write: with a repeated slot, index_copy_ keeps one of the fakes written there and the other is lost
            # while the stored image goes out twice.
            idx = torch.rand(self.size, device=chunk.device).argsort()[:n]
            swap = ~filling & (torch.rand(n, device=chunk.device) < 0.5)
            out.append(torch.where(swap.view(-1, 1, 1, 1), self.images[idx], chunk))
            self.images.index_copy_(0, torch.where(swap, idx, scratch), chunk)
            self.count.add_(n).clamp_(max=self.size)
        return torch.cat(out)

    @property
    def stored(self) -> torch.Tensor | None:
        return None if self.images is None else self.images[:self.size]

    def state(self) -> dict[str, Any]:
        # Tensors stay where they are: the checkpoint writer copies them to host memory without a sync.
        return {"count": self.count, "images": self.stored}

    def load(self, state: dict[str, Any], device: torch.device) -> None:
        if state["images"] is None:
            self.count = self.images = None
            return
        # Checkpoints written before the count moved to the device hold it as an int.
        self.count = torch.as_tensor(state["count"], dtype=torch.long).to(device)
        stored = state["images"].to(device)
        self.images = torch.cat([stored, stored.new_zeros((1, *stored.shape[1:]))])


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def train_step(m: CycleGAN, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               real_t1: torch.Tensor, real_t2: torch.Tensor, pools: tuple[ImagePool, ImagePool],
               cfg: TrainConfig, autocast: Callable = nullcontext) -> dict[str, torch.Tensor]:
    """One CycleGAN step in the reference order: both generators, then both discriminators.

    Returns the losses as 0-d device tensors (reading them here would stall the GPU every step).
    """
    losses, fake_t1, fake_t2 = generator_update(m, opt_g, real_t1, real_t2, cfg, autocast)
    losses["loss_D"] = discriminator_update(m, opt_d, real_t1, real_t2, pools[0].query(fake_t1),
                                            pools[1].query(fake_t2), cfg, autocast)
    return losses


def generator_update(m: CycleGAN, opt_g: torch.optim.Optimizer, real_t1: torch.Tensor, real_t2: torch.Tensor,
                     cfg: TrainConfig, autocast: Callable = nullcontext
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Updates G and F on the adversarial, cycle and identity losses; returns the losses and both fakes."""
    # The discriminators are frozen so that this update leaves them untouched.
    set_requires_grad([m.d_t1, m.d_t2], False)
    opt_g.zero_grad(set_to_none=True)
    total, losses, fake_t1, fake_t2 = generator_losses(m, real_t1, real_t2, cfg, autocast)
    total.backward()
    opt_g.step()
    set_requires_grad([m.d_t1, m.d_t2], True)
    return {k: v.detach() for k, v in losses.items()}, fake_t1.detach(), fake_t2.detach()


def generator_losses(m: CycleGAN, real_t1: torch.Tensor, real_t2: torch.Tensor, cfg: TrainConfig,
                     autocast: Callable = nullcontext
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The forward passes of `generator_update`: (the loss it steps on, its terms, fake T1, fake T2).

    With `stacked_passes` the six generator passes run as three: G on (T1, T2) gives the fake T2 and T2's identity,
    F on (T2, T1, fake T2) the fake T1, T1's identity and T1's cycle, then G the T2 cycle. Every layer treats the
    samples of a batch apart (instance norm, no batch statistics), so the outputs are the six passes'; each weight is
    read, and its gradient made, once per pass instead of once per sample set.
    """
    identity = cfg.lambda_identity > 0
    with autocast():
        if cfg.stacked_passes:
            fake_t2, *idt_t2 = _stacked(m.g_t1_t2, real_t1, *([real_t2] if identity else []))
            fake_t1, *idt_t1, rec_t1 = _stacked(m.g_t2_t1, real_t2, *([real_t1] if identity else []),
                                                _jitter(fake_t2, cfg.cycle_noise))
            rec_t2 = m.g_t1_t2(_jitter(fake_t1, cfg.cycle_noise))
        else:  # the reference's order, one pass each
            fake_t2 = m.g_t1_t2(real_t1)
            rec_t1 = m.g_t2_t1(_jitter(fake_t2, cfg.cycle_noise))
            fake_t1 = m.g_t2_t1(real_t2)
            rec_t2 = m.g_t1_t2(_jitter(fake_t1, cfg.cycle_noise))
            idt_t2, idt_t1 = ([m.g_t1_t2(real_t2)], [m.g_t2_t1(real_t1)]) if identity else ([], [])
        loss_g = gan_loss(m.d_t2(fake_t2), True, cfg.gan_loss) + gan_loss(m.d_t1(fake_t1), True, cfg.gan_loss)
        loss_cycle = (l1(rec_t1, real_t1) + l1(rec_t2, real_t2)) * cfg.lambda_cycle
        if identity:
            idt = l1(idt_t2[0], real_t2) + l1(idt_t1[0], real_t1)
            loss_identity = idt * cfg.lambda_cycle * cfg.lambda_identity
        else:
            loss_identity = torch.zeros((), device=real_t1.device)
    losses = {"loss_cycle": loss_cycle, "loss_identity": loss_identity, "loss_G": loss_g}
    return loss_g + loss_cycle + loss_identity, losses, fake_t1, fake_t2


def _stacked(net: nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`net` on each of `inputs`, as one pass on them stacked along the batch."""
    if len(inputs) == 1:
        return (net(inputs[0]),)
    return net(torch.cat(inputs)).split([len(x) for x in inputs])


def _jitter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    # Drawn from the default generator, so a captured CUDA graph replays a fresh draw each step.
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


def discriminator_update(m: CycleGAN, opt_d: torch.optim.Optimizer, real_t1: torch.Tensor, real_t2: torch.Tensor,
                         fake_t1: torch.Tensor, fake_t2: torch.Tensor, cfg: TrainConfig,
                         autocast: Callable = nullcontext) -> torch.Tensor:
    """Updates D_T1 and D_T2 on real slices against (pooled) fakes; returns their summed, weighted loss."""
    opt_d.zero_grad(set_to_none=True)
    loss_d = discriminator_loss(m, real_t1, real_t2, fake_t1, fake_t2, cfg, autocast)
    loss_d.backward()
    opt_d.step()
    return loss_d.detach()


def discriminator_loss(m: CycleGAN, real_t1: torch.Tensor, real_t2: torch.Tensor, fake_t1: torch.Tensor,
                       fake_t2: torch.Tensor, cfg: TrainConfig, autocast: Callable = nullcontext) -> torch.Tensor:
    """The forward passes of `discriminator_update`: the loss it steps on (reals and fakes one pass with
    `stacked_passes`)."""
    with autocast():
        loss_d = 0.0
        for d, real, fake in ((m.d_t2, real_t2, fake_t2), (m.d_t1, real_t1, fake_t1)):
            on_real, on_fake = _stacked(d, real, fake) if cfg.stacked_passes else (d(real), d(fake))
            loss_d = loss_d + (gan_loss(on_real, True, cfg.gan_loss) + gan_loss(on_fake, False, cfg.gan_loss)) \
                * cfg.lambda_disc
    return loss_d


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def epoch_order(n: int, steps: int, batch: int, seed: int, epoch: int) -> torch.Tensor:
    """Indices for one epoch: shuffled passes over n slices, as many as `steps` batches need.

    Drawn from (seed, epoch) alone, so a resumed run sees exactly the batches it would have seen.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    passes = math.ceil(steps * batch / n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(passes)])[: steps * batch]


@dataclass
class Trainer:
    """One run's networks, optimizers, LR schedulers and image pools, and how its steps run on its device.

    `step` is `train_step` with all of these bound; `runner` runs whole epochs of it, as one replayed
    CUDA graph per step on a GPU with `cuda_graphs` on (`graphed.StepRunner`), eagerly otherwise.
    """

    cfg: TrainConfig
    device: torch.device
    models: CycleGAN
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scheds: list[torch.optim.lr_scheduler.LRScheduler]
    pools: tuple[ImagePool, ImagePool]
    autocast: Callable

    @classmethod
    def build(cls, cfg: TrainConfig, device: str | torch.device | None = None) -> Trainer:
        dev = pick_device(device)
        gpu = dev.type == "cuda"
        torch.manual_seed(cfg.seed)
        models = CycleGAN.build(cfg)
        for net in models.named().values():
            net.to(dev)
            if gpu and cfg.fused_norm:
                fuse_instance_norms(net)
                skip_cancelled_biases(net)
            if gpu and cfg.use_channels_last:
                net.to(memory_format=torch.channels_last)
                patch_one_channel_convs(net)
        if gpu and not torch.backends.cudnn.deterministic:
            # Set either way: a process of a search trains one trial after another.
            torch.backends.cudnn.benchmark = cfg.use_cudnn_benchmark
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and gpu)
        autocast = partial(torch.autocast, device_type=dev.type, dtype=torch.bfloat16) if bf16 else nullcontext
        opt_g, opt_d, scheds = make_optimizers(cfg, [models.g_t1_t2, models.g_t2_t1], [models.d_t1, models.d_t2], dev)
        pools = (ImagePool(cfg.pool_size), ImagePool(cfg.pool_size))
        return cls(cfg, dev, models, opt_g, opt_d, scheds, pools, autocast)

    @property
    def graphs(self) -> bool:
        return self.device.type == "cuda" and self.cfg.cuda_graphs

    def compile(self) -> None:
        """Wraps the networks in torch.compile (`compile`, GPU only); after any checkpoint restore."""
        if self.device.type == "cuda" and self.cfg.compile:
            for name, net in self.models.named().items():
                setattr(self.models, name, torch.compile(net))

    def step(self, real_t1: torch.Tensor, real_t2: torch.Tensor) -> dict[str, torch.Tensor]:
        return train_step(self.models, self.opt_g, self.opt_d, real_t1, real_t2, self.pools, self.cfg, self.autocast)

    def runner(self, feed: Feed, steps: int) -> StepRunner:
        """Runs epochs of `steps` steps on the batches of `feed`; captured after two eager steps."""
        return StepRunner(self.step, feed, steps, graphs=self.graphs, on_failure=self._undo_half_step)

    def feed(self, t1: torch.Tensor, t2: torch.Tensor, steps: int, *, stream: bool = False,
             bits: int | None = 16) -> Feed:
        """The training slices as the step takes them: compact on the device, or streamed from host memory."""
        kind = Streamed if stream else Resident
        return kind(t1, t2, self.device, self.cfg.batch_size, steps, bits=bits,
                    channels_last=self.device.type == "cuda" and self.cfg.use_channels_last)

    def end_epoch(self) -> None:
        """Steps the LR schedulers, keeping GPU learning rates in the tensors a captured step reads."""
        for opt, sched in zip((self.opt_g, self.opt_d), self.scheds):
            held = [g["lr"] for g in opt.param_groups]
            sched.step()
            for g, lr in zip(opt.param_groups, held):
                if isinstance(lr, torch.Tensor) and g["lr"] is not lr:  # torch versions that assign, not fill
                    lr.fill_(float(g["lr"]))
                    g["lr"] = lr

    def set_learning_rates(self, cfg: TrainConfig) -> None:
        """Moves both optimizers to `cfg`'s rates (lr, lr_d_scale) in place; Adam's moments and steps are kept."""
        set_learning_rates(self.opt_g, self.opt_d, self.scheds, cfg)

    def _undo_half_step(self) -> None:
        set_requires_grad(list(self.models.named().values()), True)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)


@dataclass
class FitResult:
    models: CycleGAN
    history: list[dict[str, Any]] = field(default_factory=list)
    # Seconds per epoch: training steps, validation, TensorBoard logging and the report callable.
    timings: list[dict[str, float]] = field(default_factory=list)
    # Where the data went: "resident" or "streamed", bytes on the device, val slices scored per domain.
    placement: dict[str, Any] = field(default_factory=dict)


def fit(cfg: TrainConfig, data: Dataset, *, device: str | torch.device | None = None, report: Report | None = None,
        resume: dict[str, Any] | None = None, log_dir: Path | None = None, hparams: HParams | None = None,
        derived: Callable[[dict[str, Any]], Mapping[str, float]] | None = None, progress: bool = False,
        stream: bool = False, until: int | None = None) -> FitResult:
    """Trains for `cfg.epochs` (or up to epoch `until`), calling `report(metrics, save)` after every epoch.

    `save(path)` writes the checkpoint of that epoch to `path`, off the training path (`checkpoint_writer`): it
    returns a `PendingCheckpoint` once the state is copied, and `wait()` on it is what says the file is whole
    (`save(path, durable=False)`: not flushed to disk first, for a file that is copied elsewhere and deleted).
    The caller decides when to call it; `fit` returns once the last write is done. Each epoch's metrics carry
    the run's fixed costs too (`fixed_costs`).
    `resume` is a checkpoint dict (from `checkpoint.load`) to continue from. `derived` adds metrics computed
    from each epoch's (the search's objective) before they are logged and reported. With `log_dir`, TensorBoard
    events go there (`cyclegan.tensorboard`): the losses, the metrics, sample translations and the HParams
    session of `hparams` (default: every knob of `cfg`). `until` stops early without changing the run's length,
    which the linear learning-rate decay is timed by: a replayed schedule trains a stretch of epochs at a time.

    On the device go the training slices, compact (`cyclegan.feed`), and the val slices scored every epoch
    (`evaluate.validation_subset`); test stays on the host. With `stream` the training slices stay in pinned host
    memory and each batch is copied over ahead of its step: what `cyclegan.memory.plan_data` says where the
    memory estimate with them resident does not fit the trial's budget.
    """
    started = process_started()
    t = Trainer.build(cfg, device)
    dev, models = t.device, t.models
    start = 0
    if resume is not None:
        start = training_state.restore(resume, t)
    t.compile()

    train = data.train
    steps = max(1, math.ceil(max(len(train.t1), len(train.t2)) / cfg.batch_size))
    feed = t.feed(train.t1, train.t2, steps, stream=stream, bits=data.bits)
    runner = t.runner(feed, steps)
    # val is held at the dataset's eval size; the generators see it at cfg.resize and their outputs come back.
    val = validation_subset(data.val).to(dev)
    shown = replace(data, val=val)  # what TensorBoard's samples are drawn from
    validate = Replay(partial(validation_pass, models.g_t1_t2, models.g_t2_t1, val, t.autocast, cfg.resize),
                      enabled=t.graphs, name="validation", warmup=1)
    tb = None
    if log_dir is not None:
        tb = TensorBoard(log_dir, cfg, hparams if hparams is not None else HParams.of_config(cfg), start)
    result = FitResult(models, placement={
        "train": "streamed" if stream else "resident", "train_dtype": str(feed.t1.dtype).removeprefix("torch."),
        "device_bytes": feed.device_bytes + sum(x.numel() * x.element_size()
                                                for x in (val.t1, val.t2, val.t1_head, val.t2_head)),
        "val_slices": [len(val.t1), len(val.t2)]})
    writer = CheckpointWriter()
    first_step_at: float | None = None
    report_s = 0.0
    epochs = range(start + 1, (cfg.epochs if until is None else min(until, cfg.epochs)) + 1)
    bar = _progress(epochs) if progress else None
    for epoch in bar if bar is not None else epochs:
        clock = [time.perf_counter()]
        first_step_at = first_step_at or time.time()
        order1 = epoch_order(len(train.t1), steps, cfg.batch_size, cfg.seed, epoch)
        order2 = epoch_order(len(train.t2), steps, cfg.batch_size, cfg.seed + 1, epoch)
        means = runner.run_epoch(order1, order2)
        t.end_epoch()
        clock.append(time.perf_counter())
        values, outs = validate()
        train_s = clock[1] - clock[0]
        metrics = {"epoch": epoch, **means, **dict(zip(IMAGE_METRICS, values.tolist())), "paired": val.paired,
                   "train_seconds": train_s, "pairs_per_second": steps * cfg.batch_size / train_s,
                   "val_seconds": time.perf_counter() - clock[1],
                   **fixed_costs(runner, t.graphs, started, first_step_at)}
        if derived is not None:
            metrics.update(derived(metrics))
        result.history.append(metrics)
        clock.append(time.perf_counter())
        if tb is not None:
            tb.epoch(metrics, shown, outs, epoch)
        if bar is not None:
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("loss_G", "loss_D", "loss_cycle", "ssim_t1_t2")})
        clock.append(time.perf_counter())
        # An epoch's report cannot time itself: it carries the previous one's.
        metrics.update(log_seconds=clock[3] - clock[2], report_seconds=report_s)
        if report is not None:
            state = partial(training_state.capture, cfg, epoch, t, data, metrics)
            report(metrics, partial(_save, state=state, writer=writer))
        clock.append(time.perf_counter())
        report_s = clock[4] - clock[3]
        result.timings.append(dict(zip(("train", "val", "log", "report"), (b - a for a, b in zip(clock, clock[1:])))))
    if tb is not None:
        tb.close()
    # After an error the thread still ends its write before the process exits; a caller that reports the
    # checkpoint waits for it itself (search/trainable.py).
    writer.close()
    return result


def _save(path: Path, state: Callable[[], dict[str, Any]], writer: CheckpointWriter, durable: bool = True
          ) -> PendingCheckpoint:
    return writer.save(path, state(), durable=durable)


def fixed_costs(runner: StepRunner, graphs: bool, started: float, first_step_at: float) -> dict[str, Any]:
    """What a run spends before it trains at full speed, for `search.throughput`, read without a host sync.

    `startup_seconds`: from the process start to the first training step (imports, CUDA context, data, networks;
    for a resumed run the checkpoint's load too). `warmup_seconds`: from the first step to the first replay of the
    captured step (cuDNN's benchmark on the first, the eager steps before the capture, the capture), `warmup_steps` of
    them eager; while the step is not yet captured, the time so far; 0 where the step is never captured (the CPU,
    `cuda_graphs` off, a capture that failed). Of it, the host's seconds in the first step
    (`warmup_first_step_seconds`: cuDNN's benchmark of each new convolution and CUDA's loading of each kernel on
    first use block the host there) and in the capture (`warmup_capture_seconds`); the CPU seconds of that first step,
    of the training thread (`warmup_first_step_cpu_seconds`) and of the whole process
    (`warmup_first_step_process_cpu_seconds`), which say whether the host computed or waited there, and whether other
    threads were busy. `graphed`: the step is a replayed graph from now on.
    """
    replay = runner.replay
    costs = {"process_started": started, "first_step_at": first_step_at, "startup_seconds": first_step_at - started,
             "warmup_seconds": 0.0, "warmup_steps": 0, "warmup_first_step_seconds": 0.0,
             "warmup_first_step_cpu_seconds": 0.0, "warmup_first_step_process_cpu_seconds": 0.0,
             "warmup_capture_seconds": 0.0, "graphed": replay.captured}
    if replay.captured or (graphs and replay.enabled):
        end = replay.captured_at if replay.captured_at is not None else time.time()
        costs.update(warmup_seconds=end - first_step_at, warmup_steps=replay.eager_calls,
                     warmup_first_step_seconds=replay.first_call_seconds or 0.0,
                     warmup_first_step_cpu_seconds=replay.first_call_cpu_seconds or 0.0,
                     warmup_first_step_process_cpu_seconds=replay.first_call_process_cpu_seconds or 0.0,
                     warmup_capture_seconds=replay.capture_seconds or 0.0)
    return costs




def _progress(epochs: range):
    from tqdm import tqdm

    return tqdm(epochs, desc="epochs", unit="epoch", file=sys.stderr)


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """One epoch in one line, for output that is not a terminal (a log, a pipe), where a progress bar says nothing
    until the end."""
    shown = ", ".join(f"{k} {metrics[k]:.3g}" for k in ("loss_G", "loss_D", "loss_cycle", "ssim_t1_t2") if k in metrics)
    seconds = metrics.get("train_seconds", 0.0) + metrics.get("val_seconds", 0.0)
    return f"epoch {metrics['epoch']}/{epochs}: {shown} ({seconds:.1f} s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cyclegan.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic",
                   help="a folder holding T1/ and T2/, an s3://, gs:// or file:// URI of one, or 'synthetic' (default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one config knob, e.g. --set resize=64 (repeatable)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--config", type=Path,
                       help="a config.json to start from (default: with --resume, the run's own)")
    start.add_argument("--schedule", type=Path,
                       help="a schedule.json (a population-based search's export) to replay: its config, with its "
                            "knobs changed at the epochs it names; training stops at its last epoch")
    p.add_argument("--out", type=Path, required=True, help="the run's folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt, with OUT/config.json")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    args = p.parse_args(argv)
    from cyclegan.memory import DataSize, device_budget, plan_data  # it counts memory by running this trainer

    def streamed(cfg: TrainConfig, data: Dataset, device: torch.device) -> bool:
        return device.type == "cuda" and plan_data(cfg, DataSize.of(data), device_budget(device)) == "streamed"

    try:
        with _StopAfterEpoch() as stop:
            return _run(args, streamed, stop)
    except KeyboardInterrupt:
        done = _epochs_done(args.out / "metrics.jsonl")
        print(f"\ninterrupted{f' after epoch {done}' if done else ''}; continue with: python -m cyclegan.train "
              f"--out {args.out} --resume" + ("" if args.data == "synthetic" else f" --data {args.data}")
              + ("" if args.schedule is None else f" --schedule {args.schedule}"),
              file=sys.stderr)
        return 130


class _StopAfterEpoch:
    """The first Ctrl-C asks the run to stop once the epoch under way is written; the second stops it at once.

    A KeyboardInterrupt raised wherever the main thread happens to be can land inside a lock that the checkpoint
    writer's thread also takes, and the process then hangs at exit; raised after an epoch's report, it cannot.
    """

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _StopAfterEpoch:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this epoch (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def _run(args: argparse.Namespace, streamed: Callable[[TrainConfig, Dataset, torch.device], bool],
         stop: _StopAfterEpoch | None = None) -> int:
    try:
        state = checkpoint.load(args.out / checkpoint.CHECKPOINT) if args.resume else None
        if state is None and (args.out / checkpoint.CHECKPOINT).exists():
            raise checkpoint.CheckpointError(f"{args.out} already holds a run; pass --resume to continue it "
                                              "or choose another --out")
        schedule = Schedule.load(args.schedule) if args.schedule is not None else None
        cfg = _config(args, state, schedule)
        if state is not None:
            try:
                training_state.check_resumable(state, cfg, networks=lambda c: CycleGAN.build(c).named())
            except checkpoint.CheckpointError as e:
                raise checkpoint.CheckpointError(f"{args.out / checkpoint.CHECKPOINT}: {e}") from None
        data = load_data(args.data, cfg.resize, cfg.seed)
        if state is not None and _slices(state.get("split", {})) != _slices(data.split()):
            raise DataError(f"--data {args.data}: not the slices {args.out} was trained on "
                            f"({state.get('split', {}).get('source', 'unknown')}); pass the --data it was trained on")
        args.out.mkdir(parents=True, exist_ok=True)
    except (ConfigError, DataError, checkpoint.CheckpointError, ScheduleError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg.save(args.out / "config.json")
    data.save_split(args.out / "split.json")
    metrics_file = args.out / "metrics.jsonl"
    # A progress bar on a terminal; piped (a log file, a job), one line an epoch instead of nothing for minutes.
    bar = sys.stderr.isatty()

    # A replay trains each stretch of epochs with one set of knobs as a run of its own that continues the last
    # stretch's checkpoint, as a population-based search's exploit continues a checkpoint with new knobs.
    start = int(state["epoch"]) if state is not None else 0
    stretches = schedule.stretches(start, cfg.epochs) if schedule is not None else [(cfg.epochs, cfg)]

    def report(metrics: dict[str, Any], save: Callable[[Path], None]) -> None:
        if schedule is not None:
            metrics[KNOBS] = knobs_of(stretch, schedule.knobs)
        with metrics_file.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        save(args.out / checkpoint.CHECKPOINT)
        if not bar:
            print(epoch_line(metrics, cfg.epochs), file=sys.stderr, flush=True)
        if stop is not None:
            stop.check()

    try:
        stream = streamed(cfg, data, pick_device(args.device))
        for i, (last, stretch) in enumerate(stretches):
            if i:
                state = checkpoint.load(args.out / checkpoint.CHECKPOINT)  # the report saved it at the last epoch
            fit(stretch, data, device=args.device, report=report, resume=state, log_dir=args.out / "tb",
                progress=bar, until=last, stream=stream)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not metrics_file.is_file():
        print(f"error: {metrics_file}: no epoch was trained, and none is recorded", file=sys.stderr)
        return 2
    last = json.loads(metrics_file.read_text().splitlines()[-1])
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()}))
    return 0


def _config(args: argparse.Namespace, state: dict[str, Any] | None, schedule: Schedule | None = None) -> TrainConfig:
    """The run's config: --config, or a schedule's config at its first epoch to train, else on --resume the run's
    own config.json (or its checkpoint's), else the defaults; then the --set overrides, which may not name a knob
    that the schedule sets. Resuming with other fixed settings than the checkpoint's is refused later."""
    overrides = parse_overrides(args.overrides)
    if schedule is not None:
        scheduled = [k for k in overrides if k in schedule.knobs]
        if scheduled:
            raise ConfigError(f"--set {scheduled[0]}: the schedule {args.schedule} sets {scheduled[0]} epoch by epoch; "
                              "--set may change only the knobs it does not schedule")
        start = int(state["epoch"]) if state is not None else 0
        return schedule.config_at(min(start + 1, schedule.last_epoch)).replace(**overrides)
    if args.config is not None:
        base = TrainConfig.load(args.config)
    elif state is not None:
        own = args.out / "config.json"
        try:
            base = TrainConfig.load(own) if own.is_file() else training_state.saved_config(state)
        except ConfigError as e:
            raise ConfigError(f"{own}: {e}") from None
    else:
        base = TrainConfig()
    return base.replace(**overrides)


def _slices(split: dict[str, Any]) -> dict[str, Any]:
    return {k: split.get(k) for k in ("train", "val", "test")}


def _epochs_done(metrics_file: Path) -> int:
    try:
        return int(json.loads(metrics_file.read_text().splitlines()[-1])["epoch"])
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
