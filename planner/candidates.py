"""Candidate allocations of each call: legal meshes x strategies x micro-batches x ZeRO-1,
minus those that do not fit and those another candidate on the same mesh dominates."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plans import (
    MFC,
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ExperimentSpec,
    ParallelStrategy,
    PlanError,
)
from plans.plan import check_allocation

if TYPE_CHECKING:
    from planner.context import SearchContext


@dataclass(frozen=True, slots=True)
class Scored:
    """A candidate with its stand-alone cost."""

    alloc: Allocation
    time_s: float
    memory_bytes: float


def meshes(cluster: ClusterSpec) -> list[DeviceMesh]:
    """Every legal mesh: aligned power-of-two blocks inside a node, runs of whole nodes above."""
    out: list[DeviceMesh] = []
    size = 1
    while size <= cluster.gpus_per_node:
        for node in range(cluster.nodes):
            for start in range(0, cluster.gpus_per_node - size + 1, size):
                out.append(DeviceMesh(node_start=node, n_nodes=1, gpu_start=start, n_gpus=size))
        size *= 2
    for n in range(2, cluster.nodes + 1):
        for node in range(cluster.nodes - n + 1):
            out.append(
                DeviceMesh(node_start=node, n_nodes=n, gpu_start=0, n_gpus=cluster.gpus_per_node)
            )
    return out


def _micro_batch_choices(mfc: MFC, pp: int, dp: int, per_step: int) -> list[int]:
    """Powers of two from 1 (or pp, so a pipeline can fill) up to what the batch allows (one
    sequence per micro-batch: a deep pipeline's bubble keeps shrinking until there). Generation:
    1 only, since executor.compute.generate decodes a rank's whole share at once (and the estimator
    prices it so); other counts would be the same plan under another name."""
    if mfc.kind == "generate":
        return [1]
    limit = per_step // dp
    m = 1
    out = []
    while m <= limit:
        if m >= pp or m == limit:
            out.append(m)
        m *= 2
    return out or [1]


def mesh_shapes(size: int, gpus_per_node: int) -> Iterator[tuple[int, int, int]]:
    """Every (dp, tp, pp) with dp*tp*pp == size and a power-of-two tp inside one node, tp then
    pp ascending."""
    tp = 1
    while tp <= min(size, gpus_per_node):
        if size % tp == 0:
            for pp in range(1, size // tp + 1):
                if (size // tp) % pp == 0:
                    yield size // tp // pp, tp, pp
        tp *= 2


def strategies(
    mesh: DeviceMesh, mfc: MFC, exp: ExperimentSpec, cluster: ClusterSpec
) -> list[ParallelStrategy]:
    """Every strategy that fills the mesh and passes the contract's checks."""
    model = exp.model(mfc.role)
    out = []
    for dp, tp, pp in mesh_shapes(mesh.size, cluster.gpus_per_node):
        if pp > model.num_hidden_layers:
            continue
        for m in _micro_batch_choices(mfc, pp, dp, exp.sequences_per_step(mfc)):
            train = mfc.kind == "train"
            for zero1, rc in itertools.product(
                (False, True) if train and dp > 1 else (False,),
                (False, True) if train else (False,),
            ):
                s = ParallelStrategy(
                    dp=dp, tp=tp, pp=pp, micro_batches=m, zero1=zero1, recompute=rc
                )
                try:
                    check_allocation(
                        Allocation(mesh=mesh, strategy=s), mfc, exp, cluster, field=mfc.name
                    )
                except PlanError:
                    continue
                out.append(s)
    return out


def pareto(items: list[Scored]) -> list[Scored]:
    """Keep candidates no other one beats on both time and memory."""
    items = sorted(items, key=lambda c: (c.time_s, c.memory_bytes))
    kept: list[Scored] = []
    best_mem = float("inf")
    for c in items:
        if c.memory_bytes < best_mem:
            kept.append(c)
            best_mem = c.memory_bytes
    return kept


def candidates(ctx: SearchContext, *, prune: bool = True) -> dict[str, list[Scored]]:
    """Per call: the feasible candidates, Pareto-pruned per mesh, fastest first.

    A call's stand-alone cost depends on the mesh's shape (nodes x devices), not on where the
    mesh sits, so each shape is scored and pruned once and then placed at every position.
    """
    exp, cluster = ctx.exp, ctx.cluster
    by_shape: dict[tuple[int, int], list[DeviceMesh]] = {}
    for mesh in meshes(cluster):
        by_shape.setdefault((mesh.n_nodes, mesh.n_gpus), []).append(mesh)
    result: dict[str, list[Scored]] = {}
    for mfc in exp.mfcs():
        kept: list[Scored] = []
        for positions in by_shape.values():
            first = positions[0]
            scored = []
            for s in ctx.strategies(first, mfc):
                t, mem, fits = ctx.score(mfc.name, first, s)
                if fits:
                    scored.append(Scored(Allocation(mesh=first, strategy=s), t, mem))
            for c in pareto(scored) if prune else scored:
                kept += [
                    Scored(Allocation(mesh=m, strategy=c.alloc.strategy), c.time_s, c.memory_bytes)
                    for m in positions
                ]
        if not kept:
            raise PlanError(
                f"no allocation of {mfc.name} fits on {cluster.label()}", field=mfc.name
            )
        result[mfc.name] = sorted(kept, key=lambda c: (c.time_s, c.memory_bytes))
    return result
