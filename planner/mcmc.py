"""Metropolis MCMC with simulated annealing over full plans.

A state picks one candidate per call. A step changes one call or a few related ones:

- a random candidate (a mesh shape drawn uniformly first, so the many positions of small
  meshes do not crowd out the few large ones), or another strategy on the same mesh;
- onto the mesh another call uses (co-location saves reallocation), or onto a neighbouring
  mesh (grown, shrunk or shifted by one node or half its size);
- two calls at once on adjacent or shared meshes: move the boundary between them, split the
  shared mesh, or merge the two meshes into one for both (a better split of the cluster between
  two calls that run side by side is out of reach of one-call moves, which must pass through
  overlapping, serialised states);
- every call of one model onto one mesh, or two or three calls to random candidates.

The cost is the simulated iteration time; worse states are accepted with probability
exp(-delta / (T * cost)), T cooling geometrically over each annealing round. The best state
seen is returned. Steps, not seconds, drive the schedule, so a seed gives the same plan
whenever the budget finishes inside the time limit.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planner.candidates import Scored
from plans import Allocation, DeviceMesh

State = tuple[int, ...]  # one candidate index per call, in call order
PlanCost = Callable[[dict[str, Allocation]], float]  # iteration seconds; inf when infeasible
Span = tuple[int, int]  # first and one-past-last global rank of a mesh


@dataclass(frozen=True)
class ChainResult:
    cost: float
    state: State
    steps: int
    timed_out: bool


def span(mesh: DeviceMesh, gpus_per_node: int) -> Span:
    lo = mesh.node_start * gpus_per_node + mesh.gpu_start
    return lo, lo + (mesh.n_nodes - 1) * gpus_per_node + mesh.n_gpus


class Space:
    """Candidates of every call plus the indices the proposals need."""

    def __init__(
        self,
        cands: dict[str, list[Scored]],
        groups: list[list[str]] | None = None,
        gpus_per_node: int | None = None,
        after: dict[str, list[str]] | None = None,
        cycles: list[tuple[str, str]] | None = None,
        spans: list[int] | None = None,
    ):
        self.names = list(cands)
        # Calls each call waits for within an iteration (data edges), and the (first call,
        # train call) chains that a version edge closes into a cycle, for `lower`. The names
        # must then be in a topological order (the algorithm's canonical order is).
        self.preds = [[self.names.index(p) for p in (after or {}).get(n, [])] for n in self.names]
        self.cycles = [(self.names.index(f), self.names.index(t)) for f, t in cycles or []]
        # Iterations each cycle spans (planner.bounds.cycle_spans: k + 1 for the actor's under
        # staleness k).
        self.spans = list(spans) if spans is not None else [1] * len(self.cycles)
        # Calls that share a model: moving them together keeps them co-located, which a
        # one-call move can only reach through a costly reallocating middle state.
        self.groups = [[self.names.index(n) for n in g] for g in (groups or []) if len(g) > 1]
        self.cands = [cands[n] for n in self.names]
        # Without a cluster at hand, a node is at least as wide as the widest mesh end seen.
        self.gpn = gpus_per_node or max(
            c.alloc.mesh.gpu_start + c.alloc.mesh.n_gpus for lst in self.cands for c in lst
        )
        # mesh -> candidate indices of each call on that mesh; the fastest one of them
        self.by_mesh: list[dict[DeviceMesh, list[int]]] = []
        self.fastest: list[dict[DeviceMesh, int]] = []
        # meshes of each call grouped by shape, for shape-uniform draws
        self.shapes: list[list[list[DeviceMesh]]] = []
        self.mesh_at: dict[Span, DeviceMesh] = {}
        for lst in self.cands:
            index: dict[DeviceMesh, list[int]] = {}
            for i, c in enumerate(lst):
                index.setdefault(c.alloc.mesh, []).append(i)
            self.by_mesh.append(index)
            self.fastest.append(
                {
                    m: min(ids, key=lambda i, lst=lst: (lst[i].time_s, lst[i].memory_bytes, i))
                    for m, ids in index.items()
                }
            )
            by_shape: dict[tuple[int, int], list[DeviceMesh]] = {}
            for m in index:
                by_shape.setdefault((m.n_nodes, m.n_gpus), []).append(m)
                self.mesh_at[span(m, self.gpn)] = m
            self.shapes.append(list(by_shape.values()))
        self.his_from: dict[int, list[int]] = {}  # lo -> his of every mesh starting at lo
        for lo, hi in sorted(self.mesh_at):
            self.his_from.setdefault(lo, []).append(hi)
        self._neighbors: dict[DeviceMesh, list[DeviceMesh]] = {}

    def lower(self, state: State) -> float:
        """Iteration seconds at the least (planner.bounds.cycle_time for this state): a call
        repeats on its mesh every iteration, and a trained role's chain from its first call to
        its train call repeats after the train call (the version edge), however iterations
        overlap (over the iterations the cycle spans)."""
        t = [self.cands[k][i].time_s for k, i in enumerate(state)]
        best = max(t)
        for (first, train), n in zip(self.cycles, self.spans, strict=True):
            reach = [-math.inf] * len(t)  # longest chain from `first` to each call
            reach[first] = t[first]
            for k in range(first + 1, train + 1):
                before = max((reach[p] for p in self.preds[k]), default=-math.inf)
                reach[k] = before + t[k]
            best = max(best, reach[train] / n)
        return best

    def allocations(self, state: State) -> dict[str, Allocation]:
        return {
            n: self.cands[k][i].alloc
            for k, (n, i) in enumerate(zip(self.names, state, strict=True))
        }

    def mesh(self, k: int, state: State) -> DeviceMesh:
        return self.cands[k][state[k]].alloc.mesh

    def random_state(self, rng: random.Random) -> State:
        return tuple(self.random_candidate(k, rng) for k in range(len(self.cands)))

    def random_candidate(self, k: int, rng: random.Random) -> int:
        """A shape uniformly, then a position, then a strategy there."""
        mesh = rng.choice(rng.choice(self.shapes[k]))
        return rng.choice(self.by_mesh[k][mesh])

    def on_mesh(self, k: int, mesh: DeviceMesh, rng: random.Random) -> int | None:
        """A candidate of call k on `mesh`: the fastest half of the time, else any."""
        options = self.by_mesh[k].get(mesh)
        if not options:
            return None
        return self.fastest[k][mesh] if rng.random() < 0.5 else rng.choice(options)

    def neighbors(self, mesh: DeviceMesh) -> list[DeviceMesh]:
        """Meshes one block away: either end moved by one node (by the mesh's own size inside
        a node) or by half the mesh's size: grown, shrunk, shifted, doubled or halved."""
        got = self._neighbors.get(mesh)
        if got is None:
            lo, hi = span(mesh, self.gpn)
            size = hi - lo
            units = {min(size, self.gpn), max(1, size // 2)}
            seen: set[Span] = set()
            for u in units:
                for a in (lo - u, lo, lo + u):
                    for b in (hi - u, hi, hi + u):
                        if a < b and (a, b) != (lo, hi) and (a, b) in self.mesh_at:
                            seen.add((a, b))
            got = self._neighbors[mesh] = [self.mesh_at[s] for s in sorted(seen)]
        return got

    def pair_options(self, k: int, j: int, state: State) -> list[tuple[DeviceMesh, DeviceMesh]]:
        """New (mesh of k, mesh of j) for two calls whose meshes touch or coincide: every split
        of their union into two meshes (either way round) and the union for both."""
        a, b = span(self.mesh(k, state), self.gpn), span(self.mesh(j, state), self.gpn)
        if not (a == b or a[1] == b[0] or b[1] == a[0]):
            return []
        lo, hi = min(a[0], b[0]), max(a[1], b[1])
        out = []
        for c in self.his_from.get(lo, []):
            if c < hi and c in self.his_from and hi in self.his_from[c]:
                left, right = self.mesh_at[(lo, c)], self.mesh_at[(c, hi)]
                out += [(left, right), (right, left)]
        if (lo, hi) in self.mesh_at:
            whole = self.mesh_at[(lo, hi)]
            out.append((whole, whole))
        now = (self.mesh(k, state), self.mesh(j, state))
        return [o for o in out if o != now and o[0] in self.by_mesh[k] and o[1] in self.by_mesh[j]]

    def propose(self, state: State, rng: random.Random) -> State:
        n = len(state)
        move = rng.random()
        if move > 0.9 and self.groups:
            group = rng.choice(self.groups)
            lead = rng.choice(group)
            mesh = self.mesh(lead, state) if rng.random() < 0.5 else None
            if mesh is None:
                mesh = self.cands[lead][self.random_candidate(lead, rng)].alloc.mesh
            new = list(state)
            for k in group:
                i = self.on_mesh(k, mesh, rng)
                if i is not None:
                    new[k] = i
            return tuple(new)
        if move > 0.8:
            # Several calls at once: the better plan may differ in two calls whose single
            # changes each make it worse (a generation layout that only pays off together with
            # a matching train layout).
            new = list(state)
            for k in rng.sample(range(n), min(n, rng.choice((2, 2, 3)))):
                new[k] = self.random_candidate(k, rng)
            return tuple(new)
        k = rng.randrange(n)
        if move > 0.65 and n > 1:
            pairs = [
                (j, opts)
                for j in range(n)
                if j != k
                for opts in [self.pair_options(k, j, state)]
                if opts
            ]
            if pairs:
                j, opts = rng.choice(pairs)
                mk, mj = rng.choice(opts)
                new = list(state)
                new[k] = self.on_mesh(k, mk, rng)  # type: ignore[call-overload]
                new[j] = self.on_mesh(j, mj, rng)  # type: ignore[call-overload]
                return tuple(new)
            move = rng.random() * 0.65
        if move < 0.25:
            i = self.random_candidate(k, rng)
        elif move < 0.4:
            i = rng.choice(self.by_mesh[k][self.mesh(k, state)])
        elif move < 0.52:
            other = rng.randrange(n)
            got = self.on_mesh(k, self.mesh(other, state), rng)
            i = got if got is not None else self.random_candidate(k, rng)
        else:
            near = [m for m in self.neighbors(self.mesh(k, state)) if m in self.by_mesh[k]]
            got = self.on_mesh(k, rng.choice(near), rng) if near else None
            i = got if got is not None else self.random_candidate(k, rng)
        return state[:k] + (i,) + state[k + 1 :]


def run_chain(
    space: Space,
    plan_cost: PlanCost,
    seed: int,
    steps: int,
    deadline: float,
    start: State | Sequence[State] | None = None,
    rounds: int = 8,
    t_start: float = 0.05,
    t_end: float = 5e-4,
    report: Callable[[int, float], None] | None = None,
) -> ChainResult:
    """`steps` Metropolis steps in `rounds` annealing rounds. The rounds start from the given
    states in turn (one state or several), then from fresh random states. Deep local optima of
    the plan space (a better plan often differs in several calls at once) trap one long anneal
    far more often than several short ones."""
    rng = random.Random(seed)
    memo: dict[State, float] = {}
    if start is None:
        starts: list[State] = []
    elif start and isinstance(start[0], int):
        starts = [start]  # type: ignore[list-item]
    else:
        starts = list(start)  # type: ignore[arg-type]

    def cost(s: State) -> float:
        c = memo.get(s)
        if c is None:
            if len(memo) > 200_000:
                memo.clear()
            c = memo[s] = plan_cost(space.allocations(s))
        return c

    best: State | None = None
    best_cost = math.inf
    timed_out = False
    done = 0
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        cur = starts[r] if r < len(starts) else space.random_state(rng)
        cur_cost = cost(cur)
        tries = 0
        while not math.isfinite(cur_cost) and tries < 2000:  # random states may not fit
            cur = space.random_state(rng) if tries % 2 else tuple(0 for _ in cur)
            cur_cost, tries = cost(cur), tries + 1
        if cur_cost < best_cost or best is None:
            best, best_cost = cur, cur_cost
        for step in range(1, per_round + 1):
            done += 1
            if done % 256 == 0:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                if report:
                    report(done, best_cost)
            temp = t_start * (t_end / t_start) ** (step / per_round)
            nxt = space.propose(cur, rng)
            # Metropolis: accept a worse state with probability exp(-delta / (T * cost)), i.e.
            # when its cost is below `threshold`. Drawing the chance first lets a state whose
            # lower bound already reaches the threshold be rejected without simulating it.
            threshold = cur_cost * (1.0 - temp * math.log(max(rng.random(), 1e-300)))
            if nxt not in memo and space.lower(nxt) >= threshold:
                continue
            c = cost(nxt)
            if not math.isfinite(c):
                continue
            if c <= cur_cost or c < threshold:
                cur, cur_cost = nxt, c
                if c < best_cost or (c == best_cost and nxt < best):
                    best, best_cost = nxt, c
        if timed_out:
            break
    if report:
        report(done, best_cost)
    assert best is not None
    return ChainResult(best_cost, best, done, timed_out)


def polish(
    space: Space, plan_cost: PlanCost, state: State, deadline: float
) -> tuple[float, State, bool]:
    """Local search from `state` until nothing improves or the deadline passes (then the third
    value is True): give each call in turn its best candidate with the others fixed; then for
    every two calls on touching or shared meshes, try each other split of their union (and the
    union for both) with each call's best strategy there. Annealing ends near an optimum; this
    settles ties and near-ties exactly."""
    memo: dict[State, float] = {}

    def cost(s: State) -> float:
        c = memo.get(s)
        if c is None:
            c = memo[s] = plan_cost(space.allocations(s))
        return c

    best = cost(state)
    n = len(state)

    def out_of_time() -> bool:
        return time.monotonic() > deadline

    while True:
        improved = False
        for k in range(n):
            for i in range(len(space.cands[k])):
                if out_of_time():
                    return best, state, True
                trial = state[:k] + (i,) + state[k + 1 :]
                if i == state[k] or space.lower(trial) >= best:
                    continue
                if (c := cost(trial)) < best:
                    best, state, improved = c, trial, True
        for k in range(n):
            for j in range(k + 1, n):
                for mk, mj in space.pair_options(k, j, state):
                    if out_of_time():
                        return best, state, True
                    pair = list(state)
                    pair[k], pair[j] = space.fastest[k][mk], space.fastest[j][mj]
                    trial = tuple(pair)
                    c = cost(trial)
                    # then each of the two: its best strategy on its new mesh
                    for x, mesh in ((k, mk), (j, mj)):
                        for i in space.by_mesh[x][mesh]:
                            other = trial[:x] + (i,) + trial[x + 1 :]
                            if space.lower(other) < c and (c_other := cost(other)) < c:
                                c, trial = c_other, other
                    if c < best:
                        best, state, improved = c, trial, True
        if not improved:
            return best, state, False
