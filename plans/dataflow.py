"""The unrolled call graph and the one global order of calls, from a tuple of calls alone.

The planner (planner.graph wraps it in networkx), the estimator's simulator and the runtime all
read it here: nodes are (call, iteration);
data edges join a key's producer to its consumers in the same iteration; parameter-version edges
join a trained role's train call of iteration i-1 to the first calls of that role in iteration
i (for the actor's generate calls under staleness k: of iteration i-1-k, plans.staleness); the
global order is topological with ties broken by (iteration, canonical index). It is pure
Python so the simulator can cache it per (calls, iterations, staleness); the calls are an
experiment's (`ExperimentSpec.mfcs()`, which may leave out calls of the algorithm's table)
or, given a name, the algorithm's whole table.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import lru_cache

from plans.algorithms import MFC, Calls, mfcs, trained_roles
from plans.staleness import stale_calls


@dataclass(frozen=True, slots=True)
class Node:
    """One call in one iteration, with its dependencies as positions in the global order."""

    mfc: MFC
    iteration: int
    index: int
    data_deps: tuple[tuple[int, tuple[str, ...]], ...]
    """(producer position, keys) for every producer in the same iteration."""
    version_deps: tuple[int, ...]
    """Positions of the train calls of an earlier iteration whose weights this call needs."""


def unrolled(calls: Calls, iterations: int, staleness: int = 0) -> tuple[Node, ...]:
    """Nodes of `iterations` iterations in the global order every rank walks."""
    return _unrolled(tuple(mfcs(calls)), iterations, staleness)


@lru_cache(maxsize=64)
def _unrolled(calls: tuple[MFC, ...], iterations: int, staleness: int) -> tuple[Node, ...]:
    producer = {key: i for i, m in enumerate(calls) for key in m.outputs}
    n = len(calls)
    data: dict[int, list[tuple[int, tuple[str, ...]]]] = {}
    ancestors: list[set[int]] = []  # same-iteration ancestors by canonical index
    for i, m in enumerate(calls):
        srcs: dict[int, list[str]] = {}
        for key in m.inputs:
            if key in producer:
                srcs.setdefault(producer[key], []).append(key)
        data[i] = [(j, tuple(k)) for j, k in srcs.items()]
        anc: set[int] = set()
        for j in srcs:
            anc |= {j} | ancestors[j]
        ancestors.append(anc)
    stale = set(stale_calls(calls, staleness))
    lag = [staleness if m.name in stale else 0 for m in calls]  # extra iterations back
    firsts: dict[int, list[int]] = {}  # canonical index -> train calls it follows
    for role in sorted(trained_roles(calls)):
        trains = [i for i, m in enumerate(calls) if m.role == role and m.kind == "train"]
        same = [i for i, m in enumerate(calls) if m.role == role]
        for i in same:
            if not (ancestors[i] & set(same)):
                firsts.setdefault(i, []).extend(trains)
    # Edges between global node ids (it * n + index).
    preds: dict[int, list[int]] = {g: [] for g in range(iterations * n)}
    for it in range(iterations):
        for i in range(n):
            g = it * n + i
            preds[g] += [it * n + j for j, _ in data[i]]
            if it - 1 - lag[i] >= 0:
                preds[g] += [(it - 1 - lag[i]) * n + t for t in firsts.get(i, [])]
    indeg = {g: len(p) for g, p in preds.items()}
    succs: dict[int, list[int]] = {g: [] for g in preds}
    for g, ps in preds.items():
        for p in ps:
            succs[p].append(g)
    heap = [(g // n, g % n, g) for g, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, _, g = heapq.heappop(heap)
        order.append(g)
        for s in succs[g]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, (s // n, s % n, s))
    pos = {g: k for k, g in enumerate(order)}
    nodes = []
    for g in order:
        it, i = divmod(g, n)
        back = it - 1 - lag[i]
        version = tuple(pos[back * n + t] for t in firsts.get(i, [])) if back >= 0 else ()
        nodes.append(
            Node(
                mfc=calls[i],
                iteration=it,
                index=i,
                data_deps=tuple((pos[it * n + j], keys) for j, keys in data[i]),
                version_deps=version,
            )
        )
    return tuple(nodes)
