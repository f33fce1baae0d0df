"""`rlhf-plan profile --check PROFILE`: does a measured profile still describe this machine?

A profile is a set of timings taken on one machine on one day. Machines drift (another CPU
model behind the same name, other jobs' cache pressure, a torch upgrade) and the cost model
cannot tell: every estimate then carries the same error. This re-times a few of the profile's
own grid points -- the same ops, shards, batches and lengths, the same clock -- and reports
measured / profiled per op. It fits nothing and writes nothing: the answer to a drift is a
new profile, not a correction factor.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from estimator.profile import OpTiming, Profile
from estimator.shapes import DTYPE_BYTES
from executor.profiling.kernels import Grid, op_points, shard_pieces, timer
from executor.runtime.cpu_process import setup_cpu_process
from plans.devices import backend
from plans.presets import PRESETS

# Ops worth re-timing: each stands for one kind of work the cost model prices.
CHECKED = ("block_fwd", "block_fwd_bwd", "decode", "head_fwd")


@dataclass(frozen=True)
class CheckRow:
    op: str
    model: str
    tp: int
    batch: int
    seq_len: int
    profiled_s: float
    measured_s: float

    @property
    def ratio(self) -> float:
        return self.measured_s / self.profiled_s


def _middle(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]


def check_profile(profile: Profile) -> list[CheckRow]:
    """Re-time, for every preset shard the profile measured, its middle grid point of each
    op in CHECKED (CPU profiles are timed by process time, GPU ones by the wall clock)."""
    import torch

    device = backend(profile.device)
    cpu = device == "cpu"
    dt = DTYPE_BYTES[profile.dtype]
    if cpu:
        setup_cpu_process(profile.threads or 1)
    dtype = torch.float32 if profile.dtype == "float32" else torch.bfloat16
    sync = torch.cuda.synchronize if not cpu else (lambda: None)
    by_shape: dict[tuple[str, int], list[OpTiming]] = {}
    for t in profile.ops:
        if t.op in CHECKED and t.shape.model in PRESETS:
            by_shape.setdefault((t.shape.model, t.shape.tp), []).append(t)
    rows: list[CheckRow] = []
    for (name, tp), timings in sorted(by_shape.items()):
        grid_pts = [t for t in timings if t.op != "decode"]
        caches = [t.seq_len for t in timings if t.op == "decode"]
        b = _middle([t.batch for t in timings])
        s = _middle([t.seq_len for t in grid_pts]) if grid_pts else 16
        c = _middle(caches) if caches else s
        grid = Grid((name,), (tp,), (b,), (s,), (c,), (), 0.05, 3)
        clock = time.process_time if cpu else time.perf_counter
        timed = timer(sync, grid, clock, profile.statistic)
        model = shard_pieces(name, tp, dtype, torch.device(device))
        got = op_points(grid, model, name, tp, dt, torch.device(device), dtype, timed)
        profiled = {(t.op, t.batch, t.seq_len): t for t in timings}
        for m in got:
            p = profiled.get((m.op, m.batch, m.seq_len))
            if m.op in CHECKED and p is not None:
                rows.append(CheckRow(m.op, name, tp, m.batch, m.seq_len, p.time_s, m.time_s))
        del model
    return rows


def verdict(rows: list[CheckRow], tolerance: float = 0.15) -> tuple[float, str]:
    """(median measured/profiled ratio, one line saying what it means)."""
    if not rows:
        return float("nan"), "nothing to check: the profile has no preset shards of these ops"
    r = statistics.median(row.ratio for row in rows)
    if abs(r - 1) <= tolerance:
        return r, f"this machine runs the profile's ops at x{r:.2f} of its times: it holds"
    side = "faster" if r < 1 else "slower"
    return r, (
        f"this machine runs the profile's ops at x{r:.2f} of its times ({side}): estimates "
        f"made with it will be off by about that much; measure a new profile here "
        f"(rlhf-plan profile)"
    )
