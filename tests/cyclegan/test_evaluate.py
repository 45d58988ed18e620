"""`evaluate`: test-split figures with their spread over slices, checked slice by slice against scikit-image, and
the same figures when a split is scored chunk by chunk."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cyclegan import evaluate as evaluate_module
from cyclegan.data import load_data
from cyclegan.evaluate import evaluate, per_slice, scores, translations, yardstick
from cyclegan.metrics import IMAGE_METRICS, POOLED_METRICS, SLICE_METRICS
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


def _whole(g, f, s, resize=None) -> dict[str, float]:
    """The split scored all at once: one pass of translations, the per-slice values' means and spreads."""
    outs = translations(g, f, s, resize=resize)
    got = dict(zip(IMAGE_METRICS, scores(outs, s).tolist()))
    return {**got, **{f"{k}_sd": v.std().item() for k, v in per_slice(outs, s).items()}}


@pytest.mark.parametrize("source", ["synthetic", "study"])
def test_a_split_scored_in_chunks_gives_the_figures_of_the_whole_split(tiny_cfg, source, request, monkeypatch):
    data = load_data("synthetic" if source == "synthetic" else request.getfixturevalue("study_data"), 32)
    s = data.val
    if not s.paired:  # the study's contrasts differ in number (43 and 46 slices): so may an unpaired split's
        s = replace(s, t2=s.t2[:4], t2_head=s.t2_head[:4], t2_names=s.t2_names[:4])
    torch.manual_seed(0)
    t = Trainer.build(tiny_cfg, "cpu")
    g, f = t.models.g_t1_t2, t.models.g_t2_t1
    whole = _whole(g, f, s)
    seen = []
    real = evaluate_module.translations
    monkeypatch.setattr(evaluate_module, "translations",
                        lambda g, f, part, *a: seen.append(part) or real(g, f, part, *a))
    for chunk in (1, 4):  # 4 does not divide the 6 slices of val
        seen.clear()
        got = evaluate(g, f, s, spread=True, chunk=chunk)
        assert got == pytest.approx(whole, rel=1e-5, abs=1e-6), chunk
        # Never more than a chunk of either domain at once, every slice once.
        assert max(max(len(p.t1), len(p.t2)) for p in seen) == chunk
        assert [n for p in seen for n in p.t1_names] == list(s.t1_names)
        assert [n for p in seen for n in p.t2_names] == list(s.t2_names)
        assert s.paired or not seen[-1].t2_names  # the study's T2 slices ran out first
    assert all(whole[m] != 0 for m in POOLED_METRICS)


def test_chunks_are_rounded_up_where_the_cycle_noise_needs_it():
    # At 30 px a slice's noise is no multiple of 16 values: chunks of 1 slice become 4, to the same figures.
    s = load_data("synthetic", 32).val
    identity = torch.nn.Identity()
    whole = _whole(identity, identity, s, resize=30)
    got = evaluate(identity, identity, s, spread=True, resize=30, chunk=1)
    assert got == pytest.approx(whole, rel=1e-5, abs=1e-6)
    assert got["ssim_t1_t1_noisy"] < 0.999  # the noise went in


def test_a_yardstick_scored_in_chunks_is_the_yardstick_of_the_whole_split():
    s = load_data("synthetic", 32).test
    for truth in (False, True):
        assert yardstick(s, 32, truth, chunk=4) == pytest.approx(yardstick(s, 32, truth, chunk=len(s.t1)),
                                                                 rel=1e-5, abs=1e-6)
