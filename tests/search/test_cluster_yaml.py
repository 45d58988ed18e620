"""cluster.yaml passes the checks `ray up` makes before it launches anything: Ray's schema and validate_config.

    python -m pytest tests/search/test_cluster_yaml.py -q
"""

from __future__ import annotations

import copy
import json
import re
import secrets
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


# What a leaked secret looks like: cloud keys, tokens, private keys, and any key-ish name given a value.
KEY_LIKE = {
    "AWS access key id": r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}\b",
    "AWS secret access key": r"(?<![A-Za-z0-9/+])(?=[A-Za-z0-9/+]*[0-9])(?=[A-Za-z0-9/+]*[A-Z])[A-Za-z0-9/+]{40}"
                             r"(?![A-Za-z0-9/+=])",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_\w{20,}",
    "Slack token": r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
    "long hex string (a Ray auth token is 64 hex digits)": r"\b[0-9a-fA-F]{32,}\b",
    "a secret-like key with a value": r"(?i)\b[\w-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key"
                                      r"|private[_-]?key|credential)[\w-]*[ \t]*[:=][ \t]*[\"']?[^\s\"',}`]+",
}


def key_like(text: str) -> list[str]:
    """Every key-like string in `text`, as 'what: the match'."""
    return [f"{what}: {m.group(0)}" for what, pattern in KEY_LIKE.items() for m in re.finditer(pattern, text)]


@pytest.mark.parametrize("path", [CLUSTER, CLUSTER.parent / "README.md",
                                  *sorted((CLUSTER.parent / "spaces").glob("*"))], ids=lambda p: p.name)
def test_no_key_like_strings_in_the_cluster_file_readme_or_spaces(path: Path) -> None:
    assert key_like(path.read_text()) == []


def test_the_scan_finds_planted_secrets() -> None:
    # AWS's documentation example pair, and the rest assembled here so that this file holds no real-looking key.
    planted = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "-----BEGIN OPENSSH PRIVATE KEY-----", "gh" + "p_" + "A1b2" * 9, "xox" + "b-1234567890-abcdef",
               secrets.token_hex(32), "password: hunter2", "RAY_AUTH_TOKEN=abc", "aws_secret_access_key = x"}
    for secret in planted:
        found = key_like(f"provider:\n  type: aws\n  note: {secret}\n")
        assert found, secret
    assert key_like(CLUSTER.read_text().replace("ssh_user: ubuntu", "ssh_user: ubuntu\n  password: x"))


def test_no_credentials_in_the_file() -> None:
    text = CLUSTER.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|ssh_private_key", text, re.I)
    # And it says where they come from instead.
    assert "standard chain" in text and "~/.aws/credentials" in text


def test_the_dashboard_stays_on_the_head(cluster: dict) -> None:
    # `ray start --head` binds the dashboard to localhost unless --dashboard-host says otherwise (checked in the
    # installed Ray's own CLI, not assumed); `ray dashboard cluster.yaml` reaches it through SSH.
    from ray._private.services import get_localhost_ip
    from ray.scripts.scripts import start

    default = next(o.default for o in start.params if o.name == "dashboard_host")
    assert default == get_localhost_ip() and default in ("127.0.0.1", "::1", "localhost")
    commands = " ".join(cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"])
    assert "--dashboard-host" not in commands and "0.0.0.0" not in commands
