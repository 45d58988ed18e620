"""Checkpoints: one self-describing file, written atomically, read without unpickling code.

A training checkpoint (`checkpoint.pt`) holds the config, the epoch, the data split, all four networks,
both optimizers, the learning-rate schedulers, the image pools and the random number generators' states,
so that `fit` continues exactly where it stopped. An export (`model.pt`) holds the two generators, the
config, the metrics it was chosen on and the split: what `cyclegan.translate` needs and no more.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cyclegan import reference
from cyclegan.config import ConfigError, TrainConfig
from cyclegan.networks import build_generator

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint or export that is missing, damaged or from another architecture."""


def save(path: Path, payload: dict[str, Any], *, durable: bool = True) -> None:
    """Writes `payload` to `path` through a temporary name, so a crash never leaves half a file.

    A crash mid-write leaves the previous file whole (and a stray `.NAME.tmp`, overwritten by the next save).
    `durable`: the data is flushed to disk before the rename, and the rename itself after it, so that a power cut
    cannot leave the new name pointing at a file whose blocks were never written. A file that is copied elsewhere
    and deleted at once (a search trial's, which Ray Tune copies into the run's storage) needs neither.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def load(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Reads a checkpoint with `weights_only=True` (no arbitrary code), with a clear error if it is bad.

    `mmap`: map the file instead of reading it whole, so that only the tensors used are read; for a reader of the
    generators alone, which are a fraction of a training checkpoint (its optimizer moments and pools are most of it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - a damaged or hostile file can fail in the unpickler in any way
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]  # an empty file raises with no message
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({why})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "config" not in payload:
        raise CheckpointError(f"{path}: not a checkpoint of this project (format {FORMAT} expected)")
    return payload


def find(directory: Path) -> Path:
    """The checkpoint or export file in a training run's or an export's folder."""
    directory = Path(directory)
    if directory.is_file():
        return directory
    for name in (MODEL, CHECKPOINT):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: holds neither {MODEL} (an export) nor {CHECKPOINT} (a training run) nor "
                          f"{' and '.join(reference.GENERATOR_FILES)} (the reference CycleGAN's generators)")


def state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of a module, unwrapped from torch.compile so they load into a plain module."""
    return getattr(module, "_orig_mod", module).state_dict()


def load_generators(directory: Path, device: str | torch.device = "cpu", reference_t1: str = "A"
                    ) -> tuple[TrainConfig, nn.Module, nn.Module]:
    """Loads (config, T1->T2 generator, T2->T1 generator) from a run's or an export's folder, in eval mode.

    A folder of the reference CycleGAN's generators (`latest_net_G_A.pth`, `latest_net_G_B.pth`), or one of those
    files, loads too (`cyclegan.reference`): G_A translates T1 -> T2 unless `reference_t1` is "B".
    """
    pair = reference.pair_files(directory)
    if pair is not None:
        try:
            return reference.read_pair(pair, device, reference_t1)
        except reference.LayoutError as e:
            raise CheckpointError(str(e)) from None
    path = find(directory)
    payload = load(path, mmap=True)  # its errors already name the file
    try:
        return generators(payload, device)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def generators(payload: dict[str, Any], device: str | torch.device = "cpu") -> tuple[TrainConfig, nn.Module, nn.Module]:
    """(config, T1->T2 generator, T2->T1 generator) from a loaded checkpoint or export, in eval mode."""
    try:
        cfg = TrainConfig.from_dict(payload["config"])
        gens = []
        for key in ("g_t1_t2", "g_t2_t1"):
            g = build_generator(cfg)
            g.load_state_dict(payload["models"][key] if "models" in payload else payload[key])
            gens.append(g.to(device).eval())
    except (ConfigError, KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"does not match its own config ({str(e).splitlines()[0]})") from None
    return cfg, gens[0], gens[1]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """`--checkpoint`, `--device`, `--reference-t1` and `--resize`: how a command names the model `load_model` loads."""
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a training run's folder, an export's, or the reference CycleGAN's latest_net_G_A/B.pth")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reference-t1", choices=("A", "B"), default="A",
                   help="for the reference CycleGAN's generators: the domain that held T1 (default A: G_A is T1 -> T2)")
    p.add_argument("--resize", type=int, help="the size the generators see (default: the model's own training size)")


def load_model(args: argparse.Namespace) -> tuple[TrainConfig, torch.nn.Module, torch.nn.Module]:
    """(config, T1 -> T2, T2 -> T1) from `--checkpoint`, with `--resize` in the config where given."""
    cfg, g_t1_t2, g_t2_t1 = load_generators(args.checkpoint, args.device, args.reference_t1)
    if args.resize is not None:
        try:
            cfg = cfg.replace(resize=args.resize)
        except ConfigError as e:
            raise ConfigError(f"--resize {args.resize}: {e}") from None
    return cfg, g_t1_t2, g_t2_t1
