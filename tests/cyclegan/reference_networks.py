"""A re-creation, for tests, of the reference CycleGAN's generators (junyanz/pytorch-CycleGAN-and-pix2pix,
models/networks.py: ResnetGenerator, ResnetBlock, UnetGenerator, UnetSkipConnectionBlock, get_norm_layer).

Built module by module in the reference's order with the reference's argument names and rules (which convs
have a bias, where norm and dropout sit, how filters grow), so that its state-dict names and parameter counts are
the reference's. The tests check our networks and our checkpoint reading against these, never against themselves.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def get_norm_layer(norm_type: str = "instance"):
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    raise ValueError(norm_type)


def _use_bias(norm_layer) -> bool:
    # Convs before a norm with its own shift (batch norm's) have no bias; before instance norm they do.
    func = norm_layer.func if isinstance(norm_layer, functools.partial) else norm_layer
    return func == nn.InstanceNorm2d


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, padding_type: str, norm_layer, use_dropout: bool, use_bias: bool) -> None:
        super().__init__()
        assert padding_type == "reflect"
        block: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias),
                                  norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            block.append(nn.Dropout(0.5))
        block += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias), norm_layer(dim)]
        self.conv_block = nn.Sequential(*block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, norm_layer=nn.BatchNorm2d,
                 use_dropout: bool = False, n_blocks: int = 6, padding_type: str = "reflect") -> None:
        super().__init__()
        use_bias = _use_bias(norm_layer)
        model: list[nn.Module] = [nn.ReflectionPad2d(3),
                                  nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                                  norm_layer(ngf), nn.ReLU(True)]
        n_downsampling = 2
        for i in range(n_downsampling):
            mult = 2**i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                      norm_layer(ngf * mult * 2), nn.ReLU(True)]
        mult = 2**n_downsampling
        for _ in range(n_blocks):
            model.append(ResnetBlock(ngf * mult, padding_type, norm_layer, use_dropout, use_bias))
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1,
                                         output_padding=1, bias=use_bias),
                      norm_layer(int(ngf * mult / 2)), nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None, submodule: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, norm_layer=nn.BatchNorm2d,
                 use_dropout: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        use_bias = _use_bias(norm_layer)
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, nn.ReLU(True), upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [nn.LeakyReLU(0.2, True), downconv, nn.ReLU(True), upconv, norm_layer(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            model = [nn.LeakyReLU(0.2, True), downconv, norm_layer(inner_nc), submodule,
                     nn.ReLU(True), upconv, norm_layer(outer_nc)]
            if use_dropout:
                model.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc: int, output_nc: int, num_downs: int, ngf: int = 64, norm_layer=nn.BatchNorm2d,
                 use_dropout: bool = False) -> None:
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=None, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer,
                                            use_dropout=use_dropout)
        block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, submodule=block, norm_layer=norm_layer)
        block = UnetSkipConnectionBlock(ngf, ngf * 2, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def define_G(input_nc: int, output_nc: int, ngf: int, netG: str, norm: str = "instance",
             use_dropout: bool = False) -> nn.Module:
    """The reference's generator by name, with its "normal" init (N(0, 0.02) conv weights, zero biases; batch-norm
    weights N(1, 0.02)), so that every weight is random and a mix-up of two of them shows."""
    norm_layer = get_norm_layer(norm)
    nets = {"resnet_9blocks": lambda: ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks=9),
            "resnet_6blocks": lambda: ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks=6),
            "unet_128": lambda: UnetGenerator(input_nc, output_nc, 7, ngf, norm_layer, use_dropout),
            "unet_256": lambda: UnetGenerator(input_nc, output_nc, 8, ngf, norm_layer, use_dropout)}
    net = nets[netG]()
    for m in net.modules():
        name = type(m).__name__
        if hasattr(m, "weight") and "Conv" in name:
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif "BatchNorm2d" in name:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return net
