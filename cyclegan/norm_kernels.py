"""InstanceNorm's forward and backward as Triton kernels that read and write a tensor in its own layout.

Imported only where the fused norm runs (a GPU with Triton); `cyclegan.fused_norm` holds the dispatch and the
fallback. Each pass is two kernels over a grid of (sample, block of channels, stretch of the H*W plane):
the first reduces its stretch to per-channel partials, the second combines a channel's partials and applies
the result to its stretch. Splitting the plane keeps the GPU's SMs busy at a batch of 2, where one program per
(sample, channels) would leave most of them idle on the large maps.

Statistics are fp32 from mean and M2 merged tile by tile and stretch by stretch (Chan et al.), of the values less a
pivot, not from sums of squares, which lose the variance where the mean is large against it. The output is in the
input's dtype, as `F.instance_norm`'s. Shapes are runtime arguments and the block sizes fixed per layout, so one
compile of each kernel per dtype, layout and block of channels serves every layer and every trial (Triton's on-disk
cache then serves every later process on the machine). `compile_for` puts them there ahead of any launch, without a
GPU (cyclegan/compile_ahead.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

# Partials per (sample, channel): the grid's stretches of the plane. A power of two (the combining kernels load
# all of them as one block); 64 stretches of 64 pixels already cover a 64x64 map with one tile each.
MAX_STRETCHES = 64
# Programs the grid aims at: a few per SM of an H200 (132), so that the last wave of programs is short.
TARGET_PROGRAMS = 512


def _blocks(channels_last: bool, channels: int) -> tuple[int, int]:
    """(pixels, channels) per tile: the contiguous axis long, about 4,096 elements a tile."""
    if channels_last:
        bc = 32 if channels <= 32 else 64
        return 4096 // bc, bc
    return 256, 16


@triton.jit
def _program(C, BC: tl.constexpr):
    """The program's sample, its block of channels (and which of them exist) and its stretch of the plane."""
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    return tl.program_id(0), c, c < C, tl.program_id(2)


@triton.jit
def _stretch(s, L, chunk):
    start = s * chunk
    return start, tl.minimum(start + chunk, L)


@triton.jit
def _tile(n, c, cmask, t, start, end, C, L, CHANNELS_LAST: tl.constexpr, BL: tl.constexpr):
    """The offsets of the stretch's t-th tile of (pixels, channels), and which of them are in the plane."""
    hw = start + t * BL + tl.arange(0, BL)
    base = n.to(tl.int64) * L * C
    if CHANNELS_LAST:
        offsets = base + hw[:, None] * C + c[None, :]
    else:
        offsets = base + c[None, :] * L + hw[:, None]
    return offsets, (hw < end)[:, None] & cmask[None, :]


@triton.jit
def _store_partials(a_ptr, b_ptr, a, b, n, c, cmask, C, S, s):
    """Stores the stretch's two per-channel partials, laid out as (sample, channel, stretch)."""
    part = (n * C + c) * S + s
    tl.store(a_ptr + part, a, mask=cmask)
    tl.store(b_ptr + part, b, mask=cmask)


@triton.jit
def _partials(n, c, cmask, C, S, BS: tl.constexpr):
    """The offsets of the channels' partials, every stretch's, as (stretch, channel), and which of them exist."""
    si = tl.arange(0, BS)
    return (n * C + c)[None, :] * S + si[:, None], (si < S)[:, None] & cmask[None, :]


