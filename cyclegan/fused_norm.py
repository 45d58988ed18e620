"""InstanceNorm on a GPU as compiled kernels that keep the tensor's layout.

`F.instance_norm` views its input as one (1, N*C, H, W) batch for the batch-norm kernels; a channels_last
tensor is copied to that layout first, and the next channels_last convolution copies the result back. At the
study's batch of 2 those copies were the largest kernel of the train step (docs/benchmarks.md, "profile").
Written as a fp32 mean-and-variance reduction and one elementwise pass, torch.compile (Inductor) turns the
norm, forward and backward, into fused reduction and elementwise kernels that read and write the tensor in
whatever layout it has. It is compiled once for all shapes (dynamic), and Inductor's on-disk cache lets every
later process on the machine (the next trials of a search) load it instead of compiling again.

The arithmetic is the native kernels': statistics in fp32 (biased variance, as `F.instance_norm`), the output
in the input's dtype. Modules keep their class's state (none: no affine weights, no running stats), so
checkpoints load either way. On the CPU the native `F.instance_norm` runs.
"""

from __future__ import annotations

import functools
import os
import warnings
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

# A trial compiles one graph per dtype, layout and grad mode it meets (train step, validation, an fp32 trial
# after a bf16 one in the same process); the default of 8 would send later ones back to eager Python.
RECOMPILE_LIMIT = 64
# Inductor compiles with a pool of up to 32 processes per compiling process, which the search's first wave starts
# eight times at once on one node's cores. One thread each compiled the norm faster there: eight fresh trials at once,
# cold cache, one H200 node of 16 cores, warm-up median 11.7 s against 15.4 s (docs/benchmarks.md).
COMPILE_THREADS = 1


@functools.cache
def compile_settings() -> AbstractContextManager:
    """Inductor's settings for the norm's own compiles, not for a user's torch.compile of the networks (`compile`):
    one compile thread, unless the user chose a number (TORCHINDUCTOR_COMPILE_THREADS, which Inductor reads itself).

    One object a process, entered on every eager call of the norm: a new patch costs four times as much to make and
    enter, and Inductor's patch keeps what it replaced per thread and context, so the one object can be re-entered."""
    if "TORCHINDUCTOR_COMPILE_THREADS" in os.environ:
        return nullcontext()
    import torch._inductor.config

    return torch._inductor.config.patch(compile_threads=COMPILE_THREADS)


def instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """`F.instance_norm(x, eps=eps)` without affine weights or running statistics, for [N, C, H, W]."""
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)


_compiled = None
# Why compiling failed in this process (no C compiler for Triton's launcher, no Triton), once it has.
_failed: str | None = None


def compiled_instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """`instance_norm` compiled; where compiling fails, a one-line warning and the native kernel from then on."""
    global _compiled, _failed
    if _failed is None:
        if _compiled is None:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
            # Inductor's own modules still use torch.jit.script_method, which warns once per process on compile.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated")
            # dynamic: one compile serves every layer's shape (and every trial's), not one compile per shape.
            _compiled = torch.compile(instance_norm, dynamic=True)
        try:
            with compile_settings():
                return _compiled(x, eps)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - a machine that cannot compile still trains, on the native kernel
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                raise  # a half-recorded graph: the capture's own fallback (graphed.Replay) takes over
            _failed = (str(e).strip().splitlines() or [type(e).__name__])[0]
            warnings.warn(f"fused_norm: compiling InstanceNorm failed, using the native kernel ({_failed})",
                          stacklevel=2)
    return F.instance_norm(x, eps=eps)


class FusedInstanceNorm2d(nn.InstanceNorm2d):
    """`nn.InstanceNorm2d(affine=False, track_running_stats=False)`, compiled on a GPU (see the module's doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dim() == 4:
            # Inside a torch.compile'd network (`compile`), the plain function: the outer compile fuses it itself.
            return instance_norm(x, self.eps) if torch.compiler.is_compiling() else compiled_instance_norm(x, self.eps)
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
