"""The benchmark at a tiny size on the CPU, the graph runner's eager logic, and (on a GPU) graphed = eager."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import bench
from cyclegan.config import TrainConfig
from cyclegan.data import load_data
from cyclegan.evaluate import scores, translations
from cyclegan.graphed import STOP_LAUNCHING, EpochHalted, Replay
from cyclegan.images import tile, to_uint8
from cyclegan.memory import estimate_memory, footprint
from cyclegan.metrics import DIRECTIONS, IMAGE_METRICS, psnr, ssim
from cyclegan.train import Trainer, epoch_order, train_step
from cyclegan.training_state import load_optimizer as _load_optimizer
from tests.paths import ROOT, pythonpath

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: CUDA graph capture and replay")


def _params(t: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for net in t.models.named().values() for p in net.parameters()])


@pytest.mark.slow  # the benchmark on the CPU, the longest test of the fast tier before
def test_bench_runs_on_the_cpu_and_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--size", "32", "--depth", "5", "--batches", "2", "--steps", "2",
                       "--processes", "1", "--duration", "0.5", "--epochs", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {"device", "torch", "command", "flops_per_pair", "steps", "processes", "epoch"} <= set(res)
    assert "errors" not in res
    (row,) = res["steps"]
    assert row["batch"] == 2 and row["ratio"] > 0
    for key in ("reference", "fast"):
        assert {"pairs_per_s", "step_ms", "tflops", "peak_allocated", "peak_reserved"} <= set(row[key])
    assert row["fast"]["finite"] and not row["fast"]["captured"]  # no graphs on the CPU
    (procs,) = res["processes"]
    assert procs["k"] == 1 and procs["pairs_per_s"] > 0 and len(procs["per_process"]) == 1
    epoch = res["epoch"]
    assert {"train", "val", "log", "report"} == set(epoch["mean_s"]) and 0 < epoch["val_log_share"] < 1
    assert epoch["checkpoint_each_s"] > 0 and len(epoch["per_epoch"]) == 2


def test_each_timing_runs_in_a_fresh_process_and_a_failure_there_is_recorded():
    assert bench._guard(partial(dict, pid=0), own_process=True) == {"pid": 0}
    assert bench._in_own_process(os.getpid) != os.getpid()
    assert bench._guard(partial(int, "x"), own_process=True) == {
        "error": "ValueError: invalid literal for int() with base 10: 'x'"}


def test_flops_are_counted_not_assumed():
    # One pair at 256x256 and depth 8 is about 313.5 GFLOP forward and backward (the reference's figure).
    args = type("A", (), {"size": 256, "depth": 8})()
    assert bench.flops_per_pair(bench.trial_config(args, 1)) == pytest.approx(313.5e9, rel=1e-3)


def test_reference_pool_is_the_host_list_of_the_reference():
    random.seed(0)
    pool = bench.HostImagePool(3)
    first = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and len(pool.images) == 3
    later = torch.arange(100.0, 300.0).view(200, 1, 1, 1)
    out = pool.query(later)
    swapped = out != later  # an older fake handed out instead, the new one kept
    assert 0.4 < swapped.float().mean().item() < 0.6 and (out[swapped] < later[swapped]).all()


def test_step_runner_gives_the_plain_loops_batches_and_weights(tiny_cfg):
    """The runner's static buffers, device step counter and loss sums equal the readable loop, bit for bit."""
    data = load_data("synthetic", 32).train
    steps, b = 3, tiny_cfg.batch_size
    o1, o2 = epoch_order(len(data.t1), steps, b, 0, 1), epoch_order(len(data.t2), steps, b, 1, 1)
    plain, ran = Trainer.build(tiny_cfg, "cpu"), Trainer.build(tiny_cfg, "cpu")
    assert torch.equal(_params(plain), _params(ran))
    torch.manual_seed(5)
    sums: dict[str, float] = {}
    for _ in range(2):  # the second epoch reuses the buffers and restarts the counter
        for s in range(steps):
            batch = slice(s * b, (s + 1) * b)
            losses = train_step(plain.models, plain.opt_g, plain.opt_d, data.t1[o1[batch]], data.t2[o2[batch]],
                                plain.pools, tiny_cfg)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item() / steps
        want = dict(sums)
        sums.clear()
    torch.manual_seed(5)
    runner = ran.runner(ran.feed(data.t1, data.t2, steps, bits=None), steps)
    for _ in range(2):
        got = runner.run_epoch(o1, o2)
    assert torch.equal(_params(plain), _params(ran))
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-6) for k in want)
    assert runner.counter.item() == steps and not runner.replay.captured


