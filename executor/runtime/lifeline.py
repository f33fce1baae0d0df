"""A launcher's workers live and die with it.

- `bind_to_parent` (in a worker): the kernel kills the worker when the launcher exits, however
  it exits (Linux PR_SET_PDEATHSIG), and a watchdog thread checks the parent pid (everywhere,
  and for a launcher gone before the prctl).
- `Signals` (in the launcher): SIGINT and SIGTERM while workers run are noted, not raised; the
  supervising loop stops the workers with `stop_workers` (SIGTERM, SIGKILL after a grace
  period, at once on a second signal). Workers are started ignoring SIGINT, so a terminal's
  Ctrl-C, which reaches the whole process group, is handled once, by the launcher.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STOP_GRACE_S = 5.0
"""How long workers get to exit after SIGTERM before they are killed."""
EXIT_ORPHANED = 3


def bind_to_parent(parent: int) -> None:
    """Die with the launcher: the kernel sends SIGKILL when it exits (Linux), and a watchdog
    thread checks the parent pid (everywhere, and for a launcher gone before the prctl)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(EXIT_ORPHANED)

    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)
    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


class Signals:
    """SIGINT and SIGTERM while workers run: noted here, acted on by the supervising loop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(s) is not signal.SIG_IGN:  # e.g. a background job's SIGINT
                self._old[s] = signal.signal(s, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum
        self.count += 1

    @contextmanager
    def children_ignore_sigint(self) -> Iterator[None]:
        """Processes started inside are born ignoring SIGINT (an ignored signal stays ignored
        across exec; a handler does not)."""
        if signal.SIGINT not in self._old:
            yield
            return
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._note)

    def restore(self, ignore: bool = False) -> None:
        for s, handler in self._old.items():
            signal.signal(s, signal.SIG_IGN if ignore else handler)
        self._old.clear()


def stop_workers(procs: list, grace: float, signals: Signals) -> None:
    """SIGTERM every live worker (and SIGCONT a stopped one), SIGKILL what is left after
    `grace` seconds (at once on a second signal), and reap them all."""
    for p in procs:
        if p.is_alive():
            for s in (signal.SIGTERM, signal.SIGCONT):
                try:
                    os.kill(p.pid, s)
                except ProcessLookupError:
                    pass
    count = signals.count
    deadline = time.monotonic() + grace
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        if signals.count > count:
            break
        time.sleep(0.05)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=10)
