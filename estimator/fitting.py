"""From measured timings to the roofline a profile carries (torch-free: the measuring itself is
executor.profiling)."""

from __future__ import annotations

from estimator.profile import CollectiveTiming, OpTiming, Roofline
from estimator.shapes import op_flops_bytes


def fit_roofline(ops: list[OpTiming], intra: float, inter: float) -> Roofline:
    """Sustained FLOP/s and bytes/s: the best any compute-heavy / memory-heavy op reached."""
    flops = [
        op_flops_bytes(t.op, t.shape, t.batch, t.seq_len)[0] / t.time_s
        for t in ops
        if t.op.startswith("block")
    ]
    mem = [
        op_flops_bytes(t.op, t.shape, t.batch, t.seq_len)[1] / t.time_s
        for t in ops
        if t.op in ("decode", "optimizer")
    ]
    return Roofline(flops_per_s=max(flops, default=1e9), memory_bytes_per_s=max(mem, default=1e9),
                    intra_node_bytes_per_s=intra, inter_node_bytes_per_s=inter)  # fmt: skip


def link_rates(colls: list[CollectiveTiming]) -> tuple[float, float]:
    def best(scope: str) -> float:
        rates = [c.bytes / c.time_s for c in colls if c.scope == scope and c.op == "send_recv"]
        return max(rates, default=0.0)

    intra, inter = best("intra"), best("inter")
    return intra or 1e9, inter or intra or 1e8
