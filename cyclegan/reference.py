"""Generators of the reference CycleGAN (junyanz/pytorch-CycleGAN-and-pix2pix) in and out.

The reference saves each network as a plain state dict: `checkpoints/NAME/latest_net_G_A.pth` (G_A, A -> B) and
`latest_net_G_B.pth` (G_B, B -> A), or `<epoch>_net_G_A.pth`. This project reads A as T1 and B as T2 (trainA/
held the T1 slices, as in cyclegan/train.py's naming): G_A is our T1 -> T2 generator, G_B our T2 -> T1. A model
trained the other way round is read with `t1_is="B"`.

`read_pair` infers each generator's architecture from its state dict's names and shapes (no options file needed):
- ResnetGenerator (`resnet_9blocks`, `resnet_6blocks`; `model.1.weight` a 7x7 conv): our `ResNetGenerator` has the
  reference's module order, so the weights load as they are.
- UnetGenerator (`unet_256`, `unet_128`, or any number of downs; `model.model.0.weight` a 4x4 conv, nested
  `model.model.1.model.3...`): our `UNetGenerator` with transposed-conv up-sampling has the same modules and names;
  the one difference, where dropout sits, holds no weights and does nothing in eval mode.
Both with instance norm, the reference CycleGAN's (`--norm instance`); a batch-norm generator is refused. Grey
(`input_nc 1`) and RGB (`input_nc 3`) models both read grey slices: an RGB one sees the slice in all three channels
(as the reference's loader makes RGB of a grey PNG) and its three outputs are averaged.

`write_pair` writes our generators in that layout (with the options that rebuild them in the reference's code),
so that its `test.py` can run them.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cyclegan.config import ConfigError, TrainConfig
from cyclegan.networks import ResNetGenerator, UNetGenerator

GENERATOR_FILES = ("latest_net_G_A.pth", "latest_net_G_B.pth")
OPTIONS_FILE = "reference_options.txt"
RESNET_BLOCKS = {9: "resnet_9blocks", 6: "resnet_6blocks"}
UNET_NAMES = {8: "unet_256", 7: "unet_128"}
# The reference's UnetGenerator always has its four outer levels and the innermost one.
MIN_UNET_DOWNS = 5
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


class LayoutError(ValueError):
    """A file that is not a reference generator this code can hold; the message names the file."""


@dataclass(frozen=True)
class Layout:
    """What a reference generator's state dict says it is."""

    net: str  # "resnet" or "unet"
    input_nc: int
    output_nc: int
    ngf: int
    depth: int  # residual blocks of a ResNet, downs of a U-Net
    dropout: bool  # a ResNet's dropout moves its blocks' second conv (conv_block.6, not .5)

    @property
    def name(self) -> str:
        """The reference's name for it (its `--netG`), or the class and its downs where `--netG` names none."""
        if self.net == "resnet":
            return RESNET_BLOCKS[self.depth]
        return UNET_NAMES.get(self.depth, f"UnetGenerator of {self.depth} downs")

    @property
    def generator(self) -> str:
        """The config's name for it (`TrainConfig.generator`)."""
        return "unet" if self.net == "unet" else RESNET_BLOCKS[self.depth]

    def build(self) -> nn.Module:
        if self.net == "resnet":
            return ResNetGenerator(self.depth, self.input_nc, self.ngf, 0.5 if self.dropout else 0.0,
                                   out_channels=self.output_nc)
        return UNetGenerator(self.depth, self.input_nc, self.ngf, 0.0, "transpose", out_channels=self.output_nc)


class GreyAdapter(nn.Module):
    """Runs a generator of `input_nc` channels on grey [N, 1, H, W] slices: the slice in every input channel, the
    output channels averaged."""

    def __init__(self, net: nn.Module, input_nc: int, output_nc: int) -> None:
        super().__init__()
        self.net, self.input_nc, self.output_nc = net, input_nc, output_nc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.expand(-1, self.input_nc, -1, -1) if self.input_nc != 1 else x)
        return y.mean(1, keepdim=True) if self.output_nc != 1 else y


