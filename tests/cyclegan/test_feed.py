"""Training slices on the device: compact codes, resident or streamed feeds, the val slices scored each epoch,
and the memory the data and validation add to the estimate.

    python -m pytest tests/cyclegan/test_feed.py -q
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from cyclegan import train
from cyclegan.config import TrainConfig
from cyclegan.data import Dataset, SliceSet, load_data
from cyclegan.evaluate import VAL_SLICES, subset_indices, validation_pass, validation_subset
from cyclegan.feed import SLOTS, Resident, Streamed, compact, compact_dtype, expand
from cyclegan.graphed import StepRunner
from cyclegan.memory import (
    VALIDATION_FACTOR,
    DataError,
    DataSize,
    LiveBytes,
    check_fits,
    estimate_memory,
    memory_terms,
    plan_data,
    validation_bytes,
)
from cyclegan.phantom import write_volumes
from cyclegan.train import CycleGAN, epoch_order

CPU = torch.device("cpu")


def _slices(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("bits,step", [(8, 2 / 255), (16, 1 / 32767)])
def test_compact_round_trip_is_within_half_a_step(bits: int, step: float) -> None:
    x = _slices(64, 16)
    x[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])  # the ends of the range stay the ends
    q = compact(x, compact_dtype(bits))
    assert q.dtype == (torch.uint8 if bits == 8 else torch.int16) and q.element_size() == bits // 8
    back = expand(q)
    assert back.dtype == torch.float32
    assert (back - x).abs().max().item() <= step / 2 + 1e-6
    assert back[0, 0, 0, :2].tolist() == [-1.0, 1.0]
    assert torch.equal(compact(q, q.dtype), q)  # codes handed over compact pass through


def test_eight_bit_pixels_come_back_exactly() -> None:
    levels = torch.arange(256, dtype=torch.float32) / 255 * 2 - 1  # what an 8-bit PNG becomes
    assert torch.allclose(expand(compact(levels, torch.uint8)), levels, atol=1e-6, rtol=0)


def _batches(feed, n1: int, n2: int, batch: int, epochs: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    steps = math.ceil(max(n1, n2) / batch)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def step(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
        seen.append((a.clone(), b.clone()))
        return {"loss": a.sum() + b.sum()}

    runner = StepRunner(step, feed, steps, graphs=False)
    for epoch in range(1, epochs + 1):
        runner.run_epoch(epoch_order(n1, steps, batch, 3, epoch), epoch_order(n2, steps, batch, 4, epoch))
    return seen


@pytest.mark.parametrize("bits", [8, 16])
def test_streamed_batches_are_the_resident_ones(bits: int) -> None:
    n1, n2, batch = 13, 9, 2  # more steps than slots, domains of different sizes, a last batch that wraps around
    t1, t2 = _slices(n1, seed=1), _slices(n2, seed=2)
    steps = math.ceil(max(n1, n2) / batch)
    assert steps > SLOTS
    resident = _batches(Resident(t1, t2, CPU, batch, steps, bits=bits), n1, n2, batch)
    streamed = _batches(Streamed(t1, t2, CPU, batch, steps, bits=bits), n1, n2, batch)
    assert len(resident) == len(streamed) == 2 * steps
    for (a1, a2), (b1, b2) in zip(resident, streamed):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
    # ... and they are the plain loop's batches of the compacted slices.
    want = expand(compact(t1, compact_dtype(bits)))
    order = epoch_order(n1, steps, batch, 3, 2)
    for k in range(steps):
        assert torch.equal(streamed[steps + k][0], want[order[k * batch:(k + 1) * batch]])


def _slice_set(n: int, size: int, paired: bool = True, seed: int = 0) -> SliceSet:
    t1, t2 = _slices(n, size, seed), _slices(n, size, seed + 1)
    return SliceSet(t1, t2, t1 > -0.5, t2 > -0.5, tuple(f"a{i}" for i in range(n)), tuple(f"b{i}" for i in range(n)),
                    paired, size)


def test_validation_subset_is_bounded_spread_and_fixed() -> None:
    assert subset_indices(10).tolist() == list(range(10))
    picked = subset_indices(1000)
    assert len(picked) == VAL_SLICES == len(set(picked.tolist())) and (picked[0], picked[-1]) == (0, 999)
    assert np.diff(picked.numpy()).max() - np.diff(picked.numpy()).min() <= 1  # evenly spread over the split
    s = _slice_set(200, 8)
    first, again = validation_subset(s), validation_subset(s)
    assert len(first.t1) == len(first.t2) == VAL_SLICES and first.t1_names == again.t1_names
    assert torch.equal(first.t1, again.t1) and torch.equal(first.t2_head, again.t2_head)
    i = [int(n[1:]) for n in first.t1_names]
    assert [int(n[1:]) for n in first.t2_names] == i  # paired slices stay paired
    assert torch.equal(first.t1, s.t1[i]) and torch.equal(first.t2, s.t2[i])
    small = _slice_set(20, 8)
    assert validation_subset(small) is small


@pytest.mark.slow
def test_fit_scores_the_same_val_slices_every_epoch_and_keeps_test_off_the_device(monkeypatch) -> None:
    cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, epochs=2, pool_size=0, batch_size=4)
    train_set = replace(_slice_set(8, 32), paired=False)
    data = Dataset(train_set, replace(_slice_set(150, 32, seed=5), resize=32), _slice_set(40, 32, seed=9),
                   source="test", eval_size=32)
    scored = []

    def watching(g1, g2, s, *args):
        scored.append(s.t1_names)
        return validation_pass(g1, g2, s, *args)

    monkeypatch.setattr(train, "validation_pass", watching)
    result = train.fit(cfg, data, device="cpu")
    assert len(scored) == 2 and scored[0] == scored[1] and len(scored[0]) == VAL_SLICES
    assert result.placement["val_slices"] == [VAL_SLICES, VAL_SLICES]
    assert result.placement["train"] == "resident" and result.placement["train_dtype"] == "int16"
    # What fit put on the device: the compact training slices and the scored val slices, no test slice.
    v = VAL_SLICES * 32 * 32
    slices, orders = 2 * 8 * 32 * 32 * 2, 2 * 8 * 8  # int16 slices; two epoch orders of 8 indices, 8 bytes each
    assert result.placement["device_bytes"] == slices + orders + 2 * v * 4 + 2 * v


@pytest.mark.slow
def test_streamed_fit_trains_as_the_resident_one() -> None:
    cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, epochs=1, pool_size=4)
    data = load_data("synthetic", 32)
    runs = [train.fit(cfg, data, device="cpu", stream=stream) for stream in (False, True)]
    assert [r.placement["train"] for r in runs] == ["resident", "streamed"]
    assert runs[0].history[0]["loss_G"] == runs[1].history[0]["loss_G"]
    for a, b in zip(runs[0].models.g_t1_t2.parameters(), runs[1].models.g_t1_t2.parameters()):
        assert torch.equal(a, b)


TINY = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=2)


def test_the_phantom_is_counted_as_drawn() -> None:
    # search.run counts the phantom from its layout, without drawing its heads: the same size as the drawn one.
    assert DataSize.of_phantom() == DataSize.of(load_data("synthetic", 32))


def test_estimate_grows_with_the_data_and_streaming_bounds_it() -> None:
    sizes = [DataSize(n, n, 20, 20, 64) for n in (1_000, 10_000, 50_000)]
    resident = [estimate_memory(TINY, s) for s in sizes]
    streamed = [estimate_memory(TINY, s, streamed=True) for s in sizes]
    assert resident[0] < resident[1] < resident[2]
    assert resident[2] - resident[1] >= 40_000 * 32 * 32 * 2 * 2  # the int16 slices themselves, and more
    assert streamed[0] == streamed[1] == streamed[2] < resident[0]
    assert estimate_memory(TINY, replace(sizes[2], bits=8)) < resident[2]  # uint8 for 8-bit sources
    most_val = replace(sizes[0], val_t1=VAL_SLICES, val_t2=VAL_SLICES)
    assert estimate_memory(TINY, sizes[0]) < estimate_memory(TINY, most_val)
    assert estimate_memory(TINY, replace(most_val, val_t1=6000, val_t2=6000)) == estimate_memory(
        TINY, most_val)  # validation is bounded
    budget = (resident[0] + resident[1]) // 2
    assert [plan_data(TINY, s, budget) for s in sizes] == ["resident", "streamed", "streamed"]
    assert plan_data(TINY, sizes[2], None) == "resident"


def test_estimate_is_above_what_the_cpu_holds() -> None:
    n, eval_size = 300, 64
    size = DataSize(n, n - 50, 100, 100, eval_size)
    steps = math.ceil(n / TINY.batch_size)
    feed = Resident(_slices(n, 32), _slices(n - 50, 32), CPU, TINY.batch_size, steps)
    assert feed.device_bytes <= memory_terms(TINY, size)["train_data"]
    streamed = Streamed(_slices(n, 32), _slices(n - 50, 32), CPU, TINY.batch_size, steps)
    assert streamed.device_bytes <= memory_terms(TINY, size, streamed=True)["train_data"]
    # The validation pass, run for real on the CPU over the scored slices, holds no more than counted.
    torch.manual_seed(0)
    m = CycleGAN.build(TINY)
    val = validation_subset(_slice_set(100, eval_size))
    with LiveBytes() as live:
        validation_pass(m.g_t1_t2, m.g_t2_t1, val, resize=TINY.resize)
    counted = validation_bytes(TINY, *size.scored(), eval_size)
    assert live.peak > 0 and counted >= 0.9 * live.peak
    assert memory_terms(TINY, size)["validation"] >= VALIDATION_FACTOR * counted > live.peak


def test_a_trial_that_does_not_fit_even_streamed_is_refused_in_one_line() -> None:
    size = DataSize(250_000, 250_000, 3_000, 3_000, 64, 16, "/data/big")
    just = estimate_memory(TINY, size, streamed=True)
    check_fits(TINY, size, just, "just enough")  # fits streamed, though not resident: nothing raised
    assert plan_data(TINY, size, just) == "streamed"
    with pytest.raises(DataError) as caught:
        check_fits(TINY, size, 2**28, "gpus_per_trial 0.01 of a 22 GiB GPU, less its CUDA context")
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith("/data/big: 500,000 training slices at 32x32 (0.95 GiB as int16): a trial of resize=32 "
                           "batch_size=2 unet_depth=5 needs an estimated ")
    assert "over its budget of 0.25 GiB (gpus_per_trial 0.01 of a 22 GiB GPU" in line
    assert line.endswith("raise gpus_per_trial or --gpu-memory-gib, or lower resize or batch_size")


def test_phantom_writes_paired_volumes_that_read_as_a_data_folder(tmp_path) -> None:
    paths = write_volumes(tmp_path, volumes=3, n_slices=12, size=32, seed=1, workers=1)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        f"{d}/sub-{k:03d}_{d}w.nii.gz" for d in ("T1", "T2") for k in range(3)]
    data = load_data(tmp_path, 32)
    assert data.paired and data.bits == 16 and data.eval_size == 32
    assert sorted(h for part in data.subjects.values() for h in part["T1"]) == ["sub-000", "sub-001", "sub-002"]
    assert len(data.val.t1) == len(data.test.t1) == 12
