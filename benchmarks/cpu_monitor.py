"""Who used the CPUs while a benchmark ran: the whole machine and one process tree, from /proc,
so that iterations disturbed by other jobs can be left out."""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from pathlib import Path

# ---- who used the CPUs ---------------------------------------------------------------------
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def machine_busy_s() -> float:
    """CPU seconds the whole machine's processes have run since boot (all cores): user, nice
    and system time, plus steal (another virtual machine had our core). Interrupt time is
    left out: it is accounted to no process, and most of it here is the loopback traffic of
    our own gloo workers."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system = v[0], v[1], v[2]
    steal = v[7] if len(v) > 7 else 0
    return (user + nice + system + steal) / HZ


def tree_cpu_s(root: int, seen: dict[int, float] | None = None) -> float:
    """CPU seconds of process `root`, its descendants, and this process. `seen` keeps the
    last figure of every process found so far, so one that exits still counts."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(name)] = int(rest[1])
        cpu[int(name)] = (int(rest[11]) + int(rest[12])) / HZ
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    mine, todo = {root, os.getpid()}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in mine:
                mine.add(c)
                todo.append(c)
    seen = {} if seen is None else seen
    for p in mine:
        if p in cpu:
            seen[p] = cpu[p]
    return sum(seen.values())


def quiet_wait(threshold: float, timeout: float, calm_needed: int = 3) -> float | None:
    """Wait until other jobs used less than `threshold` of the machine for `calm_needed`
    consecutive seconds; the seconds waited, or None after `timeout`."""
    t0 = time.monotonic()
    calm = 0
    while time.monotonic() - t0 < timeout:
        b0, w0 = machine_busy_s(), time.monotonic()
        time.sleep(1.0)
        share = (machine_busy_s() - b0) / (NCPU * (time.monotonic() - w0))
        calm = calm + 1 if share < threshold else 0
        if calm >= calm_needed:
            return time.monotonic() - t0
    return None


class Monitor(threading.Thread):
    """Samples the machine's and a process tree's CPU time, and when lines of a metrics file
    appear, so each logged iteration gets the share other jobs took of its own window."""

    def __init__(self, root: int, metrics: Path, period: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.metrics, self.period = root, metrics, period
        self.t: list[float] = []
        self.busy: list[float] = []
        self.mine: list[float] = []
        self.line_times: list[float] = []
        self._seen: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self._sample()
            self._halt.wait(self.period)

    def _sample(self) -> None:
        now = time.monotonic()
        busy, mine = machine_busy_s(), tree_cpu_s(self.root, self._seen)
        try:
            lines = self.metrics.read_bytes().count(b"\n")
        except OSError:
            lines = 0
        self.t.append(now)
        self.busy.append(busy)
        self.mine.append(mine)
        while len(self.line_times) < lines:
            self.line_times.append(now)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def _at(self, series: list[float], t: float) -> float:
        i = bisect.bisect_left(self.t, t)
        if i <= 0:
            return series[0]
        if i >= len(self.t):
            return series[-1]
        t0, t1 = self.t[i - 1], self.t[i]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return series[i - 1] + f * (series[i] - series[i - 1])

    def foreign_share(self, start: float, end: float) -> float:
        if end <= start or len(self.t) < 2:
            return math.nan
        busy = self._at(self.busy, end) - self._at(self.busy, start)
        mine = self._at(self.mine, end) - self._at(self.mine, start)
        return max(0.0, busy - mine) / (NCPU * (end - start))

    def shares(self, durations: list[float]) -> list[float]:
        """Foreign share of each logged iteration (line k ended iteration k)."""
        return [
            self.foreign_share(self.line_times[k] - d, self.line_times[k])
            if k < len(self.line_times)
            else math.nan
            for k, d in enumerate(durations)
        ]
