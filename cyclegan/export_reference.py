"""Writes a model's generators in the reference CycleGAN's layout, for its own code to load.

    python -m cyclegan.export_reference --checkpoint DIR --out DIR

DIR is a training run's folder or an export (a search's `best/`). OUT gets `latest_net_G_A.pth` (T1 -> T2) and
`latest_net_G_B.pth` (T2 -> T1), plain state dicts with the names of pytorch-CycleGAN-and-pix2pix's
ResnetGenerator or UnetGenerator, and `reference_options.txt`, the options that build them there
(`cyclegan.reference`). A U-Net with resize up-sampling, or of fewer than 5 levels, has no equivalent there and
is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cyclegan.checkpoint import CheckpointError, load_generators
from cyclegan.reference import LayoutError, write_pair


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cyclegan.export_reference", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a training run's folder or an export's")
    p.add_argument("--out", type=Path, required=True, help="the folder to write the reference's files into")
    args = p.parse_args(argv)
    try:
        cfg, g_t1_t2, g_t2_t1 = load_generators(args.checkpoint)
        written = write_pair(cfg, g_t1_t2, g_t2_t1, args.out)
    except (CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except LayoutError as e:
        print(f"error: {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(p.name for p in written)} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
