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
