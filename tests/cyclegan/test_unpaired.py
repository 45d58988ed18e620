"""The unpaired metrics: SWD, MIND anatomy and the noisy cycle against plain numpy/scipy references, their
behaviour on images whose answer is known, and a validation pass that stays free of host syncs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import wasserstein_distance
from torch import nn

from cyclegan import unpaired as U
from cyclegan.data import load_data
from cyclegan.evaluate import evaluate, per_slice, resample, scores, translations, validation_pass
from cyclegan.metrics import IMAGE_METRICS, LOWER_IS_BETTER, POOLED_METRICS, SLICE_METRICS, SWD_METRICS, ssim
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
    assert set(SWD_METRICS) <= set(POOLED_METRICS) and not set(SWD_METRICS) & set(SLICE_METRICS)
    assert set(LOWER_IS_BETTER) == set(SWD_METRICS)
    got = evaluate(t.models.g_t1_t2, t.models.g_t2_t1, data.test, spread=True)
    assert {"anatomy_t1_t2_sd", "ssim_t2_t2_noisy_sd"} <= set(got) and "swd_t1_t2_sd" not in got


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
