"""The names of what a trainer reports each epoch: its losses and the image metrics of `cyclegan.metrics`.

Apart from those metrics because this module imports no torch: a search's driver checks a space's objective against
these names before Ray starts, and imports torch only beside Ray's start (search/run.py).
"""

from __future__ import annotations

DIRECTIONS = ("t1_t1", "t2_t2", "t1_t2", "t2_t1")
# How much a translation looks like the other contrast, without pairs: 1 - the Wasserstein-1 distance between
# the head's intensity distribution in the translations and in real slices of that contrast (see `contrast`).
CONTRAST_METRICS = ("contrast_t1_t2", "contrast_t2_t1")
# The same per tissue (cyclegan/unpaired.py `tissue`): the translation's intensities on each of the input's brain
# intensity classes against the target contrast's class in the reversed order, so the tissue mapping counts.
TISSUE_METRICS = ("tissue_t1_t2", "tissue_t2_t1")
# Fine structure per tissue (cyclegan/unpaired.py `texture`): the translation's pixel-scale detail on each of the
# input's tissue classes against the target contrast's, so speckle and blur count.
TEXTURE_METRICS = ("texture_t1_t2", "texture_t2_t1")
# More unpaired metrics (cyclegan/unpaired.py). Realism at several scales: the sliced Wasserstein distance between
# Laplacian-pyramid patches of the translations and of real slices of that contrast (G(T1) against real T2 first).
SWD_METRICS = ("swd_t1_t2", "swd_t2_t1")
# Anatomy kept: 1 - the mean |MIND(x) - MIND(G(x))| over the input's head, comparable across contrasts; also one
# pyramid level down (`coarse`), where the pixel noise weighs less.
ANATOMY_METRICS = ("anatomy_t1_t2", "anatomy_t2_t1", "anatomy_coarse_t1_t2", "anatomy_coarse_t2_t1")
# Information hidden in the cycle: head SSIM of F(G(x) + n) against x, n a fixed small noise.
NOISY_CYCLE_METRICS = ("ssim_t1_t1_noisy", "ssim_t2_t2_noisy")
IMAGE_METRICS = (*(f"{m}_{d}{s}" for s in ("", "_head") for m in ("ssim", "psnr") for d in DIRECTIONS),
                 *CONTRAST_METRICS, *TISSUE_METRICS, *TEXTURE_METRICS, *SWD_METRICS, *ANATOMY_METRICS,
                 *NOISY_CYCLE_METRICS)
# Scored on a whole split at once rather than slice by slice.
POOLED_METRICS = (*CONTRAST_METRICS, *TISSUE_METRICS, *TEXTURE_METRICS, *SWD_METRICS)
# The metrics scored slice by slice, which therefore have a spread.
SLICE_METRICS = tuple(m for m in IMAGE_METRICS if m not in POOLED_METRICS)
# Every other image metric is better higher; an objective weighs these negatively, or minimises them.
LOWER_IS_BETTER = SWD_METRICS
LOSSES = ("loss_cycle", "loss_identity", "loss_G", "loss_D")
# What `fit` reports every epoch; the search's objective must be built from these.
REPORTED_METRICS = ("epoch", *LOSSES, *IMAGE_METRICS)
