"""Reallocation throughput next to the plain gloo point-to-point bandwidth, on this CPU.

For a model of about 100M parameters (preset 'small', fp32) on 2 and 4 gloo ranks, each
layout change is timed end to end (`reallocate`: packing, transfer, unpacking, local copies)
twice: "fresh" into newly allocated destination tensors (a role's first view, a move of its
home) and "warm" into the destination memory of the previous move into that layout
(executor.realloc.move.Buffers: what rlhf-run does from the second iteration on, when it rebuilds
a role's generation view after the train step; a source tensor that the result holds whole,
as when tp shrinks, lives inside the result tensor from the first move on, as a role's home
shard does, and is not copied again). Both are set against baselines measured in
the same run, with the same processes:

- link: one pair of ranks sending one large contiguous buffer (dist.send / dist.recv);
- raw: exactly the plan's bytes per (src, dst) pair, one contiguous buffer per pair, posted
  in one batch_isend_irecv: what the move would cost if packing and unpacking were free.
  "warm" receives into the same preallocated buffers every time; "fresh" into newly
  allocated ones, as a move into a new home must (on CPU, faulting in fresh pages costs
  about as much as the transfer itself).

Throughput counts the bytes that cross a link (local copies excluded), summed over pairs.
"warm/link" is the warm reallocation's throughput over the link's, best time over best time
(the target is >= 70%); "paired" is the same ratio taken within each rep (link and move timed
back to back) and the median of those: the machine's cores are shared, its speed drifts
from second to second, and the best of a 30 ms link transfer swings more than the move does;
"warm/raw" and "fresh/raw" set each reallocation against the raw transfer into the same kind
of memory. "estimate" is what the estimator (estimator.transfer.realloc_transfer, the search's
price of the move, which assumes warm memory as rlhf-run has it) says for a 1-node cluster of
`world` CPU devices with the shipped CPU profile whose collectives were timed by `world`
workers on this machine (2 or 4; gloo link and memory-copy rate measured), and "est/warm"
its ratio to the measured warm time.

    .venv/bin/python benchmarks/realloc.py [--ranks 2 4] [--reps 3] [--model small]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ranks import join_group, spawn  # noqa: E402
from executor.realloc.buffers import Buffers, added  # noqa: E402
from executor.realloc.move import host_regions, reallocate  # noqa: E402
from plans.allocation import Allocation, DeviceMesh, ParallelStrategy  # noqa: E402
from plans.model import preset  # noqa: E402
from plans.transfer import plan_params  # noqa: E402

PROFILES = Path(__file__).resolve().parents[1] / "estimator/profiles"
PROFILE = {  # collectives timed by as many workers as the move has ranks, on this machine
    2: PROFILES / "cpu-epyc-2core-1thread_2workers.json",
    4: PROFILES / "cpu-epyc-2core-1thread_4workers.json",
}


def estimate(model: str, world: int, src: Allocation, dst: Allocation) -> float:
    """The cost model's price of the move: its busiest rank's time."""
    from estimator.cost import CostModel
    from estimator.profile import load_profile
    from estimator.transfer import realloc_transfer
    from plans import ClusterSpec, load_experiment

    cluster = ClusterSpec(nodes=1, gpus_per_node=world, device="cpu")
    profile = load_profile(PROFILE.get(world, PROFILE[2]))
    cm = CostModel(cluster, load_experiment("ppo-tiny"), profile)
    return realloc_transfer(preset(model), DTYPE.itemsize, src, dst, world, cm.lookup).time_s


DTYPE = torch.float32
LINK_BYTES = 128 * 2**20


def _alloc(first: int, size: int, dp: int = 1, tp: int = 1, pp: int = 1) -> Allocation:
    return Allocation(
        mesh=DeviceMesh(gpu_start=first, n_gpus=size),
        strategy=ParallelStrategy(dp=dp, tp=tp, pp=pp),
    )


def changes(world: int) -> list[tuple[str, Allocation, Allocation]]:
    """Layout changes on one node of `world` devices: (label, source, destination)."""
    if world == 2:
        return [
            ("r0 -> r1 (whole model, disjoint)", _alloc(0, 1), _alloc(1, 1)),
            ("t2 -> d2 (same mesh)", _alloc(0, 2, tp=2), _alloc(0, 2, dp=2)),
            ("p2 -> t2 (same mesh)", _alloc(0, 2, pp=2), _alloc(0, 2, tp=2)),
        ]
    return [
        ("d2p2 -> t4 (train -> gen)", _alloc(0, 4, dp=2, pp=2), _alloc(0, 4, tp=4)),
        ("t4 -> d2p2 (gen -> train)", _alloc(0, 4, tp=4), _alloc(0, 4, dp=2, pp=2)),
        ("r0-1 t2 -> r2-3 d2 (disjoint)", _alloc(0, 2, tp=2), _alloc(2, 2, dp=2)),
        ("t4 -> p4 (same mesh)", _alloc(0, 4, tp=4), _alloc(0, 4, pp=4)),
    ]


def _time(fn, setup=None) -> float:
    """Seconds of one run, every rank starting together; `setup` runs untimed."""
    if setup is not None:
        setup()
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    return time.perf_counter() - t0


def _link(rank: int):
    """One pair (rank 0 -> 1), one contiguous buffer, plain dist.send / dist.recv."""
    buf = torch.ones(LINK_BYTES, dtype=torch.uint8)

    def once() -> None:
        if rank == 0:
            dist.send(buf, 1)
        elif rank == 1:
            dist.recv(buf, 0)

    return once


def _raw(plan, rank: int, fresh: bool):
    """The plan's bytes per pair as one raw buffer each, no packing. `fresh`: the receiver
    allocates new memory every time, as any move into a new home must."""
    per_pair = plan.bytes_per_pair(DTYPE.itemsize)
    bufs = {p: torch.ones(n, dtype=torch.uint8) for p, n in per_pair.items() if rank in p}

    def once() -> None:
        ops = []
        for (s, d), b in sorted(bufs.items()):
            if s == rank:
                ops.append(dist.P2POp(dist.isend, b, d))
            else:
                b = torch.empty_like(b) if fresh else b
                ops.append(dist.P2POp(dist.irecv, b, s))
        if ops:
            for w in dist.batch_isend_irecv(ops):
                w.wait()

    return once


def _worker(rank: int, world: int, store: str, model: str, reps: int, out) -> None:
    join_group(rank, world, store, timeout_s=300)
    spec = preset(model)
    link_fn = _link(rank)
    link_fn()  # warm the pair's connection
    rows = []
    for label, src, dst in changes(world):
        plan = plan_params(src, dst, spec, world)
        g = torch.Generator().manual_seed(0)
        mine = plan.src_layout.get(rank, {})
        shards = {n: torch.randn(p.shape, generator=g, dtype=DTYPE) for n, p in mine.items()}
        moved = sum(plan.bytes_per_pair(DTYPE.itemsize).values())
        fresh_out: dict = {}  # the last result of each kind, dropped before the next move
        warm_out: dict = {}
        buffers = Buffers()

        def once(shards=shards, plan=plan, result=fresh_out) -> None:
            result["out"] = reallocate(plan, shards, DTYPE, keep_source=True)

        hosts: dict = {}

        def warm_once(
            shards=shards, plan=plan, result=warm_out, buffers=buffers, hosts=hosts
        ) -> None:
            result["out"] = reallocate(
                plan, shards, DTYPE, keep_source=True, buffers=buffers, into=hosts
            )

        def give_back(shards=shards, result=warm_out, buffers=buffers) -> None:
            buffers.give(added(result.pop("out", {}), shards))

        warm_once()  # the first move into the layout fills `buffers`
        # As rlhf-run's roles do after their first view: source tensors that the result holds
        # whole (tp shrinks) move inside it, and later moves fill the same tensors.
        parts, found = host_regions(plan, rank, warm_out["out"])
        shards.update(parts)
        hosts.update(found)
        # Interleaved, so that each figure sees the same share of a busy machine; best of reps.
        raw_warm, raw_fresh = _raw(plan, rank, False), _raw(plan, rank, True)
        times = [
            (
                _time(link_fn),
                _time(raw_warm),
                _time(raw_fresh),
                _time(once, setup=fresh_out.clear),
                _time(warm_once, setup=give_back),
            )
            for _ in range(reps)
        ]
        link, warm, fresh, t, t_warm = (min(col) for col in zip(*times, strict=True))
        # The machine's speed drifts (shared cores): each rep's own warm/link, median of them.
        paired = statistics.median((moved / r[4]) / (LINK_BYTES / r[0]) for r in times)
        rows.append((label, moved, LINK_BYTES / link, warm, fresh, t, t_warm, paired))
        del shards, fresh_out, warm_out, buffers
    if rank == 0:
        out.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def run(world: int, model: str, reps: int) -> list:
    return spawn(_worker, world, model, reps, timeout_s=1800)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default="small")
    args = ap.parse_args()
    spec = preset(args.model)
    print(
        f"model {args.model}: {spec.num_params() / 1e6:.1f}M parameters, "
        f"{spec.num_params() * DTYPE.itemsize / 2**20:.0f} MiB in {DTYPE}; "
        f"best of {args.reps}; torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    for world in args.ranks:
        rows = run(world, args.model, args.reps)
        print(f"\n{world} ranks (link: 1 pair, {LINK_BYTES >> 20} MiB, plain send/recv)")
        print(
            f"  {'layout change':32} {'MiB':>5} {'link':>8} {'realloc, warm':>14} "
            f"{'realloc, fresh':>14} {'raw, warm':>14} {'raw, fresh':>14} {'warm/link':>9} "
            f"{'paired':>6} {'warm/raw':>8} {'fresh/raw':>9} {'estimate':>8} {'est/warm':>8}"
        )
        ests = [estimate(args.model, world, a, b) for _, a, b in changes(world)]
        best_ok = paired_ok = 0
        for (label, moved, link, warm, fresh, t, t_warm, paired), est in zip(
            rows, ests, strict=True
        ):
            cells = [f"{x:5.3f}s {moved / x / 1e9:4.2f}GB/s" for x in (t_warm, t, warm, fresh)]
            print(
                f"  {label:32} {moved / 2**20:5.0f} {link / 1e9:4.2f}GB/s "
                + " ".join(f"{c:>14}" for c in cells)
                + f" {moved / t_warm / link:9.0%} {paired:6.0%} {warm / t_warm:8.0%}"
                + f" {fresh / t:9.0%}"
                + f" {est:7.3f}s {est / t_warm:8.2f}"
            )
            best_ok += moved / t_warm / link >= 0.7
            paired_ok += paired >= 0.7
        print(
            f"  at least 70% of the link: {best_ok} of {len(rows)} best against best, "
            f"{paired_ok} of {len(rows)} paired"
        )


if __name__ == "__main__":
    main()
