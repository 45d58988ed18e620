from __future__ import annotations

import json
import math
import time

import pytest
import torch

from cyclegan import checkpoint
from cyclegan.data import load_data
from cyclegan.metrics import REPORTED_METRICS
from cyclegan.networks import ResnetBlock
from cyclegan.train import TIMING_METRICS, CycleGAN, ImagePool, discriminator_update, fit, generator_update, train_step


def _optimizers(m: CycleGAN):
    return (torch.optim.Adam([*m.g_t1_t2.parameters(), *m.g_t2_t1.parameters()], lr=2e-4, betas=(0.5, 0.999)),
            torch.optim.Adam([*m.d_t1.parameters(), *m.d_t2.parameters()], lr=2e-4, betas=(0.5, 0.999)))


def _params(net):
    return torch.cat([p.detach().flatten().clone() for p in net.parameters()])


@pytest.mark.parametrize("gan", ["lsgan", "bce"])
def test_generator_update_moves_generators_and_leaves_discriminators(tiny_cfg, gan):
    cfg = tiny_cfg.replace(gan_loss=gan)
    torch.manual_seed(0)
    m = CycleGAN.build(cfg)
    opt_g, opt_d = _optimizers(m)
    x1, x2 = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    before = {k: _params(v) for k, v in m.named().items()}
    losses, fake_t1, fake_t2 = generator_update(m, opt_g, x1, x2, cfg)
    after = {k: _params(v) for k, v in m.named().items()}
    assert all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(before["g_t1_t2"], after["g_t1_t2"]) and not torch.equal(before["g_t2_t1"], after["g_t2_t1"])
    assert torch.equal(before["d_t1"], after["d_t1"]) and torch.equal(before["d_t2"], after["d_t2"])
    loss_d = discriminator_update(m, opt_d, x1, x2, fake_t1, fake_t2, cfg)
    assert torch.isfinite(loss_d)
    assert not torch.equal(after["d_t1"], _params(m.d_t1))
    assert torch.equal(after["g_t1_t2"], _params(m.g_t1_t2))


def test_train_step_reports_the_four_losses_without_identity_when_its_weight_is_zero(tiny_cfg):
    cfg = tiny_cfg.replace(lambda_identity=0.0)
    m = CycleGAN.build(cfg)
    losses = train_step(m, *_optimizers(m), torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32),
                        (ImagePool(2), ImagePool(2)), cfg)
    assert set(losses) == {"loss_cycle", "loss_identity", "loss_G", "loss_D"}
    assert losses["loss_identity"].item() == 0.0


def test_image_pool_fills_then_swaps_half_the_time():
    torch.manual_seed(0)
    pool = ImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: passed through
    later = torch.arange(10.0, 1010.0).view(1000, 1, 1, 1)  # larger than the pool: it goes in pool-sized chunks
    out = pool.query(later)
    swapped = (out != later).float().mean().item()
    assert 0.4 < swapped < 0.6
    assert ImagePool(0).query(later) is later


def test_a_batch_that_fills_the_pool_stores_its_first_fakes_and_swaps_the_rest_against_the_full_pool():
    for seed in range(20):
        torch.manual_seed(seed)
        pool = ImagePool(5)
        pool.query(torch.arange(3.0).view(3, 1, 1, 1))
        out = pool.query(torch.arange(10.0, 14.0).view(4, 1, 1, 1)).flatten().tolist()
        assert int(pool.count) == 5 and out[:2] == [10.0, 11.0]  # stored in the last two slots and passed through
        # The other two meet a full pool, the two just stored included: each goes out or is swapped, none is lost.
        assert sorted([*pool.stored.flatten().tolist(), *out[2:]]) == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 13.0]


