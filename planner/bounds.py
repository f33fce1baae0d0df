"""Lower bounds on the iteration time any plan can reach, from the calls' candidates alone.

Each call has a fastest candidate (`t_min`, on any mesh) and a cheapest one in device-seconds
(`area`: time x mesh size). Reallocations, data moves and memory shared with other models only
add to a plan, so two bounds hold for every plan the search could return:

- *area*: all calls' device-seconds spread perfectly over the cluster, sum(area) / devices;
- *cycle*: a trained role's calls of one iteration, from its first call to its train call, form
  a chain (data edges), and its next first call waits for that train call (version edge): the
  longest such chain of `t_min` bounds the steady-state iteration although iterations overlap
  (rlhf-run ends an iteration without a barrier).

`dependency_layers` groups the calls into consecutive layers, each depending on all of the
layer before (PPO: generation; the three inference calls; the two train calls); the greedy
starting plans (planner.seeds) place one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.candidates import Scored
from plans import ExperimentSpec
from plans.dataflow import unrolled


@dataclass(frozen=True)
class Bounds:
    area_s: float
    cycle_s: float

    @property
    def lower_s(self) -> float:
        return max(self.area_s, self.cycle_s)


def predecessors(exp: ExperimentSpec) -> dict[str, list[str]]:
    """The calls each call reads data from within one iteration."""
    nodes = unrolled(exp.mfcs(), 1)
    return {n.mfc.name: [nodes[p].mfc.name for p, _ in n.data_deps] for n in nodes}


def _ancestors(exp: ExperimentSpec) -> dict[str, set[str]]:
    """Same-iteration ancestors (through data edges) of every call."""
    nodes = unrolled(exp.mfcs(), 1)
    anc: dict[str, set[str]] = {}
    for n in nodes:  # the global order is topological
        mine: set[str] = set()
        for p, _ in n.data_deps:
            producer = nodes[p].mfc.name
            mine |= {producer} | anc[producer]
        anc[n.mfc.name] = mine
    return anc


def dependency_layers(exp: ExperimentSpec) -> list[list[str]]:
    """Calls grouped by longest-path depth, adjacent groups merged until every call of a
    group depends on every call of the group before it."""
    anc = _ancestors(exp)
    names = [m.name for m in exp.mfcs()]
    depth: dict[str, int] = {}
    for n in names:  # canonical order is topological
        depth[n] = max((depth[a] + 1 for a in anc[n]), default=0)
    layers = [[n for n in names if depth[n] == d] for d in range(max(depth.values()) + 1)]
    merged = [layers[0]]
    for layer in layers[1:]:
        if all(set(merged[-1]) <= anc[n] for n in layer):
            merged.append(layer)
        else:
            merged[-1] = merged[-1] + layer
    return merged


def _chains(exp: ExperimentSpec, t: dict[str, float]) -> dict[str, dict[str, float]]:
    """call -> start call -> seconds of the longest chain of data edges from start to call
    (both included), each call counted at `t`."""
    anc = _ancestors(exp)
    chain: dict[str, dict[str, float]] = {}
    for m in exp.mfcs():  # canonical order is topological
        n = m.name
        chain[n] = {n: t[n]}
        for a in anc[n]:
            for s, ts in chain[a].items():
                chain[n][s] = max(chain[n].get(s, 0.0), ts + t[n])
    return chain


def cycles(exp: ExperimentSpec) -> list[tuple[str, str]]:
    """(first call, train call) of every trained role: the two ends of a chain that the
    version edge closes into a cycle."""
    anc = _ancestors(exp)
    mfcs = exp.mfcs()
    out = []
    for role in sorted({m.role for m in mfcs if m.kind == "train"}):
        mine = {m.name for m in mfcs if m.role == role}
        firsts = [m.name for m in mfcs if m.name in mine and not (anc[m.name] & mine)]
        trains = [m.name for m in mfcs if m.role == role and m.kind == "train"]
        out += [(f, tr) for f in firsts for tr in trains if f == tr or f in anc[tr]]
    return out


def cycle_time(exp: ExperimentSpec, t: dict[str, float]) -> float:
    """Seconds per iteration at the least when each call takes `t`: the longest call, or the
    longest chain a version edge closes into a cycle."""
    chain = _chains(exp, t)
    return max([*t.values(), *(chain[tr].get(f, 0.0) for f, tr in cycles(exp))])


def prune_slow(
    exp: ExperimentSpec, cands: dict[str, list[Scored]], limit: float
) -> dict[str, list[Scored]]:
    """Drop candidates that no plan faster than `limit` seconds per iteration can use: a call
    repeats on its mesh every iteration, so its own time bounds the iteration; a call on a
    trained role's cycle bounds it together with the fastest candidates of the rest of the
    longest cycle through it."""
    t_min = {n: min(c.time_s for c in lst) for n, lst in cands.items()}
    fwd = _chains(exp, t_min)
    anc = _ancestors(exp)
    # Seconds the rest of the longest cycle through each call adds at the least.
    rest = {n: 0.0 for n in cands}
    for f, tr in cycles(exp):
        for n in cands:
            if n in (f, tr) or (f in anc[n] and n in anc[tr]):
                through = fwd[n].get(f, t_min[n]) + fwd[tr].get(n, t_min[n]) - 2 * t_min[n]
                rest[n] = max(rest[n], through)
    return {
        n: [c for c in lst if c.time_s + rest[n] < limit] or lst[:1] for n, lst in cands.items()
    }


def lower_bounds(exp: ExperimentSpec, world: int, cands: dict[str, list[Scored]]) -> Bounds:
    t_min = {n: min(c.time_s for c in lst) for n, lst in cands.items()}
    area = {n: min(c.time_s * c.alloc.mesh.size for c in lst) for n, lst in cands.items()}
    return Bounds(area_s=sum(area.values()) / world, cycle_s=cycle_time(exp, t_min))
