"""Model architecture specs (Llama, Mistral, Qwen2, Qwen3), built-in presets and local Hugging
Face configs (plans.hf_folder reads and refuses their keys; plans.presets holds the figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plans.errors import PlanError, from_validation_error
from plans.hf_folder import read_hf_config
from plans.presets import PRESETS
from plans.strict import STRICT

Head = Literal["lm", "value"]
Architecture = Literal["llama", "mistral", "qwen2", "qwen3"]


class RopeScaling(BaseModel):
    """A RoPE frequency rescaling (HF `rope_scaling` / `rope_parameters` without its theta).
    A frozen model, not a dict, so a ModelSpec stays hashable (the search caches on it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    rope_type: Literal["linear", "llama3", "yarn"] = Field(
        description="`linear`: positions divided by `factor`; `llama3`: Llama 3.1's band-wise "
        "rescaling; `yarn`: YaRN (NTK-by-parts with an attention factor)."
    )
    factor: float = Field(gt=0, description="Context extension factor.")
    original_max_position_embeddings: int | None = Field(
        None,
        gt=0,
        description="Pretraining context (llama3, yarn); None = max_position_embeddings.",
    )
    low_freq_factor: float | None = Field(None, gt=0, description="llama3 only.")
    high_freq_factor: float | None = Field(None, gt=0, description="llama3 only.")
    attention_factor: float | None = Field(
        None, gt=0, description="yarn: cos/sin scale; None = derived from factor (and mscale)."
    )
    beta_fast: float | None = Field(None, gt=0, description="yarn ramp bound (HF default 32).")
    beta_slow: float | None = Field(None, gt=0, description="yarn ramp bound (HF default 1).")
    mscale: float | None = Field(None, description="yarn attention-factor numerator scale.")
    mscale_all_dim: float | None = Field(None, description="yarn attention-factor denominator.")
    truncate: bool | None = Field(None, description="yarn: round the ramp bounds (HF default).")

    @model_validator(mode="before")
    @classmethod
    def _legacy_type_key(cls, data: Any) -> Any:
        # transformers < 4.45 wrote `type`; both spellings mean the same.
        if isinstance(data, dict) and "type" in data:
            data = dict(data)
            kind = data.pop("type")
            data.setdefault("rope_type", kind)
        return data

    @model_validator(mode="after")
    def _fields_of_type(self) -> RopeScaling:
        llama3 = ("low_freq_factor", "high_freq_factor")
        yarn = (
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        )
        allowed = {"linear": (), "llama3": llama3, "yarn": yarn}[self.rope_type]
        for key in (*llama3, *yarn):
            if getattr(self, key) is not None and key not in allowed:
                raise ValueError(f"{key} does not apply to rope_type {self.rope_type!r}")
        if self.rope_type == "llama3":
            if self.low_freq_factor is None or self.high_freq_factor is None:
                raise ValueError("rope_type 'llama3' needs low_freq_factor and high_freq_factor")
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError("llama3 rope: high_freq_factor must exceed low_freq_factor")
        if self.rope_type == "linear" and self.original_max_position_embeddings is not None:
            raise ValueError(
                "original_max_position_embeddings does not apply to rope_type 'linear'"
            )
        return self


class ModelSpec(BaseModel):
    """The architecture of one decoder-only model of a supported family: the fields of a
    Hugging Face `config.json` that change its numerics, plus the output head. Weights come
    from `checkpoint` (a local HF folder) or a seeded random initialisation when it is unset."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    name: str = Field(
        "custom", description="Label shown in tables: a preset name or a folder name."
    )
    architecture: Architecture = Field(
        "llama",
        description="HF model_type: `llama` (optional attention/MLP biases), `mistral` (sliding "
        "window), `qwen2` (q/k/v biases), `qwen3` (per-head q/k RMSNorm).",
    )
    hidden_size: int = Field(gt=0, description="Width of the residual stream.")
    intermediate_size: int = Field(gt=0, description="Width of the SwiGLU MLP.")
    num_hidden_layers: int = Field(gt=0, description="Number of transformer blocks.")
    num_attention_heads: int = Field(gt=0, description="Query heads per block.")
    num_key_value_heads: int = Field(
        gt=0,
        description="Key/value heads per block (grouped-query attention when fewer than query heads).",
    )
    head_dim: int = Field(  # type: ignore[assignment]  # None is replaced on validation
        None,
        gt=0,
        description="Width of one attention head; unset: hidden_size / num_attention_heads "
        "(Qwen3 sets it independently).",
    )
    vocab_size: int = Field(gt=0, description="Rows of the embedding (and of the LM head).")
    max_position_embeddings: int = Field(gt=0, description="Longest sequence the model supports.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    rope_scaling: RopeScaling | None = Field(
        None, description="RoPE frequency rescaling (llama3, linear, yarn); None for plain RoPE."
    )
    rms_norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every RMSNorm.")
    tie_word_embeddings: bool = Field(False, description="LM head shares the embedding matrix.")
    attention_bias: bool = Field(
        False,
        description="Biases on q, k, v and o (llama, qwen3). Qwen2's q/k/v biases are implied.",
    )
    mlp_bias: bool = Field(False, description="Biases on gate, up and down (llama).")
    sliding_window: int | None = Field(
        None,
        gt=0,
        description="Mistral: each token attends to itself and the window-1 tokens before it.",
    )
    head: Head = Field(
        "lm",
        description="`lm`: next-token logits (actor, reference); `value`: one scalar per token (critic, reward).",
    )
    checkpoint: str | None = Field(
        None,
        description="Local Hugging Face folder (config.json + safetensors) holding the weights; None = random init.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_head_dim(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("head_dim") is None:
            h, n = data.get("hidden_size"), data.get("num_attention_heads")
            data = {k: v for k, v in data.items() if k != "head_dim"}
            if isinstance(h, int) and isinstance(n, int) and n > 0:
                if h % n:
                    raise ValueError(
                        f"hidden_size={h} is not a multiple of num_attention_heads={n} "
                        "(set head_dim to use heads of another width)"
                    )
                data["head_dim"] = h // n
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        # What each family's Hugging Face class can express, so a saved folder reloads as itself.
        if self.attention_bias and self.architecture in ("mistral", "qwen2"):
            raise ValueError(f"{self.architecture} has no attention_bias setting")
        if self.mlp_bias and self.architecture != "llama":
            raise ValueError(f"{self.architecture} has no mlp_bias setting")
        if self.sliding_window is not None and self.architecture != "mistral":
            raise ValueError("sliding_window applies to the mistral architecture only")
        return self

    # ---- what each family adds --------------------------------------------------------------
    @property
    def qkv_bias(self) -> bool:
        """q, k and v projections have biases (column-parallel: split with their rows)."""
        return self.attention_bias or self.architecture == "qwen2"

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def qk_norm(self) -> bool:
        """Qwen3: an RMSNorm over head_dim on every query and key head, before RoPE."""
        return self.architecture == "qwen3"

    def window_covers(self, length: int) -> bool:
        """Whether plain causal attention over `length` tokens is exact (no window bites)."""
        return self.sliding_window is None or length <= self.sliding_window

    # ---- parameter counts -------------------------------------------------------------------
    def replicated_block_params(self) -> int:
        """Parameters of one block that every tp rank holds whole: the two RMSNorms, q/k norms,
        and the biases of the row-parallel o and down projections (added after the sum)."""
        h = self.hidden_size
        out = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return out + (h if self.o_bias else 0) + (h if self.mlp_bias else 0)

    def block_params(self) -> int:
        """Parameters of one transformer block (attention, MLP, norms and biases)."""
        h, q = self.hidden_size, self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = 2 * h * q + 2 * h * kv + (q + 2 * kv if self.qkv_bias else 0)  # q, k, v, o
        mlp = 3 * h * self.intermediate_size + (2 * self.intermediate_size if self.mlp_bias else 0)
        return attn + mlp + self.replicated_block_params()

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

    # ---- FLOPs --------------------------------------------------------------------------------
    def _head_width(self) -> int:
        return 1 if self.head == "value" else self.vocab_size

    def forward_flops(self, tokens: int, context: float) -> float:
        """Forward FLOPs for `tokens` tokens that each attend to `context` positions on average.

        Matmuls cost 2 FLOPs per weight per token; attention adds QK^T and AV, 2 * 2 * q-width
        per attended position per layer. For a full causal sequence of length s, context =
        (s+1)/2; for one decode step with a KV cache of length c, context = c + 1 (both capped
        by a sliding window, see `sequence_forward_flops`).
        """
        h, q = self.hidden_size, self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        matmul = 2 * h * q + 2 * h * kv + 3 * h * self.intermediate_size
        if self.sliding_window is not None:
            context = min(context, self.sliding_window)
        per_token = (
            self.num_hidden_layers * (2 * matmul + 4 * q * context) + 2 * h * self._head_width()
        )
        return float(tokens) * per_token

    def sequence_forward_flops(self, batch: int, seq_len: int) -> float:
        """Forward FLOPs of `batch` full causal sequences of length `seq_len`."""
        context = (seq_len + 1) / 2
        w = self.sliding_window
        if w is not None and seq_len > w:  # tokens past the window attend to exactly w keys
            context = (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len
        return self.forward_flops(batch * seq_len, context)

    def train_flops(self, batch: int, seq_len: int) -> float:
        """Forward + backward (backward = 2x forward) for `batch` sequences of `seq_len` tokens."""
        return 3.0 * self.sequence_forward_flops(batch, seq_len)


def preset(name: str, head: Head = "lm") -> ModelSpec:
    """A built-in architecture by name (see `PRESETS`)."""
    if name not in PRESETS:
        raise PlanError(
            f"unknown model preset {name!r}; known: {', '.join(PRESETS)}", field="model"
        )
    return ModelSpec(name=name, head=head, **PRESETS[name])


def from_hf_folder(folder: str | Path, head: Head = "lm") -> ModelSpec:
    """The architecture of a local Hugging Face checkpoint folder (its config.json). Every key
    that changes the numerics is either read into the spec or refused, naming it
    (plans.hf_folder)."""
    folder = Path(folder)
    fields = read_hf_config(folder)
    from pydantic import ValidationError

    try:
        return ModelSpec(name=folder.name, head=head, checkpoint=str(folder), **fields)
    except ValidationError as e:
        raise from_validation_error(e, prefix="model").with_source(
            str(folder / "config.json")
        ) from None


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
