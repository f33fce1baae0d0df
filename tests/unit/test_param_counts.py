"""Parameter counts of every preset against transformers models built on the meta device."""

from __future__ import annotations

import pytest

from plans import PRESETS, preset

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")


def _hf_config(spec):
    fields = spec.model_dump(exclude={"name", "head", "checkpoint"})
    return transformers.LlamaConfig(**fields, num_labels=1, pad_token_id=0)


def _hf_count(spec) -> int:
    cfg = _hf_config(spec)
    cls = (
        transformers.LlamaForCausalLM
        if spec.head == "lm"
        else transformers.LlamaForSequenceClassification
    )
    with accelerate.init_empty_weights():
        model = cls(cfg)
    model.tie_weights()  # init_empty_weights skips the tying that a normal init does
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("head", ["lm", "value"])
def test_preset_counts_match_transformers(name, head):
    spec = preset(name, head)
    assert spec.num_params() == _hf_count(spec)


def test_tied_embeddings_counted_once():
    spec = preset("tiny").model_copy(update={"tie_word_embeddings": True})
    assert spec.num_params() == _hf_count(spec)
    assert spec.num_params() == preset("tiny").num_params() - spec.vocab_size * spec.hidden_size


def test_llama2_7b_is_about_6_7b():
    assert 6.7e9 < preset("llama2-7b").num_params() < 6.8e9
