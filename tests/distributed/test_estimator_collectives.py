"""`rlhf-plan profile`'s collective timings on 2 gloo ranks (one process group, short timeout).

LOCAL_WORLD_SIZE=1 makes the two ranks count as two nodes, so both the intra-node pair and the
inter-node entries are exercised."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from estimator.contention import contention_factor
from estimator.lookup import ProfileLookup
from executor.profiling.collectives import time_collectives
from plans.model import preset
from tests.profile_util import measured_profile

pytestmark = pytest.mark.distributed


def _worker(rank: int, world: int, local: int, store: str, out) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(local))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    res = time_collectives("cpu", True, init_method=f"file://{store}", timeout_s=30)
    out.put((rank, None if res is None else [[c.model_dump() for c in t] for t in res]))


def _two_ranks(tmp_path, local: int) -> tuple[list[dict], list[dict]]:
    """Rank 0's (collective, contention) timings of two ranks, `local` per node."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    store = str(tmp_path / "store")
    procs = [ctx.Process(target=_worker, args=(r, 2, local, store, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results[1] is None
    return results[0][0], results[0][1]


def test_contention_is_timed_between_workers_of_one_node(tmp_path):
    colls, contention = _two_ranks(tmp_path, local=2)
    assert {c["scope"] for c in colls} == {"intra"}
    assert {(c["kind"], c["model"]) for c in contention} == {
        ("generate", "tiny"),
        ("inference", "tiny"),
        ("train", "tiny"),
    }
    assert all(c["alone_s"] > 0 and c["together_s"] > 0 for c in contention)
    tiny = preset("tiny").num_params()
    prof = measured_profile(contention=contention)
    for c in contention:  # the factor the simulator stretches by is read back per kind
        want = max(c["together_s"] / c["alone_s"] - 1, 0.0)
        assert contention_factor(prof, c["kind"], tiny) == pytest.approx(want)
        assert contention_factor(prof, c["kind"], 100 * tiny) == pytest.approx(want)


def test_collectives_are_timed_on_two_ranks(tmp_path):
    timings, contention = _two_ranks(tmp_path, local=1)
    assert contention == []  # one worker per node: nothing shares a CPU
    ops = {(c["op"], c["scope"]) for c in timings}
    assert {("all_reduce", "inter"), ("all_gather", "inter"), ("broadcast", "inter")} <= ops
    assert {("send_recv", "intra"), ("send_recv", "inter")} <= ops
    assert all(c["time_s"] > 0 and c["group_size"] == 2 for c in timings)
    # The cost model reads them back: grid points exactly, larger messages scaled by bytes.
    prof = measured_profile(inter=1e9, collectives=timings)
    lk = ProfileLookup(prof, 1e9, 1e9)
    ar = [c for c in timings if c["op"] == "all_reduce"]
    for c in ar:  # on CPU each size is timed after several compute bursts (after_s)
        assert lk.collective_time(
            "all_reduce", 2, "inter", c["bytes"], c["after_s"]
        ) == pytest.approx(c["time_s"])
    assert len({c["after_s"] for c in ar}) > 1 and all(c["after_s"] > 0 for c in ar)
    biggest = max(ar, key=lambda c: c["bytes"])
    assert lk.collective_time("all_reduce", 2, "inter", 4 * biggest["bytes"]) > biggest["time_s"]
