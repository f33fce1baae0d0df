"""Which ranks are alive: heartbeats in the process-group store.

Each worker bumps a counter `hb/<rank>` in the store every `interval` seconds from a daemon
thread; a launcher that sees a child die writes `dead/<rank>`. When a collective fails (a peer
closed its connection, or the collective timeout passed), the worker asks `lost_ranks()`: the
ranks marked dead, or whose counter stopped moving. Counters, not timestamps, so clocks of
different nodes never need to agree.
"""

from __future__ import annotations

import threading
import time

import torch.distributed as dist


class Health:
    def __init__(self, store: dist.Store, rank: int, world: int, interval: float = 0.5):
        self.store = dist.PrefixStore("health/", store)
        self.rank, self.world, self.interval = rank, world, interval
        self._stop = threading.Event()
        self._beats = 0
        self._beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self._beats += 1
        self.store.set(f"hb/{self.rank}", str(self._beats))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception:  # the store went away with the job: nothing left to report to
                return

    def stop(self) -> None:
        self._stop.set()

    def _counters(self) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        for r in range(self.world):
            key = f"hb/{r}"
            out[r] = self.store.get(key).decode() if self.store.check([key]) else None
        return out

    def lost_ranks(self, wait: float | None = None) -> list[int]:
        """Ranks marked dead by the launcher or whose heartbeat has stopped; waits up to `wait`
        seconds (default: 4 heartbeat intervals) for the evidence to appear."""
        wait = 4 * self.interval if wait is None else wait
        try:
            before = self._counters()
            deadline = time.monotonic() + wait
            while True:
                dead = [r for r in range(self.world) if self.store.check([f"dead/{r}"])]
                if dead:
                    return dead
                if time.monotonic() >= deadline:
                    break
                time.sleep(self.interval / 2)
            after = self._counters()
        except Exception:
            return []
        return [r for r in range(self.world) if r != self.rank and after[r] == before[r]]


def mark_dead(store: dist.Store, rank: int) -> None:
    """Launcher side: record that a worker process has exited abnormally."""
    dist.PrefixStore("health/", store).set(f"dead/{rank}", "1")
