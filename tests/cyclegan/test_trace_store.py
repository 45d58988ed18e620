"""`cyclegan.trace_store` keeps the memory traces' counts on disk: a second process reads what the first counted,
another version of the code or of torch reads another file, and `off` keeps nothing.

    python -m pytest tests/cyclegan/test_trace_store.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyclegan import memory, trace_store
from cyclegan.config import TrainConfig
from tests.paths import pythonpath

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig(resize=32, unet_depth=5, ngf=8, ndf=8, disc_layers=2)
# A process that estimates CFG's memory; prints it and how many networks its traces built (the train step's and
# the validation pass's: 2 where it traced both, 0 where it read both counts).
ESTIMATE = """
import json
from cyclegan import memory, train
from cyclegan.config import TrainConfig
traced = []
build = train.CycleGAN.build
train.CycleGAN.build = staticmethod(lambda cfg, *a, **k: traced.append(1) or build(cfg, *a, **k))
cfg = TrainConfig(resize=32, unet_depth=5, ngf=8, ndf=8, disc_layers=2)
print(json.dumps({"bytes": memory.estimate_memory(cfg), "traced": len(traced)}))
"""


def _estimate_in_a_process(store: str) -> dict:
    env = {**os.environ, "PYTHONPATH": pythonpath(), trace_store.CACHE_ENV: store}
    p = subprocess.run([sys.executable, "-c", ESTIMATE], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.splitlines()[-1])


def test_a_second_process_reads_the_counts_the_first_made(tmp_path: Path) -> None:
    first, second = (_estimate_in_a_process(str(tmp_path)) for _ in range(2))
    assert first["traced"] == 2 and second["traced"] == 0 and first["bytes"] == second["bytes"]
    (stored,) = tmp_path.glob("memory-traces-*.json")
    assert stored.name == f"memory-traces-{trace_store.version()}.json"
    keys = json.loads(stored.read_text())
    assert any(k.startswith("saved_per_pair(") for k in keys) and any(k.startswith("validation_bytes(") for k in keys)


def test_off_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert [_estimate_in_a_process("off")["traced"] for _ in range(2)] == [2, 2]
    assert not list(tmp_path.rglob("memory-traces-*"))


def test_the_store_is_kept_per_version_of_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trace_store.CACHE_ENV, str(tmp_path))
    assert trace_store.store_path() == tmp_path / f"memory-traces-{trace_store.version()}.json"
    monkeypatch.delenv(trace_store.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert trace_store.store_path().parent == tmp_path / "xdg" / "mri-cyclegan-search"
    # Another torch is another file (so is any change to a source file of cyclegan/, hashed with it).
    before = trace_store.version()
    trace_store.version.cache_clear()
    monkeypatch.setattr(trace_store.torch, "__version__", "0.0.0-other")
    try:
        assert trace_store.version() != before
    finally:
        trace_store.version.cache_clear()


def test_a_store_that_cannot_be_written_only_means_counting_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv(trace_store.CACHE_ENV, str(blocked / "store"))  # a folder under a file: never made
    count = trace_store.stored("test_count")(lambda n: n * 2)
    assert count(21) == 42 and count(21) == 42
    monkeypatch.setenv(trace_store.CACHE_ENV, str(tmp_path / "damaged"))
    (tmp_path / "damaged").mkdir()
    trace_store.store_path().write_text("{not json")
    assert count(5) == 10
    assert json.loads(trace_store.store_path().read_text()) == {"test_count(5,)": 10}


def test_stored_counts_come_back_as_they_were_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trace_store.CACHE_ENV, str(tmp_path))
    made = memory._saved_per_pair.__wrapped__(CFG)
    trace_store._known.clear()  # as a new process: from the file only
    assert memory._saved_per_pair.__wrapped__(CFG) == made and isinstance(made, tuple)


def test_a_stored_value_that_is_not_a_count_is_counted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trace_store.CACHE_ENV, str(tmp_path))
    count = trace_store.stored("test_edited")(lambda n: (n, n + 1))
    assert count(1) == (1, 2)
    for bad in ("12", None, [], [1, "2"], True, 1.5):
        trace_store._known.clear()
        trace_store.store_path().write_text(json.dumps({"test_edited(1,)": bad}))
        assert count(1) == (1, 2)
    trace_store._known.clear()
    assert count(1) == (1, 2) and json.loads(trace_store.store_path().read_text()) == {"test_edited(1,)": [1, 2]}
