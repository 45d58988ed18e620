"""Every norm shape of spaces/full.yaml's networks through the kernels, forward and backward, for
`compute-sanitizer --tool memcheck python docs/benchmarks/h200-2026-12-04c/sanitize_norm.py` (run C)."""

import itertools

import torch

from cyclegan import norm_kernels

shapes = 0
for dtype, channels_last in ((torch.bfloat16, True), (torch.float32, True), (torch.bfloat16, False)):
    for n, c, size in itertools.product((1, 2, 5), (32, 64, 128, 256, 512), (2, 4, 8, 16, 32, 64, 128)):
        if n * c * size * size > 2**22:
            continue
        x = torch.randn(n, c, size, size, device="cuda").to(dtype)
        g = torch.randn(n, c, size, size, device="cuda").to(dtype)
        if channels_last:
            x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
        y, read, mean, rstd, nhwc = norm_kernels.forward(x, 1e-5)
        norm_kernels.backward(read, g, mean, rstd, nhwc)
        torch.cuda.synchronize()
        shapes += 1
print("shapes", shapes, "ok", flush=True)
