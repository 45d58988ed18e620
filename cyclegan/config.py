"""The one configuration of a CycleGAN run: every knob, validated, frozen.

The field names are the project's vocabulary: the same name means the same knob in a space file,
in `--set key=value`, in a checkpoint and in `trials.csv`. Defaults are the study's chosen run V4
(256x256, batch 2, U-Net depth 8, PatchGAN with 3 stride-2 blocks, 100 epochs) with the reference
PyTorch CycleGAN's loss (LSGAN) and optimiser settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

CHOICES: dict[str, tuple[str, ...]] = {
    "gan_loss": ("lsgan", "bce"),
    "upsample": ("transpose", "resize"),
    "lr_schedule": ("constant", "linear"),
    "precision": ("auto", "fp32", "bf16"),
    "generator": ("unet", "resnet_9blocks", "resnet_6blocks"),
}
# The knobs that shape the U-Net only; a ResNet generator (the reference's, cyclegan/networks.py) has none of them.
UNET_KNOBS = ("unet_depth", "dropout", "upsample")
# The ResNet generator halves the image twice and doubles it back: sizes must divide by 4.
RESNET_DIVISOR = 4


# Measured on an H100 at 256x256, depth 8 (docs/benchmarks.md), with the native InstanceNorm: channels_last is 11%
# faster at batch 2, even at batch 4, and 5% slower at batch 5 and 11% at batch 8. With `fused_norm` it is faster at
# every batch (on an H200: +19% at batch 5, +7% at 32).
CHANNELS_LAST_BELOW_BATCH = 5
# cuDNN's timed algorithm picks (`cudnn_benchmark`) against its heuristics, each in a fresh process on an H200 with
# the fast path (docs/benchmarks.md): no faster at batch 2; +6.5% at 8, +3% at 16, +25% at 24, +26-27% at 32, +3-5%
# at 48 and 64 (256x256, depth 8); +23% at 32 and +6% at 128 (128x128, depth 7). The timing costs each new shape
# about 1-3 s once, which a trial at batch 8 or more earns back in its first few thousand pairs.
CUDNN_BENCHMARK_FROM_BATCH = 8


class ConfigError(ValueError):
    """A configuration key or value that is not allowed; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    # The study's knobs.
    resize: int = 256  # slices are resized to resize x resize
    batch_size: int = 2
    unet_depth: int = 8  # down-sampling blocks, each halving the image: resize a multiple of 2**unet_depth
    disc_layers: int = 3  # stride-2 blocks of the PatchGAN (3 gives the reference 70x70 receptive field)
    epochs: int = 100
    # The optimiser, as in the reference code.
    lr: float = 2e-4  # the generators'; the discriminators' is lr * lr_d_scale
    # TTUR (Heusel et al. 2017): the discriminators learn at their own rate; 1 is the reference's one rate for both.
    lr_d_scale: float = 1.0
    beta1: float = 0.5
    beta2: float = 0.999
    lr_schedule: str = "constant"  # "linear": constant for the first half, then linear decay to 0
    # Loss weights. Identity is relative to the cycle weight, as in the reference code (0.5 x 10 = 5).
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    lambda_disc: float = 0.5
    gan_loss: str = "lsgan"  # the reference PyTorch code; "bce" is the study's TensorFlow loss
    # Std of Gaussian noise added (in training only) to each translation before the other generator reconstructs it,
    # on the [-1, 1] scale. A generator can satisfy the cycle by hiding its input in faint high-frequency patterns
    # (Chu et al. 2017); noise on that channel makes hiding useless (Bashkirova et al. 2019). 0 turns it off.
    cycle_noise: float = 0.0
    # Architecture. "unet" is the study's U-Net; "resnet_9blocks" and "resnet_6blocks" the reference CycleGAN's
    # default generators. unet_depth, dropout and upsample (UNET_KNOBS) shape the U-Net only.
    generator: str = "unet"
    ngf: int = 64  # generator filters in the first block, doubling per block up to 8x
    ndf: int = 64
    dropout: float = 0.5  # on the three deepest up-sampling blocks, as in the reference U-Net
    upsample: str = "transpose"  # "resize": nearest up-sampling then conv, which avoids checkerboards
    pool_size: int = 50  # past fakes the discriminators also see; 0 turns the pool off
    seed: int = 0
    # Speed (docs/benchmarks.md measures each). "auto" is bf16 autocast on a GPU and fp32 on the CPU.
    # The other switches act on a GPU only; turning all off (with precision "fp32") gives plain eager fp32.
    precision: str = "auto"
    # NHWC for the bf16 convolutions. "auto" uses it with `fused_norm` at every batch; with the native InstanceNorm,
    # below CHANNELS_LAST_BELOW_BATCH only: from there up its layout copies cost more than NHWC saves
    # (docs/benchmarks.md). In NHWC the one-channel convolutions run as products over patches (cyclegan.one_channel).
    channels_last: bool | str = "auto"
    fused_adam: bool = True  # one fused kernel per optimizer step instead of a loop over the parameters
    cuda_graphs: bool = True  # replay the whole train step (and validation) as one CUDA graph
    # One generator's passes that need not wait on each other (translation, identity, cycle) run as one batch, and
    # each discriminator sees reals and fakes in one batch: the same outputs, fewer and fuller kernels.
    stacked_passes: bool = True
    # InstanceNorm by Triton kernels that keep the tensor's layout (cyclegan.fused_norm), not the native copies; the
    # convolutions before them skip the bias the norm cancels.
    fused_norm: bool = True
    # cuDNN times its algorithms for each new convolution shape and keeps the fastest, or picks by its heuristics.
    # "auto" times them from batch CUDNN_BENCHMARK_FROM_BATCH up: below it the steps are no faster and the timing
    # would hold a small trial's first step for seconds.
    cudnn_benchmark: bool | str = "auto"
    compile: bool = False  # torch.compile the networks: faster steps, but its compile outlasts a short trial
    sample_every: int = 5  # epochs between sample-translation images in TensorBoard

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        for key in ("channels_last", "cudnn_benchmark"):
            if getattr(self, key) not in (True, False, "auto"):
                raise ConfigError(f"{key}={_show(getattr(self, key))} is not allowed; expected true, false or 'auto'")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={_show(getattr(self, key))} is not allowed; expected one of {list(allowed)}")
        for f in fields(self):
            if f.type == "float" and not math.isfinite(getattr(self, f.name)):
                raise ConfigError(f"{f.name} must be a finite number, got {getattr(self, f.name)}")
        _at_least(self, resize=2, batch_size=1, unet_depth=1, disc_layers=1, epochs=1, ngf=1, ndf=1,
                  pool_size=0, sample_every=1, seed=0)
        if self.seed >= 2**32:  # numpy and torch seed generators with it (and the phantom with 3 * seed + k)
            raise ConfigError(f"seed must be < 2**32, got {_show(self.seed)}")
        if self.generator == "unet":
            self._check_unet_depth()
        elif self.resize % RESNET_DIVISOR:
            step = RESNET_DIVISOR
            near = [r for r in (self.resize // step * step, self.resize // step * step + step) if r > 0]
            raise ConfigError(f"generator={self.generator!r} needs resize divisible by {RESNET_DIVISOR}, got "
                              f"resize={_show(self.resize)}; use resize={' or '.join(map(str, near))}")
        if self.disc_layers + 2 > self.resize.bit_length() - 1:
            # The PatchGAN's two last 4x4 convs need at least a 4x4 map after its stride-2 blocks.
            raise ConfigError(f"disc_layers={_show(self.disc_layers)} needs resize >= 4 * 2**{_show(self.disc_layers)}"
                              f"{_power(self.disc_layers, 4)}, got resize={_show(self.resize)}")
        for key in ("lr", "lr_d_scale", "lambda_cycle"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("lambda_identity", "lambda_disc", "cycle_noise"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("beta1", "beta2", "dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(self, key)}")

    def _check_unet_depth(self) -> None:
        # Depths are compared by bit length, not as 2**depth: `--set unet_depth=1000000000` must be refused
        # at once, not after building a number of a billion bits.
        if self.unet_depth > self.resize.bit_length() - 1:
            raise ConfigError(
                f"unet_depth={_show(self.unet_depth)} needs resize >= 2**{_show(self.unet_depth)}"
                f"{_power(self.unet_depth)}, got resize={_show(self.resize)}; the deepest depth for "
                f"resize={_show(self.resize)} is {self.resize.bit_length() - 1}")
        if self.resize % (1 << self.unet_depth):
            # Each U-Net level halves the image and its skip joins the doubled-up level above: an odd size on
            # the way down leaves the two a pixel apart.
            step = 1 << self.unet_depth
            near = [r for r in (self.resize // step * step, self.resize // step * step + step) if r > 0]
            deepest = (self.resize & -self.resize).bit_length() - 1  # the power of 2 that divides resize
            raise ConfigError(
                f"unet_depth={_show(self.unet_depth)} needs resize divisible by 2**{_show(self.unet_depth)}"
                f"{_power(self.unet_depth)}, got resize={_show(self.resize)}; use resize="
                f"{' or '.join(map(str, near))}" + (f", or unet_depth <= {deepest}" if deepest else ""))

    @property
    def use_channels_last(self) -> bool:
        """Whether a GPU run keeps images and weights in channels_last (NHWC) layout."""
        if self.channels_last == "auto":
            return self.fused_norm or self.batch_size < CHANNELS_LAST_BELOW_BATCH
        return bool(self.channels_last)

    @property
    def use_cudnn_benchmark(self) -> bool:
        """Whether cuDNN times its convolution algorithms for this run's shapes rather than picking by heuristics."""
        if self.cudnn_benchmark == "auto":
            return self.batch_size >= CUDNN_BENCHMARK_FROM_BATCH
        return bool(self.cudnn_benchmark)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Builds a config from a dict, refusing keys that are not knobs."""
        if not isinstance(values, dict):  # e.g. a --config file holding a JSON list
            raise ConfigError(f"expected a mapping of knobs, got {type(values).__name__}")
        unknown = sorted(set(values) - set(FIELD_NAMES))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; known keys: {', '.join(FIELD_NAMES)}")
        # YAML and JSON hand back ints for floats written without a point (lr: 1 -> 1).
        fixed = {k: _as_float(v) if FIELD_TYPES[k] == "float" else v for k, v in values.items()}
        return cls(**fixed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))
FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(TrainConfig)}
# Number knobs fixed for a run's whole life: they set the networks' shapes (resize, depths, filters), the shapes of
# the state a checkpoint carries (the image pools), the data (the split and the batch order follow the seed) or the
# memory a run was sized for (batch_size). A new number knob that shapes a network belongs here too;
# tests/cyclegan/test_continuable.py builds the networks at two values of every other one to check.
FIXED_FOR_RUN: tuple[str, ...] = ("resize", "batch_size", "unet_depth", "disc_layers", "ngf", "ndf", "pool_size",
                                  "seed")
# The number knobs that may change between a checkpoint and the run that continues it (population-based training's
# exploit, a resume with --set, a replayed schedule): they act through the optimisers, the losses and the loop.
CONTINUABLE: tuple[str, ...] = tuple(name for name in FIELD_NAMES
                                     if FIELD_TYPES[name] in ("int", "float") and name not in FIXED_FOR_RUN)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parses `key=value` strings (from `--set`) into typed values, checking the keys exist.

    The value is read as a YAML scalar, so `lr=1e-4`, `compile=true` and `gan_loss=bce` all type
    themselves; whether the type fits the key is checked when the config is built.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if key not in FIELD_NAMES:
            raise ConfigError(f"--set {item!r}: unknown key {key!r}; known keys: {', '.join(FIELD_NAMES)}")
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError, RecursionError):
            # Not YAML, an impossible date (2024-13-45), an int too long to read, deep nesting: the raw
            # text is the value, and the type check below names it.
            value = raw
        if FIELD_TYPES[key] == "float":
            value = _as_float(value)
        _check_type(key, value, FIELD_TYPES[key], where=f"--set {item!r}: ")
        out[key] = value
    return out


def _as_float(v: Any) -> Any:
    # YAML 1.1 reads `1e-4` (no point) as a string and `1` as an int; both are fine floats.
    if _is_int(v):
        try:
            return float(v)
        except OverflowError:  # an int past 1.8e308: infinite, which the finite check refuses by name
            return math.inf if v > 0 else -math.inf
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_type(name: str, value: Any, type_name: Any, where: str = "") -> None:
    expected = {"int": _is_int, "float": lambda v: isinstance(v, float), "str": lambda v: isinstance(v, str),
                "bool": lambda v: isinstance(v, bool),
                "bool | str": lambda v: isinstance(v, (bool, str))}[str(type_name)]
    if not expected(value):
        raise ConfigError(f"{where}{name}={_show(value)} has the wrong type: expected {type_name}, "
                          f"got {type(value).__name__}")


def _at_least(cfg: TrainConfig, **minimums: int) -> None:
    for key, low in minimums.items():
        if getattr(cfg, key) < low:
            raise ConfigError(f"{key} must be >= {low}, got {_show(getattr(cfg, key))}")


def _power(exponent: int, factor: int = 1) -> str:
    # " = 512" after "2**9"; nothing where the number itself would be too long to be of use.
    return f" = {factor * 2**exponent}" if exponent < 64 else ""


def _show(value: Any) -> str:
    """A value for a one-line message: short, and never an error itself (Python refuses to print ints of
    more than 4300 digits, which a hex literal in --set can make)."""
    try:
        text = repr(value)
    except ValueError:
        return f"<an int of {value.bit_length()} bits>"
    return text if len(text) <= 80 else text[:77] + "..."
