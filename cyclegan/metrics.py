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

WIN = 7
K1, K2 = 0.01, 0.03
# A perfect reconstruction has infinite PSNR; capping the MSE keeps every reported value a finite number.
MIN_MSE = 1e-10

DIRECTIONS = ("t1_t1", "t2_t2", "t1_t2", "t2_t1")
IMAGE_METRICS = tuple(f"{m}_{d}{s}" for s in ("", "_head") for m in ("ssim", "psnr") for d in DIRECTIONS)
LOSSES = ("loss_cycle", "loss_identity", "loss_G", "loss_D")
# What `fit` reports every epoch; the search's objective must be built from these.
REPORTED_METRICS = ("epoch", *LOSSES, *IMAGE_METRICS)


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
