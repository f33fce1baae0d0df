"""Small random models of each supported family, shared by the unit and distributed checks.

Each exercises what its family adds: Llama with attention and MLP biases and llama3 RoPE
scaling, Qwen2 with q/k/v biases, tied embeddings and one kv head (so tp=2 replicates it),
Qwen3 with q/k norms and a head width unrelated to hidden/heads, Mistral with a sliding
window much shorter than the test sequences. Weights come from `family_state`: seeded per
key, norms away from 1 and biases away from 0, so a misplaced norm or bias cannot pass.
"""

from __future__ import annotations

import zlib

import torch

from executor.model import Transformer
from executor.model.weights import load_full_state_
from plans.layout import param_slices
from plans.model import ModelSpec, RopeScaling

_BASE = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 264,
    "max_position_embeddings": 256,
}

FAMILIES: dict[str, ModelSpec] = {
    "llama-bias": ModelSpec(
        name="llama-bias",
        architecture="llama",
        attention_bias=True,
        mlp_bias=True,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
        **_BASE,
    ),
    "qwen2": ModelSpec(
        name="qwen2",
        architecture="qwen2",
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        **{**_BASE, "num_key_value_heads": 1},
    ),
    "qwen3": ModelSpec(
        name="qwen3",
        architecture="qwen3",
        head_dim=24,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        **_BASE,
    ),
    "mistral": ModelSpec(name="mistral", architecture="mistral", sliding_window=8, **_BASE),
}


def family_state(spec: ModelSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """The full HF-keyed state dict: every tensor seeded from (seed, key), identical in every
    process; norm weights 1 + noise, biases and matrices N(0, 0.05^2)."""
    out = {}
    for sl in param_slices(spec, 1, 0, 1, 0):
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(sl.source.encode()))
        t = torch.randn(sl.full_shape, generator=g) * 0.05
        out[sl.source] = t + 1.0 if sl.source.endswith("norm.weight") else t
    if spec.head == "lm" and not spec.tie_word_embeddings:
        assert "lm_head.weight" in out
    return out


def family_model(spec: ModelSpec, seed: int = 0, **layout) -> Transformer:
    """Our model of `spec` (in the layout given as Transformer's keyword arguments), filled
    from `family_state`."""
    return load_full_state_(Transformer(spec, **layout), family_state(spec, seed))


def token_batch(b: int, t: int, seed: int = 0, vocab: int = 256) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))
