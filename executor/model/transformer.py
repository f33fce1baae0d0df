"""One pipeline stage of a Llama, Mistral, Qwen2 or Qwen3 model, holding this rank's
tensor-parallel slices.

The module tree mirrors HF (`model.embed_tokens`, `model.layers.<global i>`, `model.norm`,
`lm_head` / `score`), so `state_dict()` keys are HF checkpoint keys and plans.layout's
table describes every parameter.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from executor.model.layers import MLP, Attention, AttentionShape, Block, LayerCache, RMSNorm
from executor.model.rope import Rotary
from executor.parallel.collectives import Group, copy_to_tp, reduce_from_tp
from executor.parallel.context import ParallelContext
from plans.layout import ParamSlice, head_split, param_slices, stage_layers
from plans.model import ModelSpec
from plans.slicing import split_range


class VocabParallelEmbedding(nn.Module):
    """Rows [lo, hi) of the embedding; ids outside the range contribute zeros and the tp
    all-reduce assembles the full lookup."""

    def __init__(self, rows: tuple[int, int], hidden: int, group: Group, dtype: torch.dtype):
        super().__init__()
        self.lo, self.hi, self.group = rows[0], rows[1], group
        self.weight = nn.Parameter(torch.empty(rows[1] - rows[0], hidden, dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> [B, T, hidden]."""
        if self.group is None:
            return F.embedding(ids, self.weight)
        outside = (ids < self.lo) | (ids >= self.hi)
        local = (ids - self.lo).masked_fill(outside, 0)
        emb = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(emb, self.group)


