"""SSIM and PSNR on batches of images, on whatever device the images are.

Both equal scikit-image's `structural_similarity` (7x7 uniform window, K1=0.01, K2=0.03, sample
covariance, the border of (7-1)/2 pixels left out) and `peak_signal_noise_ratio` image by image, on the
[0, 1] scale with data_range=1 (tests check this). Computing them here in one batched pass keeps the
per-epoch validation on the GPU instead of copying every slice to the host for scikit-image.

With a mask, SSIM is the mean of the SSIM map over the mask's pixels and PSNR the one of the mean squared
error over them: the head mask keeps the black background, which any model gets right, out of the score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The metrics' names, re-exported: they live where a search's driver reads them without torch.
from cyclegan.metric_names import (  # noqa: F401
    ANATOMY_METRICS,
    CONTRAST_METRICS,
    DIRECTIONS,
    IMAGE_METRICS,
    LOSSES,
    LOWER_IS_BETTER,
    NOISY_CYCLE_METRICS,
    POOLED_METRICS,
    REPORTED_METRICS,
    SLICE_METRICS,
    SWD_METRICS,
    TEXTURE_METRICS,
    TISSUE_METRICS,
)

WIN = 7
K1, K2 = 0.01, 0.03
# A perfect reconstruction has infinite PSNR; capping the MSE keeps every reported value a finite number.
MIN_MSE = 1e-10
HISTOGRAM_BINS = 128


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image pair in [N, 1, H, W] batches; returns [N]."""
    return ssim_from_map(ssim_map(x, y, data_range), mask)


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image pair in [N, 1, H, W] batches; returns [N]."""
    return psnr_from_error((x.float() - y.float()) ** 2, mask, data_range)


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """The SSIM map of each pair over the valid region: [N, 1, H - 6, W - 6]."""
    x, y = x.float(), y.float()
    mean = lambda t: F.avg_pool2d(t, WIN, stride=1)  # noqa: E731 - the valid region, as skimage crops it
    ux, uy = mean(x), mean(y)
    cov_norm = WIN * WIN / (WIN * WIN - 1)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim_from_map(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of an SSIM map per image, over the whole valid region or over a full-size mask's pixels in it."""
    if mask is None:
        return s.mean(dim=(1, 2, 3))
    pad = (WIN - 1) // 2
    m = mask[..., pad:-pad, pad:-pad].float()
    return (s * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1)


def psnr_from_error(err: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per image from its map of squared errors, over the whole image or a mask's pixels."""
    if mask is None:
        mse = err.mean(dim=(1, 2, 3))
    else:
        m = mask.float()
        mse = (err * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1)
    return 10 * torch.log10(data_range**2 / mse.clamp_min(MIN_MSE))


def contrast(fake: torch.Tensor, fake_head: torch.Tensor, real: torch.Tensor, real_head: torch.Tensor,
             bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """1 - W1 between the intensities inside the head of two batches in [0, 1], pooled over slices; a 0-d tensor.

    On unpaired data a translation cannot be compared pixel by pixel with a truth, and comparing it with its
    own input (the study's cross-contrast rows) rewards a generator that does not translate at all. Whether
    G(T1) has T2's tissue intensities can still be measured: its intensity distribution should match that of
    real T2 slices. Histograms (fixed bins, weights from the masks) keep this free of host syncs.
    """
    return contrast_from_histograms(head_histogram(fake, fake_head, bins), head_histogram(real, real_head, bins))


def head_histogram(x: torch.Tensor, head: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """The histogram of a batch's intensities in [0, 1] inside its head masks, summed over slices: [bins]. A
    split's is the sum of its chunks'."""
    idx = (x.float().clamp(0, 1) * bins).long().clamp_max(bins - 1).flatten()
    return torch.zeros(bins, device=x.device).scatter_add_(0, idx, head.float().flatten())


def contrast_from_histograms(fake_hist: torch.Tensor, real_hist: torch.Tensor) -> torch.Tensor:
    """`contrast` from the two batches' `head_histogram`s: 1 - W1 between them, in units of the range; 0-d."""
    cdf = lambda h: torch.cumsum(h / h.sum().clamp_min(1), 0)  # noqa: E731
    return 1 - (cdf(fake_hist) - cdf(real_hist)).abs().sum() / len(fake_hist)
