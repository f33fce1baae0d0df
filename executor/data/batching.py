"""Cutting a batch (a dict of per-sample tensors, leading dim B) into a dp rank's share and
into micro-batches, with the same split_range used for parameters."""

from __future__ import annotations

import torch

from executor.model.masks import attention_bool_mask, positions_from_mask
from plans.slicing import split_range

Batch = dict[str, torch.Tensor]


def batch_size(batch: Batch) -> int:
    return batch["input_ids"].shape[0]


def rows(batch: Batch, start: int, stop: int) -> Batch:
    return {k: v[start:stop] for k, v in batch.items()}


def _unit_range(b: int, unit: int, parts: int, index: int) -> tuple[int, int]:
    """split_range over groups of `unit` consecutive rows (a preference pair, a prompt's
    candidate list), which must land on the same rank and in the same micro-batch."""
    if b % unit:
        raise ValueError(f"a batch of {b} rows is not made of groups of {unit}")
    lo, hi = split_range(b // unit, parts, index)
    return lo * unit, hi * unit


def dp_share(batch: Batch, dp: int, dp_rank: int, unit: int = 1) -> Batch:
    """The samples dp rank `dp_rank` works on."""
    return rows(batch, *_unit_range(batch_size(batch), unit, dp, dp_rank))


def micro_batches(batch: Batch, n: int, unit: int = 1) -> list[Batch]:
    """`n` consecutive pieces; empty ones are dropped (every stage drops the same ones)."""
    b = batch_size(batch)
    pieces = [_unit_range(b, unit, n, i) for i in range(n)]
    return [rows(batch, a, z) for a, z in pieces if z > a]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """A host batch on the worker's device. On a GPU through pinned memory and without
    waiting: the copy runs on the stream ahead of the kernels that read it. On a CPU the
    very tensors."""
    if device.type == "cpu":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


def padded(micro: list[Batch]) -> list[bool]:
    """Whether each micro-batch has padding, read from the device in one transfer for all of
    them: the per-micro-batch loops then decide between plain causal attention and a mask
    without waiting on the device."""
    flags = [mb["attention_mask"].all() for mb in micro if "attention_mask" in mb]
    if not flags:
        return [False] * len(micro)
    has_all = iter(torch.stack(flags).tolist())  # one host sync for every micro-batch
    return [("attention_mask" in mb and not next(has_all)) for mb in micro]


def model_inputs(
    mb: Batch, has_padding: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(positions [b, T], bool mask [b, 1, T, T] or None) of a micro-batch. Without an
    `attention_mask`, or with one that has no padding, plain causal attention is used.
    `has_padding`: known already (`padded`), else read here (a host sync)."""
    ids = mb["input_ids"]
    am = mb.get("attention_mask")
    if has_padding is None:
        has_padding = am is not None and not bool(am.all())
    if am is None or not has_padding:
        pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        return pos, None
    return positions_from_mask(am), attention_bool_mask(am.bool(), ids.shape[1])
