"""Compiles the fused InstanceNorm's Triton kernels before the trials that launch them.

A trial process compiles each kernel the first time it launches it, about 3 s of a fresh process's warm-up on an H200,
and every process of a search's first wave does so at once. Triton keeps what it compiles in its on-disk cache
(`TRITON_CACHE_DIR`, by default ~/.triton/cache), where any later process on the machine finds it in milliseconds.
`search.run` starts this module in a child process while Ray starts, for the kernels of its first trials:

    python -m cyclegan.compile_ahead --capability 90 bf16:nhwc:32 bf16:nhwc:64
    python -m cyclegan.compile_ahead --capability 90 --configs '[{"resize": 128, "unet_depth": 7}]'

Each kernel set is DTYPE:LAYOUT:CHANNELS; `--configs` (TrainConfig knobs as JSON) names them by the trials instead,
whose sets this process works out (`norm_kernel_sets`: their networks built on the meta device), so that the driver
that starts it need not import torch for it. It compiles for the given compute
capability without calling CUDA (`norm_kernels.compiling_for`), then the kernels' C launchers, which link against the
NVIDIA driver's libcuda (where it is missing, only the launchers are left to the trials). It needs Triton and a C
compiler, not a GPU, and adds no client to a GPU that trials share under MPS. It prints one JSON line: the sets,
the seconds they took, and why the launchers were not built, if they were not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import torch
from torch import nn

from cyclegan.config import TrainConfig

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LAYOUTS = {"nhwc": True, "nchw": False}


def norm_kernel_sets(cfg: TrainConfig) -> set[str]:
    """The norm kernels a GPU trial of `cfg` launches, as DTYPE:LAYOUT:CHANNELS, one per channel count of its
    networks' InstanceNorms (none without `fused_norm`). The networks are built on the meta device: no memory."""
    if not cfg.fused_norm:
        return set()
    from cyclegan.train import CycleGAN

    with torch.device("meta"):
        models = CycleGAN.build(cfg)
    # Every norm follows a convolution, which autocast runs in bf16 (cyclegan/train.py: Trainer.build).
    dtype = "fp32" if cfg.precision == "fp32" else "bf16"
    layout = "nhwc" if cfg.use_channels_last else "nchw"
    return {f"{dtype}:{layout}:{m.num_features}" for net in models.named().values() for m in net.modules()
            if type(m) is nn.InstanceNorm2d}


def parse_set(text: str) -> tuple[torch.dtype, bool, int]:
    """(dtype, NHWC?, channels) of DTYPE:LAYOUT:CHANNELS; ValueError naming what is wrong."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in DTYPES or parts[1] not in LAYOUTS or not parts[2].isdigit():
        raise ValueError(f"kernel set {text!r}: expected DTYPE:LAYOUT:CHANNELS, DTYPE one of {sorted(DTYPES)}, "
                         f"LAYOUT one of {sorted(LAYOUTS)}, e.g. bf16:nhwc:64")
    return DTYPES[parts[0]], LAYOUTS[parts[1]], int(parts[2])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cyclegan.compile_ahead", description=__doc__.splitlines()[0])
    # One per process: Triton's JIT keeps the first target it compiles for (norm_kernels.compiling_for).
    p.add_argument("--capability", type=int, required=True,
                   help="the GPU's compute capability as major*10+minor, e.g. 90")
    p.add_argument("sets", nargs="*", metavar="DTYPE:LAYOUT:CHANNELS")
    p.add_argument("--configs", metavar="JSON", help="a JSON list of TrainConfig knobs: compile their kernel sets too")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.configs is not None:
            configs = [TrainConfig.from_dict(c) for c in json.loads(args.configs)]
            args.sets = sorted({*args.sets, *(s for cfg in configs for s in norm_kernel_sets(cfg))})
        sets = [parse_set(s) for s in args.sets]
    except ValueError as e:  # a set or JSON that does not parse, or a ConfigError
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not sets:
        print("error: no kernel set: give DTYPE:LAYOUT:CHANNELS, or --configs of trials with the fused norm",
              file=sys.stderr)
        return 2
    compiling = time.perf_counter()
    with warnings.catch_warnings():
        # Triton 3.9's notice that its FMA-fusion default changes in 3.10: the kernels do not depend on it.
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
        from cyclegan import norm_kernels

        with norm_kernels.compiling_for(args.capability):
            kernels = [k for dtype, channels_last, channels in sets
                       for k in norm_kernels.compile_for(dtype, channels_last, channels)]
        compiled = time.perf_counter() - compiling
        try:
            norm_kernels.build_launchers(kernels)
            launchers = None
        except Exception as e:  # noqa: BLE001 - e.g. no libcuda here: each process builds its own at its first launch
            launchers = (str(e).strip().splitlines() or [type(e).__name__])[0]
    print(json.dumps({"sets": args.sets, "capability": args.capability, "kernels_seconds": round(compiled, 3),
                      "seconds": round(time.perf_counter() - start, 3),
                      **({"launchers_not_built": launchers} if launchers else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
