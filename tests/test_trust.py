"""What the code trusts: every checkpoint load is weights-only, every YAML load safe, Ray's dashboard local.

Read from the source itself (its syntax tree, not text matching), so a new `torch.load` or `yaml.load`
anywhere in the packages is caught. That a weights-only load really refuses a file that runs code is tested
on real files in tests/cyclegan/test_bad_input.py; the cluster file's secrets in test_cluster_yaml.py.

    python -m pytest tests/test_trust.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "cyclegan").rglob("*.py"), *(ROOT / "search").rglob("*.py")])


def calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of `module.attr` (e.g. "torch.load") in the packages."""
    module, attr = name.split(".")
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == module):
                found.append((path, node))
    return found


def keyword(call: ast.Call, name: str) -> object:
    return next((ast.literal_eval(k.value) for k in call.keywords if k.arg == name), None)


def test_every_torch_load_is_weights_only() -> None:
    loads = calls("torch.load")
    assert loads, "no torch.load found: the scan itself is broken"
    for path, call in loads:
        assert keyword(call, "weights_only") is True, f"{path.name}:{call.lineno}"


def test_yaml_is_only_read_with_the_safe_loader() -> None:
    assert calls("yaml.safe_load"), "no yaml.safe_load found: the scan itself is broken"
    for unsafe in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
        assert not calls(unsafe), [f"{p.name}:{c.lineno}" for p, c in calls(unsafe)]
    for path in SOURCES:
        assert "UnsafeLoader" not in path.read_text() and "FullLoader" not in path.read_text(), path.name


def test_search_starts_ray_without_a_dashboard_and_bound_to_localhost() -> None:
    inits = calls("ray.init")
    assert [p.name for p, _ in inits] == ["ray_owner.py"]  # search.run starts Ray through it
    _, call = inits[0]
    assert keyword(call, "include_dashboard") is False and keyword(call, "dashboard_host") == "127.0.0.1"


def test_the_readme_says_where_credentials_come_from_and_what_binds_where() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())  # wrapped lines read as one
    for claim in ("standard AWS chain", "~/.aws/credentials", "weights_only=True", "yaml.safe_load",
                  "TensorBoard binds to localhost", "RAY_AUTH_MODE=token", "`--resume` only runs you made"):
        assert claim in readme, claim
