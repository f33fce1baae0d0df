"""Filling a sharded model: seeded random initialisation that is identical under every
layout, and copying in slices of a full (HF-keyed) state dict."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch

from executor.model import Transformer
from plans.layout import ParamSlice


def init_full(source: str, shape: tuple[int, ...], seed: int, std: float = 0.02) -> torch.Tensor:
    """The full random value of one checkpoint tensor: a generator seeded from (seed, key), so
    every rank builds the same tensor whatever else it holds, then keeps only its slice."""
    if source.endswith("norm.weight"):
        return torch.ones(shape)
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(source.encode())) % 2**63)
    return torch.randn(shape, generator=g) * std


def random_init_(model: Transformer, seed: int = 0, std: float = 0.02) -> Transformer:
    """Initialise every parameter with the slice of its seeded full tensor. One full tensor
    at a time, so peak extra memory is the largest single parameter."""
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, sl in model.slices.items():
            full = init_full(sl.source, sl.full_shape, seed, std)
            params[name].copy_(full[sl.index()])
    return model


def load_full_state_(model: Transformer, state: Mapping[str, torch.Tensor]) -> Transformer:
    """Copy this rank's slices out of a full HF-keyed state dict (e.g. a transformers model's
    `state_dict()`)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, sl in model.slices.items():
            key = sl.source if sl.source in state else name
            params[name].copy_(state[key][sl.index()])
    return model


def local_slice(sl: ParamSlice, full: torch.Tensor) -> torch.Tensor:
    """The part of `full` this slice describes."""
    return full[sl.index()]