def pair_files(path: Path) -> tuple[Path, Path] | None:
    """(G_A, G_B) files where `path` is a reference checkpoints folder or one of its `*_net_G_A.pth` or
    `*_net_G_B.pth` files; None where it is neither (an export or run of this project, or nothing)."""
    path = Path(path)
    if path.is_dir():
        files = tuple(path / name for name in GENERATOR_FILES)
        return files if any(f.is_file() for f in files) else None
    match = re.fullmatch(r"(.*)_net_G_([AB])\.pth", path.name)
    if match is None:
        return None
    return path.with_name(f"{match[1]}_net_G_A.pth"), path.with_name(f"{match[1]}_net_G_B.pth")


def read_pair(files: tuple[Path, Path], device: str | torch.device = "cpu", t1_is: str = "A"
              ) -> tuple[TrainConfig, nn.Module, nn.Module]:
    """(config, T1 -> T2 generator, T2 -> T1 generator) from a reference pair, in eval mode.

    The config says what the generators are (generator, ngf, unet_depth) and the size they run at: the size the
    reference trains them at by default (its crop_size, 256; a U-Net's 2**downs, so unet_128's 128).
    """
    if t1_is not in ("A", "B"):
        raise ValueError(f"t1_is must be 'A' or 'B', got {t1_is!r}")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise LayoutError(f"{missing[0]}: no such file; a reference pair needs both {files[0].name} and "
                          f"{files[1].name}")
    loaded = [load_generator(f) for f in files]
    (layout_a, g_a), (layout_b, g_b) = loaded
    if layout_a != layout_b:
        raise LayoutError(f"{files[1]}: {layout_b} is not the architecture of {files[0].name} ({layout_a})")
    default = 2**layout_a.depth if layout_a.net == "unet" else 256
    try:
        cfg = TrainConfig(generator=layout_a.generator, ngf=layout_a.ngf, resize=default, dropout=0.0,
                          upsample="transpose", **({"unet_depth": layout_a.depth} if layout_a.net == "unet" else {}))
    except ConfigError as e:
        raise LayoutError(f"{files[0]}: {e}") from None
    g_t1_t2, g_t2_t1 = (g_a, g_b) if t1_is == "A" else (g_b, g_a)
    return cfg, g_t1_t2.to(device).eval(), g_t2_t1.to(device).eval()


def load_generator(path: Path) -> tuple[Layout, nn.Module]:
    """One reference generator file as (its layout, a module that reads and writes grey slices)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or hostile file can fail in the unpickler in any way
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LayoutError(f"{path}: unreadable as a state dict ({why})") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LayoutError(f"{path}: not a plain state dict of tensors, as the reference's save_networks writes")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    layout = infer_layout(state, path)
    net = layout.build()
    # Instance norm keeps no statistics; checkpoints of old PyTorch versions hold some, which the reference drops too.
    state = {k: v for k, v in state.items() if not k.endswith(_NORM_STATS)}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        why = " ".join(x.strip() for x in str(e).splitlines()[1:] if x.strip())[:300]
        raise LayoutError(f"{path}: not a reference {layout.name} of the shapes its first layer says ({why})") from None
    if (layout.input_nc, layout.output_nc) != (1, 1):
        net = GreyAdapter(net, layout.input_nc, layout.output_nc)
    return layout, net.eval()


def infer_layout(state: dict[str, torch.Tensor], path: Path) -> Layout:
    """The architecture a reference generator's state dict names; refuses any other in one line."""
    first = state.get("model.1.weight")
    if first is not None and first.ndim == 4 and tuple(first.shape[2:]) == (7, 7):
        _refuse_batch_norm(state, path)
        blocks = {int(m[1]) for k in state if (m := re.fullmatch(r"model\.(\d+)\.conv_block\.1\.weight", k))}
        if len(blocks) not in RESNET_BLOCKS:
            raise LayoutError(f"{path}: a ResnetGenerator of {len(blocks)} blocks; allowed: "
                              f"{' or '.join(f'{n} ({name})' for n, name in RESNET_BLOCKS.items())}")
        last = max((int(m[1]), v) for k, v in state.items() if (m := re.fullmatch(r"model\.(\d+)\.weight", k)))[1]
        dropout = any(k.endswith("conv_block.6.weight") for k in state)
        return Layout("resnet", first.shape[1], last.shape[0], first.shape[0], len(blocks), dropout)
    first = state.get("model.model.0.weight")
    if first is not None and first.ndim == 4 and tuple(first.shape[2:]) == (4, 4):
        _refuse_batch_norm(state, path)
        # Level L's layers sit under L + 2 nested `model.`s: model.model.1.model.3.model.1.weight is level 2's.
        downs = max(k.count("model.") for k in state) - 1
        if downs < MIN_UNET_DOWNS:
            raise LayoutError(f"{path}: a UnetGenerator of {downs} downs; allowed: {MIN_UNET_DOWNS} or more")
        out = state["model.model.3.weight"].shape[1] if "model.model.3.weight" in state else 0
        return Layout("unet", first.shape[1], out, first.shape[0], downs, False)
    raise LayoutError(f"{path}: not a reference generator's layout; allowed: a ResnetGenerator (model.1.weight a 7x7 "
                      "conv) or a UnetGenerator (model.model.0.weight a 4x4 conv) of pytorch-CycleGAN-and-pix2pix")


