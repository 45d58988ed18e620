"""The unpaired metrics: SWD, MIND anatomy, per-tissue contrast and the noisy cycle against plain
numpy/scipy/scikit-image references, their behaviour on images whose answer is known, and a validation pass that
stays free of host syncs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import wasserstein_distance
from skimage.filters import threshold_multiotsu
from torch import nn

from cyclegan import unpaired as U
from cyclegan.anatomy import write_benchmark
from cyclegan.data import head_mask, load_data, read_image
from cyclegan.evaluate import evaluate, per_slice, resample, scores, translations, validation_pass
from cyclegan.metrics import (
    IMAGE_METRICS,
    LOWER_IS_BETTER,
    POOLED_METRICS,
    SLICE_METRICS,
    SWD_METRICS,
    TEXTURE_METRICS,
    TISSUE_METRICS,
    contrast,
    ssim,
)
from cyclegan.train import Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def phantom():
    return load_data("synthetic", 64)


def _01(x: torch.Tensor) -> torch.Tensor:
    return (x + 1) / 2


# --- SWD -----------------------------------------------------------------------------------------------------------

_BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1])[None, None] / 256.0


def _pyramid_ref(x: np.ndarray, levels: int) -> list[np.ndarray]:
    # Karras et al.'s generate_laplacian_pyramid, with the upsampled level cropped for odd sizes.
    pyr = [x.astype(np.float64)]
    for _ in range(1, levels):
        down = ndimage.convolve(pyr[-1], _BINOMIAL, mode="mirror")[:, :, ::2, ::2]
        up = np.zeros((*down.shape[:2], 2 * down.shape[2], 2 * down.shape[3]))
        up[:, :, ::2, ::2] = down
        up = ndimage.convolve(up, 4 * _BINOMIAL, mode="mirror")[:, :, :pyr[-1].shape[2], :pyr[-1].shape[3]]
        pyr[-1] = pyr[-1] - up
        pyr.append(down)
    return pyr


def _patches_ref(level: np.ndarray, stride: int) -> np.ndarray:
    size = level.shape[-1]
    return np.array([img[0, i:i + 7, j:j + 7].ravel() for img in level
                     for i in range(0, size - 6, stride) for j in range(0, size - 6, stride)])


def _swd_ref(fake: np.ndarray, real: np.ndarray) -> float:
    levels = U.swd_levels(fake.shape[-1])
    dirs = U.swd_directions().numpy().astype(np.float64)
    out = []
    for lf, lr in zip(_pyramid_ref(fake, levels), _pyramid_ref(real, levels)):
        stride = U.patch_stride(lf.shape[-1], max(len(fake), len(real)))
        a, b = _patches_ref(lf, stride), _patches_ref(lr, stride)
        both = np.concatenate([a, b])
        a, b = (a - both.mean()) / both.std(), (b - both.mean()) / both.std()
        pa, pb = a @ dirs, b @ dirs
        out.append(np.mean([wasserstein_distance(pa[:, k], pb[:, k]) for k in range(dirs.shape[1])]))
    return float(np.mean(out))


@pytest.mark.parametrize("size,n_fake,n_real", [(32, 3, 3), (66, 2, 3)])  # 66: odd sizes (33) in the pyramid
def test_swd_equals_a_numpy_reference(size, n_fake, n_real):
    rng = np.random.default_rng(size)
    fake = ndimage.gaussian_filter(rng.random((n_fake, 1, size, size)), (0, 0, 1, 1))
    real = rng.random((n_real, 1, size, size)) ** 2
    got = U.swd(torch.tensor(fake, dtype=torch.float32), torch.tensor(real, dtype=torch.float32)).item()
    assert got == pytest.approx(_swd_ref(fake, real), rel=1e-4)
    assert U.swd_levels(size) == (2 if size == 32 else 3)


def test_one_projection_is_scipys_wasserstein_distance_also_for_unequal_sizes():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, (37, 5)), rng.gamma(2, 1, (53, 5))
    d = rng.normal(size=(5, 1))
    d /= np.linalg.norm(d)
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    got = U.sliced_wasserstein(t(a), t(b), t(d)).item()
    assert got == pytest.approx(wasserstein_distance((a @ d)[:, 0], (b @ d)[:, 0]), rel=1e-5)


def test_swd_is_zero_for_the_same_images_and_grows_with_inversion_and_blur(phantom):
    x, other = _01(phantom.val.t2), _01(phantom.test.t2)
    blurred = torch.tensor(ndimage.gaussian_filter(x.numpy(), (0, 0, 1.5, 1.5)))
    same = U.swd(x, x).item()
    like = U.swd(other, x).item()  # other real slices of the same contrast: the floor a good translation reaches
    inverted, blur = U.swd(1 - x, x).item(), U.swd(blurred, x).item()
    assert same == 0.0
    assert inverted > 3 * like and blur > 3 * like, (like, inverted, blur)


def test_swd_from_the_patches_of_a_splits_chunks_is_the_swd_of_the_whole_split():
    # 300 slices: past SWD_BUDGET / SWD_GRID^2, so the split's count sets a coarser patch grid than a chunk's would.
    gen = torch.Generator().manual_seed(0)
    fake, real = torch.rand((300, 1, 64, 64), generator=gen), torch.rand((280, 1, 64, 64), generator=gen)
    assert U.patch_stride(64, 300) != U.patch_stride(64, 64)
    chunks = [(U.swd_patches(fake[i:i + 64], 300), U.swd_patches(real[i:i + 64], 300)) for i in range(0, 300, 64)]
    gathered = [[torch.cat(level) for level in zip(*side)] for side in zip(*chunks)]
    torch.testing.assert_close(U.swd_from_patches(*gathered), U.swd_per_level(fake, real))


# --- MIND ----------------------------------------------------------------------------------------------------------

def _mind_ref(x: np.ndarray) -> np.ndarray:
    h, w = x.shape
    p = np.pad(x, 1, mode="edge")
    d = np.stack([ndimage.gaussian_filter((x - p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]) ** 2, 1.0, truncate=2.0,
                                          mode="mirror") for dy, dx in U.MIND_OFFSETS])
    v = d.mean(0)
    v = np.maximum(np.clip(v, v.mean() * 1e-3, v.mean() * 1e3), 1e-12)
    m = np.exp(-d / v)
    return m / m.max(0)


def test_mind_and_anatomy_equal_a_numpy_reference():
    rng = np.random.default_rng(9)
    x = ndimage.gaussian_filter(rng.random((2, 1, 24, 29)), (0, 0, 1, 1))
    y = rng.random((2, 1, 24, 29))
    head = rng.random((2, 1, 24, 29)) < 0.6
    got = U.mind(torch.tensor(x)).numpy()
    for i in range(2):
        assert np.allclose(got[i], _mind_ref(x[i, 0]), atol=1e-5)
    ref = [1 - np.abs(_mind_ref(x[i, 0]) - _mind_ref(y[i, 0])).mean(0)[head[i, 0]].mean() for i in range(2)]
    assert np.allclose(U.anatomy(torch.tensor(x), torch.tensor(y), torch.tensor(head)).numpy(), ref, atol=1e-5)


def test_anatomy_ignores_the_contrast_and_sees_a_moved_anatomy(phantom):
    x, t2, head = _01(phantom.val.t1), _01(phantom.val.t2), phantom.val.t1_head
    score = lambda y: U.anatomy(x, y, head).mean().item()  # noqa: E731
    assert score(x) == pytest.approx(1.0)
    assert score(1 - x) == pytest.approx(1.0, abs=1e-5) and score(0.3 + 0.5 * x) == pytest.approx(1.0, abs=1e-5)
    kept = {"squared": score(x**2), "sqrt": score(x.sqrt())}
    moved = {"shifted": score(torch.roll(x, 3, dims=-1)), "flipped": score(x.flip(-2))}
    assert min(kept.values()) > 0.95 and max(moved.values()) < 0.9, (kept, moved)
    # The true T2 of the same slice (other noise, another tissue mapping) against T2s with the anatomy moved:
    # the scale is narrow (pixel noise alone costs ~0.13), but the order is right.
    truth = score(t2)
    wrong = {"shifted": score(torch.roll(t2, 2, dims=-1)), "flipped": score(t2.flip(-2)), "blank": score(t2 * 0 + 0.5)}
    assert truth > max(wrong.values()) + 0.02, (truth, wrong)



def test_coarse_anatomy_is_mind_one_level_down_and_weighs_the_noise_less(phantom):
    x, t2, head = _01(phantom.val.t1), _01(phantom.val.t2), phantom.val.t1_head
    reference = U.anatomy(U.pyr_down(x), U.pyr_down(t2), head[..., ::2, ::2])
    assert torch.equal(U.anatomy_coarse(x, t2, head), reference)
    # The true T2 (other noise) scores nearer to a perfect 1 one level down; a moved anatomy still scores lower.
    fine, coarse = U.anatomy(x, t2, head).mean().item(), U.anatomy_coarse(x, t2, head).mean().item()
    moved = U.anatomy_coarse(x, torch.roll(t2, 4, dims=-1), head).mean().item()
    assert 1 - coarse < 0.9 * (1 - fine) and moved < coarse - 0.02, (fine, coarse, moved)


# --- per-tissue contrast ------------------------------------------------------------------------------------------

_BINS = U.TISSUE_BINS


def _otsu_ref(counts: np.ndarray) -> np.ndarray:
    """skimage's multi-Otsu cuts of a histogram over [0, 1] in _BINS bins.

    skimage trims empty end bins and then counts the first bin's first moment as if it sat at index 1; a
    negligible dummy bin in front keeps both from moving the cuts, so this is the textbook search.
    """
    counts = np.concatenate([[1e-3], counts, [1e-3] if counts[-1] == 0 else []])
    centres = (np.arange(-1, len(counts) - 1) + 0.5) / _BINS
    return threshold_multiotsu(hist=(counts, centres), classes=3)


def _between_class_variance(counts: np.ndarray, cuts: np.ndarray) -> float:
    a, b = np.round(cuts * _BINS - 0.5).astype(int)
    p, i = counts / counts.sum(), np.arange(len(counts))
    classes = [(p[lo:hi + 1], i[lo:hi + 1]) for lo, hi in ((0, a), (a + 1, b), (b + 1, len(p) - 1))]
    return sum((pk * ik).sum() ** 2 / pk.sum() for pk, ik in classes if pk.sum() > 0)


def _histogram(v: np.ndarray) -> np.ndarray:
    return np.bincount(np.minimum((v * _BINS).astype(int), _BINS - 1), minlength=_BINS).astype(np.float64)


def test_multi_otsu_equals_scikit_image():
    rng = np.random.default_rng(3)
    hists = []
    for k in range(120):
        modes = [rng.normal(rng.uniform(0.1, 0.9), rng.uniform(0.01, 0.1), rng.integers(50, 2000))
                 for _ in range(rng.integers(1, 4))]
        v = np.concatenate(modes).clip(0, 1)
        hists.append(_histogram(v**2 if k % 3 == 0 else v))  # every third piles up in the first bins
    got = U.multi_otsu(torch.tensor(np.array(hists), dtype=torch.float32)).numpy()
    same = 0
    for h, cuts in zip(hists, got):
        ref = _otsu_ref(h)
        same += np.array_equal(cuts, ref)
        # Where they differ, it is an fp32 tie: both cuts separate the classes equally well.
        assert _between_class_variance(h, cuts) == pytest.approx(_between_class_variance(h, ref), rel=1e-6)
    assert same >= 0.97 * len(hists)


def _tissue_masks_ref(x: np.ndarray, head: np.ndarray) -> np.ndarray:
    """numpy/scipy/skimage reference of `U.tissue_masks` for [N, H, W] slices: [N, 3, H, W] bool."""
    square, cross = np.ones((3, 3), bool), ndimage.generate_binary_structure(2, 1)
    out = np.zeros((len(x), 3, *x.shape[1:]), bool)
    for n, (img, h) in enumerate(zip(x, head)):
        depth, m = np.zeros(img.shape), h.copy()
        for k in range(int(np.ceil(U.BRAIN_DEPTH * np.sqrt(img.size)))):
            m = ndimage.binary_erosion(m, cross if k % 2 else square, border_value=0)
            depth += m
        brain = depth >= max(1, U.BRAIN_DEPTH * np.sqrt(h.sum()))
        if brain.sum() < U.MIN_BRAIN_SHARE * img.size:
            continue
        level = np.digitize(img, _otsu_ref(_histogram(img[brain])))
        for k in range(3):
            out[n, k] = ndimage.binary_erosion((level == k) & brain, cross, border_value=0)
    return out


def _brain_slices(n: int, seed: int, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """n heads: a bright scalp ring around a brain of three noisy tissues in random blobs, and their head masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    images, heads = [], []
    for _ in range(n):
        blobs = ndimage.gaussian_filter(rng.random((size, size)), 2)
        tissue = np.digitize(blobs, np.quantile(blobs, [0.2, 0.5]))
        img = np.choose(tissue, rng.uniform([0.15, 0.4, 0.65], [0.25, 0.5, 0.75])) + rng.normal(0, 0.03, r.shape)
        img = np.where(r < 15, img, np.where(r < 18, 0.9, 0.0))
        images.append(img.clip(0, 1))
        heads.append(r < 18)
    return np.array(images, np.float32), np.array(heads)


