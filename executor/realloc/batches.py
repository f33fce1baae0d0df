"""Moving a batch of samples between the meshes of two calls: rows of every data key, along a
plans.transfer.plan_batch plan, with the same `post` as parameters."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from datetime import timedelta

import torch

from executor.parallel.context import DEFAULT_TIMEOUT
from executor.realloc.move import DIRECT, Pending, Views, post, this_rank
from plans.transfer import SAMPLES, Piece, Transfer, TransferPlan, kept_pieces

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
    direct_bytes: int = DIRECT,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Move a batch along `plan` (from plan_batch): every key of `schema`, rows of this rank's
    share. `batch` is this rank's source share (None off the producer's mesh); the result is
    its consumer share ({} off the consumer's mesh). Same sharing and `keep_source` rules as
    `reallocate`."""
    out, pending = post_batch(plan, batch, schema, timeout, chunk_bytes, direct_bytes, device)
    pending.wait()
    if not keep_source and batch is not None:
        batch.clear()
    return out


def post_batch(
    plan: TransferPlan,
    batch: Mapping[str, torch.Tensor] | None,
    schema: BatchSchema,
    timeout: timedelta = DEFAULT_TIMEOUT,
    chunk_bytes: int | None = -1,
    direct_bytes: int = DIRECT,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, torch.Tensor], Pending]:
    """`move_batch` without waiting: (this rank's consumer share, to be read only after the
    pending part's wait(); the pending part). The source share must stay unchanged until
    then. This is how a producer hands its outputs over and goes on with its next call."""
    rank = this_rank()
    batch = {} if batch is None else batch
    keys = sorted(schema)
    src: Piece | None = plan.src_layout.get(rank, {}).get(SAMPLES)
    dst: Piece | None = plan.dst_layout.get(rank, {}).get(SAMPLES)
    out: dict[str, torch.Tensor] = {}
    if dst is not None:
        if SAMPLES in kept_pieces(plan, rank):
            out = {k: batch[k] for k in keys}
        else:
            n = dst.shape[0]
            out = {
                k: torch.empty((n, *schema[k][0]), dtype=schema[k][1], device=device) for k in keys
            }

    def rows(tensors: Mapping[str, torch.Tensor], piece: Piece | None, t: Transfer) -> Views:
        assert piece is not None
        (a, b), o = t.box[0], piece.box[0][0]
        return [tensors[k][a - o : b - o] for k in keys]

    pending = post(
        plan,
        read=lambda t: rows(batch, src, t),
        write=lambda t: rows(out, dst, t),
        rank=rank,
        timeout=timeout,
        chunk_bytes=chunk_bytes,
        direct_bytes=direct_bytes,
    )
    return out, pending
