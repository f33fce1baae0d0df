"""Which ranks are alive, and who stopped the run: heartbeats and marks in the run's store.

Each worker bumps a counter `hb/<rank>` every `interval` seconds from a daemon thread, over a
store connection of its own (a blocking wait of the worker's main thread on a shared
connection would hold the heartbeat up). The launcher watches the counters: a rank whose
counter stops moving for the run's timeout (a stopped or wedged process) is marked
`dead/<rank>` and killed, as is a worker process that dies; either way the launcher sets
`abort`. A worker that hits an error records `failed/<rank>` (the first one to fail also
`first`) and sets `abort` itself, so this also works under torchrun, where no launcher
watches. Every worker's heartbeat thread polls `abort` and stops its process with one line
naming the rank that failed or was lost, so no rank waits out a collective timeout for a
peer that is gone. Counters, not timestamps, so clocks of different nodes never need to agree.
"""

from __future__ import annotations

import linecache
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

PREFIX = "health/"
WAITS = ("torch/distributed/", "executor/runtime/health.py", "executor/runtime/launch.py")
"""Code in which a worker's main thread waits for the others (or for news of them)."""


class Health:
    def __init__(
        self,
        store: dist.Store,
        rank: int,
        world: int,
        interval: float = 0.5,
        on_abort: Callable[[], None] | None = None,
    ):
        self.store = dist.PrefixStore(PREFIX, store)
        self.rank, self.world, self.interval = rank, world, interval
        self.on_abort = on_abort
        self._stop = threading.Event()
        self._main = threading.get_ident()  # the thread that runs the worker
        self._beats = 0
        self._beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self._beats += 1
        try:
            where = self._where()
        except Exception:  # never let a look at the main thread stop the heartbeat
            where = "unknown ?"
        self.store.set(f"hb/{self.rank}", f"{self._beats} {where}")

    def _where(self) -> str:
        """Whether the main thread waits (inside torch.distributed, or on a line calling a
        wait) or is busy, and where: `wait|busy file:line function`."""
        frame = sys._current_frames().get(self._main)
        if frame is None:
            return "gone"
        code, lineno = frame.f_code, frame.f_lineno or 0  # None between some instructions
        line = linecache.getline(code.co_filename, lineno)
        path = code.co_filename.replace("\\", "/")
        waiting = any(p in path for p in WAITS) or "wait(" in line
        state = "wait" if waiting else "busy"
        return f"{state} {Path(code.co_filename).name}:{lineno} in {code.co_name}"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
                aborted = self.store.check(["abort"])
            except Exception:  # the store went away with the job: nothing left to report to
                aborted = True
            if aborted:
                if self.on_abort is not None and not self._stop.is_set():
                    self.on_abort()
                return

    def stop(self) -> None:
        self._stop.set()

    def fail(self) -> int:
        """Record that this rank failed and ask every rank to stop; returns the first rank that
        failed (this one, unless another got there first: that one reports the cause)."""
        try:
            first = int(self.store.compare_set("first", "", str(self.rank)).decode())
            self.store.set(f"failed/{self.rank}", "1")
            self.store.set("abort", "1")
            return first
        except Exception:
            return self.rank

    def cause(self, wait: float | None = None) -> str:
        """Why this rank has to stop, in words: the rank that failed first, else the ranks
        marked dead or whose heartbeat stopped (waits up to `wait` seconds, default 4 beats,
        for the evidence to appear); "" when nobody is to blame."""
        failed = self.first_failed()
        if failed is not None:
            return f"stopped because rank {failed} failed"
        lost = self.lost_ranks(wait)
        if lost:
            return f"lost contact with rank(s) {', '.join(map(str, lost))}; stopping"
        failed = self.first_failed()
        if failed is not None:
            return f"stopped because rank {failed} failed"
        try:
            if self.store.check(["stuck"]):
                stuck = self.store.get("stuck").decode()
                if str(self.rank) in stuck.split(", "):
                    return "stopped: the other ranks gave up waiting for this one"
                return f"stopped because rank(s) {stuck} did not answer in time"
        except Exception:
            pass
        return ""

    def stuck(self) -> dict[int, str]:
        """Other ranks whose main thread was last seen outside a wait (so they are what the
        others wait for: stuck, or much slower): rank -> where ("file:line in function")."""
        out = {}
        try:
            for r in range(self.world):
                key = f"hb/{r}"
                if r != self.rank and self.store.check([key]):
                    _, state, where = (self.store.get(key).decode().split(" ", 2) + ["", ""])[:3]
                    if state == "busy":
                        out[r] = where
        except Exception:
            pass
        return out

    def give_up(self, stuck: list[int]) -> None:
        """This rank's wait ran out: stop every rank, naming the ones it waited for."""
        try:
            self.store.compare_set("stuck", "", ", ".join(map(str, stuck)) or "?")
            self.store.set("abort", "1")
        except Exception:
            pass

    def said(self) -> None:
        """Record that this rank has said why it stops (the launcher need not name it)."""
        try:
            self.store.set(f"said/{self.rank}", "1")
        except Exception:
            pass

    def stopping(self) -> bool:
        """Whether the launcher is stopping every worker (SIGINT or SIGTERM): say nothing."""
        try:
            return self.store.check(["stop"])
        except Exception:
            return False

    def first_failed(self) -> int | None:
        try:
            if self.store.check(["first"]):
                return int(self.store.get("first").decode())
        except Exception:
            pass
        return None

    def _counters(self) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        for r in range(self.world):
            key = f"hb/{r}"
            out[r] = self.store.get(key).decode() if self.store.check([key]) else None
        return out

    def lost_ranks(self, wait: float | None = None) -> list[int]:
        """Ranks marked dead or whose heartbeat has stopped; waits up to `wait` seconds
        (default: 4 heartbeat intervals) for the evidence to appear."""
        wait = 4 * self.interval if wait is None else wait
        try:
            before = self._counters()
            deadline = time.monotonic() + wait
            while True:
                dead = [r for r in range(self.world) if self.store.check([f"dead/{r}"])]
                if dead or self.store.check(["first"]) or wait <= 0:
                    return dead  # no time to watch counters: only the marks count
                if time.monotonic() >= deadline:
                    break
                time.sleep(self.interval / 2)
            after = self._counters()
        except Exception:
            return []
        return [r for r in range(self.world) if r != self.rank and after[r] == before[r]]


