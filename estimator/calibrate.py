"""Refine a profile from rlhf-run measurements, and the accuracy figures that judge it.

`calibrate(base, runs)` relates what rlhf-run measured (`compute_s` of each call in
metrics.jsonl, median over the iterations kept) to what the cost model with `base` predicts for
the same call under the same allocation:

    measured = scale[kind] x compute + contention x busy x compute
               + comm_scale x comm + overhead[kind] x passes

`compute` is the part of the prediction that comes from op timings (compute, prefill, pipeline
bubble, optimizer), `comm` the part from collective timings (tp, pp, dp), `passes` the call's
micro-batch passes (generate: decoded tokens), and `kind` is generate, inference or train.
`busy` is the share of the other devices of the call's node that the simulator has computing
while the call runs. `scale` absorbs what single-op timings miss systematically (a one-block
model whose weights stay in cache, the wall clock instead of a quiet CPU clock), `contention`
how much slower compute gets while the other cores of the node compute too (shared caches,
memory and page allocator: 3-28% for an 85M-parameter forward+backward on the development
machine, more for small micro-batches), `comm_scale` what the collective timings miss inside
real calls, `overhead` fixed work per pass.

The fit minimises the squared *relative* error over all measured calls. It always fits the
per-kind scales; the communication scale, the contention and each overhead are added one at a
time, and kept
only when the runs determine them (one run of one plan often cannot tell a scale from an
overhead, or compute from communication), the value is physical (scales > 0, overheads >= 0)
and the error drops by at least 10%; otherwise they stay at their defaults (1 and 0) and the
notes say why. A kind with no measured call keeps the base profile's factors. A rule reward's
call gives the seconds per scored sequence instead.

The refined profile keeps every timing of `base`, carries the factors in `calibration` and
records the runs in `refinements`; its id says it was calibrated. Nothing here imports torch.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from estimator.cost import COMPUTE_PARTS, CostModel
from estimator.profile import Calibration, KindFactors, Profile
from estimator.simulate import call_cost_at, simulate_plan
from plans import Plan, PlanError, load_plan
from plans.metrics import FILE, MetricsRow, read_metrics
from plans.packing import with_measured_lengths

KINDS = ("generate", "inference", "train")


# ---- accuracy figures ---------------------------------------------------------------------
def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n of `values`, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation: Pearson correlation of the ranks (ties averaged). NaN when
    fewer than two points or when either side is constant."""
    if len(x) != len(y):
        raise ValueError("spearman needs two sequences of the same length")
    if len(x) < 2:
        return math.nan
    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def relative_error(estimate: float, measured: float) -> float:
    """(estimate - measured) / measured: +0.1 means the estimate is 10% too high."""
    return (estimate - measured) / measured


# ---- runs ----------------------------------------------------------------------------------
@dataclass
class RunData:
    """One rlhf-run folder: the plan it ran and the iterations that count."""

    plan: Plan
    rows: list[MetricsRow]
    source: str = ""

    @property
    def plan_profile_id(self) -> str:
        return self.plan.estimate.profile if self.plan.estimate else ""

    @property
    def experiment(self):
        """The plan's experiment; a packed one priced at the responses this run measured."""
        lens = [r.stat("response_len") for r in self.rows]
        exp = self.plan.experiment
        return with_measured_lengths(exp, [x for x in lens if x is not None])

    def measured(self) -> dict[str, float]:
        """Median measured seconds per call (compute_s: the call itself, slowest rank)."""
        names = {n for r in self.rows for n in r.calls}
        return {
            n: statistics.median(r.calls[n].compute_s for r in self.rows if n in r.calls)
            for n in sorted(names)
        }


def load_run(run_dir: Path, plan_path: Path | None = None, skip: int = 1) -> RunData:
    """Read <run_dir>/metrics.jsonl (iterations >= skip) and the plan it ran."""
    run_dir = Path(run_dir)
    metrics = run_dir / FILE
    if not metrics.exists():
        raise PlanError("no metrics.jsonl in the run folder", source=str(run_dir))
    plan_path = Path(plan_path) if plan_path else run_dir / "plan.json"
    if not plan_path.exists():
        raise PlanError(
            "the run folder has no plan.json; name the plan it ran with --plan",
            source=str(run_dir),
        )
    plan = load_plan(plan_path)
    rows = [r for r in read_metrics(metrics) if r.iteration >= skip]
    if not rows:
        raise PlanError(
            f"no iterations left after skipping the first {skip} (warm-up)", source=str(metrics)
        )
    unknown = {c for r in rows for c in r.calls} - set(plan.allocations)
    if unknown:
        raise PlanError(
            f"metrics name calls the plan does not have: {', '.join(sorted(unknown))}; is it "
            "the plan this run executed?",
            source=str(metrics),
        )
    return RunData(plan, rows, str(run_dir))


