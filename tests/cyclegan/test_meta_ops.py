"""`cyclegan.meta_ops.MetaOps` answers repeated meta-device ops from a memo: the memory traces it speeds up count
the same bytes, and each kind of op it answers comes back as PyTorch would give it.

    python -m pytest tests/cyclegan/test_meta_ops.py -q
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from cyclegan import memory
from cyclegan.config import TrainConfig
from cyclegan.meta_ops import MetaOps, memo_size

CONFIGS = [
    TrainConfig(resize=32, unet_depth=5, ngf=8, ndf=8, disc_layers=2),
    TrainConfig(resize=64, unet_depth=6, ngf=16, ndf=8, disc_layers=3, dropout=0.5, upsample="resize"),
    TrainConfig(resize=64, unet_depth=5, ngf=16, ndf=16, generator="resnet_6blocks", lambda_identity=0.0),
    TrainConfig(resize=32, unet_depth=5, ngf=8, ndf=8, disc_layers=2, precision="fp32", gan_loss="bce",
                cycle_noise=0.1),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.generator}-{c.resize}-{c.unet_depth}-{c.precision}")
def test_a_trace_counts_the_same_bytes_with_its_ops_answered_from_the_memo(cfg: TrainConfig) -> None:
    saved, validation, scoring = (inspect.unwrap(f) for f in (
        memory._saved_per_pair, memory._validation_bytes, memory._scoring_bytes))  # the traces, run afresh
    knobs = tuple(getattr(cfg, k) for k in memory._MODEL_KNOBS)
    plain = saved(cfg), validation(knobs, 6, 5, 64), scoring(6, 5, 64)
    with MetaOps():
        first = saved(cfg), validation(knobs, 6, 5, 64), scoring(6, 5, 64)  # fills the memo with these ops
        again = saved(cfg), validation(knobs, 6, 5, 64), scoring(6, 5, 64)  # every op a repeat
    assert plain == first == again and min(plain[0][1], *plain[1:]) > 0


def test_a_repeated_op_gets_a_new_tensor_of_the_shape_strides_and_dtype_the_op_gives() -> None:
    x = torch.empty(2, 3, 16, 16, device="meta").to(memory_format=torch.channels_last)
    w = torch.empty(4, 3, 3, 3, device="meta")
    expected = F.conv2d(x, w, stride=2, padding=1)
    with MetaOps():
        F.conv2d(x, w, stride=2, padding=1)
        size = memo_size()
        outs = [F.conv2d(x, w, stride=2, padding=1) for _ in range(2)]
        assert memo_size() == size  # answered, not run
        other = F.conv2d(x, w, stride=1, padding=1)  # another argument: run, and remembered apart
    for out in outs:
        assert (out.shape, out.stride(), out.dtype, out.device.type) == (
            expected.shape, expected.stride(), expected.dtype, "meta")
    assert outs[0].untyped_storage() is not outs[1].untyped_storage()
    assert other.shape == (2, 4, 16, 16)


def test_scalars_of_equal_value_and_another_type_are_other_arguments() -> None:
    ints = torch.empty(3, dtype=torch.int64, device="meta")
    with MetaOps():
        assert torch.add(ints, 1).dtype == torch.int64
        assert torch.add(ints, 1.0).dtype == torch.float32
        assert torch.add(ints, True).dtype == torch.int64
        assert torch.add(ints, 1).dtype == torch.int64


def test_inputs_of_another_dtype_or_layout_are_other_inputs() -> None:
    x = torch.empty(2, 4, 8, 8, device="meta")
    with MetaOps():
        for _ in range(2):
            assert torch.mul(x, 2).dtype == torch.float32
            assert torch.mul(x.to(torch.bfloat16), 2).dtype == torch.bfloat16
            nhwc = x.to(memory_format=torch.channels_last)
            assert torch.mul(nhwc, 2).stride() == nhwc.stride() != x.stride() == torch.mul(x, 2).stride()


def test_in_place_ops_return_their_tensor_and_views_share_its_storage() -> None:
    x = torch.empty(2, 8, 4, 4, device="meta")
    with MetaOps():
        for _ in range(2):
            assert F.leaky_relu(x, 0.2, inplace=True) is x
            assert torch.nn.init.uniform_(x) is x
            v = x.view(2, 8, 16)
            assert v.untyped_storage() is x.untyped_storage() and v.shape == (2, 8, 16)


def test_ops_on_real_tensors_compute_as_usual() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    with MetaOps():
        for _ in range(2):
            y = x * 2 + 1
            assert torch.equal(y, torch.tensor([[1.0, 3.0, 5.0], [7.0, 9.0, 11.0]]))
            z = x.clone()
            z.add_(1)
            assert torch.equal(z, x + 1)
