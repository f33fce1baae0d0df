"""Benchmarks on several CPU ranks: spawned processes that meet in a FileStore, one thread
each, and hand rank 0's result back through a queue."""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def join_group(rank: int, world: int, store: str, timeout_s: float) -> None:
    """This process as gloo rank `rank` of `world`, on one thread."""
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )  # fmt: skip


def spawn(worker, world: int, *args, timeout_s: float):
    """Run `worker(rank, world, store, *args, queue)` on `world` spawned processes and return
    what one of them (rank 0, by the workers' convention) puts on the queue, waiting at most
    `timeout_s` seconds for it."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        procs = [
            ctx.Process(target=worker, args=(r, world, store, *args, out)) for r in range(world)
        ]
        for p in procs:
            p.start()
        result = out.get(timeout=timeout_s)
        for p in procs:
            p.join()
    return result
