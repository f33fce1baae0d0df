"""Search entry point: baselines, then MCMC chains (in parallel processes) or enumeration."""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass

from estimator.cost import CostModel
from estimator.profile import Profile
from planner import baselines
from planner.bounds import cycle_spans, cycles, predecessors, prune_slow
from planner.candidates import Scored, candidates
from planner.context import TIE, SearchContext
from planner.mcmc import ChainResult, Space, State, polish, run_chain
from planner.seeds import greedy
from plans import Allocation, ClusterSpec, ExperimentSpec, PlanError

EXHAUSTIVE_LIMIT = 2_000_000
Start = State | list[State] | None  # where a chain's first annealing rounds begin
Progress = Callable[[float, float], None]  # (fraction done, best seconds so far)


@dataclass
class SearchOutcome:
    method: str
    cost: float
    allocations: dict[str, Allocation]
    baselines: dict[str, float]
    search_time_s: float
    steps: int = 0
    timed_out: bool = False
    staleness: int = 0
    """The chosen k: iterations the actor's generation runs ahead (plans.staleness)."""
    sync_cost: float | None = None
    """The best synchronous (k = 0) plan's iteration seconds, for comparison (None for a
    baseline method, which is synchronous and not searched)."""


def _state_of(space: Space, allocs: dict[str, Allocation]) -> State | None:
    state = []
    for k, name in enumerate(space.names):
        idx = next((i for i, c in enumerate(space.cands[k]) if c.alloc == allocs[name]), None)
        if idx is None:
            return None
        state.append(idx)
    return tuple(state)


def _ensure(
    cands: dict[str, list[Scored]], ctx: SearchContext, allocs: dict[str, Allocation] | None
) -> None:
    """Make a baseline's choices available to the search, so it can never end up slower."""
    for name, alloc in (allocs or {}).items():
        if all(c.alloc != alloc for c in cands[name]):
            t, mem, _ = ctx.score(name, alloc.mesh, alloc.strategy)
            cands[name].append(Scored(alloc, t, mem))


def _chain_worker(space, ctx, seed, steps, deadline, start, chain_id, queue) -> None:
    def report(step: int, best: float) -> None:
        queue.put(("progress", chain_id, step, best))

    res = run_chain(space, ctx.plan_cost, seed, steps, deadline, start, report=report)
    queue.put(("done", chain_id, res))


def _run_chains(
    space: Space,
    ctx: SearchContext,
    seeds: list[int],
    steps: int,
    deadline: float,
    starts: list[Start],
    progress: Progress | None,
) -> list[ChainResult]:
    if len(seeds) == 1 or mp.get_start_method(allow_none=True) not in (None, "fork"):
        results = []
        for i, (seed, start) in enumerate(zip(seeds, starts, strict=True)):

            def report(step, best, i=i):
                if progress:
                    progress((i + step / steps) / len(seeds), best)

            results.append(
                run_chain(space, ctx.plan_cost, seed, steps, deadline, start, report=report)
            )
        return results
    fork = mp.get_context(
        "fork"
    )  # the context, its caches and the space are inherited, not pickled
    queue = fork.Queue()
    procs = [
        fork.Process(
            target=_chain_worker, args=(space, ctx, s, steps, deadline, st, i, queue), daemon=True
        )
        for i, (s, st) in enumerate(zip(seeds, starts, strict=True))
    ]
    for p in procs:
        p.start()
    done: dict[int, ChainResult] = {}
    done_steps = [0] * len(procs)
    best = math.inf
    try:
        while len(done) < len(procs):
            try:
                wait = None if math.isinf(deadline) else max(1.0, deadline - time.monotonic() + 30)
                kind, i, *rest = queue.get(timeout=wait)
            except Exception as e:
                raise PlanError(f"a search chain stopped without a result ({e!r})") from None
            if kind == "progress":
                done_steps[i], best = rest[0], min(best, rest[1])
            else:
                done[i] = rest[0]
                done_steps[i] = steps
            if progress:
                progress(sum(done_steps) / (steps * len(procs)), best)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    return [done[i] for i in range(len(procs))]


