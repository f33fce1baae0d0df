"""Carrying out a TransferPlan with torch.distributed point-to-point ops.

Each rank packs everything it sends to one peer into one flat byte buffer, posts all its sends
and receives in a single `dist.batch_isend_irecv`, waits, and unpacks. Only the ranks that
appear in the plan take part; a rank outside it returns at once, so moves on disjoint sets of
ranks run concurrently. Both ends of a pair read the plan's one global order, so packing and
unpacking agree without any metadata message. A rank that is both source and destination of
a piece copies it locally, or keeps the very same tensor when the pieces are equal.

Parameters (`reallocate`) and batches (`move_batch`) use the same `exchange`: a parameter
transfer is one view per side, a batch transfer one view per data key (rows of each tensor).
Ranks are global ranks of the default process group (which may be larger than both meshes).
With NCCL, the first p2p call on a group must involve all its ranks; gloo has no such rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from executor.parallel import DEFAULT_TIMEOUT
from executor.transfer_plan import SAMPLES, Box, Piece, Transfer, TransferPlan

ViewsOf = Callable[[Transfer], Sequence[torch.Tensor]]
_ALIGN = 16  # byte offset of each packed tensor, so any dtype can view its part of the buffer


def this_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _index(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def _nbytes(t: torch.Tensor) -> int:
    return -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN


def _region(buf: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """The part of the byte buffer that holds a tensor shaped like `like`."""
    n = like.numel() * like.element_size()
    return buf[offset : offset + n].view(like.dtype).view(like.shape)


def exchange(
    plan: TransferPlan,
    read: ViewsOf,
    write: ViewsOf,
    rank: int | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run this rank's part of `plan`: `read(t)` gives the source views of a transfer this rank
    sends (or copies locally), `write(t)` the destination views it fills, in matching order."""
    rank = this_rank() if rank is None else rank
    for t in plan.local(rank):
        for d, s in zip(write(t), read(t), strict=True):
            if d.data_ptr() != s.data_ptr() or d.shape != s.shape:
                d.copy_(s)
    sends, recvs = plan.sends(rank), plan.recvs(rank)
    if not sends and not recvs:
        return
    ops, unpack = [], []
    # One op per peer and direction, posted in peer order; with all of them in flight at
    # once no ordering between pairs can deadlock.
    for peer, ts in sorted(sends.items()):
        views = [v for t in ts for v in read(t)]
        buf = torch.empty(sum(_nbytes(v) for v in views), dtype=torch.uint8)
        offset = 0
        for v in views:
            _region(buf, offset, v).copy_(v)
            offset += _nbytes(v)
        ops.append(dist.P2POp(dist.isend, buf, peer))
    for peer, ts in sorted(recvs.items()):
        views = [v for t in ts for v in write(t)]
        buf = torch.empty(sum(_nbytes(v) for v in views), dtype=torch.uint8)
        ops.append(dist.P2POp(dist.irecv, buf, peer))
        unpack.append((buf, views))
    for work in dist.batch_isend_irecv(ops):
        work.wait(timeout)
    for buf, views in unpack:
        offset = 0
        for v in views:
            v.copy_(_region(buf, offset, v))
            offset += _nbytes(v)


def _aliases(plan: TransferPlan, rank: int) -> dict[str, str]:
    """Destination name -> source name on this rank when the whole piece is already here
    (the same box of the same tensor): it is kept as is, no copy."""
    out = {}
    dst = plan.dst_layout.get(rank, {})
    src = plan.src_layout.get(rank, {})
    for t in plan.local(rank):
        if dst[t.dst_name].box == t.box == src[t.src_name].box:
            out[t.dst_name] = t.src_name
    return out


def reallocate(
    plan: TransferPlan,
    shards: MutableMapping[str, torch.Tensor] | None,
    dtype: torch.dtype,
    keep_source: bool = True,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> dict[str, torch.Tensor]:
    """Move a model's parameters along `plan` (from executor.transfer_plan.plan_params).

    `shards`: this rank's source tensors by state_dict name (None or empty off the source
    mesh). Returns this rank's destination tensors by name ({} off the destination mesh). A
    destination piece equal to a source piece on the same rank is the same tensor object.
    `keep_source=False` means the model's home moves: `shards` is emptied afterwards, so once
    the caller drops its other references the source memory is freed. With `keep_source=True`
    (a temporary generation copy) the result may share tensors with `shards`; drop the result
    to release what it added."""
    rank = this_rank()
    shards = {} if shards is None else shards
    for name in plan.src_layout.get(rank, {}):
        if shards[name].dtype != dtype:
            raise TypeError(f"{name} is {shards[name].dtype}, the move is {dtype}")
    alias = _aliases(plan, rank)
    out = {
        name: shards[alias[name]] if name in alias else torch.empty(piece.shape, dtype=dtype)
        for name, piece in plan.dst_layout.get(rank, {}).items()
    }
    src_pieces, dst_pieces = plan.src_layout.get(rank, {}), plan.dst_layout.get(rank, {})
    with torch.no_grad():
        exchange(
            plan,
            read=lambda t: [shards[t.src_name][_index(src_pieces[t.src_name].relative(t.box))]],
            write=lambda t: [out[t.dst_name][_index(dst_pieces[t.dst_name].relative(t.box))]],
            rank=rank,
            timeout=timeout,
        )
    if not keep_source:
        shards.clear()
    return out


BatchSchema = Mapping[str, tuple[tuple[int, ...], torch.dtype]]
"""Data key -> (shape after the sample dimension, dtype): what a receiver allocates."""


def batch_schema(
    batch: Mapping[str, torch.Tensor],
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape[1:]), v.dtype) for k, v in batch.items()}


def move_batch(
    plan: TransferPlan,
    batch: MutableMapping[str, torch.Tensor] | None,
    schema: BatchSchema,
    keep_source: bool = True,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> dict[str, torch.Tensor]:
    """Move a batch along `plan` (from plan_batch): every key of `schema`, rows of this rank's
    share. `batch` is this rank's source share (None off the producer's mesh); the result is
    its consumer share ({} off the consumer's mesh). Same aliasing and `keep_source` rules as
    `reallocate`."""
    rank = this_rank()
    batch = {} if batch is None else batch
    keys = sorted(schema)
    src: Piece | None = plan.src_layout.get(rank, {}).get(SAMPLES)
    dst: Piece | None = plan.dst_layout.get(rank, {}).get(SAMPLES)
    out: dict[str, torch.Tensor] = {}
    if dst is not None:
        if SAMPLES in _aliases(plan, rank):
            out = {k: batch[k] for k in keys}
        else:
            rows = dst.shape[0]
            out = {k: torch.empty((rows, *schema[k][0]), dtype=schema[k][1]) for k in keys}

    def rows_of(tensors: Mapping[str, torch.Tensor], piece: Piece | None, t: Transfer) -> list:
        assert piece is not None
        (a, b), o = t.box[0], piece.box[0][0]
        return [tensors[k][a - o : b - o] for k in keys]

    exchange(
        plan,
        read=lambda t: rows_of(batch, src, t),
        write=lambda t: rows_of(out, dst, t),
        rank=rank,
        timeout=timeout,
    )
    if not keep_source:
        batch.clear()
    return out
