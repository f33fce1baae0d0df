"""Attention masks and position ids for left-padded batches."""

from __future__ import annotations

import torch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] 0/1 mask -> position ids [B, S]: 0 at each sequence's first real token, as
    HF does for left padding (pads get 0; their outputs are ignored)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


def attention_bool_mask(key_valid: torch.Tensor, q_len: int) -> torch.Tensor:
    """key_valid [B, S] (True for real tokens, S = cached + new) -> bool [B, 1, q_len, S]:
    causal over the last q_len positions and blind to padding. A query may always see
    itself, so a pad query's row is never all-False (that would make SDPA return NaN, which
    would poison gradients even though the row is ignored)."""
    s = key_valid.shape[-1]
    q_idx = torch.arange(s - q_len, s, device=key_valid.device)[:, None]  # [T, 1]
    k_idx = torch.arange(s, device=key_valid.device)[None, :]  # [1, S]
    causal = k_idx <= q_idx  # [T, S]
    mask = causal[None] & key_valid[:, None, :].bool()
    mask = mask | (k_idx == q_idx)[None]
    return mask.unsqueeze(1)
