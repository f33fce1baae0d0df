"""`rlhf-plan profile`'s collective timings on 2 gloo ranks (one process group, short timeout).

LOCAL_WORLD_SIZE=1 makes the two ranks count as two nodes, so both the intra-node pair and the
inter-node entries are exercised."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from estimator.lookup import ProfileLookup
from estimator.profile import Profile, Roofline
from executor.profiling.collectives import time_collectives

pytestmark = pytest.mark.distributed


def _worker(rank: int, world: int, store: str, out) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    res = time_collectives("cpu", True, init_method=f"file://{store}", timeout_s=30)
    out.put((rank, None if res is None else [c.model_dump() for c in res]))


def test_collectives_are_timed_on_two_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(r, 2, str(tmp_path / "store"), out)) for r in range(2)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results[1] is None
    timings = results[0]
    ops = {(c["op"], c["scope"]) for c in timings}
    assert {("all_reduce", "inter"), ("all_gather", "inter"), ("broadcast", "inter")} <= ops
    assert {("send_recv", "intra"), ("send_recv", "inter")} <= ops
    assert all(c["time_s"] > 0 and c["group_size"] == 2 for c in timings)
    # The cost model reads them back: grid points exactly, larger messages scaled by bytes.
    prof = Profile(
        kind="measured",
        id="t",
        device="cpu",
        roofline=Roofline(
            flops_per_s=1e9,
            memory_bytes_per_s=1e9,
            intra_node_bytes_per_s=1e9,
            inter_node_bytes_per_s=1e9,
        ),
        collectives=timings,
    )
    lk = ProfileLookup(prof, 1e9, 1e9)
    ar = [c for c in timings if c["op"] == "all_reduce"]
    for c in ar:  # on CPU each size is timed after several compute bursts (after_s)
        assert lk.collective_time(
            "all_reduce", 2, "inter", c["bytes"], c["after_s"]
        ) == pytest.approx(c["time_s"])
    assert len({c["after_s"] for c in ar}) > 1 and all(c["after_s"] > 0 for c in ar)
    biggest = max(ar, key=lambda c: c["bytes"])
    assert lk.collective_time("all_reduce", 2, "inter", 4 * biggest["bytes"]) > biggest["time_s"]
