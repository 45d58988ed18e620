"""How the training slices reach the train step: resident on its device in a compact dtype, or streamed.

    feed = Resident(t1, t2, device, bits=8)        # the whole training split on the device, 1 byte a pixel
    feed = Streamed(t1, t2, device, batch=2)        # pinned host memory, one batch copied ahead on a side stream

Slices are [-1, 1] floats when read; held as fp32 a 75,000-slice set at 256x256 is 20 GB, so they are kept
compact (`compact`): uint8 where the source is 8-bit (its own resolution: a step of 2/255, and interpolation adds
no information), int16 otherwise (a step of 1/32767, far below any scanner's noise; int16, not uint16 or bf16:
torch's uint16 lacks CUDA gather kernels, and bf16 keeps 8 bits of mantissa, coarser than uint8 near 1). Both
feeds turn a batch into the compute dtype with elementwise kernels inside the step (`batch`), so the gather and
the conversion are part of the captured CUDA graph and never wait for the host.

`Resident` gathers each batch from the whole split on the device at a step counter the graph advances, from an
epoch order copied to the device once an epoch. `Streamed` keeps the split in pinned host memory: before step k
the host gathers batch k + SLOTS - 1 into a pinned slot and a side stream copies it to the matching device slot,
so the copies overlap the steps; the step reads slot k % SLOTS. Events order it: a slot is refilled only after
the step that read it ran, and a step runs only after its copy landed. On the CPU the same slots are filled in
place, so both feeds give the same batches on any device (tests/cyclegan/test_feed.py).
"""

from __future__ import annotations

import torch

# Device slots a streamed feed cycles through: the host may run this many steps ahead of the GPU's copies.
SLOTS = 4
COMPACT = {8: torch.uint8, 16: torch.int16}
_SCALE = {torch.uint8: 127.5, torch.int16: 32767.0}  # codes per unit of [-1, 1] ...
_OFFSET = {torch.uint8: 1.0, torch.int16: 0.0}  # ... after this shift: uint8 holds (x + 1) * 127.5


def compact_dtype(bits: int) -> torch.dtype:
    """uint8 for 8-bit sources, int16 for anything finer (16-bit PNGs, NIfTI volumes, the phantom)."""
    return COMPACT[8] if bits <= 8 else COMPACT[16]


