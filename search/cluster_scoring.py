"""The finalists re-scored on the cluster's GPUs when the driver has none (`cluster.yaml`'s head is a CPU machine).

The final choice scores each finalist's best checkpoint on every val slice, and then every test slice, at full
precision (`search.select.rescore`). On a GPU that takes seconds; on a CPU head at the size of IXI or BraTS
(thousands of val and test slices at 256 px) it took over 13 minutes on two cores while the cluster's GPUs stood
idle. Here each finalist is scored by a Ray actor of its own, placed on a GPU node with the share of a GPU its trial
had, from the data the trials were handed (its reference in Ray's object store: the workers need no copy of
`--data`), and from its checkpoint where the run is stored. The driver still decides: it ranks the val re-scores and
only then asks for test, as `choose` does wherever it scores.

A finalist the cluster cannot score (its node lost, its actor crashed) is scored on the driver instead, with a
warning line; a damaged checkpoint is the `CheckpointError` it would be on the driver.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import ray

from cyclegan.checkpoint import CheckpointError
from search.select import Datasets, Scorer, TrialOutcome, rescore

CPUS = 1  # the actor's CPUs: it builds its val and test on one, and then only feeds the GPU


def wanted() -> bool:
    """Whether the finalists should be scored on the cluster: Ray is up, some live node has a GPU, and this driver's
    torch has no CUDA to score on."""
    import torch

    return ray.is_initialized() and not torch.cuda.is_available() and ray.cluster_resources().get("GPU", 0) > 0


class _Finalist:
    """One finalist's scorer, a Ray actor: its val and test built once, from the data every trial was handed."""

    def __init__(self, data: Any) -> None:
        self.datasets = Datasets(data)

    def score(self, o: TrialOutcome, split: str) -> tuple[dict[str, float], str]:
        metrics = rescore(o, self.datasets.data, split=split, datasets=self.datasets)  # on its GPU: cuda if any
        return metrics, ray.get_runtime_context().get_node_id()


_FinalistActor = ray.remote(_Finalist)


class ClusterScorer:
    """A `Scorer` (`search.select.choose`'s) that scores each finalist in an actor of its own on the cluster.

    `data` is what the trials were handed (an object reference, or "synthetic"), `local` the driver's own scorer for
    a finalist the cluster cannot score. `nodes` records where each (trial, split) was scored: a node id, or "driver".
    `close` ends the actors.
    """

    def __init__(self, data: Any, local: Scorer, default_share: float = 1.0) -> None:
        self.data, self.local, self.default_share = data, local, default_share
        self.nodes: dict[str, str] = {}
        self._actors: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _actor(self, o: TrialOutcome) -> Any:
        with self._lock:
            if o.trial_id not in self._actors:
                share = min(1.0, o.gpu_share or self.default_share)
                self._actors[o.trial_id] = _FinalistActor.options(num_cpus=CPUS, num_gpus=share).remote(self.data)
            return self._actors[o.trial_id]

    def __call__(self, o: TrialOutcome, split: str) -> dict[str, float]:
        try:
            metrics, node = ray.get(self._actor(o).score.remote(o, split))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, CheckpointError):
                raise e.cause from None
            return self._on_driver(o, split, e)
        except ray.exceptions.RayError as e:  # its node lost, its actor dead
            return self._on_driver(o, split, e)
        self.nodes[f"{o.trial_id}/{split}"] = node
        return metrics

    def _on_driver(self, o: TrialOutcome, split: str, e: Exception) -> dict[str, float]:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        print(f"warning: trial {o.trial_id} scored on {split} on this machine, not on the cluster: {reason}",
              file=sys.stderr)
        self.nodes[f"{o.trial_id}/{split}"] = "driver"
        return self.local(o, split)

    def close(self) -> None:
        for actor in self._actors.values():
            ray.kill(actor)
        self._actors.clear()
