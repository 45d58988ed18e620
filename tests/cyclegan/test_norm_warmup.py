"""`python -m cyclegan.norm_warmup` compiles the fused norm for configs before their trials start: which configs it
runs, that a machine without a GPU has nothing to do, and on a GPU that a fresh process then compiles nothing.

    python -m pytest tests/cyclegan/test_norm_warmup.py -q
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cyclegan.config import TrainConfig
from cyclegan.norm_warmup import distinct, warm
from tests.paths import pythonpath

ROOT = Path(__file__).resolve().parents[2]
TINY = TrainConfig(resize=32, unet_depth=5, disc_layers=2, ngf=8, ndf=8, batch_size=2, pool_size=2)


def test_one_warm_up_per_set_of_shapes_and_none_without_the_fused_norm() -> None:
    same_shapes = [TINY, TINY.replace(lr=1e-3, seed=4, epochs=9), TINY.replace(lambda_identity=0.3)]
    others = [TINY.replace(batch_size=1), TINY.replace(precision="fp32"), TINY.replace(lambda_identity=0.0)]
    assert distinct([*same_shapes, *others, TINY.replace(fused_norm=False, ngf=16)]) == [TINY, *others]


def test_without_a_gpu_there_is_nothing_to_compile(tmp_path: Path) -> None:
    (tmp_path / "configs.json").write_text(json.dumps([TINY.to_dict()]))
    env = {**os.environ, "PYTHONPATH": pythonpath(), "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-m", "cyclegan.norm_warmup", str(tmp_path / "configs.json"), "--val", "3",
                        "4", "--eval-size", "32"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.splitlines()[-1]) == {"warmed": 0, "seconds": 0.0, "why": "no GPU"}
    assert warm([TINY.replace(fused_norm=False)], (3, 4), 32)["why"] == "nothing uses the fused norm"


# A fresh process: one eager train step and one validation pass of TINY, then what Inductor's caches answered.
FRESH_TRIAL = """
import json, torch
from types import SimpleNamespace
from torch._dynamo.utils import counters
from cyclegan.config import TrainConfig
from cyclegan.evaluate import validation_pass
from cyclegan.train import Trainer
cfg = TrainConfig.from_dict(json.loads(%r))
t = Trainer.build(cfg, "cuda")
x = torch.rand(cfg.batch_size, 1, cfg.resize, cfg.resize, device="cuda").contiguous(memory_format=torch.channels_last)
t.step(x, x)
v = torch.rand(3, 1, 32, 32, device="cuda")
validation_pass(t.models.g_t1_t2, t.models.g_t2_t1, SimpleNamespace(t1=v, t2=v, t1_head=v > 0.1, t2_head=v > 0.1,
                paired=True, resize=cfg.resize, size=32), t.autocast)
torch.cuda.synchronize()
print(json.dumps({k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the fused norm compiles on a GPU only")
def test_after_the_warm_up_a_fresh_trial_process_loads_every_compiled_norm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": pythonpath(), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    (tmp_path / "configs.json").write_text(json.dumps([TINY.to_dict()]))
    p = subprocess.run([sys.executable, "-m", "cyclegan.norm_warmup", str(tmp_path / "configs.json"), "--val", "3",
                        "3", "--eval-size", "32"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.splitlines()[-1])["warmed"] == 1
    trial = subprocess.run([sys.executable, "-c", FRESH_TRIAL % json.dumps(TINY.to_dict())], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert trial.returncode == 0, trial.stderr[-3000:]
    cache = json.loads(trial.stdout.splitlines()[-1])
    assert cache.get("fxgraph_cache_hit", 0) > 0 and cache.get("fxgraph_cache_miss", 0) == 0, cache
