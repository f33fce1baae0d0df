"""Collective timings under torchrun: all-reduce, all-gather, reduce-scatter, broadcast and
send/recv over group sizes (powers of two up to the world) and message sizes.

Groups are the first n ranks, so a group spans nodes exactly when n exceeds the ranks per node
(LOCAL_WORLD_SIZE); send/recv pairs rank 0 with rank 1 (intra) and with the first rank of the
next node (inter). Every rank runs the same sequence of calls; rank 0 records the medians.

On CPU (gloo) the group collectives are timed *in context*, as tensor-parallel layers issue
them: every rank computes for a while (a matmul burst of each length in CONTEXTS), then calls
the collective, many times back to back; the collective's time is that loop's time minus the
bursts' alone, recorded with the burst length (`after_s`). On a machine with as many workers as
cores, gloo's helper threads wait for a core held by a computing worker, and ranks computing in
lockstep drift apart, so the first to arrive waits: milliseconds per call, growing with the
compute in between. A collective timed right after a barrier, with every core idle, misses
that (0.2-0.4 ms against 1.7-4.4 ms measured inside rlhf-run's tensor-parallel calls on the
2-core development machine). GPUs (NCCL) keep the barrier-then-time method.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import timedelta
from functools import partial

from estimator.profile import CollectiveTiming, ContentionTiming
from executor.profiling.contention import time_contention

SIZES = {True: [2**12, 2**16, 2**20, 2**23], False: [2**k for k in range(12, 27, 2)]}
REPS = {True: 5, False: 10}
# Compute between two in-context collectives: a decode step's half block (sub-millisecond) to
# a training micro-batch's half block (tens of milliseconds).
CONTEXTS = {True: (5e-4, 8e-3), False: (5e-4, 4e-3, 3.2e-2)}
ROUNDS = 3  # in-context timing: median of this many loops


BUSY_WARN = 0.05  # others' share of the CPUs above which collective timings come out high


def machine_busy_s() -> float | None:
    """CPU seconds every process of the machine has run since boot (user, nice, system,
    steal), from /proc/stat; None where there is no /proc."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return (v[0] + v[1] + v[2] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")


def others_share(busy0: float | None, wall0: float, mine: float) -> float | None:
    """Share of the machine's CPUs that processes other than the timing ranks used since
    (busy0, wall0); `mine`: the ranks' own CPU seconds (all their threads) in that time."""
    busy1 = machine_busy_s()
    if busy0 is None or busy1 is None:
        return None
    return max(busy1 - busy0 - mine, 0.0) / ((os.cpu_count() or 1) * (time.monotonic() - wall0))


def _burst_count(seconds: float) -> int:
    """How many of _burst's matmuls take about `seconds` on one thread here."""
    import torch

    a, b = torch.randn(128, 512), torch.randn(512, 512)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    one = max((time.perf_counter() - t0) / 20, 1e-6)
    return max(1, round(seconds / one))


def _burst(n: int):
    """A callable computing `n` matmuls on one thread: the same work on every rank, as a
    tensor-parallel layer's ranks do between two collectives."""
    import torch

    a, b = torch.randn(128, 512), torch.randn(512, 512)

    def run() -> None:
        for _ in range(n):
            a @ b

    return run


