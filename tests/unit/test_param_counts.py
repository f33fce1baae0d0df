"""Parameter counts of every preset against transformers models built on the meta device."""

from __future__ import annotations

import pytest

from executor.model.hf_config import transformers_config
from plans import PRESETS, preset

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")


def _hf_config(spec):
    # The family's own config class (Llama, Mistral, Qwen2, Qwen3), as a saved folder has.
    return transformers_config(spec, pad_token_id=0)


def _hf_count(spec) -> int:
    cfg = _hf_config(spec)
    cls = (
        transformers.AutoModelForCausalLM
        if spec.head == "lm"
        else transformers.AutoModelForSequenceClassification
    )
    with accelerate.init_empty_weights():
        model = cls.from_config(cfg)
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


FAMILY_PRESETS = [n for n in sorted(PRESETS) if n.startswith(("qwen", "llama3.1", "mistral"))]


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_family_preset_counts_on_the_meta_device(name):
    """Qwen2.5, Qwen3, Llama 3.1 and Mistral presets: the transformers model of the config the
    preset writes, instantiated on the meta device (no memory), has exactly our count."""
    import torch

    spec = preset(name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(_hf_config(spec))
    # Tied heads share one Parameter, which parameters() yields once.
    assert spec.num_params() == sum(p.numel() for p in model.parameters())
    assert model.config.model_type == spec.architecture


def test_published_sizes():
    """A few totals as the model cards state them (checks the figures, not the formula)."""
    assert preset("qwen2.5-0.5b").num_params() == 494_032_768
    assert preset("qwen2.5-7b").num_params() == 7_615_616_512
    assert preset("qwen3-0.6b").num_params() == 596_049_920
    assert 8.02e9 < preset("llama3.1-8b").num_params() < 8.04e9
    assert 7.2e9 < preset("mistral-7b").num_params() < 7.3e9
