"""Starting the workers of a run: one process per device.

On one node `rlhf-run` spawns the workers itself and joins them through a FileStore; under
`torchrun` (RANK / WORLD_SIZE / MASTER_ADDR set) each process is already one worker. CPU
workers use gloo with one thread each, whether or not the machine has GPUs; GPU workers
(`device="cuda"`) use NCCL. A worker that dies makes every
other worker exit non-zero, naming the lost rank, within the collective timeout.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from executor.runtime.health import Health, mark_dead
from plans import PlanError

WorkerFn = Callable[["WorkerEnv", Any], None]

EXIT_LOST_PEER = 3
EXIT_ERROR = 1


@dataclass
class WorkerEnv:
    """What a worker gets besides its task: identity, device, store and health."""

    rank: int
    world: int
    device: torch.device
    store: dist.Store
    health: Health | None
    timeout: timedelta


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def _backend_and_device(rank: int, device: str) -> tuple[str, torch.device]:
    """`device` "cuda": NCCL and this process's GPU; "cpu": gloo with one thread, also on a
    machine that has GPUs (a plan for CPU workers must not end up with NCCL)."""
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        torch.cuda.set_device(local)
        return "nccl", torch.device("cuda", local)
    torch.set_num_threads(1)  # several CPU workers share the cores; one thread each is fastest
    return "gloo", torch.device("cpu")


def _run_worker(
    fn: WorkerFn,
    task: Any,
    rank: int,
    world: int,
    store: dist.Store,
    timeout: timedelta,
    device: str = "cpu",
) -> int:
    if not under_torchrun():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: loopback only
    backend, dev = _backend_and_device(rank, device)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    health = Health(store, rank, world)
    env = WorkerEnv(rank, world, dev, store, health, timeout)
    try:
        fn(env, task)
        dist.barrier()
        return 0
    except PlanError as e:  # a user error found inside the worker: one line, no traceback
        print(f"rank {rank}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except (RuntimeError, dist.DistError) as e:
        lost = health.lost_ranks()
        if lost:
            print(
                f"rank {rank}: lost contact with rank(s) {', '.join(map(str, lost))}; stopping "
                f"({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                file=sys.stderr,
                flush=True,
            )
            return EXIT_LOST_PEER
        traceback.print_exc()
        return EXIT_ERROR
    except Exception:
        traceback.print_exc()
        return EXIT_ERROR
    finally:
        health.stop()
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def _spawned(
    rank: int,
    world: int,
    store_path: str,
    fn: WorkerFn,
    task: Any,
    timeout_s: float,
    device: str,
) -> None:
    store = dist.FileStore(store_path, world + 1)  # +1: the launcher reads and marks too
    code = _run_worker(fn, task, rank, world, store, timedelta(seconds=timeout_s), device)
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown: gloo threads of a broken group can hang it


def launch(
    fn: WorkerFn, task: Any, world: int, timeout_s: float = 60.0, device: str = "cpu"
) -> int:
    """Run `fn(env, task)` on `world` workers; returns the exit code for the command.
    `device`: "cpu" (gloo) or "cuda" (NCCL, one GPU per worker)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    if under_torchrun():
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if size != world:
            print(f"the plan needs {world} workers but torchrun started {size}", file=sys.stderr)
            return EXIT_ERROR
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]) + 1,
            size,
            is_master=rank == 0,
            timeout=timedelta(seconds=timeout_s),
        )
        return _run_worker(fn, task, rank, size, store, timedelta(seconds=timeout_s), device)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="rlhf-run-") as tmp:
        store_path = str(Path(tmp) / "store")
        procs = [
            ctx.Process(target=_spawned, args=(r, world, store_path, fn, task, timeout_s, device))
            for r in range(world)
        ]
        for p in procs:
            p.start()
        store = dist.FileStore(store_path, world + 1)
        return _supervise(procs, store, timeout_s)


def _supervise(procs: list, store: dist.Store, timeout_s: float) -> int:
    """Wait for the workers; mark a dead one so the others can name it; never wait forever."""
    marked: set[int] = set()
    first_failure: float | None = None
    while any(p.is_alive() for p in procs):
        for r, p in enumerate(procs):
            if not p.is_alive() and p.exitcode not in (0, None) and r not in marked:
                mark_dead(store, r)
                marked.add(r)
                first_failure = first_failure or time.monotonic()
        if first_failure and time.monotonic() - first_failure > 2 * timeout_s + 10:
            for p in procs:
                if p.is_alive():
                    p.kill()
        time.sleep(0.1)
    codes = [p.exitcode for p in procs]
    if any(codes):
        desc = ", ".join(f"rank {r}: {_describe(c)}" for r, c in enumerate(codes) if c)
        print(f"rlhf-run: workers failed ({desc})", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by signal {-code}"
    return {EXIT_LOST_PEER: "stopped after losing a peer"}.get(code, f"exit code {code}")
