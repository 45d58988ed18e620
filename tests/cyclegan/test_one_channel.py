"""The one-channel convolutions as products over patches (cyclegan/one_channel.py), against torch's own, in float64.

    python -m pytest -q tests/cyclegan/test_one_channel.py
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cyclegan.config import TrainConfig
from cyclegan.networks import PatchDiscriminator, ResNetGenerator, UNetGenerator
from cyclegan.one_channel import (
    _PatchConv2d,
    _PatchConvTranspose2d,
    patch_conv2d,
    patch_conv_transpose2d,
    patch_one_channel_convs,
)
from cyclegan.train import Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the patch products run on a GPU only")


def _leaf(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64).requires_grad_()


def _grads(y: torch.Tensor, g: torch.Tensor, *leaves: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad((y * g).sum(), leaves))


@pytest.mark.parametrize("kernel,stride,padding,dilation,size", [
    (4, 2, 1, 1, (32, 32)),   # the U-Net's and the PatchGAN's first
    (7, 1, 0, 1, (38, 38)),   # the ResNet's first, after its reflection padding
    (3, 2, 2, 2, (21, 17)),   # odd sizes, dilation
])
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_patch_product_is_the_convolution_and_its_gradients(kernel, stride, padding, dilation, size, with_bias):
    torch.manual_seed(0)
    x, w = _leaf(3, 1, *size), _leaf(8, 1, kernel, kernel)
    b = _leaf(8) if with_bias else None
    y = patch_conv2d(x, w, b, (stride, stride), (padding, padding), (dilation, dilation))
    ref = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    leaves = [t for t in (x, w, b) if t is not None]
    for got, want in zip(_grads(y, g, *leaves), _grads(ref, g, *leaves)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_the_patch_product_is_no_view_so_an_in_place_activation_after_it_stays_cheap_and_right():
    """The networks' first convolutions hand their output to an in-place LeakyReLU: on a view autograd would copy
    the whole gradient around it (CopySlices)."""
    torch.manual_seed(0)
    x, w, b = _leaf(2, 1, 16, 16), _leaf(8, 1, 4, 4), _leaf(8)
    y = patch_conv2d(x, w, b, (2, 2), (1, 1), (1, 1))
    assert not y._is_view()
    y = F.leaky_relu_(y, 0.2)
    assert "CopySlices" not in type(y.grad_fn).__name__
    ref = F.leaky_relu(F.conv2d(x, w, b, stride=2, padding=1), 0.2)
    g = torch.randn_like(ref)
    for got, want in zip(_grads(y, g, x, w, b), _grads(ref, g, x, w, b)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,size", [(4, 2, 1, (16, 16)), (3, 1, 1, (9, 13)), (5, 3, 2, (7, 6))])
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_patch_scatter_is_the_transposed_convolution_and_its_gradients(kernel, stride, padding, size, with_bias):
    torch.manual_seed(1)
    x = _leaf(2, 12, *size).detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = _leaf(12, 1, kernel, kernel)
    b = _leaf(1) if with_bias else None
    y = patch_conv_transpose2d(x, w, b, (stride, stride), (padding, padding), (1, 1))
    ref = F.conv_transpose2d(x, w, b, stride=stride, padding=padding)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    leaves = [t for t in (x, w, b) if t is not None]
    for got, want in zip(_grads(y, g, *leaves), _grads(ref, g, *leaves)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("net,patched", [
    (lambda: UNetGenerator(depth=5, ngf=8), 2),                     # first conv, last transposed conv
    (lambda: UNetGenerator(depth=5, ngf=8, upsample="resize"), 1),  # its last is a conv with 16 channels in
    (lambda: ResNetGenerator(blocks=2, ngf=8), 1), (lambda: PatchDiscriminator(layers=3, ndf=8), 1)])
def test_the_one_channel_convolutions_are_swapped_and_names_and_cpu_outputs_stay(net, patched):
    torch.manual_seed(0)
    plain = net().eval()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = plain(x)
    assert patch_one_channel_convs(plain) == patched and patch_one_channel_convs(plain) == 0
    after = plain.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    with torch.no_grad():  # on the CPU the modules run torch's own convolution
        assert torch.equal(plain(x), out)


def test_grouped_output_padded_reflect_or_same_padded_ones_are_left_alone():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(2, 2, 3, groups=2), nn.ConvTranspose2d(4, 1, 3, stride=2,
                        output_padding=1), nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"),
                        nn.Conv2d(1, 4, 3, padding="same"))
    assert patch_one_channel_convs(net) == 1 and type(net[0]) is _PatchConv2d


@needs_cuda
def test_on_a_gpu_the_trainer_patches_them_and_bf16_outputs_match_cudnn():
    models = Trainer.build(TrainConfig(resize=64, unet_depth=5, ngf=8, ndf=8, disc_layers=2), "cuda").models
    kinds = {k: sorted(type(m).__name__ for m in net.modules() if isinstance(m, (_PatchConv2d, _PatchConvTranspose2d)))
             for k, net in models.named().items()}
    assert kinds == {"g_t1_t2": ["_PatchConv2d", "_PatchConvTranspose2d"],
                     "g_t2_t1": ["_PatchConv2d", "_PatchConvTranspose2d"], "d_t1": ["_PatchConv2d"],
                     "d_t2": ["_PatchConv2d"]}
    torch.manual_seed(0)
    x = torch.rand(4, 1, 64, 64, device="cuda") * 2 - 1
    conv = nn.Conv2d(1, 16, 4, 2, 1).cuda().to(memory_format=torch.channels_last)
    up = nn.ConvTranspose2d(16, 1, 4, 2, 1).cuda().to(memory_format=torch.channels_last)
    with torch.autocast("cuda", torch.bfloat16):
        want = up(torch.relu(conv(x)))
        conv.__class__, up.__class__ = _PatchConv2d, _PatchConvTranspose2d
        got = up(torch.relu(conv(x)))
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-6, atol=2**-6)


@needs_cuda
def test_on_a_gpu_the_bf16_patch_products_gradients_match_cudnns():
    torch.manual_seed(0)
    x = (torch.rand(4, 1, 64, 64, device="cuda") * 2 - 1).requires_grad_()
    nets = {}
    for patched in (False, True):
        torch.manual_seed(1)
        conv = nn.Conv2d(1, 16, 4, 2, 1).cuda().to(memory_format=torch.channels_last)
        up = nn.ConvTranspose2d(16, 1, 4, 2, 1).cuda().to(memory_format=torch.channels_last)
        if patched:
            conv.__class__, up.__class__ = _PatchConv2d, _PatchConvTranspose2d
        with torch.autocast("cuda", torch.bfloat16):
            # No activation between them: where a bf16 rounding flips an output's sign, a LeakyReLU's slope would
            # change that pixel's gradient five-fold (seen on an H200), whichever kernel computed it.
            y = up(conv(x))
        (dx,) = torch.autograd.grad(y.float().square().sum(), x, retain_graph=True)
        y.float().square().sum().backward()
        nets[patched] = [dx, conv.weight.grad, conv.bias.grad, up.weight.grad, up.bias.grad]
    for got, want in zip(nets[True], nets[False]):
        assert got.dtype == want.dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=2**-5, atol=2**-5 * want.abs().max().item())
