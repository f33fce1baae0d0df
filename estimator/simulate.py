"""Replay the unrolled call graph of a plan on its devices, as rlhf-run executes it.

Every rank of rlhf-run walks the same global order of calls (plans.dataflow) and, for each call:
1. brings the call's model into the call's layout by the rules of plans.residency (a role's
   home layout, views reallocated from it and kept until the layout changes again or the
   weights change); ranks of the home and target meshes take part and wait for each other;
2. waits for its inputs, then runs the call on the call's mesh;
3. posts the outputs to every consumer's mesh (the whole batch to each of its ranks) without
   waiting: the transfer starts once the consumer's ranks have reached that point of the order
   (they post their receives there) and runs in the background.
Iterations end without a barrier (metrics go through the store), so calls of the next
iteration overlap the tail of this one wherever the dependencies allow.

With a plan's staleness k > 0 (plans.staleness) the actor's generation of iteration i reads
the weights of train call i - 1 - k, from a view staged right before the actor's train call
of iteration i - k: that move (home and generation meshes both busy) replaces the one before
the generate call (iterations below k read initial views, moved before their generate call as
the synchronous order does), the generation mesh holds k such views, none sharing memory with
the home, and the train call first runs a forward pass for the proximal log-probs.

The simulator replays exactly that as list scheduling: each step (reallocation, call) starts
when every device it involves is free, in the global order, and a call also waits for its
inputs to arrive. The iteration time is the time between the ends of the last two simulated
iterations (the steady state; the first iteration already pays the steady-state moves; under
staleness the mean of the last two iterations, `steady_time`). With a contention factor (CPU
cores of one node slow each other down; estimator.contention), a first replay finds how busy
the other devices of each call's node are while it runs, the call's compute is stretched
accordingly, and the plan is replayed again.

Devices are handled as *atoms*: maximal runs of ranks that no mesh boundary splits. Meshes are
contiguous rank ranges (node-major), so each mesh is a range of atoms and a simulation touches a
handful of numbers instead of one per device. That, and the CostModel caches, keep `simulate`
well under a millisecond for PPO over three iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

from estimator.cost import CallCost, CostModel
from estimator.memory import shared_weight_bytes
from plans import Allocation, ModelSpec, Plan, PlanError
from plans.dataflow import unrolled
from plans.residency import Residency
from plans.staleness import home_layout_calls, refresh_call, stale_calls

DEFAULT_ITERATIONS = 3


def steady_iterations(staleness: int = 0) -> int:
    """Iterations to replay so the last ones are in the steady state: the synchronous three,
    plus two for each iteration generation runs ahead (the first k read initial views; the
    replays of random plans settle within k iterations, tests/unit/test_staleness_plan.py)."""
    return DEFAULT_ITERATIONS + 2 * staleness


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
    iter_end: list[float] = field(default_factory=list)
    concurrency: dict[str, float] = field(default_factory=dict)
    """With `record`: per call, the share of its node's other devices busy while it runs."""


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
    iterations: int | None = None,
    record: bool = False,
    staleness: int = 0,
) -> SimResult:
    """Simulate `iterations` iterations (None: steady_iterations(staleness)) with the actor's
    generation `staleness` iterations ahead; `record` keeps the per-step timeline (and the
    concurrency of every call)."""
    exp = cm.experiment
    if not 0 <= staleness <= exp.async_.max_staleness:
        raise PlanError(
            f"{staleness} is outside 0..{exp.async_.max_staleness} (async.max_staleness)",
            field="max_staleness",
        )
    gpn = cm.cluster.gpus_per_node
    iterations = iterations or steady_iterations(staleness)
    nodes = unrolled(exp.mfcs(), iterations, staleness)
    calls = [n.mfc for n in nodes[: len(cm.mfcs)]]
    spans = {m.name: _span(allocations[m.name], gpn) for m in calls}
    bounds = sorted({b for sp in spans.values() for b in sp})
    atom_of = {b: i for i, b in enumerate(bounds)}
    atoms = {name: range(atom_of[a], atom_of[b]) for name, (a, b) in spans.items()}
    costs = {m.name: call_cost_at(cm, m.name, allocations[m.name], staleness) for m in calls}
    res = SimResult(math.inf, True)
    res.call_time_s = {k: c.time_s for k, c in costs.items()}
    compute = {k: c.compute_s for k, c in costs.items()}
    rules = Residency.of(exp, allocations, staleness)
    shared = home_layout_calls(tuple(calls), staleness, rules.layouts)
    if shared:  # the plan check refuses these (plans.staleness): never a search's answer
        res.feasible = False
        res.reason = f"{shared[0]} shares its role's train layout under max_staleness {staleness}"
        return res
    stale = _Stale.of(tuple(calls), staleness, rules)
    if not _memory(cm, rules, calls, allocations, atoms, costs, bounds, res, stale) and not record:
        return res  # the search needs only the verdict; `show` still wants the timeline
    shape = (nodes, calls, spans, bounds, atoms, rules, stale)
    base = dict(res.call_time_s)
    kappa = {m.name: cm.contention(m) for m in calls} if gpn > 1 else {}
    if any(k > 0 for k in kappa.values()):
        # Cores of one CPU node slow each other down: replay once, see how busy the other
        # devices of each call's node are while it runs, stretch its compute, replay again.
        first = SimResult(math.inf, True)
        _replay(cm, allocations, shape, base, first, True)
        busy = _concurrency(first.steps, iterations - 1, spans, gpn)
        res.call_time_s = {k: t + kappa[k] * busy.get(k, 0.0) * compute[k] for k, t in base.items()}
    _replay(cm, allocations, shape, res.call_time_s, res, record)
    if record:
        res.concurrency = _concurrency(res.steps, iterations - 1, spans, gpn)
    if res.feasible:
        res.iteration_time_s = steady_time(res.iter_end, staleness)
    return res


