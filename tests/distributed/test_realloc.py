"""Parameter reallocation and batch redistribution between any two layouts on 4 gloo ranks:
after a move every rank holds exactly the pieces its destination layout names, bitwise equal
to the reference tensors; a round trip train -> generation -> train leaves the weights and
the live tensor memory as they were."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from executor.compute import forward
from executor.data.batching import dp_share
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.realloc.batches import batch_schema, move_batch
from executor.realloc.model_shards import adopt_shards_, model_shards
from executor.realloc.move import reallocate
from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.transfer import SAMPLES, param_layout, plan_batch, plan_params
from tests.distributed.pool import WorkerPool
from tests.distributed.realloc_cases import (
    TOPOLOGIES,
    WORLD,
    allocations,
    full_tensor,
    index,
    live_tensor_bytes,
    make_shards,
    param_shapes,
    relation,
    specs,
)

pytestmark = pytest.mark.distributed
TIMEOUT = timedelta(seconds=20)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Framing (chunk bytes, direct bytes), see executor.realloc.wire: None = one op per message; -1 = the
# default; small chunks cut messages and tensors into many frames; direct 0 sends every
# tensor in frames of its own, 10**9 none.
FRAMINGS = [(None, 0), (-1, 64 * 2**10), (64, 32), (1000, 256), (500, 10**9), (4096, 0)]
CHUNKS = st.sampled_from(FRAMINGS)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(WORLD, tmp_path_factory.mktemp("realloc"))
    yield p
    p.close()


# ---- checks run on every rank ------------------------------------------------------------------
def check_params(rank: int, world: int, cases: list[tuple]) -> list[dict]:
    """Each case: (gpus_per_node, src, dst, spec name, dtype name, keep_source, seed, chunk
    bytes)."""
    out = []
    for gpn, src, dst, spec_name, dtype_name, keep, seed, chunk in cases:
        spec, dtype = specs()[spec_name], DTYPES[dtype_name]
        plan = plan_params(src, dst, spec, gpn)
        mine = plan.src_layout.get(rank, {})
        shards = make_shards(dict(mine), spec, dtype, seed) if mine else None
        before = {k: v.clone() for k, v in shards.items()} if shards else {}
        got = reallocate(
            plan, shards, dtype, keep_source=keep, timeout=TIMEOUT,
            chunk_bytes=chunk[0], direct_bytes=chunk[1],
        )  # fmt: skip
        want = plan.dst_layout.get(rank, {})
        shapes = param_shapes(spec)
        bad = [
            name
            for name, piece in want.items()
            if not torch.equal(
                got[name], full_tensor(piece.key, shapes[piece.key], dtype, seed)[index(piece.box)]
            )
            or got[name].dtype != dtype
        ]
        out.append(
            {
                "names": sorted(got) == sorted(want),
                "bad": bad,
                "source_kept": (
                    all(torch.equal(shards[k], v) for k, v in before.items())
                    if keep and shards is not None
                    else shards is None or not shards
                ),
                "received": sum(t.numel for ts in plan.recvs(rank).values() for t in ts),
            }
        )
    return out


def check_batches(rank: int, world: int, cases: list[tuple]) -> list[dict]:
    """Each case: (gpus_per_node, src, dst, n_samples, src_last_stage_only, keep, seed, chunk
    bytes)."""
    out = []
    for gpn, src, dst, n, last_only, keep, seed, chunk in cases:
        full = _full_batch(n, seed)
        plan = plan_batch(src, dst, n, gpn, src_last_stage_only=last_only)
        mine = plan.src_layout.get(rank, {}).get(SAMPLES)
        share = None
        if mine is not None:
            ((a, b),) = mine.box
            share = {k: v[a:b].clone() for k, v in full.items()}
        got = move_batch(
            plan, share, batch_schema(full), keep_source=keep, timeout=TIMEOUT,
            chunk_bytes=chunk[0], direct_bytes=chunk[1],
        )  # fmt: skip
        want = plan.dst_layout.get(rank, {}).get(SAMPLES)
        if want is None:
            out.append({"ok": got == {}, "rows": None})
            continue
        ((a, b),) = want.box
        ok = sorted(got) == sorted(full) and all(
            got[k].dtype == v.dtype and torch.equal(got[k], v[a:b]) for k, v in full.items()
        )
        out.append({"ok": ok, "rows": (a, b)})
    return out


def _full_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 264, (n, 7), generator=g),
        "logprobs": torch.randn(n, 7, generator=g),
        "rewards": torch.randn(n, generator=g).to(torch.bfloat16),
        "mask": torch.rand(n, 7, generator=g) > 0.3,
    }


def check_round_trip(
    rank: int, world: int, gpn: int, train: Allocation, gen: Allocation, spec_name: str
) -> dict:
    """train -> gen (temporary copy, dropped) and train -> gen -> train (home moves)."""
    spec, dtype = specs()[spec_name], torch.float32
    to_gen, to_train = plan_params(train, gen, spec, gpn), plan_params(gen, train, spec, gpn)
    mine = param_layout(train, spec, gpn).get(rank, {})
    empty = live_tensor_bytes()
    weights = make_shards(dict(mine), spec, dtype) if mine else {}
    start = live_tensor_bytes()
    reference = make_shards(dict(mine), spec, dtype) if mine else {}
    with_reference = live_tensor_bytes()

    # A temporary generation copy: made, used, dropped.
    copy = reallocate(to_gen, weights, dtype, keep_source=True, timeout=TIMEOUT)
    copy_ok = _equal_to_reference(copy, to_gen.dst_layout.get(rank, {}), spec, dtype)
    del copy
    after_copy = live_tensor_bytes()
    kept = all(torch.equal(weights[k], v) for k, v in reference.items())

    # The home moves to the generation layout and back.
    moved = reallocate(to_gen, weights, dtype, keep_source=False, timeout=TIMEOUT)
    source_released = not weights
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in moved.values()
    }
    gen_bytes = sum(storages.values())
    while_moved = live_tensor_bytes()
    back = reallocate(to_train, moved, dtype, keep_source=False, timeout=TIMEOUT)
    del moved
    back_ok = sorted(back) == sorted(reference) and all(
        torch.equal(back[k], v) for k, v in reference.items()
    )
    del reference
    end = live_tensor_bytes()
    return {
        "held": start - empty,
        "copy_ok": copy_ok,
        "kept": kept,
        "after_copy_extra": after_copy - with_reference,
        "source_released": source_released,
        # Holding only the moved weights (plus the reference copy, which is the same size as
        # the training shards): the old home is gone.
        "while_moved_extra": while_moved - (with_reference - (start - empty)) - gen_bytes,
        "back_ok": back_ok,
        "end_extra": end - start,
    }


def check_model_move(rank: int, world: int, gpn: int, train: Allocation, gen: Allocation) -> dict:
    """A seeded model in the train layout, moved to the generation layout and adopted by a
    model built there (no copy), computes the single-process model's logits."""
    spec = specs()["tiny"]
    batch = {"input_ids": torch.arange(30).remainder(250).view(3, 10)}
    ref = random_init_(Transformer(spec), seed=5)
    ref_logits = forward.logits(ref, ParallelContext.single(), batch)
    ctx_train = ParallelContext.build(train, gpn)
    ctx_gen = ParallelContext.build(gen, gpn)
    shards = None
    if ctx_train.in_mesh:
        shards = model_shards(random_init_(Transformer.for_context(spec, ctx_train), seed=5))
    moved = reallocate(plan_params(train, gen, spec, gpn), shards, torch.float32, timeout=TIMEOUT)
    if not ctx_gen.in_mesh:
        return {"in_gen": False, "moved": len(moved)}
    model = adopt_shards_(Transformer.for_context(spec, ctx_gen), moved)
    shared = all(model_shards(model)[n].data_ptr() == t.data_ptr() for n, t in moved.items())
    logits = forward.logits(model, ctx_gen, batch)
    err = None
    if ctx_gen.is_last_stage:
        want = dp_share({"input_ids": ref_logits}, ctx_gen.dp_size, ctx_gen.dp_rank)["input_ids"]
        err = (logits - want).abs().max().item()
    return {"in_gen": True, "shared": shared, "err": err}


def _equal_to_reference(got, want, spec, dtype) -> bool:
    shapes = param_shapes(spec)
    return sorted(got) == sorted(want) and all(
        torch.equal(got[n], full_tensor(p.key, shapes[p.key], dtype)[index(p.box)])
        for n, p in want.items()
    )


# ---- tests -------------------------------------------------------------------------------------
def _assert_params(results: list[list[dict]], cases: list[tuple]) -> None:
    for i, case in enumerate(cases):
        per_rank = [r[i] for r in results]
        for rank, r in enumerate(per_rank):
            assert r["names"] and not r["bad"], (case, rank, r)
            assert r["source_kept"], (case, rank, r)


def test_every_pair_of_layouts_one_node(pool):
    """All pairs of the 15 layouts of the uneven tied model on 1 node x 4 (225 moves)."""
    spec = specs()["uneven-tied"]
    allocs = allocations(1, 4, spec)
    # every framing in turn: most messages go in several tagged frames
    cases = [
        (4, a, b, "uneven-tied", "float32", True, 1, FRAMINGS[i % len(FRAMINGS)])
        for i, (a, b) in enumerate((a, b) for a in allocs for b in allocs)
    ]
    kinds = {relation(a, b, 4) for _, a, b, *_ in cases}
    mixes = {(a.strategy.dp, a.strategy.tp, a.strategy.pp) for a in allocs}
    assert kinds == {"identical", "overlapping", "disjoint"}
    assert {(4, 1, 1), (1, 4, 1), (1, 2, 2), (2, 1, 2), (2, 2, 1)} <= mixes
    results = pool.run(check_params, cases)
    _assert_params(results, cases)
    # Identical layouts receive nothing; the others mostly do.
    received = [sum(r[i]["received"] for r in results) for i in range(len(cases))]
    assert all(n == 0 for n, (_, a, b, *_) in zip(received, cases, strict=True) if a == b)
    assert sum(n > 0 for n in received) > len(cases) // 2


@st.composite
def _param_case(draw):
    nodes, gpn = draw(st.sampled_from(TOPOLOGIES))
    spec_name = draw(st.sampled_from(sorted(specs())))
    allocs = allocations(nodes, gpn, specs()[spec_name])
    kind = draw(st.sampled_from(["identical", "overlapping", "disjoint"]))
    src = draw(st.sampled_from(allocs))
    choices = [b for b in allocs if relation(src, b, gpn) == kind]
    if not choices:  # a mesh of the whole world has no disjoint partner
        choices = allocs
    dst = draw(st.sampled_from(choices))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    keep, seed, chunk = draw(st.booleans()), draw(st.integers(0, 9)), draw(CHUNKS)
    return (gpn, src, dst, spec_name, dtype, keep, seed, chunk)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=_param_case())
def test_random_layout_pairs(pool, case):
    """Property: any source and destination layout (any topology, model, dtype), the
    destination pieces are exact and the source is kept or released as asked."""
    _assert_params(pool.run(check_params, [case]), [case])


@st.composite
def _batch_case(draw):
    nodes, gpn = draw(st.sampled_from(TOPOLOGIES))
    allocs = allocations(nodes, gpn, specs()["tiny"])
    src, dst = draw(st.sampled_from(allocs)), draw(st.sampled_from(allocs))
    n = draw(st.integers(1, 11))  # fewer samples than dp ranks leaves some shares empty
    last_only, keep, seed = draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 9))
    return (gpn, src, dst, n, last_only, keep, seed, draw(CHUNKS))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=_batch_case())
def test_random_batch_moves(pool, case):
    results = pool.run(check_batches, [case])
    assert all(r[0]["ok"] for r in results), (case, results)
    # The consumer's dp shares tile the batch, and every tp/pp rank of a dp rank has its share.
    _, _, dst, n, *_ = case
    rows = [r[0]["rows"] for r in results if r[0]["rows"] is not None]
    assert len(rows) == dst.mesh.size
    assert sum(b - a for a, b in set(rows)) == n and len(set(rows)) <= dst.strategy.dp


def test_every_pair_of_batch_layouts(pool):
    """All pairs of layouts on 2 nodes x 2, 5 samples (one dp share of 4 gets 2, others 1)."""
    allocs = allocations(2, 2, specs()["tiny"])
    cases = [
        (2, a, b, 5, a.strategy.pp > 1, False, 3, FRAMINGS[i % len(FRAMINGS)])
        for i, (a, b) in enumerate((a, b) for a in allocs for b in allocs)
    ]
    results = pool.run(check_batches, cases)
    for i, case in enumerate(cases):
        assert all(r[i]["ok"] for r in results), case


def _alloc(gpn: int, ranks: tuple[int, int], dp: int, tp: int, pp: int) -> Allocation:
    """Ranks [first, first + size) as a mesh of the gpn-wide topology."""
    first, size = ranks
    if size > gpn:
        mesh = DeviceMesh(node_start=first // gpn, n_nodes=size // gpn, n_gpus=gpn)
    else:
        mesh = DeviceMesh(node_start=first // gpn, gpu_start=first % gpn, n_gpus=size)
    return Allocation(mesh=mesh, strategy=ParallelStrategy(dp=dp, tp=tp, pp=pp))


ROUND_TRIPS = {
    # train: dp2 x pp2 on all ranks; generation: tp4 on the same ranks
    "same-mesh": (4, ((0, 4), 2, 1, 2), ((0, 4), 1, 4, 1)),
    # train: pp2 on node 1 of 2x2; generation: dp2 x tp2 on both nodes (overlapping)
    "overlapping": (2, ((2, 2), 1, 1, 2), ((0, 4), 2, 2, 1)),
    # train: tp2 on ranks 0-1; generation: dp2 on ranks 2-3 (disjoint)
    "disjoint": (4, ((0, 2), 1, 2, 1), ((2, 2), 2, 1, 1)),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_train_to_generation_and_back(pool, name):
    gpn, train, gen = ROUND_TRIPS[name]
    train_alloc = _alloc(gpn, *train)
    results = pool.run(check_round_trip, gpn, train_alloc, _alloc(gpn, *gen), "tiny")
    for rank, r in enumerate(results):
        assert r["copy_ok"] and r["kept"] and r["back_ok"], (rank, r)
        assert r["source_released"], (rank, r)
        assert r["after_copy_extra"] == 0, (rank, r)
        assert r["while_moved_extra"] == 0, (rank, r)
        assert r["end_extra"] == 0, (rank, r)
    assert sum(r["held"] > 0 for r in results) == train_alloc.mesh.size


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_moved_model_computes_the_same_logits(pool, name):
    gpn, train, gen = ROUND_TRIPS[name]
    gen_alloc = _alloc(gpn, *gen)
    results = pool.run(check_model_move, gpn, _alloc(gpn, *train), gen_alloc)
    inside = [r for r in results if r["in_gen"]]
    assert len(inside) == gen_alloc.mesh.size
    assert all(r["shared"] for r in inside)
    errs = [r["err"] for r in inside if r["err"] is not None]
    assert len(errs) == gen_alloc.strategy.dp * gen_alloc.strategy.tp  # last-stage ranks
    assert max(errs) < 1e-5, errs
    assert all(r["moved"] == 0 for r in results if not r["in_gen"])
