"""Packed sequences across tp / pp / dp layouts on 4 gloo ranks equal the single-process padded
computation: log-probs, values and gradients, with left-padded prompts, right-padded responses
of varied lengths and a Mistral sliding window narrower than the rows."""

from __future__ import annotations

import pytest
import torch

from executor.compute import forward
from executor.data.batching import dp_share
from executor.model import Transformer
from executor.model.weights import load_full_state_
from executor.parallel.context import ParallelContext
from tests.distributed.layouts_util import GPUS_PER_NODE, allocation
from tests.distributed.pool import WorkerPool
from tests.families import FAMILIES, family_model, family_state
from tests.unit.test_packing import _grads, real_pairs, varied_batch

pytestmark = pytest.mark.distributed
TOL = 1e-5


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(4, tmp_path_factory.mktemp("packing"))
    yield p
    p.close()


def check_packed(rank: int, world: int, family: str, tp: int, pp: int, dp: int):
    spec = FAMILIES[family]
    vspec = spec.model_copy(update={"head": "value", "tie_word_embeddings": False})
    ctx = ParallelContext.build(allocation(tp, pp, dp), GPUS_PER_NODE)
    if not ctx.in_mesh:
        return None
    batch = varied_batch(10, seed=5)
    one = ParallelContext.single()
    ref_lp = forward.logprobs(family_model(spec), one, batch)  # padded, one process
    ref_v = forward.values(family_model(vspec), one, batch)
    _, ref_g = _grads(family_model(spec), one, batch, 1, False)

    def sharded(s):
        return load_full_state_(Transformer.for_context(s, ctx), family_state(s))

    model = sharded(spec)
    out = {}
    lp = forward.logprobs(model, ctx, batch, n_micro=3, pack=True)
    v = forward.values(sharded(vspec), ctx, batch, n_micro=3, pack=True)
    if ctx.is_last_stage:
        am = dp_share(batch, dp, ctx.dp_rank)["attention_mask"]
        keep = real_pairs(am).bool()
        mine = dp_share({"input_ids": ref_v, "lp": ref_lp, "v": ref_v}, dp, ctx.dp_rank)
        out["logprobs"] = (lp[keep] - mine["lp"][keep]).abs().max().item()
        out["values"] = (v[am.bool()] - mine["v"][am.bool()]).abs().max().item()
    _, got = _grads(model, ctx, batch, 3, True)
    out["grads"] = max(
        (got[n] - ref_g[sl.source][sl.index()]).abs().max().item()
        for n, sl in model.slices.items()
        if n in got
    )
    return out


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
@pytest.mark.parametrize("tp,pp,dp", [(2, 2, 1), (1, 2, 2), (2, 1, 2)])
def test_packed_layout_matches_padded_single_process(pool, family, tp, pp, dp):
    results = [r for r in pool.run(check_packed, family, tp, pp, dp) if r is not None]
    assert len(results) == tp * pp * dp
    assert sum("logprobs" in r for r in results) == tp * dp
    for r in results:
        assert r.get("logprobs", 0.0) < TOL and r.get("values", 0.0) < TOL, r
        assert r["grads"] < TOL, r


def test_reference_grads_cover_every_parameter():
    """The single-process reference names its gradients by the HF keys the slices use."""
    model = family_model(FAMILIES["mistral"])
    _, g = _grads(model, ParallelContext.single(), varied_batch(4), 1, False)
    assert set(g) == {sl.source for sl in model.slices.values()}
    assert all(torch.isfinite(t).all() for t in g.values())
