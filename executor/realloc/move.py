"""Carrying out a TransferPlan with torch.distributed point-to-point ops.

Each rank sends each peer one message: everything for that peer, back to back in one flat
byte layout (executor.realloc.wire). It posts all its receives, then its sends, waits, and unpacks
what did not land in place. Only the ranks that
appear in the plan take part; a rank outside it returns at once, so moves on disjoint sets of
ranks run concurrently. Both ends of a pair read the plan's one global order, so packing and
unpacking agree without any metadata message. A rank that is both source and destination of
a piece copies it locally, or keeps the very same tensor when the pieces are equal
(`reallocate` keeping its source also uses a view where the piece is a contiguous part of a
source tensor, and can fill reused memory: `Buffers`).

Parameters (`reallocate`) and batches (`move_batch`) use the same `post`: a parameter
transfer is one view per side, a batch transfer one view per data key (rows of each tensor).
Ranks are global ranks of the default process group (which may be larger than both meshes).
With NCCL, the first p2p call on a group must involve all its ranks; gloo has no such rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from executor.parallel.context import DEFAULT_TIMEOUT
from executor.realloc import wire
from executor.realloc.buffers import Buffers
from plans.transfer import Box, Transfer, TransferPlan, hostable_pieces, inside_pieces, kept_pieces

Views = Sequence[torch.Tensor]


def this_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _index(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


CHUNK = 8 * 2**20
"""Gloo frame size: packing of one frame overlaps the transfer of the previous ones."""
DIRECT = 64 * 2**10
"""Gloo: tensors from this size on are sent from and received into their own memory."""


def default_chunk_bytes() -> int | None:
    """Gloo (CPU): framed messages (executor.realloc.wire), so big tensors are never copied -- on CPU
    a copy into fresh memory costs about as much as the transfer. Other backends: one op per
    message, every op of a rank in one batch (NCCL wants them grouped)."""
    return CHUNK if dist.is_initialized() and dist.get_backend() == "gloo" else None


@dataclass
class Pending:
    """A posted part of a plan: wait() completes it (and is a no-op the second time)."""

    works: list
    unpack: list[tuple[torch.Tensor, torch.Tensor]]
    copied: Future | None
    timeout: timedelta
    scratch: list[torch.Tensor] = field(default_factory=list)
    """Packing and receive buffers, given back to `buffers` once done (else freed)."""
    buffers: Buffers | None = None

    def wait(self) -> None:
        for work in self.works:
            work.wait(self.timeout)
        if self.copied is not None:
            self.copied.result()  # re-raises a failed copy
        for region, dst in self.unpack:
            dst.copy_(region)
        if self.buffers is not None:  # see _scratch_from: only CPU scratch is kept
            self.buffers.give([t for t in self.scratch if t.device.type == "cpu"])
        self.works, self.unpack, self.copied, self.scratch = [], [], None, []


def post(
    plan: TransferPlan,
    read: Callable[[Transfer], Views],
    write: Callable[[Transfer], Views],
    rank: int | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    chunk_bytes: int | None = -1,
    direct_bytes: int = DIRECT,
    buffers: Buffers | None = None,
) -> Pending:
    """Post this rank's part of `plan` without waiting for it. `read(t)`: the source views of
    a transfer this rank sends or copies locally; `write(t)`: the destination views it fills,
    in the same order and shapes. A local transfer whose views are the same memory is skipped
    (kept tensor). Sources must stay unchanged and destinations unread until `wait()`.
    `chunk_bytes`/`direct_bytes`: framing (executor.realloc.wire); chunk None = one op per message
    (no framing), -1 = `default_chunk_bytes()`. `buffers`: on a CPU, scratch memory (receive
    buffers of pieces that cannot land in place, packing frames) is taken from and given
    back to it: receiving into fresh pages costs about as much as the transfer."""
    rank = this_rank() if rank is None else rank
    chunk = default_chunk_bytes() if chunk_bytes == -1 else chunk_bytes
    sends, recvs = plan.sends(rank), plan.recvs(rank)
    # Every receive is posted before any send is packed, and nothing blocks until the final
    # wait, so no order of peers can deadlock. Local copies run while the messages fly.
    local = [
        (d, s)
        for t in plan.local(rank)
        for d, s in zip(write(t), read(t), strict=True)
        if (d.data_ptr(), d.stride()) != (s.data_ptr(), s.stride())
    ]
    if not (sends or recvs):
        _copy_all(local)
        return Pending([], [], None, timeout)
    how = wire.Framing(
        chunk, direct_bytes, wire.fresh if buffers is None else _scratch_from(buffers)
    )
    ops, unpack = [], []
    for peer, ts in sorted(recvs.items()):
        peer_ops, peer_unpack = wire.recv([v for t in ts for v in write(t)], peer, how)
        ops.extend(peer_ops)
        unpack.extend(peer_unpack)
    works: list = dist.batch_isend_irecv(ops) if ops and chunk else []
    batch = [] if chunk else ops
    # Local copies in a helper thread (torch releases the GIL while copying), so they run
    # while this thread posts the sends, which gloo partly writes out synchronously.
    copied = None
    if local and local[0][0].device.type != "cpu":  # a GPU copies asynchronously already
        _copy_all(local)
        local = []
    if local:
        pool = ThreadPoolExecutor(max_workers=1)
        copied = pool.submit(_copy_all, local)
        pool.shutdown(wait=False)  # the thread ends with its one task
    for peer, ts in sorted(sends.items()):
        posted = wire.send([v for t in ts for v in read(t)], peer, how)
        (works if chunk else batch).extend(posted)
    if batch:
        works.extend(dist.batch_isend_irecv(batch))
    return Pending(works, unpack, copied, timeout, how.scratch, buffers)


def _scratch_from(buffers: Buffers) -> wire.Alloc:
    """Scratch from `buffers` on a CPU, where writing into fresh pages costs as much as the
    transfer. On a GPU the caching allocator already reuses freed blocks, and scratch freed
    after the move leaves the memory that the plan's memory model counts (home and copy)."""

    def alloc(nbytes: int, device: torch.device) -> torch.Tensor:
        if device.type != "cpu":
            return wire.fresh(nbytes, device)
        return buffers.take((nbytes,), torch.uint8, device)

    return alloc


