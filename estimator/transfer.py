"""Cost of moving a role's parameters between layouts, and data between meshes.

Reallocation: each destination rank needs the slice of every parameter its new (pp stage, tp
rank) position holds. A piece it already holds in the old layout crosses no link; any other
piece comes from one of its old holders (the dp replicas of that (stage, tp rank)), one on the
receiver's node when there is one, the load spread over them -- inside the node when a holder
shares it, else the network. The price is that of the busiest rank, as executor.realloc.move runs
the move on it:

- the bytes it receives and sends at the link rates (on a CPU, gloo's sends and receives are
  both memory copies by the rank's own core, so they add up; a GPU link is full duplex);
- the bytes it copies at the profile's memory-copy rate: pieces it holds but not as the very
  tensor the new layout wants nor as one contiguous part of such a tensor (a view: rows of a
  column-parallel weight when tp grows) nor as the tensor's rows that a role's home shard
  lives in (when tp shrinks on the same rank), and parts of row-parallel weights (o, down: split
  along their input dimension) that are a column block of the source (gathered before it is
  sent) or of the destination (received into a buffer, then copied).

Destination memory is priced as reused: rlhf-run keeps a view's memory for the next view in
the same layout (executor.realloc.move.Buffers), so only a role's first iteration writes into fresh
pages, which is not priced. The bytes are closed forms of the plans that plans.transfer builds
for the runtime; tests check they agree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from estimator.lookup import ProfileLookup
from estimator.memory import stage_ranges
from plans import MFC, Allocation, ClusterSpec, ExperimentSpec, ModelSpec
from plans.slicing import split_range

# Bytes per sequence of each data key (token ids are int64, per-token floats are fp32).
_PER_TOKEN_FLOAT = {"logprobs", "ref_logprobs", "values"}
_PER_SEQ_FLOAT = {"rewards", "greedy_rewards"}
_TOKENS = {"seq", "greedy_seq"}


@dataclass(frozen=True, slots=True)
class Transfer:
    """What a move costs."""

    bytes_total: float
    """Bytes that cross a link, summed over receivers."""
    bytes_max: float
    """Bytes received by the busiest receiver."""
    time_s: float
    scope: str
    """'none', 'intra' or 'inter': the slowest link used."""


NONE = Transfer(0.0, 0.0, 0.0, "none")


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def copy_rate(lookup: ProfileLookup) -> float:
    """Bytes/s of a memory copy: measured, else half the memory bandwidth (read + write)."""
    return lookup.roof.copy_memory_bytes_per_s or lookup.mem_bw / 2


def realloc_transfer(
    model: ModelSpec,
    dtype_bytes: int,
    src: Allocation,
    dst: Allocation,
    gpn: int,
    lookup: ProfileLookup,
    hosting: bool = True,
) -> Transfer:
    """`hosting`: the home's rows live inside the copy where its tp slice is wider (the
    role is in plans.residency.Residency.hosting)."""
    ss, ds = src.strategy, dst.strategy
    if src.mesh == dst.mesh and ss.tp == ds.tp and ss.pp == ds.pp:
        return NONE  # same ranks hold the same slices
    L = model.num_hidden_layers
    blk, emb = model.block_params() * dtype_bytes, model.embedding_params() * dtype_bytes
    head = (model.head_params() - model.hidden_size) * dtype_bytes
    h = model.hidden_size
    row_params = h * model.num_attention_heads * model.head_dim + h * model.intermediate_size
    row = row_params / model.block_params()  # share of a block's bytes in o and down
    src_grid, dst_grid = src.rank_grid(gpn), dst.rank_grid(gpn)
    src_stages, dst_stages = stage_ranges(L, ss.pp), stage_ranges(L, ds.pp)
    # Pieces of the source layout: (stage, tp rank) -> (layer range, tp interval, holders).
    pieces = []
    for p, layers in enumerate(src_stages):
        for t in range(ss.tp):
            holders = {src_grid[p][d][t] for d in range(ss.dp)}
            extra = (emb if p == 0 else 0.0, head if p == ss.pp - 1 else 0.0)
            pieces.append((layers, (t / ss.tp, (t + 1) / ss.tp), holders, extra))
    total = worst_bytes = 0.0
    slowest = "none"
    recv: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sent: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    copied: dict[int, float] = defaultdict(float)
    for p, layers in enumerate(dst_stages):
        for t in range(ds.tp):
            # What position (p, t) needs from each source piece is the same for all its dp
            # replicas; only which pieces a replica already holds, and how near the holders
            # are, differ. Computing the overlaps once per position keeps this cheap enough
            # for the search, which prices thousands of distinct moves.
            interval = (t / ds.tp, (t + 1) / ds.tp)
            needs = []
            for s_layers, s_int, holders, (s_emb, s_head) in pieces:
                part = _overlap(interval, s_int)
                blocks = _overlap(layers, s_layers) * blk * part
                n = (
                    blocks
                    + ((s_emb if p == 0 else 0.0) + (s_head if p == ds.pp - 1 else 0.0)) * part
                )
                if n > 0:
                    # What a holder needs of a piece it holds: with the same tp slice, every
                    # tensor (one per layer) is the very tensor it holds; inside a wider slice,
                    # rows of column-parallel weights, embedding and head are views of it and
                    # only the column blocks of o/down are copied. Around a narrower slice
                    # (tp shrinks), the home shard's rows live inside the view's tensors
                    # after the first view (plans.residency; with `hosting`), so
                    # again only o/down are copied. Else all is copied.
                    inside = interval[0] >= s_int[0] and interval[1] <= s_int[1]
                    around = s_int[0] >= interval[0] and s_int[1] <= interval[1]
                    rows_kept = inside or (around and hosting)
                    local = 0.0 if s_int == interval else blocks * row if rows_kept else n
                    # Column blocks of o/down: the source's when the source piece is wider
                    # than the destination's, the destination's when it is narrower.
                    gather = blocks * row if part < s_int[1] - s_int[0] else 0.0
                    scatter = blocks * row if part < interval[1] - interval[0] else 0.0
                    by_node: dict[int, list[int]] = defaultdict(list)
                    for r in sorted(holders):
                        by_node[r // gpn].append(r)
                    needs.append((n, holders, by_node, sorted(holders), local, gather, scatter))
            for d in range(ds.dp):
                rank = dst_grid[p][d][t]
                got = 0.0
                for n, holders, by_node, everyone, local, gather, scatter in needs:
                    if rank in holders:
                        copied[rank] += local
                        continue
                    near = by_node.get(rank // gpn)
                    scope = "intra" if near else "inter"
                    senders = near or everyone
                    for r in senders:  # the load spread over the holders
                        sent[r][scope] += n / len(senders)
                        copied[r] += gather / len(senders)
                    recv[rank][scope] += n
                    copied[rank] += scatter
                    got += n
                    if scope == "inter" or slowest == "none":
                        slowest = scope
                total += got
                worst_bytes = max(worst_bytes, got)
    # On a CPU a rank's sends and receives share its core; a GPU's link is full duplex.
    duplex = lookup.profile.device != "cpu"
    rate = copy_rate(lookup)

    def link(by_scope: dict[str, float]) -> float:
        return sum(lookup.collective_time("send_recv", 2, s, b) for s, b in by_scope.items())

    worst_time = 0.0
    for rank in set(recv) | set(sent) | set(copied):
        r, s = link(recv.get(rank, {})), link(sent.get(rank, {}))
        t = (max(r, s) if duplex else r + s) + copied.get(rank, 0.0) / rate
        worst_time = max(worst_time, t)
    return Transfer(total, worst_bytes, worst_time, slowest)


def key_bytes(key: str, exp: ExperimentSpec) -> float:
    """Bytes per sequence of a data key."""
    if key in _TOKENS:
        return 8.0 * exp.seq_len
    if key in _PER_TOKEN_FLOAT:
        return 4.0 * exp.seq_len
    if key in _PER_SEQ_FLOAT:
        return 4.0
    return 0.0  # dataset keys (prompts, pairs) are read by each consumer itself


def data_transfer(
    keys: tuple[str, ...],
    exp: ExperimentSpec,
    consumer: MFC,
    src: Allocation,
    dst: Allocation,
    cluster: ClusterSpec,
    lookup: ProfileLookup,
) -> Transfer:
    """What rlhf-run does (executor.runtime.store): every rank of the consumer's mesh receives
    the whole batch, from the producer's last-stage dp shares; a rank only skips the rows it
    produced itself. Closed form of the plan plans.transfer builds for it (tested equal)."""
    per_seq = sum(key_bytes(k, exp) for k in keys)
    if per_seq <= 0:
        return NONE
    n = exp.sequences(consumer)
    gpn = cluster.gpus_per_node
    s = src.strategy
    grid = src.rank_grid(gpn)
    held = {grid[s.pp - 1][d][t]: split_range(n, s.dp, d) for d in range(s.dp) for t in range(s.tp)}
    held_nodes = {h // gpn for h in held}
    total = worst = 0.0
    scope = "none"
    for r in dst.mesh.ranks(gpn):
        lo, hi = held.get(r, (0, 0))
        rows = n - (hi - lo)
        if rows <= 0:
            continue
        total += rows * per_seq
        worst = max(worst, rows * per_seq)
        far = bool(held_nodes - {r // gpn})
        scope = "inter" if far or scope == "inter" else "intra"
    if total == 0:
        return NONE
    return Transfer(total, worst, lookup.collective_time("send_recv", 2, scope, worst), scope)
