"""Checkpoints written off the training path: copied to host memory, then written by a background thread.

One checkpoint of a 256x256, depth-8 run is 1.39 GB (weights, Adam moments, image pools); written in the loop it
took about 1.4 s on an H100, six epochs of training at batch 2 (docs/benchmarks.md). Here the loop only waits for
a copy: on a GPU, non-blocking copies on a side stream into pinned buffers kept from one checkpoint to the next
(the training stream waits for them on the GPU, so the next step cannot change a tensor mid-copy, and the host
never waits); on the CPU, clones. A thread then writes the file (`checkpoint.save`: a temporary name, fsync,
rename), while training goes on.

    writer = CheckpointWriter()
    pending = writer.save(path, state)   # returns once the copy is queued (GPU) or made (CPU)
    pending.wait()                       # the file is whole on disk; raises the write's error if it failed
    writer.close()                       # waits for the last write

One write at a time: a save waits for the previous write first (which also frees the pinned buffers to reuse).
Anything that hands the file on (Ray Tune's checkpoint report) must `wait()` first.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from cyclegan import checkpoint


class PendingCheckpoint:
    """A checkpoint being written. `copy_seconds`: what the loop spent to hand it over (the copy to host memory,
    and waiting for the write before it); `waited_seconds`: what callers of `wait()` spent blocked on it."""

    def __init__(self, path: Path, future: Future[float], copy_seconds: float) -> None:
        self.path = path
        self.copy_seconds = copy_seconds
        self.waited_seconds = 0.0
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def wait(self) -> float:
        """Blocks until the file is whole; returns the write's own duration (the thread's, not the loop's)."""
        start = time.perf_counter()
        try:
            return self._future.result()
        finally:
            self.waited_seconds += time.perf_counter() - start

    def written(self) -> float:
        """`wait` for a thread other than the training loop's: its wait is not counted in `waited_seconds`."""
        return self._future.result()


class CheckpointWriter:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._last: PendingCheckpoint | None = None
        self._pinned: dict[str, torch.Tensor] = {}
        self._stream: torch.cuda.Stream | None = None

    def save(self, path: Path, state: dict[str, Any], *, durable: bool = True) -> PendingCheckpoint:
        """Copies `state` (nested dicts and lists of tensors and plain values) off the device and queues its write
        (`checkpoint.save`'s `durable`: flushed to disk before the file gets its name)."""
        start = time.perf_counter()
        if self._last is not None:
            self._last.wait()  # its error, if any, surfaces here rather than being lost
        event = None
        if any(t.is_cuda for t in _tensors(state)):
            main = torch.cuda.current_stream()
            if self._stream is None:
                self._stream = torch.cuda.Stream()
            self._stream.wait_stream(main)  # the copies see the state as the loop left it
            with torch.cuda.stream(self._stream):
                host = self._copy(state, "")
                event = self._stream.record_event()
            main.wait_stream(self._stream)  # and the loop's next kernels may not change a tensor before it is copied
        else:
            host = self._copy(state, "")
        future = self._thread.submit(_write, Path(path), host, event, durable)
        self._last = PendingCheckpoint(Path(path), future, time.perf_counter() - start)
        return self._last

    def close(self) -> None:
        """Waits for the last write (raising its error) and stops the thread."""
        try:
            if self._last is not None:
                self._last.wait()
        finally:
            self._thread.shutdown(wait=True)

    def _copy(self, value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if not value.is_cuda:
                return value.clone()  # the loop changes its tensors in place while the thread writes
            buf = self._pinned.get(key)
            if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
                buf = self._pinned[key] = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            return buf.copy_(value, non_blocking=True)
        if isinstance(value, dict):
            return {k: self._copy(v, f"{key}/{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._copy(v, f"{key}/{i}") for i, v in enumerate(value))
        return value  # numbers, strings, None: nothing the loop changes in place


def _write(path: Path, host: dict[str, Any], event: torch.cuda.Event | None, durable: bool) -> float:
    start = time.perf_counter()
    if event is not None:
        event.synchronize()  # the copies into the pinned buffers have landed
    checkpoint.save(path, host, durable=durable)
    return time.perf_counter() - start


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []
