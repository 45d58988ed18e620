"""fit's TensorBoard events (cyclegan/tensorboard.py), read back as TensorBoard reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from cyclegan import checkpoint
from cyclegan.data import load_data
from cyclegan.tensorboard import HParams, scalar_tag
from cyclegan.train import fit


def read(log_dir: Path) -> EventAccumulator:
    return EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()


def test_tags_are_grouped_and_ray_style_names_are_not_scalars():
    assert [scalar_tag(k) for k in ("loss_cycle", "loss_D", "ssim_t1_t2", "objective", "objective_1",
                                    "pairs_per_second")] == [
        "loss/cycle", "loss/D", "val/ssim_t1_t2", "val/objective", "val/objective_1", "speed/pairs_per_second"]
    assert [scalar_tag(k) for k in ("epoch", "paired", "done", "training_iteration")] == [None] * 4


def test_fit_logs_derived_metrics_and_an_hparams_view_led_by_the_first_metric(tiny_cfg, tmp_path):
    data = load_data("synthetic", 32)
    hparams = HParams({"lr": tiny_cfg.lr, "seed": 3, "gan_loss": "lsgan"}, ("objective", "ssim_t1_t2"),
                      frozenset({"seed"}), "trial_a")
    result = fit(tiny_cfg, data, device="cpu", log_dir=tmp_path, hparams=hparams,
                 derived=lambda m: {"objective": m["ssim_t1_t1"] * 2})
    events = read(tmp_path)
    scalars = events.Tags()["scalars"]
    assert {"loss/cycle", "loss/identity", "loss/G", "loss/D", "val/ssim_t1_t2", "val/objective"} <= set(scalars)
    assert all(t.split("/")[0] in ("loss", "val", "speed") for t in scalars), scalars
    assert [e.value for e in events.Scalars("val/objective")] == pytest.approx(
        [h["ssim_t1_t1"] * 2 for h in result.history])
    assert result.history[-1]["objective"] == pytest.approx(result.history[-1]["ssim_t1_t1"] * 2)
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert [(m.name.tag, m.display_name) for m in experiment.metric_infos] == [
        ("val/objective", "objective"), ("val/ssim_t1_t2", "ssim_t1_t2")]
    assert {h.name: h.differs for h in experiment.hparam_infos} == {"lr": False, "seed": True, "gan_loss": False}
    session = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert session.group_name == "trial_a" and session.hparams["gan_loss"].string_value == "lsgan"
    assert events.Tags()["images"] == ["val/samples"]


def test_a_resumed_run_shows_each_epoch_once(tiny_cfg, tmp_path):
    # An attempt that logged epochs 1-3 but was checkpointed at 2 (a retry, a resume): epoch 3 runs again.
    data = load_data("synthetic", 32)
    cfg = tiny_cfg.replace(epochs=3)
    first = fit(cfg, data, device="cpu", log_dir=tmp_path,
                report=lambda m, save: save(tmp_path / "checkpoint.pt") if m["epoch"] == 2 else None)
    resumed = fit(cfg, data, device="cpu", log_dir=tmp_path, resume=checkpoint.load(tmp_path / "checkpoint.pt"))
    logged = read(tmp_path).Scalars("loss/cycle")
    assert [e.step for e in logged] == [1, 2, 3]
    assert logged[-1].value == pytest.approx(resumed.history[-1]["loss_cycle"])
    assert first.history[-1]["loss_cycle"] == pytest.approx(logged[-1].value)  # CPU: the rerun is bit-exact


def test_hparams_takes_logged_losses_and_refuses_what_is_never_logged():
    assert len(HParams({"lr": 1e-3}, ("objective", "loss_G")).summaries()) == 2  # a space may weigh a loss
    with pytest.raises(ValueError, match="'paired'"):
        HParams({"lr": 1e-3}, ("objective", "paired")).summaries()
