"""FLOP counting against an explicit sum over the matmuls of one forward pass."""

from __future__ import annotations

import pytest

from plans import preset


def _explicit_forward_flops(spec, batch: int, seq: int) -> float:
    h, i, d = spec.hidden_size, spec.intermediate_size, spec.head_dim
    qh, kvh = spec.num_attention_heads, spec.num_key_value_heads
    tokens = batch * seq
    per_layer = 0.0
    for out_features in (qh * d, kvh * d, kvh * d, h):  # q, k, v, o projections
        per_layer += 2 * tokens * h * out_features
    per_layer += 3 * 2 * tokens * h * i  # gate, up, down
    # Causal attention: query t attends to t+1 keys; QK^T and AV each 2*d FLOPs per (query, key, head).
    attended = batch * sum(t + 1 for t in range(seq))
    per_layer += 2 * (2 * d * qh) * attended
    head_out = spec.vocab_size if spec.head == "lm" else 1
    return spec.num_hidden_layers * per_layer + 2 * tokens * h * head_out


@pytest.mark.parametrize("name", ["tiny", "llama2-70b", "llama3-8b"])
@pytest.mark.parametrize("head", ["lm", "value"])
def test_forward_flops_match_explicit_sum(name, head):
    spec = preset(name, head)
    for batch, seq in [(1, 1), (3, 17), (2, 128)]:
        assert spec.sequence_forward_flops(batch, seq) == pytest.approx(
            _explicit_forward_flops(spec, batch, seq)
        )


def test_training_is_three_forwards_and_attention_grows_with_length():
    spec = preset("llama2-7b")
    assert spec.train_flops(4, 512) == pytest.approx(3 * spec.sequence_forward_flops(4, 512))
    per_token_short = spec.sequence_forward_flops(1, 128) / 128
    per_token_long = spec.sequence_forward_flops(1, 4096) / 4096
    assert per_token_long > per_token_short
    # A decode step with a long cache costs more than one with a short cache.
    assert spec.forward_flops(8, 2048 + 1) > spec.forward_flops(8, 16 + 1)
