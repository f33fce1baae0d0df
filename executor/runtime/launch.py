"""Starting the workers of a run: one process per device, and stopping them again.

On one node `rlhf-run` spawns the workers itself and hosts their store (a TCPStore on
127.0.0.1, in the launcher's process, so nothing on disk can vanish under a run); under
`torchrun` (RANK / WORLD_SIZE / MASTER_ADDR set) each process is already one worker and rank 0
hosts the store. CPU workers use gloo with one thread each, whether or not the machine has
GPUs; GPU workers (`device="cuda"`) use NCCL.

How a run ends (executor.runtime.health keeps the marks):
- A worker that hits an error prints one line and records it; every other worker stops within
  a heartbeat, saying which rank failed. A worker that dies, or whose heartbeat stops for the
  timeout (a stopped or wedged process), is named by the launcher, which kills it and stops
  the others the same way. Every store operation and wait is bounded by the timeout.
- Workers live only as long as the launcher (executor.runtime.lifeline): the kernel kills them
  when it exits (Linux PR_SET_PDEATHSIG), and a watchdog thread checks the parent pid.
- SIGINT and SIGTERM are the launcher's: workers ignore SIGINT (a terminal's Ctrl-C reaches the
  whole process group), the launcher stops them (SIGTERM, then SIGKILL after STOP_GRACE_S) and
  returns 130 or 143.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from executor.runtime.cpu_process import setup_cpu_process
from executor.runtime.health import Health, Watch
from executor.runtime.lifeline import STOP_GRACE_S, Signals, bind_to_parent, stop_workers
from plans import ClusterSpec, PlanError
from plans.devices import LocalDevices

WorkerFn = Callable[["WorkerEnv", Any], None]

EXIT_LOST_PEER = 3
EXIT_ERROR = 1
HEARTBEAT_S = 0.5


class RunError(Exception):
    """A problem of the run, not a bug (the disk is full, the loss stopped being finite): the
    worker that hits it reports it in one line, without a traceback."""


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


def workers_here(cluster: ClusterSpec) -> int:
    """Workers this machine runs: torchrun's local share (one launch per node), else the
    whole world (rlhf-run's own launcher starts every worker here)."""
    if under_torchrun():
        return int(os.environ.get("LOCAL_WORLD_SIZE", cluster.gpus_per_node))
    return cluster.world_size


def local_devices() -> LocalDevices:
    """The CUDA devices torch sees here (plans.devices.run_refusal judges them)."""
    if not torch.cuda.is_available():
        return LocalDevices(0)
    props = torch.cuda.get_device_properties(0)
    return LocalDevices(torch.cuda.device_count(), props.name, props.total_memory / 2**30)


def _backend_and_device(rank: int, device: str) -> tuple[str, torch.device]:
    """`device` "cuda": NCCL and this process's GPU; "cpu": gloo with one thread, also on a
    machine that has GPUs (a plan for CPU workers must not end up with NCCL)."""
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        torch.cuda.set_device(local)
        return "nccl", torch.device("cuda", local)
    setup_cpu_process()
    return "gloo", torch.device("cpu")


_said = threading.Lock()


def _say(health: Health, line: str) -> bool:
    """Print this worker's one closing line; False if another thread already said one."""
    if not _said.acquire(blocking=False):
        return False
    health.said()
    write_line(line)
    return True


def write_line(line: str) -> None:
    """`line` and its newline to stderr in one write: the workers share the launcher's stderr,
    and print's two writes (text, then newline) of two workers could interleave into one
    garbled line. One write of under PIPE_BUF bytes reaches a pipe whole."""
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (tests)
        print(line, file=sys.stderr, flush=True)
        return
    os.write(fd, (line + "\n").encode(errors="backslashreplace"))


def describe(e: BaseException) -> str:
    """A user-facing error in one line (an OSError with its file and the OS's words)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return " ".join(str(e).splitlines()) or type(e).__name__


def os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind `e` (itself, or what it was raised from or while handling)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _aborted(rank: int, health: Health) -> None:
    """The heartbeat thread saw `abort` (or lost the store): stop this process now."""
    why = health.cause(wait=0) or "lost contact with the run's store; stopping"
    if health.stopping():
        os._exit(EXIT_LOST_PEER)
    if _say(health, f"rank {rank}: {why}"):
        os._exit(EXIT_LOST_PEER)


def _failed(rank: int, health: Health, e: BaseException, timeout: timedelta) -> int:
    """This worker's one line about why it stops; returns its exit code."""
    if health.stopping():  # the launcher is stopping every worker: nothing to say
        return EXIT_LOST_PEER
    if isinstance(e, PlanError | RunError | OSError):  # the user's or the run's problem
        first = health.fail()
        if first == rank:
            _say(health, f"rank {rank}: error: {describe(e)}")
        else:
            _say(health, f"rank {rank}: stopped because rank {first} failed")
        return EXIT_ERROR
    if isinstance(e, RuntimeError | dist.DistError):  # a collective or the store failed
        why = health.cause()
        if why:
            _say(health, f"rank {rank}: {why}")
            return EXIT_LOST_PEER
        if "timeout" in str(e).lower() or "timed out" in str(e).lower():
            stuck = health.stuck()
            health.give_up(sorted(stuck))
            t = f"{timeout.total_seconds():g} s"
            if stuck:
                who = "; ".join(f"rank {r} is at {where}" for r, where in sorted(stuck.items()))
                _say(health, f"rank {rank}: waited {t} for rank(s) that did not answer ({who})")
            else:
                _say(health, f"rank {rank}: a wait for the other ranks timed out after {t}")
            return EXIT_LOST_PEER
    health.fail()  # a bug of ours: its traceback, once
    if _said.acquire(blocking=False):
        health.said()
        traceback.print_exception(e)
    return EXIT_ERROR


def _run_worker(
    fn: WorkerFn,
    task: Any,
    rank: int,
    world: int,
    stores: tuple[dist.Store, dist.Store],
    timeout: timedelta,
    device: str = "cpu",
) -> int:
    """`stores`: two connections to the run's store, the second for the heartbeat thread."""
    if not under_torchrun():
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: loopback only
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher (or torchrun) handles it
    backend, dev = _backend_and_device(rank, device)
    health = Health(stores[1], rank, world, HEARTBEAT_S, on_abort=lambda: _aborted(rank, health))
    try:
        store = stores[0]
        # NCCL: bound to this worker's GPU, so the world's communicator is made now and every
        # new_group splits from it; a group's first batched point-to-point call (a pipeline's
        # neighbours, a move between some ranks) then need not involve all of its ranks.
        bound = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world, timeout=timeout, **bound
        )
        fn(WorkerEnv(rank, world, dev, store, health, timeout), task)
        dist.barrier()
    except BaseException as e:
        return _failed(
            rank, health, e, timeout
        )  # no destroy_process_group: a broken group can hang it
    health.stop()
    try:
        dist.destroy_process_group()
    except Exception:
        pass
    return 0


