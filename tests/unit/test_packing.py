"""Packed sequences (plans.packing, executor.data.packing) against the padded computation:
log-probs, values and gradients on one process, with left-padded prompts, right-padded
responses of varied lengths and a Mistral sliding window narrower than the rows."""

from __future__ import annotations

import pytest
import torch

from executor.compute import forward, train
from executor.compute.logprobs import next_token_logprobs
from executor.data.packing import row_spans, stage_inputs
from executor.parallel.context import ParallelContext
from plans import PlanError, experiment_from_dict, load_experiment
from plans.packing import expected_shape, pack_rows, token_cuts
from tests.families import FAMILIES, family_model

P, G = 6, 10


def varied_batch(b: int = 7, seed: int = 1, vocab: int = 256) -> dict[str, torch.Tensor]:
    """Prompts left-padded to P (1..P real tokens), responses right-padded to G (1..G real);
    the last row has no padding at all."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, P + G), generator=g)
    am = torch.zeros(b, P + G, dtype=torch.long)
    for i in range(b):
        p = P if i == b - 1 else int(torch.randint(1, P + 1, (1,), generator=g))
        r = G if i == b - 1 else int(torch.randint(1, G + 1, (1,), generator=g))
        am[i, P - p : P + r] = 1
    return {"input_ids": ids.masked_fill(am == 0, vocab - 1), "attention_mask": am}


def real_pairs(am: torch.Tensor) -> torch.Tensor:
    """[B, T-1]: both the predicting and the predicted token are real."""
    return am[:, :-1] * am[:, 1:]


def test_token_cuts_balance_tokens_and_keep_groups():
    lengths = [10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert token_cuts(lengths, 2) == [(0, 1), (1, 11)]
    assert token_cuts([3, 3, 3, 3], 2, unit=2) == [(0, 2), (2, 4)]
    assert token_cuts([9, 9, 1, 1], 2, unit=2) == [(0, 2), (2, 4)]
    # More parts than groups: empty pieces dropped, every row covered once.
    cuts = token_cuts([5, 5], 4)
    assert [r for a, z in cuts for r in range(a, z)] == [0, 1]
    with pytest.raises(ValueError):
        token_cuts([1, 2, 3], 2, unit=2)


def _work(lengths, rows):
    width = max(sum(lengths[i] for i in r) for r in rows)
    return len(rows) * width, len(rows) * width * width


def test_pack_rows_even_rows_no_more_work_than_padded():
    lengths = [5, 3, 8, 2, 4]
    rows = pack_rows(lengths, capacity=8)
    assert rows == [[2, 1], [0, 4, 3]]  # 2 rows of 11: 22 slots for 22 tokens
    assert pack_rows([8, 8], 8) == [[0], [1]]  # nothing to gain
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(1, 40, (1,), generator=g))
        lengths = torch.randint(1, 81, (n,), generator=g).tolist()
        rows = pack_rows(lengths, 80)
        assert sorted(i for r in rows for i in r) == list(range(n))
        slots, pairs = _work(lengths, rows)
        assert slots <= n * 80 and pairs <= n * 80 * 80
        assert slots <= _work(lengths, [[i] for i in range(n)])[0]
    with pytest.raises(ValueError):
        pack_rows([9], capacity=8)


def test_expected_shape():
    assert expected_shape(16, 40.0, 80) == (8, 80)
    assert expected_shape(16, 80.0, 80) == (16, 80)  # nothing to pack: the padded shape
    assert expected_shape(1, 30.0, 80) == (1, 30)
    assert expected_shape(3, 50.0, 80) == (2, 75)


def test_packed_micro_batches_do_less_work():
    batch = varied_batch(12)
    t = batch["input_ids"].shape[1]
    for inp in stage_inputs(batch, 2, pack=True):
        b = inp.mb["input_ids"].shape[0]
        r, w = inp.ids.shape
        assert r * w < b * t and r * w * w <= b * t * t
    assert [k for _, k in row_spans(batch)] == batch["attention_mask"].sum(1).tolist()


def test_holes_are_refused():
    batch = varied_batch(3)
    batch["attention_mask"][0] = 1
    batch["attention_mask"][0, 3] = 0
    with pytest.raises(ValueError, match="contiguous"):
        stage_inputs(batch, 1, pack=True)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
@pytest.mark.parametrize("n_micro", [1, 3])
def test_packed_inference_equals_padded(family, n_micro):
    spec = FAMILIES[family]
    model = family_model(spec)
    ctx = ParallelContext.single()
    batch = varied_batch(7, seed=2)
    am = batch["attention_mask"]
    ref = forward.logprobs(model, ctx, batch, n_micro)
    got = forward.logprobs(model, ctx, batch, n_micro, pack=True)
    keep = real_pairs(am).bool()
    assert torch.allclose(got[keep], ref[keep], atol=1e-5, rtol=0)
    assert (got[~am[:, :-1].bool()] == 0).all()  # pads read as zeros, never stale memory
    vspec = spec.model_copy(update={"head": "value", "tie_word_embeddings": False})
    vmodel = family_model(vspec)
    vref = forward.values(vmodel, ctx, batch, n_micro)
    vgot = forward.values(vmodel, ctx, batch, n_micro, pack=True)
    assert torch.allclose(vgot[am.bool()], vref[am.bool()], atol=1e-5, rtol=0)
    full = forward.logits(model, ctx, batch, n_micro, pack=True)
    assert torch.allclose(full[am.bool()], forward.logits(model, ctx, batch)[am.bool()], atol=1e-5)


class _Hold:
    """An optimizer that leaves the weights (and their gradients) as the step made them."""

    def zero_grad(self, set_to_none: bool = False) -> None:
        pass

    def step(self) -> None:
        pass


def _grads(model, ctx, batch, n_micro, pack, unit=1):
    for p in model.parameters():
        p.grad = None

    def loss_fn(logits, mb):
        lp = next_token_logprobs(logits, mb["input_ids"], model.vocab_rows[0], ctx.tp_group)
        return -(lp * real_pairs(mb["attention_mask"])).sum()

    def count_fn(b):
        return float(real_pairs(b["attention_mask"]).sum())

    stats = train.train_step(
        model, ctx, _Hold(), batch, loss_fn, count_fn, n_micro, None, unit=unit, pack=pack
    )
    return stats, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["llama-bias", "mistral"])
@pytest.mark.parametrize(("n_micro", "unit"), [(1, 1), (3, 1), (2, 2)])
def test_packed_gradients_equal_padded(family, n_micro, unit):
    model = family_model(FAMILIES[family])
    ctx = ParallelContext.single()
    batch = varied_batch(8, seed=3)
    s_ref, g_ref = _grads(model, ctx, batch, n_micro, False, unit)
    s_got, g_got = _grads(model, ctx, batch, n_micro, True, unit)
    assert abs(s_got.loss - s_ref.loss) < 1e-5
    assert abs(s_got.grad_norm - s_ref.grad_norm) < 1e-5
    for k, g in g_ref.items():
        assert torch.allclose(g_got[k], g, atol=1e-5, rtol=0), k


def test_packed_gradients_with_recompute():
    """Activation checkpointing runs each block again in backward, with the packed mask."""
    model = family_model(FAMILIES["mistral"])
    ctx = ParallelContext.single()
    batch = varied_batch(6, seed=4)
    _, g_ref = _grads(model, ctx, batch, 2, False)
    model.recompute = True
    _, g_got = _grads(model, ctx, batch, 2, True)
    for k, g in g_ref.items():
        assert torch.allclose(g_got[k], g, atol=1e-5, rtol=0), k


def test_packing_is_an_experiment_section():
    exp = load_experiment("ppo-tiny")
    assert exp.packing is None
    doc = exp.model_dump(mode="json")
    packed = experiment_from_dict({**doc, "packing": {"expected_response_len": 12}})
    assert packed.packing.expected_response_len == 12
    with pytest.raises(PlanError, match="packing.expected_response_len"):
        experiment_from_dict({**doc, "packing": {"expected_response_len": exp.gen_len + 1}})