def simulate_plan(
    cm: CostModel, plan: Plan, iterations: int | None = None, record: bool = False
) -> SimResult:
    """`simulate` of a plan as it runs: its allocations at its own max_staleness."""
    return simulate(cm, plan.allocations, iterations, record, plan.max_staleness)


def call_cost_at(cm: CostModel, name: str, alloc: Allocation, staleness: int) -> CallCost:
    """A call's cost in a plan whose generation runs `staleness` iterations ahead: the
    actor's train call then opens with the proximal log-probs' forward pass (plans.staleness),
    whose parts add to the call's own, part by part (same memory: the pass's is transient)."""
    c = cm.call_cost(name, alloc)
    if name != refresh_call(tuple(cm.mfcs.values()), staleness):
        return c
    p = cm.proximal_cost(name, alloc)
    parts = {
        k: c.breakdown.get(k, 0.0) + p.breakdown.get(k, 0.0) for k in c.breakdown | p.breakdown
    }
    return replace(
        c,
        time_s=c.time_s + p.time_s,
        breakdown=parts,
        passes=c.passes + p.passes,
        compute_s=c.compute_s + p.compute_s,
    )


def steady_time(iter_end: list[float], staleness: int = 0) -> float:
    """Seconds per iteration in the steady state: the last iteration's (synchronous), or the
    mean of the last two (with staleness: the generation mesh can alternate between two
    iteration times, generation and the staged move trading places)."""
    if len(iter_end) == 1:
        return iter_end[0]
    if staleness == 0 or len(iter_end) < 3:
        return iter_end[-1] - iter_end[-2]
    return (iter_end[-1] - iter_end[-3]) / 2


@dataclass(frozen=True, slots=True)
class _Stale:
    """What staleness k changes in a replay (plans.staleness): the generate calls whose views
    are staged before `refresh` (the actor's train call) from iteration k on (the roles whose
    views share nothing with their home are the Residency's `private`)."""

    k: int
    calls: frozenset[str]
    staged: tuple[str, ...]  # the stale calls that read a view, in canonical order
    refresh: str | None

    @classmethod
    def of(cls, calls: tuple, k: int, rules: Residency) -> _Stale:
        names = frozenset(stale_calls(calls, k))
        layouts: dict = {}  # one staged view per layout, however many stale calls read it
        for m in calls:
            if m.name in names and rules.is_view(m):
                layouts.setdefault(rules.layouts[m.name], m.name)
        staged = tuple(layouts.values())
        return cls(k, names, staged, refresh_call(calls, k))


def _concurrency(
    steps: list[Step], it: int, spans: dict[str, tuple[int, int]], gpn: int
) -> dict[str, float]:
    """Per call of iteration `it`: the share of the other devices of its node that are busy
    computing while it runs (its own other ranks count as busy), 0..1."""
    bars = [s for s in steps if s.kind == "call" and s.iteration == it]
    out: dict[str, float] = {}
    for s in bars:
        node = s.first_rank // gpn
        lo, hi = node * gpn, (node + 1) * gpn
        d = s.end - s.start
        if gpn <= 1 or d <= 0:
            out[s.name] = 0.0
            continue
        own = min(s.last_rank + 1, hi) - max(s.first_rank, lo)
        busy = float(own - 1)
        for o in bars:
            if o is s:
                continue
            # ranks of the other call on this node that are not ours, and for how long
            ranks = min(o.last_rank + 1, hi) - max(o.first_rank, lo)
            ranks -= max(0, min(o.last_rank, s.last_rank) - max(o.first_rank, s.first_rank) + 1)
            if ranks > 0:
                busy += ranks * max(0.0, min(s.end, o.end) - max(s.start, o.start)) / d
        out[s.name] = min(1.0, busy / (gpn - 1))
    return out


