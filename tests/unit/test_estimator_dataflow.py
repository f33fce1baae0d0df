"""The estimator's own unrolled order agrees with planner.graph (which it may not import)."""

from __future__ import annotations

import pytest

from estimator.dataflow import unrolled
from planner.graph import build_graph, global_order
from plans import ALGORITHM_MFCS


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_MFCS))
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_same_order_and_edges_as_the_planner_graph(algorithm, iterations):
    nodes = unrolled(algorithm, iterations)
    ids = [f"{n.mfc.name}@{n.iteration}" for n in nodes]
    g = build_graph(algorithm, iterations)
    assert ids == global_order(g)
    mine = set()
    for k, n in enumerate(nodes):
        mine |= {(ids[p], ids[k], "data") for p, _ in n.data_deps}
        mine |= {(ids[p], ids[k], "version") for p in n.version_deps}
    assert mine == {(u, v, d["kind"]) for u, v, d in g.edges(data=True)}
