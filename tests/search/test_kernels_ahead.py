"""The driver's child process compiling the first trials' norm kernels (search/kernels_ahead.py), with an
`nvidia-smi` on PATH that answers as a machine's would; the child itself and Triton's compiler are real."""

import os
from importlib.util import find_spec
from pathlib import Path

import pytest

from search.kernels_ahead import KernelsAhead, gpu_capabilities
from search.space import load_space

needs_triton = pytest.mark.skipif(find_spec("triton") is None,
                                  reason="Triton is not installed: `pip install triton` (.ci/run does)")
SPACES = Path(__file__).resolve().parents[2] / "spaces"


def _nvidia_smi(tmp_path: Path, monkeypatch, lines: str, code: int = 0) -> None:
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text(f"#!/bin/sh\nprintf '{lines}'\nexit {code}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")


TWO_KINDS = "0, GPU-aaa, 9.0\\n1, GPU-bbb, 8.0\\n2, GPU-ccc, 9.0\\n"


@pytest.mark.parametrize(("visible", "expected"), [
    (None, [80, 90]), ("1", [80]), ("0,2", [90]), ("GPU-bbb", [80]), ("", []), ("-1", []),
])
def test_the_capabilities_are_the_visible_gpus(tmp_path, monkeypatch, visible, expected):
    _nvidia_smi(tmp_path, monkeypatch, TWO_KINDS)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu_capabilities() == expected


def test_no_capability_where_nvidia_smi_cannot_answer(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _nvidia_smi(tmp_path, monkeypatch, "NVIDIA-SMI has failed\\n", code=9)
    assert gpu_capabilities() == []
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu_capabilities() == []


@needs_triton
def test_the_first_waves_kernels_are_compiled_in_a_child(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    _nvidia_smi(tmp_path, monkeypatch, "0, GPU-aaa, 9.0\\n")
    configs = load_space(SPACES / "full.yaml").first_configs(8)
    ahead = KernelsAhead(configs)
    assert len(ahead.children) == 1
    [report] = ahead.finish()
    assert report["capability"] == 90 and set(report["sets"]) >= {"bf16:nhwc:32", "bf16:nhwc:64"}
    # Four kernels for each of two blocks of channels (32, and 64 for the wider norms); where libcuda is, also their
    # launchers, which a CPU machine leaves to the trials.
    assert len([d for d in (tmp_path / "triton").iterdir() if any(d.glob("*.cubin"))]) == 8
    assert capsys.readouterr().err == ""


@needs_triton
def test_a_failed_compile_is_said_in_one_line_and_costs_nothing_else(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    _nvidia_smi(tmp_path, monkeypatch, "0, GPU-aaa, 1.0\\n")  # a compute capability no compiler targets
    ahead = KernelsAhead([{"resize": 32, "unet_depth": 4}])
    assert ahead.finish() == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: the InstanceNorm kernels were not compiled ahead (")


def test_nothing_starts_without_a_gpu_or_for_configs_without_the_fused_norm(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert KernelsAhead([{"resize": 32, "unet_depth": 4}]).children == []
    _nvidia_smi(tmp_path, monkeypatch, "0, GPU-aaa, 9.0\\n")
    assert KernelsAhead([{"resize": 32, "unet_depth": 4, "fused_norm": False}]).children == []
