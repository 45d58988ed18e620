from __future__ import annotations

import pytest
import torch

from cyclegan.networks import PatchDiscriminator, UNetGenerator


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
