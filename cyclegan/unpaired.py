"""Metrics of a translation that need no paired truth: realism, anatomy kept, and information hidden in the cycle.

- `swd`: realism at several scales. The sliced Wasserstein distance between 7x7 patch descriptors of the
  Laplacian pyramids of the translations and of real slices of the target contrast (Karras et al. 2018,
  "Progressive Growing of GANs", `sliced_wasserstein.py`), pooled over a split. Lower is better.
- `anatomy`: the structure of the input kept in its translation, compared contrast-invariantly through MIND
  descriptors (Heinrich et al. 2012, "MIND: Modality independent neighbourhood descriptor"). Higher is better.
- `tissue`: the tissue mapping, where the intensities are. The input's brain is cut into three intensity classes
  (multi-Otsu), and the translation's intensities on each class are compared (Wasserstein-1) with real slices of
  the target contrast on the class in the reversed order: brain tissue runs CSF < GM < WM in T1w and WM < GM < CSF
  in T2w. A histogram of the whole head (`metrics.contrast`) cannot tell a translation from the input remapped to
  the target's histogram; this can. Higher is better.
- `texture`: fine structure per tissue, what speckle and blur change. On each of the input's tissue classes the
  translation's finest Laplacian band (its pixel-scale detail) is compared (Wasserstein-1 of its magnitude) with
  that of real slices of the target contrast on the class in the reversed order. A speckled translation has too
  much detail inside a tissue, a blurred one too little at its edges; neither moves a histogram of intensities.
  Higher is better.
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
from collections.abc import Iterator
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

# Per-tissue contrast. Brain tissue falls in three intensity classes (CSF, grey and white matter).
TISSUE_CLASSES = 3
TISSUE_BINS = 128  # over [0, 1], for the multi-Otsu thresholds and the W1 histograms, as metrics.contrast's
# The scalp-and-skull band left out of the head, as a share of sqrt(head area) (~0.9 x the head's width). On the
# real-anatomy benchmark 0.09 leaves ~3% scalp and skull in the brain mask and keeps ~96% of the brain.
BRAIN_DEPTH = 0.09
MIN_BRAIN_SHARE = 0.02  # of the image's pixels: a slice with less brain than this is left out
# The finest Laplacian band's magnitude is binned over [0, TEXTURE_RANGE] on the [0, 1] scale (larger values, the
# sharpest edges, pool in the last bin): on the study's slices and both paired benchmarks 98-100% of the brain's
# pixels fall below it (T2's bright CSF edges make the rest), and the median lies near 0.01-0.02.
TEXTURE_RANGE = 0.25

# The noisy cycle's perturbation, on the [-1, 1] scale: 0.05 is 2.5% of the intensity range (about 6 grey levels
# of 255), near the noise of a clinical MR slice, so an honest F has seen its like in real slices and maps it to
# about the same output; the hidden signal Chu et al. found sits a few grey levels below the visible image, so
# this noise buries it. Much larger and an honest generator's cycle would drop too, blurring the distinction.
CYCLE_NOISE_SIGMA = 0.05
NOISE_BLOCK = 16  # values torch's CPU normal sampler makes at a time (`cycle_noise_chunks`)


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


def swd_patches(x: torch.Tensor, images: int) -> list[torch.Tensor]:
    """The patches SWD compares, of each level of the Laplacian pyramid of [N, 1, S, S] images, finest first:
    [[N * P, 49], ...], on the grid a split of `images` slices a set takes (`patch_stride`).

    Each image's patches are its own, so a split's are those of its chunks, gathered: a split too large for the
    device at once is scored chunk by chunk (`cyclegan.evaluate`) to the same distance.
    """
    levels = swd_levels(min(x.shape[-1], x.shape[-2]))
    return [patches(level, patch_stride(min(level.shape[-2:]), images)) for level in laplacian_pyramid(x, levels)]


def swd_from_patches(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """SWD at each level from the two sets' `swd_patches`: [levels].

    On each level, both sets' patches are normalised by the mean and standard deviation of all their pixels
    together, which keeps a difference in brightness or contrast between the sets (Karras et al. normalise each
    set on its own, which would hide it).
    """
    dirs = swd_directions(PATCH * PATCH, SWD_DIRECTIONS, fake[0].device)
    out = []
    for a, b in zip(fake, real):
        both = torch.cat([a, b])
        mean, std = both.mean(), both.std(correction=0).clamp_min(_EPS)
        out.append(sliced_wasserstein((a - mean) / std, (b - mean) / std, dirs))
    return torch.stack(out)


def swd_per_level(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """SWD at each level of the Laplacian pyramid, finest first: [levels], for two batches [N, 1, S, S]."""
    images = max(len(fake), len(real))
    return swd_from_patches(swd_patches(fake, images), swd_patches(real, images))


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


# --- tissue mapping: per-tissue contrast ---------------------------------------------------------------------------

def _erode(mask: torch.Tensor, cross: bool) -> torch.Tensor:
    """One binary erosion of a float {0, 1} [N, C, H, W] mask, outside the image counting as outside the mask."""
    out = F.pad(1 - mask, (1, 1, 1, 1), value=1.0)
    if cross:  # the 4-neighbourhood
        out = torch.maximum(F.max_pool2d(out[..., 1:-1, :], (1, 3), 1), F.max_pool2d(out[..., 1:-1], (3, 1), 1))
    else:
        out = F.max_pool2d(out, 3, 1)
    return 1 - out


def brain_mask(head: torch.Tensor) -> torch.Tensor:
    """The brain of [N, 1, H, W] head masks: the head less an outer band of scalp and skull, as float {0, 1}.

    The band's depth is BRAIN_DEPTH x sqrt(head area) for each slice (scalp and skull scale with the head): each
    pixel's depth is the number of erosions it survives, alternately by a 3x3 square and a cross (an octagonal
    distance, within 8% of the Euclidean one). A fixed number of erosions, for the largest head the image holds,
    keeps the shapes fixed and the pass free of host syncs. Scalp fat is bright in both contrasts and the skull
    dark in both: left in, they would be taken for tissue in the wrong order.
    """
    m = head.float()
    radius = BRAIN_DEPTH * m.sum(dim=(1, 2, 3), keepdim=True).sqrt()
    depth = torch.zeros_like(m)
    for k in range(math.ceil(BRAIN_DEPTH * math.sqrt(m.shape[-1] * m.shape[-2]))):
        m = _erode(m, cross=k % 2 == 1)
        depth = depth + m
    return (depth >= radius.clamp_min(1)).float()  # at least 1: a slice without a head has no brain


def _bins(x: torch.Tensor, top: float = 1.0) -> torch.Tensor:
    """Each pixel's bin of TISSUE_BINS over [0, top] (values outside clamped), as flat int64 indices."""
    return (x.float().clamp(0, top) * (TISSUE_BINS / top)).long().clamp_max(TISSUE_BINS - 1).flatten()