def _replay(cm, allocations, shape, times: dict[str, float], res: SimResult, record: bool):
    """List-schedule every step in rlhf-run's order with the given call times; fills res."""
    nodes, calls, spans, bounds, atoms, rules, stale = shape
    iterations = nodes[-1].iteration + 1
    home, consumers = rules.home, rules.consumers
    view = rules.steady_views(calls)  # the views an iteration leaves behind
    n_atoms = len(bounds) - 1
    free = [0.0] * n_atoms
    end = [0.0] * len(nodes)
    iter_end = [0.0] * iterations
    last = iterations - 1

    def move(role: str, name: str, it: int) -> None:
        """Reallocate `role` from its home into the layout of call `name`: every device of
        both meshes takes part."""
        hosting = role in rules.hosting  # never a role whose views must stay private
        cost = cm.realloc_cost(role, allocations[home[role]], allocations[name], hosting)
        if cost.time_s <= 0 and cost.bytes_total <= 0:
            return
        both = sorted(set(atoms[home[role]]) | set(atoms[name]))
        t0 = max(free[a] for a in both)
        t1 = t0 + cost.time_s
        for a in both:
            free[a] = t1
        if it == last:
            res.realloc_s += cost.time_s
        if record:
            for sp in {spans[home[role]], spans[name]}:
                res.steps.append(Step("realloc", name, role, it, sp[0], sp[1] - 1, t0, t1))

    arrive: dict[tuple[int, str], float] = {}  # (producer node, consumer) -> inputs there
    for k, node in enumerate(nodes):
        m, it = node.mfc, node.iteration
        name, role = m.name, m.role
        alloc, mine = allocations[name], atoms[name]
        if name == stale.refresh:  # stage the views generation k iterations ahead reads
            for g in stale.staged:
                move(role, g, it)
        if rules.move_before(view.get(role), m) and not (name in stale.calls and it >= stale.k):
            move(role, name, it)
        view[role] = rules.view_after(view.get(role), m)
        start = max(free[a] for a in mine)
        for p in node.version_deps:
            start = max(start, end[p])
        for p, _ in node.data_deps:
            start = max(start, arrive.get((p, name), end[p]))
        finish = start + times[name]
        for a in mine:
            free[a] = finish
        end[k] = finish
        iter_end[it] = max(iter_end[it], finish)
        if record:
            sp = spans[name]
            res.steps.append(Step("call", name, role, it, sp[0], sp[1] - 1, start, finish))
        for c in consumers[name]:  # posted now, received once the consumer gets here
            data = cm.data_cost(m.outputs, c, alloc, allocations[c])
            if data.bytes_total <= 0:
                continue
            t0 = max(finish, max(free[a] for a in atoms[c]))
            t1 = t0 + data.time_s
            arrive[(k, c)] = t1
            if it == last:
                res.data_s += data.time_s
            if record:
                sp = spans[c]
                res.steps.append(Step("data", c, cm.mfcs[c].role, it, sp[0], sp[1] - 1, t0, t1))
    res.makespan_s = max(iter_end)
    res.iter_end = iter_end


@lru_cache(maxsize=65536)
def _shared_on(
    model: ModelSpec,
    dtype: str,
    home: Allocation,
    copy: Allocation,
    hosting: bool,
    gpn: int,
    lo: int,
    hi: int,
) -> float:
    """What a copy shares with its home on every device of ranks [lo, hi) (the least)."""
    shared = shared_weight_bytes(model, dtype, home, copy, gpn, hosting)
    return min(shared.get(d, 0.0) for d in range(lo, hi))


def _memory(
    cm, rules: Residency, calls, allocations, atoms, costs, bounds, res: SimResult, stale: _Stale
) -> bool:
    """Plan-level memory: on each atom, every role's home shards (plus optimizer states of a
    trained role) and its largest copy in another layout, plus the running call's transient
    memory. rlhf-run keeps a role's home while a copy in another layout exists, and keeps the
    copy's memory for the next one after the weights change (plans.residency), so on
    devices holding both it needs both -- less what the copy shares with the home there
    (estimator.memory.shared_weight_bytes; the least over the atom's devices). Under
    staleness k the generation mesh holds k staged views, none sharing with the home."""
    home = rules.home
    n_atoms = len(bounds) - 1
    resident = [0.0] * n_atoms
    rows: dict[tuple[str, bool], list[float]] = {}  # (role, is a copy) -> bytes per atom
    gpn, dtype = cm.cluster.gpus_per_node, cm.experiment.dtype
    for m in calls:
        copy = rules.is_view(m)
        row = rows.setdefault((m.role, copy), [0.0] * n_atoms)
        c = costs[m.name]
        keep = c.memory.resident
        if not (copy and c.memory.weights > 0):
            for a in atoms[m.name]:
                row[a] = max(row[a], keep)
            continue
        if m.role in rules.private:
            views = stale.k if m.name in stale.calls else 1
            for a in atoms[m.name]:
                row[a] = max(row[a], views * keep)
            continue
        model, h_alloc = cm.experiment.model(m.role), allocations[home[m.role]]
        args = (model, dtype, h_alloc, allocations[m.name], m.role in rules.hosting, gpn)
        for a in atoms[m.name]:
            row[a] = max(row[a], keep - _shared_on(*args, bounds[a], bounds[a + 1]))
    for row in rows.values():
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
    cm: CostModel,
    allocations: dict[str, Allocation],
    iterations: int | None = None,
    staleness: int = 0,
) -> tuple[float, SimResult]:
    """The search's cost function: (steady-state iteration seconds or inf, details)."""
    res = simulate(cm, allocations, iterations, staleness=staleness)
    return res.iteration_time_s, res