def optimize(
    space: Space,
    ctx: SearchContext,
    seeds: list[int],
    steps: int,
    deadline: float,
    starts: list[Start] | None = None,
    progress: Progress | None = None,
) -> tuple[ChainResult, bool]:
    """Chains (one per seed, in parallel processes), then coordinate descent from the best
    state they found, within the deadline. Returns the result and whether it timed out."""
    starts = starts or [None] * len(seeds)
    results = _run_chains(space, ctx, seeds, steps, deadline, starts, progress)
    best = min(results, key=lambda r: (r.cost, r.state))
    timed_out = any(r.timed_out for r in results)
    if math.isfinite(best.cost):
        cost, state, cut = polish(space, ctx.plan_cost, best.state, deadline)
        best = ChainResult(cost, state, sum(r.steps for r in results), timed_out or cut)
    return best, best.timed_out


def exhaustive(space: Space, ctx: SearchContext) -> tuple[float, State | None]:
    size = math.prod(len(c) for c in space.cands)
    if size > EXHAUSTIVE_LIMIT:
        raise PlanError(
            f"{size:.3g} plans are too many to enumerate (limit {EXHAUSTIVE_LIMIT:,}); "
            "use --method mcmc",
            field="method",
        )
    best, best_state = math.inf, None
    for state in itertools.product(*(range(len(c)) for c in space.cands)):
        c = ctx.plan_cost(space.allocations(state))
        if c < best:
            best, best_state = c, state
    return best, best_state


def search(
    exp: ExperimentSpec,
    cluster: ClusterSpec,
    profile: Profile | None = None,
    method: str = "mcmc",
    time_limit: float = 30.0,
    seed: int = 0,
    steps: int = 20_000,
    chains: int = 2,
    progress: Progress | None = None,
) -> SearchOutcome:
    """Find a fast plan. Same inputs and seed give the same plan whenever the step budget
    finishes inside the time limit (the outcome says whether it did).

    With `async.max_staleness` K > 0 two searches share the time limit: the synchronous one
    (k = 0), then one whose plans cost as much as their fastest k in 1..K, started from the
    synchronous result; the faster plan wins (the synchronous one on a tie). A plan and its k
    are searched together because they go together: generation running ahead only pays off
    on devices of its own, which the synchronous optimum rarely gives it."""
    t0 = time.monotonic()
    cm = CostModel(cluster, exp, profile)
    ctx = SearchContext(exp, cluster, cm)
    found = {name: fn(ctx) for name, fn in baselines.BASELINES.items()}
    base_costs = {name: c for name, (c, _) in found.items()}
    if method in found:
        cost, allocs = found[method]
        if allocs is None:
            raise PlanError(f"no {method} plan fits on {cluster.label()}", field="method")
        return SearchOutcome(method, cost, allocs, base_costs, time.monotonic() - t0)
    if method not in ("mcmc", "exhaustive"):
        raise PlanError(f"unknown method {method!r}", field="method")
    bound = exp.async_.max_staleness
    phases = 2 if bound else 1

    def phase(i: int) -> Progress | None:
        if progress is None:
            return None
        return lambda frac, best: progress((i + frac) / phases, best)

    share = t0 + time_limit / phases
    sync = _search_in(ctx, found, method, seed, steps, chains, share, phase(0), [], 0)
    if not math.isfinite(sync.cost):
        raise PlanError(f"no plan fits on {cluster.label()}", field="method")
    outcome = SearchOutcome(
        method,
        sync.cost,
        sync.allocations,
        base_costs,
        0.0,
        steps=sync.steps,
        timed_out=sync.timed_out,
        sync_cost=sync.cost,
    )
    if bound:
        actx = SearchContext(exp, cluster, cm, staleness=tuple(range(1, bound + 1)))
        ahead = _search_in(
            actx, found, method, seed, steps, chains, t0 + time_limit, phase(1),
            [sync.allocations], bound,
        )  # fmt: skip
        outcome.steps += ahead.steps
        outcome.timed_out = outcome.timed_out or ahead.timed_out
        if ahead.cost < sync.cost * (1 - TIE):
            outcome.cost, k = actx.fastest_staleness(ahead.allocations)
            outcome.allocations, outcome.staleness = ahead.allocations, k
    outcome.search_time_s = time.monotonic() - t0
    return outcome


