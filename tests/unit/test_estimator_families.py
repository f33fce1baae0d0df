"""The estimator's parameter counts and FLOPs for the families' additions (biases, q/k norms,
free head_dim, sliding window) against the layout table the executor builds from."""

from __future__ import annotations

import math

import pytest

from estimator.memory import stage_params
from plans import preset
from plans.layout import param_slices
from tests.families import FAMILIES

SPECS = {
    **FAMILIES,
    "qwen2.5-7b": preset("qwen2.5-7b"),
    "qwen3-8b": preset("qwen3-8b"),
    "mistral-7b": preset("mistral-7b"),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (4, 2), (1, 3)])
def test_stage_params_are_what_each_rank_holds(name, tp, pp):
    """Memory estimates count what the layout table gives a rank: tp-split rows and their
    biases, replicated norms (q/k norms too) and o/down biases. (Vocabulary rows split
    unevenly by one at most, hence the tolerance of a row per stage.)"""
    spec = SPECS[name]
    if spec.num_key_value_heads % tp and tp % spec.num_key_value_heads:
        pytest.skip("tp does not fit the kv heads")
    for stage, est in enumerate(stage_params(spec, tp, pp)):
        held = [
            sum(math.prod(sl.shape) for sl in param_slices(spec, tp, r, pp, stage))
            for r in range(tp)
        ]
        if spec.num_key_value_heads < tp:  # replicated kv heads: a rank holds more than 1/tp
            continue
        assert abs(est - max(held)) <= 2 * spec.hidden_size, (stage, est, held)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_num_params_is_the_layout_table(name):
    spec = SPECS[name]
    table = sum(math.prod(sl.full_shape) for sl in param_slices(spec, 1, 0, 1, 0))
    assert spec.num_params() == table


def test_qwen3_flops_use_the_head_width_not_hidden():
    """Qwen3-8B: 32 heads of 128 = 4096 = hidden; Qwen3-0.6B: 16 x 128 = 2048 = 2 x hidden,
    so q, o and attention are twice what hidden_size alone would say."""
    spec = preset("qwen3-0.6b")
    h, q, kv = spec.hidden_size, 16 * 128, 8 * 128
    seq = 64
    per_layer = 2 * seq * (h * q + 2 * h * kv + q * h + 3 * h * spec.intermediate_size)
    per_layer += 2 * 2 * q * sum(t + 1 for t in range(seq))
    want = spec.num_hidden_layers * per_layer + 2 * seq * h * spec.vocab_size
    assert spec.sequence_forward_flops(1, seq) == pytest.approx(want)


def test_sliding_window_caps_attended_keys():
    spec = preset("mistral-7b")  # window 4096
    plain = spec.model_copy(update={"sliding_window": None})
    assert spec.sequence_forward_flops(2, 4096) == plain.sequence_forward_flops(2, 4096)
    assert spec.sequence_forward_flops(2, 8192) < plain.sequence_forward_flops(2, 8192)
    w, s = 4096, 8192
    attended = sum(min(t + 1, w) for t in range(s))
    extra = 2 * 2 * spec.num_hidden_layers * 4096 * attended
    matmul_only = plain.forward_flops(s, 0)
    assert spec.sequence_forward_flops(1, s) == pytest.approx(matmul_only + extra)
