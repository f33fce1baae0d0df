"""ZeRO-1: sharding AdamW states over dp changes the memory, not the weights."""

from __future__ import annotations

import pytest
import torch

from executor.compute import train
from executor.compute.schedule import scheduled
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans import OptimizerSpec
from tests.distributed.layouts_util import GPUS_PER_NODE, SEED, allocation, ragged_batch, spec_for
from tests.distributed.pool import WorkerPool

pytestmark = pytest.mark.distributed
STEPS = 3


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(4, tmp_path_factory.mktemp("zero"))
    yield p
    p.close()


def _train(tp: int, dp: int, zero1: bool):
    ctx = ParallelContext.build(allocation(tp, 1, dp), GPUS_PER_NODE)
    if not ctx.in_mesh:
        return None
    spec = spec_for("odd")  # uneven sizes: dp shares of different lengths
    model = random_init_(Transformer.for_context(spec, ctx), seed=SEED)
    opt = train.make_optimizer(
        model, train.OptimConfig(lr=1e-2, weight_decay=0.1), ctx, zero1=zero1
    )
    loss_fn, count_fn = train.next_token_loss(model, ctx)
    losses = [
        train.train_step(model, ctx, opt, ragged_batch(), loss_fn, count_fn, n_micro=2).loss
        for _ in range(STEPS)
    ]
    saved = opt.state_dict()
    saved = saved.get("inner", saved)  # MasterAdamW: its AdamW's state next to the masters
    state_bytes = sum(
        t.numel() * t.element_size()
        for s in saved["state"].values()
        for t in s.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, state_bytes


def check_zero1(rank, world, tp, dp):
    plain, sharded = _train(tp, dp, False), _train(tp, dp, True)
    if plain is None:
        return None
    (l0, w0, b0), (l1, w1, b1) = plain, sharded
    assert l0 == l1, (l0, l1)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # the same elementwise math: bitwise equal
    return b0, b1


@pytest.mark.parametrize("tp,dp", [(1, 2), (1, 4), (2, 2)])
def test_zero1_same_weights_smaller_states(pool, tp, dp):
    out = [o for o in pool.run(check_zero1, tp, dp) if o is not None]
    for plain_bytes, sharded_bytes in out:
        # Moments of 1/dp of every parameter (+ a few elements of rounding of uneven splits).
        assert sharded_bytes <= plain_bytes / dp * 1.01 + 64


def _train_scheduled(zero1: bool, spec):
    ctx = ParallelContext.build(allocation(1, 1, 2), GPUS_PER_NODE)
    if not ctx.in_mesh:
        return None
    model = random_init_(Transformer.for_context(spec_for("odd"), ctx), seed=SEED)
    cfg = train.OptimConfig(lr=spec.lr, weight_decay=0.1)
    opt = scheduled(train.make_optimizer(model, cfg, ctx, zero1=zero1), spec)
    loss_fn, count_fn = train.next_token_loss(model, ctx)
    rates = []
    for _ in range(STEPS + 2):
        rates.append(opt.param_groups[0]["lr"])
        train.train_step(model, ctx, opt, ragged_batch(), loss_fn, count_fn, n_micro=2)
    return rates, {k: v.detach().clone() for k, v in model.state_dict().items()}


def check_zero1_schedule(rank, world, spec):
    plain, sharded = _train_scheduled(False, spec), _train_scheduled(True, spec)
    if plain is None:
        return
    # The schedule reaches the AdamW over this rank's shares: the same rates, the same weights.
    assert plain[0] == sharded[0]
    assert sharded[0] == pytest.approx([spec.lr_at(k) for k in range(STEPS + 2)], rel=1e-12, abs=0)
    for k in plain[1]:
        assert torch.equal(plain[1][k], sharded[1][k]), k


def test_zero1_follows_the_lr_schedule(pool):
    spec = OptimizerSpec(lr=1e-2, schedule="cosine", warmup_steps=2, decay_steps=4, min_lr=1e-3)
    pool.run(check_zero1_schedule, spec)
