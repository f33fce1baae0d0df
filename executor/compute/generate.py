"""Autoregressive generation with a preallocated KV cache under any layout.

Each dp replica generates its share of the prompts. Within a replica the pipeline runs one
step at a time: stage 0 embeds, hidden states travel stage to stage, the last stage gathers
the logits of the newest position over tp (one [b, vocab] tensor per step), picks tokens and
broadcasts them (with their log-probs) back along the pipeline. Sampling uses uniforms drawn
for the *global* batch from a generator seeded identically everywhere, and each replica
takes its rows: a layout therefore never changes which tokens are sampled.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from executor.compute.sampling import choose
from executor.model import Transformer
from executor.model.fusion import fused_inference
from executor.model.layers import LayerCache
from executor.model.masks import attention_bool_mask, positions_from_mask
from executor.parallel.collectives import all_gather_dim, broadcast_
from executor.parallel.context import ParallelContext
from plans.slicing import split_range, split_sizes


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    eos_token_id: int | None = None
    pad_token_id: int = 0
    seed: int = 0
    branch: int = 1
    split_at: tuple[int, ...] = ()
    """A tree (plans.tree): before token t for t in split_at, every sequence becomes `branch`
    consecutive rows that share its KV cache (copied once) and go on independently."""
    fuse_weights: bool | None = None
    """Concatenate q/k/v and gate/up weights for the call (executor.model.fusion). None: only for
    models with hidden_size <= FUSE_MAX_HIDDEN, where per-op overhead dominates a step; for
    bigger ones each matmul is bandwidth-bound and the copy costs more than it saves."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be at least 1")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be positive (or use greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")


FUSE_MAX_HIDDEN = 512
EOS_CHECK_EVERY = 16
"""Decode steps between two looks (host syncs) at whether every sequence has ended: the loop
itself never waits on the device; at most this many steps run after the last EOS (their
tokens are pads and are cut off)."""


@dataclass(frozen=True)
class GenerationOutput:
    tokens: torch.Tensor
    """[b, n] new tokens of this replica's prompts (a tree: b * branch ** len(split_at) rows,
    each prompt's leaves consecutive); pad after a sequence's EOS. n <= max_new_tokens
    (the loop stops once every sequence of the replica has ended)."""
    lengths: torch.Tensor
    """[b] generated tokens per sequence, EOS included."""
    logprobs: torch.Tensor
    """[b, n] float32 log-prob of each new token under softmax(logits / temperature); 0 after EOS."""


class _Stepper:
    """One forward of the pipeline for the positions given, ending in full-vocab logits of
    the last position on the last stage (None elsewhere)."""

    def __init__(self, model: Transformer, ctx: ParallelContext, b: int, max_len: int):
        self.model, self.ctx = model, ctx
        self.caches = model.new_cache(b, max_len)
        self.vocab_sizes = split_sizes(model.spec.vocab_size, ctx.tp_size)
        self.device = next(model.parameters()).device

    def split(self, f: int) -> None:
        """Every row's cache becomes f consecutive rows (a tree's branches)."""
        self.caches = [
            LayerCache(c.k.repeat_interleave(f, 0), c.v.repeat_interleave(f, 0))
            for c in self.caches
        ]

    def __call__(
        self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None, cache_pos: int
    ) -> torch.Tensor | None:
        m, ctx = self.model, self.ctx
        if ctx.is_first_stage:
            x = ids
        else:
            x = torch.empty((*ids.shape, m.spec.hidden_size), dtype=m.dtype, device=self.device)
            dist.recv(x, src=ctx.prev_stage_rank, group=ctx.pp_group)
        h = m.body(x, pos, mask, self.caches, cache_pos)
        if not ctx.is_last_stage:
            dist.send(h.contiguous(), dst=ctx.next_stage_rank, group=ctx.pp_group)
            return None
        local = m.head(h[:, -1])  # [b, vocab_local]
        return all_gather_dim(local, ctx.tp_group, self.vocab_sizes, dim=-1)


@torch.no_grad()
def generate(
    model: Transformer,
    ctx: ParallelContext,
    prompts: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cfg: GenerationConfig,
) -> GenerationOutput:
    """prompts [B, P] left-padded global batch (the same on every rank of the mesh),
    attention_mask [B, P] (None = no padding). Returns this dp replica's sequences on every
    stage of its pipeline."""
    if model.spec.head != "lm":
        raise ValueError("generation needs an LM head")
    fuse = cfg.fuse_weights
    if fuse is None:
        fuse = model.spec.hidden_size <= FUSE_MAX_HIDDEN
    with fused_inference(model) if fuse else nullcontext(model):
        return _decode(model, ctx, prompts, attention_mask, cfg)


def _decode(model, ctx, prompts, attention_mask, cfg) -> GenerationOutput:
    """`generate` with the model's weights as decoding uses them."""
    big_b, p_len = prompts.shape
    lo, hi = split_range(big_b, ctx.dp_size, ctx.dp_rank)
    ids = prompts[lo:hi]
    b, n_new = hi - lo, cfg.max_new_tokens
    device = next(model.parameters()).device
    ids = ids.to(device)
    padded = attention_mask is not None and not bool(attention_mask.all())
    am = (attention_mask[lo:hi] if attention_mask is not None else torch.ones_like(ids)).to(device)
    key_valid = torch.ones(b, p_len + n_new, dtype=torch.bool, device=device)
    key_valid[:, :p_len] = am.bool()

    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    step = _Stepper(model, ctx, b, p_len + n_new)
    tokens = torch.full((b, n_new), cfg.pad_token_id, dtype=torch.long, device=device)
    logps = torch.zeros(b, n_new, dtype=torch.float32, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)

    # Prefill: positions count real tokens only, so left padding does not shift RoPE.
    pos = positions_from_mask(am)
    mask = attention_bool_mask(key_valid[:, :p_len], p_len) if padded else None
    logits = step(ids, pos, mask, 0)
    next_pos = am.long().sum(-1)  # position id of the token fed next, [b]
    state = [tokens, logps, done, lengths, next_pos, key_valid]
    for t in range(n_new):
        if t in cfg.split_at:  # copy each open branch `branch` times, its cache included
            f = cfg.branch
            state = [x.repeat_interleave(f, 0) for x in state]
            tokens, logps, done, lengths, next_pos, key_valid = state
            step.split(f)
            logits = None if logits is None else logits.repeat_interleave(f, 0)
            big_b, lo, hi, b = big_b * f, lo * f, hi * f, b * f
        pair = torch.empty(2, b, dtype=torch.float64, device=device)
        if ctx.is_last_stage:
            assert logits is not None
            u = None
            if not cfg.greedy:
                u = torch.rand(big_b, generator=gen, device=device)[lo:hi]
            tok, lp = choose(logits, cfg.greedy, cfg.temperature, cfg.top_p, u)
            pair[0], pair[1] = tok, lp
        # Token ids < 2**53 travel exactly in float64, so one broadcast carries both.
        broadcast_(pair, ctx.last_stage_rank, ctx.pp_group)
        raw, lp = pair[0].long(), pair[1].float()
        tok = torch.where(done, cfg.pad_token_id, raw)
        tokens[:, t] = tok
        logps[:, t] = torch.where(done, 0.0, lp)
        lengths += (~done).long()
        if cfg.eos_token_id is not None:
            done |= tok == cfg.eos_token_id
        if t == n_new - 1:
            break
        # Every stage reads the same `done` (the broadcast pair), so all stop at the same t;
        # a tree with a split still ahead goes on (its copies may not be done).
        ahead = any(d > t for d in cfg.split_at)
        if (
            cfg.eos_token_id is not None
            and (t + 1) % EOS_CHECK_EVERY == 0
            and not ahead
            and bool(done.all())
        ):
            break
        cur = p_len + t  # cache slot of the token being fed
        mask = key_valid[:, None, None, : cur + 1] if padded else None
        # Ended rows are fed the model's own pick (always a valid id, unlike some pad ids);
        # their outputs are discarded.
        logits = step(raw.unsqueeze(1), next_pos.unsqueeze(1), mask, cur)
        next_pos += 1
    # The columns up to the longest sequence: what stopping at the last EOS would have kept
    # (after a sequence's EOS its columns hold pads and zero log-probs).
    n = int(lengths.max()) if b else 0
    return GenerationOutput(tokens[:, :n], lengths, logps[:, :n])
