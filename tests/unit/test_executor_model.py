"""The single-process model against transformers on the same random weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from executor.compute import forward, train
from executor.compute.logprobs import token_logprobs
from executor.data.batching import model_inputs
from executor.model import Transformer
from executor.model.hf_config import transformers_model
from executor.model.rope import inv_frequencies
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans.model import RopeScaling, preset

LLAMA3 = RopeScaling(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)
CTX = ParallelContext.single()


def _pair(spec, seed=1):
    ours = random_init_(Transformer(spec), seed=seed)
    return ours, transformers_model(spec, ours.state_dict())


def _ids(b=3, t=40, seed=0):
    return torch.randint(0, 264, (b, t), generator=torch.Generator().manual_seed(seed))


def _positions(ids):
    return torch.arange(ids.shape[1]).expand(ids.shape[0], -1)


@pytest.mark.parametrize("name", ["tiny-mha", "tiny"])
@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers(name, tied):
    spec = preset(name).model_copy(update={"tie_word_embeddings": tied})
    ours, hf = _pair(spec)
    ids = _ids()
    with torch.no_grad():
        diff = (ours(ids, _positions(ids)) - hf(ids).logits).abs().max()
    assert diff < 1e-4


def test_llama3_rope_scaling_matches_and_matters():
    spec = preset("tiny").model_copy(update={"rope_scaling": LLAMA3, "rope_theta": 500000.0})
    plain = preset("tiny").model_copy(update={"rope_theta": 500000.0})
    assert not torch.allclose(inv_frequencies(spec), inv_frequencies(plain))
    ours, hf = _pair(spec)
    ids = _ids(t=120)  # well past original_max_position_embeddings
    with torch.no_grad():
        got = ours(ids, _positions(ids))
        assert (got - hf(ids).logits).abs().max() < 1e-4
        unscaled = transformers_model(plain, ours.state_dict())(ids).logits
    assert (got - unscaled).abs().max() > 1e-3


def test_padded_batch_matches_transformers_on_real_tokens():
    spec = preset("tiny")
    ours, hf = _pair(spec)
    ids = _ids(4, 16)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask[3, :11] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    got = forward.logits(ours, CTX, batch, n_micro=3)
    with torch.no_grad():
        pos, _ = model_inputs(batch)
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    assert (got - ref)[real].abs().max() < 1e-4
    assert torch.isfinite(got).all()


def test_value_head_matches_sequence_classification():
    spec = preset("tiny", head="value")
    ours, hf = _pair(spec)
    ids = _ids()
    got = forward.values(ours, CTX, {"input_ids": ids})
    with torch.no_grad():
        per_token = hf.score(hf.model(ids).last_hidden_state).squeeze(-1)
        pooled = hf(ids).logits.squeeze(-1)  # no pad token in ids: the last position
    assert (got - per_token).abs().max() < 1e-5
    assert (got[:, -1] - pooled).abs().max() < 1e-5


def test_logprobs_equal_log_softmax_per_micro_batch():
    spec = preset("tiny")
    ours, _ = _pair(spec)
    ids = _ids(5, 12)
    got = forward.logprobs(ours, CTX, {"input_ids": ids}, n_micro=2)
    with torch.no_grad():
        ref = F.log_softmax(ours(ids, _positions(ids)), -1)[:, :-1]
    ref = ref.gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert got.shape == (5, 11) and (got - ref).abs().max() < 1e-5


def test_vocab_parallel_logprobs_gradient():
    logits = torch.randn(2, 3, 10, requires_grad=True)
    targets = torch.randint(0, 10, (2, 3))
    token_logprobs(logits, targets, 0, None).sum().backward()
    ref = logits.detach().clone().requires_grad_(True)
    F.log_softmax(ref, -1).gather(-1, targets[..., None]).sum().backward()
    assert torch.allclose(logits.grad, ref.grad, atol=1e-6)


def test_training_matches_transformers_adamw():
    """Three steps of our train_step (2 micro-batches, clipping) against a plain transformers
    loop with torch's AdamW and clip_grad_norm_ on the whole batch."""
    spec = preset("tiny")
    ours, hf = _pair(spec)
    hf.train()
    ids = _ids(4, 24)
    opt = train.make_optimizer(ours, train.OptimConfig(lr=1e-3))
    hopt = torch.optim.AdamW(
        hf.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0
    )
    loss_fn, count_fn = train.next_token_loss(ours, CTX)
    for _ in range(3):
        stats = train.train_step(
            ours, CTX, opt, {"input_ids": ids}, loss_fn, count_fn, n_micro=2, max_grad_norm=1.0
        )
        hopt.zero_grad()
        out = hf(ids, labels=ids)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hopt.step()
        assert abs(stats.loss - out.loss.item()) < 1e-4
        assert abs(stats.grad_norm - norm.item()) < 1e-3 * norm.item()
    ref = hf.state_dict()
    assert max((v - ref[k]).abs().max().item() for k, v in ours.state_dict().items()) < 1e-4


def test_micro_batching_does_not_change_the_step():
    """1 micro-batch, 2 uneven ones, or more micro-batches than samples (empty ones are
    dropped) give the same loss and weights: the loss is normalised over the whole batch."""
    spec = preset("tiny")
    ids = _ids(3, 10)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    results = []
    for n_micro in (1, 2, 8):
        model = random_init_(Transformer(spec), seed=2)
        opt = train.make_optimizer(model, train.OptimConfig(lr=1e-3))
        loss_fn, count_fn = train.next_token_loss(model, CTX)
        stats = train.train_step(model, CTX, opt, batch, loss_fn, count_fn, n_micro=n_micro)
        results.append((stats, model.state_dict()))
    (s0, w0), rest = results[0], results[1:]
    for s, w in rest:
        assert abs(s.loss - s0.loss) < 1e-6 and abs(s.grad_norm - s0.grad_norm) < 1e-5
        # Adam divides by |g|: summation-order noise on near-zero gradients shows up at ~lr*1e-3.
        assert max((w[k] - w0[k]).abs().max().item() for k in w0) < 1e-5