def test_tissue_equals_a_numpy_reference():
    x, xh = _brain_slices(3, 0)
    y, yh = _brain_slices(2, 1)
    fake = (1 - x + np.random.default_rng(2).normal(0, 0.05, x.shape)).clip(0, 1).astype(np.float32)
    t = lambda a: torch.tensor(a)[:, None]  # noqa: E731
    xm, ym = U.tissue_masks(t(x), t(xh)), U.tissue_masks(t(y), t(yh))
    ref_x, ref_y = _tissue_masks_ref(x, xh), _tissue_masks_ref(y, yh)
    assert np.array_equal(xm.numpy() > 0, ref_x) and np.array_equal(ym.numpy() > 0, ref_y)
    assert ref_x.any(axis=(0, 2, 3)).all() and not (ref_x.sum(1) > 1).any()  # every class found, none overlapping
    # The binned W1 is the exact one of the values moved to their bins' lower edges.
    edge = lambda a: np.minimum(np.floor(a * _BINS), _BINS - 1) / _BINS  # noqa: E731
    w1 = [wasserstein_distance(edge(fake[ref_x[:, k]]), edge(y[ref_y[:, 2 - k]])) for k in range(3)]
    got = U.tissue(t(fake), xm, t(y), ym).item()
    assert got == pytest.approx(1 - np.mean(w1), abs=1e-5)
    exact = [wasserstein_distance(fake[ref_x[:, k]], y[ref_y[:, 2 - k]]) for k in range(3)]
    assert got == pytest.approx(1 - np.mean(exact), abs=1 / _BINS)


