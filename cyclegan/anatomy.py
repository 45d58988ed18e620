"""A paired T1/T2 benchmark with real anatomy: tissue maps from real slices, both contrasts simulated from them.

    python -m cyclegan.phantom --from DIR --out OUT [--seed S]

DIR holds `T1/` and/or `T2/` PNG slices (8/16-bit, grey or RGB, any size; NIfTI volumes there are ignored).
Each slice is cut into soft tissue fractions (air, scalp fat, skull, CSF, grey and white matter) using the
known intensity order of its contrast (T1w: CSF < GM < WM; T2w: WM < GM < CSF): the brain is the tissue
inside the dark skull ring, its intensities split by multi-Otsu thresholds, and each pixel's fractions are
the linear interpolation of its intensity between the neighbouring class centres (partial volume). Both
contrasts are then simulated from the same fractions with the phantom's spin-echo equation, one receive
bias field for the pair and Rician noise. The anatomy of `DIR/T1/slice_010.png` is written as
`OUT/T1/T1-slice_010.png` and `OUT/T2/T1-slice_010.png`: a folder whose T1/ and T2/ hold the same names is
paired. `OUT/phantom.json` records the source, the seed, the tissue parameters and the anatomies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_multiotsu
from skimage.morphology import disk

from cyclegan import phantom as ph
from cyclegan.data import DOMAINS, IMAGE_SUFFIXES, DataError, _slice_order, head_mask, read_image
from cyclegan.phantom import AIR, BONE, CSF, FAT, GM, TISSUES, WM

MARKER = "cyclegan.anatomy real-anatomy phantom"  # phantom.json's "kind": what may be overwritten
# Brain tissue codes from darkest to brightest in each source contrast.
BRAIN_ORDER = {"T1": (CSF, GM, WM), "T2": (WM, GM, CSF)}
# Inside the head, a pixel under this share of the head's median intensity is skull (or CSF in T1w):
# the ring that separates the scalp from the brain in both contrasts.
DARK_SHARE = 0.5
MIN_HEAD_PIXELS = 64
OUTER_QUANTILES = (0.05, 0.95)  # of the scalp-and-skull region's intensities: skull's and fat's centres


@dataclass(frozen=True)
class Anatomy:
    fractions: np.ndarray  # float32 [len(TISSUES), H, W], summing to 1 at each pixel
    labels: np.ndarray  # uint8 [H, W], the largest fraction's tissue code
    centres: dict[str, float]  # source intensity of each class centre, for the record


def tissue_fractions(image: np.ndarray, contrast: str) -> Anatomy:
    """Soft tissue fractions of a [0, 1] slice of contrast "T1" or "T2"."""
    if contrast not in BRAIN_ORDER:
        raise ValueError(f"contrast must be one of {sorted(BRAIN_ORDER)}, got {contrast!r}")
    head = head_mask(image)
    fractions = np.zeros((len(TISSUES), *image.shape), np.float32)
    fractions[AIR] = ~head
    centres: dict[str, float] = {}
    if head.sum() >= MIN_HEAD_PIXELS:
        brain = _brain_mask(image, head, contrast)
        outer = head & ~brain
        for region, order in ((brain, BRAIN_ORDER[contrast]), (outer, (BONE, FAT))):
            if not region.any():
                continue
            # Outside the brain, skin and muscle sit between the dark skull and bright fat: the ends are the centres.
            c = (_class_centres(image[region], len(order)) if region is brain else
                 np.quantile(image[region], OUTER_QUANTILES) + np.array([0.0, 1e-4]))
            for tissue, hat in zip(order, np.eye(len(order))):
                # Piecewise-linear "hat" of each class: 1 at its centre, 0 at its neighbours', flat beyond the ends.
                fractions[tissue][region] = np.interp(image[region], c, hat)
            centres.update({TISSUES[t]: round(float(v), 4) for t, v in zip(order, c)})
        # Bone never meets the air on an axial slice: the head's outermost layer is skin and fat. Kept bright,
        # it closes the scalp ring in both contrasts, so the simulated heads are whole where the source's was.
        edge = head & ~ndimage.binary_erosion(head, disk(max(1, round(0.025 * np.sqrt(head.sum())))))
        fractions[FAT][edge] += fractions[BONE][edge]
        fractions[BONE][edge] = 0.0
    labels = np.argmax(fractions, axis=0).astype(np.uint8)
    return Anatomy(fractions, labels, centres)


def _brain_mask(image: np.ndarray, head: np.ndarray, contrast: str) -> np.ndarray:
    """The brain with its CSF: the tissue that CSF and skull wall off from the scalp, sulci and ventricles closed in.

    In T1w the wall is dark (skull and CSF alike); in T2w the skull is about as grey as white matter, so the wall
    is the bright CSF layer under it, with the darkest lines (dura, cortical bone).
    """
    size = np.sqrt(head.sum())  # ~ the head's diameter in pixels
    values = image[head]
    wall = image < DARK_SHARE * np.median(values)
    bright = np.zeros_like(head)
    if contrast == "T2":
        bright = image > _class_cuts(values, 3)[-1]
        wall |= bright
    tissue = ndimage.binary_opening(head & ~wall, disk(1))  # cut thin bridges through gaps in the wall
    rim = head & ~ndimage.binary_erosion(head, disk(max(1, round(0.01 * size))))
    comp, count = ndimage.label(tissue)
    sizes = ndimage.sum(tissue, comp, range(1, count + 1))
    touching = set(np.unique(comp[rim]))
    inner = [(s, k) for k, s in enumerate(sizes, start=1) if k not in touching]
    if inner and max(inner)[0] > 0.1 * head.sum():
        core = comp == max(inner)[1]
    else:  # no wall found: take the head less a scalp-and-skull band
        core = ndimage.binary_erosion(head, disk(max(1, round(0.06 * size))))
    r = max(1, round(0.025 * size))
    padded = np.pad(core, r)  # closing near the image edge must not be cut by it
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(padded, disk(r))[r:-r, r:-r])
    brain &= head
    if contrast == "T2":
        # The CSF around the brain, however thick: bright pockets that touch the brain and not the scalp's edge.
        comp, _ = ndimage.label(bright & head & ~brain)
        touching = np.setdiff1d(np.unique(comp[ndimage.binary_dilation(brain) & (comp > 0)]), np.unique(comp[rim]))
        brain |= np.isin(comp, touching)
    else:  # in T1w the CSF layer is as dark as the skull: a thin layer of it is taken
        brain |= ndimage.binary_dilation(brain, disk(max(1, round(0.012 * size)))) & wall & head
    return brain


def _class_cuts(values: np.ndarray, classes: int) -> np.ndarray:
    try:
        return threshold_multiotsu(values, classes=classes)
    except ValueError:  # too few distinct values for the thresholds
        return np.quantile(values, np.arange(1, classes) / classes)


def _class_centres(values: np.ndarray, classes: int) -> np.ndarray:
    """Median intensity of each multi-Otsu class, strictly increasing (np.interp needs it)."""
    try:
        cuts = threshold_multiotsu(values, classes=classes)
        idx = np.digitize(values, cuts)
        c = np.array([np.median(values[idx == k]) if (idx == k).any() else np.nan for k in range(classes)])
    except ValueError:  # too few distinct values for the thresholds
        c = np.full(classes, np.nan)
    if not np.isfinite(c).all():
        c = np.quantile(values, (np.arange(classes) + 0.5) / classes)
    return np.maximum.accumulate(c) + 1e-4 * np.arange(classes)


@dataclass(frozen=True)
class Pair:
    t1: np.ndarray  # float32 [H, W] in [0, 1]
    t2: np.ndarray
    anatomy: Anatomy


def simulate(image: np.ndarray, contrast: str, rng: np.random.Generator) -> Pair:
    """Both contrasts of one real slice's anatomy, with one bias field for the pair and Rician noise."""
    anatomy = tissue_fractions(image, contrast)
    bias_rng, noise_rng = rng.spawn(2)
    h, w = image.shape
    side = max(h, w)  # coordinates scaled by the longer side, so the field is not stretched on a long slice
    y, x = np.meshgrid((np.arange(h) + 0.5 - h / 2) * 2 / side, (np.arange(w) + 0.5 - w / 2) * 2 / side,
                       indexing="ij")
    bias = ph.bias_field(np.array([0.5]), x.astype(np.float32), y.astype(np.float32), bias_rng)[0]
    # The mix of the tissues' signals by their fractions: partial volume, straight from the source's pixels.
    t1, t2 = (ph.acquire(np.tensordot(ph.spin_echo(tr, te).astype(np.float32), anatomy.fractions, axes=1),
                         bias, noise_rng) for tr, te in ((ph.T1W_TR, ph.T1W_TE), (ph.T2W_TR, ph.T2W_TE)))
    return Pair(t1, t2, anatomy)