def test_an_epoch_stops_launching_steps_once_the_process_is_exiting(tiny_cfg, monkeypatch):
    data = load_data("synthetic", 32).train
    steps, b = 5, tiny_cfg.batch_size
    t = Trainer.build(tiny_cfg, "cpu")
    runner = t.runner(t.feed(data.t1, data.t2, steps, bits=None), steps)
    after_step = runner.feed.after_step

    def exit_begins_during_the_second_step(k: int) -> None:
        after_step(k)
        if k == 1:
            STOP_LAUNCHING.set()

    monkeypatch.setattr(runner.feed, "after_step", exit_begins_during_the_second_step)
    orders = [epoch_order(len(x), steps, b, k, 1) for k, x in enumerate((data.t1, data.t2))]
    try:
        with pytest.raises(EpochHalted, match=r"^the process is exiting: the epoch stopped after 2 of 5 steps$"):
            runner.run_epoch(*orders)
    finally:
        STOP_LAUNCHING.clear()
    assert runner.counter.item() == 2


def test_replay_captures_after_its_warm_up_calls_and_then_only_replays(monkeypatch):
    calls, captures = [], []

    class FakeGraph:
        def replay(self):
            calls.append("replay")

    def capture(self):
        captures.append(len(calls))
        self.graph = FakeGraph()
        return True

    monkeypatch.setattr(Replay, "_eager", lambda self: (calls.append("eager"), setattr(self, "eager_calls",
                                                                                        self.eager_calls + 1)))
    monkeypatch.setattr(Replay, "_capture", capture)
    r = Replay(lambda: None, enabled=True, name="t", warmup=2)
    for _ in range(5):
        r()
    # Two warm-up calls, then the capture, whose call is the first replay, and replays only.
    assert calls == ["eager"] * 2 + ["replay"] * 3 and captures == [2] and r.captured
    assert r.first_call_seconds >= 0 and r.capture_seconds >= 0  # what the warm-up's parts took on the host


def test_replay_splits_its_first_call_into_waiting_and_computing_on_the_host():
    import threading

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    waits = Replay(lambda: time.sleep(0.3), enabled=False, name="t")
    waits()
    assert waits.first_call_seconds >= 0.3 and waits.first_call_cpu_seconds < 0.1

    # The first call computes on the host while another thread of the process computes too: the process's CPU
    # seconds hold both, the thread's only its own.
    other = threading.Thread(target=spin, args=(0.6,))
    computes = Replay(lambda: spin(0.4), enabled=False, name="t")
    other.start()
    computes()
    other.join()
    assert computes.first_call_cpu_seconds >= 0.1  # the GIL is shared, so not all of 0.4 s
    assert computes.first_call_process_cpu_seconds >= computes.first_call_cpu_seconds + 0.1


def test_replay_runs_eagerly_when_disabled():
    n = []
    r = Replay(lambda: n.append(1) or len(n), enabled=False, name="t")
    assert [r() for _ in range(3)] == [1, 2, 3] and not r.captured


def test_capture_failure_warns_once_and_falls_back(monkeypatch):
    undone = []
    r = Replay(lambda: "eager", enabled=True, name="train step", warmup=0, on_failure=lambda: undone.append(1))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: (_ for _ in ()).throw(RuntimeError("no graphs here\nmore")))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: None)
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: None)
    failed = r"train step: CUDA graph capture failed, running eagerly \(no graphs here\)$"
    with pytest.warns(UserWarning, match=failed):
        assert r() == "eager"
    assert not r.enabled and undone == [1] and r() == "eager"