def test_an_image_pool_query_runs_the_same_operations_filling_or_full():
    """What lets a CUDA graph capture a step whose pool is still filling: nothing the host decides from its count."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    pool = ImagePool(4)
    pool.query(torch.zeros(2, 1, 2, 2))  # allocates the pool
    seen = []
    for _ in range(3):  # filling, just full, full
        with Ops() as ops:
            pool.query(torch.ones(2, 1, 2, 2))
        seen.append(ops.names)
    assert seen[0] == seen[1] == seen[2] and int(pool.count) == 4


@pytest.mark.slow  # trains 3 epochs
def test_fit_reports_every_epoch_with_all_metrics_and_learns(tiny_cfg):
    data = load_data("synthetic", 32)
    seen = []
    fit(tiny_cfg.replace(epochs=3), data, report=lambda metrics, save: seen.append(metrics))
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    for m in seen:
        assert set(REPORTED_METRICS) <= set(m) and m["paired"] is True
        assert all(torch.isfinite(torch.tensor(float(m[k]))) for k in REPORTED_METRICS)
    assert seen[-1]["loss_cycle"] < seen[0]["loss_cycle"]


def test_each_epoch_reports_its_logging_time_and_the_previous_reports_time(tiny_cfg, tmp_path):
    seen = []

    def report(metrics, save):
        seen.append(dict(metrics))
        time.sleep(0.3 if metrics["epoch"] == 1 else 0.0)  # a report that waits, as tune.report does for the driver

    fit(tiny_cfg.replace(epochs=3), load_data("synthetic", 32), report=report, log_dir=tmp_path)
    assert [m["report_seconds"] for m in seen][0] == 0.0  # the first epoch has no report before it
    assert 0.3 <= seen[1]["report_seconds"] < 0.3 + 0.5 and seen[2]["report_seconds"] < 0.3
    assert all(m["log_seconds"] > 0 for m in seen)  # TensorBoard events written each epoch


def test_a_short_fit_with_the_reference_resnet_generator_trains_and_checkpoints(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(generator="resnet_6blocks", epochs=1, lr_d_scale=2.0)
    seen = []
    result = fit(cfg, load_data("synthetic", 32), report=lambda m, save: (seen.append(m), save(tmp_path / "c.pt")))
    assert [m["epoch"] for m in seen] == [1] and all(math.isfinite(seen[0][k]) for k in REPORTED_METRICS)
    assert sum(isinstance(m, ResnetBlock) for m in result.models.g_t1_t2.modules()) == 6
    _, g, _ = checkpoint.generators(checkpoint.load(tmp_path / "c.pt"))
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(g(x), result.models.g_t1_t2.eval()(x))


def test_checkpoint_round_trip_gives_identical_outputs(tiny_cfg, tmp_path):
    # On the CPU, where results are bit-exact; on a GPU cuDNN's algorithm choice may differ between two loads.
    data = load_data("synthetic", 32)
    saved = {}
    result = fit(tiny_cfg.replace(epochs=1), data, device="cpu",
                 report=lambda m, save: save(tmp_path / "checkpoint.pt"))
    cfg, g, f = checkpoint.load_generators(tmp_path)
    x = data.test.t1[:2]
    result.models.g_t1_t2.eval()
    result.models.g_t2_t1.eval()
    with torch.no_grad():
        assert torch.equal(g(x), result.models.g_t1_t2(x))
        assert torch.equal(f(x), result.models.g_t2_t1(x))
    assert cfg == tiny_cfg.replace(epochs=1) and not saved


@pytest.mark.slow  # trains 3 epochs, twice
def test_resume_continues_exactly(tiny_cfg, tmp_path):
    # Bit-exact on the CPU. On a GPU (measured on an H100) a resumed run drifts from the straight one by about
    # the size of a few Adam steps: cuDNN's backward kernels are not deterministic, so this checks the CPU.
    data = load_data("synthetic", 32)
    straight = fit(tiny_cfg.replace(epochs=3), data, device="cpu")
    fit(tiny_cfg.replace(epochs=3), data, device="cpu",
        report=lambda m, save: save(tmp_path / "checkpoint.pt") if m["epoch"] == 2 else None)
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 2
    resumed = fit(tiny_cfg.replace(epochs=3), data, device="cpu", resume=state)
    assert [h["epoch"] for h in resumed.history] == [3]
    for name, net in straight.models.named().items():
        assert torch.equal(_params(net), _params(resumed.models.named()[name])), name
    timing = TIMING_METRICS
    same = lambda h: {k: v for k, v in h.items() if k not in timing}  # noqa: E731
    assert same(resumed.history[-1]) == same(straight.history[-1])


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_cfg, tmp_path):
    data = load_data("synthetic", 32)
    fit(tiny_cfg.replace(epochs=1), data, report=lambda m, save: save(tmp_path / "checkpoint.pt"))
    with pytest.raises(checkpoint.CheckpointError, match="other settings \\(ngf=4, not 8\\)"):
        fit(tiny_cfg.replace(ngf=4), data, resume=checkpoint.load(tmp_path / "checkpoint.pt"))


def test_damaged_checkpoints_are_named(tmp_path, tiny_cfg):
    data = load_data("synthetic", 32)
    fit(tiny_cfg.replace(epochs=1), data, report=lambda m, save: save(tmp_path / "checkpoint.pt"))
    good = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.pt: unreadable or truncated"):
        checkpoint.load(tmp_path / "checkpoint.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint of this project"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="holds neither model.pt"):
        checkpoint.load_generators(tmp_path / "nothing")
    # Weights of another architecture under a matching config are refused, not half-loaded.
    payload = json.loads(json.dumps(tiny_cfg.to_dict()))
    (tmp_path / "x").mkdir()
    other = fit(tiny_cfg.replace(epochs=1, ngf=4), data).models
    checkpoint.save(tmp_path / "x" / "model.pt", {"config": payload,
                                                  "g_t1_t2": checkpoint.state_dict(other.g_t1_t2),
                                                  "g_t2_t1": checkpoint.state_dict(other.g_t2_t1)})
    with pytest.raises(checkpoint.CheckpointError, match="does not match its own config"):
        checkpoint.load_generators(tmp_path / "x")


def test_cycle_noise_perturbs_only_what_the_cycle_reconstructs(tiny_cfg):
    """With cycle_noise the cycle loss sees noisy translations; the translations themselves are unchanged."""
    x1, x2 = torch.rand(2, 1, 32, 32) * 2 - 1, torch.rand(2, 1, 32, 32) * 2 - 1
    out = {}
    for sigma in (0.0, 0.5):
        cfg = tiny_cfg.replace(cycle_noise=sigma, dropout=0.0)
        torch.manual_seed(0)
        m = CycleGAN.build(cfg)
        losses, fake_t1, fake_t2 = generator_update(m, _optimizers(m)[0], x1, x2, cfg)
        out[sigma] = (losses, fake_t1, fake_t2)
    assert torch.equal(out[0.0][1], out[0.5][1]) and torch.equal(out[0.0][2], out[0.5][2])
    assert out[0.0][0]["loss_G"].item() == out[0.5][0]["loss_G"].item()
    assert out[0.0][0]["loss_cycle"].item() != out[0.5][0]["loss_cycle"].item()


def test_cycle_noise_must_not_be_negative(tiny_cfg):
    from cyclegan.config import ConfigError

    with pytest.raises(ConfigError, match="cycle_noise must be >= 0"):
        tiny_cfg.replace(cycle_noise=-0.1)


@pytest.mark.parametrize("generator,identity", [("unet", 0.5), ("unet", 0.0), ("resnet_6blocks", 0.5)])
def test_stacked_passes_give_the_separate_passes_losses_and_gradients(tiny_cfg, generator, identity):
    """Stacking a network's independent passes into one batch changes neither a loss nor a gradient (float64)."""
    from cyclegan.train import discriminator_loss, generator_losses

    x1, x2 = (torch.rand(2, 1, 32, 32, dtype=torch.float64) * 2 - 1 for _ in range(2))
    pool_t1, pool_t2 = (torch.rand(2, 1, 32, 32, dtype=torch.float64) * 2 - 1 for _ in range(2))
    out = {}
    for stacked in (False, True):
        cfg = tiny_cfg.replace(generator=generator, lambda_identity=identity, dropout=0.0, stacked_passes=stacked)
        torch.manual_seed(0)
        m = CycleGAN.build(cfg)
        for net in m.named().values():
            net.double()
        total, losses, fake_t1, fake_t2 = generator_losses(m, x1, x2, cfg)
        loss_d = discriminator_loss(m, x1, x2, pool_t1, pool_t2, cfg)
        (total + loss_d).backward()
        grads = {f"{k}.{n}": p.grad for k, net in m.named().items() for n, p in net.named_parameters()}
        out[stacked] = ({**losses, "loss_D": loss_d}, fake_t1, fake_t2, grads)
    (l0, f1, f2, g0), (l1_, s1, s2, g1) = out[False], out[True]
    assert l0.keys() == l1_.keys() and all(torch.allclose(l0[k], l1_[k], rtol=1e-10, atol=1e-12) for k in l0)
    assert torch.allclose(f1, s1, atol=1e-12) and torch.allclose(f2, s2, atol=1e-12)
    assert g0.keys() == g1.keys()
    for name, g in g0.items():
        assert (g is None) == (g1[name] is None), name
        if g is not None:
            assert torch.allclose(g, g1[name], rtol=1e-9, atol=1e-12), name
    assert sum(g.abs().sum().item() for g in g0.values() if g is not None) > 0