def test_the_brain_leaves_out_scalp_and_slices_with_little_brain():
    x, head = _brain_slices(2, 4)
    brain = U.brain_mask(torch.tensor(head)[:, None])[:, 0].numpy() > 0
    scalp = head & ~(np.hypot(*(np.mgrid[:40, :40] - 19.5)) < 15)
    assert not (brain & scalp).any() and brain.sum() > 0.6 * (head & ~scalp).sum()
    small = np.zeros_like(head)
    small[0, 18:24, 18:24] = True  # a head of 36 pixels: no brain worth classifying; and a slice without a head
    assert U.tissue_masks(torch.tensor(x)[:, None], torch.tensor(small)[:, None]).sum() == 0
    assert U.brain_mask(torch.tensor(small)[:, None])[1].sum() == 0


@pytest.fixture
def real_anatomy(study_data: Path, tmp_path: Path) -> tuple[torch.Tensor, ...]:
    """A few pairs of the real-anatomy benchmark (`python -m cyclegan.phantom --from`), as T1, T2 in [0, 1] and
    their head masks [N, 1, H, W]."""
    root = tmp_path
    for side, names in {"T1": ("slice_020", "slice_030", "slice_040"), "T2": ("slice_080", "slice_100")}.items():
        (root / "src" / side).mkdir(parents=True)
        for n in names:
            (root / "src" / side / f"{n}.png").symlink_to(study_data / side / f"{n}.png")
    write_benchmark(root / "src", root / "out", seed=0)
    names = sorted(p.name for p in (root / "out" / "T1").iterdir())
    t1, t2 = (np.array([read_image(root / "out" / d / n) for n in names], np.float32) for d in ("T1", "T2"))
    heads = [np.array([head_mask(s) for s in x]) for x in (t1, t2)]
    return tuple(torch.tensor(a)[:, None] for a in (t1, t2, *heads))