class Watch:
    """Launcher side: the heartbeats of every rank, and the marks that stop the others."""

    def __init__(self, store: dist.Store, world: int, silence_s: float):
        self.store = dist.PrefixStore(PREFIX, store)
        self.world, self.silence_s = world, silence_s
        self._seen: dict[int, tuple[str, float]] = {}

    def silent(self) -> list[int]:
        """Ranks whose heartbeat has not moved for `silence_s` seconds (a rank is watched from
        its first beat on: starting up, importing torch, may take long on a busy machine)."""
        now = time.monotonic()
        out = []
        for r in range(self.world):
            key = f"hb/{r}"
            if not self.store.check([key]):
                continue
            value = self.store.get(key).decode()
            last = self._seen.get(r)
            if last is None or last[0] != value:
                self._seen[r] = (value, now)
            elif now - last[1] > self.silence_s:
                out.append(r)
        return out

    def reported(self, rank: int) -> bool:
        """Whether `rank` said why it stopped (its own error, or a peer's)."""
        return self.store.check([f"said/{rank}"])

    def abort(self) -> None:
        self.store.set("abort", "1")

    def stopping(self) -> None:
        """The launcher stops every worker: a worker that sees a peer go says nothing."""
        self.store.set("stop", "1")

    def mark_dead(self, rank: int) -> None:
        """Record that a worker died or stopped responding, and stop the others."""
        self.store.set(f"dead/{rank}", "1")
        self.store.set("abort", "1")
