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


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
@pytest.mark.parametrize("k", [1, 2])
def test_staleness_moves_only_the_generation_version_edge(algorithm, k):
    """Under staleness k, actor_gen@i waits for actor_train@(i-1-k) and nothing else changes:
    the other version edges, the data edges and the global order are those of k = 0."""
    its = 5
    sync, stale = unrolled(algorithm, its), unrolled(algorithm, its, staleness=k)
    assert [(n.mfc.name, n.iteration) for n in stale] == [(n.mfc.name, n.iteration) for n in sync]
    for a, b in zip(sync, stale, strict=True):
        assert a.data_deps == b.data_deps
        if a.mfc.name != "actor_gen":
            assert a.version_deps == b.version_deps
            continue
        deps = [(stale[p].mfc.name, stale[p].iteration) for p in b.version_deps]
        back = a.iteration - 1 - k
        assert deps == ([("actor_train", back)] if back >= 0 else [])
    g = build_graph(algorithm, its, staleness=k)
    expected = list(
        nx.lexicographical_topological_sort(
            g, key=lambda n: (g.nodes[n]["iteration"], g.nodes[n]["index"])
        )
    )
    assert [f"{n.mfc.name}@{n.iteration}" for n in stale] == expected
