"""The convolutions with one image channel, as one matrix product over image patches, for channels_last on a GPU.

A convolution whose input has one channel (the generators' and discriminators' first) or a transposed one whose
output has one (the U-Net's last) is the one shape cuDNN runs badly in channels_last: at batch 32 on an H200 its
kernels for them and the copies between layouts around them took about 9.5 ms of a 56 ms train step
(docs/benchmarks.md). With one channel a patch is small (16 values for a 4x4 kernel): `F.unfold` gathers the
patches, one matrix product with the weights gives the output already in channels_last order, and `F.fold` is the
transposed convolution's scatter of patches back into the image. Side by side on an H200 the train step was 4-5%
faster at batch 2 and at 32, a fifth of those 9.5 ms, for 0.1-0.2 GiB more memory. Outputs are the convolution's,
up to rounding; the modules keep their class's parameters and names. A one-channel convolution whose bias an
InstanceNorm cancels (`cyclegan.fused_norm.skip_cancelled_biases`, the ResNet's first) is left to cuDNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """`F.conv2d` of a one-channel `x` [N, 1, H, W], returned in channels_last; in autocast's dtype, as cuDNN's."""
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, bias = (t if t is None else t.to(dtype) for t in (x, weight, bias))
    return _PatchProduct.apply(x, weight, bias, stride, padding, dilation)


class _PatchProduct(torch.autograd.Function):
    """The product writes straight into a new channels_last tensor. Returned as a view of the product's rows, it
    would make the in-place LeakyReLU that follows the first convolution of each U-Net and PatchGAN copy the whole
    gradient twice in backward (autograd's CopySlices): 0.35 ms of a 10.7 ms step at batch 2 on an H200."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
        n, _, h, w = x.shape
        out, _, kh, kw = weight.shape
        oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        with torch.autocast(x.device.type, enabled=False):  # the caller chose the dtype
            cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [N, kh*kw, oh*ow]
            rows = cols.transpose(1, 2).reshape(n * oh * ow, kh * kw)
            y = torch.empty(n, out, oh, ow, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
            flat = y.permute(0, 2, 3, 1).view(n * oh * ow, out)  # NHWC order: y's own memory
            wt = weight.reshape(out, kh * kw).t()
            torch.mm(rows, wt, out=flat) if bias is None else torch.addmm(bias, rows, wt, out=flat)
        ctx.save_for_backward(rows, weight)
        ctx.geometry = (h, w), (kh, kw), stride, padding, dilation
        ctx.with_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        size, kernel, stride, padding, dilation = ctx.geometry
        out = weight.shape[0]
        n = dy.shape[0]
        dx = dw = db = None
        with torch.autocast(dy.device.type, enabled=False):
            g = dy.permute(0, 2, 3, 1).reshape(-1, out).to(rows.dtype)  # a view if dy is channels_last
            if ctx.needs_input_grad[0]:
                drows = g @ weight.reshape(out, -1)  # [N*oh*ow, kh*kw]
                dcols = drows.view(n, -1, drows.shape[1]).transpose(1, 2)
                dx = F.fold(dcols, size, kernel, dilation=dilation, padding=padding, stride=stride)
            if ctx.needs_input_grad[1]:
                dw = (g.t() @ rows).view_as(weight)
            if ctx.with_bias and ctx.needs_input_grad[2]:
                db = g.sum(0, dtype=torch.promote_types(g.dtype, torch.float32)).to(g.dtype)
        return dx, dw, db, None, None, None


def patch_conv_transpose2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           stride: tuple[int, int], padding: tuple[int, int],
                           dilation: tuple[int, int]) -> torch.Tensor:
    """`F.conv_transpose2d` (no output padding, one group) whose weight [C, 1, kh, kw] gives one channel out."""
    n, c, h, w = x.shape
    _, _, kh, kw = weight.shape
    oh = (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + 1
    ow = (w - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + 1
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view of a channels_last x
    cols = (rows @ weight.reshape(c, kh * kw)).view(n, h * w, kh * kw).transpose(1, 2)  # [N, kh*kw, h*w]
    y = F.fold(cols, (oh, ow), (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [N, 1, oh, ow]
    return y if bias is None else y + bias.to(y.dtype).view(1, 1, 1, 1)  # in autocast's dtype, as cuDNN's


class _PatchConv2d(nn.Conv2d):
    """An nn.Conv2d of one input channel that runs as `patch_conv2d` on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return super().forward(x)
        return patch_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class _PatchConvTranspose2d(nn.ConvTranspose2d):
    """An nn.ConvTranspose2d of one output channel that runs as `patch_conv_transpose2d` on a GPU, called as the
    networks call it: without `output_size`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return super().forward(x)
        return patch_conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


_PATCHED = {nn.Conv2d: _PatchConv2d, nn.ConvTranspose2d: _PatchConvTranspose2d}


def patch_one_channel_convs(module: nn.Module) -> int:
    """Makes, in place, each plain convolution of `module` with one input channel, and each transposed one with one
    output channel, run as a product over patches on a GPU; returns how many. Names and parameters do not change."""
    count = 0
    for m in module.modules():
        # Zero padding given in pixels ("same" is a string), one group: what the patch products compute.
        if type(m) not in _PATCHED or m.padding_mode != "zeros" or isinstance(m.padding, str) or m.groups != 1:
            continue
        if type(m) is nn.Conv2d:
            one_channel = m.in_channels == 1
        else:  # a transposed convolution's output padding would not be a plain fold
            one_channel = m.out_channels == 1 and not any(m.output_padding)
        if one_channel:
            m.__class__ = _PATCHED[type(m)]
            count += 1
    return count
