"""The warm-up benchmark's CPU smoke run (benchmarks/warmup.py): workers in their own processes, each fitting twice
and timing its first steps, and the summary of what they report.

    python -m pytest tests/cyclegan/test_warmup_bench.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import warmup


@pytest.mark.slow  # two workers in subprocesses
def test_warmup_smoke_run_reports_each_fit_and_the_first_steps(tmp_path: Path) -> None:
    out = tmp_path / "warmup.json"
    assert warmup.main(["--device", "cpu", "--configs", "128-d5-b1", "--resize", "32", "--epochs", "1",
                        "--parallel", "2", "--reuse-with", "next", "--threads", "1", "--set", "ngf=8",
                        "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    (wave,) = res["waves"]
    assert wave["parallel"] == 2 and len(wave["results"]) == 2
    pids = set()
    for r in wave["results"]:
        fresh, reused, split = r["rows"]
        assert (fresh["run"], reused["run"], split["run"]) == ("fresh", "reused", "split")
        assert fresh["config"] == reused["config"] == "128-d5-b1"  # the next config of a list of one is itself
        assert fresh["set"] == reused["set"] == {"ngf": 8}  # --set reached the worker's configs
        assert fresh["startup_seconds"] > 0 and reused["startup_seconds"] is None
        # No GPU: nothing is captured, so no warm-up to a graphed step, and three eager steps are timed.
        assert not fresh["graphed"] and fresh["warmup_seconds"] == 0 and len(split["step_seconds"]) == 3
        assert all(s > 0 for s in split["step_seconds"]) and reused["pairs_per_second"] > 0
        pids.add(r["pid"])
    assert len(pids) == 2
    assert res["summary"]["parallel_2"]["runs"] == 2