def _histogram_matched(x: torch.Tensor, x_head: torch.Tensor, ref: torch.Tensor, ref_head: torch.Tensor
                       ) -> torch.Tensor:
    """x remapped monotonically so that its head's intensities (pooled) take ref's head's distribution."""
    xv, rv = x[x_head].numpy(), np.sort(ref[ref_head].numpy())
    ranks = np.argsort(np.argsort(xv, kind="stable"), kind="stable") / (len(xv) - 1)
    out = x.clone()
    out[x_head] = torch.tensor(np.interp(ranks * (len(rv) - 1), np.arange(len(rv)), rv), dtype=torch.float32)
    return out


def test_tissue_sees_the_tissue_mapping_that_contrast_misses(real_anatomy):
    t1, t2, t1_head, t2_head = real_anatomy
    for x, x_head, y, y_head in ((t1, t1_head, t2, t2_head), (t2, t2_head, t1, t1_head)):
        _check_tissue_against_histogram(x, x_head, y, y_head)


def _check_tissue_against_histogram(x, x_head, y, y_head) -> None:
    x_masks, y_masks = U.tissue_masks(x, x_head), U.tissue_masks(y, y_head)
    candidates = {"truth": y, "copy": x, "inverted": 1 - x,
                  # the target's histogram with the input's tissue order: CSF where the other contrast's WM is
                  "matched": _histogram_matched(x, x_head, y, y_head)}
    by_tissue = {k: U.tissue(v, x_masks, y, y_masks).item() for k, v in candidates.items()}
    by_histogram = {k: contrast(v, x_head, y, y_head).item() for k, v in candidates.items()}
    assert by_tissue["truth"] > 0.9 and by_tissue["copy"] < by_tissue["truth"] - 0.15, by_tissue
    assert by_tissue["inverted"] < by_tissue["truth"] - 0.05, by_tissue
    assert by_tissue["matched"] < by_tissue["truth"] - 0.15, by_tissue
    # The point of the metric: the whole head's histogram scores the wrong mapping as well as the truth.
    assert by_histogram["matched"] > by_histogram["truth"] - 0.01, by_histogram


