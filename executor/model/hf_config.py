"""ModelSpec <-> Hugging Face `config.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plans.hf_folder import ARCH_CLASS, folder_head
from plans.model import Head, ModelSpec, from_hf_folder


def hf_config_dict(
    spec: ModelSpec,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> dict[str, Any]:
    """A config.json that transformers' <Family>ForCausalLM (head `lm`) or
    <Family>ForSequenceClassification with one label (head `value`) loads, family being
    Llama, Mistral, Qwen2 or Qwen3. Both the legacy `rope_theta`/`rope_scaling` keys and
    transformers 5's `rope_parameters` are written, so old and new readers (and
    plans.model.from_hf_folder) agree."""
    scaling = spec.rope_scaling.model_dump(exclude_none=True) if spec.rope_scaling else None
    rope_params: dict[str, Any] = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if scaling:
        rope_params = {**scaling, "rope_theta": spec.rope_theta}
    arch = spec.architecture
    cls = ARCH_CLASS[arch] + (
        "ForSequenceClassification" if spec.head == "value" else "ForCausalLM"
    )
    cfg: dict[str, Any] = {
        "architectures": [cls],
        "model_type": arch,
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
        "rope_scaling": scaling,
        "rope_parameters": rope_params,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "hidden_act": "silu",
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": "float32",
    }
    # Each family's own switches, and only those (its config class ignores the others).
    if arch == "llama":
        cfg.update(attention_bias=spec.attention_bias, mlp_bias=spec.mlp_bias)
    elif arch == "qwen3":
        cfg.update(attention_bias=spec.attention_bias, use_sliding_window=False)
    elif arch == "qwen2":
        cfg["use_sliding_window"] = False
    else:  # mistral: null means no window (its config class would default to 4096)
        cfg["sliding_window"] = spec.sliding_window
    if spec.head == "value":
        cfg["num_labels"] = 1
        cfg["id2label"] = {"0": "LABEL_0"}
        cfg["label2id"] = {"LABEL_0": 0}
    return cfg


def spec_from_folder(folder: str | Path, head: Head | None = None) -> ModelSpec:
    """The ModelSpec of a local HF folder. The head defaults to what `architectures` says."""
    if head is None:
        head = "value" if folder_head(Path(folder)) == "value" else "lm"
    return from_hf_folder(folder, head)


def transformers_config(spec: ModelSpec, pad_token_id: int | None = 258) -> Any:
    """The transformers config object of `spec` (its family's class)."""
    from transformers import AutoConfig

    cfg = hf_config_dict(spec, pad_token_id=pad_token_id)
    for k in ("architectures", "model_type", "torch_dtype"):
        cfg.pop(k)
    return AutoConfig.for_model(spec.architecture, **cfg)


def transformers_model(
    spec: ModelSpec,
    state: dict[str, Any] | None = None,
    pad_token_id: int | None = 258,
    attn_implementation: str = "eager",
) -> Any:
    """A transformers <Family>ForCausalLM / <Family>ForSequenceClassification of `spec` (with
    our full HF-keyed `state` when given), in eval mode. For reference checks and benchmarks:
    transformers is imported lazily because it is only a test dependency."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = transformers_config(spec, pad_token_id)
    config._attn_implementation = attn_implementation
    auto = AutoModelForSequenceClassification if spec.head == "value" else AutoModelForCausalLM
    model = auto.from_config(config).eval()
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise KeyError(f"state does not fit: missing {missing}, unexpected {unexpected}")
        if spec.tie_word_embeddings:
            model.tie_weights()
    return model
