"""InstanceNorm on a GPU as Triton kernels that keep the tensor's layout.

`F.instance_norm` views its input as one (1, N*C, H, W) batch for the batch-norm kernels; a channels_last
tensor is copied to that layout first, and the next channels_last convolution copies the result back. At the
study's batch of 2 those copies were the largest kernel of the train step (docs/benchmarks.md, "profile").
`cyclegan.norm_kernels` reads and writes the tensor in whatever layout it has, forward and backward.

They replace a torch.compile of the same arithmetic, which a fresh trial process paid for with Dynamo's tracing and
Inductor's compile or cache loading (4-10 s of its warm-up in a search; docs/benchmarks.md). Triton compiles each
kernel once per dtype and layout for every shape, and its on-disk cache serves every later process on the machine.

A convolution whose output goes straight into such a norm has a bias the norm cancels: the norm subtracts each
channel's mean, and a per-channel constant with it. `skip_cancelled_biases` leaves that bias out: the same
outputs, without its add or the reduction of its gradient. On an H200 a train step at batch 32 took 65.3 ms instead
of 71.8, and batch 2 trained 12% more pairs a second (docs/benchmarks.md). The parameter stays, untouched,
so state dicts keep the reference's names and shapes both ways.

The arithmetic is the native kernels': statistics in fp32 (biased variance, as `F.instance_norm`), the output
in the input's dtype. Modules keep their class's state (none: no affine weights, no running stats), so
checkpoints load either way. On the CPU the native `F.instance_norm` runs.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn


def instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """`F.instance_norm(x, eps=eps)` without affine weights or running statistics, for [N, C, H, W], in plain
    ops: what a torch.compile'd network (`compile`) fuses itself."""
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)


class _KernelNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        from cyclegan import norm_kernels

        y, read, mean, rstd, ctx.channels_last = norm_kernels.forward(x, eps)
        ctx.save_for_backward(read, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        from cyclegan import norm_kernels

        x, mean, rstd = ctx.saved_tensors
        return norm_kernels.backward(x, dy, mean, rstd, ctx.channels_last), None


# Why the kernels failed in this process (no Triton, no C compiler for its launcher), once they have.
_failed: str | None = None


def kernel_instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """InstanceNorm by `cyclegan.norm_kernels`; where they fail, a one-line warning and the native kernel from then
    on."""
    global _failed
    if _failed is None:
        try:
            return _KernelNorm.apply(x, eps)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - a machine that cannot build the kernels still trains, natively
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                raise  # a half-recorded graph: the capture's own fallback (graphed.Replay) takes over
            _failed = (str(e).strip().splitlines() or [type(e).__name__])[0]
            warnings.warn(f"fused_norm: the InstanceNorm kernels failed, using the native kernel ({_failed})",
                          stacklevel=2)
    return F.instance_norm(x, eps=eps)


class FusedInstanceNorm2d(nn.InstanceNorm2d):
    """`nn.InstanceNorm2d(affine=False, track_running_stats=False)` by layout-keeping kernels on a GPU (see the
    module's doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dim() == 4:
            # Inside a torch.compile'd network (`compile`), the plain function: the outer compile fuses it itself.
            return instance_norm(x, self.eps) if torch.compiler.is_compiling() else kernel_instance_norm(x, self.eps)
        return super().forward(x)


def fuse_instance_norms(module: nn.Module) -> int:
    """Makes every plain InstanceNorm2d in `module` (no affine weights, no running stats) a FusedInstanceNorm2d,
    in place; returns how many. Parameters, buffers and state-dict names do not change (these have none)."""
    count = 0
    for m in module.modules():
        if type(m) is nn.InstanceNorm2d and not m.affine and not m.track_running_stats:
            m.__class__ = FusedInstanceNorm2d  # same fields, another forward: nothing to copy or re-register
            count += 1
    return count


class _BiasCancelledConv2d(nn.Conv2d):
    """An nn.Conv2d that an InstanceNorm without affine weights follows: its bias, which the norm cancels, is not
    added (see the module's doc). Its parameter stays, gets no gradient, and so never changes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, None)


class _BiasCancelledConvTranspose2d(nn.ConvTranspose2d):
    """`_BiasCancelledConv2d` for an nn.ConvTranspose2d, as the networks call it: without `output_size`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, self.output_padding, self.groups,
                                  self.dilation)


_CANCELLED = {nn.Conv2d: _BiasCancelledConv2d, nn.ConvTranspose2d: _BiasCancelledConvTranspose2d}


def skip_cancelled_biases(module: nn.Module) -> int:
    """Leaves out, in place, the bias of every convolution in `module` whose output an nn.Sequential hands straight
    to an InstanceNorm2d without affine weights (the conv may end a nested Sequential, as resize-then-convolve
    does); returns how many. Names, parameters and outputs do not change, up to rounding."""
    count = 0
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for before, after in zip(seq, list(seq)[1:]):
            while isinstance(before, nn.Sequential) and len(before):
                before = before[-1]
            plain_norm = isinstance(after, nn.InstanceNorm2d) and not after.affine and not after.track_running_stats
            swap = _CANCELLED.get(type(before))
            if plain_norm and swap is not None and before.bias is not None and before.padding_mode == "zeros":
                before.__class__ = swap  # same fields, another forward, as fuse_instance_norms does
                count += 1
    return count
