"""Slices in, tensors out: reading T1/T2 folders (or the built-in phantom) and splitting them.

A data folder holds `T1/` and `T2/` of PNG slices (8- or 16-bit, grey or RGB, any size) and/or NIfTI
volumes (`.nii`, `.nii.gz`; `cyclegan.nifti` says how a volume becomes axial slices in [0, 1], which
slices are dropped as empty, and how intensities are scaled). 8-bit slices are divided by 255; a head's
16-bit slices are scaled together as a volume is (their 0.5th percentile to 0, their 99.5th to 1), since
16 bits often hold 12-bit scanner values that over 65535 would be nearly black. Each slice is padded to a
square with black (so anatomy keeps its proportions) and scaled to [-1, 1]; training slices are resized to `resize`,
val and test slices to the dataset's `eval_size`, one size for every trial whatever its `resize`, so that
trials of different sizes are scored alike (`cyclegan.evaluate` brings a split to the model's size and
the translations back). `eval_size` is the folder's own square side when all its slices share one size
(217 for 181x217 slices), else EVAL_SIZE. The whole set is a handful of megabytes, so it lives as one
tensor per split on the training device and batches are gathered by index: no DataLoader.

A folder is a local path or an s3://, gs:// or file:// URI (`cyclegan.files`). Reading it, `read_data`, does
what no trial's knobs change, once: the files' decoding and scaling (on READ_THREADS threads), the pairing, the
split, and val and test at the eval size with their head masks, into `Slices`; `build_dataset` then pads and
resizes the training slices for one `resize`. A search reads in its driver and hands the `Slices` to every
trial (`search.run`); `load_data` does both in one call.

A folder is paired when the two contrasts show the same anatomy slice for slice: T1/ and T2/ hold the
same PNG file names (of the same sizes), and every subject has one T1 and one T2 volume of one shape and
affine (co-registered, as IXI and BraTS ship them). Then val and test are paired (t1[i] and t2[i] the same
slice, so translations are scored against the truth) while training stays unpaired: the T1 and the T2
training slices come from disjoint anatomy (`unpair_train`). Any other folder is unpaired.

The split keeps subjects apart. Each volume is one subject, named by its file: `sub-01_T1w.nii.gz` and
`sub-01_T2w.nii.gz` are both subject `sub-01` (BIDS), `a_t1.nii` is `a`. PNG slices are grouped by the
subject their names carry (`sub-01_slice_012.png` is `sub-01`, `IXI002_slice_050.png` is `IXI002`:
`png_subject`), each subject's sorted by slice number; slices whose names carry none (`slice_012.png`)
are one head. When there are at least three subjects and each domain then has one in train, one in val
and one in test, whole subjects go to a split (`split_subjects`), the same in both domains, so no head is
seen in training and scored in test. Otherwise (one volume per domain, or the PNG slices of one or two
heads) the split is by blocks of neighbouring slices, because neighbours are near copies: a domain's
slices, its heads one after the other (never interleaved), get a val block and a test block in each
of several segments spread from the bottom to the top, and the slice on either side of a held-out run, and
the one between a val block and its test block, is left out (a "gap"), so no val or test slice has a
neighbour in train and no test slice one in val (`split_labels`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from cyclegan.common import HEAD_THRESHOLD, DataError, robust_range, robust_scale

# Defined below nifti, which needs them too; PERCENTILES is re-exported for callers of this module.
from cyclegan.common import PERCENTILES as PERCENTILES
from cyclegan.files import Folder, open_folder
from cyclegan.phantom import Phantom, make_phantom

if TYPE_CHECKING:  # torch is imported where tensors are made: reading and checking a folder (a search's driver,
    import torch  # before Ray starts) needs none of it

DOMAINS = ("T1", "T2")
PARTS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png",)
MIN_SLICES = 10
# Held-out share of each domain for val and for test, spread over at least this many segments.
HELD_OUT_FRACTION = 0.12
MIN_SEGMENTS = 3
# Pillow's modes of 16- (and 32-) bit grey images, whose range is the scanner's, not the file format's.
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I")
SYNTHETIC = "synthetic"
SYNTHETIC_SLICES = 60
# Training heads a contrast: one head gives a model a single anatomy to learn a contrast from.
SYNTHETIC_HEADS = 2
# The side val and test are held at when a folder's slices differ in size, and the phantom's.
EVAL_SIZE = 256
# Files read and decoded at once (`read_domain`): enough to hide a cloud store's delay per request.
READ_THREADS = 16
DRAW = "draw"  # `_slice_set`'s head masks drawn from its slices
# Val slices per domain scored every epoch. The per-epoch score steers ASHA and Optuna, so it must be the same
# slices each epoch, but it need not be all of them: 64 slices spread over val give a mean SSIM whose
# slice-to-slice standard error is well under the differences between trials, while the pass (six generator
# passes a slice) and its CUDA graph's memory stay fixed as the data grows (at 6,000 val slices, ~12% of a 50k
# set, all of them would need tens of GB). The finalists are re-scored on every val slice (`search.select`).
VAL_SLICES = 64
TRAINING_CHUNK = 512  # training slices squared as floats at once before they join the set (as codes for a trial)
# A paired folder with one training head: its training slices go to T1 and T2 in turns of this many.
PAIRED_CHUNK = 5


@dataclass(frozen=True)
class SliceSet:
    """Slices of both contrasts in [-1, 1], [N, 1, S, S], with their head masks and names.

    When `paired`, t1[i] and t2[i] show the same anatomy, so translations can be scored against the truth.
    `resize` is the side the models take; a split held at another size (val and test, at the dataset's
    `eval_size`) is brought to it before a generator sees it (`cyclegan.evaluate.translations`).
    The training split has no head masks (None): only scoring reads them, and the training slices are not scored.
    Drawn for them, they cost every trial 3 ms a slice at 256 px, a minute on 20,000 slices.
    """

    t1: torch.Tensor
    t2: torch.Tensor
    t1_head: torch.Tensor | None
    t2_head: torch.Tensor | None
    t1_names: tuple[str, ...]
    t2_names: tuple[str, ...]
    paired: bool
    resize: int

    @property
    def size(self) -> int:
        return self.t1.shape[-1]

    def to(self, device: torch.device | str) -> SliceSet:
        return replace(self, **{k: getattr(self, k).to(device) for k in ("t1", "t2", "t1_head", "t2_head")
                                if getattr(self, k) is not None})


@dataclass(frozen=True)
class Dataset:
    """train at `resize`, val and test at `eval_size` (the same for every `resize`), and where they came from."""

    train: SliceSet
    val: SliceSet
    test: SliceSet
    source: str
    eval_size: int
    subjects: dict[str, dict[str, list[str]]] | None = None  # part -> domain -> the heads its slices show
    # 8 when every slice came from 8-bit pixels, else 16: what a compact copy needs to lose nothing of the source
    # (`cyclegan.feed`). The phantom and volumes are continuous, so 16.
    bits: int = 16
    # part -> domain -> its slices' names, where val and test hold fewer slices than the split gave them (a trial's
    # data set: `build_dataset(..., for_trial=True)`); None where each SliceSet's names are its part's.
    names: dict[str, dict[str, list[str]]] | None = None

    @property
    def resize(self) -> int:
        return self.train.resize

    @property
    def paired(self) -> bool:
        return self.val.paired

    def to(self, device: torch.device | str) -> Dataset:
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def split(self) -> dict:
        """Which slice went where; written next to every run so results can be traced to slices."""
        return {"source": self.source, "evaluation": "paired" if self.paired else "unpaired",
                "paired_eval": self.paired, "resize": self.resize, "eval_size": self.eval_size,
                **({"subjects": self.subjects} if self.subjects else {}),
                **(self.names or {name: {"T1": list(s.t1_names), "T2": list(s.t2_names)}
                                  for name, s in (("train", self.train), ("val", self.val), ("test", self.test))})}

    def save_split(self, path: Path) -> None:
        path.write_text(json.dumps(self.split(), indent=1) + "\n")


def load_data(source: str | Path | Slices, resize: int, seed: int = 0) -> Dataset:
    """Loads `source` (a folder or URI holding T1/ and T2/, slices `read_data` read, or "synthetic"): train at
    `resize`, val and test at eval size."""
    if isinstance(source, Slices):
        return build_dataset(source, resize)
    if str(source) == SYNTHETIC:
        return synthetic_data(resize, seed)
    return build_dataset(read_data(source), resize)


@dataclass(frozen=True)
class Slices:
    """A data folder read once: every slice decoded, scaled to [0, 1] and split; val and test also squared at the
    eval size and their heads masked.

    All of it is the same for every trial of a search (whatever its resize or seed): the files' reading, 16-bit
    scaling, NIfTI decoding, pairing, split, and the held-out slices, which every trial scores at one size.
    `build_dataset` does the rest, squaring and resizing the training slices. `search.run` reads a folder once
    and hands this to every trial through Ray's object store (numpy arrays: read there without a copy).
    """

    source: str
    paired: bool
    eval_size: int
    names: dict[str, dict[str, list[tuple[str, str]]]]  # part -> domain -> (subject, name) of each slice
    train: dict[str, list[np.ndarray]]  # domain -> its training slices at their own sizes, float32 in [0, 1]
    held_out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # val/test -> domain -> ([N, S, S], head masks)
    bits: int = 16  # 8 where every slice is an 8-bit PNG: the training slices then sit on the GPU as uint8

    @property
    def count(self) -> int:
        return sum(len(names) for domains in self.names.values() for names in domains.values())

    @property
    def nbytes(self) -> int:
        return (sum(img.nbytes for slices in self.train.values() for img in slices)
                + sum(a.nbytes for domains in self.held_out.values() for pair in domains.values() for a in pair))


def read_data(source: str | Path) -> Slices:
    """Reads a folder, or an s3://, gs:// or file:// URI (`cyclegan.files`), holding T1/ and T2/, and splits it.

    Every problem with the data (a missing folder, an unreadable file, too few slices) is raised here as a
    DataError naming it; `build_dataset` then cannot fail on the data.
    """
    root = open_folder(source)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder; expected a folder holding T1/ and T2/, or 'synthetic'")
    read = {domain: read_domain(root / domain) for domain in DOMAINS}
    stacks = pair_stacks(read)
    paired = stacks is not None
    if paired:
        labels = split_paired(stacks)
    else:
        stacks = {d: [s.take(s.head) for s in ss] for d, ss in read.items()}
        labels = split_stacks(stacks)
    eval_size = evaluation_size(stacks)
    slices = {d: [(s.subject, name, img) for s in ss for name, img in zip(s.names, s.images)]
              for d, ss in stacks.items()}
    names, train, held_out = {}, {}, {}
    for part in PARTS:
        picked = {d: [one for one, lab in zip(slices[d], labels[d]) if lab == part] for d in DOMAINS}
        if paired and not all(picked.values()):
            raise DataError(f"{root}: too few {part} slices to give each contrast its own; a paired folder needs "
                            f"more than {MIN_SLICES} slices")
        names[part] = {d: [(subject, name) for subject, name, _ in picked[d]] for d in DOMAINS}
        images = {d: [img for _, _, img in picked[d]] for d in DOMAINS}
        if part == "train":
            train = images
        else:  # scored at one size by every trial: squared and masked once, here, not in each trial
            held_out[part] = {d: _squares(images[d], eval_size) for d in DOMAINS}
    bits = max(s.bits for ss in stacks.values() for s in ss)
    # A URI as typed (a query such as ?region= included), so that search.export can read it again.
    return Slices(str(source) if "://" in str(source) else str(root), paired, eval_size, names, train, held_out, bits)


def _squares(images: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, size, size] squares of `images` (`to_square`) in [0, 1], and their head masks."""
    def one(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        square = to_square(image, size)
        return square, head_mask(square)

    done = _in_parallel(one, images)
    return (np.stack([sq for sq, _ in done]) if done else np.zeros((0, size, size), np.float32),
            np.stack([m for _, m in done]) if done else np.zeros((0, size, size), bool))


def source_name(data: str | Path | Slices) -> str:
    """Where data came from, as the user named it: a folder, a URI or "synthetic"."""
    return data.source if isinstance(data, Slices) else str(data)


def build_dataset(data: Slices, resize: int, *, for_trial: bool = False) -> Dataset:
    """`data` as tensors: train padded to squares and resized to `resize`; val and test as read, at the eval size.

    `for_trial` builds what a trial of a search holds. Its training slices are the training feed's compact codes of
    `data.bits` (`cyclegan.feed.compact`: int16, or uint8 for 8-bit sources), made a chunk at a time, never a float
    set: at 20,000 slices of 256 px that is 5 GB, and the feed's conversion of it as much again. Its val split is
    only the slices scored every epoch (`cyclegan.evaluate.validation_subset`), and its test split is empty: a trial
    never scores test. The split's names stay whole (`Dataset.names`), so `split()` is what the slices' is.
    """
    split = {part: {d: [name for _, name in data.names[part][d]] for d in DOMAINS} for part in PARTS}
    parts = {"train": _training_set(data.train, split["train"], resize, data.bits if for_trial else None)}
    for part, domains in data.held_out.items():
        (t1, t1_head), (t2, t2_head) = (domains[d] for d in DOMAINS)
        held = split[part]
        if for_trial:  # only these are copied out of the driver's slices (Ray's shared memory in a search)
            keep = {d: subset_indices(len(held[d])).numpy() if part == "val" else np.arange(0) for d in DOMAINS}
            t1, t1_head, t2, t2_head = t1[keep["T1"]], t1_head[keep["T1"]], t2[keep["T2"]], t2_head[keep["T2"]]
            held = {d: [held[d][i] for i in keep[d]] for d in DOMAINS}
        parts[part] = _slice_set(t1, t2, held["T1"], held["T2"], paired=data.paired, resize=resize,
                                 heads=(t1_head, t2_head))
    subjects = {part: {d: sorted({subject for subject, _ in names}) for d, names in domains.items()}
                for part, domains in data.names.items()}
    return Dataset(parts["train"], parts["val"], parts["test"], source=data.source, eval_size=data.eval_size,
                   subjects=subjects, bits=data.bits, names=split if for_trial else None)


def subset_indices(n: int, most: int = VAL_SLICES) -> torch.Tensor:
    """At most `most` of n indices, evenly spread from the first to the last: all of them when n <= most.

    A split lists its heads one after the other, each bottom to top, so evenly spaced picks cover every head
    (or every level of one), and they depend on n alone: the same slices every epoch and in every trial."""
    import torch

    if n <= most:
        return torch.arange(n)
    return torch.linspace(0, n - 1, most).round().long()


def synthetic_data(resize: int, seed: int = 0, n_slices: int = SYNTHETIC_SLICES, eval_size: int = EVAL_SIZE,
                   heads: int = SYNTHETIC_HEADS) -> Dataset:
    """The built-in phantom: unpaired training (T1 and T2 of different subjects), paired val and test.

    From `seed`, `heads` subjects give the training T1 slices and `heads` others the training T2 slices, and one
    more both contrasts of the val and test slices, at levels split as a real folder would be. Every head is
    drawn at `eval_size` and the training slices are then resized to `resize` as a folder's are: a head drawn
    at `resize` itself would have its noise, partial volume and thin structures made at another scale than the
    val slices a model is scored on.
    """
    if heads < 1:
        raise DataError(f"the phantom needs at least 1 training head a contrast, got heads={heads}")
    labels = split_labels(n_slices)
    pick = lambda part: [i for i, lab in enumerate(labels) if lab == part]  # noqa: E731
    names = lambda subject, idx: [f"phantom{subject}_level{i:03d}" for i in idx]  # noqa: E731
    train, train_heads = pick("train"), {d: phantom_heads(seed, heads, d) for d in DOMAINS}
    slices = {d: [x for k in subjects for x in _training_head(n_slices, eval_size, k, d)]
              for d, subjects in train_heads.items()}
    parts = {"train": _training_set(slices, {d: [n for k in train_heads[d] for n in names(k, train)] for d in DOMAINS},
                                    resize)}
    held_out = _phantom(n_slices, eval_size, 3 * seed + 2)
    for part in ("val", "test"):
        idx = pick(part)
        parts[part] = _slice_set(held_out.t1[idx], held_out.t2[idx], names(3 * seed + 2, idx),
                                 names(3 * seed + 2, idx), paired=True, resize=resize, heads=DRAW)
    subjects = {"train": {d: [f"phantom{k}" for k in train_heads[d]] for d in DOMAINS},
                **{part: {d: [f"phantom{3 * seed + 2}"] for d in DOMAINS} for part in ("val", "test")}}
    return Dataset(parts["train"], parts["val"], parts["test"], source=SYNTHETIC, eval_size=eval_size,
                   subjects=subjects)


def phantom_heads(seed: int, heads: int, domain: str) -> list[int]:
    """The phantom seeds of the training heads of one contrast: T1's 3k, T2's 3k + 1, for k from seed * heads.

    With one head that is the phantom's first layout (3 * seed and 3 * seed + 1); no training head is ever of the
    form 3k + 2, the held-out head of some seed, so no seed's val or test head is trained on by another's run.
    """
    return [3 * (seed * heads + k) + DOMAINS.index(domain) for k in range(heads)]


@functools.lru_cache(maxsize=2)
def _phantom(n_slices: int, size: int, seed: int) -> Phantom:
    # The held-out head at eval size takes about a second to draw, and every load of the phantom needs it.
    return make_phantom(n_slices, size, seed=seed)


@functools.lru_cache(maxsize=8)
def _training_head(n_slices: int, size: int, seed: int, domain: str) -> np.ndarray:
    """The training levels of one contrast of a head, [n, size, size]: what a load keeps of it, cached, since
    each head at eval size takes about a second to draw (not the whole Phantom: that is four times the memory)."""
    ph = make_phantom(n_slices, size, seed=seed)
    return (ph.t1 if domain == "T1" else ph.t2)[[i for i, lab in enumerate(split_labels(n_slices)) if lab == "train"]]


def evaluation_size(stacks: dict[str, list[Stack]]) -> int:
    """The side val and test are held at: the folder's own square side when all slices share one size."""
    shapes = {img.shape for ss in stacks.values() for s in ss for img in s.images}
    return max(shapes.pop()) if len(shapes) == 1 else EVAL_SIZE


def split_labels(n: int) -> list[str]:
    """Labels n slices, sorted by level, as "train", "val", "test" or "gap" (see the module docstring)."""
    if n < MIN_SLICES:
        raise DataError(f"{n} slices cannot be split into train, val and test; at least {MIN_SLICES} are needed")
    # Three or more segments cover bottom, middle and top; a short stack gets fewer so training keeps most.
    segments = max(1, min(max(MIN_SEGMENTS, round(n / 30)), n // 8))
    run = max(1, round(n * HELD_OUT_FRACTION / segments))  # slices per val (and per test) block
    labels = ["train"] * n
    for k in range(segments):
        # Mid-segment: val, one slice left out, then test. A test slice beside a val slice would be scored on
        # nearly the image that chose the checkpoints and the winner.
        start = int(k * n / segments + (n / segments - 2 * run - 1) / 2)
        labels[start:start + run] = ["val"] * run
        labels[start + run] = "gap"
        labels[start + run + 1:start + 2 * run + 1] = ["test"] * run
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
    order = sorted(subjects, key=_name_hash)
    return {s: "test" if i < held else "val" if i < 2 * held else "train" for i, s in enumerate(order)}


def _name_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def pair_stacks(stacks: dict[str, list[Stack]]) -> dict[str, list[Stack]] | None:
    """Both domains' stacks aligned slice for slice when the folder is paired, else None.

    Paired: T1/ and T2/ hold the same PNG names, each of one size in both, and every subject has exactly one
    volume in each, of the same shape and affine (np.allclose). A pair keeps the slices that show the head in
    both contrasts; PNG slices whose names carry no subject are one head, "PNG slices", in both.
    """
    partners = {}
    for domain, ss in stacks.items():
        # A volume by its subject; PNG slices by the subject their names carry (None: the domain's unnamed head).
        keys = [("volume", s.subject) if s.geometry is not None else ("png", png_subject(s.names[0])) for s in ss]
        if len(set(keys)) != len(keys):
            return None  # two volumes of one subject in a contrast: which is whose pair is unknown
        partners[domain] = dict(zip(keys, ss))
    if partners["T1"].keys() != partners["T2"].keys():
        return None
    out: dict[str, list[Stack]] = {d: [] for d in DOMAINS}
    for key, a in partners["T1"].items():
        b = partners["T2"][key]
        if key[0] == "png":
            if a.names != b.names or any(x.shape != y.shape for x, y in zip(a.images, b.images)):
                return None
            if key[1] is None:  # "T1 PNG slices" and "T2 PNG slices" are one head
                a, b = replace(a, subject="PNG slices"), replace(b, subject="PNG slices")
        elif a.geometry[0] != b.geometry[0] or not np.allclose(a.geometry[1], b.geometry[1]):
            return None
        both = a.head & b.head
        if not both.any():
            return None
        out["T1"].append(a.take(both))
        out["T2"].append(b.take(both))
    return out


def split_paired(stacks: dict[str, list[Stack]]) -> dict[str, list[str]]:
    """Labels a paired folder's slices: val and test the same in both domains, training unpaired (`unpair_train`)."""
    labels = split_stacks({"T1": stacks["T1"]})["T1"]  # T2 has the same subjects and slices
    return unpair_train(labels, [s.subject for s in stacks["T1"] for _ in s.names])


def unpair_train(labels: list[str], subjects: list[str]) -> dict[str, list[str]]:
    """Gives each training slice of a paired folder to T1 or to T2, so that the two never share anatomy.

    `labels` (the split) and `subjects` (each slice's head) run over the slices of both domains alike. With
    two or more training heads, whole heads go to T1 or to T2, halves by a hash of the name as in
    `split_subjects`. With one, its training slices go to T1 and T2 in turns of PAIRED_CHUNK, the slice
    between two turns left out ("unused"), since neighbours are near copies and so near pairs.
    """
    train = [i for i, lab in enumerate(labels) if lab == "train"]
    heads = sorted({subjects[i] for i in train}, key=_name_hash)
    if len(heads) >= 2:
        t1_heads = set(heads[:(len(heads) + 1) // 2])
        owner = {i: "T1" if subjects[i] in t1_heads else "T2" for i in train}
    else:
        chunk = max(1, min(PAIRED_CHUNK, (len(train) - 1) // 2))  # a short stack still gives both a turn
        turn = lambda k: "unused" if k % (chunk + 1) == chunk else DOMAINS[k // (chunk + 1) % 2]  # noqa: E731
        owner = {i: turn(k) for k, i in enumerate(train)}
    return {d: [("train" if owner[i] == d else "unused") if lab == "train" else lab for i, lab in enumerate(labels)]
            for d in DOMAINS}


@dataclass(frozen=True)
class Stack:
    """Slices of one head, kept together by the split: one NIfTI volume, or the PNG slices of one subject."""

    subject: str
    names: list[str]
    images: Sequence[np.ndarray]  # float32 [H, W] in [0, 1] at their own size, ordered from bottom to top
    head: np.ndarray  # bool [n]: the slice shows the head (a volume's empty slices are dropped)
    geometry: tuple[tuple[int, ...], np.ndarray] | None = None  # a volume's shape and affine, None for PNGs
    bits: int = 16  # 8: 8-bit PNG pixels only

    def take(self, keep: np.ndarray) -> Stack:
        idx = np.flatnonzero(keep)
        return replace(self, names=[self.names[i] for i in idx], images=[self.images[i] for i in idx],
                       head=self.head[idx])


def read_domain(folder: Folder | Path | str) -> list[Stack]:
    """Reads one domain's PNG slices (a stack a subject, sorted by slice number) and volumes (one stack each).

    PNG slices whose names carry no subject (`png_subject`) are one head, "<domain> PNG slices". The files are
    read and decoded on READ_THREADS threads: a cloud store answers each request after a delay of its own, and
    PNG and gzip decoding let other threads run.
    """
    folder = folder if isinstance(folder, Folder) else open_folder(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: missing; a data folder must hold {' and '.join(d + '/' for d in DOMAINS)}")
    from cyclegan import nifti  # nibabel only where there are volumes

    entries = folder.entries()
    # A folder named like a slice is a slice that cannot be read; one named like a volume is passed over.
    pngs = sorted((n for n in entries if Path(n).suffix.lower() in IMAGE_SUFFIXES), key=_slice_order)
    volumes = sorted(n for n, is_file in entries.items() if nifti.is_nifti(n) and is_file)
    if not pngs and not volumes:
        raise DataError(f"{folder}: no slices; expected {'/'.join(IMAGE_SUFFIXES + nifti.NIFTI_SUFFIXES)} files")

    def read(name: str) -> tuple[np.ndarray, bool] | Stack:
        if not entries[name]:
            raise DataError(f"{folder.where(name)}: not a readable image (a folder)")
        raw = folder.read(name)
        if not nifti.is_nifti(name):
            return _read_pixels(io.BytesIO(raw), folder.where(name), with_depth=True)
        vol = nifti.read_volume(folder.where(name), raw)  # only its slices are kept, not the whole volume
        return Stack(subject_of(name), vol.names, vol.slices, vol.head,
                     (vol.data.shape, np.asarray(vol.image.affine)))

    done = dict(zip(pngs + volumes, _in_parallel(read, pngs + volumes)))
    heads: dict[str | None, list[str]] = {}
    for name in pngs:
        heads.setdefault(png_subject(name), []).append(name)
    stacks = [_png_stack(subject or f"{folder.name} PNG slices", names, [done[n] for n in names])
              for subject, names in sorted(heads.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))]
    return stacks + [done[name] for name in volumes]


def _in_parallel(fn: Callable[[str], Any], items: list[str]) -> list[Any]:
    """`fn` over `items` on READ_THREADS threads, in order; the first error is raised and what has not started
    is dropped, so a bad file in a large folder is refused without reading the rest."""
    pool = ThreadPoolExecutor(READ_THREADS)
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(cancel_futures=True)


def subject_of(name: str) -> str:
    """The subject a volume shows, from its file name: BIDS `sub-<label>`, or the stem less a contrast suffix."""
    from cyclegan.nifti import stem

    bids = re.match(r"sub-[A-Za-z0-9]+", name)
    if bids:
        return bids.group(0)
    return _less_contrast(stem(name)) or stem(name)


def png_subject(name: str) -> str | None:
    """The subject a PNG slice shows when its name says: BIDS `sub-<label>`, or `<subject>_slice_NNN`.

    `sub-01_T1w_slice_012.png` is `sub-01`; `IXI002-T1_slice_050.png` and `IXI002_slice50.png` are `IXI002` (a
    contrast suffix is dropped, as for volumes). `slice_050.png`, `T1_slice_050.png` and `050.png` name none.
    """
    bids = re.match(r"sub-[A-Za-z0-9]+", name)
    if bids:
        return bids.group(0)
    found = re.match(r"(.+?)[_-]+slice[_-]?\d+", Path(name).stem, flags=re.IGNORECASE)
    subject = _less_contrast(found.group(1)) if found else ""
    return None if not subject or re.fullmatch(r"t[12]w?", subject, flags=re.IGNORECASE) else subject


def _less_contrast(name: str) -> str:
    return re.sub(r"[_.-]+t[12]w?$", "", name, flags=re.IGNORECASE)


def _png_stack(subject: str, names: list[str], read: list[tuple[np.ndarray, bool, int]]) -> Stack:
    """One subject's PNG slices in [0, 1]: 8-bit ones over 255, 16-bit ones scaled together by percentiles.

    The 16-bit slices are scaled per head (all of them at once), as a volume is, not each by its own: a slice's
    own percentiles would stretch the few head pixels of a slice at the crown or the base (and their noise) to
    the full range, and lose how bright one level is beside the next; the head's together keep that, and a
    16-bit PNG export of a volume trains as the volume does. 12-bit data stored in 16 bits is no longer
    nearly black (over 65535), with a head mask of nearly nothing.
    """
    deep = [array for array, is_deep, _ in read if is_deep]
    low, high = robust_range(np.concatenate([a.ravel() for a in deep])) if deep else (0.0, 1.0)
    images = [robust_scale(array, low, high) if is_deep else array for array, is_deep, _ in read]
    bits = max(b for _, _, b in read)
    return Stack(subject, names, images, np.ones(len(names), dtype=bool), bits=bits)


def read_image(path: Path) -> np.ndarray:
    """Reads an 8- or 16-bit, grey or colour image as a float32 [H, W] array in [0, 1].

    An 8-bit image is divided by 255; a 16-bit one, read alone (`cyclegan.translate`), is scaled by its own
    PERCENTILES, as a head's 16-bit slices are scaled together when a data folder is read (`_png_stack`).
    """
    array, deep = _read_pixels(path)
    return robust_scale(array, *robust_range(array)) if deep else array


def _read_pixels(path: Path | BinaryIO, where: Path | str | None = None, with_depth: bool = False) -> tuple:
    """An image's grey values: 8-bit (and colour) ones in [0, 1], and whether it is 16-bit (its raw values);
    `with_depth` adds its bits a pixel (8, or 16 for 16-bit and float images).

    `path` is a file's path or its bytes as a stream; `where` names it in messages (default: `path`).
    """
    where = path if where is None else where
    deep, bits = False, 8
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in DEEP_MODES:
                array, deep, bits = np.asarray(img, dtype=np.float32), True, 16
            elif img.mode == "F":
                array, bits = np.asarray(img, dtype=np.float32), 16
            else:
                array = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # DecompressionBombError: a header claiming billions of pixels (PIL's guard), not an MRI slice.
        raise DataError(f"{where}: not a readable image ({e})") from None
    if array.ndim != 2 or min(array.shape) < 2:
        raise DataError(f"{where}: a {array.shape} image is too small; expected at least 2x2 pixels")
    out = (array, True) if deep else (np.clip(array, 0.0, 1.0), False)
    return (*out, bits) if with_depth else out


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
    """The head in a [0, 1] slice: the largest bright component, holes (dark CSF, bone) filled.

    Holes are filled before the largest component is taken: near the crown a dark skull can cut the thin scalp
    ring off the brain, and the brain alone would then pass for the head.
    """
    from scipy import ndimage  # here: its import (0.2 s) is paid only by a process that draws masks

    fg = ndimage.binary_fill_holes(image > HEAD_THRESHOLD)
    labels, count = ndimage.label(fg)
    if count == 0:
        return fg
    largest = 1 + int(np.argmax(ndimage.sum(fg, labels, range(1, count + 1))))
    return labels == largest


def _slice_set(t1: np.ndarray, t2: np.ndarray, t1_names, t2_names, *, paired: bool, resize: int,
               heads: tuple[np.ndarray, np.ndarray] | Literal["draw"]) -> SliceSet:
    """A held-out SliceSet from [N, S, S] arrays in [0, 1], and their head masks, given or drawn here (DRAW)."""
    import torch

    images = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[:, None] * 2 - 1) for x in (t1, t2)]
    if heads == DRAW:
        heads = tuple(np.array([head_mask(s) for s in x], dtype=bool).reshape(x.shape) for x in (t1, t2))
    # A copy: arrays from Ray's object store are read-only views of shared memory.
    masks = [torch.from_numpy(np.array(m, dtype=bool)[:, None]) for m in heads]
    return SliceSet(*images, *masks, tuple(t1_names), tuple(t2_names), paired, resize)


def _training_set(images: dict[str, Sequence[np.ndarray]], names: dict[str, list[str]], resize: int,
                  bits: int | None = None) -> SliceSet:
    """The training SliceSet: each contrast's [0, 1] slices squared at `resize` (`to_square`), in [-1, 1] as floats,
    or with `bits` as the feed's compact codes for them (`cyclegan.feed.compact`); no masks.

    The squares are made a chunk at a time on the trial's threads (PIL's resize runs without Python's lock), scaled
    in place and written into the set: at real size the set is gigabytes, and a stack of it and a scaled copy would
    hold it three times.
    """
    import torch

    from cyclegan.feed import compact, compact_dtype

    threads = max(1, torch.get_num_threads())  # a trial's cpus_per_trial: Ray sets them as its OMP_NUM_THREADS
    dtype = torch.float32 if bits is None else compact_dtype(bits)
    tensors = []
    with ThreadPoolExecutor(threads) as pool:
        for d in DOMAINS:
            n = len(images[d])
            out = torch.empty((n, 1, resize, resize), dtype=dtype)
            floats = np.empty((min(n, TRAINING_CHUNK), resize, resize), np.float32)
            for start in range(0, n, TRAINING_CHUNK):
                squares = floats[:min(n - start, TRAINING_CHUNK)]

                def square(k: int, d: str = d, start: int = start, squares: np.ndarray = squares) -> None:
                    squares[k] = to_square(images[d][start + k], resize)

                list(pool.map(square, range(len(squares))))
                squares *= 2
                squares -= 1
                out[start:start + len(squares), 0] = compact(torch.from_numpy(squares), dtype)  # floats as they are
            tensors.append(out)
    return SliceSet(*tensors, None, None, tuple(names["T1"]), tuple(names["T2"]), False, resize)


def _slice_order(path: Path | str) -> tuple:
    # "slice_010.png" and "Image #10.png" sort by their number, not as text ("100" after "99").
    path = Path(path)
    numbers = re.findall(r"\d+", path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)
