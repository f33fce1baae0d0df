"""Lower bounds on the iteration time any plan can reach, from the calls' candidates alone.

Each call has a fastest candidate (`t_min`, on any mesh) and a cheapest one in device-seconds
(`area`: time x mesh size). Reallocations, data moves and memory shared with other models only
add to a plan, so two bounds hold for every plan the search could return:

- *area*: all calls' device-seconds spread perfectly over the cluster, sum(area) / devices;
- *cycle*: a trained role's calls of one iteration, from its first call to its train call, form
  a chain (data edges), and its next first call waits for that train call (version edge): the
  longest such chain of `t_min` bounds the steady-state iteration although iterations overlap
  (rlhf-run ends an iteration without a barrier). Under staleness k (plans.staleness) the
  actor's version edge runs from train call i to generation i + 1 + k: its chain then repeats
  once every k + 1 iterations, so it bounds k + 1 iterations, and the iteration by chain / (k + 1).

`dependency_layers` groups the calls into consecutive layers, each depending on all of the
layer before (PPO: generation; the three inference calls; the two train calls); the greedy
starting plans (planner.seeds) place one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.candidates import Scored
from plans import ExperimentSpec
from plans.dataflow import unrolled
from plans.staleness import stale_calls


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


def cycle_spans(exp: ExperimentSpec, staleness: int = 0) -> list[int]:
    """Iterations each of `cycles(exp)` spans: k + 1 for the cycle of a call that runs k
    iterations ahead under staleness k, else 1."""
    stale = set(stale_calls(exp.mfcs(), staleness))
    return [staleness + 1 if f in stale else 1 for f, _ in cycles(exp)]


def cycle_time(exp: ExperimentSpec, t: dict[str, float], staleness: int = 0) -> float:
    """Seconds per iteration at the least when each call takes `t`: the longest call, or the
    longest chain a version edge closes into a cycle, over the iterations that cycle spans."""
    chain = _chains(exp, t)
    spans = cycle_spans(exp, staleness)
    loops = [chain[tr].get(f, 0.0) / n for (f, tr), n in zip(cycles(exp), spans, strict=True)]
    return max([*t.values(), *loops])


def prune_slow(
    exp: ExperimentSpec, cands: dict[str, list[Scored]], limit: float, staleness: int = 0
) -> dict[str, list[Scored]]:
    """Drop candidates that no plan faster than `limit` seconds per iteration can use: a call
    repeats on its mesh every iteration, so its own time bounds the iteration; a call on a
    trained role's cycle bounds it together with the fastest candidates of the rest of the
    longest cycle through it (over the iterations the cycle spans, `cycle_spans`). A bound
    valid under staleness k holds for every smaller k too."""
    t_min = {n: min(c.time_s for c in lst) for n, lst in cands.items()}
    fwd = _chains(exp, t_min)
    anc = _ancestors(exp)
    # Per call: (seconds the rest of a cycle through it adds at the least, iterations spanned).
    rest: dict[str, list[tuple[float, int]]] = {n: [] for n in cands}
    for (f, tr), span in zip(cycles(exp), cycle_spans(exp, staleness), strict=True):
        for n in cands:
            if n in (f, tr) or (f in anc[n] and n in anc[tr]):
                through = fwd[n].get(f, t_min[n]) + fwd[tr].get(n, t_min[n]) - 2 * t_min[n]
                rest[n].append((through, span))

    def bound(n: str, t: float) -> float:
        return max([t, *((t + r) / span for r, span in rest[n])])

    return {
        n: [c for c in lst if bound(n, c.time_s) < limit] or lst[:1] for n, lst in cands.items()
    }


def lower_bounds(
    exp: ExperimentSpec, world: int, cands: dict[str, list[Scored]], staleness: int = 0
) -> Bounds:
    t_min = {n: min(c.time_s for c in lst) for n, lst in cands.items()}
    area = {n: min(c.time_s * c.alloc.mesh.size for c in lst) for n, lst in cands.items()}
    return Bounds(area_s=sum(area.values()) / world, cycle_s=cycle_time(exp, t_min, staleness))