def _refuse_batch_norm(state: dict[str, torch.Tensor], path: Path) -> None:
    # Batch norm has weights and running statistics; instance norm as the reference CycleGAN uses it has neither.
    stats = sorted(k for k in state if k.endswith(".running_mean") and k.replace("running_mean", "weight") in state)
    if stats:
        raise LayoutError(f"{path}: a generator with batch norm ({stats[0].rsplit('.', 1)[0]}); allowed: instance "
                          "norm (--norm instance, the reference CycleGAN's default)")


def reference_options(cfg: TrainConfig, input_nc: int = 1, output_nc: int = 1) -> str:
    """The reference's options that build generators of `cfg`'s architecture; refuses one it has no equivalent of."""
    common = f"--ngf {cfg.ngf} --input_nc {input_nc} --output_nc {output_nc} --norm instance --no_dropout"
    if cfg.generator != "unet":
        return f"--netG {cfg.generator} {common}"
    if cfg.upsample != "transpose":
        raise LayoutError(f"upsample={cfg.upsample!r} has no equivalent in the reference's UnetGenerator, which "
                          "up-samples by transposed convolution; allowed: upsample 'transpose' or a ResNet generator")
    if cfg.unet_depth < MIN_UNET_DOWNS:
        raise LayoutError(f"unet_depth={cfg.unet_depth}: the reference's UnetGenerator has at least "
                          f"{MIN_UNET_DOWNS} downs; allowed: unet_depth >= {MIN_UNET_DOWNS}")
    if cfg.unet_depth in UNET_NAMES:
        return f"--netG {UNET_NAMES[cfg.unet_depth]} {common}"
    # define_G names only the 7- and 8-down U-Nets; the class itself takes any number.
    return (f"UnetGenerator(input_nc={input_nc}, output_nc={output_nc}, num_downs={cfg.unet_depth}, ngf={cfg.ngf}, "
            "norm_layer=get_norm_layer('instance'), use_dropout=False) in place of define_G's netG; " + common)


def write_pair(cfg: TrainConfig, g_t1_t2: nn.Module, g_t2_t1: nn.Module, out: Path) -> list[Path]:
    """Writes our two generators as `latest_net_G_A.pth` (T1 -> T2) and `latest_net_G_B.pth` (T2 -> T1), plain state
    dicts with the reference's names, and `reference_options.txt`, the options that rebuild them there."""
    nets = [getattr(g, "_orig_mod", g) for g in (g_t1_t2, g_t2_t1)]
    # A reference pair read in (an RGB one wears a GreyAdapter) goes out as it came.
    channels = (nets[0].input_nc, nets[0].output_nc) if isinstance(nets[0], GreyAdapter) else (1, 1)
    nets = [g.net if isinstance(g, GreyAdapter) else g for g in nets]
    options = reference_options(cfg, *channels)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, g in zip(GENERATOR_FILES, nets):
        state = g.state_dict()
        torch.save(OrderedDict((k, v.detach().cpu().clone()) for k, v in state.items()), out / name)
        written.append(out / name)
    (out / OPTIONS_FILE).write_text(
        f"# G_A = T1 -> T2, G_B = T2 -> T1 (testA/ holds T1 slices); trained at {cfg.resize}x{cfg.resize}.\n"
        f"# This folder is CHECKPOINTS/NAME: python test.py --dataroot DIR --checkpoints_dir CHECKPOINTS --name NAME "
        f"--model cycle_gan --load_size {cfg.resize} --crop_size {cfg.resize} --eval, with\n{options}\n")
    written.append(out / OPTIONS_FILE)
    return written