def test_tissue_ranks_the_truth_first_on_the_phantom(phantom):
    x, y = _01(phantom.val.t1), _01(phantom.val.t2)
    x_masks, y_masks = U.tissue_masks(x, phantom.val.t1_head), U.tissue_masks(y, phantom.val.t2_head)
    score = lambda v: U.tissue(v, x_masks, y, y_masks).item()  # noqa: E731
    matched = _histogram_matched(x, phantom.val.t1_head, y, phantom.val.t2_head)
    assert score(y) > 0.95 and score(y) > max(score(x), score(1 - x), score(matched)) + 0.1


# --- fine structure per tissue ------------------------------------------------------------------------------------

def test_texture_equals_a_numpy_reference():
    x, xh = _brain_slices(3, 5)
    y, yh = _brain_slices(2, 6)
    fake = (1 - x + np.random.default_rng(7).normal(0, 0.08, x.shape)).clip(0, 1).astype(np.float32)
    t = lambda a: torch.tensor(a)[:, None]  # noqa: E731
    xm, ym = U.tissue_masks(t(x), t(xh)), U.tissue_masks(t(y), t(yh))
    ref_x, ref_y = _tissue_masks_ref(x, xh), _tissue_masks_ref(y, yh)
    band = lambda a: np.abs(_pyramid_ref(a[:, None], 2)[0][:, 0])  # noqa: E731 - Karras et al.'s finest level
    bf, by = band(fake), band(y)
    assert np.allclose(U.fine_band(t(fake))[:, 0].numpy(), bf, atol=1e-5)
    top = U.TEXTURE_RANGE
    exact = [wasserstein_distance(np.minimum(bf[ref_x[:, k]], top), np.minimum(by[ref_y[:, 2 - k]], top)) / top
             for k in range(3)]
    got = U.texture(t(fake), xm, t(y), ym).item()
    assert got == pytest.approx(1 - np.mean(exact), abs=1 / _BINS)
    assert got < 0.97  # the noise the fake carries and y lacks is seen


