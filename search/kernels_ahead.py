"""The first trials' InstanceNorm kernels compiled while Ray starts (`cyclegan.compile_ahead`, in a child process).

Without it every process of a search's first wave compiles the same Triton kernels at its first step, at once (about
3 s of a fresh process's warm-up on an H200, docs/benchmarks.md). The child fills Triton's on-disk cache, which the
trials on this machine read; it calls no CUDA, so it adds no client to a GPU the trials share under MPS. Started only
where the trials run on this machine (not `--address`), an NVIDIA GPU is there and Triton is installed; anything
that goes wrong in it costs only the time it would have saved, and is said in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from typing import Any

from search.packing import trial_config


def gpu_capabilities() -> list[int]:
    """The compute capabilities (major*10+minor, e.g. 90) of this machine's visible NVIDIA GPUs, from `nvidia-smi`;
    empty where it cannot say. CUDA_VISIBLE_DEVICES names them by index or UUID; anything else ("", "-1") names none."""
    command = ["nvidia-smi", "--query-gpu=index,uuid,compute_cap", "--format=csv,noheader"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    wanted = None if visible is None else {v.strip() for v in visible.split(",")}
    found = set()
    for line in out.strip().splitlines():
        try:
            index, uuid, cap = (v.strip() for v in line.split(","))
            major, minor = cap.split(".")
            capability = int(major) * 10 + int(minor)
        except ValueError:
            continue
        if wanted is None or index in wanted or uuid in wanted:
            found.add(capability)
    return sorted(found)


class KernelsAhead:
    """One child process per GPU type here compiling the norm kernels of `configs` (Ray configs of trials)."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        self.children: list[subprocess.Popen] = []
        if find_spec("triton") is None:
            return
        knobs = []
        for config in configs:
            try:
                cfg = trial_config(config)
            except Exception:  # noqa: BLE001, S112 - a config the trial refuses is reported by that trial
                continue
            if cfg.fused_norm:
                knobs.append(cfg.to_dict())
        if not knobs:
            return
        # The child works out the kernel sets from the configs (their networks built on the meta device), so that
        # the driver starts it before it has imported torch (search/run.py).
        for capability in gpu_capabilities():
            command = [sys.executable, "-m", "cyclegan.compile_ahead", "--capability", str(capability),
                       "--configs", json.dumps(knobs)]
            self.children.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True, start_new_session=True))

    def finish(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Waits for the children (killing any still compiling after `timeout` seconds: the trials compiled for
        themselves by then); returns what each printed, and says in one line on stderr where one failed."""
        done = []
        for child in self.children:
            try:
                out, err = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                out, err = child.communicate()
            if child.returncode == 0:
                try:
                    done.append(json.loads(out.strip().splitlines()[-1]))
                    continue
                except (ValueError, IndexError):
                    pass
            last = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
            print(f"note: the InstanceNorm kernels were not compiled ahead ({last}); each trial compiled its own",
                  file=sys.stderr)
        self.children = []
        return done

    def stop(self) -> None:
        """Ends the children without waiting for their compiles (what they finished stays in the cache)."""
        for child in self.children:
            child.kill()
            child.communicate()
        self.children = []