def _client(host: str, port: int, world: int, timeout: timedelta) -> dist.TCPStore:
    return dist.TCPStore(host, port, world, is_master=False, timeout=timeout)


def _spawned(
    rank: int,
    world: int,
    port: int,
    fn: WorkerFn,
    task: Any,
    timeout_s: float,
    device: str,
    parent: int,
) -> None:
    bind_to_parent(parent)
    timeout = timedelta(seconds=timeout_s)
    try:
        stores = (
            _client("127.0.0.1", port, world + 1, timeout),
            _client("127.0.0.1", port, world + 1, timeout),
        )
    except Exception as e:  # the launcher's store is gone: so is the launcher
        write_line(f"rank {rank}: cannot reach the launcher ({describe(e)[:120]})")
        os._exit(EXIT_LOST_PEER)
    code = _run_worker(fn, task, rank, world, stores, timeout, device)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: gloo threads of a broken group can hang it


def launch(
    fn: WorkerFn, task: Any, world: int, timeout_s: float = 60.0, device: str = "cpu"
) -> int:
    """Run `fn(env, task)` on `world` workers; returns the exit code for the command (128 +
    the signal when SIGINT or SIGTERM stopped the run). `device`: "cpu" (gloo) or "cuda"."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    timeout = timedelta(seconds=timeout_s)
    if under_torchrun():
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if size != world:
            write_line(f"the plan needs {world} workers but torchrun started {size}")
            return EXIT_ERROR
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1
        store = dist.TCPStore(host, port, size, is_master=rank == 0, timeout=timeout)
        stores = (store, _client(host, port, size, timeout))
        return _run_worker(fn, task, rank, size, stores, timeout, device)
    store = dist.TCPStore(
        "127.0.0.1", 0, world + 1, is_master=True, timeout=timeout, wait_for_workers=False
    )
    ctx = mp.get_context("spawn")
    args = (world, store.port, fn, task, timeout_s, device, os.getpid())
    procs = [ctx.Process(target=_spawned, args=(r, *args)) for r in range(world)]
    signals = Signals()
    try:
        with signals.children_ignore_sigint():
            for p in procs:
                p.start()
        return _supervise(procs, Watch(store, world, timeout_s), timeout_s, signals)
    finally:
        stop_workers([p for p in procs if p.pid is not None], 0.0, signals)
        # A run stopped by a signal stays stopped: more Ctrl-C while the command says where
        # it stopped and exits are ignored (handled once).
        signals.restore(ignore=signals.signum is not None)


def _supervise(procs: list, watch: Watch, timeout_s: float, signals: Signals) -> int:
    """Wait for the workers; name a dead or silent one and stop the others; on SIGINT or
    SIGTERM stop them all. Never waits forever."""
    blamed: dict[int, str] = {}  # rank -> why the launcher stopped the run because of it
    said: set[int] = set()  # ranks the launcher named as they failed
    done: set[int] = set()
    first_failure: float | None = None
    next_beat_check = 0.0
    while any(p.is_alive() for p in procs):
        if signals.signum is not None:
            watch.stopping()
            stop_workers(procs, STOP_GRACE_S, signals)
            return 128 + signals.signum
        now = time.monotonic()
        for r, p in enumerate(procs):
            if r in done or p.is_alive() or p.exitcode == 0:
                continue
            done.add(r)
            first_failure = first_failure or now
            if watch.reported(r):  # it said why itself
                watch.abort()
            else:
                blamed[r] = _describe(p.exitcode)
                watch.mark_dead(r)
        if now >= next_beat_check:
            next_beat_check = now + HEARTBEAT_S
            for r in watch.silent():
                if r not in done and procs[r].is_alive():
                    said.add(r)
                    why = f"stopped responding (no heartbeat for {timeout_s:g} s)"
                    write_line(f"rlhf-run: rank {r} {why}; stopping the run")
                    done.add(r)
                    first_failure = first_failure or now
                    watch.mark_dead(r)
                    stop_workers([procs[r]], 0.0, signals)
        if first_failure and now - first_failure > timeout_s + 10:
            for r, p in enumerate(procs):
                if p.is_alive():
                    blamed.setdefault(r, "did not stop after the others failed; killed")
            stop_workers(procs, 0.0, signals)
        time.sleep(0.1)
    codes = [p.exitcode for p in procs]
    if not any(codes):
        return 0
    if blamed and not said:
        desc = ", ".join(f"rank {r}: {why}" for r, why in sorted(blamed.items()))
        write_line(f"rlhf-run: workers failed ({desc})")
    return EXIT_ERROR


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by signal {-code}"
    return {EXIT_LOST_PEER: "stopped after losing a peer"}.get(code, f"exit code {code}")