def test_scheduler_updates_a_tensor_learning_rate_in_place(tiny_cfg):
    """A captured optimizer reads its lr tensor's memory: the schedule must change it there."""
    t = Trainer.build(tiny_cfg.replace(lr_schedule="linear", epochs=4), "cpu")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    t.step(x, x.flip(0))
    held = torch.tensor(t.opt_g.param_groups[0]["lr"])
    t.opt_g.param_groups[0]["lr"] = held
    for _ in range(3):
        t.end_epoch()
    assert t.opt_g.param_groups[0]["lr"] is held
    assert held.item() == pytest.approx(t.opt_d.param_groups[0]["lr"]) and held.item() < tiny_cfg.lr


def test_loading_an_optimizer_keeps_this_runs_kind(tiny_cfg):
    """Checkpoints of the graphed path (lr tensor) load into the eager one and back: the moments and step counts
    come from the checkpoint; the rate stays this run's kind and value (`load_scheduler` then moves it to the
    checkpoint's epoch, and a continued run with new knobs, as PBT's, keeps its own)."""
    t = Trainer.build(tiny_cfg, "cpu")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    t.step(x, x.flip(0))
    state = t.opt_g.state_dict()
    state["param_groups"][0]["lr"] = torch.tensor(1e-4)  # as a capturable optimizer writes it
    _load_optimizer(t.opt_g, state)
    lr = t.opt_g.param_groups[0]["lr"]
    assert lr == pytest.approx(tiny_cfg.lr) and isinstance(lr, float)
    held = torch.tensor(3e-4)
    t.opt_g.param_groups[0]["lr"] = held  # the tensor a captured step reads
    _load_optimizer(t.opt_g, {**state, "param_groups": [{**state["param_groups"][0], "lr": 5e-5}]})
    assert t.opt_g.param_groups[0]["lr"] is held and held.item() == pytest.approx(3e-4)
    step = next(iter(t.opt_g.state.values()))["step"]
    assert step.device.type == "cpu" and step.item() == 1


def test_loaded_moments_take_their_parameters_layout():
    """A checkpoint holds Adam's moments contiguous (the writer's pinned copies); on a GPU the networks' parameters
    are channels_last, and the fused step takes moments only in its parameters' layout (a retried trial failed so,
    "params, grads, exp_avgs, and exp_avg_sqs must have same dtype, device, and layout", before this)."""
    net = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), fused=True)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    net(x).sum().backward()
    opt.step()
    moments = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in net.parameters()}
    state = opt.state_dict()
    for s in state["state"].values():
        s.update({k: v.contiguous() for k, v in s.items() if v.dim() == 4})  # as the checkpoint holds them
    assert net.weight.stride() != state["state"][0]["exp_avg"].stride()
    fresh = torch.optim.Adam(net.parameters(), fused=True)
    _load_optimizer(fresh, state)
    for p in net.parameters():
        for k in ("exp_avg", "exp_avg_sq"):
            assert fresh.state[p][k].stride() == p.stride() and torch.equal(fresh.state[p][k], moments[id(p)][k])


def test_batched_validation_scores_equal_the_per_row_metrics(tiny_cfg):
    data = load_data("synthetic", 32)
    t = Trainer.build(tiny_cfg, "cpu")
    outs = translations(t.models.g_t1_t2, t.models.g_t2_t1, data.val)
    got = dict(zip(IMAGE_METRICS, scores(outs, data.val).tolist()))
    s = data.val
    rows = {"t1_t1": (outs["rec_t1"], s.t1, s.t1_head), "t2_t2": (outs["rec_t2"], s.t2, s.t2_head),
            "t1_t2": (outs["fake_t2"], s.t2, s.t2_head), "t2_t1": (outs["fake_t1"], s.t1, s.t1_head)}
    for d in DIRECTIONS:
        out, ref, head = ((v + 1) / 2 if v.dtype != torch.bool else v for v in rows[d])
        assert got[f"ssim_{d}"] == pytest.approx(ssim(out, ref).mean().item(), abs=1e-6)
        assert got[f"psnr_{d}"] == pytest.approx(psnr(out, ref).mean().item(), abs=1e-4)
        assert got[f"ssim_{d}_head"] == pytest.approx(ssim(out, ref, head).mean().item(), abs=1e-6)
        assert got[f"psnr_{d}_head"] == pytest.approx(psnr(out, ref, head).mean().item(), abs=1e-4)


