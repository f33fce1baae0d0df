"""Cost model of RLHF plans: profiles, per-call time and memory, moves, and a simulator.

Never imports torch, the executor or the planner (tests/unit/test_architecture.py checks it):
measuring a profile is executor.profiling's job. The API the search calls:

    from estimator import CostModel, estimate_allocations, load_profile, analytic_profile

    cm = CostModel(cluster, experiment, profile)        # profile=None: analytic roofline
    cm.call_cost(mfc_name, alloc) -> CallCost           # .time_s, .memory (CallMemory),
                                                        # .feasible, .reason, .breakdown
    cm.time(mfc_name, alloc) -> float                   # seconds
    cm.peak_memory(mfc_name, alloc) -> float            # bytes, this call's model alone
    cm.feasible(mfc_name, alloc) -> (bool, reason)      # prune candidates with this
    cm.realloc_cost(role, src_alloc, dst_alloc) -> Transfer   # .time_s, .bytes_total, ...
    cm.data_cost(keys, consumer_mfc, src_alloc, dst_alloc) -> Transfer

    t, details = estimate_allocations(cm, {mfc_name: Allocation})
        # t: steady-state seconds per iteration, math.inf when the plan does not fit in
        # memory (details.reason says which call, device and how many GiB). details is a
        # SimResult (call_time_s, peak_memory, realloc_s, data_s). ~0.15 ms per call for PPO.

    simulate(cm, allocations, iterations=3, record=True).steps   # timeline for display
    simulate_plan(cm, plan, record=True)                         # a plan at its own max_staleness
    estimate_plan(plan, profile=None) -> plans.PlanEstimate      # raises PlanError if it
                                                                 # does not fit
    plan_report(plan, profile=None) -> PlanReport                # everything the CLI shows

Build one CostModel per (cluster, experiment, profile) and reuse it: call and move costs are
cached per (call, allocation), keyed first by object identity, so reusing the same Allocation
objects across proposals is the fastest path. Memory of a plan counts, on every device, each
role's home shards (plus optimizer states of a trained role) and its copy in another layout
less what the two share there (plans.residency says where copies exist and which roles host
their home rows inside them), plus the running call's gradients, activations and KV cache
(see estimator.memory)."""

from estimator.cost import CallCost, CostModel
from estimator.memory import CallMemory
from estimator.profile import (
    Efficiency,
    Profile,
    analytic_profile,
    load_profile,
    profile_schema,
    save_profile,
)
from estimator.report import PlanReport, estimate_plan, plan_report
from estimator.simulate import SimResult, estimate_allocations, simulate, simulate_plan
from estimator.transfer import Transfer

__all__ = [
    "CallCost",
    "CallMemory",
    "CostModel",
    "Efficiency",
    "PlanReport",
    "Profile",
    "SimResult",
    "Transfer",
    "analytic_profile",
    "estimate_allocations",
    "estimate_plan",
    "load_profile",
    "plan_report",
    "profile_schema",
    "save_profile",
    "simulate",
    "simulate_plan",
]
