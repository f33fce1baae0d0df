"""Replay the unrolled call graph of a plan on its devices (list scheduling in global order).

Every rank walks the same global order (plans.dataflow); a call starts when its inputs are
ready and every device of its mesh is free, so calls on disjoint meshes overlap. Before a call,
its role's parameters are reallocated if they are in another layout (a timed step occupying
the union of old and new meshes), and data produced on another mesh is fetched (a timed step on
the consumer's mesh). Every role starts in the layout of its last call of an iteration, which is
where the steady state leaves it, so iteration 0 already pays the steady-state moves.

Devices are handled as *atoms*: maximal runs of ranks that no mesh boundary splits. Meshes are
contiguous rank ranges (node-major), so each mesh is a range of atoms and a simulation touches a
handful of numbers instead of one per device. That, and the CostModel caches, keep `simulate`
well under a millisecond for PPO over three iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from estimator.cost import CostModel
from plans import Allocation
from plans.dataflow import unrolled

DEFAULT_ITERATIONS = 3


@dataclass(frozen=True, slots=True)
class Step:
    """One bar of the timeline."""

    kind: str  # call, realloc or data
    name: str  # the call (for moves: the call they prepare)
    role: str
    iteration: int
    first_rank: int
    last_rank: int  # inclusive; a realloc spanning two meshes gives two steps
    start: float
    end: float


@dataclass(slots=True)
class SimResult:
    """What one simulation found; `iteration_time_s` is inf when the plan does not fit."""

    iteration_time_s: float
    feasible: bool
    reason: str = ""
    call_time_s: dict[str, float] = field(default_factory=dict)
    peak_memory: dict[str, float] = field(default_factory=dict)
    """Bytes on the busiest device of each call's mesh, counting every model resident there."""
    realloc_s: float = 0.0
    """Reallocation seconds per iteration (summed over steps, overlapping or not)."""
    data_s: float = 0.0
    makespan_s: float = 0.0
    steps: list[Step] = field(default_factory=list)


def _span(alloc: Allocation, gpn: int) -> tuple[int, int]:
    """First and one-past-last global rank of a mesh (meshes are contiguous rank ranges)."""
    m = alloc.mesh
    if m.n_nodes > 1:
        return m.node_start * gpn, (m.node_start + m.n_nodes) * gpn
    first = m.node_start * gpn + m.gpu_start
    return first, first + m.n_gpus


def simulate(
    cm: CostModel,
    allocations: dict[str, Allocation],
    iterations: int = DEFAULT_ITERATIONS,
    record: bool = False,
) -> SimResult:
    """Simulate `iterations` iterations; `record` keeps the per-step timeline."""
    exp = cm.experiment
    gpn = cm.cluster.gpus_per_node
    nodes = unrolled(exp.algorithm, iterations)
    calls = [n.mfc for n in nodes[: len(cm.mfcs)]]
    spans = {m.name: _span(allocations[m.name], gpn) for m in calls}
    bounds = sorted({b for sp in spans.values() for b in sp})
    atom_of = {b: i for i, b in enumerate(bounds)}
    atoms = {name: range(atom_of[a], atom_of[b]) for name, (a, b) in spans.items()}
    costs = {m.name: cm.call_cost(m.name, allocations[m.name]) for m in calls}
    res = SimResult(math.inf, True)
    res.call_time_s = {k: c.time_s for k, c in costs.items()}
    if not _memory(cm, calls, allocations, atoms, costs, len(bounds) - 1, res) and not record:
        return res  # the search needs only the verdict; `show` still wants the timeline
    free = [0.0] * (len(bounds) - 1)
    layout: dict[str, str] = {}  # role -> name of the call whose layout holds its weights
    role_ready: dict[str, float] = {}
    for m in calls:
        layout[m.role] = m.name
        role_ready[m.role] = 0.0
    end = [0.0] * len(nodes)
    iter_end = [0.0] * iterations
    for k, node in enumerate(nodes):
        m, it = node.mfc, node.iteration
        name, role = m.name, m.role
        alloc, mine = allocations[name], atoms[name]
        ready = max((end[p] for p in node.version_deps), default=0.0)
        if layout[role] != name:
            old = layout[role]
            move = cm.realloc_cost(role, allocations[old], alloc)
            if move.time_s > 0:
                both = sorted(set(atoms[old]) | set(mine))
                t0 = max(max(free[a] for a in both), role_ready[role], ready)
                t1 = t0 + move.time_s
                for a in both:
                    free[a] = t1
                ready = max(ready, t1)
                if it == iterations - 1:
                    res.realloc_s += move.time_s
                if record:
                    for sp in {spans[old], spans[name]}:
                        res.steps.append(Step("realloc", name, role, it, sp[0], sp[1] - 1, t0, t1))
            layout[role] = name
        start = max(ready, max(free[a] for a in mine))
        fetch = 0.0  # inputs from every producer on another mesh, fetched in one step
        for p, keys in node.data_deps:
            start = max(start, end[p])
            fetch += cm.data_cost(keys, name, allocations[nodes[p].mfc.name], alloc).time_s
        if fetch > 0:
            if record:
                sp = spans[name]
                res.steps.append(
                    Step("data", name, role, it, sp[0], sp[1] - 1, start, start + fetch)
                )
            start += fetch
            if it == iterations - 1:
                res.data_s += fetch
        finish = start + costs[name].time_s
        for a in mine:
            free[a] = finish
        end[k] = finish
        role_ready[role] = finish
        iter_end[it] = max(iter_end[it], finish)
        if record:
            sp = spans[name]
            res.steps.append(Step("call", name, role, it, sp[0], sp[1] - 1, start, finish))
    res.makespan_s = max(end)
    if res.feasible:
        res.iteration_time_s = iter_end[-1] - iter_end[-2] if iterations > 1 else iter_end[0]
    return res


def _memory(cm, calls, allocations, atoms, costs, n_atoms, res: SimResult) -> bool:
    """Plan-level memory: on each atom, every role's largest resident shard plus optimizer
    states of trained roles, plus the running call's transient memory."""
    resident = [0.0] * n_atoms
    by_role: dict[str, list[float]] = {}
    for m in calls:
        row = by_role.setdefault(m.role, [0.0] * n_atoms)
        c = costs[m.name]
        keep = c.memory.weights + c.memory.optimizer
        for a in atoms[m.name]:
            row[a] = max(row[a], keep)
    for row in by_role.values():
        for a in range(n_atoms):
            resident[a] += row[a]
    limit = cm.memory_bytes
    for m in calls:
        c = costs[m.name]
        peak = max(resident[a] for a in atoms[m.name]) + c.memory.transient
        res.peak_memory[m.name] = peak
        if peak > limit and res.feasible:
            res.feasible = False
            others = peak - c.memory.total
            parts = dict(c.memory.breakdown(), other_models=max(0.0, others))
            res.reason = cm.memory_reason(m.name, peak, parts)
    alone = next((costs[m.name] for m in calls if not costs[m.name].feasible), None)
    if alone is not None:  # name the call that cannot fit even by itself, not its neighbours
        res.reason = alone.reason
    return res.feasible


def estimate_allocations(
    cm: CostModel, allocations: dict[str, Allocation], iterations: int = DEFAULT_ITERATIONS
) -> tuple[float, SimResult]:
    """The search's cost function: (steady-state iteration seconds or inf, details)."""
    res = simulate(cm, allocations, iterations)
    return res.iteration_time_s, res