# ---- the fit -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One measured call next to the base prediction's pieces."""

    call: str
    kind: str
    measured: float
    compute: float  # seconds from op timings (scaled by a calibration)
    comm: float  # seconds from collective timings (not scaled)
    passes: int
    sequences: int  # rule reward: sequences scored on the busiest rank
    busy: float = 0.0  # share of the node's other devices busy while it runs (simulated)


@dataclass
class Fit:
    """What `calibrate` found, for printing."""

    points: list[Point] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibration: Calibration | None = None

    def summary(self) -> dict:
        cal = self.calibration
        return {
            "kinds": {k: f.model_dump() for k, f in (cal.kinds.items() if cal else [])},
            "rule_reward_s_per_seq": cal.rule_reward_s_per_seq if cal else None,
            "points": [p.__dict__ for p in self.points],
            "notes": self.notes,
        }


def uncalibrated(profile: Profile) -> Profile:
    """The profile without calibration factors (what a fit starts from)."""
    return profile.model_copy(update={"calibration": None})


def points(base: Profile, runs: list[RunData]) -> list[Point]:
    """Measured calls with the uncalibrated prediction's compute and communication seconds."""
    out = []
    prof = uncalibrated(base)
    for run in runs:
        cm = CostModel(run.plan.cluster, run.experiment, prof)
        busy = simulate_plan(cm, run.plan, record=True).concurrency
        for name, meas in run.measured().items():
            mfc = cm.mfcs[name]
            alloc = run.plan.allocations[name]
            c = call_cost_at(cm, name, alloc, run.plan.max_staleness)  # its proximal pass too
            kind = "rule" if cm.rule_reward(mfc) else mfc.kind
            compute = sum(v for k, v in c.breakdown.items() if k in COMPUTE_PARTS)
            comm = c.time_s - compute if kind != "rule" else 0.0
            seqs = math.ceil(run.plan.experiment.sequences(mfc) / alloc.strategy.dp)
            out.append(Point(name, kind, meas, compute, comm, c.passes, seqs, busy.get(name, 0.0)))
    return out


Param = tuple[str, str]  # ("scale" | "overhead", kind), ("comm", "") or ("contention", "")


def _column(param: Param, p: Point) -> float:
    what, kind = param
    if what == "comm":
        return p.comm
    if what == "contention":
        return p.busy * p.compute
    if p.kind != kind:
        return 0.0
    return p.compute if what == "scale" else float(p.passes)


def _solve(pts: list[Point], params: list[Param]) -> tuple[list[float], float] | None:
    """Least squares of the relative errors over `params` (the others at their defaults:
    comm 1, overheads 0); None when the points do not determine every parameter."""
    fixed = [(("comm", ""), 1.0)] if ("comm", "") not in params else []  # contention: 0
    a = np.array([[_column(q, p) / p.measured for q in params] for p in pts])
    b = np.array([1.0 - sum(v * _column(q, p) for q, v in fixed) / p.measured for p in pts])
    if not len(pts) or np.linalg.matrix_rank(a, tol=1e-9 * max(np.abs(a).max(), 1e-30)) < len(
        params
    ):
        return None
    theta, *_ = np.linalg.lstsq(a, b, rcond=None)
    rss = float(np.sum((a @ theta - b) ** 2))
    return [float(x) for x in theta], rss


