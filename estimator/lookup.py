"""Fast lookups into a profile: op time at any (shard, batch, seq) and collective time.

Inside the measured grid a timing is interpolated bilinearly in log-log space (times follow
power laws in batch and length); outside it the nearest grid point is scaled by the roofline
ratio of the target to that point, i.e. FLOP-scaled when compute-bound and byte-scaled when
memory-bound. A shape the profile lacks is interpolated between the profiled shapes around it
(linearly in roofline time: a per-op overhead plus a throughput part), or, outside them, the
nearest one is scaled likewise. Ops or collectives the profile lacks fall back to the analytic
roofline.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict

from estimator.profile import Profile, ShardShape
from estimator.shapes import op_flops_bytes

RING_FACTOR = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0}


class _Grid:
    """Log-time over a (batch, seq) rectangle of one op on one shard shape."""

    def __init__(self, shape: ShardShape, points: dict[tuple[int, int], float]):
        self.shape = shape
        self.batches = sorted({b for b, _ in points})
        self.seqs = sorted({s for _, s in points})
        self.lb = [math.log(b) for b in self.batches]
        self.ls = [math.log(s) for s in self.seqs]
        self.points = points
        self.log_t = {k: math.log(v) for k, v in points.items()}

    def _at(self, i: int, j: int) -> float | None:
        return self.log_t.get((self.batches[i], self.seqs[j]))

    def time(self, batch: float, seq: float) -> tuple[float, float, float]:
        """(time at the clamped point, clamped batch, clamped seq)."""
        b = min(max(batch, self.batches[0]), self.batches[-1])
        s = min(max(seq, self.seqs[0]), self.seqs[-1])
        i, fi = bracket(self.lb, math.log(b))
        j, fj = bracket(self.ls, math.log(s))
        i2, j2 = min(i + 1, len(self.lb) - 1), min(j + 1, len(self.ls) - 1)
        corners = [self._at(i, j), self._at(i2, j), self._at(i, j2), self._at(i2, j2)]
        if any(c is None for c in corners):  # not a full rectangle: nearest measured point
            (nb, ns), t = min(
                self.points.items(),
                key=lambda kv: abs(math.log(kv[0][0] / b)) + abs(math.log(kv[0][1] / s)),
            )
            return t, float(nb), float(ns)
        c00, c10, c01, c11 = corners  # type: ignore[misc]
        lt = (c00 * (1 - fi) + c10 * fi) * (1 - fj) + (c01 * (1 - fi) + c11 * fi) * fj
        return math.exp(lt), b, s


def bracket(axis: list[float], x: float) -> tuple[int, float]:
    """Index i and fraction f with x = axis[i] + f * (axis[i+1] - axis[i]) (f=0 on 1-point axes);
    f falls outside [0, 1] for x outside the axis: clamp x first where that is not wanted."""
    if len(axis) == 1:
        return 0, 0.0
    i = min(max(bisect.bisect_right(axis, x) - 1, 0), len(axis) - 2)
    return i, (x - axis[i]) / (axis[i + 1] - axis[i])


class ProfileLookup:
    """Indexes a profile once; `op_time` and `collective_time` are then cheap."""

    def __init__(self, profile: Profile, intra_bw: float, inter_bw: float):
        self.profile = profile
        self.roof = profile.roofline
        self.mem_bw = profile.roofline.memory_bytes_per_s
        self.eff = profile.efficiency
        # Link bandwidths for collectives the profile did not measure.
        self.bw = {"intra": intra_bw, "inter": inter_bw}
        grouped: dict[tuple[str, ShardShape], dict[tuple[int, int], float]] = defaultdict(dict)
        for t in profile.ops:
            grouped[(t.op, t.shape)][(t.batch, t.seq_len)] = t.time_s
        self.grids: dict[str, list[_Grid]] = defaultdict(list)
        for (op, shape), pts in grouped.items():
            self.grids[op].append(_Grid(shape, pts))
        colls: dict[tuple[str, str, int], dict[float, list[tuple[int, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for c in profile.collectives:
            colls[(c.op, c.scope, c.group_size)][c.after_s].append((c.bytes, c.time_s))
        # (op, scope, group size) -> [(after_s, sorted (bytes, seconds))], after_s ascending
        self.colls = {k: sorted((a, sorted(pts)) for a, pts in v.items()) for k, v in colls.items()}
        self._memo: dict[tuple, float] = {}

    # ---- compute ----------------------------------------------------------------------------
    def roof_time(self, op: str, shape: ShardShape, batch: float, seq: float) -> float:
        flops, nbytes = op_flops_bytes(op, shape, batch, seq)
        return max(flops / self.roof.flops_per_s, nbytes / self.roof.memory_bytes_per_s)

    def measured(self, op: str) -> bool:
        return bool(self.grids.get(op))

    def op_time(self, op: str, shape: ShardShape, batch: float, seq: float) -> float:
        """Seconds for one invocation of `op` on `shape` at (batch, seq)."""
        key = (op, shape, batch, seq)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        grids = self.grids.get(op)
        if not grids:
            t = self.roof_time(op, shape, batch, seq) + self.eff.kernel_latency_s
        else:
            t = self._across_shapes(op, grids, shape, batch, seq)
        self._memo[key] = t
        return t

    def _across_shapes(
        self, op: str, grids: list[_Grid], shape: ShardShape, batch: float, seq: float
    ) -> float:
        """The op's time on `shape` from the profiled shapes. Each profiled shape's time is
        first carried to (batch, seq) along its own roofline where the grid had to clamp.
        A profiled shape answers for itself; a shape between two profiled ones is interpolated
        linearly in roofline time (a fixed per-op overhead plus a throughput part, which is
        what small shards measure: proportional scaling would scale the overhead too and
        underprice a mid-size decode by ~2x); outside the profiled range the nearest shape
        is scaled by the roofline ratio."""
        want = self.roof_time(op, shape, batch, seq)
        points: list[tuple[float, float]] = []  # (roofline time, measured-based time)
        for g in grids:
            t_ref, b_ref, s_ref = g.time(batch, seq)
            ref = self.roof_time(op, g.shape, b_ref, s_ref)
            roof = self.roof_time(op, g.shape, batch, seq)
            t = t_ref * roof / ref if (b_ref, s_ref) != (batch, seq) and ref > 0 else t_ref
            if g.shape == shape:
                return t
            points.append((roof, t))
        below = max((p for p in points if p[0] <= want), default=None)
        above = min((p for p in points if p[0] >= want), default=None)
        if below is not None and above is not None:
            (r0, t0), (r1, t1) = below, above
            return t0 if r1 == r0 else t0 + (t1 - t0) * (want - r0) / (r1 - r0)
        r, t = below or above  # type: ignore[misc]
        return t * want / r if r > 0 else t

    # ---- links ------------------------------------------------------------------------------
    def collective_time(
        self, op: str, n: int, scope: str, nbytes: float, after_s: float = 0.0
    ) -> float:
        """Seconds for collective `op` of `nbytes` per rank over `n` ranks (0 when n == 1),
        issued after every rank computed `after_s` seconds (profiles timed in context say how
        that matters; interpolated linearly in sqrt(after_s), clamped to the timed range)."""
        if n <= 1 or nbytes <= 0:
            return 0.0
        key = ("c", op, n, scope, nbytes, after_s)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        tables = self._nearest_tables(op, scope, n)
        if tables is None:
            t = self._alpha_beta(op, n, scope, nbytes)
        elif len(tables) == 1 or after_s <= tables[0][0]:
            t = self._from_table(tables[0][1], op, n, scope, nbytes)
        elif after_s >= tables[-1][0]:
            t = self._from_table(tables[-1][1], op, n, scope, nbytes)
        else:
            i = next(k for k in range(len(tables) - 1) if tables[k + 1][0] >= after_s)
            (a0, t0), (a1, t1) = tables[i], tables[i + 1]
            f = (math.sqrt(after_s) - math.sqrt(a0)) / (math.sqrt(a1) - math.sqrt(a0))
            lo = self._from_table(t0, op, n, scope, nbytes)
            hi = self._from_table(t1, op, n, scope, nbytes)
            t = lo + f * (hi - lo)
        self._memo[key] = t
        return t

    def _from_table(
        self, table: list[tuple[int, float]], op: str, n: int, scope: str, nbytes: float
    ) -> float:
        model = self._alpha_beta(op, n, scope, nbytes)
        sizes = [b for b, _ in table]
        x = min(max(nbytes, sizes[0]), sizes[-1])
        i, f = bracket([math.log(b) for b in sizes], math.log(x))
        if len(table) == 1:
            t = table[0][1]
        else:
            t = math.exp(math.log(table[i][1]) * (1 - f) + math.log(table[i + 1][1]) * f)
        ref = self._alpha_beta(op, n, scope, x)
        return t * model / ref

    def _nearest_tables(
        self, op: str, scope: str, n: int
    ) -> list[tuple[float, list[tuple[int, float]]]] | None:
        sizes = [k[2] for k in self.colls if k[0] == op and k[1] == scope]
        if not sizes:
            return None
        best = min(sizes, key=lambda g: (abs(math.log(g / n)), g))
        return self.colls[(op, scope, best)]

    def _alpha_beta(self, op: str, n: int, scope: str, nbytes: float) -> float:
        """Ring collectives: steps x latency + ring factor x (n-1)/n x bytes / bandwidth."""
        bw = self.bw[scope]
        lat = (
            self.eff.collective_latency_intra_s
            if scope == "intra"
            else self.eff.collective_latency_inter_s
        )
        if op in RING_FACTOR:
            k = RING_FACTOR[op]
            return k * (n - 1) * lat + k * (n - 1) / n * nbytes / bw
        if op == "broadcast":
            return math.ceil(math.log2(n)) * lat + nbytes / bw
        return lat + nbytes / bw  # send_recv