def compact(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[-1, 1] floats as `dtype` codes (rounded to the nearest; half a step of error at most). Codes of `dtype`
    pass through as they are, so a data set handed over compact is not copied again."""
    if x.dtype == dtype:
        return x
    if not x.dtype.is_floating_point:
        x = expand(x)
    if dtype.is_floating_point:
        return x.to(dtype)
    # In place on clamp's new tensor: at real size each pass over the floats is gigabytes.
    codes = x.float().clamp(-1, 1).add_(_OFFSET[dtype]).mul_(_SCALE[dtype]).round_()
    return codes.to(dtype)


def expand(q: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes back to [-1, 1] in `dtype`: elementwise only, so it can sit inside a captured CUDA graph."""
    if q.dtype.is_floating_point:
        return q.to(dtype)
    return q.to(dtype).div_(_SCALE[q.dtype]).sub_(_OFFSET[q.dtype])


def bytes_per_pixel(bits: int) -> int:
    return torch.empty((), dtype=compact_dtype(bits)).element_size()


class Feed:
    """What `graphed.StepRunner` asks of a feed. `batch(counter)` runs inside the (captured) step."""

    t1: torch.Tensor
    t2: torch.Tensor
    device: torch.device  # the training device
    device_bytes: int  # what the feed holds on the training device

    def start_epoch(self, order1: torch.Tensor, order2: torch.Tensor) -> None:
        raise NotImplementedError

    def before_step(self, k: int) -> None:
        """Host side, before the k-th step of the epoch is launched."""

    def after_step(self, k: int) -> None:
        """Host side, after the k-th step of the epoch is launched."""

    def batch(self, counter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class Resident(Feed):
    """The whole training split on the device, compact; the batch is gathered at the device step counter.

    `bits` None keeps the slices as given (the benchmarks' random slices, fp32)."""

    def __init__(self, t1: torch.Tensor, t2: torch.Tensor, device: torch.device, batch: int, steps: int,
                 bits: int | None = 16, channels_last: bool = False) -> None:
        self.device, self.channels_last = device, channels_last
        store = (lambda x: x.to(device)) if bits is None else (lambda x: compact(x, compact_dtype(bits)).to(device))
        self.t1, self.t2 = store(t1), store(t2)
        self.batch_size, self.steps = batch, steps
        self.order1 = torch.zeros(steps * batch, dtype=torch.long, device=device)
        self.order2 = torch.zeros(steps * batch, dtype=torch.long, device=device)
        self.device_bytes = sum(x.numel() * x.element_size() for x in (self.t1, self.t2, self.order1, self.order2))

    def start_epoch(self, order1: torch.Tensor, order2: torch.Tensor) -> None:
        self.order1.copy_(order1)
        self.order2.copy_(order2)

    def batch(self, counter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        at = counter.view(1)  # a device index, so no host sync and the same kernels every step
        out = []
        for store, order in ((self.t1, self.order1), (self.t2, self.order2)):
            idx = order.view(self.steps, self.batch_size).index_select(0, at).view(-1)
            out.append(_layout(expand(store.index_select(0, idx)), self.channels_last))
        return out[0], out[1]


class Streamed(Feed):
    """The training split in (pinned) host memory; each batch copied to a device slot ahead of its step."""

    def __init__(self, t1: torch.Tensor, t2: torch.Tensor, device: torch.device, batch: int, steps: int,
                 bits: int | None = 16, channels_last: bool = False) -> None:
        self.device, self.batch_size, self.steps, self.channels_last = device, batch, steps, channels_last
        cuda = device.type == "cuda"
        dtype = t1.dtype if bits is None else compact_dtype(bits)
        # Compacted on the host, then pinned: pinned memory is what an asynchronous copy can read from.
        self.t1, self.t2 = (_host(x if bits is None else compact(x, dtype), pin=cuda) for x in (t1, t2))
        shape = (SLOTS, batch, *self.t1.shape[1:])
        self.slots = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2)]
        self.staging = [torch.zeros(shape, dtype=dtype, pin_memory=True) for _ in range(2)] if cuda else self.slots
        self.device_bytes = sum(s.numel() * s.element_size() for s in self.slots)
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        self.copied = [torch.cuda.Event() for _ in range(SLOTS)] if cuda else []
        self.stepped = [torch.cuda.Event() for _ in range(SLOTS)] if cuda else []
        self.used = [False] * SLOTS  # a slot a step has read since it was last filled (its `stepped` is recorded)
        self.filled = [False] * SLOTS  # a slot with a copy in flight or done (its `copied` is recorded)
        self.orders: tuple[torch.Tensor, torch.Tensor] | None = None
        self.issued = 0

    def start_epoch(self, order1: torch.Tensor, order2: torch.Tensor) -> None:
        self.orders = (order1.cpu().view(self.steps, self.batch_size), order2.cpu().view(self.steps, self.batch_size))
        self.issued = 0

    def before_step(self, k: int) -> None:
        while self.issued < min(k + SLOTS, self.steps):
            self._issue(self.issued)
            self.issued += 1
        if self.copy_stream is not None:
            torch.cuda.current_stream(self.device).wait_event(self.copied[k % SLOTS])

    def after_step(self, k: int) -> None:
        if self.copy_stream is not None:
            self.stepped[k % SLOTS].record(torch.cuda.current_stream(self.device))
            self.used[k % SLOTS] = True

    def _issue(self, j: int) -> None:
        """Gathers batch j on the host and starts its copy into slot j % SLOTS."""
        s = j % SLOTS
        if self.copy_stream is not None and self.filled[s]:
            self.copied[s].synchronize()  # the host slot's last copy (SLOTS batches ago) has left it
        for store, order, host in zip((self.t1, self.t2), self.orders, self.staging):
            torch.index_select(store, 0, order[j], out=host[s])
        if self.copy_stream is None:
            return
        with torch.cuda.stream(self.copy_stream):
            if self.used[s]:
                self.copy_stream.wait_event(self.stepped[s])  # the step that read this device slot has run
            for host, slot in zip(self.staging, self.slots):
                slot[s].copy_(host[s], non_blocking=True)
            self.copied[s].record(self.copy_stream)
        self.filled[s] = True

    def batch(self, counter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        at = counter.remainder(SLOTS).view(1)
        return tuple(_layout(expand(slot.index_select(0, at)[0]), self.channels_last) for slot in self.slots)


def _host(x: torch.Tensor, pin: bool) -> torch.Tensor:
    x = x.detach().cpu().contiguous()
    return x.pin_memory() if pin else x


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