# Shapes are not specialised on (only the channels, whose divisibility by 16 lets NHWC tiles load as vectors, and
# which are multiples of 16 in every network here): Triton would compile each kernel again for every new
# combination of "is 1" and "divides by 16" among the plane's size, the stretch and their count.
_SHAPE_ARGS = ("L", "chunk", "S", "tiles")


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _partial_moments(x_ptr, mean_part_ptr, m2_part_ptr, C, L, chunk, S, tiles,
                     CHANNELS_LAST: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr):
    n, c, cmask, s = _program(C, BC)
    start, end = _stretch(s, L, chunk)
    # Sums of the values less the stretch's first pixel: fp32 sums of the values themselves lose the mean's low
    # digits where it is large against the spread (an error of 7x the native kernel's at a mean of 100, std 3).
    first, _ = _tile(n, c, cmask, 0, start, end, C, L, CHANNELS_LAST, 1)
    pivot = tl.load(x_ptr + first, mask=cmask[None, :], other=0.0).to(tl.float32)
    count = tl.zeros([BC], tl.float32)
    mean = tl.zeros([BC], tl.float32)
    m2 = tl.zeros([BC], tl.float32)
    for t in range(0, tiles):
        offsets, mask = _tile(n, c, cmask, t, start, end, C, L, CHANNELS_LAST, BL)
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        # Pixels of this tile: none past the plane's end in the last stretch's spare tiles (they add nothing).
        k = tl.maximum(tl.minimum(end - start - t * BL, BL), 0).to(tl.float32)
        tile_mean = tl.sum(tl.where(mask, v - pivot, 0.0), 0) / tl.maximum(k, 1.0) + tl.sum(pivot, 0)
        d = tl.where(mask, v - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(d * d, 0)
        total = count + k
        delta = tile_mean - mean
        mean += delta * (k / total)
        m2 += tile_m2 + delta * delta * (count * k / total)
        count = total
    _store_partials(mean_part_ptr, m2_part_ptr, mean, m2, n, c, cmask, C, S, s)


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _normalize(x_ptr, y_ptr, mean_part_ptr, m2_part_ptr, mean_ptr, rstd_ptr, C, L, chunk, S, tiles, eps,
               CHANNELS_LAST: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr):
    n, c, cmask, s = _program(C, BC)
    # The channel's statistics from all its stretches' partials, merged as one.
    part, pmask = _partials(n, c, cmask, C, S, BS)
    pmean = tl.load(mean_part_ptr + part, mask=pmask, other=0.0)
    pm2 = tl.load(m2_part_ptr + part, mask=pmask, other=0.0)
    si = tl.arange(0, BS)
    pcount = tl.where(pmask, tl.minimum(L - si * chunk, chunk).to(tl.float32)[:, None], 0.0)
    mean = tl.sum(pcount * pmean, 0) / L
    d = tl.where(pmask, pmean - mean[None, :], 0.0)
    var = tl.sum(pm2 + pcount * d * d, 0) / L
    rstd = tl.rsqrt(var + eps)
    if s == 0:
        tl.store(mean_ptr + n * C + c, mean, mask=cmask)
        tl.store(rstd_ptr + n * C + c, rstd, mask=cmask)
    start, end = _stretch(s, L, chunk)
    for t in range(0, tiles):
        offsets, mask = _tile(n, c, cmask, t, start, end, C, L, CHANNELS_LAST, BL)
        v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        y = (v - mean[None, :]) * rstd[None, :]
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _x_hat_and_grad(x_ptr, dy_ptr, offsets, mask, mean, rstd):
    v = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return (v - mean[None, :]) * rstd[None, :], g


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _partial_grad_sums(x_ptr, dy_ptr, mean_ptr, rstd_ptr, dy_part_ptr, dyx_part_ptr, C, L, chunk, S, tiles,
                       CHANNELS_LAST: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr):
    n, c, cmask, s = _program(C, BC)
    mean = tl.load(mean_ptr + n * C + c, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + n * C + c, mask=cmask, other=0.0)
    sum_dy = tl.zeros([BC], tl.float32)
    sum_dyx = tl.zeros([BC], tl.float32)
    start, end = _stretch(s, L, chunk)
    for t in range(0, tiles):
        offsets, mask = _tile(n, c, cmask, t, start, end, C, L, CHANNELS_LAST, BL)
        xhat, g = _x_hat_and_grad(x_ptr, dy_ptr, offsets, mask, mean, rstd)
        sum_dy += tl.sum(g, 0)
        sum_dyx += tl.sum(tl.where(mask, g * xhat, 0.0), 0)
    _store_partials(dy_part_ptr, dyx_part_ptr, sum_dy, sum_dyx, n, c, cmask, C, S, s)


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _input_grad(x_ptr, dy_ptr, dx_ptr, mean_ptr, rstd_ptr, dy_part_ptr, dyx_part_ptr, C, L, chunk, S, tiles,
                CHANNELS_LAST: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr):
    n, c, cmask, s = _program(C, BC)
    mean = tl.load(mean_ptr + n * C + c, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + n * C + c, mask=cmask, other=0.0)
    part, pmask = _partials(n, c, cmask, C, S, BS)
    mean_dy = tl.sum(tl.load(dy_part_ptr + part, mask=pmask, other=0.0), 0) / L
    mean_dyx = tl.sum(tl.load(dyx_part_ptr + part, mask=pmask, other=0.0), 0) / L
    start, end = _stretch(s, L, chunk)
    for t in range(0, tiles):
        offsets, mask = _tile(n, c, cmask, t, start, end, C, L, CHANNELS_LAST, BL)
        xhat, g = _x_hat_and_grad(x_ptr, dy_ptr, offsets, mask, mean, rstd)
        dx = (g - mean_dy[None, :] - xhat * mean_dyx[None, :]) * rstd[None, :]
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """`x` as NCHW or NHWC in memory (a copy only if it is neither), and whether it is NHWC."""
    if x.is_contiguous():
        return x, False
    if x.is_contiguous(memory_format=torch.channels_last):
        return x, True
    return x.contiguous(), False


def _grid(shape: torch.Size | tuple[int, ...], channels_last: bool
          ) -> tuple[tuple[int, int, int], int, int, int, int, int]:
    """The grid, the stretch of the plane a program covers, the stretches, its tiles, and a tile's (pixels,
    channels)."""
    n, c, h, w = shape
    plane = h * w
    bl, bc = _blocks(channels_last, c)
    blocks = n * triton.cdiv(c, bc)
    stretches = max(1, min(triton.cdiv(TARGET_PROGRAMS, blocks), triton.cdiv(plane, bl), MAX_STRETCHES))
    chunk = triton.cdiv(triton.cdiv(plane, stretches), bl) * bl
    stretches = triton.cdiv(plane, chunk)
    return (n, triton.cdiv(c, bc), stretches), chunk, stretches, chunk // bl, bl, bc


def forward(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(output, the input as the kernels read it, mean, 1/std, NHWC?) for a [N, C, H, W] CUDA tensor."""
    x, channels_last = _layout(x)
    n, c, h, w = x.shape
    grid, chunk, stretches, tiles, bl, bc = _grid(x.shape, channels_last)
    y = torch.empty_like(x)
    mean = torch.empty(n * c, device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    mean_part = torch.empty(n * c * stretches, device=x.device, dtype=torch.float32)
    m2_part = torch.empty_like(mean_part)
    _partial_moments[grid](x, mean_part, m2_part, c, h * w, chunk, stretches, tiles,
                           CHANNELS_LAST=channels_last, BL=bl, BC=bc)
    _normalize[grid](x, y, mean_part, m2_part, mean, rstd, c, h * w, chunk, stretches, tiles, eps,
                     CHANNELS_LAST=channels_last, BL=bl, BC=bc, BS=MAX_STRETCHES)
    return y, x, mean, rstd, channels_last


def backward(x: torch.Tensor, dy: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
             channels_last: bool) -> torch.Tensor:
    """The input's gradient, in `x`'s layout, from the output's `dy` and the forward's saved values."""
    dy = dy.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    n, c, h, w = x.shape
    grid, chunk, stretches, tiles, bl, bc = _grid(x.shape, channels_last)
    dy_part = torch.empty(n * c * stretches, device=x.device, dtype=torch.float32)
    dyx_part = torch.empty_like(dy_part)
    dx = torch.empty_like(x)
    _partial_grad_sums[grid](x, dy, mean, rstd, dy_part, dyx_part, c, h * w, chunk, stretches, tiles,
                             CHANNELS_LAST=channels_last, BL=bl, BC=bc)
    _input_grad[grid](x, dy, dx, mean, rstd, dy_part, dyx_part, c, h * w, chunk, stretches, tiles,
                      CHANNELS_LAST=channels_last, BL=bl, BC=bc, BS=MAX_STRETCHES)
    return dx


class _CompileOnly:
    """What Triton's JIT asks its active driver when it compiles a kernel and launches nothing (`warmup`), answered
    for a GPU of one compute capability without a call to CUDA: no GPU, no CUDA context, no MPS client."""

    def __init__(self, capability: int) -> None:
        self.target = GPUTarget("cuda", capability, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


@contextlib.contextmanager
def compiling_for(capability: int) -> Iterator[None]:
    """Within it, kernels compile for a GPU of compute `capability` (e.g. 90 for an H200), as a launch on one would,
    into the same on-disk cache entries; only `warmup` works, as nothing can launch. The JIT keeps each kernel's
    target per device from its first use: run this in a process that launches nothing afterwards."""
    from triton.runtime import driver

    driver.set_active(_CompileOnly(capability))
    try:
        yield
    finally:
        driver._active = None  # the default driver again, found on its next use (reset_active looks for it now)


def compile_for(dtype: torch.dtype, channels_last: bool, channels: int) -> list:
    """Compiles the four kernels as `forward` and `backward` launch them on a [N, channels, H, W] tensor of `dtype`
    in that layout, for the target `compiling_for` set, launching nothing; returns them (Triton's CompiledKernel).
    Shapes are not specialised on (`_SHAPE_ARGS`), so one shape stands for all; tensors are 16-byte aligned as every
    fresh allocation is."""
    f32 = torch.float32
    shape = (2, channels, 64, 64)
    grid, chunk, stretches, tiles, bl, bc = _grid(shape, channels_last)
    sizes = (channels, shape[2] * shape[3], chunk, stretches, tiles)
    layout = {"CHANNELS_LAST": channels_last, "BL": bl, "BC": bc}
    return [
        _partial_moments.warmup(dtype, f32, f32, *sizes, **layout, grid=grid),
        _normalize.warmup(dtype, dtype, f32, f32, f32, f32, *sizes, 1e-5, **layout, BS=MAX_STRETCHES, grid=grid),
        _partial_grad_sums.warmup(dtype, dtype, f32, f32, f32, f32, *sizes, **layout, grid=grid),
        _input_grad.warmup(dtype, dtype, dtype, f32, f32, f32, f32, *sizes, **layout, BS=MAX_STRETCHES, grid=grid),
    ]


def build_launchers(kernels: list) -> None:
    """Builds the host-side C launcher of each compiled kernel, and Triton's CUDA utilities, into the same cache, as
    a process's first launch of them would (a C compile each, about a second). It links against libcuda, so the
    machine needs the NVIDIA driver's library, but it calls no CUDA."""
    from triton.backends.nvidia.driver import CudaLauncher, CudaUtils

    CudaUtils()
    for kernel in kernels:
        CudaLauncher(kernel.src, kernel.metadata)
