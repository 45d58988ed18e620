"""What a trial's GPU memory is counted in, and the size of a data set as that count sees it (`DataSize`).

Apart from `cyclegan.memory`, which estimates the memory by running the networks on PyTorch's meta device, because
this module imports no torch: a search's driver sizes its data while checking the user's input, before Ray starts,
and imports torch only beside Ray's start (search/run.py). `cyclegan.memory` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cyclegan.data import Dataset, Slices

GiB = 2**30
CONTEXT_BYTES = 3 * GiB // 4  # each process's CUDA context and library handles, which its allocator does not see
EVAL_SIZE = 256  # the val slices' side where no data is given (cyclegan.data.EVAL_SIZE, the phantom's)


@dataclass(frozen=True)
class DataSize:
    """What of a data set takes a trial's device memory: slice counts, the val slices' side, the source's bits."""

    train_t1: int
    train_t2: int
    val_t1: int
    val_t2: int
    eval_size: int = EVAL_SIZE
    bits: int = 16  # 8: kept as uint8, else int16 (cyclegan.feed)
    source: str = ""

    @classmethod
    def of(cls, data: Dataset | Slices) -> DataSize:
        """The size of a built data set, or of the slices a driver read (counted without building them)."""
        from cyclegan.data import DOMAINS, Slices

        if isinstance(data, Slices):  # what each trial will build from them, counted by their names
            (t1, t2), (v1, v2) = ([len(data.names[part][d]) for d in DOMAINS] for part in ("train", "val"))
            return cls(t1, t2, v1, v2, data.eval_size, data.bits, data.source)
        # A trial's set holds only the val slices it scores; its names count the whole split.
        val = (data.names["val"]["T1"], data.names["val"]["T2"]) if data.names else (data.val.t1, data.val.t2)
        return cls(len(data.train.t1), len(data.train.t2), len(val[0]), len(val[1]), data.eval_size, data.bits,
                   data.source)

    @classmethod
    def of_phantom(cls) -> DataSize:
        """The size of the built-in phantom (`cyclegan.data.synthetic_data`), counted from its layout: drawing its
        heads at the eval size takes seconds, which a search's start need not spend to count them."""
        from cyclegan.data import EVAL_SIZE, SYNTHETIC, SYNTHETIC_HEADS, SYNTHETIC_SLICES, Dataset, split_labels

        labels = split_labels(SYNTHETIC_SLICES)
        train, val = SYNTHETIC_HEADS * labels.count("train"), labels.count("val")
        return cls(train, train, val, val, EVAL_SIZE, Dataset.bits, SYNTHETIC)

    def train_bytes(self, resize: int) -> int:
        """The training slices at `resize`, compact: what a resident feed holds."""
        from cyclegan.feed import bytes_per_pixel

        return (self.train_t1 + self.train_t2) * resize**2 * bytes_per_pixel(self.bits)

    def scored(self) -> tuple[int, int]:
        """Val slices scored every epoch, per domain (`cyclegan.evaluate.validation_subset`)."""
        from cyclegan.data import subset_indices

        return len(subset_indices(self.val_t1)), len(subset_indices(self.val_t2))

    def describe(self, resize: int) -> str:
        from cyclegan.feed import bytes_per_pixel

        n = self.train_t1 + self.train_t2
        kind = "uint8" if bytes_per_pixel(self.bits) == 1 else "int16"
        where = f"{self.source}: " if self.source else ""
        size = self.train_bytes(resize)
        shown = f"{size / GiB:.2f} GiB" if size >= GiB // 10 else f"{size / 2**20:.1f} MiB"
        return f"{where}{n:,} training slices at {resize}x{resize} ({shown} as {kind})"
