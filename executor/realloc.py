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

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from executor.parallel import DEFAULT_TIMEOUT
from executor.transfer_plan import SAMPLES, Box, Piece, Transfer, TransferPlan

Views = Sequence[torch.Tensor]
Like = Sequence[tuple[tuple[int, ...], torch.dtype]]


def this_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _index(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def _offsets(like: Like) -> tuple[list[int], int]:
    """Byte offset of each packed tensor and the buffer size. Offsets are multiples of each
    tensor's element size, so its region can be viewed as its dtype; a single-dtype message
    (parameters) has no padding at all, so regions kept as tensors waste nothing."""
    offsets, end = [], 0
    for shape, dtype in like:
        size = dtype.itemsize
        end = -(-end // size) * size
        offsets.append(end)
        end += math.prod(shape) * size
    return offsets, end


def _regions(buf: torch.Tensor, like: Like) -> list[torch.Tensor]:
    offsets, _ = _offsets(like)
    return [
        buf[o : o + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
        for o, (shape, dtype) in zip(offsets, like, strict=True)
    ]


def default_chunk_bytes() -> int | None:
    """Gloo: send each message in 8 MiB pieces, so packing the next piece overlaps the
    transfer of the previous one (on CPU the copy into fresh memory costs about as much as
    the transfer). Other backends: one op per message, all posted in one batch (NCCL needs
    its sends and receives grouped)."""
    return 8 * 2**20 if dist.is_initialized() and dist.get_backend() == "gloo" else None


def _pieces(n: int, chunk: int | None) -> list[tuple[int, int]]:
    step = chunk or n
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def exchange(
    plan: TransferPlan,
    read: Callable[[Transfer], Views],
    like: Callable[[Transfer], Like],
    place: Callable[[Transfer, Views], None],
    rank: int | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    chunk_bytes: int | None = -1,
) -> None:
    """Run this rank's part of `plan`. `read(t)`: the source views of a transfer this rank
    sends or copies locally; `like(t)`: their shapes and dtypes, known to the receiver;
    `place(t, views)`: hands the receiver the data of `t`, the source views for a local
    transfer, regions of the receive buffer for a remote one (to copy out, or to keep).
    `chunk_bytes`: None = each message in one op; -1 = `default_chunk_bytes()`."""
    rank = this_rank() if rank is None else rank
    chunk = default_chunk_bytes() if chunk_bytes == -1 else chunk_bytes
    for t in plan.local(rank):
        place(t, read(t))
    sends, recvs = plan.sends(rank), plan.recvs(rank)
    if not sends and not recvs:
        return
    # Every receive is posted before any packing starts, and nothing blocks until the final
    # wait, so no order of peers can deadlock. Pieces of one message are tagged by index.
    recv_ops, received = [], []
    for peer, ts in sorted(recvs.items()):
        likes = [list(like(t)) for t in ts]
        buf = torch.empty(_offsets([x for lk in likes for x in lk])[1], dtype=torch.uint8)
        for i, (a, b) in enumerate(_pieces(buf.numel(), chunk)):
            recv_ops.append(dist.P2POp(dist.irecv, buf[a:b], peer, tag=i))
        received.append((buf, ts, likes))
    works = dist.batch_isend_irecv(recv_ops) if recv_ops and chunk else []
    send_ops = [] if chunk else recv_ops
    for peer, ts in sorted(sends.items()):
        views = [v for t in ts for v in read(t)]
        like_all = [(tuple(v.shape), v.dtype) for v in views]
        offsets, size = _offsets(like_all)
        buf = torch.empty(size, dtype=torch.uint8)
        pieces = iter(enumerate(_pieces(size, chunk)))
        todo = next(pieces, None)
        for region, v, o in zip(_regions(buf, like_all), views, offsets, strict=True):
            region.copy_(v)
            packed = o + region.numel() * region.element_size()
            while chunk and todo is not None and todo[1][1] <= packed:
                i, (a, b) = todo  # this piece is complete: on its way while we pack on
                works.append(dist.isend(buf[a:b], peer, tag=i))
                todo = next(pieces, None)
        if not chunk:
            send_ops.append(dist.P2POp(dist.isend, buf, peer, tag=0))
    if send_ops:
        works.extend(dist.batch_isend_irecv(send_ops))
    for work in works:
        work.wait(timeout)
    for buf, ts, likes in received:
        regions = iter(_regions(buf, [x for lk in likes for x in lk]))
        for t, lk in zip(ts, likes, strict=True):
            place(t, [next(regions) for _ in lk])


def _kept(plan: TransferPlan, rank: int) -> set[str]:
    """Destination pieces this rank does not copy: those equal to a source piece it holds
    (it keeps that very tensor), and those that arrive whole from a peer that sends nothing
    else (they stay in the receive buffer, which then holds nothing but them)."""
    dst = plan.dst_layout.get(rank, {})
    src = plan.src_layout.get(rank, {})
    out = {
        t.dst_name for t in plan.local(rank) if dst[t.dst_name].box == t.box == src[t.src_name].box
    }
    for ts in plan.recvs(rank).values():
        if all(dst[t.dst_name].box == t.box for t in ts):
            out.update(t.dst_name for t in ts)
    return out


def reallocate(
    plan: TransferPlan,
    shards: MutableMapping[str, torch.Tensor] | None,
    dtype: torch.dtype,
    keep_source: bool = True,
    timeout: timedelta = DEFAULT_TIMEOUT,
    chunk_bytes: int | None = -1,
) -> dict[str, torch.Tensor]:
    """Move a model's parameters along `plan` (from executor.transfer_plan.plan_params).

    `shards`: this rank's source tensors by state_dict name (None or empty off the source
    mesh). Returns this rank's destination tensors by name ({} off the destination mesh),
    contiguous; a destination piece equal to a source piece on this rank is that tensor, and
    pieces that arrive whole from one peer share that peer's receive buffer.
    `keep_source=False` means the model's home moves: `shards` is emptied afterwards, so once
    the caller drops its other references the source memory is freed. With `keep_source=True`
    (a temporary generation copy) the result may share tensors with `shards`; drop the result
    to release what it added."""
    rank = this_rank()
    shards = {} if shards is None else shards
    src_pieces, dst_pieces = plan.src_layout.get(rank, {}), plan.dst_layout.get(rank, {})
    for name in src_pieces:
        if shards[name].dtype != dtype:
            raise TypeError(f"{name} is {shards[name].dtype}, the move is {dtype}")
    kept = _kept(plan, rank)
    out = {n: torch.empty(p.shape, dtype=dtype) for n, p in dst_pieces.items() if n not in kept}

    def place(t: Transfer, views: Views) -> None:
        if t.dst_name in kept:
            out[t.dst_name] = views[0] if t.src != rank else shards[t.src_name]
        else:
            out[t.dst_name][_index(dst_pieces[t.dst_name].relative(t.box))].copy_(views[0])

    with torch.no_grad():
        exchange(
            plan,
            read=lambda t: [shards[t.src_name][_index(src_pieces[t.src_name].relative(t.box))]],
            like=lambda t: [(tuple(b - a for a, b in t.box), dtype)],
            place=place,
            rank=rank,
            timeout=timeout,
            chunk_bytes=chunk_bytes,
        )
    if not keep_source:
        shards.clear()
    return {n: out[n] for n in dst_pieces}


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
    chunk_bytes: int | None = -1,
) -> dict[str, torch.Tensor]:
    """Move a batch along `plan` (from plan_batch): every key of `schema`, rows of this rank's
    share. `batch` is this rank's source share (None off the producer's mesh); the result is
    its consumer share ({} off the consumer's mesh). Same sharing and `keep_source` rules as
    `reallocate`."""
    rank = this_rank()
    batch = {} if batch is None else batch
    keys = sorted(schema)
    src: Piece | None = plan.src_layout.get(rank, {}).get(SAMPLES)
    dst: Piece | None = plan.dst_layout.get(rank, {}).get(SAMPLES)
    kept = _kept(plan, rank)
    out: dict[str, torch.Tensor] = {}
    if dst is not None and SAMPLES not in kept:
        rows = dst.shape[0]
        out = {k: torch.empty((rows, *schema[k][0]), dtype=schema[k][1]) for k in keys}

    def rows_of(piece: Piece | None, t: Transfer) -> tuple[int, int]:
        assert piece is not None
        (a, b), o = t.box[0], piece.box[0][0]
        return a - o, b - o

    def place(t: Transfer, views: Views) -> None:
        if SAMPLES in kept:
            out.update(zip(keys, views if t.src != rank else [batch[k] for k in keys], strict=True))
        else:
            a, b = rows_of(dst, t)
            for k, v in zip(keys, views, strict=True):
                out[k][a:b].copy_(v)

    def read(t: Transfer) -> Views:
        a, b = rows_of(src, t)
        return [batch[k][a:b] for k in keys]

    def like(t: Transfer) -> Like:
        n = t.box[0][1] - t.box[0][0]
        return [((n, *schema[k][0]), schema[k][1]) for k in keys]

    exchange(plan, read, like, place, rank=rank, timeout=timeout, chunk_bytes=chunk_bytes)
    if not keep_source:
        batch.clear()
    return out
