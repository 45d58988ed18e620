"""Ray started, and at the end stopped, by a thread of its own, so that the driver does other work meanwhile.

`ray.init` takes seconds (3-4 s on an H200 node, 5-6 s on two cores: its GCS, raylet and dashboard processes start one
after another and it waits for each), and so do the driver's imports of torch and the trainer. `search.run` checks the
user's input without torch, then starts Ray here and imports the rest while Ray starts; at the end it stops Ray here
while it scores the finalists and writes its report.

    owner = RayOwner(address=None)              # ray.init(...) begins in the thread
    ...                                         # imports, estimates
    owner.wait_started()                        # re-raises what ray.init raised
    ...                                         # the search
    owner.stop()                                # ray.shutdown() begins in the thread
    seconds = owner.finish()                    # waits for it

The thread lives from `ray.init` to `ray.shutdown`, not only while Ray starts: Ray starts its local processes with
Linux's PR_SET_PDEATHSIG, which kills them when the *thread* that started them ends (prctl(2)), so a thread that
returned after `ray.init` would take Ray's GCS and raylet with it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Any


class _NotMainThread(logging.Filter):
    """Drops Ray's warning that `ray.init` outside the main thread set no SIGTERM handler: `RayOwner` sets it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


_NOT_MAIN_THREAD = _NotMainThread()  # one: a logger keeps a filter once however often it is added


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    sys.exit(signum)  # what ray.init sets in a main thread: exit handlers, Ray's shutdown among them, then run


class RayOwner:
    """`ray.init(address, **init_args)` begun in a thread at once; `wait_started`, `stop` and `finish` as the module
    says. Ray's dashboard is left out and anything of it bound to localhost, whatever the caller passes."""

    def __init__(self, address: str | None = None, **init_args: Any) -> None:
        import ray  # noqa: F401 - imported here, once, rather than by the thread while the caller imports beside it

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        logging.getLogger("ray._private.worker").addFilter(_NOT_MAIN_THREAD)
        self._address, self._init_args = address, init_args
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self.shutdown_seconds = 0.0
        # A daemon: an unexpected exception in the caller still ends the process; Ray's own exit handler stops Ray.
        self._thread = threading.Thread(target=self._own, name="ray-owner", daemon=True)
        self._thread.start()

    def _own(self) -> None:
        import ray

        try:
            ray.init(address=self._address, include_dashboard=False, dashboard_host="127.0.0.1", **self._init_args)
        except BaseException as e:  # noqa: BLE001 - handed to the caller by wait_started
            self._error = e
            return
        finally:
            self._started.set()
        self._stopping.wait()
        clock = time.perf_counter()
        ray.shutdown()
        self.shutdown_seconds = time.perf_counter() - clock

    def wait_started(self) -> None:
        """Waits for `ray.init`; raises what it raised."""
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Begins `ray.shutdown()` (once Ray has started), without waiting for it."""
        self._stopping.set()

    def finish(self) -> float:
        """Stops Ray if `stop` has not, waits for it to be stopped, and returns the seconds its shutdown took."""
        self.stop()
        self._thread.join()
        return self.shutdown_seconds
