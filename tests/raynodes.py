"""Real Ray nodes on this machine for the tests: `ray start` on loopback, each node its own process group.

Nodes are stopped by killing their own process groups, never with `ray stop`, which stops every Ray process on
the machine, other people's included. Ray 2.60 clusters authenticate with a token, and a driver given an explicit
`--address` only presents one when RAY_AUTH_MODE=token: `token_env` makes a token for one cluster and hands it
to every process through RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.paths import pythonpath


def token_env(**extra: str) -> dict[str, str]:
    """This process's environment with a fresh cluster token, the worktree on PYTHONPATH and one torch thread."""
    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": pythonpath(root), "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_node(temp_dir: Path, *args: str, env: dict[str, str], cpus: int = 1, gpus: int = 0) -> subprocess.Popen:
    """Starts one Ray node in the foreground (`--block`) as the leader of a new process group.

    `gpus` are declared, not detected: Ray then assigns GPU ids and sets CUDA_VISIBLE_DEVICES for them on a
    machine that has none, while torch in the trials still finds no GPU and trains on the CPU.
    """
    temp_dir.mkdir(parents=True)
    log = (temp_dir / "ray_start.log").open("w")
    cmd = ["ray", "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
           f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats", *args]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def node_processes(temp_dir: Path) -> list[int]:
    """Every process of the node started with `temp_dir`: its raylet, agents and workers name it or its session."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in cmdline:
            pids.append(int(proc.name))
    return pids


def kill_node(node: subprocess.Popen, temp_dir: Path, seconds: float = 10.0) -> None:
    """SIGKILLs a node: its process group, and any of its processes that started a group of their own, again until
    none is left (a process the node was starting as the first kill came may appear after it)."""
    deadline = time.time() + seconds
    pids = {node.pid, *node_processes(temp_dir)}
    while pids:
        for pid in pids:
            for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
                try:
                    kill(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        if node.poll() is None:
            node.wait(timeout=30)
        time.sleep(0.1)
        pids = set(node_processes(temp_dir))
        if pids and time.time() > deadline:
            raise RuntimeError(f"processes of the node {temp_dir} outlived SIGKILL: {sorted(pids)}")


# One driver connects once and polls the node table: a fresh `python -c "import ray; ray.init(...)"` per look
# costs seconds of start-up on a busy machine, more than the nodes take to join.
WAIT_FOR_NODES = """
import sys, time
import ray
address, count, deadline = sys.argv[1], int(sys.argv[2]), time.time() + float(sys.argv[3])
while True:
    try:
        ray.init(address=address, log_to_driver=False)
        break
    except Exception:  # the head is not up yet
        if time.time() > deadline:
            raise
        time.sleep(0.2)
while sum(n["Alive"] for n in ray.nodes()) != count:
    if time.time() > deadline:
        sys.exit(f"{sum(n['Alive'] for n in ray.nodes())} nodes alive")
    time.sleep(0.1)
"""


def wait_for_nodes(address: str, count: int, env: dict[str, str], timeout: float = 120) -> None:
    """Returns once `count` nodes of the cluster at `address` are alive (polled, not slept on)."""
    p = subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, address, str(count), str(timeout)], env=env,
                       capture_output=True, text=True, timeout=timeout + 60)
    if p.returncode != 0:
        raise AssertionError(f"the cluster at {address} did not reach {count} nodes: {p.stderr.strip()[-500:]}")
