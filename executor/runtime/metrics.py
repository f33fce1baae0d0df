"""Per-iteration metrics of a run, gathered without a barrier.

Every worker leaves its row for an iteration in the process-group store and goes on; rank 0
merges the rows of an iteration once all of them are there and appends one line to
metrics.jsonl. A collective here (all_gather_object) would make every iteration end with a
barrier, and calls of the next iteration could never overlap the tail of this one (the
critic's train step with the next generation, say), which is what a plan's placement buys.

Times are wall-clock (time.time()) so rows of different ranks line up; the iteration time is
the time between the ends of consecutive iterations (the slowest rank's), which is the
run's rate when iterations overlap.
"""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from executor.runtime.launch import RunError
from plans import Plan
from plans.metrics import FILE, MetricsRow, append_metrics, read_metrics

CALL_SECONDS = ("wait_s", "data_s")
"""Per call and rank: waiting for the inputs, handing the outputs over (a call takes as long
as its slowest rank). The call itself runs from `start` to `end` on each rank; its merged
compute_s is from the last rank's start to the last rank's end. Reallocating the model into
the call's layout is timed the same way over the ranks that send or receive parameters
(`moves`: start, end), so a receiver waiting for its sender to finish an earlier call (the
train step whose weights it needs) does not count as reallocation: merged realloc_s."""


class MetricsBoard:
    def __init__(self, store: dist.Store, rank: int, world: int, timeout: timedelta):
        self.store = dist.PrefixStore("metrics/", store)
        self.rank, self.world, self.timeout = rank, world, timeout
        self._posted: list[int] = []  # iterations not yet merged (rank 0)
        self._last_end: float | None = None

    def post(self, it: int, row: dict) -> None:
        """Leave this rank's row of iteration `it`; never waits."""
        self.store.set(f"{it}/{self.rank}", pickle.dumps(row))
        if self.rank == 0:
            self._posted.append(it)

    def merged(self, plan: Plan, block: bool = False) -> list[MetricsRow]:
        """Rank 0: merged rows of the iterations every rank has posted, oldest first; with
        `block`, all posted iterations (waits up to the timeout for the others)."""
        out = []
        while self._posted:
            it = self._posted[0]
            keys = [f"{it}/{r}" for r in range(self.world)]
            if block:
                self.store.wait(keys, self.timeout)
            elif not self.store.check(keys):
                break
            rows = [pickle.loads(self.store.get(k)) for k in keys]
            for k in keys:
                self.store.delete_key(k)
            self._posted.pop(0)
            out.append(self._merge(plan, it, rows))
        return out

    def _merge(self, plan: Plan, it: int, everyone: list[dict]) -> MetricsRow:
        calls: dict[str, dict] = {}
        stats: dict = {}
        for r in everyone:
            stats.update(r["stats"])
            for name, t in r["calls"].items():
                c = calls.setdefault(name, dict.fromkeys(CALL_SECONDS, 0.0))
                for k in CALL_SECONDS:
                    c[k] = max(c[k], t[k])  # a call takes as long as its slowest rank
                c["start"] = max(c.get("start", t["start"]), t["start"])
                c["end"] = max(c.get("end", t["end"]), t["end"])
        moves: dict[str, list[tuple[float, float]]] = {}
        for r in everyone:
            for name, span in r.get("moves", {}).items():
                moves.setdefault(name, []).append(span)
        for name, c in calls.items():
            # A rank that starts early waits inside the call's first collective for the
            # others (still busy with an earlier call): the call runs from the last start.
            c["compute_s"] = c["end"] - c["start"]
            spans = moves.get(name, [])
            c["realloc_s"] = _last_start_to_end(spans) if spans else 0.0
        if plan.estimate:
            for name, c in calls.items():
                est = plan.estimate.calls.get(name)
                c["estimate_s"] = est.time_s if est else None
        end = max(r["end"] for r in everyone)
        if self._last_end is None:  # the first iteration of this process: its own span
            took = max(r["end"] - r["start"] for r in everyone)
        else:
            took = end - self._last_end
        self._last_end = end
        return MetricsRow(
            iteration=it,
            iteration_s=took,
            realloc_s=sum(c["realloc_s"] for c in calls.values()),
            peak_memory_mib=max(r["peak_memory_mib"] for r in everyone),
            calls=calls,
            **stats,
        )


def _last_start_to_end(spans: list[tuple[float, float]]) -> float:
    return max(0.0, max(e for _, e in spans) - max(s for s, _ in spans))


def append_row(out_dir: Path, row: MetricsRow) -> None:
    try:
        append_metrics(out_dir / FILE, row)
    except OSError as e:
        raise RunError(f"cannot write {out_dir / FILE}: {e.strerror or e}") from None


def repair(out_dir: Path) -> str | None:
    """Drop a last line of metrics.jsonl cut short (a run killed while writing it); returns a
    warning saying so, or None. A bad line elsewhere stays an error (read_metrics names it)."""
    path = out_dir / FILE
    if not path.is_file():
        return None
    text = path.read_bytes()
    lines = text.splitlines(keepends=True)
    if not lines:
        return None
    last = lines[-1]
    try:
        MetricsRow.model_validate_json(last)
        whole = last.endswith(b"\n")
    except ValueError:
        whole = False
    if whole:
        return None
    try:
        path.write_bytes(b"".join(lines[:-1]))
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from None
    return f"{path}: dropped a last line cut short ({len(last)} bytes; a run was killed while writing it)"


def truncate(out_dir: Path, done: int) -> None:
    """Drop metric lines of iterations after the checkpoint: they will be run again."""
    path = out_dir / FILE
    if path.exists():
        repair(out_dir)
        keep = [r for r in read_metrics(path) if r.iteration < done]
        try:
            path.write_text("".join(r.to_line() + "\n" for r in keep))
        except OSError as e:
            raise RunError(f"cannot write {path}: {e.strerror or e}") from None
