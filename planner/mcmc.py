"""Metropolis MCMC with simulated annealing over full plans.

A state picks one candidate per call. A step changes one call: to a random candidate, to
another strategy on the same mesh, or onto the mesh another call uses (co-location saves
reallocation). The cost is the simulated iteration time; worse states are accepted with
probability exp(-delta / (T * cost)), T cooling geometrically over the step budget. The best
state seen is returned. Steps, not seconds, drive the schedule, so a seed gives the same plan
whenever the budget finishes inside the time limit.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from planner.candidates import Scored
from plans import Allocation

State = tuple[int, ...]  # one candidate index per call, in call order
PlanCost = Callable[[dict[str, Allocation]], float]  # iteration seconds; inf when infeasible


@dataclass(frozen=True)
class ChainResult:
    cost: float
    state: State
    steps: int
    timed_out: bool


class Space:
    """Candidates of every call plus the indices the proposals need."""

    def __init__(self, cands: dict[str, list[Scored]], groups: list[list[str]] | None = None):
        self.names = list(cands)
        # Calls that share a model: moving them together keeps them co-located, which a
        # one-call move can only reach through a costly reallocating middle state.
        self.groups = [[self.names.index(n) for n in g] for g in (groups or []) if len(g) > 1]
        self.cands = [cands[n] for n in self.names]
        # mesh -> candidate indices of each call on that mesh
        self.by_mesh: list[dict[object, list[int]]] = []
        for lst in self.cands:
            index: dict[object, list[int]] = {}
            for i, c in enumerate(lst):
                index.setdefault(c.alloc.mesh, []).append(i)
            self.by_mesh.append(index)

    def allocations(self, state: State) -> dict[str, Allocation]:
        return {
            n: self.cands[k][i].alloc
            for k, (n, i) in enumerate(zip(self.names, state, strict=True))
        }

    def random_state(self, rng: random.Random) -> State:
        return tuple(rng.randrange(len(c)) for c in self.cands)

    def propose(self, state: State, rng: random.Random) -> State:
        move = rng.random()
        if self.groups and move > 0.85:
            group = rng.choice(self.groups)
            lead = rng.choice(group)
            mesh = self.cands[lead][rng.randrange(len(self.cands[lead]))].alloc.mesh
            new = list(state)
            for k in group:
                options = self.by_mesh[k].get(mesh)
                if options:
                    new[k] = rng.choice(options)
            return tuple(new)
        if move > 0.7:
            # Several calls at once: the better plan may differ in two calls whose single
            # changes each make it worse (a generation layout that only pays off together with
            # a matching train layout).
            new = list(state)
            for k in rng.sample(range(len(state)), min(len(state), rng.choice((2, 2, 3)))):
                new[k] = rng.randrange(len(self.cands[k]))
            return tuple(new)
        k = rng.randrange(len(state))
        if move < 0.3:
            i = rng.randrange(len(self.cands[k]))
        elif move < 0.5:
            same = self.by_mesh[k][self.cands[k][state[k]].alloc.mesh]
            i = rng.choice(same)
        else:
            other = rng.randrange(len(state))
            mesh = self.cands[other][state[other]].alloc.mesh
            options = self.by_mesh[k].get(mesh)
            i = rng.choice(options) if options else rng.randrange(len(self.cands[k]))
        return state[:k] + (i,) + state[k + 1 :]


def run_chain(
    space: Space,
    plan_cost: PlanCost,
    seed: int,
    steps: int,
    deadline: float,
    start: State | None = None,
    rounds: int = 8,
    t_start: float = 0.05,
    t_end: float = 5e-4,
    report: Callable[[int, float], None] | None = None,
) -> ChainResult:
    """`steps` Metropolis steps in `rounds` annealing rounds; the first round starts from
    `start` (or a random state), later ones from fresh random states. Deep local optima of the
    plan space (a better plan often differs in several calls at once) trap one long anneal far
    more often than several short ones."""
    rng = random.Random(seed)
    memo: dict[State, float] = {}

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
        cur = start if (r == 0 and start is not None) else space.random_state(rng)
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
            c = cost(nxt)
            if not math.isfinite(c):
                continue
            if c <= cur_cost or (
                math.isfinite(cur_cost)
                and rng.random() < math.exp(-(c - cur_cost) / (temp * cur_cost))
            ):
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
    """Coordinate descent from `state`: give each call in turn its best candidate with the
    others fixed, until a sweep changes nothing or the deadline passes (then the third value is
    True). Annealing ends near an optimum; this settles ties and near-ties exactly."""
    best = plan_cost(space.allocations(state))
    improved = True
    while improved:
        improved = False
        for k in range(len(state)):
            for i in range(len(space.cands[k])):
                if time.monotonic() > deadline:
                    return best, state, True
                trial = state[:k] + (i,) + state[k + 1 :]
                if i != state[k] and (c := plan_cost(space.allocations(trial))) < best:
                    best, state, improved = c, trial, True
    return best, state, False
