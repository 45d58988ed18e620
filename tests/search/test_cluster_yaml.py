"""cluster.yaml passes the checks `ray up` makes before it launches anything: Ray's schema and validate_config.

    python -m pytest tests/search/test_cluster_yaml.py -q
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_matches_rays_schema(cluster: dict) -> None:
    jsonschema.validate(cluster, SCHEMA)  # the file as written
    validate_config(prepare_config(copy.deepcopy(cluster)))  # as `ray up` fills in defaults and checks it


def test_schema_check_is_real(cluster: dict) -> None:
    cluster["available_node_types"]["head"]["node_cofig"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(cluster))


def test_cpu_head_and_gpu_workers_on_aws(cluster: dict) -> None:
    assert cluster["provider"] == {**cluster["provider"], "type": "aws", "region": "us-west-2"}
    nodes = cluster["available_node_types"]
    head = nodes.pop(cluster["head_node_type"])
    assert head["resources"].get("GPU", 0) == 0 and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    assert nodes and all(n["resources"]["GPU"] == 1 and n["min_workers"] == 0 and n["max_workers"] == 4
                         for n in nodes.values())
    assert cluster["max_workers"] == 4


def test_project_travels_by_file_mounts_and_installs(cluster: dict) -> None:
    assert cluster["file_mounts"] == {"~/project": "."}
    assert any("pip install" in c and "-e ~/project" in c for c in cluster["setup_commands"])
    pinned = re.search(r"ray\[[^\]]*\]==([\w.]+)", " ".join(cluster["setup_commands"]))
    assert pinned and pinned.group(1) == ray.__version__  # the cluster's Ray must match the one that launches it


def test_no_credentials_in_the_file() -> None:
    text = CLUSTER.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|ssh_private_key", text, re.I)
