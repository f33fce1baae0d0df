"""Greedy plans to start the chains from, built layer by layer from each call's optima.

The calls of an iteration fall into dependency layers (planner.bounds.dependency_layers: PPO's
generation, then its three scoring calls, then its two train calls). A layer either runs its
calls one after another on the whole cluster, or side by side on disjoint meshes that split
it. The greedy plan starts with every call on the whole cluster in its fastest strategy, then
gives each layer in turn the best of those options with the other layers fixed (each call in
its fastest strategy on its mesh that lets the plan fit), for two sweeps.
"""

from __future__ import annotations

import itertools
import math

from planner.baselines import BUDGETS, partitions
from planner.bounds import dependency_layers
from planner.context import SearchContext
from plans import Allocation, DeviceMesh


def _fastest(
    ctx: SearchContext, meshes: dict[str, DeviceMesh], plan: dict[str, Allocation]
) -> tuple[float, dict[str, Allocation] | None]:
    """`plan` with the calls of `meshes` moved there, each in its fastest strategy under the
    loosest memory budget for which the plan fits."""
    mfcs = {m.name: m for m in ctx.exp.mfcs()}
    for frac in BUDGETS:
        trial = dict(plan)
        for name, mesh in meshes.items():
            s = ctx.fastest(mfcs[name], mesh, frac * ctx.cluster.memory_bytes)
            if s is None:
                return math.inf, None
            trial[name] = Allocation(mesh=mesh, strategy=s)
        cost = ctx.plan_cost(trial)
        if math.isfinite(cost):
            return cost, trial
    return math.inf, None


def layer_options(ctx: SearchContext, layer: list[str]) -> list[dict[str, DeviceMesh]]:
    """All calls of a layer on the whole cluster, or one disjoint mesh each (every split of
    the cluster into as many consecutive meshes, every assignment of meshes to calls)."""
    cl = ctx.cluster
    whole = DeviceMesh.whole(cl.nodes, cl.gpus_per_node)
    out = [{n: whole for n in layer}]
    if 1 < len(layer) <= cl.world_size:
        seen = set()
        for split in partitions(cl, len(layer)):
            for order in itertools.permutations(split):
                key = tuple((m.n_nodes, m.n_gpus) for m in order)
                if key not in seen:  # a call costs the same wherever a mesh of a shape sits
                    seen.add(key)
                    out.append(dict(zip(layer, order, strict=True)))
    return out


def greedy(
    ctx: SearchContext, fallback: dict[str, Allocation] | None = None, sweeps: int = 2
) -> dict[str, Allocation] | None:
    """The greedy layered plan; it starts from `fallback` when not every call fits on the
    whole cluster at once. None when neither start fits."""
    layers = dependency_layers(ctx.exp)
    cl = ctx.cluster
    whole = DeviceMesh.whole(cl.nodes, cl.gpus_per_node)
    cost, plan = _fastest(ctx, {m.name: whole for m in ctx.exp.mfcs()}, {})
    if plan is None:
        if fallback is None:
            return None
        cost, plan = ctx.plan_cost(fallback), dict(fallback)
    options = [layer_options(ctx, layer) for layer in layers]
    for _ in range(sweeps):
        changed = False
        for opts in options:
            for meshes in opts:
                c, trial = _fastest(ctx, meshes, plan)
                if trial is not None and c < cost:
                    cost, plan, changed = c, trial, True
        if not changed:
            break
    return plan
