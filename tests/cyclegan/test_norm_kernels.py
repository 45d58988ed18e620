"""The InstanceNorm kernels' arithmetic, on the CPU through Triton's interpreter (TRITON_INTERPRET=1), which runs
the same kernel source on host tensors; on a GPU, tests/cyclegan/test_fused_norm.py runs them compiled.

The interpreter is chosen when Triton is imported, so each check runs in its own process. And as the interpreter runs
what the compiler may refuse, each kernel is also compiled here for a GPU, without one."""

import itertools
import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

pytestmark = pytest.mark.skipif(find_spec("triton") is None,
                                reason="Triton is not installed: `pip install triton` (.ci/run does)")

CHECK = r"""
import json, sys
import torch
import torch.nn.functional as F
from cyclegan import norm_kernels

norm_kernels.TARGET_PROGRAMS = int(sys.argv[1])
rows = []
for dtype in (torch.float32, torch.bfloat16):
    for channels_last in (False, True):
        for shape in ((2, 8, 32, 32), (1, 40, 20, 12), (3, 72, 4, 4), (1, 16, 2, 2), (2, 1, 8, 8)):
            x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3 + 100).to(dtype)
            g = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
            if channels_last:
                x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
            y, read, mean, rstd, nhwc = norm_kernels.forward(x, 1e-5)
            # The gradient as autograd may hand it over: in the other layout.
            dx = norm_kernels.backward(read, g.contiguous(), mean, rstd, nhwc)
            # References from NCHW tensors: torch 2.13's CPU instance_norm backward is wrong for a channels_last
            # input and gradient (off by ~2 at C=40, in float64 too).
            xd = x.double().contiguous().requires_grad_()
            yd = F.instance_norm(xd, eps=1e-5)
            (yd * g.double().contiguous()).sum().backward()
            xn = x.contiguous().requires_grad_()
            yn = F.instance_norm(xn, eps=1e-5)
            (yn * g.contiguous()).sum().backward()
            rows.append({
                "case": f"{dtype} channels_last={channels_last} {shape}", "fp32": dtype == torch.float32,
                "same_layout": y.stride() == x.stride() and dx.stride() == x.stride(),
                "dtype": y.dtype == dx.dtype == dtype,
                "y": (y.double() - yd).abs().max().item(), "y_native": (yn.double() - yd).abs().max().item(),
                "dx": (dx.double() - xd.grad).abs().max().item() / xd.grad.abs().max().item(),
                "dx_native": (xn.grad.double() - xd.grad).abs().max().item() / xd.grad.abs().max().item(),
                "mean": (mean.double() - x.double().mean((2, 3)).flatten()).abs().max().item(),
            })
print(json.dumps(rows))
"""


# A loop with a bound known at launch, which every kernel here has. Triton 3.6's interpreter cannot run it with
# NumPy 2.3 or later (it takes int() of a one-element array); the compiled kernels are unaffected.
PROBE = r"""
import torch, triton, triton.language as tl

@triton.jit
def add(x_ptr, n):
    for i in range(0, n):
        tl.store(x_ptr + i, tl.load(x_ptr + i) + 1)

x = torch.zeros(3)
add[(1,)](x, 3)
assert x.tolist() == [1, 1, 1]
"""


def _interpret(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("programs", [1, 512], ids=["one stretch a plane, many tiles", "many stretches"])
def test_the_kernels_are_instance_norm_to_rounding_in_both_layouts(programs):
    """Statistics merged tile by tile (one program a plane) and stretch by stretch (the default grid), against
    float64: a mean of 100 against a spread of 3 is where sums of squares in fp32 would lose the variance."""
    out = _interpret(CHECK, str(programs))
    if out.returncode != 0 and (probe := _interpret(PROBE)).returncode != 0:
        pytest.skip(f"this Triton's interpreter cannot run a loop: {probe.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 20
    for r in rows:
        assert r["same_layout"] and r["dtype"], r
        assert r["mean"] < 1e-4, r
        if r["fp32"]:
            assert r["y"] <= max(2 * r["y_native"], 1e-5) and r["dx"] <= max(2 * r["dx_native"], 1e-5), r
        else:
            # bf16 out: the rounding of the output (2**-8 relative, values up to ~4); the interpreter rounds bf16
            # towards zero where the GPU rounds to nearest, so one step, not half of one.
            assert r["y"] <= 2**-5 and r["dx"] <= 2**-6, r


@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")  # Triton 3.9 on its default changing
def test_the_kernels_compile_for_a_gpu_without_one():
    """The interpreter runs what the compiler may refuse (types, constexpr use), so each kernel is also compiled here
    for an H100/H200 (sm_90) by Triton's own compiler and assembler, in both layouts and both dtypes."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from cyclegan import norm_kernels

    shapes = ("C", "L", "chunk", "S", "tiles")
    # Each kernel's pointers in order: "t" in the tensor's dtype, "f" fp32 (statistics and partials).
    pointers = {"_partial_moments": "tff", "_normalize": "ttffff", "_partial_grad_sums": "ttffff",
                "_input_grad": "tttffff"}
    compiled = 0
    for name, kinds in pointers.items():
        fn = getattr(norm_kernels, name)
        params = fn.arg_names
        for channels_last, dtype in itertools.product((True, False), ("bf16", "fp32")):
            bl, bc = norm_kernels._blocks(channels_last, 64)
            constants = {"CHANNELS_LAST": channels_last, "BL": bl, "BC": bc, "BS": norm_kernels.MAX_STRETCHES}
            signature = dict(zip(params, (f"*{dtype}" if k == "t" else "*fp32" for k in kinds)))
            signature |= {p: "i32" for p in shapes} | {p: "fp32" for p in params if p == "eps"}
            signature |= {p: "constexpr" for p in params if p not in signature}
            source = ASTSource(fn=fn, signature=signature, constexprs={p: constants[p] for p in params
                                                                          if signature[p] == "constexpr"})
            kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32))
            assert kernel.asm["cubin"]
            compiled += 1
    assert compiled == 16
