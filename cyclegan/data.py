"""Slices in, tensors out: reading T1/T2 folders (or the built-in phantom) and splitting them.

A data folder holds `T1/` and `T2/` of PNG slices (8- or 16-bit, grey or RGB, any size) and/or NIfTI
volumes (`.nii`, `.nii.gz`; `cyclegan.nifti` says how a volume becomes axial slices in [0, 1], which
slices are dropped as empty, and how intensities are scaled). Each slice is padded to a square with
black (so anatomy keeps its proportions), resized to `resize`, and scaled to [-1, 1]. The whole set is
a handful of megabytes, so it lives as one tensor per split on the training device and batches are
gathered by index: no DataLoader.

The split keeps subjects apart. A domain's PNG slices are taken as one head (sorted by their number);
each volume is one subject, named by its file: `sub-01_T1w.nii.gz` and `sub-01_T2w.nii.gz` are both
subject `sub-01` (BIDS), `a_t1.nii` is `a`. When there are at least three subjects and each domain then
has one in train, one in val and one in test, whole subjects go to a split (`split_subjects`), the same
in both domains, so no head is seen in training and scored in test. Otherwise (one volume per domain,
or the PNG slices of one head) the split is by blocks of neighbouring slices, because neighbours are
near copies: a domain's slices, its heads one after the other, get a val block and a test block in each
of several segments spread from the bottom to the top, and the slice on either side of a held-out run is
left out of training (a "gap"), so no val or test slice has a neighbour in train (`split_labels`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from cyclegan.phantom import make_phantom

DOMAINS = ("T1", "T2")
IMAGE_SUFFIXES = (".png",)
MIN_SLICES = 10
# Held-out share of each domain for val and for test, spread over at least this many segments.
HELD_OUT_FRACTION = 0.12
MIN_SEGMENTS = 3
# Intensity above which a pixel of a [0, 1] slice belongs to the head, not the black background.
HEAD_THRESHOLD = 0.05
SYNTHETIC = "synthetic"
SYNTHETIC_SLICES = 60


class DataError(ValueError):
    """Data that cannot be used; the message names the file or folder and what was expected."""


@dataclass(frozen=True)
class SliceSet:
    """Slices of both contrasts in [-1, 1], [N, 1, S, S], with their head masks and names.

    When `paired`, t1[i] and t2[i] show the same anatomy, so translations can be scored against the truth.
    """

    t1: torch.Tensor
    t2: torch.Tensor
    t1_head: torch.Tensor
    t2_head: torch.Tensor
    t1_names: tuple[str, ...]
    t2_names: tuple[str, ...]
    paired: bool

    def to(self, device: torch.device | str) -> SliceSet:
        move = {k: getattr(self, k).to(device) for k in ("t1", "t2", "t1_head", "t2_head")}
        return SliceSet(**move, t1_names=self.t1_names, t2_names=self.t2_names, paired=self.paired)


@dataclass(frozen=True)
class Dataset:
    train: SliceSet
    val: SliceSet
    test: SliceSet
    source: str

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.train.to(device), self.val.to(device), self.test.to(device), self.source)

    def split(self) -> dict:
        """Which slice went where; written next to every run so results can be traced to slices."""
        return {"source": self.source, "paired_eval": self.val.paired,
                **{name: {"T1": list(s.t1_names), "T2": list(s.t2_names)}
                   for name, s in (("train", self.train), ("val", self.val), ("test", self.test))}}

    def save_split(self, path: Path) -> None:
        path.write_text(json.dumps(self.split(), indent=1) + "\n")


def load_data(source: str | Path, resize: int, seed: int = 0) -> Dataset:
    """Loads `source` (a folder with T1/ and T2/, or "synthetic") at `resize` x `resize`."""
    if str(source) == SYNTHETIC:
        return synthetic_data(resize, seed)
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder; expected a folder holding T1/ and T2/, or 'synthetic'")
    stacks = {domain: read_domain(root / domain, resize) for domain in DOMAINS}
    labels = split_stacks(stacks)
    per_domain = {}
    for domain, domain_stacks in stacks.items():
        names = [n for s in domain_stacks for n in s.names]
        images = torch.from_numpy(np.concatenate([s.images for s in domain_stacks])[:, None] * 2 - 1)
        per_domain[domain] = {part: ([n for n, lab in zip(names, labels[domain]) if lab == part],
                                     images[[i for i, lab in enumerate(labels[domain]) if lab == part]])
                              for part in ("train", "val", "test")}

    def part(name: str) -> SliceSet:
        (n1, x1), (n2, x2) = per_domain["T1"][name], per_domain["T2"][name]
        return _slice_set(x1, x2, n1, n2, paired=False)

    return Dataset(part("train"), part("val"), part("test"), source=str(root))


def synthetic_data(resize: int, seed: int = 0, n_slices: int = SYNTHETIC_SLICES) -> Dataset:
    """The built-in phantom: unpaired training (T1 and T2 of different subjects), paired val and test.

    Three subjects are drawn from `seed`: one gives the training T1 slices, one the training T2 slices,
    and the third both contrasts of the val and test slices, at levels split as a real folder would be.
    """
    labels = split_labels(n_slices)
    subjects = [make_phantom(n_slices, resize, seed=3 * seed + k) for k in range(3)]
    pick = lambda part: [i for i, lab in enumerate(labels) if lab == part]  # noqa: E731
    names = lambda subject, idx: [f"phantom{3 * seed + subject}_level{i:03d}" for i in idx]  # noqa: E731
    train = pick("train")
    parts = {"train": _slice_set(subjects[0].t1[train], subjects[1].t2[train], names(0, train), names(1, train),
                                 paired=False)}
    for part in ("val", "test"):
        idx = pick(part)
        parts[part] = _slice_set(subjects[2].t1[idx], subjects[2].t2[idx], names(2, idx), names(2, idx), paired=True)
    return Dataset(parts["train"], parts["val"], parts["test"], source=SYNTHETIC)


def split_labels(n: int) -> list[str]:
    """Labels n slices, sorted by level, as "train", "val", "test" or "gap" (see the module docstring)."""
    if n < MIN_SLICES:
        raise DataError(f"{n} slices cannot be split into train, val and test; at least {MIN_SLICES} are needed")
    # Three or more segments cover bottom, middle and top; a short stack gets fewer so training keeps most.
    segments = max(1, min(max(MIN_SEGMENTS, round(n / 30)), n // 8))
    run = max(1, round(n * HELD_OUT_FRACTION / segments))  # slices per val (and per test) block
    labels = ["train"] * n
    for k in range(segments):
        start = int(k * n / segments + (n / segments - 2 * run) / 2)  # val then test, mid-segment
        labels[start:start + run] = ["val"] * run
        labels[start + run:start + 2 * run] = ["test"] * run
    held = [lab in ("val", "test") for lab in labels]
    for i in range(n):
        if labels[i] == "train" and ((i > 0 and held[i - 1]) or (i < n - 1 and held[i + 1])):
            labels[i] = "gap"
    return labels


def split_stacks(stacks: dict[str, list[Stack]]) -> dict[str, list[str]]:
    """Labels every slice of each domain (its stacks one after the other): whole subjects where possible."""
    for domain, domain_stacks in stacks.items():
        n = sum(len(s.names) for s in domain_stacks)
        if n < MIN_SLICES:
            raise DataError(f"{domain}: {n} slices cannot be split into train, val and test; "
                            f"at least {MIN_SLICES} are needed")
    by_subject = split_subjects(sorted({s.subject for ss in stacks.values() for s in ss}))
    if by_subject and all({by_subject[s.subject] for s in ss} >= {"train", "val", "test"} for ss in stacks.values()):
        return {d: [by_subject[s.subject] for s in ss for _ in s.names] for d, ss in stacks.items()}
    return {d: split_labels(sum(len(s.names) for s in ss)) for d, ss in stacks.items()}


def split_subjects(subjects: list[str]) -> dict[str, str] | None:
    """Sends whole subjects to "train", "val" or "test" (None: fewer than three subjects).

    About HELD_OUT_FRACTION of them each to val and to test, at least one. Which ones follows a hash of the
    name, not the name's order, so that sub-01 ... sub-09 do not put the same end of a list in test each time.
    """
    if len(subjects) < 3:
        return None
    held = max(1, round(len(subjects) * HELD_OUT_FRACTION))
    order = sorted(subjects, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return {s: "test" if i < held else "val" if i < 2 * held else "train" for i, s in enumerate(order)}


@dataclass(frozen=True)
class Stack:
    """Slices of one head, kept together by the split: one NIfTI volume, or a domain's PNG slices."""

    subject: str
    names: list[str]
    images: np.ndarray  # float32 [n, resize, resize] in [0, 1], ordered from bottom to top