def test_texture_sees_speckle_that_tissue_misses(real_anatomy):
    t1, t2, t1_head, t2_head = real_anatomy
    x, xh, y, yh = t1[:2], t1_head[:2], t2[2:], t2_head[2:]  # unpaired: the truth of x's slices is t2[:2]
    truth = t2[:2]
    rng = np.random.default_rng(0)
    # Blobs of 2 pixels with a standard deviation of 0.05 (13 grey levels): speckle as the study's picks show it.
    speckle = torch.tensor(ndimage.uniform_filter(rng.normal(0, 0.1, truth.shape), (1, 1, 2, 2)), dtype=torch.float32)
    candidates = {"truth": truth, "speckled": (truth + speckle * xh).clamp(0, 1),
                  "blurred": torch.tensor(ndimage.gaussian_filter(truth.numpy(), (0, 0, 1.5, 1.5)))}
    xm, ym = U.tissue_masks(x, xh), U.tissue_masks(y, yh)
    by_texture = {k: U.texture(v, xm, y, ym).item() for k, v in candidates.items()}
    by_tissue = {k: U.tissue(v, xm, y, ym).item() for k, v in candidates.items()}
    drop = lambda by, k: by["truth"] - by[k]  # noqa: E731
    assert drop(by_texture, "speckled") > max(0.03, 3 * drop(by_tissue, "speckled")), (by_texture, by_tissue)
    assert drop(by_texture, "blurred") > 0.02, by_texture  # a strong blur too (tissue sees it about as much)


# --- the noisy cycle -----------------------------------------------------------------------------------------------

