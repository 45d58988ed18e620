import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cyclegan.fused_norm as fused
from cyclegan.config import TrainConfig
from cyclegan.fused_norm import (
    FusedInstanceNorm2d,
    fuse_instance_norms,
    instance_norm,
    kernel_instance_norm,
    skip_cancelled_biases,
)
from cyclegan.networks import PatchDiscriminator, ResNetGenerator, UNetGenerator
from cyclegan.train import Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the norm's kernels run on a GPU only")


def _input(dtype: torch.dtype, channels_last: bool, shape=(2, 8, 16, 16), device="cpu") -> torch.Tensor:
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3 + 1).to(device, dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_norm_is_instance_norm_in_fp32_and_keeps_the_layout(channels_last):
    x = _input(torch.float32, channels_last).requires_grad_()
    y = instance_norm(x, 1e-5)
    x2 = x.detach().clone().requires_grad_()
    ref = F.instance_norm(x2, eps=1e-5)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("net,cancelled", [
    # U-Net depth 5: the 3 downs and 4 ups between the outermost and innermost levels; depth 5 with resize-convs.
    (lambda: UNetGenerator(depth=5, ngf=8, dropout=0), 7),
    (lambda: UNetGenerator(depth=5, ngf=8, dropout=0, upsample="resize"), 7),
    # ResNet, 2 blocks: the 7x7 in, 2 downs, 2 convs a block, 2 ups; PatchGAN of 3 layers: all but the first and last.
    (lambda: ResNetGenerator(blocks=2, ngf=8), 9), (lambda: PatchDiscriminator(layers=3, ndf=8), 3)])
def test_a_bias_the_norm_cancels_is_skipped_and_nothing_else_changes(net, cancelled):
    torch.manual_seed(0)
    plain = net().double()
    for m in plain.modules():  # biases the norm must cancel, not the zeros they start at
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.bias, 0.0, 1.0)
    fast = copy.deepcopy(plain)
    assert skip_cancelled_biases(fast) == cancelled and skip_cancelled_biases(fast) == 0
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    x = torch.randn(2, 1, 64, 64, dtype=torch.float64)
    outs = [n(x) for n in (plain, fast)]
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    for out in outs:
        out.square().mean().backward()
    grads = {k: p.grad for k, p in fast.named_parameters()}
    skipped = [k for k, g in grads.items() if g is None]
    assert len(skipped) == cancelled and all(k.endswith(".bias") for k in skipped)
    for k, p in plain.named_parameters():
        if k in skipped:  # zero but for rounding: the norm cancels it
            assert p.grad.abs().max() < 1e-9
        else:
            torch.testing.assert_close(grads[k], p.grad, rtol=1e-7, atol=1e-10)


