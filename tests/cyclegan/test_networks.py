from __future__ import annotations

import pytest
import torch

from cyclegan.config import TrainConfig
from cyclegan.networks import PatchDiscriminator, ResnetBlock, ResNetGenerator, UNetGenerator, build_generator
from tests.cyclegan.reference_networks import define_G


@pytest.mark.parametrize("depth,size", [(1, 32), (3, 32), (5, 32), (5, 64), (6, 64), (4, 48)])
@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_generator_keeps_shape_and_range(depth, size, upsample):
    g = UNetGenerator(depth, 1, ngf=4, upsample=upsample)
    y = g(torch.randn(2, 1, size, size))
    assert y.shape == (2, 1, size, size)
    assert y.abs().max() <= 1  # tanh out


def test_generator_at_study_size_has_the_reference_parameter_count():
    # The reference unet_256 (ngf 64, 8 downs) with one channel in and out has 54,403,457 parameters.
    assert sum(p.numel() for p in UNetGenerator(8).parameters()) == 54_403_457


def test_dropout_sits_on_the_three_up_blocks_nearest_the_bottleneck():
    drops = [m for m in UNetGenerator(8, ngf=4).modules() if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == 3
    assert not [m for m in UNetGenerator(8, ngf=4, dropout=0).modules() if isinstance(m, torch.nn.Dropout)]


def test_weights_are_drawn_from_n_0_002():
    w = torch.cat([m.weight.flatten() for m in UNetGenerator(5).modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.001


@pytest.mark.parametrize("layers,size,patch", [(1, 32, 14), (2, 32, 6), (3, 32, 2), (3, 256, 30)])
def test_discriminator_patch_map(layers, size, patch):
    d = PatchDiscriminator(layers, 1, ndf=4)
    assert d(torch.randn(2, 1, size, size)).shape == (2, 1, patch, patch)


@pytest.mark.parametrize("kwargs,match", [({"depth": 0}, "depth must be >= 1"), ({"channels": 0}, "channels"),
                                          ({"ngf": 0}, "ngf"), ({"dropout": 1.0}, "dropout"),
                                          ({"upsample": "bicubic"}, "upsample")])
def test_generator_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetGenerator(**kwargs)


def test_generator_refuses_input_too_small_for_its_depth():
    with pytest.raises(ValueError, match=r"divisible by 2\*\*6 = 64"):
        UNetGenerator(6, ngf=4)(torch.randn(1, 1, 32, 32))


def test_discriminator_refuses_bad_arguments_and_small_inputs():
    with pytest.raises(ValueError, match="layers must be >= 1"):
        PatchDiscriminator(0)
    with pytest.raises(ValueError, match="channels"):
        PatchDiscriminator(3, channels=0)
    with pytest.raises(ValueError, match="at least 32x32"):
        PatchDiscriminator(3, ndf=4)(torch.randn(1, 1, 16, 16))


def _resnet_count(blocks: int, channels: int = 1, ngf: int = 64) -> int:
    """The reference ResnetGenerator's parameters from its layers (instance norm, so every conv has a bias)."""
    conv = lambda k, cin, cout: k * k * cin * cout + cout  # noqa: E731
    return (conv(7, channels, ngf) + conv(3, ngf, 2 * ngf) + conv(3, 2 * ngf, 4 * ngf)
            + blocks * 2 * conv(3, 4 * ngf, 4 * ngf)
            + conv(3, 4 * ngf, 2 * ngf) + conv(3, 2 * ngf, ngf) + conv(7, ngf, channels))


@pytest.mark.parametrize("name,blocks,count", [("resnet_9blocks", 9, 11_365_633), ("resnet_6blocks", 6, 7_825_153)])
def test_resnet_generators_have_the_references_parameters_names_and_shapes(name, blocks, count):
    ours = ResNetGenerator(blocks, 1, ngf=64)
    ref = define_G(1, 1, 64, name, norm="instance")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == count
    assert count == _resnet_count(blocks)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 36, 36) * 2 - 1  # a multiple of 4, not of 8: the ResNet needs no more
    with torch.no_grad():
        y = ours(x)
        assert y.shape == ref(x).shape == (2, 1, 36, 36)
        assert torch.equal(y, ref(x))


@pytest.mark.parametrize("netG,depth", [("unet_128", 7), ("unet_256", 8)])
def test_our_unet_holds_the_references_unet(netG, depth):
    """The same module order and names, so state dicts swap both ways; dropout (no weights) is off at eval."""
    ours = UNetGenerator(depth, 1, ngf=4, dropout=0.5)
    ref = define_G(1, 1, 4, netG, norm="instance", use_dropout=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 2**depth, 2**depth) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), ref.eval()(x))


def test_resnet_refuses_sides_not_divisible_by_4_and_bad_arguments():
    with pytest.raises(ValueError, match="divisible by 4"):
        ResNetGenerator(1, ngf=4)(torch.randn(1, 1, 30, 30))
    for kwargs, match in (({"blocks": -1}, "blocks"), ({"ngf": 0}, "ngf"), ({"dropout": 1.0}, "dropout")):
        with pytest.raises(ValueError, match=match):
            ResNetGenerator(**kwargs)


@pytest.mark.parametrize("generator,kind", [("unet", UNetGenerator), ("resnet_9blocks", ResNetGenerator),
                                            ("resnet_6blocks", ResNetGenerator)])
def test_the_config_names_the_generator(generator, kind):
    g = build_generator(TrainConfig(generator=generator, resize=32, unet_depth=5, ngf=4))
    assert isinstance(g, kind)
    blocks = sum(isinstance(m, ResnetBlock) for m in g.modules())
    assert blocks == {"unet": 0, "resnet_9blocks": 9, "resnet_6blocks": 6}[generator]
    # The ResNet follows the reference CycleGAN (no dropout) whatever the U-Net's dropout knob says.
    assert not any(isinstance(m, torch.nn.Dropout) for m in g.modules()) or generator == "unet"
