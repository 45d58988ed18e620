"""The finalists re-scored on the cluster's GPUs when the driver has none (`cluster.yaml`'s head is a CPU machine).

The final choice scores each finalist's best checkpoint on every val slice, and then every test slice, at full
precision (`search.select.rescore`). On a GPU that takes seconds; on a CPU head at the size of IXI or BraTS
(thousands of val and test slices at 256 px) it took over 13 minutes on two cores while the cluster's GPUs stood
idle. Here each finalist is scored by a Ray actor of its own, placed on a GPU node with the share of a GPU its trial
had, from the data the trials were handed (its reference in Ray's object store: the workers need no copy of
`--data`), and from its checkpoint where the run is stored. The driver still decides: it ranks the val re-scores and
only then asks for test, as `choose` does wherever it scores.

A finalist the cluster cannot score (no GPU node took its actor within `PLACEMENT_SECONDS`, its node lost, its
actor crashed) is scored on the driver instead, with a warning line; a damaged checkpoint is the `CheckpointError`
it would be on the driver.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import ray

from cyclegan.checkpoint import CheckpointError
from search.select import Datasets, Scorer, TrialOutcome, rescore

CPUS = 1  # the actor's CPUs: it builds its val and test on one, and then only feeds the GPU
# How long a finalist's actor may wait for a GPU node: long enough for the autoscaler to start a worker where the
# idle ones have stopped (minutes on AWS), short of leaving the driver waiting on a cluster that cannot start one.
PLACEMENT_SECONDS = 900.0


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

    def __init__(self, data: Any, local: Scorer, default_share: float = 1.0,
                 placement_seconds: float = PLACEMENT_SECONDS) -> None:
        self.data, self.local, self.default_share = data, local, default_share
        self.placement_seconds = placement_seconds
        self.nodes: dict[str, str] = {}
        self._actors: dict[str, Any] = {}
        self._unplaced: set[str] = set()  # trials whose actor no node took: the driver scores their other split too
        self._lock = threading.Lock()

    def _actor(self, o: TrialOutcome) -> Any:
        """The finalist's actor, once it is placed and its data built (`GetTimeoutError` if no node took it)."""
        with self._lock:
            if o.trial_id not in self._actors:
                share = min(1.0, o.gpu_share or self.default_share)
                self._actors[o.trial_id] = _FinalistActor.options(num_cpus=CPUS, num_gpus=share).remote(self.data)
            actor = self._actors[o.trial_id]
        ray.get(actor.__ray_ready__.remote(), timeout=self.placement_seconds)
        return actor

    def __call__(self, o: TrialOutcome, split: str) -> dict[str, float]:
        unplaced = f"no GPU node took it in {self.placement_seconds:g} s"
        if o.trial_id in self._unplaced:
            return self._on_driver(o, split, unplaced)
        try:
            metrics, node = ray.get(self._actor(o).score.remote(o, split))
        except ray.exceptions.GetTimeoutError:
            with self._lock:
                self._unplaced.add(o.trial_id)
                ray.kill(self._actors.pop(o.trial_id))  # a pending actor would still take a GPU once one frees
            return self._on_driver(o, split, unplaced)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, CheckpointError):
                raise e.cause from None
            return self._on_driver(o, split, e)
        except ray.exceptions.RayError as e:  # its node lost, its actor dead
            return self._on_driver(o, split, e)
        self.nodes[f"{o.trial_id}/{split}"] = node
        return metrics

    def _on_driver(self, o: TrialOutcome, split: str, e: Exception | str) -> dict[str, float]:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        print(f"warning: trial {o.trial_id} scored on {split} on this machine, not on the cluster: {reason}",
              file=sys.stderr)
        self.nodes[f"{o.trial_id}/{split}"] = "driver"
        return self.local(o, split)

    def close(self) -> None:
        for actor in self._actors.values():
            ray.kill(actor)
        self._actors.clear()
