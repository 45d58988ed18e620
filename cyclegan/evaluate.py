"""Scores a pair of generators on a split: the study's Table 3 rows, on the whole image and in the head,
and the metrics that need no pairs (cyclegan/unpaired.py): contrast, per-tissue contrast, realism, anatomy kept,
noisy cycle.

Same-contrast rows are cycle reconstructions (T1 -> T2 -> T1 against the T1 input). Cross-contrast rows
compare the translation with the true other contrast when the split is paired (the phantom), and with
the input slice otherwise, as the study did; `paired` says which. All figures are on the [0, 1] scale
with data_range=1 and averaged over slices, at the split's own size (val and test are held at the
dataset's `eval_size`, one size for models of any `resize`): a generator sees its input brought to the
model's size, and its output is brought back, as `cyclegan.translate` does for a user's slice.

    python -m cyclegan.evaluate --checkpoint DIR [--data DIR|synthetic] [--split test|val]

scores a training run, an export or the reference CycleGAN's generators (`latest_net_G_A.pth`, ...;
`cyclegan.reference`) on a data folder's split, the same slices a search scores its trials on, at full
precision, and prints the metrics (with their spread over slices, `<metric>_sd`) as JSON. A split of any size is
scored a chunk of slices at a time (`evaluate`), to the figures of the whole split at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from cyclegan.checkpoint import CheckpointError, add_model_arguments, load_model
from cyclegan.config import ConfigError
from cyclegan.data import VAL_SLICES, DataError, SliceSet, load_data, subset_indices
from cyclegan.metrics import (
    DIRECTIONS,
    IMAGE_METRICS,
    contrast_from_histograms,
    head_histogram,
    psnr_from_error,
    ssim,
    ssim_from_map,
    ssim_map,
)
from cyclegan.precision import tf32
from cyclegan.unpaired import (
    TEXTURE_RANGE,
    anatomy,
    anatomy_coarse,
    class_histograms,
    cycle_noise,
    cycle_noise_chunks,
    fine_band,
    noise_rows,
    reversed_w1,
    swd_from_patches,
    swd_patches,
    tissue_masks,
)

EVAL_BATCH = 16
# Slices a domain that `evaluate` (the finalists' re-score, the CLI) holds on the device at once: as many as the
# per-epoch pass, which fits wherever a trial trained, whatever the size of the split.
EVAL_CHUNK = VAL_SLICES


def resample(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 1, S, S] brought to size x size: bilinear, antialiased when shrinking; no copy when already there."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])


def validation_subset(s: SliceSet, most: int = VAL_SLICES) -> SliceSet:
    """The slices of `s` that are scored every epoch (`subset_indices` of each domain; paired: the same)."""
    i1, i2 = subset_indices(len(s.t1), most), subset_indices(len(s.t2), most)
    if len(i1) == len(s.t1) and len(i2) == len(s.t2):
        return s
    return replace(s, t1=s.t1[i1], t2=s.t2[i2], t1_head=s.t1_head[i1], t2_head=s.t2_head[i2],
                   t1_names=tuple(s.t1_names[i] for i in i1.tolist()),
                   t2_names=tuple(s.t2_names[i] for i in i2.tolist()))


@torch.no_grad()
def translate_all(g: nn.Module, x: torch.Tensor, autocast=nullcontext) -> torch.Tensor:
    """Runs a generator over [N, 1, S, S] in [-1, 1] in batches; returns fp32 in [-1, 1]."""
    outs = []
    for i in range(0, len(x), EVAL_BATCH):
        with autocast():
            outs.append(g(x[i:i + EVAL_BATCH]).float())
    return torch.cat(outs) if outs else x.float().clone()


@torch.no_grad()
def translations(g_t1_t2: nn.Module, g_t2_t1: nn.Module, s: SliceSet, autocast=nullcontext,
                 resize: int | None = None, noise: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """G(T1), F(G(T1)), F(T2) and G(F(T2)) of a split, in eval mode, as fp32 in [-1, 1] at the split's size.

    The generators run at `resize` (default: the split's `resize`, the size its models were trained at): each
    input is brought to it, the cycle's second generator takes the first's output as it is, and every output
    is brought back to the split's size. Interpolation keeps this sync-free, so it can be a CUDA graph.
    Also the noisy cycles F(G(T1) + n) and G(F(T2) + n) (`rec_t1_noisy`, `rec_t2_noisy`), n a fixed Gaussian
    noise (`unpaired.cycle_noise`, or `noise`: the noise of G(T1) and of F(T2), for a chunk of a split) and the
    sum clamped to [-1, 1], the range F and G were trained on.
    """
    size = resize or s.resize
    modes = [(g, g.training) for g in (g_t1_t2, g_t2_t1)]
    for g, _ in modes:
        g.eval()
    fake_t2 = translate_all(g_t1_t2, resample(s.t1, size), autocast)
    rec_t1 = translate_all(g_t2_t1, fake_t2, autocast)
    fake_t1 = translate_all(g_t2_t1, resample(s.t2, size), autocast)
    rec_t2 = translate_all(g_t1_t2, fake_t1, autocast)
    noise_t2, noise_t1 = noise or (cycle_noise(tuple(x.shape), x.device) for x in (fake_t2, fake_t1))
    rec_t1_noisy = translate_all(g_t2_t1, (fake_t2 + noise_t2).clamp(-1, 1), autocast)
    rec_t2_noisy = translate_all(g_t1_t2, (fake_t1 + noise_t1).clamp(-1, 1), autocast)
    for g, was_training in modes:
        g.train(was_training)
    outs = {"fake_t2": fake_t2, "rec_t1": rec_t1, "fake_t1": fake_t1, "rec_t2": rec_t2,
            "rec_t1_noisy": rec_t1_noisy, "rec_t2_noisy": rec_t2_noisy}
    return {k: resample(v, s.size) for k, v in outs.items()}


@torch.no_grad()
def per_slice(outs: dict[str, torch.Tensor], s: SliceSet) -> dict[str, torch.Tensor]:
    """The per-slice metrics (`SLICE_METRICS`) of every slice: {"ssim_t1_t1": [N], ...}.

    SSIM and PSNR, whole image and head, of the four rows are scored in one batched pass: one SSIM map and
    one error map serve both the whole image and the head mask. Then anatomy kept and the noisy cycles' head
    SSIM, each inside the input's head.
    """
    rows = {  # direction: (output, reference, head mask of the reference)
        "t1_t1": (outs["rec_t1"], s.t1, s.t1_head),
        "t2_t2": (outs["rec_t2"], s.t2, s.t2_head),
        "t1_t2": (outs["fake_t2"], s.t2, s.t2_head) if s.paired else (outs["fake_t2"], s.t1, s.t1_head),
        "t2_t1": (outs["fake_t1"], s.t1, s.t1_head) if s.paired else (outs["fake_t1"], s.t2, s.t2_head),
    }
    rows = [rows[d] for d in DIRECTIONS]
    sizes = [len(r[0]) for r in rows]
    out01, ref01 = ((torch.cat([r[k] for r in rows]) + 1) / 2 for k in (0, 1))
    head = torch.cat([r[2] for r in rows])
    smap, err = ssim_map(out01, ref01), (out01 - ref01) ** 2
    per_image = {("ssim", ""): ssim_from_map(smap), ("psnr", ""): psnr_from_error(err),
                 ("ssim", "_head"): ssim_from_map(smap, head), ("psnr", "_head"): psnr_from_error(err, head)}
    # Named as IMAGE_METRICS names them: metric, direction, then the suffix.
    out = {f"{metric}_{d}{suffix}": v for (metric, suffix), values in per_image.items()
           for d, v in zip(DIRECTIONS, values.split(sizes))}
    to01 = lambda x: (x + 1) / 2  # noqa: E731
    out["anatomy_t1_t2"] = anatomy(s.t1, outs["fake_t2"], s.t1_head)
    out["anatomy_t2_t1"] = anatomy(s.t2, outs["fake_t1"], s.t2_head)
    out["anatomy_coarse_t1_t2"] = anatomy_coarse(s.t1, outs["fake_t2"], s.t1_head)
    out["anatomy_coarse_t2_t1"] = anatomy_coarse(s.t2, outs["fake_t1"], s.t2_head)
    out["ssim_t1_t1_noisy"] = ssim(to01(outs["rec_t1_noisy"]), to01(s.t1), s.t1_head)
    out["ssim_t2_t2_noisy"] = ssim(to01(outs["rec_t2_noisy"]), to01(s.t2), s.t2_head)
    return out


@torch.no_grad()
def pooled_parts(outs: dict[str, torch.Tensor], s: SliceSet, images: int) -> dict[str, tuple]:
    """What each pooled metric (`POOLED_METRICS`) is made of, as (the translations', the real slices'): intensity
    histograms, which add up over the chunks of a split, and SWD patches, which gather. `images` is the whole
    split's slice count (of its larger domain), which sets SWD's patch grid whatever the chunk."""
    fake_t2, fake_t1, t1, t2 = ((x + 1) / 2 for x in (outs["fake_t2"], outs["fake_t1"], s.t1, s.t2))
    # Translations keep the input's anatomy, so the input's head mask and tissue classes are theirs. Each set's
    # classes serve both directions: as the input's in one, as the target's in the other.
    classes_t1, classes_t2 = tissue_masks(t1, s.t1_head), tissue_masks(t2, s.t2_head)
    band = lambda x, classes: class_histograms(fine_band(x), classes, TEXTURE_RANGE)  # noqa: E731
    return {"contrast_t1_t2": (head_histogram(fake_t2, s.t1_head), head_histogram(t2, s.t2_head)),
            "contrast_t2_t1": (head_histogram(fake_t1, s.t2_head), head_histogram(t1, s.t1_head)),
            "tissue_t1_t2": (class_histograms(fake_t2, classes_t1), class_histograms(t2, classes_t2)),
            "tissue_t2_t1": (class_histograms(fake_t1, classes_t2), class_histograms(t1, classes_t1)),
            "texture_t1_t2": (band(fake_t2, classes_t1), band(t2, classes_t2)),
            "texture_t2_t1": (band(fake_t1, classes_t2), band(t1, classes_t1)),
            "swd_t1_t2": (swd_patches(fake_t2, images), swd_patches(t2, images)),
            "swd_t2_t1": (swd_patches(fake_t1, images), swd_patches(t1, images))}


POOLED_FROM_PARTS = {"contrast": contrast_from_histograms, "tissue": reversed_w1, "texture": reversed_w1,
                     "swd": lambda fake, real: swd_from_patches(fake, real).mean()}


def metrics_from(slices: dict[str, torch.Tensor], pooled: dict[str, tuple]) -> torch.Tensor:
    """`IMAGE_METRICS` as one tensor from a split's `per_slice` values and `pooled_parts`: means over slices and
    the pooled metrics' distances."""
    done = {k: POOLED_FROM_PARTS[k.rsplit("_", 2)[0]](*parts) for k, parts in pooled.items()}
    return torch.stack([done[k] if k in done else slices[k].mean() for k in IMAGE_METRICS])


@torch.no_grad()
def scores(outs: dict[str, torch.Tensor], s: SliceSet) -> torch.Tensor:
    """The image metrics of `translations(...)` as one tensor in `IMAGE_METRICS` order, without a host sync."""
    return metrics_from(per_slice(outs, s), pooled_parts(outs, s, max(len(s.t1), len(s.t2))))


@torch.no_grad()
def validation_pass(g_t1_t2: nn.Module, g_t2_t1: nn.Module, s: SliceSet, autocast=nullcontext,
                    resize: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scores, translations) of a split on its device, with no host sync; `fit` replays it as a CUDA graph."""
    outs = translations(g_t1_t2, g_t2_t1, s, autocast, resize)
    return scores(outs, s), outs


def evaluate(g_t1_t2: nn.Module, g_t2_t1: nn.Module, s: SliceSet, autocast=nullcontext, spread: bool = False,
             resize: int | None = None, chunk: int = EVAL_CHUNK, device: torch.device | str | None = None
             ) -> dict[str, float]:
    """`IMAGE_METRICS` as plain floats: SSIM/PSNR of the four rows, whole image and head mask, and the unpaired
    metrics.

    `resize` is the models' input size (default: the split's `resize`). With `spread`, each per-slice metric
    also gets `<metric>_sd`: its sample standard deviation over the split's slices (0 for a single slice), so
    that a figure can be read against the slice-to-slice spread.

    The split is scored `chunk` slices a domain at a time, each chunk moved to `device` (default: the generators'),
    so `s` may stay on the host however large it is; the figures are those of the whole split at once (to float
    rounding; tests check it): `_in_chunks` says how. The chunk is rounded up where the cycle noise needs it
    (`unpaired.noise_rows`).
    """
    size = resize or s.resize
    params = next(iter(g_t1_t2.parameters()), None)
    device = device or (params.device if params is not None else s.t1.device)
    rows = noise_rows(chunk, (1, 1, size, size))
    noise = [cycle_noise_chunks((len(x), 1, size, size), rows, device) for x in (s.t1, s.t2)]
    none = torch.zeros((0, 1, size, size), device=device)  # the noise of a domain with no slices left

    def translated(part: SliceSet) -> dict[str, torch.Tensor]:
        return translations(g_t1_t2, g_t2_t1, part, autocast, resize, tuple(next(n, none) for n in noise))

    return _in_chunks(s, translated, rows, device, spread)


def _in_chunks(s: SliceSet, outputs, rows: int, device: torch.device | str, spread: bool = False
               ) -> dict[str, float]:
    """`IMAGE_METRICS` of a split whose outputs (`outputs(chunk)`, as `translations` gives them) are made and scored
    `rows` slices a domain at a time on `device`.

    Every figure that is not a mean of per-slice values pools over the split by a histogram (which adds up) or
    SWD's patches (a fixed grid on each slice, which gather; at most ~SWD_BUDGET a set and level): so the
    per-slice values and these are kept, chunk by chunk, and the figures made from them once at the end. The
    domains of an unpaired split may differ in length: the shorter one runs out first.
    """
    images = max(len(s.t1), len(s.t2))
    slices: dict[str, list[torch.Tensor]] = {}
    pooled: dict[str, list[tuple]] = {}
    for start in range(0, images, rows):
        part = _rows(s, start, start + rows).to(device)
        outs = outputs(part)
        for k, v in per_slice(outs, part).items():
            slices.setdefault(k, []).append(v)
        for k, v in pooled_parts(outs, part, images).items():
            pooled.setdefault(k, []).append(v)
    per = {k: torch.cat(v) for k, v in slices.items()}
    result = dict(zip(IMAGE_METRICS, metrics_from(per, {k: tuple(_gather(side) for side in zip(*v))
                                                         for k, v in pooled.items()}).tolist()))
    if spread:
        for k, v in per.items():
            result[f"{k}_sd"] = v.std().item() if len(v) > 1 else 0.0
    return result


def _gather(chunks: tuple) -> torch.Tensor | list[torch.Tensor]:
    """One statistic of the pooled metrics over a split from its chunks': histograms summed, patches gathered."""
    if isinstance(chunks[0], torch.Tensor):
        return torch.stack(chunks).sum(0)
    return [torch.cat(level) for level in zip(*chunks)]


def _rows(s: SliceSet, start: int, stop: int) -> SliceSet:
    """Slices start:stop of each domain of `s` (of a shorter domain, fewer or none)."""
    return replace(s, t1=s.t1[start:stop], t2=s.t2[start:stop], t1_head=s.t1_head[start:stop],
                   t2_head=s.t2_head[start:stop], t1_names=s.t1_names[start:stop], t2_names=s.t2_names[start:stop])


@torch.no_grad()
def yardstick(s: SliceSet, resize: int, truth: bool = False, chunk: int = EVAL_CHUNK) -> dict[str, float]:
    """`IMAGE_METRICS` of a paired split with each input copied as its own translation, or (`truth`) with the true
    other contrast as the translation, either brought to the model's size and back as a model's output is: what
    a model at `resize` scores by not translating at all, and the most it can score. Only the cross-contrast and
    unpaired metrics mean anything here (the cycle rows are the input against itself). Scored `chunk` slices at a
    time, as `evaluate` scores a split."""
    if not s.paired:
        raise ValueError("a yardstick needs a paired split: the true other contrast of each slice")

    def copied(part: SliceSet) -> dict[str, torch.Tensor]:
        through = lambda x: resample(resample(x, resize), part.size)  # noqa: E731
        fake_t2, fake_t1 = (through(part.t2), through(part.t1)) if truth else (through(part.t1), through(part.t2))
        return {"fake_t2": fake_t2, "fake_t1": fake_t1, "rec_t1": part.t1, "rec_t2": part.t2,
                "rec_t1_noisy": part.t1, "rec_t2_noisy": part.t2}

    return _in_chunks(s, copied, chunk, s.t1.device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cyclegan.evaluate", description=__doc__.splitlines()[0])
    add_model_arguments(p)
    p.add_argument("--data", default="synthetic", help="a folder holding T1/ and T2/, or 'synthetic' (default)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--seed", type=int, help="the phantom's seed (default: the model's); a folder's split has none")
    args = p.parse_args(argv)
    try:
        cfg, g_t1_t2, g_t2_t1 = load_model(args)
        dataset = load_data(args.data, cfg.resize, cfg.seed if args.seed is None else args.seed)
    except (CheckpointError, ConfigError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    split = getattr(dataset, args.split)  # on the host: scored chunk by chunk on the device
    with tf32(False):  # as the search re-scores its finalists: a comparison should not hang on rounding
        metrics = evaluate(g_t1_t2, g_t2_t1, split, spread=True, resize=cfg.resize, device=args.device)
    print(json.dumps({"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
                      "evaluation": "paired" if split.paired else "unpaired", "resize": cfg.resize,
                      "eval_size": dataset.eval_size, "slices": len(split.t1), **metrics}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
