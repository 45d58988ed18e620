"""The first hour: the README's first commands are right for a CPU machine, its quickstart runs a small space made
for 2 CPUs, and the fast test tier (`-m "not slow"`) leaves out every test that starts Ray or runs a search.

    python -m pytest tests/test_first_run.py -q
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# An extra index, not the only one: the CPU build's `+cpu` version sorts above PyPI's, and where that index cannot be
# reached (a closed network) pip goes on with PyPI instead of failing the whole first command.
CPU_TORCH = "pip install torch --extra-index-url https://download.pytorch.org/whl/cpu"


def first_block() -> tuple[list[str], str]:
    """The commands of the README's first code block, and the paragraph after it (wrapped lines joined)."""
    text = (ROOT / "README.md").read_text()
    block, after = re.search(r"```bash\n(.*?)```\n\n(.*?)\n\n", text, re.S).groups()
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return commands, " ".join(after.split())


def quickstart() -> list[str]:
    """The README's quickstart search, as argv after `python -m`."""
    commands, _ = first_block()
    line = next(c for c in commands if "search.run" in c)
    argv = shlex.split(line.split("&&")[-1])
    assert argv[:3] == ["python", "-m", "search.run"], line
    return argv[2:]


def test_the_first_command_installs_the_cpu_build_of_torch_before_the_project() -> None:
    commands, after = first_block()
    steps = [s.strip() for s in commands[0].split("&&")]
    # pip keeps a torch that satisfies the project's range, so the CPU build must come first.
    assert steps[0] == CPU_TORCH and steps[1] == 'pip install -e ".[dev]"', steps
    assert "GPU machine" in after and 'pip install -e ".[dev]"' in after  # what a GPU machine runs instead


def test_the_quickstart_runs_its_own_small_space_on_the_phantom() -> None:
    from search.space import load_space

    argv = quickstart()
    assert argv[1] == "spaces/quickstart.yaml" and "--data" not in argv  # the built-in phantom: nothing to download
    space = load_space(ROOT / argv[1])
    points = space.trial_points()
    assert len(points) == 2 and space.gpus_per_trial == 0 and space.max_concurrent == 2  # 2 cores, one a trial
    for p in points:
        # What made its winner show the other contrast within ~1,000 steps: no identity loss (it rewards leaving a
        # slice as it is); a U-Net, where used, up-samples by resizing (transposed ones paint checkerboards).
        assert p["resize"] == 64 and p["lambda_identity"] == 0 and p["batch_size"] == 1
        assert p["generator"] != "unet" or p.get("upsample") == "resize"


def test_the_readme_gives_the_fast_tier_and_ci_runs_the_full_suite() -> None:
    commands, _ = first_block()
    assert 'python -m pytest -q -m "not slow"' in commands and "python -m pytest -q" in commands
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci == ["python -m pytest -q"], ci


def test_slow_is_a_registered_marker(request: pytest.FixtureRequest) -> None:
    assert any(line.startswith("slow:") for line in request.config.getini("markers"))


# What makes a test slow: a search in a subprocess (each starts Ray), real Ray nodes, or Tune in a Ray instance.
SLOW_SIGNS = ('"search.run"', "ray_node(", "tune.Tuner(", "local_ray")


def _slow_mark(node: ast.expr) -> bool:
    return "pytest.mark.slow" in ast.unparse(node)


def unmarked_slow_tests(path: Path, root: Path = ROOT) -> list[str]:
    """The tests of a file that show a sign of SLOW_SIGNS (in their body, a fixture of their module they take, or
    a module constant either names) without a `slow` mark of their own or of their module."""
    source = path.read_text()
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
            if _slow_mark(node.value):
                return []
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    constants = {t.id: ast.get_source_segment(source, n) or "" for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name)}

    def text(fn: ast.FunctionDef, seen: set[str]) -> str:
        own = ast.get_source_segment(source, fn) or ""
        names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
        used = [a.arg for a in fn.args.args if a.arg in functions and a.arg not in seen]
        return (own + "".join(constants[n] for n in names & constants.keys())
                + "".join(text(functions[u], seen | {u}) for u in used))

    return [f"{path.relative_to(root)}::{name}" for name, fn in functions.items()
            if name.startswith("test_") and any(s in text(fn, {name}) for s in SLOW_SIGNS)
            and not any(_slow_mark(d) for d in fn.decorator_list)]


def test_every_test_that_starts_ray_or_a_search_is_marked_slow() -> None:
    # This file names the signs to look for, so it is left out.
    files = sorted(f for f in (ROOT / "tests").rglob("test_*.py") if f != Path(__file__).resolve())
    assert len(files) > 20
    assert unmarked_slow_tests(ROOT / "tests" / "search" / "test_run.py") == []
    offenders = [t for f in files for t in unmarked_slow_tests(f)]
    assert offenders == [], f"mark these @pytest.mark.slow, or the fast tier waits on them: {offenders}"


def test_the_scan_finds_an_unmarked_search(tmp_path: Path) -> None:
    probe = tmp_path / "test_probe.py"
    probe.write_text(f"ARGS = [{SLOW_SIGNS[0]}]\n\n\ndef helper():\n    return ARGS\n\n\n"
                     "def test_a(helper):\n    pass\n\n\ndef test_b():\n    run(*ARGS)\n\n\n"
                     "import pytest\n\n\n@pytest.mark.slow\ndef test_c(helper):\n    pass\n")
    assert unmarked_slow_tests(probe, tmp_path) == ["test_probe.py::test_a", "test_probe.py::test_b"]

