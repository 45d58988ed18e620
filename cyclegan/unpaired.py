"""Metrics of a translation that need no paired truth: realism, anatomy kept, and information hidden in the cycle.

- `swd`: realism at several scales. The sliced Wasserstein distance between 7x7 patch descriptors of the
  Laplacian pyramids of the translations and of real slices of the target contrast (Karras et al. 2018,
  "Progressive Growing of GANs", `sliced_wasserstein.py`), pooled over a split. Lower is better.
- `anatomy`: the structure of the input kept in its translation, compared contrast-invariantly through MIND
  descriptors (Heinrich et al. 2012, "MIND: Modality independent neighbourhood descriptor"). Higher is better.
- `cycle_noise`: the fixed perturbation under which the noisy cycle SSIM is scored (`evaluate.translations`):
  a generator pair that hides its input in low-amplitude patterns of the translation (Chu et al. 2017,
  "CycleGAN, a master of steganography") loses its cycle under it, an honest pair barely does.

All of it runs on the images' device without a host sync, so the validation pass can be captured as a CUDA
graph. The random tensors it needs (projection directions, noise) come from a CPU generator with a fixed seed,
and the tensors that depend only on shapes are made once and cached: the first, eager, call makes them, the
captured call finds them. Run the checks with `python -m pytest tests/cyclegan/test_unpaired.py`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

SEED = 20180226  # the fixed seed of every random tensor here: the same directions and noise in every trial
PATCH = 7  # Karras et al.'s neighbourhood size
SWD_DIRECTIONS = 256  # random unit directions; Karras et al. use 4 x 128
SWD_MIN_SIZE = 16  # the coarsest pyramid level, as in Karras et al.
SWD_GRID = 16  # patch positions per axis and level at most (a fixed grid, so no random picks)
SWD_BUDGET = 2**16  # patches per image set and level at most, so large validation splits keep a modest footprint
# Karras et al.'s 5x5 binomial filter (cv2.pyrDown's), applied separably with mirrored borders.
_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)

# MIND in 2D: the four-neighbourhood (the 2D counterpart of the paper's 3D six-neighbourhood), patch distances
# weighted by a Gaussian of sigma 1 truncated at 2 pixels (a 5x5 patch).
MIND_OFFSETS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx)
MIND_SIGMA = 1.0
MIND_RADIUS = 2
# The variance estimate is kept within [1e-3, 1e3] x its mean over the image, as in Heinrich's code, so flat
# regions (the background) neither divide by zero nor turn noise into structure.
MIND_VARIANCE_RANGE = (1e-3, 1e3)
_EPS = 1e-12
CPU = torch.device("cpu")

# The noisy cycle's perturbation, on the [-1, 1] scale: 0.05 is 2.5% of the intensity range (about 6 grey levels
# of 255), near the noise of a clinical MR slice, so an honest F has seen its like in real slices and maps it to
# about the same output; the hidden signal Chu et al. found sits a few grey levels below the visible image, so
# this noise buries it. Much larger and an honest generator's cycle would drop too, blurring the distinction.
CYCLE_NOISE_SIGMA = 0.05


def _to_device(a: torch.Tensor, device: torch.device) -> torch.Tensor:
    # A non-blocking copy: a blocking one waits for the stream, which the sync-free validation pass must not do.
    return a.to(device, non_blocking=True)


# --- realism: sliced Wasserstein distance of Laplacian patch descriptors ------------------------------------------

@lru_cache(maxsize=8)
def _kernel(kernel: tuple[float, ...], device: torch.device) -> torch.Tensor:
    k = torch.tensor(kernel, dtype=torch.float32)
    return _to_device(k / k.sum(), device)


def _blur(x: torch.Tensor, kernel: tuple[float, ...]) -> torch.Tensor:
    """A separable, normalised filter over [N, C, H, W] float32 with mirrored borders (scipy's mode='mirror')."""
    k = _kernel(kernel, x.device)
    r, c = len(kernel) // 2, x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x, _BINOMIAL)[..., ::2, ::2]


def pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zeros inserted between pixels, then the binomial filter times 4 (cv2.pyrUp), cropped to `size`."""
    n, c, h, w = x.shape
    up = torch.zeros((n, c, 2 * h, 2 * w), dtype=x.dtype, device=x.device)
    up[..., ::2, ::2] = x
    return 4 * _blur(up, _BINOMIAL)[..., :size[0], :size[1]]


def swd_levels(size: int) -> int:
    """Pyramid levels from `size` down to the coarsest one of at least SWD_MIN_SIZE pixels (at least one)."""
    levels = 1
    while (size + 1) // 2 >= SWD_MIN_SIZE:
        size = (size + 1) // 2
        levels += 1
    return levels


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first, and the low-pass residual last (Karras et al.'s generator)."""
    pyramid = [x.float()]
    for _ in range(1, levels):
        down = pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - pyr_up(down, pyramid[-1].shape[-2:])
        pyramid.append(down)
    return pyramid


def patch_stride(size: int, images: int) -> int:
    """The grid's stride on a level of `size` pixels: at most SWD_GRID positions per axis and SWD_BUDGET patches."""
    per_axis = max(1, min(SWD_GRID, math.isqrt(SWD_BUDGET // max(1, images))))
    return max(1, math.ceil((size - PATCH + 1) / per_axis))


def patches(level: torch.Tensor, stride: int) -> torch.Tensor:
    """The 7x7 patches of a [N, 1, H, W] level on a grid of `stride`, one row each: [N * P, 49]."""
    p = F.unfold(level, PATCH, stride=stride)  # [N, 49, P]
    return p.transpose(1, 2).reshape(-1, p.shape[1])


@lru_cache(maxsize=8)
def swd_directions(dim: int = PATCH * PATCH, count: int = SWD_DIRECTIONS,
                   device: torch.device = CPU) -> torch.Tensor:
    """`count` random unit vectors of `dim` components, as columns [dim, count], the same in every process."""
    d = torch.randn(dim, count, generator=torch.Generator().manual_seed(SEED), dtype=torch.float32)
    return _to_device(d / d.norm(dim=0, keepdim=True), device)


@lru_cache(maxsize=32)
def quantile_pairs(na: int, nb: int, device: torch.device = CPU
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which sorted values of two samples of sizes na and nb meet at common quantiles, and each pair's weight.

    The quantile functions of both samples are steps, at multiples of 1/na and 1/nb; between two neighbouring
    steps of either, both are constant. Pairing the values on each such interval, weighted by its length, gives
    the exact Wasserstein-1 distance (scipy's `wasserstein_distance`); for na == nb it is the mean |difference|
    of the sorted values. Exact integers in units of 1 / lcm(na, nb) keep coinciding steps together.
    """
    unit = math.lcm(na, nb)
    q = np.union1d(np.arange(na + 1, dtype=np.int64) * (unit // na), np.arange(nb + 1, dtype=np.int64) * (unit // nb))
    mid2 = q[:-1] + q[1:]  # twice each interval's midpoint
    ia, ib = mid2 * na // (2 * unit), mid2 * nb // (2 * unit)
    w = np.diff(q) / unit
    return tuple(_to_device(torch.from_numpy(a), device) for a in (ia, ib, w.astype(np.float32)))


def _sorted_projections(x: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The projections of the rows of x [n, d] on each direction [d, D], sorted: [D, n]."""
    p = directions.T @ x.T
    if p.device.type == "cpu":
        # Same values as torch.sort, ten times faster: torch's CPU sort also works out the indices.
        return torch.from_numpy(np.sort(p.numpy(), axis=-1))
    return torch.sort(p, dim=-1).values


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """The mean over `directions` [d, D] of the Wasserstein-1 distance between the projections of a and b [n, d]."""
    pa, pb = _sorted_projections(a, directions), _sorted_projections(b, directions)
    if len(a) == len(b):  # the common quantiles are the sorted values themselves
        return (pa - pb).abs().mean()
    ia, ib, w = quantile_pairs(len(a), len(b), a.device)
    return ((pa.index_select(1, ia) - pb.index_select(1, ib)).abs() @ w).mean()


def swd_per_level(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """SWD at each level of the Laplacian pyramid, finest first: [levels], for two batches [N, 1, S, S].

    On each level, both sets' patches are normalised by the mean and standard deviation of all their pixels
    together, which keeps a difference in brightness or contrast between the sets (Karras et al. normalise each
    set on its own, which would hide it).
    """
    levels = swd_levels(min(fake.shape[-1], fake.shape[-2]))
    dirs = swd_directions(PATCH * PATCH, SWD_DIRECTIONS, fake.device)
    images = max(len(fake), len(real))
    out = []
    for lf, lr in zip(laplacian_pyramid(fake, levels), laplacian_pyramid(real, levels)):
        stride = patch_stride(min(lf.shape[-2:]), images)
        a, b = patches(lf, stride), patches(lr, stride)
        both = torch.cat([a, b])
        mean, std = both.mean(), both.std(correction=0).clamp_min(_EPS)
        out.append(sliced_wasserstein((a - mean) / std, (b - mean) / std, dirs))
    return torch.stack(out)


def swd(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Realism of `fake` against `real` ([N, 1, S, S] each): the mean SWD over pyramid levels, 0-d; 0 is best."""
    return swd_per_level(fake, real).mean()


# --- anatomy kept: MIND descriptors ------------------------------------------------------------------------------

def _gaussian(sigma: float, radius: int) -> tuple[float, ...]:
    return tuple(math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1))


def mind(x: torch.Tensor) -> torch.Tensor:
    """MIND descriptors of [N, 1, H, W] images: [N, 4, H, W], one channel per neighbour, in (0, 1], max 1.

    D_r = the Gaussian-weighted patch distance between each pixel and its neighbour at r (borders replicated),
    V = the mean of D_r over the neighbours (kept within MIND_VARIANCE_RANGE of its image mean), and
    MIND_r = exp(-D_r / V) divided by its maximum over r. Invariant to any affine remapping of the intensities,
    inversion included, and nearly so to a monotone one.
    """
    x = x.float()
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    shifted = torch.cat([p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in MIND_OFFSETS], dim=1)
    d = _blur((x - shifted) ** 2, _gaussian(MIND_SIGMA, MIND_RADIUS))
    v = d.mean(dim=1, keepdim=True)
    v_mean = v.mean(dim=(1, 2, 3), keepdim=True)
    low, high = MIND_VARIANCE_RANGE
    v = torch.minimum(torch.maximum(v, v_mean * low), v_mean * high).clamp_min(_EPS)
    m = torch.exp(-d / v)
    return m / m.amax(dim=1, keepdim=True)


def anatomy(x: torch.Tensor, gx: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """1 - the mean over the input's head pixels of the mean |MIND(x) - MIND(G(x))| over neighbours: [N]; 1 is best."""
    diff = (mind(x) - mind(gx)).abs().mean(dim=1, keepdim=True)
    m = head.float()
    return 1 - (diff * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1)


def anatomy_coarse(x: torch.Tensor, gx: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """`anatomy` one pyramid level down (binomial blur, half the size): [N]; 1 is best.

    At full size MIND also compares the pixel noise: a generator that smooths its output (as a good translation
    of a noisy slice does) loses to one that copies its input's noise. Half the size keeps the anatomy's edges
    and averages most of the noise away.
    """
    return anatomy(pyr_down(x), pyr_down(gx), head[..., ::2, ::2])


# --- hidden information: the noisy cycle's perturbation ----------------------------------------------------------

@lru_cache(maxsize=8)
def cycle_noise(shape: tuple[int, ...], device: torch.device = CPU,
                sigma: float = CYCLE_NOISE_SIGMA) -> torch.Tensor:
    """A fixed Gaussian noise tensor of `shape` and standard deviation `sigma`, the same in every process."""
    n = torch.randn(shape, generator=torch.Generator().manual_seed(SEED + 1), dtype=torch.float32) * sigma
    return _to_device(n, device)
