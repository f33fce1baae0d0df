"""Dataflow graphs of model function calls, unrolled over iterations, as networkx graphs.

A node is one call in one iteration, keyed `"<mfc>@<iteration>"`. Data edges join the producer
of a key to each consumer in the same iteration. Parameter-version edges order a model's train
call before the first calls of the same model in the next iteration: no data flows there, but
the next rollout must see the updated weights. The structure and the global order come from
plans.dataflow, which the estimator and the runtime use too.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from plans import ExperimentSpec
from plans.dataflow import unrolled


def node_id(mfc: str, iteration: int) -> str:
    return f"{mfc}@{iteration}"


def build_graph(algorithm: str | ExperimentSpec, iterations: int = 1) -> nx.DiGraph:
    """The call graph of `iterations` consecutive iterations: of an experiment's calls
    (ExperimentSpec.mfcs, which may leave out calls of the table), or of an algorithm's
    whole table given its name."""
    calls = algorithm.mfcs() if isinstance(algorithm, ExperimentSpec) else algorithm
    if isinstance(algorithm, ExperimentSpec):
        algorithm = algorithm.algorithm
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    nodes = unrolled(calls, iterations)
    ids = [node_id(n.mfc.name, n.iteration) for n in nodes]
    g = nx.DiGraph(algorithm=algorithm, iterations=iterations)
    for pos, (nid, n) in enumerate(zip(ids, nodes, strict=True)):
        m = n.mfc
        g.add_node(
            nid,
            mfc=m.name,
            iteration=n.iteration,
            index=n.index,
            position=pos,
            role=m.role,
            kind=m.kind,
            inputs=list(m.inputs),
            outputs=list(m.outputs),
        )
    for nid, n in zip(ids, nodes, strict=True):
        for p, keys in n.data_deps:
            g.add_edge(ids[p], nid, kind="data", keys=list(keys))
        for p in n.version_deps:
            g.add_edge(ids[p], nid, kind="version", keys=[])
    return g


def global_order(g: nx.DiGraph) -> list[str]:
    """The one order every rank walks: topological, ties broken by (iteration, canonical index)."""
    return sorted(g.nodes, key=lambda n: g.nodes[n]["position"])


def graph_to_dict(g: nx.DiGraph) -> dict[str, Any]:
    """A JSON-ready description: nodes in global order, data and version edges."""
    order = global_order(g)
    pos = {n: i for i, n in enumerate(order)}
    return {
        "algorithm": g.graph["algorithm"],
        "iterations": g.graph["iterations"],
        "nodes": [
            {
                "id": n,
                **{
                    k: g.nodes[n][k]
                    for k in ("mfc", "iteration", "role", "kind", "inputs", "outputs")
                },
            }
            for n in order
        ],
        "edges": [
            {"source": u, "target": v, "kind": d["kind"], "keys": d["keys"]}
            for u, v, d in sorted(g.edges(data=True), key=lambda e: (pos[e[0]], pos[e[1]]))
        ],
        "order": order,
    }
