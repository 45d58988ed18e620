"""CUDA graphs for the trainer: the whole train step, and the validation pass, each replayed as one graph.

At the study's batch of 2 a CycleGAN step is a couple of thousand small kernels, and launching them one
by one from Python takes longer than running them (docs/benchmarks.md). Capturing the step once and
replaying it removes the launches. This follows the whole-network recipe of PyTorch's CUDA notes
(https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture): warm up eagerly on a side stream,
capture one call under `torch.cuda.graph`, then replay. For the replays to train the same networks as
the eager loop:

- inputs come from static buffers (`cyclegan.feed`): each replay gathers its batch, at a step counter the
  graph advances, from the compact slices resident on the GPU or from the slot a side stream copied it to,
  and converts it to fp32 inside the graph;
- the optimizers are capturable (their step counts live on the GPU) and read the learning rate from a
  GPU tensor, which the LR scheduler updates in place (`optim.make_adam`);
- the image pools keep their count on the GPU and run the same kernels whether they fill or swap
  (`train.ImagePool`), so the step is captured after two eager steps, however large the pool; their random
  draws, like dropout's, come from the graph-safe philox generator;
- the losses are summed into a static accumulator inside the graph and read once an epoch.

On the CPU, or with `cuda_graphs` off, the same code runs eagerly, call by call.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from cyclegan.feed import Feed


class Replay:
    """Calls `fn()` eagerly until it may be captured, then captures it once and replays the graph.

    `fn` takes no arguments: it reads and writes tensors that stay in place (static buffers). What the
    captured call returned is handed back by every replay, overwritten in place, so use it before the
    next call. Capture happens after `warmup` eager calls, which run on a side stream, as the recipe asks.
    If the capture fails, a one-line warning says why, `on_failure()` undoes what the half-recorded call
    changed on the host, and `fn` keeps running eagerly.
    """

    def __init__(self, fn: Callable[[], Any], *, enabled: bool, name: str, warmup: int = 2,
                 on_failure: Callable[[], None] | None = None) -> None:
        self.fn = fn
        self.enabled = enabled
        self.name = name
        self.warmup = warmup
        self.on_failure = on_failure
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        # When the capture ended (wall clock): `torch.cuda.graph` synchronizes before it records, and recording runs
        # nothing, so the GPU is idle then and this is when the first replay starts, known without a sync of its own.
        self.captured_at: float | None = None
        # Host seconds of the first eager call (cuDNN's benchmark and CUDA's lazy loading block the host there) and
        # of the capture call: where a warm-up goes, without a sync of their own.
        self.first_call_seconds: float | None = None
        self.capture_seconds: float | None = None
        # CPU seconds of the first eager call, of this thread and of the whole process: against its wall seconds they
        # say whether the host computed (dispatch, cuDNN's heuristics, kernel loading) or waited (the GPU, the GIL, a
        # lock), and whether other threads of the process were busy meanwhile.
        self.first_call_cpu_seconds: float | None = None
        self.first_call_process_cpu_seconds: float | None = None
        self._out: Any = None
        self._side: torch.cuda.Stream | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> Any:
        if self.graph is not None:
            self.graph.replay()
            return self._out
        start, cpu, process_cpu = time.perf_counter(), time.thread_time(), time.process_time()
        if self.enabled and self.eager_calls >= self.warmup and self._capture():
            self.graph.replay()
            self.capture_seconds = time.perf_counter() - start
            return self._out
        out = self._eager()
        if self.first_call_seconds is None:
            self.first_call_seconds = time.perf_counter() - start
            self.first_call_cpu_seconds = time.thread_time() - cpu
            self.first_call_process_cpu_seconds = time.process_time() - process_cpu
        return out

    def _eager(self) -> Any:
        self.eager_calls += 1
        if not self.enabled:
            return self.fn()
        main = torch.cuda.current_stream()
        if self._side is None:
            self._side = torch.cuda.Stream()
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            out = self.fn()
        main.wait_stream(self._side)
        for t in _tensors(out):  # used on the main stream, so not to be recycled by the side stream's next call
            t.record_stream(main)
        return out

    def _capture(self) -> bool:
        stream = torch.cuda.current_stream()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.fn()
        except Exception as e:  # noqa: BLE001 - any failure means: run eagerly
            torch.cuda.set_stream(stream)
            self.enabled = False
            if self.on_failure is not None:
                self.on_failure()
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"{self.name}: CUDA graph capture failed, running eagerly ({reason})", stacklevel=3)
            return False
        self.graph, self._out = graph, out
        self.captured_at = time.time()
        return True


# Set by a process that is about to exit (search.trainable, at exit): an epoch then stops launching steps, so that the
# process can let the GPU finish its queued work before it ends.
STOP_LAUNCHING = threading.Event()


class EpochHalted(RuntimeError):
    """The process is exiting (`STOP_LAUNCHING`): the epoch stopped before its end."""


class StepRunner:
    """Runs an epoch of train steps fed from static buffers: eagerly, or as replays of one captured step.

    `step(real_t1, real_t2)` is one train step that returns its losses as 0-d tensors (`train.train_step`
    with everything else bound). `feed` (`cyclegan.feed`) holds the training slices, resident on the device
    or streamed to it; each epoch's order (`steps * batch` indices into each domain) goes to the feed, and the
    k-th step takes the k-th batch of it, exactly the batches of the plain loop
    `step(t1[order1[k*batch:(k+1)*batch]], t2[order2[...]])`.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]], feed: Feed,
                 steps: int, *, graphs: bool, on_failure: Callable[[], None] | None = None, warmup: int = 2) -> None:
        self.step, self.feed, self.steps = step, feed, steps
        self.counter = torch.zeros((), dtype=torch.long, device=feed.device)
        self.names: tuple[str, ...] = ()
        self.sums: torch.Tensor | None = None  # one slot per loss, sized by the first step
        self.replay = Replay(self._one, enabled=graphs, name="train step", warmup=warmup,
                             on_failure=on_failure)

    def _one(self) -> None:
        losses = self.step(*self.feed.batch(self.counter))
        if self.sums is None:
            self.names = tuple(losses)
            self.sums = torch.zeros(len(self.names), device=self.counter.device)
        self.sums.add_(torch.stack([losses[k].float() for k in self.names]))
        self.counter.add_(1)

    def run_epoch(self, order1: torch.Tensor, order2: torch.Tensor) -> dict[str, float]:
        """Runs `steps` train steps in these orders; returns each loss's mean over them (one host sync)."""
        self.feed.start_epoch(order1, order2)
        self.counter.zero_()
        if self.sums is not None:
            self.sums.zero_()
        for k in range(self.steps):
            if STOP_LAUNCHING.is_set():
                raise EpochHalted(f"the process is exiting: the epoch stopped after {k} of {self.steps} steps")
            self.feed.before_step(k)
            self.replay()
            self.feed.after_step(k)
        return dict(zip(self.names, (self.sums / self.steps).tolist()))


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []
