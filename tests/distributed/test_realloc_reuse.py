"""Reallocation into reused destination memory (executor.realloc.move.Buffers) on 4 gloo ranks, and
a role's generation view rebuilt each iteration (executor.runtime.roles.RoleModel): the
result is bitwise the reference and the single-process model's logits, the memory of the
previous move is what gets filled, and releasing the kept memory frees it."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

from executor.compute import forward
from executor.data.batching import dp_share
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.realloc.buffers import Buffers, added
from executor.realloc.move import host_regions, reallocate
from executor.runtime.roles import RoleModel, layout_key
from plans.allocation import Allocation
from plans.transfer import plan_params
from tests.distributed.pool import WorkerPool
from tests.distributed.realloc_cases import (
    WORLD,
    full_tensor,
    index,
    live_tensor_bytes,
    make_shards,
    param_shapes,
    specs,
)
from tests.distributed.test_realloc import ROUND_TRIPS, _alloc

pytestmark = pytest.mark.distributed
TIMEOUT = timedelta(seconds=20)


# (gpus per node, train layout, generation layout): ((first rank, size), dp, tp, pp); the
# round trips of test_realloc plus tp4 -> tp2 x pp2 on one mesh.
MOVES = {**ROUND_TRIPS, "tp-to-tp-pp": (4, ((0, 4), 1, 4, 1), ((0, 4), 1, 2, 2))}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(WORLD, tmp_path_factory.mktemp("realloc-reuse"))
    yield p
    p.close()


def _scratch_ptrs(buffers: Buffers) -> list[int]:
    """Where the kept byte buffers (receive and packing scratch) are."""
    return sorted(
        t.data_ptr() for ts in buffers._free.values() for t in ts if t.dtype == torch.uint8
    )


def _poison(tensors: list[torch.Tensor]) -> None:
    for t in tensors:
        t.fill_(float("nan"))


def check_reuse(rank: int, world: int, gpn: int, src: Allocation, dst: Allocation) -> dict:
    """Move seed-1 shards into new memory, give it back poisoned, move seed-2 shards into it."""
    spec, dtype = specs()["uneven-tied"], torch.float32
    plan = plan_params(src, dst, spec, gpn)
    mine = dict(plan.src_layout.get(rank, {}))
    want = plan.dst_layout.get(rank, {})
    shapes = param_shapes(spec)
    empty = live_tensor_bytes()
    buffers = Buffers()
    first_src = make_shards(mine, spec, dtype, seed=1)
    first = reallocate(plan, first_src, dtype, timeout=TIMEOUT, buffers=buffers)
    scratch = buffers.nbytes  # receive buffers of pieces that could not land in place
    scratch_ptrs = _scratch_ptrs(buffers)
    new = added(first, first_src)
    ptrs = sorted(t.data_ptr() for t in new)
    _poison(new)  # any element the next move misses shows
    buffers.give(new)
    pooled = buffers.nbytes
    del first, first_src, new
    second_src = make_shards(mine, spec, dtype, seed=2)
    second = reallocate(plan, second_src, dtype, timeout=TIMEOUT, buffers=buffers)
    exact = sorted(second) == sorted(want) and all(
        torch.equal(second[n], full_tensor(p.key, shapes[p.key], dtype, 2)[index(p.box)])
        for n, p in want.items()
    )
    reused = sorted(t.data_ptr() for t in added(second, second_src)) == ptrs
    sources = {t.untyped_storage().data_ptr(): t for t in second_src.values()}
    views = sum(  # parts of a source tensor standing for a destination piece, no copy
        t.untyped_storage().data_ptr() in sources
        and t.shape != sources[t.untyped_storage().data_ptr()].shape
        for t in second.values()
    )
    del sources
    left = buffers.nbytes - scratch  # all of it was taken again (and the scratch given back)
    reused = reused and _scratch_ptrs(buffers) == scratch_ptrs
    buffers.give(added(second, second_src))
    del second, second_src
    held = live_tensor_bytes() - empty
    buffers.release()
    return {
        "exact": exact,
        "reused": reused,
        "scratch": scratch,
        "views": views,
        "pooled": pooled,
        "left": left,
        "held": held,
        "released": live_tensor_bytes() - empty,
    }


def check_hosting(rank: int, world: int, gpn: int, src: Allocation, dst: Allocation) -> dict:
    """Move, let the sources live inside the result (`host_regions`), write new values into
    the sources in place, move again into the same tensors: bitwise the new reference."""
    spec, dtype = specs()["uneven-tied"], torch.float32
    plan = plan_params(src, dst, spec, gpn)
    want = plan.dst_layout.get(rank, {})
    shapes = param_shapes(spec)
    shards = make_shards(dict(plan.src_layout.get(rank, {})), spec, dtype, seed=1)
    first = reallocate(plan, shards, dtype, timeout=TIMEOUT)
    parts, hosts = host_regions(plan, rank, first)
    shards.update(parts)
    for name, t in make_shards(dict(plan.src_layout.get(rank, {})), spec, dtype, seed=2).items():
        shards[name].copy_(t)  # a train step: the hosted ones write into `first`'s tensors
    second = reallocate(plan, shards, dtype, timeout=TIMEOUT, into=hosts)
    exact = sorted(second) == sorted(want) and all(
        torch.equal(second[n], full_tensor(p.key, shapes[p.key], dtype, 2)[index(p.box)])
        for n, p in want.items()
    )
    same = all(second[n].data_ptr() == t.data_ptr() for n, t in hosts.items())
    return {"exact": exact, "same": same, "hosted": len(hosts)}


@pytest.mark.parametrize("name", sorted(MOVES))
def test_sources_living_inside_the_result(pool, name):
    gpn, src, dst = MOVES[name]
    results = pool.run(check_hosting, gpn, _alloc(gpn, *src), _alloc(gpn, *dst))
    assert all(r["exact"] and r["same"] for r in results), results
    assert (sum(r["hosted"] for r in results) > 0) == (name == "tp-to-tp-pp")


def _logits_error(model: Transformer, ctx: ParallelContext, seed: int) -> float | None:
    """Largest difference to the single-process model's logits (None off the last stage)."""
    batch = {"input_ids": torch.arange(30).remainder(250).view(3, 10)}
    logits = forward.logits(model, ctx, batch)
    if not ctx.is_last_stage:
        return None
    ref = random_init_(Transformer(model.spec), seed=seed)
    want = forward.logits(ref, ParallelContext.single(), batch)
    want = dp_share({"input_ids": want}, ctx.dp_size, ctx.dp_rank)["input_ids"]
    return (logits - want).abs().max().item()


