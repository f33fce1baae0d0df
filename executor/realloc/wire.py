"""One message per peer and direction: the tensors a rank sends a peer, back to back in one
flat byte layout. Both ends derive the layout (byte offsets) and its framing (how it is cut
into tagged ops) from the same shapes and dtypes, so they agree without a header.

Framing: with `chunk=None` a message is one op (what NCCL wants: every op of a rank posted in
one batch), packed into one buffer on each side. With a chunk size (gloo on CPU) a tensor of
at least `direct` bytes gets frames of its own, sent straight from the source memory when it
is contiguous and received straight into its destination when that is contiguous, so the big
tensors are never copied; the small ones are packed into shared frames of at most `chunk`
bytes. On CPU this matters: a copy into fresh memory costs about as much as the transfer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

Like = Sequence[tuple[tuple[int, ...], torch.dtype]]
"""Shapes and dtypes of the tensors of one message, in order."""

Alloc = Callable[[int, torch.device], torch.Tensor]
"""Scratch bytes (uint8, that many, on that device): packing frames, a receive buffer, a
contiguous copy of a strided source. The caller owns them again once the ops completed."""


def fresh(nbytes: int, device: torch.device) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


@dataclass
class Framing:
    """How one move cuts its messages into ops, and where its scratch memory comes from."""

    chunk: int | None
    """Frame size in bytes; None: one op per message."""
    direct: int
    """Tensors from this many bytes on get frames of their own (with a chunk size)."""
    alloc: Alloc = fresh
    scratch: list[torch.Tensor] = field(default_factory=list)
    """Every scratch tensor the move took from `alloc` (the caller gives them back)."""


def offsets(like: Like) -> tuple[list[int], int]:
    """Byte offset of each tensor and the message size; offsets are multiples of each
    tensor's element size, so its bytes can be viewed as its dtype."""
    out, end = [], 0
    for shape, dtype in like:
        size = dtype.itemsize
        end = -(-end // size) * size
        out.append(end)
        end += math.prod(shape) * size
    return out, end


@dataclass(frozen=True)
class Frame:
    """Bytes [start, stop) of a message, made of tensors `items`: one tensor (or part of one)
    at least `direct` bytes long, or a run of small ones."""

    start: int
    stop: int
    items: tuple[int, ...]
    direct: bool
    """One tensor alone (or one part of it), which may go without a copy."""


def frames(like: Like, chunk: int | None, direct: int) -> list[Frame]:
    offs, size = offsets(like)
    if chunk is None:
        return [Frame(0, size, tuple(range(len(like))), False)] if size else []
    out: list[Frame] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            end = offs[run[-1]] + _nbytes(like[run[-1]])
            out.append(Frame(offs[run[0]], end, tuple(run), False))
            run.clear()

    for i, o in enumerate(offs):
        n = _nbytes(like[i])
        if n >= direct:
            flush()
            out.extend(Frame(a, min(a + chunk, o + n), (i,), True) for a in range(o, o + n, chunk))
        else:
            if run and o + n - offs[run[0]] > chunk:
                flush()
            run.append(i)
    flush()
    return out


def _nbytes(like: tuple[tuple[int, ...], torch.dtype]) -> int:
    return math.prod(like[0]) * like[1].itemsize


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's memory as flat bytes (no copy)."""
    return t.reshape(-1).view(torch.uint8)


def _like(views: Sequence[torch.Tensor]) -> list[tuple[tuple[int, ...], torch.dtype]]:
    return [(tuple(v.shape), v.dtype) for v in views]


def send(views: Sequence[torch.Tensor], peer: int, how: Framing) -> list:
    """Send one message. With a chunk size each frame is posted (dist.isend) as soon as it is
    ready and the works are returned; without, the ops (dist.P2POp) are returned for one
    batch."""
    chunk, direct, alloc, scratch = how.chunk, how.direct, how.alloc, how.scratch
    like = _like(views)
    offs = offsets(like)[0]
    posted: list = []
    whole: dict[int, torch.Tensor] = {}  # bytes of a tensor sent in frames of its own
    for i, f in enumerate(frames(like, chunk, direct)):
        if f.direct:
            item = f.items[0]
            if item not in whole:  # a copy only when the source is not contiguous
                whole[item] = _contiguous_bytes(views[item], alloc, scratch)
            data = whole[item][f.start - offs[item] : f.stop - offs[item]]
        else:
            data = alloc(f.stop - f.start, views[0].device)
            scratch.append(data)
            for j in f.items:
                o = offs[j] - f.start
                data[o : o + _nbytes(like[j])].view(views[j].dtype).view(views[j].shape).copy_(
                    views[j]
                )
        if chunk is None:
            posted.append(dist.P2POp(dist.isend, data, peer, tag=i))
        else:
            posted.append(dist.isend(data, peer, tag=i))
    return posted


def _contiguous_bytes(v: torch.Tensor, alloc: Alloc, scratch: list[torch.Tensor]) -> torch.Tensor:
    if v.is_contiguous():
        return _bytes(v)
    out = alloc(v.numel() * v.element_size(), v.device)
    scratch.append(out)
    out.view(v.dtype).view(v.shape).copy_(v)
    return out


def recv(
    views: Sequence[torch.Tensor], peer: int, how: Framing
) -> tuple[list[dist.P2POp], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Receive one message into `views` (destination regions): ops to post, and (buffer
    region, destination) pairs to copy once they completed. Direct frames land in their
    destination when it is contiguous; the rest share one compact buffer."""
    chunk, direct, alloc, scratch = how.chunk, how.direct, how.alloc, how.scratch
    like = _like(views)
    offs = offsets(like)[0]
    fs = frames(like, chunk, direct)
    into_place = [f.direct and views[f.items[0]].is_contiguous() for f in fs]
    # Compact buffer: the buffered frames back to back, each at an 8-byte aligned start so
    # the dtype views inside it stay aligned as in the message layout.
    starts, size, prev = [], 0, None
    for f, d in zip(fs, into_place, strict=True):
        if not (f.direct and f.items[0] == prev):  # frames of one tensor stay back to back
            size = -(-size // 8) * 8
        starts.append(size)
        size += 0 if d else f.stop - f.start
        prev = f.items[0] if f.direct else None
    buf = alloc(size, views[0].device) if size else torch.empty(0, dtype=torch.uint8)
    if size:
        scratch.append(buf)
    ops, unpack = [], []
    for i, (f, d, s) in enumerate(zip(fs, into_place, starts, strict=True)):
        if d:
            item = f.items[0]
            target = _bytes(views[item])[f.start - offs[item] : f.stop - offs[item]]
        else:
            target = buf[s : s + f.stop - f.start]
            for j in [] if f.direct else f.items:
                o = offs[j] - f.start
                region = target[o : o + _nbytes(like[j])].view(like[j][1]).view(like[j][0])
                unpack.append((region, views[j]))
        ops.append(dist.P2POp(dist.irecv, target, peer, tag=i))
    # A direct frame into a non-contiguous destination: gather its frames, then copy.
    for item in {f.items[0] for f, d in zip(fs, into_place, strict=True) if f.direct and not d}:
        first = next(k for k, f in enumerate(fs) if f.direct and f.items[0] == item)
        s = starts[first]
        region = buf[s : s + _nbytes(like[item])].view(like[item][1]).view(like[item][0])
        unpack.append((region, views[item]))
    return ops, unpack
