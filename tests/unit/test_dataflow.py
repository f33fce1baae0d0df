"""plans.dataflow's global order is the one networkx's lexicographic topological sort gives
for the same graph and tie-break (an independent implementation of the same rule)."""

from __future__ import annotations

import networkx as nx
import pytest

from planner.graph import build_graph
from plans import ALGORITHM_MFCS
from plans.dataflow import unrolled


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_MFCS))
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_global_order_is_networkx_lexicographic_topological_order(algorithm, iterations):
    g = build_graph(algorithm, iterations)
    expected = list(
        nx.lexicographical_topological_sort(
            g, key=lambda n: (g.nodes[n]["iteration"], g.nodes[n]["index"])
        )
    )
    assert [f"{n.mfc.name}@{n.iteration}" for n in unrolled(algorithm, iterations)] == expected