def read_sources(src: Path) -> list[tuple[str, Path, np.ndarray]]:
    """(contrast, path, image) of every PNG slice under src/T1 and src/T2, in slice order; refuses a bad folder."""
    if not src.is_dir():
        raise DataError(f"{src}: no such folder; expected a data folder holding T1/ and/or T2/")
    folders = [src / d for d in DOMAINS if (src / d).is_dir()]
    if not folders:
        raise DataError(f"{src}: neither T1/ nor T2/ is there; expected PNG slices in T1/ and/or T2/")
    out = [(f.name, p, read_image(p)) for f in folders
           for p in sorted((p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                           key=_slice_order)]
    if not out:
        raise DataError(f"{src}: no slices in {' or '.join(f.name + '/' for f in folders)}; "
                        f"expected {'/'.join(IMAGE_SUFFIXES)} files")
    return out


def _previous_output(out: Path) -> list[Path] | None:
    """The files a previous run wrote into `out` (to replace), [] for an empty or absent folder, None otherwise."""
    if not out.exists():
        return []
    if not out.is_dir():
        return None
    if not any(out.iterdir()):
        return []
    try:
        record = json.loads((out / "phantom.json").read_text())
        names = [a["name"] for a in record["anatomies"]] if record.get("kind") == MARKER else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if names is None:
        return None
    return [out / d / n for d in DOMAINS for n in names] + [out / "phantom.json"]


def write_benchmark(src: Path, out: Path, seed: int = 0) -> dict:
    """Simulates every slice of `src` into `out`/T1 and `out`/T2 under one name; returns phantom.json's record."""
    sources = read_sources(src)
    previous = _previous_output(out)
    if previous is None:
        raise DataError(f"{out}: not empty and not a previous phantom output (no phantom.json of kind "
                        f"{MARKER!r}); choose an empty or new --out")
    names = [f"{contrast}-{path.stem}.png" for contrast, path, _ in sources]
    for p in previous:
        p.unlink(missing_ok=True)
    for d in DOMAINS:
        (out / d).mkdir(parents=True, exist_ok=True)
    anatomies = []
    for k, ((contrast, path, image), name) in enumerate(zip(sources, names)):
        # One stream per anatomy, keyed by its place in the sorted sources: the same folder gives the same files.
        pair = simulate(image, contrast, np.random.default_rng([seed, k]))
        for d, img in zip(DOMAINS, (pair.t1, pair.t2)):
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(out / d / name)
        anatomies.append({"name": name, "source": f"{contrast}/{path.name}", "contrast": contrast,
                          "shape": list(image.shape), "class_centres": pair.anatomy.centres})
    record = {
        "kind": MARKER,
        "source": str(src.resolve()),
        "seed": seed,
        "sequences": {"T1": {"TR_ms": ph.T1W_TR, "TE_ms": ph.T1W_TE}, "T2": {"TR_ms": ph.T2W_TR, "TE_ms": ph.T2W_TE}},
        "tissues": {t: {"T1_ms": p[0], "T2_ms": p[1], "PD": p[2]} for t, p in zip(TISSUES, ph.TISSUE_PROPS.tolist())},
        "bias_amplitude": ph.BIAS_AMPLITUDE,
        "noise_sigma": ph.NOISE_SIGMA,
        "anatomies": anatomies,
    }
    (out / "phantom.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
