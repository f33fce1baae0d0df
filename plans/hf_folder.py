"""Reading a Hugging Face `config.json` into ModelSpec fields, by allow-list.

Every key of the file is one of: read into the spec (it changes the numerics and the executor
implements it), checked to hold the one value the executor implements (`hidden_act = "silu"`,
`use_sliding_window = false`, ...), or known not to touch the forward pass (token ids, dtype,
generation defaults). Anything else -- an unknown key, architecture, activation or RoPE type
-- is refused with one line naming the key and its value, when the experiment is validated,
never inside a worker. Keys absent from the file take the defaults of the family's
transformers config class, as transformers itself would (Qwen3's head_dim 128, Mistral's
4096-token window, rms_norm_eps 1e-6), so the model built is the one transformers builds.

Plain json: the runtime does not need transformers, and plans/ imports nothing heavy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from plans.errors import PlanError

ARCH_CLASS = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
HEAD_SUFFIX = {"ForCausalLM": "lm", "ForSequenceClassification": "value"}

# transformers' defaults for the keys read below, per family (their config classes).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"max_position_embeddings": 2048, "attention_bias": False, "mlp_bias": False},
    "mistral": {"max_position_embeddings": 131072, "sliding_window": 4096},
    "qwen2": {"max_position_embeddings": 32768},
    "qwen3": {"max_position_embeddings": 32768, "head_dim": 128, "attention_bias": False},
}
_COMMON_DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False}
_KV_DEFAULT = {"llama": None, "mistral": 8, "qwen2": 32, "qwen3": 32}  # None: = query heads

_REQUIRED_INT = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)
_OPTIONAL_INT = ("num_key_value_heads", "head_dim", "max_position_embeddings")
# Settings only some families have: the families that read them. Elsewhere the key is
# accepted only with its neutral value (a converted config may carry `attention_bias: false`).
_FAMILY_KEYS = {
    "attention_bias": ("llama", "qwen3"),
    "mlp_bias": ("llama",),
    "sliding_window": ("mistral",),
}
_ROPE_KEYS = {"rope_theta", "rope_scaling", "rope_parameters"}
# Keys whose value must be the one the executor implements (the value transformers writes
# by default), with what the executor does instead.
_PINNED: dict[str, tuple[tuple[Any, ...], str]] = {
    "hidden_act": (("silu",), "only the SiLU (SwiGLU) MLP is implemented"),
    "attention_dropout": ((0, 0.0), "attention dropout is not implemented"),
    "use_mrope": ((False,), "multimodal RoPE is not implemented"),
    "partial_rotary_factor": ((1, 1.0), "RoPE over part of a head is not implemented"),
    "is_encoder_decoder": ((False,), "decoder-only models only"),
    "add_cross_attention": ((False,), "decoder-only models only"),
    "pruned_heads": (({},), "pruned heads are not implemented"),
}
# Keys that do not change the forward pass: ids of special tokens, storage dtype, HF
# bookkeeping, generation defaults (the experiment sets sampling), labels.
_IGNORED = frozenset(
    """architectures model_type _name_or_path transformers_version torch_dtype dtype use_cache
    initializer_range bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id
    pretraining_tp id2label label2id num_labels problem_type finetuning_task tokenizer_class
    prefix task_specific_params return_dict output_hidden_states output_attentions torchscript
    use_bfloat16 tf_legacy_loss tie_encoder_decoder is_decoder chunk_size_feed_forward
    cross_attention_hidden_size max_length min_length do_sample early_stopping num_beams
    num_beam_groups diversity_penalty temperature top_k top_p typical_p repetition_penalty
    length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids
    num_return_sequences output_scores return_dict_in_generate forced_bos_token_id
    forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
    begin_suppress_tokens""".split()
)
# Qwen's sliding-window switch and its companions: read only when the switch is on.
_QWEN_WINDOW = ("use_sliding_window", "sliding_window", "max_window_layers")
_ROPE_SCALING_KEYS = frozenset(
    """rope_type type factor original_max_position_embeddings low_freq_factor high_freq_factor
    attention_factor beta_fast beta_slow mscale mscale_all_dim truncate""".split()
)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Reader:
    def __init__(self, cfg: dict[str, Any], source: str):
        self.cfg, self.source = cfg, source

    def refuse(self, key: str, why: str) -> PlanError:
        value = _short(self.cfg[key]) if key in self.cfg else "(absent)"
        return PlanError(f"config.json key {key!r} = {value}: {why}", source=self.source)

    def architecture(self) -> tuple[str, str | None]:
        """(family, head the `architectures` entry names, or None)."""
        cfg = self.cfg
        model_type = cfg.get("model_type")
        if model_type is not None and model_type not in ARCH_CLASS:
            raise self.refuse(
                "model_type", f"not LLaMA-family (supported: {', '.join(ARCH_CLASS)})"
            )
        archs = cfg.get("architectures")
        if archs is None:
            return model_type or "llama", None
        if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
            raise self.refuse("architectures", "expected a list with one class name")
        for family, prefix in ARCH_CLASS.items():
            for suffix, head in HEAD_SUFFIX.items():
                if archs[0] == prefix + suffix and model_type in (None, family):
                    return family, head
        raise self.refuse(
            "architectures",
            f"not a supported class for model_type {model_type!r} (supported: "
            f"{', '.join(p + s for p in ARCH_CLASS.values() for s in HEAD_SUFFIX)})",
        )

    def typed(self, key: str, kind: type, value: Any) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise self.refuse(key, f"expected {kind.__name__}")
        if kind is not bool and not (math.isfinite(value) and value > 0):
            raise self.refuse(key, "must be a positive finite number")
        return value

    def rope(self, family: str) -> dict[str, Any]:
        """rope_theta and rope_scaling from the legacy keys or transformers 5's
        `rope_parameters` (a non-null `rope_scaling` wins, as in transformers)."""
        cfg = self.cfg
        key = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
        params = cfg.get(key) or {}
        if not isinstance(params, dict):
            raise self.refuse(key, "expected an object")
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        theta_key = "rope_theta" if "rope_theta" not in params else key
        if (
            not isinstance(theta, int | float)
            or isinstance(theta, bool)
            or not (math.isfinite(theta) and theta > 0)
        ):
            raise self.refuse(theta_key, "rope_theta must be a positive number")
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta",)}
        if scaling.get("partial_rotary_factor", 1.0) not in (1, 1.0):
            raise self.refuse(key, "RoPE over part of a head is not implemented")
        scaling.pop("partial_rotary_factor", None)
        unknown = set(scaling) - _ROPE_SCALING_KEYS
        if unknown:
            raise self.refuse(key, f"unknown RoPE setting {sorted(unknown)[0]!r}")
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind == "default":  # transformers ignores any other setting next to it
            return {"rope_theta": float(theta), "rope_scaling": None}
        if kind not in ("linear", "llama3", "yarn"):
            raise self.refuse(
                key, f"RoPE type {kind!r} is not implemented (default, linear, llama3, yarn are)"
            )
        # Checked here, so the refusal names the key the file spells it under.
        from pydantic import ValidationError

        from plans.errors import from_validation_error
        from plans.model import RopeScaling  # plans.model imports this module first

        try:
            RopeScaling.model_validate(scaling)
        except ValidationError as e:
            problem = from_validation_error(e)
            where = f"{problem.field}: " if problem.field else ""
            raise self.refuse(key, f"{where}{problem.reason}") from None
        return {"rope_theta": float(theta), "rope_scaling": scaling}

    def fields(self) -> dict[str, Any]:
        cfg = self.cfg
        family, _ = self.architecture()
        out: dict[str, Any] = {"architecture": family}
        for key in _REQUIRED_INT:
            if key not in cfg:
                raise self.refuse(key, "required")
            out[key] = self.typed(key, int, cfg[key])
        defaults = {**_COMMON_DEFAULTS, **_DEFAULTS[family]}
        # null where the family's config class takes no None (transformers refuses it too)
        for fam, key in (("qwen3", "head_dim"), ("mistral", "num_key_value_heads")):
            if family == fam and key in cfg and cfg[key] is None:
                raise self.refuse(key, f"{family} needs an integer here")
        for key in _OPTIONAL_INT:
            value = cfg.get(key, defaults.get(key))
            if key == "num_key_value_heads" and key not in cfg:
                value = _KV_DEFAULT[family]
            if value is not None:
                out[key] = self.typed(key, int, value)
            elif key == "num_key_value_heads":
                out[key] = out["num_attention_heads"]
        head_dim = out.get("head_dim", out["hidden_size"] // out["num_attention_heads"])
        if head_dim % 2:  # transformers' rotate_half cannot pair the last dimension either
            raise self.refuse("head_dim", f"the head width {head_dim} must be even for RoPE")
        out["rms_norm_eps"] = self.typed(
            "rms_norm_eps", float, cfg.get("rms_norm_eps", defaults["rms_norm_eps"])
        )
        out["tie_word_embeddings"] = self.typed(
            "tie_word_embeddings", bool, cfg.get("tie_word_embeddings", False)
        )
        for key, families in _FAMILY_KEYS.items():
            if key == "sliding_window" and family in ("qwen2", "qwen3"):
                continue  # Qwen's window counts only under use_sliding_window (check_rest)
            if family in families:
                value = cfg.get(key, defaults.get(key))
                if value is not None:
                    out[key] = self.typed(key, int if key == "sliding_window" else bool, value)
            elif cfg.get(key) not in (None, False):
                raise self.refuse(key, f"{family} has no such setting")
        out.update(self.rope(family))
        self.check_rest(family, out)
        return out

    def check_rest(self, family: str, out: dict[str, Any]) -> None:
        cfg = self.cfg
        read = {*_REQUIRED_INT, *_OPTIONAL_INT, "rms_norm_eps", "tie_word_embeddings"}
        for key, value in cfg.items():
            if key in read or key in _FAMILY_KEYS or key in _ROPE_KEYS or key in _IGNORED:
                continue
            if key in _PINNED:
                allowed, why = _PINNED[key]
                if not any(type(value) is type(a) and value == a for a in allowed):
                    raise self.refuse(key, why)
            elif key in _QWEN_WINDOW and family in ("qwen2", "qwen3"):
                if key == "use_sliding_window" and value is not False:
                    raise self.refuse(key, "Qwen's sliding-window layers are not implemented")
            elif key == "layer_types":
                kind = "sliding_attention" if out.get("sliding_window") else "full_attention"
                if not isinstance(value, list) or any(v != kind for v in value):
                    raise self.refuse(key, f"only {kind!r} in every layer is implemented here")
            else:
                raise self.refuse(key, "not a setting this executor knows; it may change numerics")
        archs = cfg.get("architectures") or []
        labels = cfg.get("id2label")
        if any(a.endswith("ForSequenceClassification") for a in archs) and labels is not None:
            if not isinstance(labels, dict) or len(labels) != 1:
                raise self.refuse("id2label", "a value head has exactly one label")


def read_hf_config(folder: Path) -> dict[str, Any]:
    """ModelSpec fields (architecture and numerics, without name/head/checkpoint) of a local
    Hugging Face folder, or a PlanError naming the first key it cannot honour."""
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"no config.json in {folder}", field="model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise PlanError(f"cannot read {path}: {e}", field="model") from None
    if not isinstance(cfg, dict):
        raise PlanError(f"{path} is not a JSON object", field="model")
    return _Reader(cfg, str(path)).fields()


def folder_head(folder: Path) -> str:
    """The head a folder's `architectures` names: `value` for *ForSequenceClassification."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return "lm"  # read_hf_config reports the problem
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if isinstance(archs, list) and any(
        isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs
    ):
        return "value"
    return "lm"
