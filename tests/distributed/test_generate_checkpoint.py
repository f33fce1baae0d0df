"""Generation, checkpoints, value heads and process groups on 4 gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from executor.compute import forward, train
from executor.compute.generate import GenerationConfig, generate
from executor.model import Transformer
from executor.model.hf_checkpoint import load_checkpoint_, save_checkpoint
from executor.model.hf_config import transformers_model
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.model import preset
from plans.slicing import split_range
from tests.distributed.layouts_util import GPUS_PER_NODE, ODD, SEED, allocation, ragged_batch
from tests.distributed.pool import WorkerPool

pytestmark = pytest.mark.distributed
GEN_LAYOUTS = [(2, 1, 1), (1, 2, 1), (2, 2, 1), (1, 2, 2), (4, 1, 1)]
PAD = 258


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = WorkerPool(4, tmp_path_factory.mktemp("gen"))
    yield p
    p.close()


def _single(spec):
    return random_init_(Transformer(spec), seed=SEED)


def _prompts():
    b = ragged_batch(batch=5, length=7, seed=11)
    return b["input_ids"], b["attention_mask"]


def check_generate(rank, world, tp, pp, dp, cfg: GenerationConfig):
    ctx = ParallelContext.build(allocation(tp, pp, dp), GPUS_PER_NODE)
    if not ctx.in_mesh:
        return None
    model = random_init_(Transformer.for_context(preset("tiny"), ctx), seed=SEED)
    ids, mask = _prompts()
    out = generate(model, ctx, ids, mask, cfg)
    lo, hi = split_range(ids.shape[0], dp, ctx.dp_rank)
    return {
        "rows": (lo, hi),
        "tokens": out.tokens,
        "lengths": out.lengths,
        "logprobs": out.logprobs,
    }


def _assert_same(results, expected: torch.Tensor, lengths: torch.Tensor | None = None):
    results = [r for r in results if r is not None]
    assert results
    for r in results:
        lo, hi = r["rows"]
        n = r["tokens"].shape[1]
        assert torch.equal(r["tokens"], expected[lo:hi, :n]), (r["tokens"], expected[lo:hi])
        # Past the point where this replica stopped, the reference holds only padding.
        assert (expected[lo:hi, n:] == PAD).all()
        if lengths is not None:
            assert torch.equal(r["lengths"], lengths[lo:hi])


@pytest.fixture(scope="module")
def hf_greedy():
    """transformers' greedy generate (one process) with an EOS that some rows hit early."""
    spec = preset("tiny")
    hf = transformers_model(spec, _single(spec).state_dict())
    ids, mask = _prompts()
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD)
    free = hf.generate(ids, eos_token_id=None, **kw)[:, ids.shape[1] :]
    eos = int(free[0, 4])  # row 0 stops after 5 tokens; others may or may not contain it
    with_eos = hf.generate(ids, eos_token_id=eos, **kw)[:, ids.shape[1] :]
    width = 12
    with_eos = torch.nn.functional.pad(with_eos, (0, width - with_eos.shape[1]), value=PAD)
    assert (with_eos == PAD).any(), "the EOS must actually end a sequence"
    return eos, with_eos


@pytest.mark.parametrize("tp,pp,dp", GEN_LAYOUTS)
def test_greedy_matches_transformers(pool, hf_greedy, tp, pp, dp):
    eos, expected = hf_greedy
    cfg = GenerationConfig(max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD)
    _assert_same(pool.run(check_generate, tp, pp, dp, cfg), expected)


def test_sampling_identical_across_layouts(pool):
    cfg = GenerationConfig(
        max_new_tokens=10, greedy=False, temperature=0.9, top_p=0.8, pad_token_id=PAD, seed=123
    )
    ids, mask = _prompts()
    ref = generate(_single(preset("tiny")), ParallelContext.single(), ids, mask, cfg)
    greedy = generate(
        _single(preset("tiny")),
        ParallelContext.single(),
        ids,
        mask,
        GenerationConfig(max_new_tokens=10, pad_token_id=PAD),
    )
    assert not torch.equal(ref.tokens, greedy.tokens)  # sampling really sampled
    for tp, pp, dp in [(2, 2, 1), (1, 1, 2), (2, 1, 2)]:
        results = pool.run(check_generate, tp, pp, dp, cfg)
        _assert_same(results, ref.tokens, ref.lengths)
        for r in results:
            if r is not None:
                lo, hi = r["rows"]
                assert torch.allclose(r["logprobs"], ref.logprobs[lo:hi], atol=1e-5)


def check_checkpoint(rank, world, folder: str, hf_folder: str):
    """Save under tp=2 x pp=2, reload under other layouts; load a transformers folder."""
    spec = preset("tiny")
    ref = _single(spec).state_dict()
    ctx = ParallelContext.build(allocation(2, 2, 1), GPUS_PER_NODE)
    model = random_init_(Transformer.for_context(spec, ctx), seed=SEED)
    written = save_checkpoint(model, ctx, folder)
    dist.barrier()
    out = {"written": written is not None}
    for tp, pp, dp in [(4, 1, 1), (1, 2, 2), (2, 2, 1)]:
        c = ParallelContext.build(allocation(tp, pp, dp), GPUS_PER_NODE)
        if not c.in_mesh:
            continue
        for src in (folder, hf_folder):
            m = load_checkpoint_(Transformer.for_context(spec, c), src)
            params = dict(m.named_parameters(remove_duplicate=False))
            for name, sl in m.slices.items():
                assert torch.equal(params[name], ref[sl.source][sl.index()]), (
                    tp,
                    pp,
                    dp,
                    src,
                    name,
                )
    return out


