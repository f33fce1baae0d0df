"""Compare two plans of the same experiment call by call."""

from __future__ import annotations

from typing import Any

from planner.graph import build_graph, global_order
from plans import Allocation, Plan
from plans.residency import layout_key


def reallocations(plan: Plan) -> set[tuple[str, str, str]]:
    """(role, from call, to call) for every change of a model's layout between consecutive calls
    of that model, cyclically over the iteration (the last call hands over to the next first)."""
    order = [n.split("@")[0] for n in global_order(build_graph(plan.experiment, 1))]
    moves = set()
    for role in plan.experiment.roles:
        calls = [c for c in order if plan.mfc(c).role == role]
        for a, b in zip(calls, calls[1:] + calls[:1], strict=True):
            if a != b and layout_key(plan.allocations[a]) != layout_key(plan.allocations[b]):
                moves.add((role, a, b))
    return moves


def _changes(a: Allocation, b: Allocation) -> list[str]:
    out = []
    if a.mesh != b.mesh:
        out.append(f"mesh {a.mesh.label()} -> {b.mesh.label()}")
    for f in ("dp", "tp", "pp", "micro_batches", "zero1", "recompute"):
        va, vb = getattr(a.strategy, f), getattr(b.strategy, f)
        if va != vb:
            out.append(f"{f} {va} -> {vb}")
    return out


def diff_plans(a: Plan, b: Plan, est_a: dict[str, Any], est_b: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready comparison. `est_*` map call name -> seconds plus "iteration" -> seconds."""
    calls = []
    # A call only one plan runs (e.g. the reference's, left out with kl_coef = 0) is listed too.
    names = dict.fromkeys([m.name for m in a.experiment.mfcs()] + list(b.allocations))
    for name in names:
        aa, bb = a.allocations.get(name), b.allocations.get(name)
        ta, tb = est_a.get(name), est_b.get(name)
        only = "only in A" if bb is None else "only in B" if aa is None else None
        calls.append(
            {
                "call": name,
                "a": aa and aa.label(),
                "b": bb and bb.label(),
                "changes": [only] if only else _changes(aa, bb),
                "time_a_s": ta,
                "time_b_s": tb,
                "delta_s": None if ta is None or tb is None else tb - ta,
            }
        )
    ra, rb = reallocations(a), reallocations(b)

    def fmt(moves):
        return [{"role": r, "from": x, "to": y} for r, x, y in sorted(moves)]

    ia, ib = est_a.get("iteration"), est_b.get("iteration")
    return {
        # As documents: a role section one of them set aside (unused_roles) runs nothing.
        "same_experiment": a.experiment.model_dump() == b.experiment.model_dump(),
        "same_cluster": a.cluster == b.cluster,
        "calls": calls,
        "reallocations_added": fmt(rb - ra),
        "reallocations_removed": fmt(ra - rb),
        "iteration_a_s": ia,
        "iteration_b_s": ib,
        "iteration_delta_s": None if ia is None or ib is None else ib - ia,
        "max_staleness_a": a.max_staleness,
        "max_staleness_b": b.max_staleness,
    }
