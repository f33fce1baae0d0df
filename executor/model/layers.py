"""Transformer block pieces holding only this rank's slices (see plans.layout)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from executor.model.rope import apply_rotary
from executor.parallel.collectives import Group, copy_to_tp, reduce_from_tp
from plans.layout import HeadSplit


class RMSNorm(nn.Module):
    """HF LlamaRMSNorm: normalise in float32, scale in the input dtype."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            # One fused op; in float32 it is bitwise equal to the explicit form below.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Linear(nn.Module):
    """An [out, in] weight slice and an optional bias; a module only so state_dict keys
    match HF. A row-parallel layer (o, down) adds its bias after the tp sum (`row_parallel`),
    so the bias is counted once, not tp times."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, bias: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(shape, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(bias, dtype=dtype)) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def row_parallel(layer: Linear, x: torch.Tensor, group: Group) -> torch.Tensor:
    """x @ W.T summed over tp, then the (replicated) bias once."""
    y = reduce_from_tp(F.linear(x, layer.weight), group)
    return y if layer.bias is None else y + layer.bias


def _cat_bias(layers: list[Linear]) -> torch.Tensor | None:
    if all(lin.bias is None for lin in layers):
        return None
    return torch.cat([lin.bias for lin in layers])  # families bias all of a group or none


@dataclass
class LayerCache:
    """Preallocated keys/values of one layer for this rank's kv heads:
    k, v [B, n_kv_local, max_len, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass(frozen=True)
class AttentionShape:
    """What a family adds to plain attention: biases on q/k/v and on o, per-head q/k norms."""

    hidden: int
    head_dim: int
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm_eps: float | None = None
    """Qwen3: RMSNorm over head_dim on each query and key head (eps), before RoPE."""


class Attention(nn.Module):
    def __init__(self, shape: AttentionShape, heads: HeadSplit, group: Group, dtype: torch.dtype):
        super().__init__()
        hd, hidden = shape.head_dim, shape.hidden
        self.hd, self.heads, self.group = hd, heads, group
        nq, nkv = heads.n_q * hd, heads.n_kv * hd
        self.q_proj = Linear((nq, hidden), dtype, nq if shape.qkv_bias else None)
        self.k_proj = Linear((nkv, hidden), dtype, nkv if shape.qkv_bias else None)
        self.v_proj = Linear((nkv, hidden), dtype, nkv if shape.qkv_bias else None)
        self.o_proj = Linear((hidden, nq), dtype, hidden if shape.o_bias else None)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if shape.qk_norm_eps is not None:
            self.q_norm = RMSNorm(hd, shape.qk_norm_eps, dtype)
            self.k_norm = RMSNorm(hd, shape.qk_norm_eps, dtype)
        self.fused_qkv: torch.Tensor | None = None
        """[q; k; v] rows in one matrix, set only inside executor.model.fusion.fused_inference."""
        self.fused_qkv_bias: torch.Tensor | None = None

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.fused_qkv is not None and not torch.is_grad_enabled():
            nq, nkv = self.heads.n_q * self.hd, self.heads.n_kv * self.hd
            qkv = F.linear(x, self.fused_qkv, self.fused_qkv_bias)
            return qkv.split([nq, nkv, nkv], dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def fuse(self) -> None:
        layers = [self.q_proj, self.k_proj, self.v_proj]
        self.fused_qkv = torch.cat([lin.weight for lin in layers])
        self.fused_qkv_bias = _cat_bias(layers)

    def unfuse(self) -> None:
        self.fused_qkv = self.fused_qkv_bias = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        cache_pos: int = 0,
    ) -> torch.Tensor:
        """x [B, T, hidden] (replicated over tp) -> [B, T, hidden] (summed over tp).
        mask: bool [B, 1, T, S] (True = attend) or None for plain causal attention."""
        b, t, _ = x.shape
        x = copy_to_tp(x, self.group)
        q, k, v = self._qkv(x)
        q = q.view(b, t, self.heads.n_q, self.hd)
        k = k.view(b, t, self.heads.n_kv, self.hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(b, t, self.heads.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            end = cache_pos + t
            cache.k[:, :, cache_pos:end] = k
            cache.v[:, :, cache_pos:end] = v
            k, v = cache.k[:, :, :end], cache.v[:, :, :end]
        rep = self.heads.n_q // self.heads.n_kv
        if rep > 1 and t == 1:
            # Decode: the `rep` query heads sharing a kv head become `rep` query rows of that
            # head ([B, n_kv, rep, hd]), so keys/values are not copied. A mask [B, 1, 1, S]
            # broadcasts over them.
            q = q.reshape(b, self.heads.n_kv, rep, self.hd)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return row_parallel(self.o_proj, out.reshape(b, 1, -1), self.group)
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and t > 1
        )
        out = out.transpose(1, 2).reshape(b, t, self.heads.n_q * self.hd)
        return row_parallel(self.o_proj, out, self.group)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate/up column-parallel, down row-parallel."""

    def __init__(
        self, hidden: int, inter_local: int, group: Group, dtype: torch.dtype, bias: bool = False
    ):
        super().__init__()
        self.group = group
        self.gate_proj = Linear((inter_local, hidden), dtype, inter_local if bias else None)
        self.up_proj = Linear((inter_local, hidden), dtype, inter_local if bias else None)
        self.down_proj = Linear((hidden, inter_local), dtype, hidden if bias else None)
        self.fused_gate_up: torch.Tensor | None = None
        """[gate; up] rows in one matrix, set only inside executor.model.fusion.fused_inference."""
        self.fused_gate_up_bias: torch.Tensor | None = None

    def fuse(self) -> None:
        self.fused_gate_up = torch.cat([self.gate_proj.weight, self.up_proj.weight])
        self.fused_gate_up_bias = _cat_bias([self.gate_proj, self.up_proj])

    def unfuse(self) -> None:
        self.fused_gate_up = self.fused_gate_up_bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = copy_to_tp(x, self.group)
        if self.fused_gate_up is not None and not torch.is_grad_enabled():
            both = F.linear(x, self.fused_gate_up, self.fused_gate_up_bias)
            gate, up = both.chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return row_parallel(self.down_proj, F.silu(gate) * up, self.group)


class Block(nn.Module):
    def __init__(self, attn: Attention, mlp: MLP, hidden: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden, eps, dtype)
        self.self_attn = attn
        self.post_attention_layernorm = RMSNorm(hidden, eps, dtype)
        self.mlp = mlp

    def forward(self, x, cos, sin, mask, cache: LayerCache | None = None, cache_pos: int = 0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_pos)
        return x + self.mlp(self.post_attention_layernorm(x))
