"""Float precision switches shared by the search's re-scoring and the benchmark.

    with tf32(False):   # convolutions and matmuls in full fp32 on an Ampere-or-later GPU
        scores = evaluate(...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for convolutions and matmuls on or off, restored afterwards (the reference runs with it off)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
