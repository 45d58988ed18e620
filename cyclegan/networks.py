"""The CycleGAN's networks: a U-Net or ResNet generator and a PatchGAN discriminator, one grey channel.

All follow the reference PyTorch CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py).
The U-Net and the PatchGAN also follow the study's TensorFlow pix2pix blocks: 4x4 convolutions with stride 2,
instance norm, LeakyReLU(0.2) going down, ReLU going up, skip connections by concatenation, tanh out. The
ResNet generator is the reference's default: reflection padding, instance norm, residual blocks at a quarter
of the size. Weights are drawn from N(0, 0.02).
Shapes: a U-Net of depth d maps [N, 1, S, S] to the same shape and needs 2**d <= S (and S a multiple of
2**d); a ResNet generator maps it to the same shape and needs S a multiple of 4; a discriminator with n
stride-2 blocks maps [N, 1, S, S] to a patch map of [N, 1, S / 2**n - 2, S / 2**n - 2] and needs S >= 4 * 2**n.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from cyclegan.config import TrainConfig

# Filters double per level from ngf and stop growing at 8 * ngf, as in the reference U-Net.
MAX_FILTER_MULT = 8
# The study (TF pix2pix) puts dropout on the three up-sampling blocks nearest the bottleneck.
DROPOUT_BLOCKS = 3


def _norm(channels: int) -> nn.Module:
    # Instance norm without affine parameters or running stats, as the reference's "instance" option.
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _up(in_ch: int, out_ch: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)
    if mode == "resize":
        # Resize-then-convolve avoids the checkerboard pattern of transposed convolutions (Odena et al. 2016).
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_ch, out_ch, 3, padding=1))
    raise ValueError(f"upsample must be 'transpose' or 'resize', got {mode!r}")


class SkipBlock(nn.Module):
    """One U-Net level: down-sample, run the inner levels, up-sample, and concatenate the input (skip)."""

    def __init__(self, outer: int, inner: int, submodule: nn.Module | None, *, outermost: bool = False,
                 dropout: float = 0.0, upsample: str = "transpose", in_ch: int | None = None) -> None:
        super().__init__()
        self.outermost = outermost
        down_conv = nn.Conv2d(in_ch or outer, inner, kernel_size=4, stride=2, padding=1)
        innermost = submodule is None
        up_in = inner if innermost else inner * 2
        if outermost:
            down = [down_conv]
            up = [nn.ReLU(True), _up(up_in, outer, upsample), nn.Tanh()]
        elif innermost:
            # No norm on the bottleneck: at 2**depth == size it is 1x1, where instance norm is undefined.
            down = [nn.LeakyReLU(0.2, True), down_conv]
            up = [nn.ReLU(True), _up(up_in, outer, upsample), _norm(outer)]
        else:
            down = [nn.LeakyReLU(0.2, True), down_conv, _norm(inner)]
            up = [nn.ReLU(True), _up(up_in, outer, upsample), _norm(outer)]
        if dropout > 0 and not outermost:
            up.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*down, *([submodule] if submodule is not None else []), *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def _check_widths(channels: int, ngf: int, dropout: float) -> None:
    """The arguments both generators share, refused as the config would refuse them."""
    if channels < 1 or ngf < 1:
        raise ValueError(f"channels and ngf must be >= 1, got channels={channels}, ngf={ngf}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class UNetGenerator(nn.Module):
    """U-Net of `depth` down-sampling blocks, built from the bottleneck outwards as in the reference.

    Args:
        depth: down-sampling blocks (the study's 5 to 8); the input size must be a multiple of 2**depth.
        channels: image channels in and out (1 for grey MRI); `out_channels` if they differ.
        ngf: filters of the outermost block.
        dropout: dropout probability on the up blocks nearest the bottleneck (0 turns it off).
        upsample: "transpose" (the study's transposed conv) or "resize" (nearest up-sampling, then conv).

    With upsample "transpose" its module order and state-dict names are those of the reference's UnetGenerator
    (instance norm) of `depth` downs (unet_256: 8, unet_128: 7). Only dropout differs: the reference puts it on the
    depth - 5 blocks above the bottleneck's, this on the 3 nearest it; dropout holds no weights and does nothing
    in eval mode, so the two translate alike.
    """

    def __init__(self, depth: int = 8, channels: int = 1, ngf: int = 64, dropout: float = 0.5,
                 upsample: str = "transpose", out_channels: int | None = None) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        _check_widths(channels, ngf, dropout)
        self.depth = depth

        def filters(level: int) -> int:
            return ngf * min(2**level, MAX_FILTER_MULT)

        block: nn.Module | None = None
        for level in range(depth - 1, -1, -1):  # from the bottleneck outwards
            drop = dropout if level >= max(1, depth - DROPOUT_BLOCKS) else 0.0
            outer = (out_channels or channels) if level == 0 else filters(level - 1)
            block = SkipBlock(outer, filters(level), block, outermost=level == 0, dropout=drop, upsample=upsample,
                              in_ch=channels if level == 0 else None)
        self.model = block
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        if x.shape[-2] != size or size % 2**self.depth:
            raise ValueError(f"input must be square with a size divisible by 2**{self.depth} = {2**self.depth}, "
                             f"got {tuple(x.shape[-2:])}")
        return self.model(x)


class ResnetBlock(nn.Module):
    """x + two reflection-padded 3x3 convs with instance norm, ReLU between them (and dropout, if asked)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # The reference's module order, so that its state-dict names (conv_block.1, conv_block.5) are ours.
        first = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(True)]
        drop = [nn.Dropout(dropout)] if dropout > 0 else []
        self.conv_block = nn.Sequential(*first, *drop, nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResNetGenerator(nn.Module):
    """The reference CycleGAN's ResNet generator (Johnson et al. 2016), with instance norm as its CycleGAN uses.

    A 7x7 conv, two stride-2 3x3 convs (to 4 * ngf filters at a quarter of the size), `blocks` residual blocks,
    two transposed 3x3 convs back, and a 7x7 conv to tanh; reflection padding throughout. The module order is the
    reference's, so a `latest_net_G_A.pth` of its `resnet_9blocks` or `resnet_6blocks` loads as it is.

    Args:
        blocks: residual blocks (9 for resnet_9blocks, 6 for resnet_6blocks).
        channels: image channels in and out (1 for grey MRI); `out_channels` if they differ.
        ngf: filters of the first conv.
        dropout: inside each residual block (the reference's use_dropout puts 0.5 there; its CycleGAN does not).
    """

    DOWNSAMPLINGS = 2

    def __init__(self, blocks: int = 9, channels: int = 1, ngf: int = 64, dropout: float = 0.0,
                 out_channels: int | None = None) -> None:
        super().__init__()
        if blocks < 0:
            raise ValueError(f"blocks must be >= 0, got {blocks}")
        _check_widths(channels, ngf, dropout)
        seq: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for i in range(self.DOWNSAMPLINGS):
            mult = 2**i
            seq += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), _norm(ngf * mult * 2),
                    nn.ReLU(True)]
        mult = 2**self.DOWNSAMPLINGS
        seq += [ResnetBlock(ngf * mult, dropout) for _ in range(blocks)]
        for i in range(self.DOWNSAMPLINGS):
            mult = 2 ** (self.DOWNSAMPLINGS - i)
            seq += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                    _norm(ngf * mult // 2), nn.ReLU(True)]
        seq += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels or channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*seq)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = 2**self.DOWNSAMPLINGS
        if x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(f"input must have sides divisible by {step}, got {tuple(x.shape[-2:])}")
        return self.model(x)


