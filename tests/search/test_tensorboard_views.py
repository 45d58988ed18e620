"""TensorBoard as a person sees it, on a real tiny search: one run per trial, grouped tags, HParams led by the
objective, and headless Chromium's screenshots of the scalars, images and HParams views."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from tests.search.test_run import ROOT, run
from tools import tensorboard_screenshots as shots

pytestmark = pytest.mark.slow  # a real search, then Chromium screenshots of TensorBoard

# The README's quick search, two trials of two epochs.
SEARCH = ["search.run", str(ROOT / "spaces" / "unet_depth.yaml"), "--num-samples", "2", "--gpus-per-trial", "0",
          "--set", "resize=32", "--set", "unet_depth=5", "--set", "disc_layers=2", "--set", "ngf=8", "--set", "ndf=8",
          "--set", "epochs=2", "--set", "batch_size=2"]
RAY_INTERNALS = ("ray/", "done", "should_checkpoint", "iterations_since_restore", "training_iteration",
                 "time_this_iter_s", "timestamp")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tensorboard")
    p = run(*SEARCH, "--storage", str(tmp / "runs"), cwd=tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp / "runs" / "unet_depth"


def event_dirs(run_dir: Path) -> set[Path]:
    return {f.parent for f in run_dir.rglob("events.out.tfevents.*")}


def test_each_trial_is_one_run_with_grouped_tags_and_no_ray_internals(run_dir):
    trials = sorted(run_dir.glob("trial_*"))
    assert len(trials) == 2
    # One run a trial: events in the trial's folder and nowhere else (Ray's logger wrote a second run there).
    assert event_dirs(run_dir) == set(trials)
    for trial in trials:
        assert len(list(trial.glob("events.out.tfevents.*"))) == 1, trial
        events = EventAccumulator(str(trial), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        events.Reload()
        scalars = events.Tags()["scalars"]
        assert {"loss/cycle", "loss/identity", "loss/G", "loss/D", "val/objective", "val/ssim_t1_t2",
                "val/psnr_t2_t1", "val/contrast_t1_t2"} <= set(scalars)
        assert all(t.split("/")[0] in ("loss", "val", "speed") and t.count("/") == 1 for t in scalars), scalars
        assert not [t for t in scalars if any(x in t for x in RAY_INTERNALS)], scalars
        # The objective logged is the one reported to Ray, epoch by epoch.
        reported = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
        logged = events.Scalars("val/objective")
        assert [e.step for e in logged] == [m["epoch"] for m in reported]
        assert [e.value for e in logged] == pytest.approx([m["objective"] for m in reported], rel=1e-6)

        content = events.PluginTagToContent(metadata.PLUGIN_NAME)
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        columns = [m.name.tag for m in experiment.metric_infos]
        # The objective first, then what it weighs (the default: two contrasts, two tissues), then the study's rows.
        assert columns[:7] == ["val/objective", "val/contrast_t1_t2", "val/contrast_t2_t1", "val/tissue_t1_t2",
                               "val/tissue_t2_t1", "val/ssim_t1_t2", "val/ssim_t2_t1"], columns
        assert set(columns) <= set(scalars)
        # The knobs the two trials differ in (the grid repeated with the next seed), and marked so.
        assert [(h.name, h.differs) for h in experiment.hparam_infos] == [("seed", True)]
        session = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        assert session.group_name == trial.name and set(session.hparams) == {"seed"}
    # The sample grid, in a trial that ran to its end (one ASHA stops may end before its grid is encoded).
    finished = [t for t in trials if len((t / "metrics.jsonl").read_text().splitlines()) == 2]
    assert finished and all(EventAccumulator(str(t)).Reload().Tags()["images"] == ["val/samples"] for t in finished)


def test_screenshots_of_the_scalars_images_and_hparams_views(run_dir, tmp_path):
    chromium = shots.find_chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    trials = sorted(t.name for t in run_dir.glob("trial_*"))
    with shots.tensorboard(run_dir, len(trials)) as url:
        # What the views are drawn from: one run per trial, and HParams' columns led by the objective.
        assert sorted(shots.get_json(f"{url}/data/runs")) == trials
        tags = shots.get_json(f"{url}/data/plugin/scalars/tags")
        assert all(t.split("/")[0] in ("loss", "val", "speed") for run_tags in tags.values() for t in run_tags)
        images = shots.get_json(f"{url}/data/plugin/images/tags")
        with_samples = sorted(run for run, t in images.items() if "val/samples" in t)
        assert with_samples and set(with_samples) <= set(trials), images
        experiment = shots.post_json(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""})
        assert [m["displayName"] for m in experiment["metricInfos"]][:2] == ["objective", "contrast_t1_t2"]
        pictures = {view: shots.screenshot(chromium, f"{url}/{anchor}", tmp_path / f"{view}.png")
                    for view, anchor in shots.VIEWS.items()}
        sample = shots.get_json(f"{url}/data/plugin/images/images?" + urllib.parse.urlencode(
            {"run": with_samples[0], "tag": "val/samples"}))
    assert sample, "no sample image to show"
    from PIL import Image

    for view, path in pictures.items():
        with Image.open(path) as im:
            assert im.size == (1400, 900), view
            colours = len(im.convert("RGB").getcolors(1 << 20) or [])
            # A drawn dashboard has text, plots, pictures: thousands of colours; a blank or error page has few.
            assert colours > 200, (view, colours)
