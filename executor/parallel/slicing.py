"""Tensor helpers over the one split rule of plans.slicing."""

from __future__ import annotations

import torch

from plans.slicing import split_range


def take(t: torch.Tensor, dim: int, start: int, stop: int) -> torch.Tensor:
    """A contiguous copy of t[..., start:stop, ...] along `dim` (a copy, so callers may own it)."""
    return t.narrow(dim, start, stop - start).contiguous()


def shard(t: torch.Tensor, dim: int, parts: int, i: int) -> torch.Tensor:
    """Piece `i` of `t` cut evenly along `dim`."""
    a, b = split_range(t.shape[dim], parts, i)
    return take(t, dim, a, b)
