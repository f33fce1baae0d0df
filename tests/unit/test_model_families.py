"""Llama (biases, llama3 RoPE), Qwen2, Qwen3 and Mistral against transformers, one process:
logits, padded batches, greedy generation token for token, training steps, and Hugging Face
folders both ways (bitwise)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from executor.compute import forward, train
from executor.compute.generate import GenerationConfig, generate
from executor.data.batching import model_inputs
from executor.model import Transformer
from executor.model.hf_checkpoint import load_checkpoint_, save_checkpoint
from executor.model.hf_config import spec_from_folder, transformers_model
from executor.parallel.context import ParallelContext
from plans.model import RopeScaling
from tests.families import FAMILIES, family_model, family_state, token_batch

CTX = ParallelContext.single()
NAMES = sorted(FAMILIES)


def _pair(name: str, seed: int = 0):
    spec = FAMILIES[name]
    return family_model(spec, seed), transformers_model(spec, family_state(spec, seed))


def _pos(ids):
    return torch.arange(ids.shape[1]).expand(ids.shape[0], -1)


def _padded(b=4, t=24, seed=1):
    ids = token_batch(b, t, seed)
    mask = torch.ones_like(ids)
    for i in range(b):
        mask[i, : (i * 5) % 11] = 0
    return ids.masked_fill(mask == 0, 258), mask


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
    ours, hf = _pair(name)
    ids = token_batch(3, 40)  # 40 tokens: well past Mistral's window of 8
    with torch.no_grad():
        assert (ours(ids, _pos(ids)) - hf(ids).logits).abs().max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_matches_transformers_on_real_tokens(name):
    ours, hf = _pair(name)
    ids, mask = _padded()
    got = forward.logits(ours, CTX, {"input_ids": ids, "attention_mask": mask}, n_micro=2)
    with torch.no_grad():
        pos, _ = model_inputs({"input_ids": ids, "attention_mask": mask})
        ref = hf(ids, attention_mask=mask, position_ids=pos).logits
    assert (got - ref)[mask.bool()].abs().max() < 1e-4
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("padded", [False, True])
def test_greedy_generation_matches_transformers(name, padded):
    """18 new tokens after 6-token prompts: Mistral's KV-cache decode runs 16 steps past
    its window."""
    ours, hf = _pair(name)
    ids = token_batch(3, 6, seed=2)
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :2] = 0
        mask[2, :4] = 0
        ids = ids.masked_fill(mask == 0, 258)
    cfg = GenerationConfig(max_new_tokens=18, greedy=True, pad_token_id=258)
    out = generate(ours, CTX, ids, mask if padded else None, cfg)
    with torch.no_grad():
        ref = hf.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=18,
            do_sample=False,
            pad_token_id=258,
            eos_token_id=None,
        )[:, ids.shape[1] :]
    assert torch.equal(out.tokens, ref)


@pytest.mark.parametrize("name", NAMES)
def test_training_matches_transformers_adamw(name):
    """Two steps of our train_step against transformers with torch's AdamW: the gradients of
    biases and q/k norms and the windowed attention's backward."""
    ours, hf = _pair(name)
    hf.train()
    ids = token_batch(3, 20, seed=3)
    # Adam's eps at 1e-6: a gradient element within rounding of zero (there is one in
    # Mistral's o_proj here, equal to 5e-8 in both) would otherwise take a first step of any
    # size up to lr on either side, comparing rounding noise rather than the models.
    opt = train.make_optimizer(ours, train.OptimConfig(lr=1e-3, eps=1e-6))
    hopt = torch.optim.AdamW(hf.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0)
    loss_fn, count_fn = train.next_token_loss(ours, CTX)
    for _ in range(2):
        stats = train.train_step(ours, CTX, opt, {"input_ids": ids}, loss_fn, count_fn, n_micro=2)
        hopt.zero_grad()
        out = hf(ids, labels=ids)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hopt.step()
        assert abs(stats.loss - out.loss.item()) < 1e-4
        assert abs(stats.grad_norm - norm.item()) < 1e-3 * norm.item()
    ref = hf.state_dict()
    assert max((v - ref[k]).abs().max().item() for k, v in ours.state_dict().items()) < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_hf_folders_both_ways(tmp_path, name):
    """Ours -> folder -> ours is bitwise, and transformers reads it as its own family;
    transformers' save_pretrained -> ours is bitwise too."""
    spec = FAMILIES[name]
    ours = family_model(spec, seed=4)
    save_checkpoint(ours, CTX, tmp_path / "ours")
    back_spec = spec_from_folder(tmp_path / "ours")
    assert back_spec == spec.model_copy(
        update={"checkpoint": str(tmp_path / "ours"), "name": "ours"}
    )
    back = load_checkpoint_(Transformer(back_spec), tmp_path / "ours")
    for (k, a), (k2, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert hf.config.model_type == spec.architecture
    ids = token_batch(2, 30)
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids, _pos(ids))).abs().max() < 1e-4
    hf.save_pretrained(tmp_path / "theirs")
    theirs = load_checkpoint_(
        Transformer(spec_from_folder(tmp_path / "theirs")), tmp_path / "theirs"
    )
    for k, v in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[k], v), k


@pytest.mark.parametrize("name", ["qwen2", "qwen3"])
def test_value_head_matches_sequence_classification(tmp_path, name):
    spec = FAMILIES[name].model_copy(update={"head": "value"})
    ours = family_model(spec, seed=5)
    save_checkpoint(ours, CTX, tmp_path / "rm")
    assert spec_from_folder(tmp_path / "rm").head == "value"
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids = token_batch(2, 12)
    with torch.no_grad():
        ref = hf.score(hf.model(ids).last_hidden_state).squeeze(-1)
        assert (ref - ours(ids, _pos(ids))).abs().max() < 1e-5


def test_sliding_window_bites_only_past_the_window():
    """Mistral's window of 8: the first 8 positions equal plain causal attention, later ones
    do not (so the comparison with transformers above tests the window)."""
    spec = FAMILIES["mistral"]
    plain = spec.model_copy(update={"sliding_window": None})
    ids = token_batch(2, 24)
    with torch.no_grad():
        a = family_model(spec)(ids, _pos(ids))
        b = family_model(plain)(ids, _pos(ids))
    assert torch.equal(a[:, :8], b[:, :8])
    assert (a[:, 8:] - b[:, 8:]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize(
    "scaling",
    [
        RopeScaling(rope_type="linear", factor=2.0),
        RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=32),
        RopeScaling(
            rope_type="yarn",
            factor=4.0,
            original_max_position_embeddings=32,
            beta_fast=16.0,
            mscale=1.0,
            mscale_all_dim=0.5,
            truncate=False,
        ),
    ],
)
def test_rope_scalings_match_transformers(scaling):
    spec = FAMILIES["qwen3"].model_copy(update={"rope_scaling": scaling})
    ours = family_model(spec)
    hf = transformers_model(spec, family_state(spec))
    plain = family_model(FAMILIES["qwen3"])
    ids = token_batch(2, 100)
    with torch.no_grad():
        got = ours(ids, _pos(ids))
        assert (got - hf(ids).logits).abs().max() < 1e-4
        assert (got - plain(ids, _pos(ids))).abs().max() > 1e-3