def time_collectives(
    dev_type: str,
    quick: bool,
    progress=None,
    init_method: str | None = None,
    timeout_s: float = 120.0,
) -> tuple[list[CollectiveTiming], list[ContentionTiming]] | None:
    """Returns the timings on rank 0 and None on the other ranks: the collectives' and, on
    CPU with at least 2 ranks per node, executor.profiling.contention's. Rank and world size come
    from torchrun's environment (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE)."""
    import torch
    import torch.distributed as dist

    backend = "nccl" if dev_type == "cuda" else "gloo"
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if dev_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(
        backend,
        init_method=init_method,
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )
    device = torch.device("cuda") if dev_type == "cuda" else torch.device("cpu")
    sync = torch.cuda.synchronize if dev_type == "cuda" else (lambda: None)
    # On CPU other jobs delay gloo's threads and the ranks' wake-ups: say so if there were any.
    busy0, wall0, cpu0 = machine_busy_s(), time.monotonic(), time.process_time()
    sizes = [n for n in (2, 4, 8, 16, 32, 64, 128, 256) if n <= world]
    if world not in sizes:
        sizes.append(world)
    groups = {n: dist.new_group(list(range(n))) for n in sizes}
    out: list[CollectiveTiming] = []
    reps = REPS[quick]
    task = (
        progress.add_task("collectives", total=len(sizes) + 1) if progress and rank == 0 else None
    )

    contexts = CONTEXTS[quick] if dev_type == "cpu" else (0.0,)
    # Rank 0's count for every rank: counted on each, the ranks' bursts would differ by their
    # calibration noise and the shorter one would wait for the longer one at every call.
    bursts = {}
    if dev_type == "cpu":
        counts = torch.tensor([_burst_count(c) for c in contexts], dtype=torch.int64)
        dist.broadcast(counts, 0)
        bursts = {c: _burst(int(n)) for c, n in zip(contexts, counts.tolist(), strict=True)}

    def timed(fn, group, after: float) -> float:
        fn()
        sync()
        burst = bursts.get(after)
        if burst is not None:
            loops = []
            for _ in range(ROUNDS):
                dist.barrier(group=group)
                t0 = time.perf_counter()
                for _ in range(reps):
                    burst()
                    fn()
                both = time.perf_counter() - t0
                dist.barrier(group=group)
                t0 = time.perf_counter()
                for _ in range(reps):
                    burst()
                alone = time.perf_counter() - t0
                loops.append(max(both - alone, 1e-7 * reps) / reps)
            return statistics.median(loops)
        times = []
        for _ in range(reps):
            dist.barrier(group=group)
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def rec(op: str, n: int, scope: str, nbytes: int, t: float, after: float = 0.0) -> None:
        out.append(
            CollectiveTiming(
                op=op, group_size=n, scope=scope, bytes=nbytes, time_s=t, after_s=after
            )
        )

    for n in sizes:
        g, scope = groups[n], ("inter" if n > local else "intra")
        if rank < n:
            for nbytes in SIZES[quick]:
                x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
                parts = [torch.empty_like(x[: x.numel() // n]) for _ in range(n)]
                calls = {
                    "all_reduce": partial(dist.all_reduce, x, group=g),
                    "broadcast": partial(dist.broadcast, x, 0, group=g),
                    "all_gather": partial(dist.all_gather, parts, parts[0], group=g),
                    "reduce_scatter": partial(dist.reduce_scatter, parts[0], parts, group=g),
                }
                for op, fn in calls.items():
                    for after in contexts:
                        try:
                            rec(op, n, scope, nbytes, timed(fn, g, after), after)
                        except (RuntimeError, NotImplementedError):
                            break  # e.g. gloo has no reduce-scatter: the ring model stands in
        dist.barrier()
        if task is not None:
            progress.advance(task)
    pairs = [(1, "intra")] + ([(local, "inter")] if world > local else [])
    for peer, scope in pairs:
        for nbytes in SIZES[quick]:
            x = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
            times = []
            for _ in range(reps + 1):
                dist.barrier()
                t0 = time.perf_counter()
                if rank == 0:
                    dist.send(x, peer)
                    dist.recv(x, peer)  # round trip: the receiver's clock is not ours
                elif rank == peer:
                    dist.recv(x, 0)
                    dist.send(x, 0)
                sync()
                times.append((time.perf_counter() - t0) / 2)
            if rank == 0:
                rec("send_recv", 2, scope, nbytes, statistics.median(times[1:]))
    if task is not None:
        progress.advance(task)
    contention: list[ContentionTiming] = []
    if dev_type == "cpu" and local >= 2:  # workers that share one CPU slow each other down
        contention = time_contention(quick, progress) or []
    dist.barrier()
    mine = torch.tensor([time.process_time() - cpu0], dtype=torch.float64)
    if dev_type == "cpu" and world == local:  # one machine: every rank's CPU is on it
        dist.all_reduce(mine)
        share = others_share(busy0, wall0, float(mine))
        if rank == 0 and share is not None and share > BUSY_WARN:
            print(
                f"warning: other processes used {share:.0%} of this machine's CPUs while the "
                "collectives were timed; their timings come out high (profile on an idle "
                "machine)",
                file=sys.stderr,
            )
    dist.destroy_process_group()
    return (out, contention) if rank == 0 else None
