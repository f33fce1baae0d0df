"""Redistribution plan between two layouts: which rank sends which part of which tensor to whom.

A *layout* says, for every rank, which box (index ranges per dimension) of which full tensor
each of its local tensors is. Parameters get theirs from the layout table (plans.layout),
a batch of samples from the dp split of its leading dimension (plans.slicing.split_range).
The plan for moving from a source layout to a destination layout is the list of
intersections of source and destination boxes of the same full tensor; where several source
ranks hold the same box (dp replicas, tp copies of norms, replicated kv heads, a tied head's
copy of the embedding) one of them is chosen: the destination rank itself when it holds it
(no transfer at all), else a holder on the destination's node, the least-loaded one first.

The plan is computed identically on every rank from the same inputs, and its transfers are in
one global order, so a sender packs and a receiver unpacks the same tensors in the same order
without any negotiation. It also prices itself (bytes per (src, dst) pair) for the cost model.

This module is pure Python (plans/ and the standard library), so the executor, which moves the
tensors, and the estimator, which prices the moves, share one plan.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from plans.allocation import Allocation
from plans.layout import param_slices
from plans.model import ModelSpec
from plans.slicing import split_range

Box = tuple[tuple[int, int], ...]
"""[start, stop) per dimension of a full tensor."""

SAMPLES = "samples"
"""Key and local name of a batch in a batch layout: one box over the sample dimension."""


def box_numel(box: Box) -> int:
    return math.prod(max(0, b - a) for a, b in box)


def intersect(a: Box, b: Box) -> Box | None:
    """The common part of two boxes of the same tensor, None when it is empty."""
    out = tuple((max(x0, y0), min(x1, y1)) for (x0, x1), (y0, y1) in zip(a, b, strict=True))
    return None if any(lo >= hi for lo, hi in out) else out


@dataclass(frozen=True)
class Piece:
    """A local tensor: the box `box` of the full tensor `key`."""

    key: str
    box: Box

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.box)

    @property
    def numel(self) -> int:
        return box_numel(self.box)

    def relative(self, box: Box) -> Box:
        """`box` (inside this piece) in this piece's own coordinates."""
        return tuple((a - o, b - o) for (a, b), (o, _) in zip(box, self.box, strict=True))


Layout = Mapping[int, Mapping[str, Piece]]
"""rank -> local tensor name -> the piece it is. Name order is the rank's tensor order."""


# ---- layouts ---------------------------------------------------------------------------------
def param_layout(
    alloc: Allocation, spec: ModelSpec, gpus_per_node: int
) -> dict[int, dict[str, Piece]]:
    """Every rank of `alloc` -> its parameter shards, keyed by state_dict name; the piece's key
    is the checkpoint key (a tied LM head is a copy of the embedding, so it can be fed from it)."""
    s = alloc.strategy
    grid = alloc.rank_grid(gpus_per_node)
    out: dict[int, dict[str, Piece]] = {}
    for p in range(s.pp):
        for t in range(s.tp):
            pieces = {
                sl.name: Piece(sl.source, _slice_box(sl.full_shape, sl.dim, sl.start, sl.stop))
                for sl in param_slices(spec, s.tp, t, s.pp, p)
            }
            for d in range(s.dp):
                out[grid[p][d][t]] = pieces  # dp replicas hold the same (immutable) pieces
    return out


def _slice_box(shape: tuple[int, ...], dim: int | None, start: int, stop: int) -> Box:
    return tuple((start, stop) if i == dim else (0, n) for i, n in enumerate(shape))


def batch_layout(
    alloc: Allocation, n_samples: int, gpus_per_node: int, last_stage_only: bool = False
) -> dict[int, dict[str, Piece]]:
    """A batch of `n_samples` split by sample over the dp ranks of `alloc` (split_range, as
    executor.data.batching.dp_share does) and replicated over its tp ranks and pp stages, or only
    on the last stage (where a producer's outputs appear). A rank may get an empty share."""
    s = alloc.strategy
    grid = alloc.rank_grid(gpus_per_node)
    stages = [s.pp - 1] if last_stage_only else range(s.pp)
    return {
        grid[p][d][t]: {SAMPLES: Piece(SAMPLES, (split_range(n_samples, s.dp, d),))}
        for p in stages
        for d in range(s.dp)
        for t in range(s.tp)
    }


# ---- the plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transfer:
    """`box` of tensor `key` goes from local tensor `src_name` on `src` to `dst_name` on `dst`
    (src == dst: a local copy)."""

    src: int
    dst: int
    key: str
    src_name: str
    dst_name: str
    box: Box

    @property
    def numel(self) -> int:
        return box_numel(self.box)