def test_memory_estimate_grows_with_the_batch_and_counts_on_the_meta_device():
    small, large = TrainConfig(batch_size=2), TrainConfig(batch_size=32)
    f2, f32 = footprint(small), footprint(large)
    assert f2.params == f32.params == 114_332_292  # two U-Net-256s and two 70x70 PatchGANs
    assert f32.activation_bytes == 16 * f2.activation_bytes
    assert 1 * 2**30 < estimate_memory(small) < estimate_memory(large) < 40 * 2**30
    fp32 = small.replace(precision="fp32", cuda_graphs=False, channels_last=False, fused_adam=False)
    assert estimate_memory(fp32) >= estimate_memory(small) * 0.9


def test_trials_that_differ_in_knobs_that_save_nothing_share_one_count_and_the_same_count():
    """A search's trials differ in learning rates, loss weights and epochs; their footprint is traced once, and is
    what tracing each one would count."""
    from cyclegan.memory import _saved_per_pair, saved_knobs

    base = TrainConfig(resize=64, unet_depth=6, ngf=16, ndf=16, batch_size=1)
    variants = [base.replace(lr=1e-3, lr_d_scale=2.0, beta1=0.9, lr_schedule="linear", epochs=7, seed=3),
                base.replace(lambda_cycle=17.0, lambda_disc=1.0, lambda_identity=0.1),
                base.replace(cycle_noise=0.3), base.replace(pool_size=0, batch_size=3, sample_every=2)]
    traced = _saved_per_pair.__wrapped__  # the trace itself, without the cache
    for cfg in variants:
        assert traced(cfg) == traced(saved_knobs(cfg))
        assert (saved_knobs(cfg) == saved_knobs(base)) == (cfg.cycle_noise == 0)
    # On or off matters: without identity passes the generator update saves less.
    no_identity = base.replace(lambda_identity=0.0)
    assert saved_knobs(no_identity) != saved_knobs(base)
    assert traced(no_identity)[1] < traced(base)[1]
    _saved_per_pair.cache_clear()
    for cfg in (base, *variants):
        footprint(cfg)
    assert _saved_per_pair.cache_info().misses == 2  # base and the one with noise on the cycle
    assert footprint(variants[3]).activation_bytes == 3 * footprint(base).activation_bytes
    assert footprint(variants[3]).pool_bytes == 0


def test_memory_estimate_counts_the_resnet_generator():
    """The estimate runs the real train step on the meta device, so it holds for any generator."""
    resnet = TrainConfig(batch_size=2, generator="resnet_9blocks")
    f, unet = footprint(resnet), footprint(TrainConfig(batch_size=2))
    assert f.params == 2 * 11_365_633 + 2 * 2_762_689  # two resnet_9blocks and two 70x70 PatchGANs
    # A quarter of the U-Net's weights, but full-size maps at both ends and 4 * ngf maps at a quarter of the size
    # through all nine blocks: far more activations kept for the backward pass.
    assert f.params < unet.params / 3 and f.activation_bytes > 4 * unet.activation_bytes
    assert 1 * 2**30 < estimate_memory(resnet) < 40 * 2**30


def test_the_validation_pass_is_counted_with_the_trials_own_generator():
    """The validation pass's count runs the trial's generator: a ResNet at a size no depth-8 U-Net takes, and one
    whose full-size maps through its blocks hold more than the U-Net of the same width."""
    from cyclegan.memory import validation_bytes

    resnet = TrainConfig(resize=64, generator="resnet_6blocks", ngf=64)
    unet = TrainConfig(resize=64, unet_depth=6, ngf=64)
    assert validation_bytes(resnet, 1, 1, 64) > validation_bytes(unet, 1, 1, 64) > 0


