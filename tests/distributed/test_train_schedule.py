"""The train step as the plan says: the 1F1B pipeline, activation checkpointing and bf16 with
fp32 master weights, each against the single-process fp32 reference on 4 gloo ranks."""

from __future__ import annotations

import functools

import pytest
import torch

from executor.compute import train
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.parallel.grads import grad_of
from tests.distributed.layouts_util import GPUS_PER_NODE, SEED, allocation, ragged_batch, spec_for
from tests.distributed.pool import WorkerPool

pytestmark = pytest.mark.distributed
TOL = 1e-6
ROWS = 8  # micro-batch counts up to 8 with dp = 1


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(4, tmp_path_factory.mktemp("schedule"))
    yield p
    p.close()


def _grads(model: Transformer, ctx: ParallelContext, n_micro: int, recompute: bool = False):
    """Gradients of one step (lr 0, no clipping) by layout name, and block forward calls."""
    model.recompute = recompute
    calls = [0]

    def counted(forward):  # forward hooks do not see the recomputation; the method does
        def run(*args, **kw):
            calls[0] += 1
            return forward(*args, **kw)

        return run

    for blk in model.model.layers.values():
        blk.forward = counted(blk.forward)
    opt = train.make_optimizer(model, train.OptimConfig(lr=0.0))
    loss_fn, count_fn = train.next_token_loss(model, ctx)
    batch = ragged_batch(batch=ROWS)
    train.train_step(model, ctx, opt, batch, loss_fn, count_fn, n_micro, max_grad_norm=None)
    params = dict(model.named_parameters(remove_duplicate=False))
    return {n: grad_of(params[n]).detach().clone() for n in model.slices}, calls[0]


@functools.cache
def _reference():
    model = random_init_(Transformer(spec_for("tiny")), seed=SEED)
    grads, _ = _grads(model, ParallelContext.single(), 1)
    return grads, {sl.name: sl for sl in model.slices.values()}


def check_pipeline(rank: int, world: int, pp: int, n_micro: int, recompute: bool):
    ctx = ParallelContext.build(allocation(1, pp, 1, n_micro), GPUS_PER_NODE)
    if not ctx.in_mesh:
        return None
    ref, _ = _reference()
    model = random_init_(Transformer.for_context(spec_for("tiny"), ctx), seed=SEED)
    grads, calls = _grads(model, ctx, n_micro, recompute)
    worst = max(
        (g - ref[sl.source][sl.index()]).abs().max().item()
        for (n, g), sl in zip(grads.items(), model.slices.values(), strict=True)
    )
    blocks = len(model.model.layers)
    return {
        "diff": worst,
        "calls": calls,
        "blocks": blocks,
        "norm": max(g.abs().max().item() for g in grads.values()),
    }


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("n_micro", range(1, 9))
def test_1f1b_gradients_equal_the_single_process_ones(pool, pp, n_micro):
    results = [r for r in pool.run(check_pipeline, pp, n_micro, False) if r is not None]
    assert len(results) == pp
    for r in results:
        assert r["norm"] > 1e-4, r  # gradients exist, so the comparison means something
        assert r["diff"] < TOL, r
        assert r["calls"] == n_micro * r["blocks"], r  # one forward per block and micro-batch


@pytest.mark.parametrize("pp,n_micro", [(1, 1), (1, 3), (2, 3), (4, 5)])
def test_recomputed_activations_give_the_same_gradients(pool, pp, n_micro):
    results = [r for r in pool.run(check_pipeline, pp, n_micro, True) if r is not None]
    for r in results:
        assert r["diff"] < TOL, r
        assert r["calls"] == 2 * n_micro * r["blocks"], r  # every block ran again in backward


def check_bf16_zero1(rank: int, world: int):
    """bf16 on dp 2: ZeRO-1's sharded fp32 masters update exactly like whole ones."""
    out = {}
    for zero1 in (False, True):
        alloc = allocation(1, 1, 2, 1)
        ctx = ParallelContext.build(alloc, GPUS_PER_NODE)
        if not ctx.in_mesh:
            return None
        model = random_init_(
            Transformer.for_context(spec_for("tiny"), ctx, torch.bfloat16), seed=SEED
        )
        opt = train.make_optimizer(model, train.OptimConfig(lr=1e-3), ctx, zero1=zero1)
        loss_fn, count_fn = train.next_token_loss(model, ctx)
        for _ in range(3):
            train.train_step(model, ctx, opt, ragged_batch(batch=ROWS), loss_fn, count_fn, 2)
        out[zero1] = [p.detach().clone() for p in model.parameters()]
        out[f"grad_dtype_{zero1}"] = str(grad_of(next(model.parameters())).dtype)
    same = all(torch.equal(a, b) for a, b in zip(out[False], out[True], strict=True))
    return {"same": same, "grad_dtype": out["grad_dtype_True"]}


def test_bf16_zero1_masters_update_like_whole_ones(pool):
    results = [r for r in pool.run(check_bf16_zero1) if r is not None]
    assert len(results) == 2
    for r in results:
        assert r["same"], r
        assert r["grad_dtype"] == "torch.float32", r  # accumulated and reduced in fp32