def read_domain(folder: Path, resize: int) -> list[Stack]:
    """Reads one domain's PNG slices (sorted by slice number, as one stack) and volumes (one stack each)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: missing; a data folder must hold {' and '.join(d + '/' for d in DOMAINS)}")
    from cyclegan import nifti  # nibabel only where there are volumes; nifti imports this module

    pngs = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_slice_order)
    volumes = sorted(p for p in folder.iterdir() if nifti.is_nifti(p) and p.is_file())
    if not pngs and not volumes:
        raise DataError(f"{folder}: no slices; expected {'/'.join(IMAGE_SUFFIXES + nifti.NIFTI_SUFFIXES)} files")
    stacks = []
    if pngs:
        stacks.append(Stack(f"{folder.name} PNG slices", [p.name for p in pngs],
                            np.stack([to_square(read_image(p), resize) for p in pngs])))
    for path in volumes:
        vol = nifti.read_volume(path)
        keep = np.flatnonzero(vol.head)
        stacks.append(Stack(subject_of(path.name), [vol.names[i] for i in keep],
                            np.stack([to_square(vol.slices[i], resize) for i in keep])))
    return stacks


def subject_of(name: str) -> str:
    """The subject a volume shows, from its file name: BIDS `sub-<label>`, or the stem less a contrast suffix."""
    from cyclegan.nifti import stem

    bids = re.match(r"sub-[A-Za-z0-9]+", name)
    if bids:
        return bids.group(0)
    return re.sub(r"[_.-]+t[12]w?$", "", stem(name), flags=re.IGNORECASE) or stem(name)


def read_image(path: Path) -> np.ndarray:
    """Reads an 8- or 16-bit, grey or colour image as a float32 [H, W] array in [0, 1]."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img, dtype=np.float32) / 65535.0
            elif img.mode == "F":
                array = np.asarray(img, dtype=np.float32)
            else:
                array = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # DecompressionBombError: a header claiming billions of pixels (PIL's guard), not an MRI slice.
        raise DataError(f"{path}: not a readable image ({e})") from None
    if array.ndim != 2 or min(array.shape) < 2:
        raise DataError(f"{path}: a {array.shape} image is too small; expected at least 2x2 pixels")
    return np.clip(array, 0.0, 1.0)