class _Affine(nn.Module):
    """A toy generator: a * x + b, kept in [-1, 1] as a tanh output is."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a * x + self.b).clamp(-1, 1)


def test_noisy_cycle_is_the_head_ssim_of_the_perturbed_path(tiny_cfg):
    data = load_data("synthetic", 32)
    t = Trainer.build(tiny_cfg, "cpu")
    g, f = t.models.g_t1_t2.eval(), t.models.g_t2_t1.eval()
    outs = translations(g, f, data.val)
    got = dict(zip(IMAGE_METRICS, scores(outs, data.val).tolist()))
    assert (outs["rec_t1_noisy"] - outs["rec_t1"]).abs().max() > 1e-3  # the noise went in
    with torch.no_grad():
        for x, head, fwd, back, name in ((data.val.t1, data.val.t1_head, g, f, "ssim_t1_t1_noisy"),
                                         (data.val.t2, data.val.t2_head, f, g, "ssim_t2_t2_noisy")):
            # The generators run at the model's size; val is held at the dataset's evaluation size.
            fake = fwd(resample(x, tiny_cfg.resize))
            noise = torch.randn(fake.shape, generator=torch.Generator().manual_seed(U.SEED + 1)) * 0.05
            rec = resample(back((fake + noise).clamp(-1, 1)), data.val.size)
            assert got[name] == pytest.approx(ssim(_01(rec), _01(x), head).mean().item(), abs=1e-6)


@pytest.mark.parametrize("shape, rows", [((7, 1, 32, 32), 3), ((11, 1, 30, 30), 3), ((5, 1, 37, 37), 2)])
def test_cycle_noise_drawn_chunk_by_chunk_is_the_noise_drawn_at_once(shape, rows):
    # 30 x 30 and 37 x 37 slices are no multiple of 16 values: their chunks are rounded up to 4 and 16 rows.
    rows = U.noise_rows(rows, shape)
    assert rows * shape[-1] ** 2 % U.NOISE_BLOCK == 0 and rows < shape[0] + 16
    chunks = list(U.cycle_noise_chunks(shape, rows))
    assert [len(c) for c in chunks] == [min(rows, shape[0] - i) for i in range(0, shape[0], rows)]
    assert torch.equal(torch.cat(chunks), U.cycle_noise(shape))
    with pytest.raises(ValueError, match="multiple of 16"):
        next(U.cycle_noise_chunks((5, 1, 37, 37), 3))


def test_noisy_cycle_exposes_a_generator_pair_that_hides_its_input(phantom):
    # Scored at the split's own size, so no resampling blurs the exact copies. Identity: noise alone lowers the score.
    honest = evaluate(_Affine(1, 0), _Affine(1, 0), phantom.val, resize=phantom.val.size)
    # G writes T1 as a faint copy onto a constant grey image; F amplifies it back, exactly. (Only the T1 cycle
    # hides anything: F saturates on real T2 slices.)
    hiding = evaluate(_Affine(0.02, -0.5), _Affine(50, 25), phantom.val, resize=phantom.val.size)
    assert honest["ssim_t1_t1_head"] == pytest.approx(1.0) and hiding["ssim_t1_t1_head"] > 0.999
    assert honest["ssim_t1_t1_noisy"] > 0.8 and hiding["ssim_t1_t1_noisy"] < 0.1, (honest, hiding)
    # MIND is blind to the copy's faintness (anatomy kept); the grey image is far from real T2 slices, further
    # than the T1 slice a copying generator passes off as T2.
    assert hiding["anatomy_t1_t2"] > 0.99
    assert hiding["swd_t1_t2"] > 3 * honest["swd_t1_t2"] > 0


# --- the validation pass -------------------------------------------------------------------------------------------

def test_the_validation_pass_gives_every_metric_and_spreads_only_per_slice_ones(tiny_cfg):
    data = load_data("synthetic", 32)
    t = Trainer.build(tiny_cfg, "cpu")
    values, outs = validation_pass(t.models.g_t1_t2, t.models.g_t2_t1, data.val)
    assert values.shape == (len(IMAGE_METRICS),) and torch.isfinite(values).all()
    assert {"rec_t1_noisy", "rec_t2_noisy"} <= set(outs)
    assert set(per_slice(outs, data.val)) == set(SLICE_METRICS)
    assert set(SWD_METRICS + TISSUE_METRICS + TEXTURE_METRICS) <= set(POOLED_METRICS)
    assert not set(SWD_METRICS + TISSUE_METRICS + TEXTURE_METRICS) & set(SLICE_METRICS)
    assert set(LOWER_IS_BETTER) == set(SWD_METRICS)
    got = evaluate(t.models.g_t1_t2, t.models.g_t2_t1, data.test, spread=True)
    assert {"anatomy_t1_t2_sd", "ssim_t2_t2_noisy_sd"} <= set(got) and "swd_t1_t2_sd" not in got
    assert "tissue_t1_t2_sd" not in got and 0 < got["tissue_t1_t2"] <= 1
    assert "texture_t2_t1_sd" not in got and 0 < got["texture_t2_t1"] <= 1


@needs_cuda
def test_the_validation_pass_never_waits_for_the_gpu_and_replays_as_a_graph(tiny_cfg):
    from cyclegan.graphed import Replay

    val = load_data("synthetic", 64).val
    # Unpaired, with one T2 slice fewer: the SWD then pairs quantiles of sets of different sizes.
    data = dataclasses.replace(val, t2=val.t2[:-1], t2_head=val.t2_head[:-1], t2_names=val.t2_names[:-1],
                               paired=False).to("cuda")
    t = Trainer.build(tiny_cfg.replace(resize=64), "cuda")
    args = (t.models.g_t1_t2, t.models.g_t2_t1, data, t.autocast)
    U.swd_directions.cache_clear(), U.cycle_noise.cache_clear(), U.quantile_pairs.cache_clear()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        eager = [validation_pass(*args)[0].clone() for _ in range(2)]  # the first call makes the cached tensors
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(eager[0]).all() and torch.equal(eager[0], eager[1])
    replay = Replay(lambda: validation_pass(*args), enabled=True, name="validation", warmup=1)
    graphed = [replay()[0].clone() for _ in range(3)]
    assert replay.captured
    assert torch.allclose(graphed[-1], eager[0], rtol=1e-4, atol=1e-4)