@dataclass
class _Found:
    cost: float
    allocations: dict[str, Allocation]
    steps: int = 0
    timed_out: bool = False


def _search_in(
    ctx: SearchContext,
    found: dict[str, tuple[float, dict[str, Allocation] | None]],
    method: str,
    seed: int,
    steps: int,
    chains: int,
    deadline: float,
    progress: Progress | None,
    extra: list[dict[str, Allocation]],
    staleness: int,
) -> _Found:
    """One search under `ctx`'s cost (its plans' fastest k of `ctx.staleness`), started from
    the baselines, the greedy plan and `extra`; `staleness`: the largest k, for the bounds."""
    exp = ctx.exp
    cands = candidates(ctx)
    best_name = min(found, key=lambda n: found[n][0])
    # Starting plans: the greedy layered plan and the baselines, fastest first.
    seed_plans = [greedy(ctx, found[best_name][1])] + [a for _, a in found.values()] + extra
    seed_plans = sorted((a for a in seed_plans if a is not None), key=ctx.plan_cost)
    # A candidate slower than the best starting plan's whole iteration (alone, or together with
    # the fastest candidates of the rest of a cycle it lies on) cannot be part of a better plan.
    limit = ctx.plan_cost(seed_plans[0]) if seed_plans else math.inf
    if math.isfinite(limit):
        cands = prune_slow(exp, cands, limit * (1 + 1e-9), staleness)
    for allocs in seed_plans:
        _ensure(cands, ctx, allocs)
    space = Space(
        cands,
        [[m.name for m in exp.mfcs() if m.role == r] for r in exp.roles],
        ctx.cluster.gpus_per_node,
        predecessors(exp),
        cycles(exp),
        cycle_spans(exp, staleness),
    )
    if method == "exhaustive":
        cost, state = exhaustive(space, ctx)
        return _Found(cost, space.allocations(state) if state is not None else {})
    # The chains' first rounds start from the starting plans, dealt out in turn; their other
    # rounds from random states.
    seeded = list(dict.fromkeys(s for a in seed_plans if (s := _state_of(space, a)) is not None))
    starts = [seeded[c::chains] or None for c in range(chains)]
    seeds = [seed * 1000 + staleness * chains + i for i in range(chains)]
    best, timed_out = optimize(space, ctx, seeds, steps, deadline, starts, progress)
    if not math.isfinite(best.cost):
        return _Found(math.inf, {}, best.steps, timed_out)
    return _Found(best.cost, space.allocations(best.state), best.steps, timed_out)


def search_at(
    exp: ExperimentSpec,
    cluster: ClusterSpec,
    k: int,
    profile: Profile | None = None,
    time_limit: float = 30.0,
    seed: int = 0,
    steps: int = 20_000,
    chains: int = 2,
    start: dict[str, Allocation] | None = None,
) -> tuple[float, dict[str, Allocation]]:
    """(seconds, allocations) of the fastest plan found that runs with exactly staleness k,
    started from the baselines, the greedy plan and `start` (benchmarks compare k this way)."""
    ctx = SearchContext(exp, cluster, CostModel(cluster, exp, profile), staleness=(k,))
    found = {name: fn(ctx) for name, fn in baselines.BASELINES.items()}
    deadline = time.monotonic() + time_limit
    extra = [start] if start else []
    got = _search_in(ctx, found, "mcmc", seed, steps, chains, deadline, None, extra, k)
    return got.cost, got.allocations