def to_square(image: np.ndarray, size: int) -> np.ndarray:
    """Pads an [H, W] image to a centred square with black, then resizes it to size x size."""
    return np.asarray(Image.fromarray(pad_square(image), mode="F").resize((size, size), Image.BILINEAR))


def pad_square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side), dtype=np.float32)
    out[top:top + h, left:left + w] = image
    return out


def head_mask(image: np.ndarray) -> np.ndarray:
    """The head in a [0, 1] slice: the largest bright component, holes (dark CSF, bone) filled."""
    fg = image > HEAD_THRESHOLD
    labels, count = ndimage.label(fg)
    if count == 0:
        return fg
    largest = 1 + int(np.argmax(ndimage.sum(fg, labels, range(1, count + 1))))
    return ndimage.binary_fill_holes(labels == largest)


def _slice_set(t1, t2, t1_names, t2_names, *, paired: bool) -> SliceSet:
    t1 = _as_tensor(t1)
    t2 = _as_tensor(t2)
    masks = [torch.from_numpy(np.stack([head_mask(s[0]) for s in ((x.numpy() + 1) / 2)]))[:, None]
             if len(x) else torch.zeros(x.shape, dtype=torch.bool) for x in (t1, t2)]
    return SliceSet(t1, t2, masks[0], masks[1], tuple(t1_names), tuple(t2_names), paired)


def _as_tensor(x) -> torch.Tensor:
    # Phantom arrays come in [0, 1] without a channel axis; folder tensors already in [-1, 1].
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[:, None] * 2 - 1)
    return x.float().contiguous()


def _slice_order(path: Path) -> tuple:
    # "slice_010.png" and "Image #10.png" sort by their number, not as text ("100" after "99").
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)
