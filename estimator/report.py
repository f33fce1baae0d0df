"""Whole-plan estimates: the contract's PlanEstimate and a richer report for the CLI."""

from __future__ import annotations

import datetime as dt
import math

from pydantic import BaseModel, Field

from estimator.cost import CostModel
from estimator.profile import Profile
from estimator.simulate import SimResult, simulate_plan, steady_iterations
from plans import (
    Allocation,
    CallEstimate,
    ClusterSpec,
    ExperimentSpec,
    Plan,
    PlanError,
    PlanEstimate,
    Provenance,
)
from plans.fields import unused_role_notes
from plans.staleness import refresh_call

GIB = 2**30


class CallReport(BaseModel):
    """One call of the plan as the cost model sees it."""

    name: str
    role: str
    kind: str
    model: str
    mesh: str = Field(description="Mesh label, e.g. n0:g0-3.")
    first_rank: int
    last_rank: int
    strategy: str = Field(description="Strategy label, e.g. d2t2p1 m4.")
    time_s: float
    peak_memory_gib: float = Field(description="Busiest device, every resident model counted.")
    feasible: bool
    reason: str = ""
    breakdown_s: dict[str, float] = Field(default_factory=dict)
    memory_gib: dict[str, float] = Field(default_factory=dict)


class MoveReport(BaseModel):
    """A reallocation or data transfer of the steady-state iteration."""

    kind: str = Field(description="realloc or data.")
    role: str
    before: str = Field(description="The call the move prepares.")
    time_s: float
    start_s: float
    end_s: float


class StepReport(BaseModel):
    """One bar of the timeline (all simulated iterations)."""

    kind: str
    name: str
    role: str
    iteration: int
    first_rank: int
    last_rank: int
    start_s: float
    end_s: float


class PlanReport(BaseModel):
    """What `rlhf-plan estimate --json` prints."""

    plan_method: str
    cluster: str
    profile: str = Field(description="Identity of the profile used.")
    profile_kind: str = Field(description="measured or analytic.")
    warnings: list[str] = Field(default_factory=list)
    feasible: bool
    reason: str = ""
    iteration_time_s: float | None = Field(description="Steady state; null when infeasible.")
    realloc_time_s: float
    data_time_s: float
    iterations_simulated: int
    max_staleness: int = Field(
        0, description="Iterations the actor's generation runs ahead of its training."
    )
    calls: list[CallReport]
    moves: list[MoveReport]
    timeline: list[StepReport]


def cost_model_for(plan: Plan, profile: Profile | None = None) -> CostModel:
    return CostModel(plan.cluster, plan.experiment, profile)


def estimate_plan(plan: Plan, profile: Profile | None = None) -> PlanEstimate:
    """The contract's estimate of a plan (analytic profile of the cluster when none given).
    Raises PlanError naming the call and the memory it needs when the plan does not fit."""
    cm = cost_model_for(plan, profile)
    res = simulate_plan(cm, plan)
    if not res.feasible:
        raise PlanError(f"the plan does not fit: {res.reason}", field="allocations")
    return _to_estimate(cm, res)


def estimated_plan(
    cluster: ClusterSpec,
    experiment: ExperimentSpec,
    allocations: dict[str, Allocation],
    profile: Profile | None,
    max_staleness: int = 0,
    **provenance,
) -> Plan:
    """A plan of these allocations, its generation `max_staleness` iterations ahead
    (plans.staleness), with its estimate and provenance (`created`: now)."""
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    plan = Plan(
        cluster=cluster,
        experiment=experiment,
        allocations=allocations,
        max_staleness=max_staleness,
        provenance=Provenance(created=created, **provenance),
    )
    return plan.model_copy(update={"estimate": estimate_plan(plan, profile)})


