"""Heuristic baseline plans, each tuned within its family so that none is a strawman.

- symmetric: every call on every device with one shared (dp, tp, pp); micro-batches and ZeRO-1
  tuned per call (colocated systems such as DeepSpeed-Chat or verl's hybrid engine).
- separated: each model on its own disjoint block of devices, every call of that model there
  (systems with dedicated generation/training groups such as OpenRLHF); the split of the
  cluster and each call's strategy are tuned.
- megatron: every call on every device, tp = devices per node (or the largest legal), pp as
  small as memory allows, dp the rest; one strategy per model (the heuristic of the ReaLHF
  paper's comparison), micro-batches tuned per call.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from planner.bounds import cycle_time
from planner.candidates import mesh_shapes
from planner.context import SearchContext
from plans import Allocation, ClusterSpec, DeviceMesh

Baseline = tuple[float, dict[str, Allocation] | None]  # (iteration seconds or inf, allocations)


# Fractions of device memory one call may take, tried in turn until the whole plan fits: the
# fastest choice per call can leave no room for the other models resident on the same devices.
BUDGETS = (1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.2, 0.1)


def _tuned_plan(
    ctx: SearchContext, meshes: dict[str, DeviceMesh], shape: dict[str, tuple[int, int, int]] | None
) -> Baseline:
    """Each call's fastest strategy on its role's mesh (optionally of a fixed (dp, tp, pp) per
    role), under the loosest memory budget for which the plan as a whole fits."""
    for frac in BUDGETS:
        plan = {}
        for m in ctx.exp.mfcs():
            mesh = meshes[m.role]
            s = ctx.fastest(
                m, mesh, frac * ctx.cluster.memory_bytes, shape[m.role] if shape else None
            )
            if s is None:
                return math.inf, None
            plan[m.name] = Allocation(mesh=mesh, strategy=s)
        cost = ctx.plan_cost(plan)
        if math.isfinite(cost):
            return cost, plan
    return math.inf, None


def _better(a: Baseline, b: Baseline) -> Baseline:
    return b if b[0] < a[0] else a


def symmetric(ctx: SearchContext) -> Baseline:
    whole = DeviceMesh.whole(ctx.cluster.nodes, ctx.cluster.gpus_per_node)
    meshes = {r: whole for r in ctx.exp.roles}
    best: Baseline = (math.inf, None)
    for shape in mesh_shapes(whole.size, ctx.cluster.gpus_per_node):
        best = _better(best, _tuned_plan(ctx, meshes, {r: shape for r in ctx.exp.roles}))
    return best


def megatron(ctx: SearchContext) -> Baseline:
    exp, cluster = ctx.exp, ctx.cluster
    whole = DeviceMesh.whole(cluster.nodes, cluster.gpus_per_node)
    meshes = {r: whole for r in exp.roles}
    shape: dict[str, tuple[int, int, int]] = {}
    for role in exp.roles:
        model = exp.model(role)
        tp = cluster.gpus_per_node
        while tp > 1 and (
            model.num_attention_heads % tp
            or (model.num_key_value_heads % tp and tp % model.num_key_value_heads)
            or whole.size % tp
        ):
            tp //= 2
        shape[role] = (whole.size // tp, tp, 1)
    # pp as small as memory allows, for the plan as a whole (all models share the devices):
    # double the pp of the model with the most parameters per stage until the plan fits.
    for _ in range(32):
        best = _tuned_plan(ctx, meshes, shape)
        if best[1] is not None:
            return best
        growable = [
            r
            for r in shape
            if shape[r][0] % 2 == 0 and shape[r][2] * 2 <= exp.model(r).num_hidden_layers
        ]
        if not growable:
            break
        role = max(growable, key=lambda r: exp.model(r).num_params() / shape[r][2])
        dp, tp, pp = shape[role]
        shape[role] = (dp // 2, tp, pp * 2)
    return math.inf, None


def partitions(cluster: ClusterSpec, parts: int, start: int = 0) -> Iterator[list[DeviceMesh]]:
    """Ways to cut the devices from rank `start` on into `parts` consecutive legal meshes."""
    gpn, world = cluster.gpus_per_node, cluster.world_size
    if parts == 0:
        if start == world:
            yield []
        return
    node, gpu = divmod(start, gpn)
    options = []
    if gpu == 0:
        options += [
            DeviceMesh(node_start=node, n_nodes=n, gpu_start=0, n_gpus=gpn)
            for n in range(2, cluster.nodes - node + 1)
        ]
    size = 1
    while gpu + size <= gpn:
        if gpu % size == 0:
            options.append(DeviceMesh(node_start=node, n_nodes=1, gpu_start=gpu, n_gpus=size))
        size *= 2
    for mesh in options:
        end = start + mesh.size
        for rest in partitions(cluster, parts - 1, end):
            yield [mesh, *rest]


def _split_bound(ctx: SearchContext, meshes: dict[str, DeviceMesh]) -> float:
    """Iteration seconds at the least with each role on its mesh (inf when a call fits there
    in no strategy)."""
    times = {}
    for m in ctx.exp.mfcs():
        s = ctx.fastest(m, meshes[m.role], BUDGETS[0] * ctx.cluster.memory_bytes)
        if s is None:
            return math.inf
        times[m.name] = ctx.score(m.name, meshes[m.role], s)[0]
    return cycle_time(ctx.exp, times)


def separated(ctx: SearchContext) -> Baseline:
    roles = list(ctx.exp.roles)
    best: Baseline = (math.inf, None)
    if ctx.cluster.world_size < len(roles):
        return best
    seen = set()
    for split in partitions(ctx.cluster, len(roles)):
        for order in itertools.permutations(range(len(roles))):
            meshes = {roles[i]: split[k] for k, i in enumerate(order)}
            # A role's calls cost the same wherever a mesh of that shape sits; try each
            # assignment of shapes to roles once.
            key = tuple((r, m.n_nodes, m.n_gpus) for r, m in meshes.items())
            if key in seen:
                continue
            seen.add(key)
            # Skip splits that cannot beat the best so far even with every call in its fastest
            # strategy there (a lower bound on what _tuned_plan finds): same result, sooner.
            if _split_bound(ctx, meshes) < best[0]:
                best = _better(best, _tuned_plan(ctx, meshes, None))
    return best


BASELINES = {"symmetric": symmetric, "separated": separated, "megatron": megatron}
