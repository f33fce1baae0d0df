"""Metrics rows go through the store: rank 0 merges an iteration once every rank has posted it,
without waiting for the late ones, and an iteration's time is the gap between the ends of
consecutive iterations (which overlap in a run)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as dist

from executor.runtime.metrics import MetricsBoard
from plans import example_path, load_plan


def row(start: float, end: float, call_end: float, stat: float, move: tuple | None = None) -> dict:
    call = {"wait_s": 0.0, "data_s": 0.0}
    return {
        "calls": {"actor_gen": call | {"start": start, "end": call_end}},
        "moves": {} if move is None else {"actor_gen": move},
        "stats": {"reward_mean": stat},
        "start": start,
        "end": end,
        "peak_memory_mib": 10.0 * end,
    }


def test_rank_zero_merges_complete_iterations_only(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 2)
    plan = load_plan(example_path("ppo-tiny-4cpu", "plan"))
    zero, one = (MetricsBoard(store, r, 2, timedelta(seconds=5)) for r in (0, 1))
    # Rank 0 receives the actor's weights from 0.0 on; rank 1 sends them from 0.4 on (it was
    # busy before), and both are done at 0.45.
    zero.post(0, row(0.0, 2.0, 1.0, 0.1, move=(0.0, 0.45)))
    zero.post(1, row(2.0, 3.0, 2.5, 0.2))
    assert zero.merged(plan) == []  # rank 1 is still in iteration 0
    one.post(0, row(0.5, 2.5, 1.5, 0.3, move=(0.4, 0.45)))
    first = zero.merged(plan)
    assert [r.iteration for r in first] == [0]
    assert first[0].iteration_s == 2.0  # the first iteration: the longest span of a rank
    call = first[0].calls["actor_gen"]
    # From the last rank's start (rank 0 waited for rank 1 inside the call) to the last end.
    assert (call.start, call.end, call.compute_s) == (0.5, 1.5, 1.0)
    # The move from the sender's arrival: rank 0's wait for it is not reallocation.
    assert call.realloc_s == pytest.approx(0.05)
    assert first[0].realloc_s == pytest.approx(0.05)
    assert first[0].peak_memory_mib == 25.0
    one.post(1, row(2.5, 4.5, 3.0, 0.4))
    second = zero.merged(plan, block=True)
    assert [r.iteration for r in second] == [1]
    assert second[0].calls["actor_gen"].realloc_s == 0.0  # nothing moved
    assert second[0].iteration_s == 4.5 - 2.5  # end to end of the slowest rank
    assert not store.check(["metrics/0/0", "metrics/1/1"])  # merged rows leave the store
