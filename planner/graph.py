"""Dataflow graphs of model function calls, unrolled over iterations.

A node is one call in one iteration, keyed `"<mfc>@<iteration>"`. Data edges join the producer
of a key to each consumer in the same iteration. Parameter-version edges order a model's train
call before the first calls of the same model in the next iteration: no data flows there, but
the next rollout must see the updated weights.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from plans import ExperimentSpec, mfcs, trained_roles


def node_id(mfc: str, iteration: int) -> str:
    return f"{mfc}@{iteration}"


def build_graph(algorithm: str | ExperimentSpec, iterations: int = 1) -> nx.DiGraph:
    """The call graph of `iterations` consecutive iterations of an algorithm."""
    if isinstance(algorithm, ExperimentSpec):
        algorithm = algorithm.algorithm
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    calls = mfcs(algorithm)
    producer = {key: m.name for m in calls for key in m.outputs}
    g = nx.DiGraph(algorithm=algorithm, iterations=iterations)
    for it in range(iterations):
        for index, m in enumerate(calls):
            g.add_node(
                node_id(m.name, it),
                mfc=m.name,
                iteration=it,
                index=index,
                role=m.role,
                kind=m.kind,
                inputs=list(m.inputs),
                outputs=list(m.outputs),
            )
        for m in calls:
            for key in m.inputs:
                if key in producer:
                    src, dst = node_id(producer[key], it), node_id(m.name, it)
                    if g.has_edge(src, dst):
                        g.edges[src, dst]["keys"].append(key)
                    else:
                        g.add_edge(src, dst, kind="data", keys=[key])
    for it in range(1, iterations):
        _add_version_edges(g, calls, it)
    return g


def _add_version_edges(g: nx.DiGraph, calls, it: int) -> None:
    algorithm = g.graph["algorithm"]
    for role in sorted(trained_roles(algorithm)):
        trains = [m.name for m in calls if m.role == role and m.kind == "train"]
        same_role = [node_id(m.name, it) for m in calls if m.role == role]
        # Only the first uses of the model in the new iteration need the edge; later ones
        # follow them through data edges already.
        firsts = [n for n in same_role if not (nx.ancestors(g, n) & set(same_role))]
        for t in trains:
            for n in firsts:
                g.add_edge(node_id(t, it - 1), n, kind="version", keys=[])


def global_order(g: nx.DiGraph) -> list[str]:
    """The one order every rank walks: topological, ties broken by (iteration, canonical index)."""
    return list(
        nx.lexicographical_topological_sort(
            g, key=lambda n: (g.nodes[n]["iteration"], g.nodes[n]["index"])
        )
    )


def graph_to_dict(g: nx.DiGraph) -> dict[str, Any]:
    """A JSON-ready description: nodes in global order, data and version edges."""
    order = global_order(g)
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
            for u, v, d in sorted(
                g.edges(data=True), key=lambda e: (order.index(e[0]), order.index(e[1]))
            )
        ],
        "order": order,
    }
