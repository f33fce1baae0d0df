"""Each family (tests.families) under tp 2, pp 2 and dp 2 on 2 gloo ranks computes what one
process computes: logits, log-probs, three AdamW steps and greedy generation; its weights
move between layouts bitwise."""

from __future__ import annotations

import functools

import pytest
import torch

from executor.compute import forward, train
from executor.compute.generate import GenerationConfig, generate
from executor.data.batching import dp_share
from executor.model import Transformer
from executor.model.hf_checkpoint import load_checkpoint_, save_checkpoint
from executor.parallel.context import ParallelContext
from executor.realloc.model_shards import adopt_shards_, model_shards
from executor.realloc.move import reallocate
from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.slicing import split_range
from plans.transfer import plan_params
from tests.distributed.pool import WorkerPool
from tests.families import FAMILIES, family_model, family_state, token_batch

pytestmark = pytest.mark.distributed
WORLD = 2
TOL = 1e-5
STEPS = 3
LAYOUTS = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]  # (tp, pp, dp)
NAMES = sorted(FAMILIES)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(WORLD, tmp_path_factory.mktemp("families"))
    yield p
    p.close()


def _alloc(tp: int, pp: int, dp: int) -> Allocation:
    return Allocation(
        mesh=DeviceMesh(n_gpus=tp * pp * dp),
        strategy=ParallelStrategy(tp=tp, pp=pp, dp=dp, micro_batches=2),
    )


def _batch() -> dict[str, torch.Tensor]:
    """Left-padded rows of 20 tokens: longer than Mistral's window of 8."""
    ids = token_batch(4, 20, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[3, :7] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 258), "attention_mask": mask}


def _prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = token_batch(4, 6, seed=6)
    mask = torch.ones_like(ids)
    mask[2, :2] = 0
    return ids.masked_fill(mask == 0, 258), mask


GEN = GenerationConfig(max_new_tokens=14, greedy=True, pad_token_id=258)
# Adam's eps at 1e-6: k_proj biases get gradients near rounding level (a key bias shifts a
# query's scores almost uniformly, which softmax ignores), and with eps 1e-8 Adam turns that
# rounding noise into steps of up to lr, comparing noise rather than layouts.
OPTIM = train.OptimConfig(lr=1e-3, eps=1e-6)


@functools.cache
def _reference(name: str):
    spec = FAMILIES[name]
    ctx = ParallelContext.single()
    model = family_model(spec)
    batch = _batch()
    logits = forward.logits(model, ctx, batch)
    tokens = generate(model, ctx, *_prompts(), GEN).tokens
    opt = train.make_optimizer(model, OPTIM)
    loss_fn, count_fn = train.next_token_loss(model, ctx)
    losses = [
        train.train_step(model, ctx, opt, batch, loss_fn, count_fn, n_micro=1).loss
        for _ in range(STEPS)
    ]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return logits, tokens, losses, state


def _layout_model(spec, ctx: ParallelContext) -> Transformer:
    return family_model(
        spec,
        tp=ctx.tp_size,
        tp_rank=ctx.tp_rank,
        pp=ctx.pp_size,
        pp_rank=ctx.pp_rank,
        tp_group=ctx.tp_group,
    )


