"""The fused norm compiled for the first wave while the driver starts: `cyclegan.norm_warmup` in a child process.

`search.run` starts it once the search's inputs are checked, where its trials run on this machine's GPU, and ends
it with the command if it is still running then; `driver.json` records what it did (`norm_warmup`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cyclegan.config import ConfigError, TrainConfig
from search.packing import has_nvidia_gpu, trial_config

if TYPE_CHECKING:
    import argparse

    from search.space import Space


def start(space: Space, args: argparse.Namespace, first_wave: int) -> NormWarmup | None:
    """The warm-up for `space`'s first `first_wave` trials, started; None where it has nothing to do: trials on a
    cluster's other machines (`--address`), trials without a GPU, no NVIDIA GPU that `nvidia-smi` reports here (it
    answers in milliseconds; a GPU it does not see only means no warm-up), or no first config without errors."""
    if args.address is not None or not space.wants_gpus or not has_nvidia_gpu():
        return None
    configs = []
    for config in space.first_configs(first_wave):
        try:
            configs.append(trial_config(config))
        except ConfigError:
            continue  # the trial that draws it reports it
    if not configs:
        return None
    return NormWarmup(configs, args.data_size.scored(), args.data_size.eval_size)


class NormWarmup:
    """`python -m cyclegan.norm_warmup` on `configs`, in the background, its output in a temporary folder."""

    def __init__(self, configs: list[TrainConfig], val: tuple[int, int], eval_size: int) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="norm-warmup-"))
        (self._folder / "configs.json").write_text(json.dumps([c.to_dict() for c in configs]))
        self._out = (self._folder / "out.txt").open("w")
        self._ended: dict[str, Any] | None = None
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "cyclegan.norm_warmup", str(self._folder / "configs.json"), "--val", *map(str, val),
             "--eval-size", str(eval_size)], stdout=self._out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def end(self) -> dict[str, Any]:
        """Stops the child if it still runs; returns its exit code and what it printed last (its JSON summary)."""
        if self._ended is not None:
            return self._ended
        if self._proc.poll() is None:
            self._proc.kill()
        code = self._proc.wait()
        self._out.close()
        lines = (self._folder / "out.txt").read_text().strip().splitlines()
        for f in self._folder.iterdir():
            f.unlink()
        self._folder.rmdir()
        try:
            summary = json.loads(lines[-1]) if lines else {}
        except ValueError:
            summary = {"last_line": lines[-1][:300]}
        self._ended = {"exit_code": code, **(summary if isinstance(summary, dict) else {})}
        return self._ended