def build_generator(cfg: TrainConfig, channels: int = 1) -> nn.Module:
    """The generator `cfg.generator` names, shaped by the config's knobs (the U-Net's only for the U-Net)."""
    if cfg.generator == "unet":
        return UNetGenerator(cfg.unet_depth, channels, cfg.ngf, cfg.dropout, cfg.upsample)
    blocks = {"resnet_9blocks": 9, "resnet_6blocks": 6}[cfg.generator]
    return ResNetGenerator(blocks, channels, cfg.ngf)


class PatchDiscriminator(nn.Module):
    """PatchGAN: `layers` stride-2 conv blocks, then two 4x4 stride-1 convs to a 1-channel patch map.

    With layers=3 each output pixel sees a 70x70 patch, as in the reference; the study used 2 and 3.
    """

    def __init__(self, layers: int = 3, channels: int = 1, ndf: int = 64) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if channels < 1 or ndf < 1:
            raise ValueError(f"channels and ndf must be >= 1, got channels={channels}, ndf={ndf}")
        self.layers = layers
        seq: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers):
            prev, mult = mult, min(2**n, MAX_FILTER_MULT)
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1), _norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**layers, MAX_FILTER_MULT)
        seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), _norm(ndf * mult), nn.LeakyReLU(0.2, True),
                nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*seq)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 4 * 2**self.layers:
            raise ValueError(f"input of {tuple(x.shape[-2:])} is too small for {self.layers} stride-2 blocks: "
                             f"needs at least {4 * 2**self.layers}x{4 * 2**self.layers}")
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> None:
    """Draws conv weights from N(0, gain) and zeroes biases, the reference's "normal" init."""
    for m in net.modules():
        # On the meta device (the memory estimate's networks) there is nothing to draw, and drawing costs milliseconds.
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not m.weight.is_meta:
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
