"""Whole passes and checkpointed blocks in a profile, and how the cost model prices them; the
profiler's statistic of repeated runs."""

from __future__ import annotations

import itertools
import time

import pytest

from estimator import CostModel
from estimator.profile import OpTiming, Profile
from estimator.shapes import shard_shape
from plans import Allocation, ClusterSpec, DeviceMesh, ParallelStrategy, experiment_from_dict
from tests.profile_util import measured_profile

EXP = experiment_from_dict(
    {
        "name": "passes",
        "algorithm": "ppo",
        "batch_size": 8,
        "prompt_len": 16,
        "gen_len": 16,
        "dtype": "float32",
        "mini_batches": 2,
        "roles": {
            "actor": {"model": "small"},
            "critic": {"model": "small"},
            "ref": {"model": "small"},
            "reward": {"model": "small"},
        },
    }
)
CLUSTER = ClusterSpec(nodes=1, gpus_per_node=1, device="cpu")
FULL = shard_shape(EXP.model("actor"), 1, 4)
POINTS = [(b, s) for b in (1, 16) for s in (8, 64)]  # around every micro-batch of EXP
OPS = {  # seconds, the same at every point
    "block_fwd": 1e-3,
    "embedding_fwd": 2e-4,
    "head_fwd": 5e-4,
    "block_fwd_bwd": 3e-3,
    "embedding_fwd_bwd": 4e-4,
    "head_fwd_bwd": 1.5e-3,
    "optimizer": 1e-2,
}
OVER = {"infer_pass": 7e-4, "train_pass": 2e-3}  # each pass's cost beyond its ops
RECOMPUTE = 5e-3  # one checkpointed block, forward twice and backward


def _profile(**extra: float) -> Profile:
    times = {**OPS, **extra}
    ops = [
        OpTiming(op=op, shape=FULL, batch=b, seq_len=s, time_s=t)
        for op, t in times.items()
        for b, s in POINTS
    ]
    return measured_profile("passes-test", ops=ops)


def _whole(kind: str) -> float:
    """The pass timed whole on a one-block model: its ops plus the overhead."""
    suffix = "_fwd" if kind == "infer_pass" else "_fwd_bwd"
    return sum(OPS[p + suffix] for p in ("block", "embedding", "head")) + OVER[kind]


def _compute(profile: Profile, call: str, m: int, recompute: bool = False) -> float:
    s = ParallelStrategy(micro_batches=m, recompute=recompute)
    alloc = Allocation(mesh=DeviceMesh(n_gpus=1), strategy=s)
    return CostModel(CLUSTER, EXP, profile).call_cost(call, alloc).breakdown["compute"]


@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("call", ["ref_inf", "critic_inf", "actor_train", "critic_train"])
def test_each_pass_adds_what_the_whole_pass_took_beyond_its_ops(call, m):
    kind = "train_pass" if call.endswith("_train") else "infer_pass"
    steps = EXP.mini_batches if kind == "train_pass" else 1
    without = _compute(_profile(), call, m)
    with_passes = _compute(_profile(**{k: _whole(k) for k in OVER}), call, m)
    assert with_passes - without == pytest.approx(steps * m * OVER[kind])


def test_a_pass_faster_than_its_ops_adds_nothing():
    """Timing noise can put a whole pass under the sum of its parts: no negative cost."""
    fast = {k: 0.5 * _whole(k) for k in OVER}
    assert _compute(_profile(**fast), "ref_inf", 2) == pytest.approx(
        _compute(_profile(), "ref_inf", 2)
    )


@pytest.mark.parametrize("m", [1, 4])
def test_recompute_is_priced_by_the_checkpointed_block_when_timed(m):
    layers = EXP.model("actor").num_hidden_layers
    passes = EXP.mini_batches * m
    head = OPS["embedding_fwd_bwd"] + OPS["head_fwd_bwd"]
    # Without the timing: the plain backward pass plus one more forward of every block.
    plain = _compute(_profile(), "actor_train", m, recompute=True)
    assert plain == pytest.approx(
        passes * (layers * (OPS["block_fwd_bwd"] + OPS["block_fwd"]) + head)
    )
    timed = _compute(_profile(block_recompute=RECOMPUTE), "actor_train", m, recompute=True)
    assert timed == pytest.approx(passes * (layers * RECOMPUTE + head))
    # A call without recompute never reads it.
    assert _compute(_profile(block_recompute=RECOMPUTE), "actor_train", m) == pytest.approx(
        passes * (layers * OPS["block_fwd_bwd"] + head)
    )


def test_the_timer_keeps_the_median_of_its_runs():
    from executor.profiling.kernels import Grid, timer

    grid = Grid(("tiny",), (1,), (1,), (1,), (1,), (1,), min_time_s=0.0, min_reps=5)
    durations = [9.0, 3.0, 1.0, 4.0, 2.0, 8.0]  # the first run is the warm-up

    def clock_of(stat: str) -> float:
        ticks = itertools.chain.from_iterable((0.0, d) for d in durations[1:])
        clock = iter(ticks).__next__
        return timer(lambda: None, grid, clock, stat)(lambda: None)

    assert clock_of("median") == 3.0
    assert clock_of("min") == 1.0
    with pytest.raises(ValueError, match="statistic"):
        timer(lambda: None, grid, time.process_time, "mean")


def test_the_passes_are_timed_through_the_executors_code():
    import torch

    from executor.profiling.kernels import shard_pieces
    from executor.profiling.passes import pass_points

    model = shard_pieces("tiny", 1, torch.float32, torch.device("cpu"))
    shape = shard_shape(model.spec, 1, 4)
    calls: list[object] = []

    def timed(fn) -> float:
        fn()
        calls.append(fn)
        return 0.25

    got = pass_points(model, 2, 8, shape, timed, torch.device("cpu"))
    assert [(t.op, t.batch, t.seq_len, t.time_s) for t in got] == [
        ("infer_pass", 2, 8, 0.25),
        ("train_pass", 2, 8, 0.25),
    ]
    assert all(p.grad is None for p in model.parameters())  # gradients of the timing dropped


def test_older_profiles_say_they_kept_the_fastest_run():
    from estimator import load_profile
    from estimator.profile import Profile as P

    assert P.model_fields["statistic"].default == "min"
    from pathlib import Path

    shipped = Path(__file__).parents[2] / "estimator" / "profiles" / "cpu-xeon-2core-1thread.json"
    assert load_profile(shipped).statistic == "min"