def _to_estimate(cm: CostModel, res: SimResult) -> PlanEstimate:
    finite = res.iteration_time_s if math.isfinite(res.iteration_time_s) else 0.0
    return PlanEstimate(
        iteration_time_s=finite,
        calls={
            k: CallEstimate(time_s=t, peak_memory_gib=res.peak_memory.get(k, 0.0) / GIB)
            for k, t in res.call_time_s.items()
        },
        realloc_time_s=res.realloc_s,
        profile=cm.profile.id,
    )


def plan_report(
    plan: Plan, profile: Profile | None = None, iterations: int | None = None
) -> PlanReport:
    cm = cost_model_for(plan, profile)
    k = plan.max_staleness
    iterations = iterations or steady_iterations(k)
    res = simulate_plan(cm, plan, iterations, record=True)
    gpn = plan.cluster.gpus_per_node
    warnings = []
    if cm.profile.kind == "measured" and cm.profile.device != plan.cluster.device:
        warnings.append(
            f"the profile was measured on {cm.profile.device!r} but the plan targets "
            f"{plan.cluster.device!r}"
        )
    if cm.profile.kind == "analytic":
        e = cm.profile.efficiency
        warnings.append(
            f"analytic profile: datasheet figures x efficiency (compute {e.compute}, memory "
            f"{e.memory}, links {e.link}); measure one with `rlhf-plan profile`"
        )
    warnings += unused_role_notes(plan.experiment)
    calls = []
    refresh = refresh_call(plan.experiment.mfcs(), k)
    for m in plan.experiment.mfcs():
        a = plan.allocations[m.name]
        c = cm.call_cost(m.name, a)
        breakdown = dict(c.breakdown)
        if m.name == refresh:  # the proximal log-probs' forward pass opens the call
            breakdown["proximal"] = cm.proximal_cost(m.name, a).time_s
        ranks = a.mesh.ranks(gpn)
        peak = res.peak_memory.get(m.name, c.memory.total)
        calls.append(
            CallReport(
                name=m.name,
                role=m.role,
                kind=m.kind,
                model=plan.experiment.model(m.role).name,
                mesh=a.mesh.label(),
                first_rank=ranks[0],
                last_rank=ranks[-1],
                strategy=a.strategy.label(),
                time_s=c.time_s + breakdown.get("proximal", 0.0),
                peak_memory_gib=peak / GIB,
                feasible=peak <= cm.memory_bytes,
                reason=c.reason
                if not c.feasible
                else (res.reason if res.reason.startswith(m.name + ":") else ""),
                breakdown_s=breakdown,
                memory_gib={k: v / GIB for k, v in c.memory.breakdown().items()},
            )
        )
    last = iterations - 1
    moves = [
        MoveReport(kind=s.kind, role=s.role, before=s.name, time_s=s.end - s.start,
                   start_s=s.start, end_s=s.end)
        for s in res.steps
        if s.kind != "call" and s.iteration == last
    ]  # fmt: skip
    seen: set[tuple] = set()
    unique = []
    for mv in moves:  # a realloc spanning two meshes is drawn twice but happens once
        key = (mv.kind, mv.before, mv.start_s)
        if key not in seen:
            seen.add(key)
            unique.append(mv)
    return PlanReport(
        plan_method=plan.provenance.method,
        cluster=plan.cluster.label(),
        profile=cm.profile.id,
        profile_kind=cm.profile.kind,
        warnings=warnings,
        feasible=res.feasible,
        reason=res.reason,
        iteration_time_s=res.iteration_time_s if res.feasible else None,
        realloc_time_s=res.realloc_s,
        data_time_s=res.data_s,
        iterations_simulated=iterations,
        max_staleness=k,
        calls=calls,
        moves=unique,
        timeline=[
            StepReport(
                kind=s.kind,
                name=s.name,
                role=s.role,
                iteration=s.iteration,
                first_rank=s.first_rank,
                last_rank=s.last_rank,
                start_s=s.start,
                end_s=s.end,
            )
            for s in res.steps
        ],  # fmt: skip
    )
