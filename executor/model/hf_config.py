"""ModelSpec <-> Hugging Face `config.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plans.model import Head, ModelSpec, from_hf_folder


def hf_config_dict(
    spec: ModelSpec,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> dict[str, Any]:
    """A config.json that transformers' LlamaForCausalLM (head `lm`) or
    LlamaForSequenceClassification with one label (head `value`) loads. Both the legacy
    `rope_theta`/`rope_scaling` keys and transformers 5's `rope_parameters` are written, so
    old and new readers (and plans.model.from_hf_folder) agree."""
    rope_params: dict[str, Any] = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if spec.rope_scaling:
        rope_params = {**spec.rope_scaling, "rope_theta": spec.rope_theta}
        rope_params.setdefault("rope_type", rope_params.pop("type", "default"))
    cfg: dict[str, Any] = {
        "architectures": [
            "LlamaForSequenceClassification" if spec.head == "value" else "LlamaForCausalLM"
        ],
        "model_type": "llama",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": spec.rope_scaling,
        "rope_parameters": rope_params,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }
    if spec.head == "value":
        cfg["num_labels"] = 1
        cfg["id2label"] = {"0": "LABEL_0"}
        cfg["label2id"] = {"LABEL_0": 0}
    return cfg


def spec_from_folder(folder: str | Path, head: Head | None = None) -> ModelSpec:
    """The ModelSpec of a local HF folder. The head defaults to what `architectures` says."""
    if head is None:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        archs = cfg.get("architectures") or []
        head = "value" if any("SequenceClassification" in a for a in archs) else "lm"
    return from_hf_folder(folder, head)


def transformers_model(
    spec: ModelSpec,
    state: dict[str, Any] | None = None,
    pad_token_id: int | None = 258,
    attn_implementation: str = "eager",
) -> Any:
    """A transformers LlamaForCausalLM / LlamaForSequenceClassification of `spec` (with our
    full HF-keyed `state` when given), in eval mode. For reference checks and benchmarks:
    transformers is imported lazily because it is only a test dependency."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    cfg = hf_config_dict(spec, pad_token_id=pad_token_id)
    for k in ("architectures", "model_type", "torch_dtype"):
        cfg.pop(k)
    config = LlamaConfig(**cfg)
    config._attn_implementation = attn_implementation
    cls = LlamaForSequenceClassification if spec.head == "value" else LlamaForCausalLM
    model = cls(config).eval()
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise KeyError(f"state does not fit: missing {missing}, unexpected {unexpected}")
        if spec.tie_word_embeddings:
            model.tie_weights()
    return model