def fit_factors(pts: list[Point], min_gain: float = 0.1) -> tuple[dict[Param, float], list[str]]:
    """Per-kind compute scales, then -- only where the points determine them, the values are
    physical (scale > 0, overhead >= 0) and the squared relative error drops by at least
    `min_gain` -- a shared communication scale and per-kind overheads per pass. Returns the
    fitted values and what was left at its default and why."""
    pts = [p for p in pts if p.measured > 0 and p.kind in KINDS]
    kinds = [k for k in KINDS if any(p.kind == k and p.compute > 0 for p in pts)]
    params: list[Param] = [("scale", k) for k in kinds]
    notes: list[str] = []
    best = _solve(pts, params) if params else None
    if best is None:
        return {}, ["no call with compute to fit"]
    for extra in [("comm", ""), ("contention", "")] + [("overhead", k) for k in kinds]:
        name = {"comm": "communication scale", "contention": "contention"}.get(
            extra[0], f"{extra[1]} overhead"
        )
        trial = _solve(pts, [*params, extra])
        if trial is None:
            notes.append(f"{name}: not determined by these runs (kept at its default)")
            continue
        theta, rss = trial
        values = dict(zip([*params, extra], theta, strict=True))
        physical = all(
            v >= 0 if q[0] in ("overhead", "contention") else v > 0 for q, v in values.items()
        )
        if not physical:
            notes.append(f"{name}: best fit is unphysical ({values[extra]:.3g}); kept at default")
        elif rss > (1 - min_gain) * best[1]:
            notes.append(f"{name}: improves the fit by less than {min_gain:.0%}; kept at default")
        else:
            params, best = [*params, extra], trial
    return dict(zip(params, best[0], strict=True)), notes


def fit_kind(pts: list[Point]) -> tuple[float, float, bool]:
    """One kind alone, communication unscaled: (scale, overhead_s, overhead fitted)."""
    values, _ = fit_factors(pts)
    kind = pts[0].kind if pts else "train"
    s = values.get(("scale", kind), 1.0)
    o = values.get(("overhead", kind))
    return s, o or 0.0, o is not None


def _median_abs(errors: list[float]) -> float:
    return statistics.median(abs(e) for e in errors) if errors else 0.0


def calibrate(base: Profile, runs: list[RunData], command: str = "") -> tuple[Profile, Fit]:
    """The refined profile and what was fitted (see the module docstring)."""
    if not runs:
        raise PlanError("no runs to calibrate from", field="--from-run")
    for run in runs:
        if run.plan.cluster.device != base.device:
            raise PlanError(
                f"the run's plan targets {run.plan.cluster.device!r} but the profile was "
                f"measured on {base.device!r}",
                source=run.source or None,
            )
    fit = Fit(points=points(base, runs))
    old = base.calibration
    kinds: dict[str, KindFactors] = dict(old.kinds) if old else {}
    values, fit.notes = fit_factors(fit.points)
    comm = values.get(("comm", ""), old.comm_scale if old else 1.0)
    kappa = values.get(("contention", ""), 0.0)
    for kind in KINDS:
        pts = [p for p in fit.points if p.kind == kind]
        if not pts:
            fit.notes.append(f"no measured {kind} call: its factors are left as they were")
            continue
        s = values.get(("scale", kind), 1.0)
        o = values.get(("overhead", kind), 0.0)
        before = [relative_error(p.compute + p.comm, p.measured) for p in pts]
        after = [
            relative_error(
                s * p.compute + kappa * p.busy * p.compute + comm * p.comm + o * p.passes,
                p.measured,
            )
            for p in pts
        ]
        kinds[kind] = KindFactors(
            scale=s,
            overhead_s=o,
            samples=len(pts),
            error_before=_median_abs(before),
            error_after=_median_abs(after),
        )
    rule = [p for p in fit.points if p.kind == "rule"]
    per_seq = base.calibration.rule_reward_s_per_seq if base.calibration else None
    if rule:
        per_seq = statistics.median(p.measured / max(p.sequences, 1) for p in rule)
    fitted = [f"{w} {k}".strip() for w, k in values]
    cal = Calibration(
        kinds=kinds,
        comm_scale=comm,
        contention=kappa,
        fitted=fitted,
        rule_reward_s_per_seq=per_seq,
    )
    fit.calibration = cal
    stamp = datetime.now(UTC)
    sources = [r.source for r in runs if r.source]
    note = "; ".join(
        f"{k}: scale {f.scale:.3f}, overhead {f.overhead_s * 1e3:.2f} ms/pass from {f.samples} "
        f"call(s), median error {f.error_before:.1%} -> {f.error_after:.1%}"
        for k, f in kinds.items()
    )
    note += (
        f"; communication scale {comm:.3f}; contention {kappa:.3f}; fitted: "
        f"{', '.join(fitted) or 'nothing'}"
    )
    if per_seq is not None:
        note += f"; rule reward {per_seq * 1e6:.0f} us/sequence"
    profile = base.refined(
        {"id": f"{base.id.split('+cal')[0]}+cal-{stamp:%Y%m%d-%H%M%S}", "calibration": cal},
        "calibration",
        stamp,
        command,
        note,
        sources,
    )
    return profile, fit