def _whole_validation_pass_bytes(cfg: TrainConfig, v1: int, v2: int, size: int) -> int:
    from cyclegan.evaluate import validation_pass
    from cyclegan.memory import LiveBytes, _meta_split
    from cyclegan.train import CycleGAN

    with torch.device("meta"):
        m = CycleGAN.build(cfg)
    s = _meta_split(v1, v2, size, cfg.resize)
    with LiveBytes() as live:
        validation_pass(m.g_t1_t2, m.g_t2_t1, s, resize=cfg.resize)
    return live.peak


def test_the_validation_count_taken_in_two_parts_is_that_of_the_whole_pass():
    """The estimate counts the translations per generator and their scoring once a split; the peak is the same as
    counting the whole validation pass at once."""
    from cyclegan import memory

    for cfg, (v1, v2, size) in ((TrainConfig(resize=64, unet_depth=6, ngf=16), (4, 4, 80)),
                                (TrainConfig(resize=32, generator="resnet_6blocks", ngf=8), (3, 5, 32))):
        _whole_validation_pass_bytes(cfg, v1, v2, size)  # the first pass also makes the scoring's cached constants
        memory._scoring_bytes.cache_clear()
        knobs = tuple(getattr(cfg, k) for k in memory._MODEL_KNOBS)
        assert memory._validation_bytes.__wrapped__(knobs, v1, v2, size) == _whole_validation_pass_bytes(
            cfg, v1, v2, size) > 0


@needs_cuda
def test_graphed_fit_equals_eager_fit_on_the_gpu(tmp_path):
    res: dict = {}
    bench.section_check(None, torch.device("cuda"), res, lambda: None)
    assert res["check"]["ok"], res["check"]
    assert not res["check"]["warnings"]


@pytest.mark.slow  # trains 3 epochs
def test_fit_writes_grey_samples_and_scalars_from_its_background_thread(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cyclegan.train import fit

    data = load_data("synthetic", 32)
    # fp32, so that the check below can redo the last validation pass (on a GPU too, where it is graphed).
    result = fit(tiny_cfg.replace(epochs=3, sample_every=2, precision="fp32"), data, log_dir=tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    samples = events.Images("val/samples")
    side = data.eval_size  # val is held at the eval size (256 for the phantom), whatever the resize (32)
    assert [e.step for e in samples] == [1, 2, 3] and (samples[0].height, samples[0].width) == (6 * side, 4 * side)
    # The last picture is the final model's validation pass: T1, G(T1), F(G(T1)), T2, F(T2), G(F(T2)).
    m = result.models
    val = data.val.to(next(m.g_t1_t2.parameters()).device)
    outs = translations(m.g_t1_t2, m.g_t2_t1, val)
    rows = [val.t1[:4], outs["fake_t2"][:4], outs["rec_t1"][:4], val.t2[:4], outs["fake_t1"][:4], outs["rec_t2"][:4]]
    picture = np.asarray(Image.open(io.BytesIO(samples[-1].encoded_image_string)))
    assert picture.dtype == np.uint8 and np.abs(picture.astype(int) - to_uint8(tile(rows))[0].cpu().numpy()).max() <= 1
    assert [e.step for e in events.Scalars("val/ssim_t1_t2")] == [1, 2, 3]
    assert [set(t) for t in result.timings] == [{"train", "val", "log", "report"}] * 3


@pytest.mark.parametrize("module", ["benchmarks.bench", "cyclegan.bench"])
def test_the_benchmark_is_a_tool_beside_the_library_and_both_commands_run_it(module: str, tmp_path: Path):
    # From another folder, as a user of a checkout would: the old command still reaches the moved module.
    run = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": pythonpath()}, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m benchmarks.bench") and "--sections" in run.stdout
    assert (ROOT / "benchmarks/bench.py").is_file() and len((ROOT / "cyclegan/bench.py").read_text().splitlines()) < 10
