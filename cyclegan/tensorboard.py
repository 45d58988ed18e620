"""A run's TensorBoard events: scalars by group, the HParams session, and sample translations.

`fit` writes one run per log folder: `loss/cycle`, `loss/identity`, `loss/G`, `loss/D` (training means),
`val/<metric>` (every image metric on val, and any metric the caller derives, such as the search's
`val/objective`), `speed/...` (pairs a second, seconds an epoch), and the image `val/samples`. The HParams
session names the run's knobs and the metrics to compare runs by, in column order: TensorBoard's HParams view
ticks only the first five metrics and the first five knobs (the varied ones first), so the order decides
what a person sees. View with `tensorboard --logdir DIR`.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cyclegan.config import TrainConfig
from cyclegan.data import Dataset
from cyclegan.images import png_bytes, tile, to_uint8
from cyclegan.metrics import IMAGE_METRICS

SAMPLES_TAG = "val/samples"
# The study's Table 3 rows: translations first (what the model is for), then the cycle reconstructions.
TABLE3 = ("ssim_t1_t2", "ssim_t2_t1", "psnr_t1_t2", "psnr_t2_t1", "ssim_t1_t1", "ssim_t2_t2", "psnr_t1_t1",
          "psnr_t2_t2")
SPEED = ("pairs_per_second", "train_seconds", "val_seconds")


def scalar_tag(name: str) -> str | None:
    """The tag an epoch's metric is logged under, or None for what is not a scalar to plot (epoch, paired)."""
    if name.startswith("loss_"):
        return f"loss/{name.removeprefix('loss_')}"
    if name in IMAGE_METRICS or name.startswith("objective"):
        return f"val/{name}"
    if name in SPEED:
        return f"speed/{name}"
    return None


@dataclass(frozen=True)
class HParams:
    """What the HParams view shows of a run.

    `knobs` are the run's settings (name -> value); those in `varied` differ between the runs compared and are
    listed first. `metrics` are epoch metrics (`objective`, `ssim_t1_t2`, ...) in column order, the one runs are
    selected by first; each column holds the metric's last logged value.
    """

    knobs: Mapping[str, Any]
    metrics: tuple[str, ...] = TABLE3
    varied: frozenset[str] = frozenset()
    group: str = ""  # the session's name in the view; empty: the run's folder

    @classmethod
    def of_config(cls, cfg: TrainConfig) -> HParams:
        return cls(cfg.to_dict())

    def summaries(self) -> list:
        """The experiment (columns) and the session start (this run's values), as summary protos."""
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.plugins.hparams import summary_v2 as hp

        knobs = {k: v for k, v in self.knobs.items() if isinstance(v, bool | int | float | str)}
        tags = [scalar_tag(m) for m in self.metrics]
        # A space may weigh a loss in one of its objectives (`loss/...`); what is never logged cannot be a column.
        unknown = [m for m, t in zip(self.metrics, tags) if t is None or not t.startswith(("val/", "loss/"))]
        if unknown:
            raise ValueError(f"HParams metrics must be logged val or loss scalars; not {unknown[0]!r}")
        config = hp.hparams_config_pb([hp.HParam(k) for k in knobs],
                                      [hp.Metric(t, display_name=m) for m, t in zip(self.metrics, tags)])
        # No domain: a run knows only its own value, and a one-value domain would filter the others' out of the
        # view. The view lists knobs that differ between runs first, and ticks only the first five; it works that
        # out only when it has no experiment to read, so the experiment says it.
        value = config.value[0]
        data = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
        for info in data.hparam_infos:
            info.differs = info.name in self.varied
            v = knobs[info.name]
            info.type = (api_pb2.DATA_TYPE_BOOL if isinstance(v, bool) else api_pb2.DATA_TYPE_STRING
                         if isinstance(v, str) else api_pb2.DATA_TYPE_FLOAT64)
        value.metadata.plugin_data.content = plugin_data_pb2.HParamsPluginData(
            version=metadata.PLUGIN_DATA_VERSION, experiment=data).SerializeToString()
        return [config, hp.hparams_pb(knobs, trial_id=self.group or None)]




@dataclass
class TensorBoard:
    """fit's TensorBoard events, written by one background thread.

    Encoding the sample image (a PNG of six rows of slices) took longer than a whole epoch of training
    steps at the study's size (docs/benchmarks.md), so the loop only copies the image to the host and goes
    on; `close` waits for the writes and raises any error they met. The scalars are on disk before `epoch`
    returns: a scheduler that stops a trial after its report ends the process without `close`, and the
    HParams view shows each run's last logged values. A run resumed from epoch
    `start` drops what an earlier attempt logged after it (TensorBoard's purge step), so a retried epoch
    shows once.
    """

    log_dir: Path
    cfg: TrainConfig
    hparams: HParams | None = None
    start: int = 0
    pending: list[Future] = field(default_factory=list)

    def __post_init__(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=self.start + 1 if self.start else None)
        # The HParams session is written first, so a trial a scheduler stops early still shows in the view.
        for summary in self.hparams.summaries() if self.hparams is not None else []:
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tensorboard")

    def epoch(self, metrics: Mapping[str, Any], data: Dataset, outs: dict[str, torch.Tensor], epoch: int) -> None:
        values = [(tag, float(v)) for k, v in metrics.items() if (tag := scalar_tag(k)) is not None]
        image = ready = None
        if epoch % self.cfg.sample_every == 0 or epoch == self.cfg.epochs or epoch == 1:
            # Rows: T1, G(T1), F(G(T1)), T2, F(T2), G(F(T2)) for the first val slices, from the validation
            # pass, all at the eval size the translations are scored at. Tiled on the device (a copy, so the next
            # replay of the validation graph cannot overwrite it) and copied to pinned host memory without
            # waiting: the thread waits for the copy, not the loop.
            n = 4
            pixels = to_uint8(tile([data.val.t1[:n], outs["fake_t2"][:n], outs["rec_t1"][:n],
                                    data.val.t2[:n], outs["fake_t1"][:n], outs["rec_t2"][:n]]))
            if pixels.is_cuda:
                image = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
                image.copy_(pixels, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
            else:
                image = pixels
        self._raise_failed()
        for tag, v in values:
            self.writer.add_scalar(tag, v, epoch)
        self.writer.flush()
        if image is not None:
            self.pending.append(self.pool.submit(self._write, image, ready, epoch))

    def _write(self, image: torch.Tensor, ready, epoch: int) -> None:
        if ready is not None:
            ready.synchronize()
        # A grey PNG of our own: TensorBoard's add_image makes it RGB and compresses it at PIL's default
        # level, several times slower for the same picture.
        from tensorboard.compat.proto.summary_pb2 import Summary

        h, w = image.shape[-2:]
        png = Summary.Image(height=h, width=w, colorspace=1, encoded_image_string=png_bytes(image[0].numpy()))
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=SAMPLES_TAG, image=png)]), epoch)
        self.writer.flush()

    def _raise_failed(self) -> None:
        done = [f for f in self.pending if f.done()]
        self.pending = [f for f in self.pending if not f.done()]
        for f in done:
            f.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._raise_failed()
        self.writer.close()
