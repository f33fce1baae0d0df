"""Rotary position embeddings, numerically as in Hugging Face LLaMA (float32 angles,
rotate-half layout), including the linear, llama3 and yarn frequency rescalings."""

from __future__ import annotations

import math

import torch
from torch import nn

from plans.model import ModelSpec


def inv_frequencies(spec: ModelSpec) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies, rescaled as `spec.rope_scaling` says."""
    dim = spec.head_dim
    # Same arithmetic as HF (int64 arange cast to float) so angles match bit for bit.
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = spec.rope_scaling
    if s is None:
        return inv
    if s.rope_type == "linear":
        return inv / s.factor
    if s.rope_type == "yarn":
        return _yarn(spec, inv)
    factor, lo, hi = s.factor, float(s.low_freq_factor), float(s.high_freq_factor)
    old = s.original_max_position_embeddings or spec.max_position_embeddings
    lo_wavelen, hi_wavelen = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    scaled = torch.where(wavelen > lo_wavelen, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < hi_wavelen) * ~(wavelen > lo_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(spec: ModelSpec, inv: torch.Tensor) -> torch.Tensor:
    """YaRN's NTK-by-parts frequencies, as transformers' _compute_yarn_parameters: dimensions
    that rotate fewer than beta_slow times over the original context are interpolated,
    more than beta_fast times kept, a linear ramp between."""
    s = spec.rope_scaling
    assert s is not None
    dim, base = spec.head_dim, spec.rope_theta
    old = s.original_max_position_embeddings or spec.max_position_embeddings
    fast, slow = s.beta_fast or 32, s.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(fast), correction_dim(slow)
    if s.truncate is None or s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    return (1.0 / (s.factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation


def attention_scaling(spec: ModelSpec) -> float:
    """The factor transformers multiplies cos and sin by: 1 except for YaRN."""
    s = spec.rope_scaling
    if s is None or s.rope_type != "yarn":
        return 1.0
    if s.attention_factor is not None:
        return s.attention_factor

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if s.mscale and s.mscale_all_dim:
        return mscale(s.factor, s.mscale) / mscale(s.factor, s.mscale_all_dim)
    return mscale(s.factor)


class Rotary(nn.Module):
    """cos/sin tables, grown on demand and looked up by position id."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        # On the host whatever device the model is built on (a view's shell is built on
        # "meta"): the tables are made from it on the positions' device (_grow).
        with torch.device("cpu"):
            inv_freq = inv_frequencies(spec)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cos = torch.empty(0)
        self._sin = torch.empty(0)
        self._initial = spec.max_position_embeddings
        self._scale = attention_scaling(spec)

    def _grow(self, n: int, device: torch.device) -> None:
        n = max(n, 2 * self._cos.shape[0], self._initial)
        # pos * inv_freq in float32 is exactly HF's (1-term) matmul, so lookups match it.
        freqs = (
            torch.arange(n, device=device, dtype=torch.float32)[:, None]
            * self.inv_freq.to(device)[None, :]
        )
        emb = torch.cat((freqs, freqs), dim=-1)  # [n, head_dim]
        self._cos = emb.cos()
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]: the sign lives in the
        # table, which saves the negation and concatenation per call (bitwise the same).
        half = emb.shape[-1] // 2
        sin = emb.sin()
        if self._scale != 1.0:  # YaRN's attention factor, folded in as transformers does
            self._cos, sin = self._cos * self._scale, sin * self._scale
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