def check_family_layout(rank: int, world: int, name: str, tp: int, pp: int, dp: int) -> dict:
    spec = FAMILIES[name]
    ctx = ParallelContext.build(_alloc(tp, pp, dp), WORLD)
    ref_logits, ref_tokens, ref_losses, ref_state = _reference(name)
    model = _layout_model(spec, ctx)
    batch = _batch()
    out: dict = {}
    logits = forward.logits(model, ctx, batch, n_micro=2)
    if ctx.is_last_stage:
        mine = dp_share({"input_ids": ref_logits}, dp, ctx.dp_rank)["input_ids"]
        real = dp_share(batch, dp, ctx.dp_rank)["attention_mask"].bool()
        out["logits"] = (logits - mine)[real].abs().max().item()
    tokens = generate(model, ctx, *_prompts(), GEN).tokens
    lo, hi = split_range(4, dp, ctx.dp_rank)
    out["tokens"] = torch.equal(tokens, ref_tokens[lo:hi])
    opt = train.make_optimizer(model, OPTIM)
    loss_fn, count_fn = train.next_token_loss(model, ctx)
    losses = [
        train.train_step(model, ctx, opt, batch, loss_fn, count_fn, n_micro=2).loss
        for _ in range(STEPS)
    ]
    out["loss"] = max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True))
    params = dict(model.named_parameters(remove_duplicate=False))
    out["weights"] = max(
        (params[n] - ref_state[sl.source][sl.index()]).abs().max().item()
        for n, sl in model.slices.items()
    )
    init = family_state(spec)
    out["moved"] = min(
        (params[n] - init[sl.source][sl.index()]).abs().max().item()
        for n, sl in model.slices.items()
    )
    return out


def check_family_move(rank: int, world: int, name: str, src: tuple, dst: tuple) -> dict:
    """Weights built in layout `src`, reallocated to `dst` and adopted by a model built there,
    are bitwise the slices of the full state dict."""
    spec = FAMILIES[name]
    a, b = _alloc(*src), _alloc(*dst)
    ctx_a, ctx_b = ParallelContext.build(a, WORLD), ParallelContext.build(b, WORLD)
    shards = model_shards(_layout_model(spec, ctx_a))
    moved = reallocate(plan_params(a, b, spec, WORLD), shards, torch.float32)
    model = adopt_shards_(
        Transformer(
            spec, ctx_b.tp_size, ctx_b.tp_rank, ctx_b.pp_size, ctx_b.pp_rank, ctx_b.tp_group
        ),
        moved,
    )
    full = family_state(spec)
    params = dict(model.named_parameters(remove_duplicate=False))
    return {
        "names": len(model.slices),
        "equal": all(
            torch.equal(params[n], full[sl.source][sl.index()]) for n, sl in model.slices.items()
        ),
    }


def check_family_save_load(rank: int, world: int, name: str, tp: int, pp: int, folder: str):
    """Saved from layout (tp, pp): the folder holds the full tensors; loaded back into the
    same layout, every rank's slices are bitwise what it saved."""
    spec = FAMILIES[name]
    ctx = ParallelContext.build(_alloc(tp, pp, 1), WORLD)
    model = _layout_model(spec, ctx)
    save_checkpoint(model, ctx, folder)
    torch.distributed.barrier()
    back = load_checkpoint_(
        Transformer(spec, ctx.tp_size, ctx.tp_rank, ctx.pp_size, ctx.pp_rank, ctx.tp_group),
        folder,
    )
    theirs = dict(back.named_parameters(remove_duplicate=False))
    return all(torch.equal(p, theirs[n]) for n, p in model.named_parameters(remove_duplicate=False))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_family_checkpoint_from_a_layout(pool, tmp_path, name, tp, pp):
    assert all(pool.run(check_family_save_load, name, tp, pp, str(tmp_path / "ck")))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "ck" / "model.safetensors"))
    full = family_state(FAMILIES[name])
    assert sorted(saved) == sorted(full)
    assert all(torch.equal(saved[k], full[k]) for k in full)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("tp,pp,dp", LAYOUTS)
def test_family_layout_matches_single_process(pool, name, tp, pp, dp):
    results = pool.run(check_family_layout, name, tp, pp, dp)
    assert sum("logits" in r for r in results) == tp * dp  # one per last-stage rank
    for r in results:
        assert r.get("logits", 0.0) < TOL, r
        assert r["tokens"], r
        assert r["loss"] < TOL and r["weights"] < TOL, r
        assert r["moved"] > 0, r  # every parameter trained, biases and q/k norms included


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("src,dst", [((2, 1, 1), (1, 2, 1)), ((1, 2, 1), (1, 1, 2))])
def test_family_reallocation_is_bitwise(pool, name, src, dst):
    for r in pool.run(check_family_move, name, src, dst):
        assert r["names"] > 0 and r["equal"], r
