"""Scores a pair of generators on a split: the study's Table 3 rows, on the whole image and in the head.

Same-contrast rows are cycle reconstructions (T1 -> T2 -> T1 against the T1 input). Cross-contrast rows
compare the translation with the true other contrast when the split is paired (the phantom), and with
the input slice otherwise, as the study did; `paired` says which. All figures are on the [0, 1] scale
with data_range=1 and averaged over slices.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from cyclegan.data import SliceSet
from cyclegan.metrics import psnr, ssim

EVAL_BATCH = 16


@torch.no_grad()
def translate_all(g: nn.Module, x: torch.Tensor, autocast=nullcontext) -> torch.Tensor:
    """Runs a generator over [N, 1, S, S] in [-1, 1] in batches; returns fp32 in [-1, 1]."""
    outs = []
    for i in range(0, len(x), EVAL_BATCH):
        with autocast():
            outs.append(g(x[i:i + EVAL_BATCH]).float())
    return torch.cat(outs) if outs else x.float().clone()


@torch.no_grad()
def evaluate(g_t1_t2: nn.Module, g_t2_t1: nn.Module, s: SliceSet, autocast=nullcontext) -> dict[str, float]:
    """SSIM/PSNR of the four rows, whole image and head mask, as plain floats (one host sync)."""
    modes = [(g, g.training) for g in (g_t1_t2, g_t2_t1)]
    for g, _ in modes:
        g.eval()
    fake_t2 = translate_all(g_t1_t2, s.t1, autocast)
    rec_t1 = translate_all(g_t2_t1, fake_t2, autocast)
    fake_t1 = translate_all(g_t2_t1, s.t2, autocast)
    rec_t2 = translate_all(g_t1_t2, fake_t1, autocast)
    for g, was_training in modes:
        g.train(was_training)
    rows = {  # name: (output, reference, head mask of the reference)
        "t1_t1": (rec_t1, s.t1, s.t1_head),
        "t2_t2": (rec_t2, s.t2, s.t2_head),
        "t1_t2": (fake_t2, s.t2, s.t2_head) if s.paired else (fake_t2, s.t1, s.t1_head),
        "t2_t1": (fake_t1, s.t1, s.t1_head) if s.paired else (fake_t1, s.t2, s.t2_head),
    }
    values = {}
    for row, (out, ref, head) in rows.items():
        out01, ref01 = (out + 1) / 2, (ref + 1) / 2
        values[f"ssim_{row}"] = ssim(out01, ref01).mean()
        values[f"psnr_{row}"] = psnr(out01, ref01).mean()
        values[f"ssim_{row}_head"] = ssim(out01, ref01, head).mean()
        values[f"psnr_{row}_head"] = psnr(out01, ref01, head).mean()
    floats = torch.stack(list(values.values())).tolist()
    return dict(zip(values, floats))
