"""The house's shape, read from the source's syntax trees: no import circles, the library never imports its tools,
every third-party package the code imports is declared in pyproject.toml, and what the documented commands write
in the checkout is git-ignored.

    python -m pytest tests/test_house.py -q
"""

from __future__ import annotations

import ast
import graphlib
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("cyclegan", "search")
TOOLS = ("benchmarks",)
PACKAGES = (*LIBRARY, *TOOLS)
# Imported only where torch's CUDA build runs, which installs the Triton it was built with: declared as a
# dependency it would put a second, unpinned copy on every CPU-only machine.
WITH_TORCH_CUDA = ("triton",)


def modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(path: Path, skip_main: bool = False) -> set[str]:
    """The dotted names a module imports, wherever in it (a function's deferred import closes a circle too).

    With `skip_main`, not those inside a function named `main`: a module's command line may use the modules that
    use it (`python -m cyclegan.phantom --from` runs cyclegan.anatomy, which builds on the phantom). Imports under
    `if TYPE_CHECKING:` are never run, so they close no circle.
    """
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    if skip_main:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                skipped |= {id(n) for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_packages_have_no_import_circle() -> None:
    mods = modules()
    graph = {name: {m for m in imports(path, skip_main=True) if m in mods and m != name and m not in PACKAGES}
             for name, path in mods.items()}
    assert "search.space" in graph and "cyclegan.nifti" in graph  # the walk found the packages
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"an import circle: {' -> '.join(e.args[1])}") from None


def test_the_library_never_imports_its_tools() -> None:
    for name, path in modules().items():
        if name.split(".")[0] in LIBRARY:
            tools = sorted(m for m in imports(path) if m.split(".")[0] in TOOLS)
            assert not tools, f"{name} imports {tools}: a tool may use the library, not the other way round"


def _declared() -> set[str]:
    """The distributions pyproject.toml's `dependencies` name (read without tomllib, which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert block, "pyproject.toml has no dependencies list"
    specs = re.findall(r'^\s*"([A-Za-z0-9._-]+)', block.group(1), re.M)
    assert "torch" in specs and "ray" in specs  # the pattern reads the list
    return {_normal(spec) for spec in specs}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared, providers = _declared(), packages_distributions()
    missing = {}
    for name, path in modules().items():
        for imported in imports(path):
            top = imported.split(".")[0]
            if top in sys.stdlib_module_names or top in PACKAGES or top in WITH_TORCH_CUDA:
                continue
            distributions = {_normal(d) for d in providers.get(top, [top])}
            if not distributions & declared:
                missing.setdefault(top, name)
    assert not missing, f"imported but not in pyproject.toml's dependencies (package: first importer): {missing}"


def _written_paths() -> set[str]:
    """The folders and files in the checkout that the README's and docs' example commands write: `--out X`,
    `--profile-dir X`, `--storage X` and `--logdir X` arguments that are relative paths, not placeholders."""
    found = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for arg in re.findall(r"--(?:out|profile-dir|storage|logdir)[ =]([^\s`'\")\]]+)", doc.read_text()):
            top = arg.split("/")[0]
            if top and top != "." and not top.isupper() and "://" not in arg and not arg.startswith("/"):
                found.add(top if "/" in arg or "." not in top else arg)
    return found


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_what_the_example_commands_and_the_tests_write_is_ignored() -> None:
    written = _written_paths()
    assert {"runs", "my_model", "translated"} <= written  # the README's own examples were found
    for path in sorted(written | {".hypothesis"}):
        probe = f"{path}/probe" if "." not in path or path.startswith(".") else path
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", probe], cwd=ROOT).returncode == 0
        assert ignored, f"{probe} is not git-ignored; a documented command or the tests write it"