@dataclass(frozen=True)
class TransferPlan:
    src_layout: Layout
    dst_layout: Layout
    transfers: tuple[Transfer, ...]
    """Global order: by (src, dst), then destination tensor order. Both ends of a pair read
    this same order to pack and unpack their one message."""
    _by_pair: dict[tuple[int, int], list[Transfer]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    memo: dict = field(init=False, repr=False, compare=False, default_factory=dict)
    """Scratch space for an executor that runs this plan again and again (e.g. index tuples
    per rank); not part of the plan's value."""

    def __post_init__(self) -> None:
        for t in self.transfers:
            self._by_pair.setdefault((t.src, t.dst), []).append(t)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(src, dst) pairs that exchange anything, local copies included, in global order."""
        return list(self._by_pair)

    def between(self, src: int, dst: int) -> list[Transfer]:
        return self._by_pair.get((src, dst), [])

    def sends(self, rank: int) -> dict[int, list[Transfer]]:
        """Peer -> what `rank` sends it (local copies excluded)."""
        return {d: ts for (s, d), ts in self._by_pair.items() if s == rank and d != rank}

    def recvs(self, rank: int) -> dict[int, list[Transfer]]:
        return {s: ts for (s, d), ts in self._by_pair.items() if d == rank and s != rank}

    def local(self, rank: int) -> list[Transfer]:
        return self.between(rank, rank)

    def numel_per_pair(self) -> dict[tuple[int, int], int]:
        """Elements that cross a link, per (src, dst) pair (local copies are free)."""
        return {(s, d): sum(t.numel for t in ts) for (s, d), ts in self._by_pair.items() if s != d}

    def bytes_per_pair(self, bytes_per_element: int) -> dict[tuple[int, int], int]:
        """Bytes per (src, dst) pair; for a batch plan an element is one sample, so pass the
        bytes of one sample (all keys)."""
        return {p: n * bytes_per_element for p, n in self.numel_per_pair().items()}


def plan_transfers(src: Layout, dst: Layout, gpus_per_node: int | None = None) -> TransferPlan:
    """Transfers that build every destination piece from the source pieces, each destination
    element exactly once. `gpus_per_node` lets the choice of a replica prefer the destination's
    node. Raises ValueError when the source does not cover a destination piece, or when two
    source pieces of one tensor overlap without being equal (no layout here does that)."""
    holders = _index_sources(src)
    # Each need: one intersection of a destination piece with one distinct source box.
    # dp replicas share one piece dict, so intersections are computed once per dict.
    needs: list[tuple[int, int, int, str, str, Box, tuple[tuple[int, str], ...]]] = []
    seen: dict[int, list[tuple[int, int, str, str, Box, tuple[tuple[int, str], ...]]]] = {}
    for rank in sorted(dst):
        pieces = dst[rank]
        if id(pieces) not in seen:
            seen[id(pieces)] = _intersections(rank, pieces, holders)
        needs.extend((rank, *n) for n in seen[id(pieces)])
    load: dict[int, int] = defaultdict(int)  # elements each source rank sends
    chosen: list[tuple[int, int, int, Transfer]] = []

    candidates: dict[tuple[int, int], list[tuple[int, str]]] = {}

    def pick(rank: int, hs: tuple[tuple[int, str], ...]) -> tuple[int, str]:
        for h in hs:  # already here: a local copy, or no copy at all
            if h[0] == rank:
                return h
        # Holders on the destination's node if any (a faster link), else all; among them the
        # least loaded, then the lowest rank (holders are in rank order and min keeps the first).
        node = rank // gpus_per_node if gpus_per_node else 0
        key = (id(hs), node)
        if key not in candidates:
            near = [h for h in hs if gpus_per_node and h[0] // gpus_per_node == node]
            candidates[key] = near or list(hs)
        return min(candidates[key], key=lambda h: load[h[0]])

    # Biggest pieces first: greedy least-loaded assignment balances best that way. The order
    # is a pure function of the inputs, so every rank picks the same replicas.
    needs.sort(key=lambda n: (-n[1], n[0], n[2], n[5]))
    for rank, numel, order, key, name, box, hs in needs:
        h_rank, h_name = pick(rank, hs)
        if h_rank != rank:
            load[h_rank] += numel
        chosen.append((h_rank, rank, order, Transfer(h_rank, rank, key, h_name, name, box)))
    chosen.sort(key=lambda c: (c[0], c[1], c[2], c[3].box))
    return TransferPlan(src, dst, tuple(c[3] for c in chosen))


Holders = dict[str, dict[Box, tuple[tuple[int, str], ...]]]
"""key -> distinct source box -> its holders (rank, local name), by rank."""


def _intersections(
    rank: int, pieces: Mapping[str, Piece], holders: Holders
) -> list[tuple[int, int, str, str, Box, tuple[tuple[int, str], ...]]]:
    """(numel, order, key, name, box, holders) of every intersection of a destination piece
    with a distinct source box."""
    out = []
    for order, (name, piece) in enumerate(pieces.items()):
        covered = 0
        for sbox, hs in holders.get(piece.key, {}).items():
            box = intersect(piece.box, sbox)
            if box is not None:
                n = box_numel(box)
                out.append((n, order, piece.key, name, box, hs))
                covered += n
        if covered != piece.numel:
            raise ValueError(
                f"rank {rank}: {name} ({piece.key} {piece.box}) is not covered by the source"
            )
    return out


def _index_sources(src: Layout) -> Holders:
    lists: dict[str, dict[Box, list[tuple[int, str]]]] = defaultdict(dict)
    for rank in sorted(src):
        for name, piece in src[rank].items():
            if piece.numel:
                lists[piece.key].setdefault(piece.box, []).append((rank, name))
    out = {k: {b: tuple(hs) for b, hs in boxes.items()} for k, boxes in lists.items()}
    for key, boxes in out.items():
        distinct = list(boxes)
        for i, a in enumerate(distinct):
            for b in distinct[i + 1 :]:
                if intersect(a, b) is not None:
                    raise ValueError(f"source pieces {a} and {b} of {key} overlap partly")
    return out


# ---- plans from allocations ------------------------------------------------------
def plan_params(
    src: Allocation, dst: Allocation, spec: ModelSpec, gpus_per_node: int
) -> TransferPlan:
    """Move a model's parameters from layout `src` to layout `dst`."""
    return plan_transfers(
        param_layout(src, spec, gpus_per_node),
        param_layout(dst, spec, gpus_per_node),
        gpus_per_node,
    )


def plan_batch(
    src: Allocation,
    dst: Allocation,
    n_samples: int,
    gpus_per_node: int,
    src_last_stage_only: bool = False,
) -> TransferPlan:
    """Move a batch from its producer's layout to its consumer's (replicated over the
    consumer's tp ranks and stages)."""
    return plan_transfers(
        batch_layout(src, n_samples, gpus_per_node, src_last_stage_only),
        batch_layout(dst, n_samples, gpus_per_node),
        gpus_per_node,
    )


# ---- what a rank already holds -----------------------------------------------------------
# The runtime decides from these which destination pieces need no memory of their own, and the
# estimator's closed forms of shared memory and copy bytes are tested against them.
def kept_pieces(plan: TransferPlan, rank: int) -> dict[str, str]:
    """Destination name -> source name for pieces `rank` already holds whole (the same box of
    the same tensor): the destination is that very tensor, no copy."""
    key = ("kept", rank)
    if key not in plan.memo:
        dst, src = plan.dst_layout.get(rank, {}), plan.src_layout.get(rank, {})
        plan.memo[key] = {
            t.dst_name: t.src_name
            for t in plan.local(rank)
            if dst[t.dst_name].box == t.box == src[t.src_name].box
        }
    return plan.memo[key]


def inside_pieces(plan: TransferPlan, rank: int) -> dict[str, tuple[str, Box]]:
    """Destination name -> (source name, box within that source tensor) for pieces that lie
    wholly inside one source tensor `rank` holds: the destination can be that part of the
    source (a view where the part is contiguous: rows of a column-parallel weight)."""
    key = ("inside", rank)
    if key not in plan.memo:
        dst, src = plan.dst_layout.get(rank, {}), plan.src_layout.get(rank, {})
        plan.memo[key] = {
            t.dst_name: (t.src_name, src[t.src_name].relative(t.box))
            for t in plan.local(rank)
            if dst[t.dst_name].box == t.box
        }
    return plan.memo[key]


def hostable_pieces(plan: TransferPlan, rank: int) -> dict[str, tuple[str, Box]]:
    """Destination name -> (source name, box within the destination tensor) for destination
    pieces of `rank` that contain exactly one whole source tensor of `rank` and more (a tp
    shard inside the whole tensor when tp shrinks): that source tensor could live inside the
    destination tensor, and moves into this layout would then not copy it."""
    key = ("hostable", rank)
    if key not in plan.memo:
        dst, src = plan.dst_layout.get(rank, {}), plan.src_layout.get(rank, {})
        whole: dict[str, list[Transfer]] = defaultdict(list)
        for t in plan.local(rank):
            if t.box == src[t.src_name].box != dst[t.dst_name].box:
                whole[t.dst_name].append(t)
        plan.memo[key] = {
            n: (ts[0].src_name, dst[n].relative(ts[0].box))
            for n, ts in whole.items()
            if len(ts) == 1
        }
    return plan.memo[key]
