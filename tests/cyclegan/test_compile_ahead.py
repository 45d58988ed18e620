"""Compiling the norm kernels ahead (cyclegan/compile_ahead.py): what it compiles is what a trial then launches.

Triton's JIT finds a kernel in its on-disk cache only if it would compile exactly the same thing (signature, argument
specialisation, constants, target, options), so the check is the cache itself: after `compile_ahead`, the real
`forward` and `backward` add no entry. On the CPU the launches are compiled, not run (`JITFunction.run` with
`warmup`), for sm_90; on a GPU the last test trains, and then not even a launcher is added."""

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from torch import nn

from cyclegan.compile_ahead import norm_kernel_sets, parse_set
from cyclegan.config import TrainConfig
from cyclegan.train import CycleGAN

needs_triton = pytest.mark.skipif(find_spec("triton") is None,
                                  reason="Triton is not installed: `pip install triton` (.ci/run does)")

# The trainer's forward and backward of the norm, launching nothing: each launch compiles (or finds in the cache)
# what it would launch on an sm_90 GPU.
LAUNCH = r"""
import json, sys, warnings
warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
import torch
from triton.runtime.jit import JITFunction
from cyclegan import norm_kernels

run = JITFunction.run
JITFunction.run = lambda self, *args, grid, warmup, **kw: run(self, *args, grid=grid, warmup=True, **kw)
with norm_kernels.compiling_for(90):
    for dtype, channels_last, channels, h, w in json.loads(sys.argv[1]):
        x = torch.randn(2, channels, h, w).to(getattr(torch, dtype))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y, read, mean, rstd, nhwc = norm_kernels.forward(x, 1e-5)
        norm_kernels.backward(read, torch.randn_like(x), mean, rstd, nhwc)
"""


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


def _kernels(cache: Path) -> set[str]:
    """The cache's compiled kernels, not the C launchers and utilities built beside them where libcuda is."""
    return {p.name for p in cache.iterdir() if any(p.glob("*.cubin"))} if cache.exists() else set()


def _launch(cache: Path, cases: list) -> None:
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", LAUNCH, json.dumps(cases)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr


