"""Whether a search's trials can ever get the GPUs its space asks for, once the driver has started or joined Ray.

A driver that started Ray itself (a single machine) without a GPU trains the trials on the CPU, with a note. A
driver that joined a cluster keeps the space's GPU share whenever the cluster has a GPU now or its autoscaler can
start a node with one: on a cluster launched from `cluster.yaml` the GPU workers start on demand, so when the
search starts there is often none yet, and Ray places the trials once one has joined. Joining happens with
`--address`, with RAY_ADDRESS (set by `ray job submit`), or with neither on a node of a running cluster (`ray exec`
on the head): `ray.init` finds the cluster in all three. Where no GPU can appear as far as Ray shows (no live node
has one, and no autoscaler config in reach has a node type with one) the search is refused in one line: its trials
would wait forever. A cluster of nodes started by hand, with no autoscaler, counts as it is: start its GPU nodes
before the search.

The autoscaler's node types come from what Ray exposes: the cluster config in Ray's GCS, where an autoscaler has
reported one (`ray._private.state.state.get_cluster_config()`, which Ray Data reads for the same question), else
the cluster launcher's config on the head, `~/ray_bootstrap_config.yaml`, which `ray up` leaves there and Ray Tune
reads too. Both README paths run the driver on the head (`ray exec`, and `ray job submit`, whose entrypoint runs
there). A driver joined from another machine with neither in reach sees only the live nodes, and is refused
where they have no GPU.

    python -m pytest tests/search/test_cluster_gpus.py tests/search/test_cluster.py -q
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from search.space import AUTO, Space

# Where `ray up` leaves the cluster's config on the head (ray/tune/execution/cluster_info.py reads the same).
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"


class NoGpuError(Exception):
    """The space asks for GPUs and the cluster has none and can start none."""


@dataclass(frozen=True)
class Outlook:
    """What the cluster has and can get: GPUs on its live nodes, and the autoscaler's node types that have GPUs
    (name -> GPUs a node) with where they were read (`source`); `source` is None where no autoscaler config
    could be read, and `node_types` names every node type it has, for the refusal."""

    live_gpus: float
    gpu_types: Mapping[str, float]
    node_types: tuple[str, ...] = ()
    source: str | None = None


def launcher_gpu_types(config: Mapping[str, Any]) -> dict[str, float]:
    """The node types of a cluster launcher's config (`cluster.yaml`'s shape) that have GPUs and may start."""
    cluster_max = config.get("max_workers", 1)
    found = {}
    for name, node in (config.get("available_node_types") or {}).items():
        gpus = float((node.get("resources") or {}).get("GPU", 0))
        if gpus > 0 and cluster_max > 0 and node.get("max_workers", cluster_max) > 0:
            found[name] = gpus
    return found


def gcs_gpu_types(config: Any) -> dict[str, float]:
    """The node groups of the GCS's cluster config (`autoscaler_pb2.ClusterConfig`) that have GPUs and may start
    (a max_count of -1 is unbounded)."""
    return {g.name: float(g.resources["GPU"]) for g in config.node_group_configs
            if g.resources.get("GPU", 0) > 0 and g.max_count != 0}


def read_outlook() -> Outlook:
    """The outlook of the cluster this process is connected to (`ray.init` done)."""
    import ray
    import ray._private.state

    live = float(ray.cluster_resources().get("GPU", 0))
    gcs = ray._private.state.state.get_cluster_config()
    if gcs is not None and gcs.node_group_configs:
        names = tuple(g.name for g in gcs.node_group_configs)
        return Outlook(live, gcs_gpu_types(gcs), names, "the cluster config in Ray's GCS")
    path = Path(LAUNCHER_CONFIG).expanduser()
    if path.is_file():
        config = yaml.safe_load(path.read_text()) or {}
        names = tuple(config.get("available_node_types") or ())
        return Outlook(live, launcher_gpu_types(config), names, f"the cluster launcher's {LAUNCHER_CONFIG}")
    return Outlook(live, {})


def keep_gpu_share(outlook: Outlook, asked: str, address: str) -> str | None:
    """Returns None where GPUs are there now, a note where the autoscaler can start them; raises NoGpuError
    where none can appear. `asked` is the space's share as the user would type it (e.g. "0.25", "auto")."""
    if outlook.live_gpus > 0:
        return None
    fix = f"the space asks gpus_per_trial {asked}; give --gpus-per-trial 0 to train on the CPUs"
    if outlook.source is None:
        raise NoGpuError(f"the Ray cluster at {address} has no GPU, and no autoscaler config is in reach to start "
                         f"one ({LAUNCHER_CONFIG} on its head, or a cluster config in its GCS): {fix}, or join GPU "
                         f"nodes first (ray start --address {address} --num-gpus N)")
    if not outlook.gpu_types:
        raise NoGpuError(f"the Ray cluster at {address} has no GPU and its autoscaler cannot start one (its node "
                         f"types, from {outlook.source}: {', '.join(outlook.node_types) or 'none'}): {fix}, or add "
                         f"a node type with GPUs")
    types = ", ".join(f"{name} ({gpus:g} GPU)" for name, gpus in outlook.gpu_types.items())
    return (f"note: no GPU node in the Ray cluster yet; its autoscaler can start {types}, so the trials keep "
            f"gpus_per_trial {asked} and start as GPU nodes join")


def joined_a_cluster() -> bool:
    """Whether `ray.init` joined a running cluster rather than starting one in this process. Ray's own record
    of it (the driver's node is a head only where it started Ray), since RAY_ADDRESS and a cluster running on this
    node (`ray exec` on the head) make `ray.init()` join without an address."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node is not None and not node.head


def gpus_for_trials(space: Space) -> Space:
    """The space the trials run with, once Ray is up: as it is where its GPU share can be had; on a machine that
    started Ray itself without a GPU, with no GPU (and a note); joined to a cluster where none can ever appear,
    refused (NoGpuError)."""
    import ray

    if not space.wants_gpus:
        return space
    if not joined_a_cluster():
        if not ray.cluster_resources().get("GPU"):
            print(f"note: no GPU on this machine; running trials on the CPU (gpus_per_trial "
                  f"{space.gpus_per_trial} -> 0)", file=sys.stderr)
            return space.replace_search(gpus_per_trial=0.0)
        return space
    asked = AUTO if space.auto_gpus else f"{space.gpus_per_trial:g}"
    note = keep_gpu_share(read_outlook(), asked, ray.get_runtime_context().gcs_address)
    if note:
        print(note, file=sys.stderr)
    return space
