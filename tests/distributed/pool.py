"""A pool of gloo ranks started once per test module and fed check functions by queue.

Starting 4 processes costs several seconds on the CI machines, so a module spawns its pool
once (a module-scoped fixture) and every check runs on the same process group. A check is a
module-level function `fn(rank, world, *args)` run on every rank; its return values come
back as a list indexed by rank. An exception on any rank fails the check with that rank's
traceback; the short collective timeout turns a hang into an error on the other ranks.
"""

from __future__ import annotations

import os
import queue
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

TIMEOUT_S = 60


def _worker(rank: int, world: int, store_path: str, tasks: Any, results: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=TIMEOUT_S),
    )
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            results.put((rank, True, fn(rank, world, *args)))
        except BaseException:  # report everything, the pool must outlive a failing check
            results.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()


class WorkerPool:
    def __init__(self, world: int, tmp: Path):
        ctx = mp.get_context("spawn")
        self.world = world
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(world)]
        store = tmp / "gloo_store"
        self.procs = [
            ctx.Process(
                target=_worker,
                args=(r, world, str(store), self.tasks[r], self.results),
                daemon=True,
            )
            for r in range(world)
        ]
        for p in self.procs:
            p.start()

    def run(self, fn: Any, *args: Any, timeout: float = 3 * TIMEOUT_S) -> list[Any]:
        for q in self.tasks:
            q.put((fn, args))
        out: list[Any] = [None] * self.world
        errors = []
        for _ in range(self.world):
            try:
                rank, ok, value = self.results.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"{fn.__name__}: no answer from a rank in {timeout} s") from None
            if ok:
                out[rank] = value
            else:
                errors.append(f"rank {rank}:\n{value}")
        if errors:
            raise AssertionError(f"{fn.__name__} failed\n" + "\n".join(errors))
        return out

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