@needs_triton
def test_the_kernels_compiled_ahead_are_the_ones_the_trainer_launches(tmp_path):
    cache = tmp_path / "triton"
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache), "CUDA_VISIBLE_DEVICES": ""}  # no CUDA needed
    out = subprocess.run([sys.executable, "-m", "cyclegan.compile_ahead", "--capability", "90", "bf16:nhwc:32",
                          "bf16:nhwc:64", "bf16:nhwc:512"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # Triton's notice about its FMA-fusion default is not the user's concern
    report = json.loads(out.stdout)
    assert report["sets"] == ["bf16:nhwc:32", "bf16:nhwc:64", "bf16:nhwc:512"] and report["seconds"] > 0
    ahead = _kernels(cache)
    assert len(ahead) == 8  # four kernels, two blocks of channels (32, and 64 for 64 and 512)

    # Other shapes and channel counts of the same blocks: every launch is found in the cache.
    _launch(cache, [["bfloat16", True, 32, 128, 128], ["bfloat16", True, 64, 2, 2], ["bfloat16", True, 256, 16, 16],
                    ["bfloat16", True, 512, 4, 4], ["bfloat16", True, 128, 64, 32]])
    assert _kernels(cache) == ahead

    # What was not compiled ahead is not found: the check can fail.
    _launch(cache, [["float32", True, 64, 8, 8]])
    assert len(_kernels(cache) - ahead) == 4


def _channels_seen(cfg: TrainConfig) -> set[int]:
    """The channel counts the networks' InstanceNorms are called with in a forward pass (on the CPU)."""
    models = CycleGAN.build(cfg)
    seen: set[int] = set()
    for net in models.named().values():
        for m in net.modules():
            if type(m) is nn.InstanceNorm2d:
                m.register_forward_hook(lambda mod, args, out: seen.add(args[0].shape[1]))
    x = torch.zeros(1, 1, cfg.resize, cfg.resize)
    with torch.no_grad():
        for g, d in ((models.g_t1_t2, models.d_t2), (models.g_t2_t1, models.d_t1)):
            d(g(x))
    return seen


@pytest.mark.parametrize("knobs", [
    {},
    {"resize": 64, "unet_depth": 5, "ngf": 32, "ndf": 16, "disc_layers": 2},
    {"resize": 32, "generator": "resnet_6blocks", "ngf": 24, "precision": "fp32"},
    {"resize": 32, "unet_depth": 4, "channels_last": False, "precision": "bf16"},
])
def test_the_kernel_sets_are_every_norm_the_networks_run(knobs):
    cfg = TrainConfig(**knobs)
    sets = norm_kernel_sets(cfg)
    dtype = "fp32" if cfg.precision == "fp32" else "bf16"
    layout = "nhwc" if cfg.use_channels_last else "nchw"
    assert sets == {f"{dtype}:{layout}:{c}" for c in _channels_seen(cfg)}
    assert all(parse_set(s)[0] == (torch.float32 if dtype == "fp32" else torch.bfloat16) for s in sets)


def test_no_kernels_without_the_fused_norm():
    assert norm_kernel_sets(TrainConfig(fused_norm=False)) == set()


@pytest.mark.parametrize("bad", ["bf16:nhwc", "fp16:nhwc:64", "bf16:nhcw:64", "bf16:nhwc:x"])
def test_a_bad_kernel_set_is_refused_in_one_line(bad):
    out = subprocess.run([sys.executable, "-m", "cyclegan.compile_ahead", "--capability", "90", bad],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and repr(bad) in out.stderr and "DTYPE:LAYOUT:CHANNELS" in out.stderr


@needs_triton
def test_configs_name_their_kernel_sets_for_the_child_to_work_out(tmp_path):
    # What search.kernels_ahead hands the child: trials' knobs, not sets (its driver has not imported torch).
    knobs = [{"resize": 64, "unet_depth": 5, "ngf": 32, "ndf": 16, "disc_layers": 2}, {"resize": 32, "unet_depth": 4}]
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "triton"), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "cyclegan.compile_ahead", "--capability", "90", "--configs",
                          json.dumps(knobs)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    expected = set().union(*(norm_kernel_sets(TrainConfig(**k)) for k in knobs))
    assert set(json.loads(out.stdout)["sets"]) == expected and len(expected) >= 3


@pytest.mark.parametrize(("configs", "said"), [
    ("[{", "Expecting"),  # not JSON
    ('[{"resize": 64, "no_such_knob": 1}]', "unknown key 'no_such_knob'"),
    ('[{"fused_norm": false}]', "no kernel set"),
])
def test_bad_configs_are_refused_in_one_line(configs, said):
    out = subprocess.run([sys.executable, "-m", "cyclegan.compile_ahead", "--capability", "90", "--configs", configs],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and said in out.stderr, out.stderr


# A trainer's first epochs on the GPU, graphed as in a search, in a process of its own.
TRAIN = r"""
from cyclegan.config import TrainConfig
from cyclegan.data import load_data
from cyclegan.train import fit
fit(TrainConfig(resize=64, unet_depth=5, ngf=32, ndf=32, batch_size=2, epochs=2), load_data("synthetic", 64))
"""


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="launches the kernels on a GPU")
def test_a_trainer_on_the_gpu_finds_every_kernel_compiled_ahead(tmp_path):
    cache = tmp_path / "triton"
    major, minor = torch.cuda.get_device_capability()
    cfg = TrainConfig(resize=64, unet_depth=5, ngf=32, ndf=32, batch_size=2, epochs=2)
    env = {**os.environ, "TRITON_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-m", "cyclegan.compile_ahead", "--capability", str(major * 10 + minor),
                          *sorted(norm_kernel_sets(cfg))], env={**env, "CUDA_VISIBLE_DEVICES": ""},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert "launchers_not_built" not in report, report
    ahead = _entries(cache)
    assert len(_kernels(cache)) == 8 and len(ahead) > 8  # the kernels, their launchers and Triton's CUDA utilities
    out = subprocess.run([sys.executable, "-c", TRAIN], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert _entries(cache) == ahead