def multi_otsu(hist: torch.Tensor) -> torch.Tensor:
    """Two multi-Otsu thresholds of each row of `hist` [N, TISSUE_BINS] (counts over [0, 1]): [N, 2].

    skimage's `threshold_multiotsu(classes=3)` on the same histogram: every pair of cuts a < b (classes
    [0, a], [a + 1, b], [b + 1, end]) is scored at once by the between-class variance, the sum over classes
    of (first moment)^2 / weight, and the first best pair's bin centres are returned. Empty classes score 0.
    (skimage counts the first bin's first moment as if it were bin 1, which moves a cut by a bin at times.)
    """
    bins = hist.shape[-1]
    p = hist.float() / hist.float().sum(-1, keepdim=True).clamp_min(_EPS)
    i = torch.arange(bins, device=p.device, dtype=torch.float32)
    # Moments about the mean: the same maximiser, with fp32 digits spent on the differences between candidates.
    w, s = p.cumsum(-1), (p * (i - (p * i).sum(-1, keepdim=True))).cumsum(-1)

    def var(s_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return torch.where(w_ > 0, s_ * s_ / w_.clamp_min(_EPS), torch.zeros_like(w_))

    a, b = (slice(None), slice(None), None), (slice(None), None, slice(None))  # cut a along dim 1, b along dim 2
    sigma = (var(s, w)[a] + var(s[b] - s[a], w[b] - w[a])
             + var(s[:, -1:] - s, w[:, -1:] - w)[b])
    valid = torch.ones(bins, bins, dtype=torch.bool, device=p.device).triu(1)
    valid[:, -1] = False  # the brightest class holds at least the last bin
    best = sigma.masked_fill(~valid, -1.0).flatten(1).argmax(-1)
    centres = (torch.stack([best // bins, best % bins], dim=-1).float() + 0.5) / bins
    return centres


def tissue_masks(x01: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """The brain of [N, 1, H, W] slices in [0, 1] in three intensity classes, darkest first: float [N, 3, H, W].

    Each slice's brain (`brain_mask`) is cut by its own multi-Otsu thresholds (a bias field or another scaling
    moves them), pixels at a threshold going up, as np.digitize puts them. Each class is then eroded by one
    pixel (4-neighbourhood): a pixel on a tissue boundary mixes two tissues (partial volume) and would blur both
    classes. A slice with under MIN_BRAIN_SHARE of its image in the brain (near the crown or the base) counts for
    nothing: its thresholds would cut whatever few tissues it shows into three.
    """
    brain = brain_mask(head)
    n, _, h, w = x01.shape
    idx = _bins(x01) + torch.arange(n, device=x01.device).repeat_interleave(h * w) * TISSUE_BINS
    hist = torch.zeros(n * TISSUE_BINS, device=x01.device).scatter_add_(0, idx, brain.flatten())
    cuts = multi_otsu(hist.view(n, TISSUE_BINS)).view(n, 2, 1, 1)
    x = x01.float()
    level = (x >= cuts[:, :1]).float() + (x >= cuts[:, 1:]).float()  # [N, 1, H, W] in {0, 1, 2}
    enough = (brain.sum(dim=(1, 2, 3), keepdim=True) >= MIN_BRAIN_SHARE * h * w).float()
    classes = torch.cat([(level == k).float() for k in range(TISSUE_CLASSES)], dim=1) * brain * enough
    return _erode(classes, cross=True)


def class_histograms(x: torch.Tensor, masks: torch.Tensor, top: float = 1.0) -> torch.Tensor:
    """Histograms of `x`'s values over [0, top] on each class of `masks` [N, K, H, W], summed over slices:
    [K, TISSUE_BINS]. A split's are the sums of its chunks'."""
    idx = _bins(x, top)
    return torch.stack([torch.zeros(TISSUE_BINS, device=x.device).scatter_add_(0, idx, masks[:, k].flatten())
                        for k in range(masks.shape[1])])


def reversed_w1(fake_hist: torch.Tensor, real_hist: torch.Tensor) -> torch.Tensor:
    """1 - the mean over classes of W1 (in units of the histograms' range) between the translations' class
    histograms (on the input's classes) and real slices' in the reversed order: 0-d."""
    cdf = lambda h: torch.cumsum(h / h.sum(-1, keepdim=True).clamp_min(1), -1)  # noqa: E731
    w1 = (cdf(fake_hist) - cdf(real_hist.flip(0))).abs().sum(-1)
    return 1 - w1.mean() / TISSUE_BINS


def tissue(fake: torch.Tensor, fake_masks: torch.Tensor, real: torch.Tensor, real_masks: torch.Tensor
           ) -> torch.Tensor:
    """1 - the mean over tissue classes of W1 between translations and real slices of the target contrast: 0-d.

    `fake` [N, 1, H, W] in [0, 1] is scored on its input's classes (`tissue_masks` of the input), `real`
    [M, 1, H, W] on its own, in the reversed order: the input's darkest class against the target's brightest,
    and so on (CSF is darkest in T1w and brightest in T2w, white matter the other way round). Each class's
    intensities are pooled over the slices, as fixed-bin histograms (no host sync); 1 is best.
    """
    return reversed_w1(class_histograms(fake, fake_masks), class_histograms(real, real_masks))


def fine_band(x: torch.Tensor) -> torch.Tensor:
    """|the finest Laplacian band| of [N, 1, H, W] images: each pixel less its binomial blur's, as the
    pyramid of `swd` takes it (`laplacian_pyramid(x, 2)[0]`)."""
    x = x.float()
    return (x - pyr_up(pyr_down(x), x.shape[-2:])).abs()


def texture(fake: torch.Tensor, fake_masks: torch.Tensor, real: torch.Tensor, real_masks: torch.Tensor
            ) -> torch.Tensor:
    """1 - the mean over tissue classes of W1 between the `fine_band` of translations and of real slices: 0-d.

    The classes are paired as in `tissue`, and W1 is in units of TEXTURE_RANGE. Speckle inside a tissue puts
    mass where the real slices' band is near zero; blur takes it from the tail that their sharp edges make.
    """
    return reversed_w1(class_histograms(fine_band(fake), fake_masks, TEXTURE_RANGE),
                       class_histograms(fine_band(real), real_masks, TEXTURE_RANGE))


# --- hidden information: the noisy cycle's perturbation ----------------------------------------------------------

@lru_cache(maxsize=8)
def cycle_noise(shape: tuple[int, ...], device: torch.device = CPU,
                sigma: float = CYCLE_NOISE_SIGMA) -> torch.Tensor:
    """A fixed Gaussian noise tensor of `shape` and standard deviation `sigma`, the same in every process."""
    n = torch.randn(shape, generator=torch.Generator().manual_seed(SEED + 1), dtype=torch.float32) * sigma
    return _to_device(n, device)


def cycle_noise_chunks(shape: tuple[int, ...], rows: int, device: torch.device = CPU,
                       sigma: float = CYCLE_NOISE_SIGMA) -> Iterator[torch.Tensor]:
    """`cycle_noise(shape)`, `rows` rows at a time, without making all of it: the noise of a split scored chunk by
    chunk (`cyclegan.evaluate`), which at thousands of slices would not fit the device, nor need to.

    Torch's CPU normal sampler turns its uniform draws into normal values 16 at a time, so draws of a multiple of
    16 values from one generator continue one another exactly (tests check it): `rows` rows must hold such a
    multiple (`noise_rows` rounds a chunk up to one).
    """
    if rows < 1 or rows * math.prod(shape[1:]) % NOISE_BLOCK:
        raise ValueError(f"{rows} rows of {shape[1:]} are not a multiple of {NOISE_BLOCK} values")
    generator = torch.Generator().manual_seed(SEED + 1)
    for start in range(0, shape[0], rows):
        n = torch.randn((min(rows, shape[0] - start), *shape[1:]), generator=generator, dtype=torch.float32) * sigma
        yield _to_device(n, device)


def noise_rows(rows: int, shape: tuple[int, ...]) -> int:
    """The fewest rows, at least `rows`, of `shape[1:]` each that `cycle_noise_chunks` can draw at a time."""
    step = NOISE_BLOCK // math.gcd(NOISE_BLOCK, math.prod(shape[1:]))
    return -(-max(rows, 1) // step) * step
