"""The CycleGAN's losses as pure functions of tensors.

Names follow the study: the adversarial loss of a generator or discriminator (least squares as in the
reference PyTorch code, or binary cross-entropy on logits as in the study's TensorFlow code), the cycle
loss L1(F(G(x)), x) and the identity loss L1(G(y), y).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gan_loss(prediction: torch.Tensor, target_is_real: bool, kind: str) -> torch.Tensor:
    """Adversarial loss of a patch map against an all-real or all-fake target."""
    prediction = prediction.float()  # the loss in fp32 even when the network ran in bf16
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    if kind == "lsgan":
        return F.mse_loss(prediction, target)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(prediction, target)
    raise ValueError(f"gan_loss must be 'lsgan' or 'bce', got {kind!r}")


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(a.float(), b.float())
