"""Whether a cluster can give the trials GPUs: read from `cluster.yaml` itself and from Ray's own cluster config
message, and what the driver does with the answer (keep the share, with a note; or refuse in one line).

The runs on real Ray clusters are in tests/search/test_cluster.py.

    python -m pytest tests/search/test_cluster_gpus.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.core.generated import autoscaler_pb2

from search.cluster import NoGpuError, Outlook, gcs_gpu_types, keep_gpu_share, launcher_gpu_types

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"
ADDRESS = "10.0.0.5:6379"


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yamls_gpu_workers_are_found(cluster: dict) -> None:
    assert launcher_gpu_types(cluster) == {"gpu_a10g": 1.0, "gpu_l4": 1.0}


def test_node_types_that_can_never_start_are_not_counted(cluster: dict) -> None:
    cluster["available_node_types"]["gpu_l4"]["max_workers"] = 0
    assert launcher_gpu_types(cluster) == {"gpu_a10g": 1.0}
    cluster["max_workers"] = 0  # no worker of any type
    assert launcher_gpu_types(cluster) == {}
    for node in cluster["available_node_types"].values():
        node["resources"].pop("GPU", None)
    assert launcher_gpu_types({**cluster, "max_workers": 4}) == {}


def test_rays_cluster_config_message_is_read() -> None:
    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 8}, max_count=1),
        autoscaler_pb2.NodeGroupConfig(name="a100", resources={"CPU": 12, "GPU": 8}, max_count=-1),
        autoscaler_pb2.NodeGroupConfig(name="t4", resources={"CPU": 4, "GPU": 1}, max_count=0),
    ])
    assert gcs_gpu_types(config) == {"a100": 8.0}


def test_gpus_up_now_need_no_note() -> None:
    assert keep_gpu_share(Outlook(live_gpus=2, gpu_types={}), "0.25", ADDRESS) is None


def test_gpus_the_autoscaler_can_start_keep_the_share_with_a_note() -> None:
    outlook = Outlook(0, {"gpu_a10g": 1.0, "gpu_l4": 1.0}, ("head", "gpu_a10g", "gpu_l4"), "a config")
    assert keep_gpu_share(outlook, "auto", ADDRESS) == (
        "note: no GPU node in the Ray cluster yet; its autoscaler can start gpu_a10g (1 GPU), gpu_l4 (1 GPU), so "
        "the trials keep gpus_per_trial auto and start as GPU nodes join")


def test_an_autoscaler_without_gpu_types_is_refused() -> None:
    with pytest.raises(NoGpuError) as e:
        keep_gpu_share(Outlook(0, {}, ("head", "cpu_m5"), "a config"), "0.25", ADDRESS)
    assert str(e.value) == (
        f"the Ray cluster at {ADDRESS} has no GPU and its autoscaler cannot start one (its node types, from a "
        "config: head, cpu_m5): the space asks gpus_per_trial 0.25; give --gpus-per-trial 0 to train on the CPUs, "
        "or add a node type with GPUs")


def test_a_cluster_without_gpus_or_autoscaler_config_is_refused() -> None:
    with pytest.raises(NoGpuError, match=f"^the Ray cluster at {ADDRESS} has no GPU, and no autoscaler config is in "
                                         f"reach .*ray start --address {ADDRESS} --num-gpus N"):
        keep_gpu_share(Outlook(0, {}), "0.5", ADDRESS)
