"""Test helpers: transformers models built from our ModelSpecs."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from executor.hf_config import hf_config_dict
from plans.model import ModelSpec


def hf_model(spec: ModelSpec, state: dict[str, torch.Tensor] | None = None, pad_token_id: int = 258):
    cfg = hf_config_dict(spec, pad_token_id=pad_token_id)
    cfg.pop("architectures")
    cfg.pop("model_type")
    config = LlamaConfig(**cfg)
    config._attn_implementation = "eager"
    cls = LlamaForSequenceClassification if spec.head == "value" else LlamaForCausalLM
    model = cls(config).eval()
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected
        assert set(missing) <= {"lm_head.weight"}, missing
        if spec.tie_word_embeddings:
            model.tie_weights()
    return model
