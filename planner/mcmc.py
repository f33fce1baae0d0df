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

    def __init__(self, cands: dict[str, list[Scored]]):
        self.names = list(cands)
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
        k = rng.randrange(len(state))
        move = rng.random()
        if move < 0.4:
            i = rng.randrange(len(self.cands[k]))
        elif move < 0.7:
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
    t_start: float = 0.05,
    t_end: float = 5e-4,
    report: Callable[[int, float], None] | None = None,
) -> ChainResult:
    rng = random.Random(seed)
    memo: dict[State, float] = {}

    def cost(s: State) -> float:
        c = memo.get(s)
        if c is None:
            if len(memo) > 200_000:
                memo.clear()
            c = memo[s] = plan_cost(space.allocations(s))
        return c

    cur = start if start is not None else space.random_state(rng)
    cur_cost = cost(cur)
    # A random start is often infeasible; walk until something fits.
    tries = 0
    while not math.isfinite(cur_cost) and tries < 2000:
        cur = space.random_state(rng) if tries % 2 else tuple(0 for _ in cur)
        cur_cost, tries = cost(cur), tries + 1
    best, best_cost = cur, cur_cost
    timed_out = False
    step = 0
    for step in range(1, steps + 1):
        if step % 256 == 0:
            if time.monotonic() > deadline:
                timed_out = True
                break
            if report:
                report(step, best_cost)
        temp = t_start * (t_end / t_start) ** (step / steps)
        nxt = space.propose(cur, rng)
        c = cost(nxt)
        if not math.isfinite(c):
            continue
        if c <= cur_cost or (
            math.isfinite(cur_cost) and rng.random() < math.exp(-(c - cur_cost) / (temp * cur_cost))
        ):
            cur, cur_cost = nxt, c
            if c < best_cost or (c == best_cost and nxt < best):
                best, best_cost = nxt, c
    if report:
        report(step, best_cost)
    return ChainResult(best_cost, best, step, timed_out)
