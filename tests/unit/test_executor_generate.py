"""Single-process generation against transformers, and the sampling rule."""

from __future__ import annotations

import pytest
import torch

from executor.compute.generate import GenerationConfig, generate
from executor.compute.sampling import choose, top_p_pick
from executor.data.tokenizer import ByteTokenizer, left_pad
from executor.model import Transformer
from executor.model.hf_config import transformers_model
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans.model import preset

CTX = ParallelContext.single()
TOK = ByteTokenizer()


def _model(name="tiny"):
    m = random_init_(Transformer(preset(name)), seed=5)
    return m, transformers_model(preset(name), m.state_dict())


def _prompts():
    texts = ["hello world", "a", "the quick brown fox", "xyz"]
    return left_pad([TOK.encode(t) for t in texts], TOK.pad_token_id)


def test_greedy_equals_transformers_with_ragged_prompts_and_eos():
    ours, hf = _model()
    ids, mask = _prompts()
    kw = dict(
        attention_mask=mask, max_new_tokens=16, do_sample=False, pad_token_id=TOK.pad_token_id
    )
    free = hf.generate(ids, eos_token_id=None, **kw)[:, ids.shape[1] :]
    out = generate(ours, CTX, ids, mask, GenerationConfig(16, pad_token_id=TOK.pad_token_id))
    assert torch.equal(out.tokens, free)
    assert out.lengths.tolist() == [16] * 4

    eos = int(free[1, 3])
    ref = hf.generate(ids, eos_token_id=eos, **kw)[:, ids.shape[1] :]
    cfg = GenerationConfig(16, eos_token_id=eos, pad_token_id=TOK.pad_token_id)
    out = generate(ours, CTX, ids, mask, cfg)
    assert torch.equal(out.tokens[:, : ref.shape[1]], ref)
    first_eos = (free == eos).int().argmax(-1)
    for i in range(4):
        n = int(first_eos[i]) + 1 if (free[i] == eos).any() else 16
        assert out.lengths[i] == n
        assert (out.tokens[i, n:] == TOK.pad_token_id).all()
        assert (out.logprobs[i, n:] == 0).all() and (out.logprobs[i, :n] < 0).all()


def test_fused_and_plain_weights_generate_the_same():
    ours, _ = _model()
    ids, mask = _prompts()
    runs = [
        generate(
            ours,
            CTX,
            ids,
            mask,
            GenerationConfig(10, pad_token_id=TOK.pad_token_id, fuse_weights=f),
        )
        for f in (True, False)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.allclose(runs[0].logprobs, runs[1].logprobs, atol=1e-5)
    blk = next(iter(ours.model.layers.values()))
    assert blk.self_attn.fused_qkv is None and blk.mlp.fused_gate_up is None  # released


def test_stops_when_every_sequence_ended():
    ours, _ = _model()
    ids, mask = _prompts()
    first = generate(
        ours, CTX, ids[:1], mask[:1], GenerationConfig(8, pad_token_id=TOK.pad_token_id)
    )
    eos = int(first.tokens[0, 1])
    cfg = GenerationConfig(8, eos_token_id=eos, pad_token_id=TOK.pad_token_id)
    out = generate(ours, CTX, ids[:1], mask[:1], cfg)
    assert out.tokens.shape == (1, 2) and out.lengths.tolist() == [2]


def test_greedy_logprobs_match_a_full_forward():
    ours, _ = _model()
    ids = torch.tensor([TOK.encode("abcdef")])
    out = generate(ours, CTX, ids, None, GenerationConfig(5, pad_token_id=TOK.pad_token_id))
    seq = torch.cat([ids, out.tokens], 1)
    with torch.no_grad():
        lp = torch.log_softmax(ours(seq, torch.arange(seq.shape[1])[None]), -1)
    ref = lp[0, ids.shape[1] - 1 : -1].gather(-1, out.tokens[0, :, None]).squeeze(-1)
    assert torch.allclose(out.logprobs[0], ref, atol=1e-5)


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    ours, _ = _model()
    ids, mask = _prompts()

    def run(seed):
        cfg = GenerationConfig(
            12, greedy=False, temperature=1.3, top_p=0.95, seed=seed, pad_token_id=TOK.pad_token_id
        )
        return generate(ours, CTX, ids, mask, cfg).tokens

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize(
    "bad", [dict(max_new_tokens=0), dict(greedy=False, temperature=0.0), dict(top_p=0.0)]
)
def test_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        GenerationConfig(**{"max_new_tokens": 4, **bad})


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    picks = {
        int(top_p_pick(probs, torch.tensor([u]), 0.7))
        for u in torch.linspace(0, 0.999, 200).tolist()
    }
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.7 first
    assert int(top_p_pick(probs, torch.tensor([0.99]), 1e-6)) == 0  # tiny top_p is greedy
    # Inverse CDF over the whole vocabulary without truncation.
    assert int(top_p_pick(probs, torch.tensor([0.97]), 1.0)) == 3


def test_sampling_frequencies_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).expand(20000, -1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    tok, _ = choose(logits, greedy=False, temperature=1.0, top_p=1.0, u=u)
    freq = torch.bincount(tok, minlength=3).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.02)