def _copy_all(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for d, s in pairs:
            d.copy_(s)


def _param_indices(
    plan: TransferPlan, rank: int
) -> dict[int, tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """id(transfer) -> (index into its source tensor, index into its destination tensor) for
    the transfers of `rank`; computed once per plan (a runtime reuses its plans)."""
    key = ("param-indices", rank)
    if key not in plan.memo:
        src, dst = plan.src_layout.get(rank, {}), plan.dst_layout.get(rank, {})
        out = {}
        for t in plan.transfers:
            if rank in (t.src, t.dst):
                s = _index(src[t.src_name].relative(t.box)) if t.src == rank else ()
                d = _index(dst[t.dst_name].relative(t.box)) if t.dst == rank else ()
                out[id(t)] = (s, d)
        plan.memo[key] = out
    return plan.memo[key]


def hostable(plan: TransferPlan, rank: int) -> dict[str, tuple[str, tuple[slice, ...]]]:
    """plans.transfer.hostable_pieces with indices into the destination tensors."""
    return {n: (s, _index(box)) for n, (s, box) in hostable_pieces(plan, rank).items()}


def host_regions(
    plan: TransferPlan, rank: int, out: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """After a move along `plan` into `out` (this rank's result): (source name -> the
    contiguous part of a result tensor that now holds the same values as that source tensor,
    result name -> tensor, for those tensors). A caller that lets its source tensors become
    these parts frees their memory and, passing the tensors as `into` to later moves along
    the same plan, no longer copies them (`hostable`)."""
    parts, hosts = {}, {}
    for name, (src, index) in hostable(plan, rank).items():
        region = out[name][index]
        if region.is_contiguous():  # rows: parameters stay contiguous (optimizers flatten them)
            parts[src], hosts[name] = region, out[name]
    return parts, hosts


def reallocate(
    plan: TransferPlan,
    shards: MutableMapping[str, torch.Tensor] | None,
    dtype: torch.dtype,
    keep_source: bool = True,
    timeout: timedelta = DEFAULT_TIMEOUT,
    chunk_bytes: int | None = -1,
    direct_bytes: int = DIRECT,
    device: torch.device | str = "cpu",
    buffers: Buffers | None = None,
    into: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Move a model's parameters along `plan` (from plans.transfer.plan_params).

    `shards`: this rank's source tensors by state_dict name (None or empty off the source
    mesh). Returns this rank's destination tensors by name ({} off the destination mesh),
    each contiguous; a destination piece equal to a source piece on this rank is that very
    tensor. `keep_source=False` means the model's home moves: `shards` is emptied afterwards,
    so once the caller drops its other references the source memory is freed; every other
    result tensor is of its own. With `keep_source=True` (a temporary generation copy) a
    piece that is a contiguous part of one source tensor (rows of a column-parallel weight
    when tp grows) is a view into it, no copy; dropping the result releases all it added.
    `device`: where new destination tensors live (the device of this rank's shards with
    NCCL). `buffers`: new destination tensors are taken from there (reused memory, every
    element overwritten) instead of allocated; give them back (`added`) when the result is
    dropped. On a CPU the move's scratch (receive and packing buffers) also comes from there
    and goes back at its end. `into`: destination tensors by name to fill (of the piece's
    shape), e.g. those a source tensor lives inside (`hostable`): a local piece whose source
    is already in place is not copied."""
    rank = this_rank()
    shards = {} if shards is None else shards
    src_pieces, dst_pieces = plan.src_layout.get(rank, {}), plan.dst_layout.get(rank, {})
    for name in src_pieces:
        if shards[name].dtype != dtype:
            raise TypeError(f"{name} is {shards[name].dtype}, the move is {dtype}")
    kept = kept_pieces(plan, rank)
    held = {n: shards[s] for n, s in kept.items()}
    if keep_source:  # the source outlives the result, so a part of it can stand for a piece
        for n, (s, box) in inside_pieces(plan, rank).items():
            view = shards[s][_index(box)]
            if n not in held and view.is_contiguous():
                held[n] = view  # the local transfer then reads and writes the same memory
    held.update({n: t for n, t in (into or {}).items() if n not in held})
    take = (buffers or Buffers()).take
    out = {n: held[n] if n in held else take(p.shape, dtype, device) for n, p in dst_pieces.items()}
    idx = _param_indices(plan, rank)
    with torch.no_grad():
        post(
            plan,
            read=lambda t: [shards[t.src_name][idx[id(t)][0]]],
            write=lambda t: [out[t.dst_name][idx[id(t)][1]]],
            rank=rank,
            timeout=timeout,
            chunk_bytes=chunk_bytes,
            direct_bytes=direct_bytes,
            buffers=buffers,
        ).wait()
    if not keep_source:
        shards.clear()
    return out
