"""A Ray cluster on this machine that grows as `cluster.yaml`'s does: a head with no CPU or GPU, and worker nodes of
`cluster.yaml`'s own node types started by Ray's autoscaler when trials ask for them.

The autoscaler is Ray's own (the head's monitor, `ray start --head --autoscaling-config`, reading the config from
`~/ray_bootstrap_config.yaml` as on a cluster that `ray up` launched). Its node provider is Ray's fake multi-node
provider (ray/autoscaler/_private/fake_multi_node), which is there for this: it starts no machines, only Ray
nodes. Ray's provider starts them inside the head's session folder; on one machine their runtime-env agents then
share the head's unpacked `--working-dir` and replace it under the running job, whose working folder vanishes.
`RayStartProvider` starts each worker as `cluster.yaml`'s `worker_start_ray_commands` do, `ray start --address`,
each node with its own folder (tests/raynodes.py), its GPUs declared, not detected.

`HOME` is the test's folder for every process of the cluster (so the config is found where Ray's launcher leaves
it, and nothing is read from the real home); the interpreter's own bin folder leads PATH, so that `ray` and
`python` in commands (a job's entrypoint) are this interpreter's without shims that read HOME.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE, FakeMultiNodeProvider
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from tests.raynodes import kill_node, ray_node

CONFIG_NAME = "ray_bootstrap_config.yaml"  # where `ray up` leaves a cluster's config, in the head's home


class RayStartProvider(FakeMultiNodeProvider):
    """Ray's fake multi-node provider, its worker nodes started by `ray start` in folders of their own."""

    def _create_node_with_resources_and_labels(self, node_config: dict, tags: dict, count: int,
                                               resources: dict, labels: dict) -> None:
        with self.lock:
            node_id = self._next_hex_node_id()
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            rest = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
            # The node id the provider chose, so that the autoscaler knows the node when it joins (Ray's provider
            # does the same through the same variables); the type names the node as on a real cluster.
            env = {**os.environ, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": node_id, "RAY_CLOUD_INSTANCE_ID": node_id,
                   "RAY_NODE_TYPE_NAME": node_type}
            temp_dir = Path(self.provider_config["temp_root"]) / node_id[-5:]
            process = ray_node(temp_dir, f"--address={self._gcs_address}",
                               *([f"--resources={json.dumps(rest)}"] if rest else []),
                               env=env, cpus=int(resources.get("CPU", 0)), gpus=int(resources.get("GPU", 0)))
            self._nodes[node_id] = {
                "tags": {**tags, TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: node_type,
                         TAG_RAY_NODE_NAME: node_id, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE},
                "node": (process, temp_dir),
            }

    def _terminate_node(self, node: dict[str, Any]) -> None:
        kill_node(*node["node"])


def worker_types(cluster_yaml: Path) -> dict[str, dict[str, Any]]:
    """`cluster.yaml`'s worker node types as the autoscaler reads them: their resources, min and max workers."""
    cluster = yaml.safe_load(cluster_yaml.read_text())
    return {name: {"resources": node["resources"], "node_config": {}, "min_workers": node.get("min_workers", 0),
                   "max_workers": node.get("max_workers", cluster["max_workers"])}
            for name, node in cluster["available_node_types"].items() if name != cluster["head_node_type"]}


def autoscaler_config(types: dict[str, dict[str, Any]], gcs_address: str, temp_root: Path,
                      max_workers: int) -> dict[str, Any]:
    """A whole autoscaler config (the monitor reads it as it is: `ray up` would fill in the defaults) for a head of
    no resources and the worker types `types`, at most `max_workers` workers in all."""
    head = {"resources": {"CPU": 0, "GPU": 0}, "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "autoscaled", "max_workers": max_workers, "upscaling_speed": 1.0, "idle_timeout_minutes": 10,
        "provider": {"type": "external", "module": f"{__name__}.RayStartProvider", "gcs_address": gcs_address,
                     "temp_root": str(temp_root), "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {FAKE_HEAD_NODE_TYPE: head, **types}, "head_node_type": FAKE_HEAD_NODE_TYPE,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                           "head_start_ray_commands", "worker_start_ray_commands")},
    }


def cluster_env(env: dict[str, str], home: Path) -> dict[str, str]:
    """`env` for every process of an autoscaled cluster: the test's home, Ray's fake-cluster switch, the
    autoscaler's update every second (instead of 5 s), and this interpreter's commands first on PATH."""
    return {**env, "HOME": str(home), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}
