"""`evaluate`: test-split figures with their spread over slices, checked slice by slice against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cyclegan.data import load_data
from cyclegan.evaluate import evaluate, translations
from cyclegan.metrics import SLICE_METRICS
from cyclegan.train import Trainer


def test_spread_is_the_sample_deviation_of_scikit_images_per_slice_figures(tiny_cfg):
    data = load_data("synthetic", 32)
    t = Trainer.build(tiny_cfg, "cpu")
    got = evaluate(t.models.g_t1_t2, t.models.g_t2_t1, data.test, spread=True)
    assert set(SLICE_METRICS) | {f"{m}_sd" for m in SLICE_METRICS} <= set(got)

    outs = translations(t.models.g_t1_t2, t.models.g_t2_t1, data.test)
    to01 = lambda x: ((x[:, 0].numpy() + 1) / 2).astype(np.float64)  # noqa: E731
    rec, ref = to01(outs["rec_t1"]), to01(data.test.t1)
    ssims = [structural_similarity(a, b, data_range=1.0) for a, b in zip(rec, ref)]
    psnrs = [peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in zip(rec, ref)]
    assert len(ssims) > 1 and np.std(ssims) > 0
    assert got["ssim_t1_t1"] == pytest.approx(np.mean(ssims), abs=1e-5)
    assert got["ssim_t1_t1_sd"] == pytest.approx(np.std(ssims, ddof=1), abs=1e-5)
    assert got["psnr_t1_t1_sd"] == pytest.approx(np.std(psnrs, ddof=1), abs=1e-3)


def test_without_spread_only_the_means_are_returned(tiny_cfg):
    data = load_data("synthetic", 32)
    t = Trainer.build(tiny_cfg, "cpu")
    got = evaluate(t.models.g_t1_t2, t.models.g_t2_t1, data.test)
    assert not any(k.endswith("_sd") for k in got)
