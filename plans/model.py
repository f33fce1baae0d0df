"""Model architecture specs (LLaMA family), built-in presets and local Hugging Face configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plans.errors import PlanError, from_validation_error
from plans.strict import STRICT

Head = Literal["lm", "value"]


class ModelSpec(BaseModel):
    """The architecture of one LLaMA-family model: the fields of a Hugging Face `config.json`
    plus the output head. Weights come from `checkpoint` (a local HF folder) or a seeded random
    initialisation when it is unset."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    name: str = Field(
        "custom", description="Label shown in tables: a preset name or a folder name."
    )
    hidden_size: int = Field(gt=0, description="Width of the residual stream.")
    intermediate_size: int = Field(gt=0, description="Width of the SwiGLU MLP.")
    num_hidden_layers: int = Field(gt=0, description="Number of transformer blocks.")
    num_attention_heads: int = Field(gt=0, description="Query heads per block.")
    num_key_value_heads: int = Field(
        gt=0,
        description="Key/value heads per block (grouped-query attention when fewer than query heads).",
    )
    vocab_size: int = Field(gt=0, description="Rows of the embedding (and of the LM head).")
    max_position_embeddings: int = Field(gt=0, description="Longest sequence the model supports.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    rope_scaling: dict[str, Any] | None = Field(
        None, description="HF `rope_scaling` (e.g. llama3 frequency scaling); None for plain RoPE."
    )
    rms_norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every RMSNorm.")
    tie_word_embeddings: bool = Field(False, description="LM head shares the embedding matrix.")
    head: Head = Field(
        "lm",
        description="`lm`: next-token logits (actor, reference); `value`: one scalar per token (critic, reward).",
    )
    checkpoint: str | None = Field(
        None,
        description="Local Hugging Face folder (config.json + safetensors) holding the weights; None = random init.",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSpec:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # ---- parameter counts -------------------------------------------------------------
    def block_params(self) -> int:
        """Parameters of one transformer block (attention, MLP and its two RMSNorms)."""
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attn = h * h + 2 * h * kv + h * h  # q, k, v, o
        mlp = 3 * h * self.intermediate_size  # gate, up, down
        return attn + mlp + 2 * h

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def head_params(self) -> int:
        """Final RMSNorm plus the output projection (LM head or value head)."""
        if self.head == "value":
            out = self.hidden_size
        else:
            out = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.hidden_size + out

    def num_params(self) -> int:
        return (
            self.embedding_params()
            + self.num_hidden_layers * self.block_params()
            + self.head_params()
        )

    # ---- FLOPs --------------------------------------------------------------------------
    def _head_width(self) -> int:
        return 1 if self.head == "value" else self.vocab_size

    def forward_flops(self, tokens: int, context: float) -> float:
        """Forward FLOPs for `tokens` tokens that each attend to `context` positions on average.

        Matmuls cost 2 FLOPs per weight per token; attention adds QK^T and AV, 2 * 2 * h per
        attended position per layer. For a full causal sequence of length s, context = (s+1)/2;
        for one decode step with a KV cache of length c, context = c + 1.
        """
        h = self.hidden_size
        kv = self.num_key_value_heads * self.head_dim
        matmul = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size
        per_token = (
            self.num_hidden_layers * (2 * matmul + 4 * h * context) + 2 * h * self._head_width()
        )
        return float(tokens) * per_token

    def sequence_forward_flops(self, batch: int, seq_len: int) -> float:
        """Forward FLOPs of `batch` full causal sequences of length `seq_len`."""
        return self.forward_flops(batch * seq_len, (seq_len + 1) / 2)

    def train_flops(self, batch: int, seq_len: int) -> float:
        """Forward + backward (backward = 2x forward) for `batch` sequences of `seq_len` tokens."""
        return 3.0 * self.sequence_forward_flops(batch, seq_len)


def _preset(**kw: Any) -> dict[str, Any]:
    return kw


# Public architecture figures (Hugging Face config.json of each release); tiny/small are ours.
PRESETS: dict[str, dict[str, Any]] = {
    # GQA test model; vocab 264 = 256 bytes + specials of the built-in byte tokenizer, padded to /8.
    "tiny": _preset(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=264,
        max_position_embeddings=512,
    ),
    "tiny-mha": _preset(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=264,
        max_position_embeddings=512,
    ),
    # About 85M parameters: the "medium" size of the CPU benchmarks.
    "small": _preset(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        vocab_size=264,
        max_position_embeddings=1024,
    ),
    "llama2-7b": _preset(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "llama2-13b": _preset(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "llama2-70b": _preset(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=4096,
    ),
    "llama3-8b": _preset(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "llama3-70b": _preset(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
}

_HF_FIELDS = set(ModelSpec.model_fields) - {"name", "head", "checkpoint"}


def preset(name: str, head: Head = "lm") -> ModelSpec:
    """A built-in architecture by name (see `PRESETS`)."""
    if name not in PRESETS:
        raise PlanError(
            f"unknown model preset {name!r}; known: {', '.join(PRESETS)}", field="model"
        )
    return ModelSpec(name=name, head=head, **PRESETS[name])


def from_hf_folder(folder: str | Path, head: Head = "lm") -> ModelSpec:
    """Read the architecture of a local Hugging Face checkpoint folder (its config.json)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise PlanError(f"no config.json in {folder}", field="model") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"cannot read {cfg_path}: {e}", field="model") from None
    if not isinstance(cfg, dict):
        raise PlanError(f"{cfg_path} is not a JSON object", field="model")
    fields = {k: v for k, v in cfg.items() if k in _HF_FIELDS}
    fields.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    # transformers >= 5 writes RoPE settings only under `rope_parameters`.
    rope = cfg.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in cfg:
        if "rope_theta" in rope:
            fields["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            fields["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if cfg.get("model_type") not in (None, "llama", "mistral", "qwen2"):
        raise PlanError(
            f"{cfg_path}: model_type {cfg.get('model_type')!r} is not LLaMA-family", field="model"
        )
    from pydantic import ValidationError

    try:
        return ModelSpec(name=folder.name, head=head, checkpoint=str(folder), **fields)
    except ValidationError as e:
        raise from_validation_error(e, prefix="model").with_source(str(cfg_path)) from None


def resolve_model(ref: str | ModelSpec | dict[str, Any], head: Head) -> ModelSpec:
    """A preset name, a local HF folder, or an inline spec -> a ModelSpec with the given head.
    A relative folder is taken as given: experiments resolve theirs against the experiment
    file's folder first (plans.folders.resolve_experiment_paths)."""
    if isinstance(ref, ModelSpec):
        return ref if ref.head == head else ref.model_copy(update={"head": head})
    if isinstance(ref, dict):
        return ModelSpec.model_validate({**ref, "head": head})
    if ref in PRESETS:
        return preset(ref, head)
    path = Path(ref)
    if path.is_dir():
        return from_hf_folder(path, head)
    raise PlanError(
        f"{ref!r} is neither a preset ({', '.join(PRESETS)}) nor a folder with a config.json",
        field="model",
    )
