"""Screenshots of a search's TensorBoard as a person sees it: `python -m tools.tensorboard_screenshots RUN --out DIR`.

Starts TensorBoard on 127.0.0.1 (a free port) over RUN_DIR (e.g. runs/unet_depth), waits until it has read
every trial's events, and has headless Chromium (Debian's `chromium`) save the scalars, images and HParams
views as `scalars.png`, `images.png` and `hparams.png` in DIR. The tests run it on a real tiny search; the
README's picture (docs/tensorboard.png) is its HParams view.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The views, as TensorBoard's own links name them; the scalars view filtered to the groups worth a first look.
VIEWS = {"scalars": "#scalars&tagFilter=loss%2F%7Cval%2Fobjective%7Cval%2Fssim_t1_t2%24",
         "images": "#images", "hparams": "#hparams"}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--disable-dev-shm-usage")


class ScreenshotError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post_json(url: str, body: object) -> object:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def tensorboard(logdir: Path, runs: int, timeout: float = 120) -> Iterator[str]:
    """TensorBoard serving `logdir` on 127.0.0.1; yields its URL once it lists `runs` runs."""
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                             "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if len(get_json(f"{url}/data/runs")) >= runs:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise ScreenshotError(f"tensorboard at {url} did not list {runs} runs of {logdir}: "
                                      f"{log.read().decode(errors='replace')[-500:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def screenshot(chromium: str, url: str, out: Path, size: tuple[int, int] = (1400, 900), wait_ms: int = 8000) -> Path:
    """One page as headless Chromium draws it, after `wait_ms` of the page's own time (its data requests)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        p = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                            f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={wait_ms}",
                            f"--screenshot={out}", url],
                           capture_output=True, text=True, timeout=120)
    if p.returncode != 0 or not out.is_file():
        raise ScreenshotError(f"chromium could not take {url}: {(p.stderr or p.stdout)[-500:]}")
    return out


def take(run_dir: Path, out: Path, chromium: str | None = None, size: tuple[int, int] = (1400, 900)
         ) -> dict[str, Path]:
    """Screenshots of the views in VIEWS for the run folder `run_dir`, `size` pixels each; returns {view: PNG}."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise ScreenshotError("no chromium on PATH (Debian: apt-get install chromium)")
    trials = sorted(p for p in run_dir.glob("trial_*") if p.is_dir())
    if not trials:
        raise ScreenshotError(f"{run_dir}: no trial_* folders")
    out.mkdir(parents=True, exist_ok=True)
    with tensorboard(run_dir, len(trials)) as url:
        return {view: screenshot(chromium, f"{url}/{anchor}", out / f"{view}.png", size)
                for view, anchor in VIEWS.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.tensorboard_screenshots", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a search's run folder, e.g. runs/unet_depth")
    p.add_argument("--out", type=Path, required=True, help="where the PNGs go")
    p.add_argument("--size", default="1400x900", help="the window, WIDTHxHEIGHT (default 1400x900)")
    args = p.parse_args(argv)
    try:
        width, height = (int(x) for x in args.size.split("x"))
    except ValueError:
        print(f"error: --size {args.size}: expected WIDTHxHEIGHT, e.g. 1400x900", file=sys.stderr)
        return 2
    try:
        shots = take(args.run_dir, args.out, size=(width, height))
    except ScreenshotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in shots.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
