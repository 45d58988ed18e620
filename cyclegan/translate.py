"""Translates slices to the other contrast with a trained model.

    python -m cyclegan.translate --checkpoint DIR --direction t1-t2 INPUT... --out DIR

DIR is a training run's folder (`checkpoint.pt`), an export (`model.pt`), or the reference CycleGAN's generators
(pytorch-CycleGAN-and-pix2pix: a folder holding `latest_net_G_A.pth` and `latest_net_G_B.pth`, or one of them; G_A
is read as T1 -> T2 unless `--reference-t1 B`; see `cyclegan.reference`). Each INPUT is a PNG slice, a
NIfTI volume (.nii, .nii.gz) or a folder of them. A PNG comes out as a grey PNG of its own size and bit
depth, with the same name. A volume comes out as one volume of the same name, shape, affine and header:
every slice along its axial axis (as `cyclegan.nifti` chooses it, the same as in training) is translated,
and the intensities are mapped back to the input's range by inverting the volume's percentile scaling.
Empty slices (no head; not trained on) are written as they were read, not translated: a generator has
never seen air-only slices and would paint into them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cyclegan.checkpoint import CheckpointError, add_model_arguments, load_model
from cyclegan.config import ConfigError
from cyclegan.data import IMAGE_SUFFIXES, DataError, read_image, to_square
from cyclegan.evaluate import EVAL_BATCH
from cyclegan.images import save_png
from cyclegan.nifti import NIFTI_SUFFIXES, is_nifti, read_volume, write_volume

DIRECTIONS = ("t1-t2", "t2-t1")


def translate_image(generator: torch.nn.Module, image: np.ndarray, resize: int) -> np.ndarray:
    """Translates one [H, W] slice in [0, 1] and returns it at its own size, in [0, 1]."""
    return translate_slices(generator, image[None], resize)[0]


@torch.no_grad()
def translate_slices(generator: torch.nn.Module, images: np.ndarray, resize: int) -> np.ndarray:
    """Translates [N, H, W] slices of one size in [0, 1], a batch at a time; returns [N, H, W] in [0, 1]."""
    device = next(generator.parameters()).device
    out = np.empty_like(images, dtype=np.float32)
    h, w = images.shape[1:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    for start in range(0, len(images), EVAL_BATCH):
        batch = np.stack([to_square(x, resize) for x in images[start:start + EVAL_BATCH]])
        x = torch.from_numpy(batch)[:, None].to(device) * 2 - 1
        y = ((generator(x)[:, 0].float().cpu().numpy() + 1) / 2).clip(0, 1)
        for i, one in enumerate(y):
            back = np.asarray(Image.fromarray(one, mode="F").resize((side, side), Image.BILINEAR))
            out[start + i] = back[top:top + h, left:left + w]
    return out


def translate_volume(generator: torch.nn.Module, path: Path, resize: int, out: Path) -> int:
    """Translates a NIfTI volume's head slices and writes the volume to `out`; returns the slices translated."""
    vol = read_volume(path)
    slices = vol.slices.copy()
    slices[vol.head] = translate_slices(generator, vol.slices[vol.head], resize)
    write_volume(vol, vol.restore(slices), out)
    return int(vol.head.sum())


def expand_inputs(inputs: list[Path]) -> list[Path]:
    files = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES or is_nifti(p))
            if not found:
                raise DataError(f"{path}: a folder with no {'/'.join(IMAGE_SUFFIXES + NIFTI_SUFFIXES)} files")
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
    p.add_argument("--direction", choices=DIRECTIONS, required=True)
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                   help="PNG slices, NIfTI volumes (.nii, .nii.gz), or folders of them")
    p.add_argument("--out", type=Path, required=True)
    add_model_arguments(p)
    args = p.parse_args(argv)
    try:
        files = expand_inputs(args.inputs)
        # Every PNG is read before anything is written: a bad slice among many leaves --out as it was.
        # (Volumes, which can be large, are read one at a time as they are translated.)
        images = {path: (read_image(path), bit_depth(path)) for path in files if not is_nifti(path)}
        cfg, g_t1_t2, g_t2_t1 = load_model(args)
        generator = g_t1_t2 if args.direction == "t1-t2" else g_t2_t1
        args.out.mkdir(parents=True, exist_ok=True)
        slices = volumes = 0
        for path in files:
            if is_nifti(path):
                slices += translate_volume(generator, path, cfg.resize, args.out / path.name)
                volumes += 1
            else:
                image, bits = images[path]
                save_png(translate_image(generator, image, cfg.resize), args.out / f"{path.stem}.png", bits=bits)
                slices += 1
    except (CheckpointError, DataError, ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"translated {slices} slice(s)" + (f" ({volumes} volume(s))" if volumes else "")
          + f" {args.direction} into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
