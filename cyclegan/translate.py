"""Translates slices to the other contrast with a trained model.

    python -m cyclegan.translate --checkpoint DIR --direction t1-t2 INPUT... --out DIR

DIR is a training run's folder (`checkpoint.pt`) or an export (`model.pt`). Each INPUT is a PNG slice
or a folder of them; each output is a grey PNG of the input's own size and bit depth, with the same name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclegan.checkpoint import CheckpointError, load_generators
from cyclegan.data import IMAGE_SUFFIXES, DataError, pad_square, read_image, to_square
from cyclegan.images import save_png

DIRECTIONS = ("t1-t2", "t2-t1")


@torch.no_grad()
def translate_image(generator: torch.nn.Module, image: np.ndarray, resize: int) -> np.ndarray:
    """Translates one [H, W] slice in [0, 1] and returns it at its own size, in [0, 1]."""
    device = next(generator.parameters()).device
    x = torch.from_numpy(to_square(image, resize).copy())[None, None].to(device) * 2 - 1
    y = ((generator(x)[0, 0].float().cpu().numpy() + 1) / 2).clip(0, 1)
    side = pad_square(image).shape[0]
    back = np.asarray(Image.fromarray(y, mode="F").resize((side, side), Image.BILINEAR))
    h, w = image.shape
    top, left = (side - h) // 2, (side - w) // 2
    return back[top:top + h, left:left + w]


def expand_inputs(inputs: list[Path]) -> list[Path]:
    files = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path}: a folder with no {'/'.join(IMAGE_SUFFIXES)} slices")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def bit_depth(path: Path) -> int:
    with Image.open(path) as img:
        return 16 if img.mode.startswith("I") else 8


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cyclegan.translate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a training run's folder or an export's")
    p.add_argument("--direction", choices=DIRECTIONS, required=True)
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="PNG slices or folders of them")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        files = expand_inputs(args.inputs)
        # Every input is read before anything is written: a bad slice among many leaves --out as it was.
        slices = [(path, read_image(path), bit_depth(path)) for path in files]
        cfg, g_t1_t2, g_t2_t1 = load_generators(args.checkpoint, args.device)
        generator = g_t1_t2 if args.direction == "t1-t2" else g_t2_t1
        args.out.mkdir(parents=True, exist_ok=True)
        for path, image, bits in slices:
            save_png(translate_image(generator, image, cfg.resize), args.out / f"{path.stem}.png", bits=bits)
    except (CheckpointError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"translated {len(files)} slice(s) {args.direction} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
