from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cyclegan.metrics import psnr, ssim


def _pairs(seed: int, n: int = 3, shape=(37, 45)):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *shape))
    y = np.clip(x + rng.normal(0, rng.uniform(0.01, 0.3), (n, *shape)), 0, 1)
    return x, y


def _t(a):
    return torch.tensor(a)[:, None]


@pytest.mark.parametrize("seed", range(4))
def test_equal_to_scikit_image_on_whole_images(seed):
    x, y = _pairs(seed)
    ours_s, ours_p = ssim(_t(x), _t(y)), psnr(_t(x), _t(y))
    for i in range(len(x)):
        assert ours_s[i].item() == pytest.approx(structural_similarity(x[i], y[i], data_range=1.0), abs=1e-6)
        assert ours_p[i].item() == pytest.approx(peak_signal_noise_ratio(x[i], y[i], data_range=1.0), abs=1e-4)


def test_masked_figures_equal_scikit_image_restricted_to_the_mask():
    x, y = _pairs(7, n=2)
    mask = np.zeros_like(x, dtype=bool)
    mask[:, 5:30, 8:40] = True
    s = ssim(_t(x), _t(y), _t(mask))
    p = psnr(_t(x), _t(y), _t(mask))
    for i in range(len(x)):
        _, full = structural_similarity(x[i], y[i], data_range=1.0, full=True)
        inner = (slice(3, -3), slice(3, -3))
        assert s[i].item() == pytest.approx(full[inner][mask[i][inner]].mean(), abs=1e-6)
        mse = ((x[i] - y[i])[mask[i]] ** 2).mean()
        assert p[i].item() == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)


def test_identical_images_score_one_and_a_finite_psnr():
    x, _ = _pairs(0)
    assert torch.allclose(ssim(_t(x), _t(x)), torch.ones(3, dtype=torch.float32))
    assert torch.isfinite(psnr(_t(x), _t(x))).all()


def test_worse_images_score_lower():
    x, _ = _pairs(1)
    rng = np.random.default_rng(2)
    near = np.clip(x + rng.normal(0, 0.02, x.shape), 0, 1)
    far = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1)
    assert (ssim(_t(x), _t(near)) > ssim(_t(x), _t(far))).all()
    assert (psnr(_t(x), _t(near)) > psnr(_t(x), _t(far))).all()


def test_contrast_is_one_minus_the_wasserstein_distance_of_the_head_intensities():
    from scipy.stats import wasserstein_distance

    from cyclegan.metrics import HISTOGRAM_BINS, contrast

    rng = np.random.default_rng(3)
    a, b = rng.beta(2, 5, (2, 1, 30, 30)), rng.beta(5, 2, (3, 1, 30, 30))
    ma, mb = rng.random(a.shape) < 0.7, rng.random(b.shape) < 0.6
    expected = 1 - wasserstein_distance(a[ma], b[mb])
    assert contrast(_t4(a), _t4(ma), _t4(b), _t4(mb)).item() == pytest.approx(expected, abs=2 / HISTOGRAM_BINS)
    assert contrast(_t4(a), _t4(ma), _t4(a), _t4(ma)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("source,gap", [("synthetic", 0.02), ("study", 0.05)])
def test_contrast_tells_a_copied_input_from_a_translation(source, gap, request):
    # The study's cross-contrast yardstick (SSIM against the input) scores a generator that copies its input
    # perfectly; contrast does not: T1 slices passed off as T2 are far from real T2 intensities, while other
    # real T2 slices are close.
    from cyclegan.data import load_data
    from cyclegan.metrics import contrast

    d = load_data("synthetic" if source == "synthetic" else request.getfixturevalue("study_data"), 64)
    t1, t2 = (d.val.t1 + 1) / 2, (d.val.t2 + 1) / 2
    # Other real T2 slices at val's size: the test split's (train is at resize, val and test at the eval size).
    real_t2, head = (d.test.t2 + 1) / 2, d.test.t2_head
    copied = contrast(t1, d.val.t1_head, real_t2, head)
    translated = contrast(t2, d.val.t2_head, real_t2, head)
    assert translated > 0.98 and translated - copied > gap


def _t4(a):
    return torch.tensor(a)
