"""The fused-trials benchmark (benchmarks/hfta.py) on the CPU: the stacked networks compute what each network
computes alone, and a fused step of K trials runs and stays finite.

    python -m pytest tests/cyclegan/test_hfta_bench.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks import hfta
from cyclegan.config import TrainConfig
from cyclegan.train import CycleGAN


def test_stacked_networks_give_each_networks_own_output_and_gradients_of_their_own_shape():
    cfg = TrainConfig(resize=32, unet_depth=5, disc_layers=2, dropout=0.0, ngf=8, ndf=8)
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(CycleGAN.build(cfg))
    x = torch.rand(3, 2, 1, 32, 32) * 2 - 1
    for name in ("g_t1_t2", "d_t1"):
        stacked = hfta.Stacked([n.named()[name] for n in nets])
        y = stacked(x)
        for i, n in enumerate(nets):
            assert torch.allclose(y[i], n.named()[name](x[i]), atol=1e-5), (name, i)
        y.square().sum().backward()
        own = dict(nets[0].named()[name].named_parameters())
        assert [p.grad.shape[1:] for p in stacked.stacked] == [own[k].shape for k in stacked.names]
        assert all(p.grad.shape[0] == 3 for p in stacked.stacked)


def test_the_benchmark_runs_a_fused_step_on_the_cpu(tmp_path: Path):
    out = tmp_path / "hfta.json"
    assert hfta.main(["--device", "cpu", "--ks", "1", "2", "--size", "32", "--depth", "5", "--steps", "1",
                      "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["k"] for r in rows] == [1, 2] and all(r["finite"] and r["pairs_per_s"] > 0 for r in rows)