class LMHead(nn.Module):
    """Vocab-parallel output projection: logits for vocab rows [lo, hi) only."""

    def __init__(self, rows: tuple[int, int], hidden: int, group: Group, dtype: torch.dtype):
        super().__init__()
        self.lo, self.hi, self.group = rows[0], rows[1], group
        self.weight = nn.Parameter(torch.empty(rows[1] - rows[0], hidden, dtype=dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, T, hidden] -> logits shard [B, T, hi - lo]."""
        return F.linear(copy_to_tp(h, self.group), self.weight)


class ValueHead(nn.Module):
    """HF LlamaForSequenceClassification's `score` with one label: a scalar per token."""

    def __init__(self, hidden: int, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, hidden, dtype=dtype))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, T, hidden] -> values [B, T]."""
        return F.linear(h, self.weight).squeeze(-1)


class Transformer(nn.Module):
    """Stage `pp_rank` of `pp`, tp slice `tp_rank` of `tp`. Parameters are uninitialised;
    fill them with executor.model.weights or executor.model.hf_checkpoint."""

    def __init__(
        self,
        spec: ModelSpec,
        tp: int = 1,
        tp_rank: int = 0,
        pp: int = 1,
        pp_rank: int = 0,
        tp_group: Group = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        """`device`: where the (uninitialised) parameters are allocated, torch's default
        device if None; "meta" for a shell whose parameters executor.realloc.model_shards
        replaces (a view: nothing is allocated twice)."""
        super().__init__()
        with torch.device(device) if device is not None else nullcontext():
            self._build(spec, tp, tp_rank, pp, pp_rank, tp_group, dtype)

    def _build(self, spec, tp, tp_rank, pp, pp_rank, tp_group, dtype) -> None:
        self.spec, self.dtype = spec, dtype
        self.recompute = False
        """Activation checkpointing per block in training (the call's strategy.recompute)."""
        self.tp, self.tp_rank, self.pp, self.pp_rank = tp, tp_rank, pp, pp_rank
        self.first, self.last = pp_rank == 0, pp_rank == pp - 1
        self.slices: dict[str, ParamSlice] = {
            s.name: s for s in param_slices(spec, tp, tp_rank, pp, pp_rank)
        }
        self.layer_ids = stage_layers(spec, pp, pp_rank)
        self.vocab_rows = split_range(spec.vocab_size, tp, tp_rank)
        h = spec.hidden_size
        heads = head_split(spec, tp, tp_rank)
        inter = split_range(spec.intermediate_size, tp, tp_rank)
        self.rotary = Rotary(spec)
        shape = AttentionShape(
            h,
            spec.head_dim,
            qkv_bias=spec.qkv_bias,
            o_bias=spec.o_bias,
            qk_norm_eps=spec.rms_norm_eps if spec.qk_norm else None,
        )

        self.model = nn.Module()
        if self.first:
            self.model.embed_tokens = VocabParallelEmbedding(self.vocab_rows, h, tp_group, dtype)
        self.model.layers = nn.ModuleDict(
            {
                str(i): Block(
                    Attention(shape, heads, tp_group, dtype),
                    MLP(h, inter[1] - inter[0], tp_group, dtype, spec.mlp_bias),
                    h,
                    spec.rms_norm_eps,
                    dtype,
                )
                for i in self.layer_ids
            }
        )
        self.lm_head: LMHead | None = None
        self.score: ValueHead | None = None
        if self.last:
            self.model.norm = RMSNorm(h, spec.rms_norm_eps, dtype)
            if spec.head == "value":
                self.score = ValueHead(h, dtype)
            else:
                self.lm_head = LMHead(self.vocab_rows, h, tp_group, dtype)
                if spec.tie_word_embeddings and self.first:
                    self.lm_head.weight = self.model.embed_tokens.weight

    @classmethod
    def for_context(
        cls,
        spec: ModelSpec,
        ctx: ParallelContext,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Transformer:
        return cls(
            spec, ctx.tp_size, ctx.tp_rank, ctx.pp_size, ctx.pp_rank, ctx.tp_group, dtype, device
        )

    def new_cache(
        self, batch: int, max_len: int, device: torch.device | None = None
    ) -> list[LayerCache]:
        """Empty KV cache for this stage's layers."""
        device = device or next(self.parameters()).device
        caches = []
        for blk in self.model.layers.values():
            attn: Attention = blk.self_attn
            shape = (batch, attn.heads.n_kv, max_len, attn.hd)
            caches.append(
                LayerCache(
                    torch.zeros(shape, dtype=self.dtype, device=device),
                    torch.zeros(shape, dtype=self.dtype, device=device),
                )
            )
        return caches

    def body(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None = None,
        caches: list[LayerCache] | None = None,
        cache_pos: int = 0,
    ) -> torch.Tensor:
        """This stage's blocks. x: token ids [B, T] on the first stage, hidden [B, T, hidden]
        otherwise; positions [B, T]; mask bool [B, 1, T, S] or None (causal, no cache).
        Returns hidden [B, T, hidden], after the final norm on the last stage."""
        if self.first:
            x = self.model.embed_tokens(x)
        mask = self._windowed(mask, positions.shape[1], cache_pos, positions.device)
        # Position ids never exceed the token's index in the (cached) sequence.
        cos, sin = self.rotary(positions, x.dtype, cache_pos + positions.shape[1])
        recompute = self.recompute and caches is None and torch.is_grad_enabled()
        for j, blk in enumerate(self.model.layers.values()):
            if recompute:  # keep the block's input only; backward runs the block again
                x = checkpoint(blk, x, cos, sin, mask, None, cache_pos, use_reentrant=False)
            else:
                x = blk(x, cos, sin, mask, caches[j] if caches is not None else None, cache_pos)
        if self.last:
            x = self.model.norm(x)
        return x

    def _windowed(
        self, mask: torch.Tensor | None, t: int, cache_pos: int, device: torch.device
    ) -> torch.Tensor | None:
        """`mask` narrowed to the sliding window (Mistral): query slot i sees key slots j with
        i - window < j <= i, as transformers' sliding-window mask. Slots, not position ids:
        real tokens are contiguous (left padding), so the two differ only on pads, which the
        mask hides anyway. Where the window covers every key the mask is unchanged (plain
        causal attention is then exact and cheaper)."""
        w = self.spec.sliding_window
        if w is None or cache_pos + t <= w:
            return mask
        q_idx = torch.arange(cache_pos, cache_pos + t, device=device)[:, None]
        k_idx = torch.arange(cache_pos + t, device=device)[None, :]
        band = ((k_idx <= q_idx) & (k_idx > q_idx - w))[None, None]  # [1, 1, T, S]
        return band if mask is None else mask & band

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Last stage: logits shard [B, T, vocab_local] or values [B, T]."""
        if self.score is not None:
            return self.score(h)
        assert self.lm_head is not None, "head() runs on the last stage only"
        return self.lm_head(h)

    def forward(self, x, positions, mask=None, caches=None, cache_pos: int = 0) -> torch.Tensor:
        h = self.body(x, positions, mask, caches, cache_pos)
        return self.head(h) if self.last else h