def test_checkpoint_round_trip_across_layouts(pool, tmp_path):
    spec = preset("tiny")
    hf = transformers_model(spec, _single(spec).state_dict())
    hf.save_pretrained(tmp_path / "hf")
    results = pool.run(check_checkpoint, str(tmp_path / "ours"), str(tmp_path / "hf"))
    assert [r["written"] for r in results] == [True, False, False, False]
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = ragged_batch()["input_ids"]
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, hf(ids).logits, atol=1e-5)
    assert not list(tmp_path.glob(".ours*")), "temporary folders are cleaned up"


def _value_losses():
    """Squared error of per-token values against fixed targets on real tokens (a critic's
    regression loss), summed; normalised by the global count of real tokens."""

    def loss_fn(values, mb):
        return ((values - mb["targets"]).pow(2) * mb["attention_mask"]).sum()

    return loss_fn, lambda b: float(b["attention_mask"].sum())


def _value_batch():
    b = ragged_batch()
    b["targets"] = torch.linspace(-1, 1, b["input_ids"].numel()).view_as(b["input_ids"])
    return b


def _train_values(model, ctx, batch):
    opt = train.make_optimizer(model, train.OptimConfig(lr=1e-3))
    loss_fn, count_fn = _value_losses()
    return [
        train.train_step(model, ctx, opt, batch, loss_fn, count_fn, n_micro=2).loss
        for _ in range(3)
    ]


def check_uneven_save(rank, world, folder: str):
    """Save a model whose tp shards differ in size (vocab 263, MLP 100 over tp=4)."""
    ctx = ParallelContext.build(allocation(4, 1, 1), GPUS_PER_NODE)
    model = random_init_(Transformer.for_context(ODD, ctx), seed=SEED)
    return save_checkpoint(model, ctx, folder) is not None


def test_uneven_shards_save_bitwise(pool, tmp_path):
    assert pool.run(check_uneven_save, str(tmp_path / "odd")) == [True, False, False, False]
    ref = random_init_(Transformer(ODD), seed=SEED).state_dict()
    back = load_checkpoint_(Transformer(ODD), tmp_path / "odd").state_dict()
    assert all(torch.equal(back[k], v) for k, v in ref.items())


def check_values(rank, world, tp, pp, dp):
    """Values, and a critic's three training steps, equal the single-process ones."""
    spec = preset("tiny", head="value")
    ctx = ParallelContext.build(allocation(tp, pp, dp), GPUS_PER_NODE)
    if not ctx.in_mesh:
        return None
    batch = _value_batch()
    single = _single(spec)
    ref = forward.values(single, ParallelContext.single(), batch)
    ref_losses = _train_values(single, ParallelContext.single(), batch)
    model = random_init_(Transformer.for_context(spec, ctx), seed=SEED)
    got = forward.values(model, ctx, batch, 2)
    losses = _train_values(model, ctx, batch)
    full = single.state_dict()
    params = dict(model.named_parameters())
    out = {
        "loss": max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True)),
        "weights": max(
            (params[n] - full[n][sl.index()]).abs().max().item() for n, sl in model.slices.items()
        ),
        "has_score": "score.weight" in model.slices,
    }
    if got is not None:
        lo, hi = split_range(batch["input_ids"].shape[0], dp, ctx.dp_rank)
        out["values"] = (got - ref[lo:hi]).abs().max().item()
    return out


@pytest.mark.parametrize("tp,pp,dp", [(2, 2, 1), (4, 1, 1), (2, 1, 2)])
def test_value_head_layouts(pool, tp, pp, dp):
    res = [r for r in pool.run(check_values, tp, pp, dp) if r is not None]
    assert sum("values" in r for r in res) == tp * dp
    assert sum(r["has_score"] for r in res) == tp * dp
    for r in res:
        assert r.get("values", 0.0) < 1e-5 and r["loss"] < 1e-5 and r["weights"] < 1e-5, r


def check_groups(rank, world):
    """A mesh on ranks 2-3 only (node 0, gpus 2-3): ranks 0-1 are outside but still create
    the groups; inside, each group sums the right ranks."""
    alloc = Allocation(mesh=DeviceMesh(gpu_start=2, n_gpus=2), strategy=ParallelStrategy(tp=2))
    ctx = ParallelContext.build(alloc, GPUS_PER_NODE)
    if not ctx.in_mesh:
        return (ctx.in_mesh, None)
    t = torch.tensor([float(rank)])
    dist.all_reduce(t, group=ctx.tp_group)
    return (ctx.in_mesh, ctx.tp_rank, ctx.tp_ranks, float(t), ctx.dp_group is None)


def test_groups_on_a_sub_mesh(pool):
    res = pool.run(check_groups)
    assert res[0] == (False, None) and res[1] == (False, None)
    assert res[2] == (True, 0, (2, 3), 5.0, True)
    assert res[3] == (True, 1, (2, 3), 5.0, True)
