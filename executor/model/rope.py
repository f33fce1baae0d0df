"""Rotary position embeddings, numerically as in Hugging Face LLaMA (float32 angles,
rotate-half layout), including the llama3 `rope_scaling` frequency rescaling."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from plans.model import ModelSpec


def _rope_params(spec: ModelSpec) -> dict[str, Any] | None:
    scaling = spec.rope_scaling
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise NotImplementedError(f"rope_scaling type {kind!r} (only llama3 is supported)")
    return scaling


def inv_frequencies(spec: ModelSpec) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies, llama3-rescaled when configured."""
    dim = spec.head_dim
    # Same arithmetic as HF (int64 arange cast to float) so angles match bit for bit.
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = _rope_params(spec)
    if s is None:
        return inv
    factor, lo, hi = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old = s.get("original_max_position_embeddings", spec.max_position_embeddings)
    lo_wavelen, hi_wavelen = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > lo_wavelen, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < hi_wavelen) * ~(wavelen > lo_wavelen)
    return torch.where(medium, smoothed, scaled)


class Rotary(nn.Module):
    """cos/sin tables, grown on demand and looked up by position id."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.register_buffer("inv_freq", inv_frequencies(spec), persistent=False)
        self._cos = torch.empty(0)
        self._sin = torch.empty(0)
        self._initial = spec.max_position_embeddings

    def _grow(self, n: int, device: torch.device) -> None:
        n = max(n, 2 * self._cos.shape[0], self._initial)
        # pos * inv_freq in float32 is exactly HF's (1-term) matmul, so lookups match it.
        freqs = (
            torch.arange(n, device=device, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        )
        emb = torch.cat((freqs, freqs), dim=-1)  # [n, head_dim]
        self._cos = emb.cos()
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]: the sign lives in the
        # table, which saves the negation and concatenation per call (bitwise the same).
        half = emb.shape[-1] // 2
        sin = emb.sin()
        self._sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype, bound: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T], all < `bound` (callers know it, which spares a device sync)
        -> cos, sin [B, 1, T, head_dim] (broadcast over heads)."""
        if bound > self._cos.shape[0] or self._cos.device != positions.device:
            self._grow(bound, positions.device)
        cos = self._cos[positions].unsqueeze(1).to(dtype)
        sin = self._sin[positions].unsqueeze(1).to(dtype)
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, head_dim] rotated by position (HF's x * cos + rotate_half(x) * sin, with
    the rotation's sign folded into `signed_sin` from Rotary)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