def test_in_bf16_the_statistics_are_fp32_and_the_output_bf16():
    x = _input(torch.bfloat16, True)
    y = instance_norm(x, 1e-5)
    exact = F.instance_norm(x.double(), eps=1e-5)
    assert y.dtype == torch.bfloat16
    # Off by bf16's rounding of the output alone (8 bits: 2**-8 relative), as the native kernel is.
    assert ((y.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-3).all()
    native = F.instance_norm(x, eps=1e-5)
    assert (y.double() - exact).abs().max() <= (native.double() - exact).abs().max() + 2**-6


def test_every_plain_instance_norm_of_the_networks_is_swapped_and_the_weights_stay():
    nets = [UNetGenerator(depth=5, ngf=8), ResNetGenerator(blocks=2, ngf=8), PatchDiscriminator(layers=2, ndf=8)]
    for net in nets:
        plain = sum(type(m) is nn.InstanceNorm2d for m in net.modules())
        before = {k: v.clone() for k, v in net.state_dict().items()}
        x = torch.randn(2, 1, 32, 32)
        net.eval()
        with torch.no_grad():
            out = net(x)
        assert plain > 0 and fuse_instance_norms(net) == plain
        assert not any(type(m) is nn.InstanceNorm2d for m in net.modules())
        assert sum(isinstance(m, FusedInstanceNorm2d) for m in net.modules()) == plain
        after = net.state_dict()
        assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
        with torch.no_grad():  # on the CPU the native kernel runs: the same numbers
            assert torch.equal(net(x), out)


def test_norms_with_weights_or_running_stats_are_left_alone():
    net = nn.Sequential(nn.InstanceNorm2d(4, affine=True), nn.InstanceNorm2d(4, track_running_stats=True),
                        nn.InstanceNorm2d(4))
    assert fuse_instance_norms(net) == 1
    assert [type(m) for m in net] == [nn.InstanceNorm2d, nn.InstanceNorm2d, FusedInstanceNorm2d]


def test_the_trainer_swaps_them_on_a_gpu_only():
    cfg = TrainConfig(resize=32, unet_depth=5, ngf=8, ndf=8, disc_layers=2, fused_norm=True)
    models = Trainer.build(cfg, "cpu").models
    assert not any(isinstance(m, (FusedInstanceNorm2d, fused._BiasCancelledConv2d, fused._BiasCancelledConvTranspose2d))
                   for net in models.named().values() for m in net.modules())


def test_where_the_kernels_fail_it_warns_once_and_runs_the_native_kernel(monkeypatch):
    def no_compiler(x, eps):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.\nmore")

    monkeypatch.setattr(fused._KernelNorm, "apply", no_compiler)
    monkeypatch.setattr(fused, "_failed", None)
    x = _input(torch.float32, True)
    message = (r"fused_norm: the InstanceNorm kernels failed, using the native kernel "
               r"\(Failed to find C compiler. Please specify via CC environment variable.\)$")
    with pytest.warns(UserWarning, match=message):
        y = kernel_instance_norm(x, 1e-5)
    assert torch.equal(y, F.instance_norm(x, eps=1e-5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next calls go to the native kernel without trying again
        assert torch.equal(kernel_instance_norm(x, 1e-5), y)


@needs_cuda
def test_cudnn_benchmark_follows_the_config_in_each_trainer_a_process_builds():
    try:
        for on, batch, timed in ((False, 8, False), (True, 2, True), ("auto", 2, False), ("auto", 8, True),
                                 (False, 2, False)):
            Trainer.build(TrainConfig(resize=32, unet_depth=3, ngf=4, ndf=4, batch_size=batch, cudnn_benchmark=on),
                          device="cuda")
            assert torch.backends.cudnn.benchmark is timed
    finally:
        torch.backends.cudnn.benchmark = False


@needs_cuda
def test_the_kernels_match_the_native_kernel_on_a_gpu():
    for dtype, channels_last, shape in itertools.product((torch.float32, torch.bfloat16), (False, True),
                                                         ((2, 64, 64, 64), (1, 32, 2, 2), (5, 16, 32, 32),
                                                          (2, 40, 128, 96), (32, 512, 8, 8))):
        x = _input(dtype, channels_last, shape, "cuda")
        g = torch.randn(shape, device="cuda").to(dtype)
        # float64 from NCHW: torch's CPU instance_norm backward is wrong for channels_last (test_norm_kernels.py).
        xa, xb, xd = (x.clone().requires_grad_(), x.clone().requires_grad_(),
                      x.double().contiguous().requires_grad_())
        ya, yb, yd = kernel_instance_norm(xa, 1e-5), F.instance_norm(xb, eps=1e-5), F.instance_norm(xd, eps=1e-5)
        for y in (ya, yb, yd):
            (y.double() * g.double()).sum().backward()
        assert fused._failed is None  # the kernels ran, not the native fallback
        assert ya.dtype == dtype and ya.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert xa.grad.stride() == xa.stride()
        # Against float64, the kernels are at most a rounding step further off than the native one.
        tol = 1e-5 if dtype == torch.float32 else 2**-6
        assert (ya.double() - yd).abs().max() <= (yb.double() - yd).abs().max() + tol
        assert (xa.grad.double() - xd.grad).abs().max() <= (xb.grad.double() - xd.grad).abs().max() + tol * (
            xd.grad.abs().max().item())


@needs_cuda
def test_on_a_gpu_the_trainer_skips_the_biases_its_norms_cancel():
    models = Trainer.build(TrainConfig(resize=32, unet_depth=5, ngf=8, ndf=8, disc_layers=2), "cuda").models
    skipping = (fused._BiasCancelledConv2d, fused._BiasCancelledConvTranspose2d)
    assert {k: sum(isinstance(m, skipping) for m in net.modules()) for k, net in models.named().items()} == {
        "g_t1_t2": 7, "g_t2_t1": 7, "d_t1": 2, "d_t2": 2}