def check_role_views(rank: int, world: int, gpn: int, home: Allocation, gen: Allocation) -> dict:
    """Three iterations of: generation view, forward, (train step: new weights), drop."""
    spec = specs()["tiny"]
    ctxs = {layout_key(a): ParallelContext.build(a, gpn) for a in (home, gen)}
    role = RoleModel("actor", spec, home, ctxs, gpn, torch.float32)
    role.init(seed=5)
    ctx = ctxs[layout_key(gen)]
    baseline = live_tensor_bytes()
    errs, ptrs, kept = [], [], []
    for it, seed in enumerate((5, 6, 7)):
        if it and role.model is not None:  # a train step changes the home weights in place
            random_init_(role.model, seed)
        model = role.view(gen)
        ptrs.append(sorted(t.data_ptr() for t in role._view[2]))
        if model is not None:
            err = _logits_error(model, ctx, seed)
            if err is not None:
                errs.append(err)
        del model
        role.drop_view()
        kept.append(role._buffers.nbytes)
    held = live_tensor_bytes() - baseline
    # Home shards that moved into the view's tensors (tp shrinks): those tensors stay, the
    # shards' own memory went.
    hosts = {t.untyped_storage().data_ptr(): t.nbytes for t in role._hosts.values()}
    inside = sum(
        t.nbytes for t in role.shards().values() if t.untyped_storage().data_ptr() in hosts
    )
    role.release_buffers()
    return {
        "errs": errs,
        "same_memory": all(p == ptrs[0] for p in ptrs),
        "kept": kept,
        "held": held,
        "grown": sum(hosts.values()) - inside,
        "hosted": len(hosts),
        "released": live_tensor_bytes() - baseline,
    }


@pytest.mark.parametrize("name", sorted(MOVES))
def test_reallocation_into_reused_memory(pool, name):
    gpn, src, dst = MOVES[name]
    results = pool.run(check_reuse, gpn, _alloc(gpn, *src), _alloc(gpn, *dst))
    for rank, r in enumerate(results):
        assert r["exact"] and r["reused"], (rank, r)
        assert r["left"] == 0, (rank, r)
        assert r["held"] == r["pooled"], (rank, r)  # the pool holds the moved memory only
        assert r["released"] == 0, (rank, r)
    assert any(r["pooled"] > 0 for r in results)
    assert all(r["scratch"] > 0 for r in results)  # packed small tensors at least
    # tp grows on ranks that held whole layers: their rows of q, k, v, gate, up are views
    assert (sum(r["views"] for r in results) > 0) == (name in ("same-mesh", "overlapping"))


@pytest.mark.parametrize("name", sorted(MOVES))
def test_role_view_rebuilt_in_the_same_memory(pool, name):
    gpn, home, gen = MOVES[name]
    gen_alloc = _alloc(gpn, *gen)
    results = pool.run(check_role_views, gpn, _alloc(gpn, *home), gen_alloc)
    errs = [e for r in results for e in r["errs"]]
    assert len(errs) == 3 * gen_alloc.strategy.dp * gen_alloc.strategy.tp  # last-stage ranks
    assert max(errs) < 1e-5, errs
    for rank, r in enumerate(results):
        assert r["same_memory"], (rank, r)
        assert len(set(r["kept"])) == 1 and r["held"] == r["kept"][0] + r["grown"], (rank, r)
        assert r["released"] == r["grown"], (rank, r)
    # Where a rank's view holds more of a tensor than its home (tp4 -> tp2 x pp2 on the same
    # ranks: a tp2 shard holds two tp4 shards), the home shard lives inside the view's tensor.
    hosting = sum(r["hosted"] for r in results) > 0
    assert hosting == (name == "tp-to-tp-pp"), [r["hosted"] for r in results]
