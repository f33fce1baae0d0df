"""Dataflow graphs of every algorithm, unrolled, and their global order."""

from __future__ import annotations

import networkx as nx
import pytest

from planner.graph import build_graph, global_order, graph_to_dict
from plans import ALGORITHM_MFCS, mfcs
from plans.algorithms import DATASET_KEYS

PPO_DATA = {
    ("actor_gen", "ref_inf"): ["seq"],
    ("actor_gen", "rew_inf"): ["seq"],
    ("actor_gen", "critic_inf"): ["seq"],
    ("actor_gen", "actor_train"): ["seq", "logprobs"],
    ("actor_gen", "critic_train"): ["seq", "logprobs"],
    ("ref_inf", "actor_train"): ["ref_logprobs"],
    ("ref_inf", "critic_train"): ["ref_logprobs"],
    ("rew_inf", "actor_train"): ["rewards"],
    ("rew_inf", "critic_train"): ["rewards"],
    ("critic_inf", "actor_train"): ["values"],
    ("critic_inf", "critic_train"): ["values"],
}


def _edges(g, kind):
    return {
        (g.nodes[u]["mfc"], g.nodes[v]["mfc"], g.nodes[u]["iteration"], g.nodes[v]["iteration"]): d[
            "keys"
        ]
        for u, v, d in g.edges(data=True)
        if d["kind"] == kind
    }


def test_ppo_single_iteration():
    g = build_graph("ppo", 1)
    assert {g.nodes[n]["mfc"] for n in g} == {
        "actor_gen",
        "ref_inf",
        "rew_inf",
        "critic_inf",
        "actor_train",
        "critic_train",
    }
    assert {(a, b): k for (a, b, _, _), k in _edges(g, "data").items()} == PPO_DATA
    assert not _edges(g, "version")


def test_ppo_version_edges():
    g = build_graph("ppo", 3)
    version = set(_edges(g, "version"))
    assert version == {("actor_train", "actor_gen", i, i + 1) for i in range(2)} | {
        ("critic_train", "critic_inf", i, i + 1) for i in range(2)
    }


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_MFCS))
def test_every_algorithm_is_a_dag_with_producers(algorithm):
    g = build_graph(algorithm, 3)
    assert nx.is_directed_acyclic_graph(g)
    assert len(g) == 3 * len(mfcs(algorithm))
    produced = {k for m in mfcs(algorithm) for k in m.outputs}
    for m in mfcs(algorithm):
        for key in m.inputs:
            assert key in produced or key in DATASET_KEYS, (algorithm, m.name, key)
    order = global_order(g)
    assert order == global_order(build_graph(algorithm, 3))  # deterministic
    pos = {n: i for i, n in enumerate(order)}
    assert all(pos[u] < pos[v] for u, v in g.edges)
    # Every trained model's next-iteration calls come after its train call.
    for u, v, d in g.edges(data=True):
        if d["kind"] == "version":
            assert g.nodes[u]["kind"] == "train" and g.nodes[u]["role"] == g.nodes[v]["role"]


def test_order_groups_iterations():
    order = global_order(build_graph("ppo", 2))
    assert [n.split("@")[1] for n in order] == ["0"] * 6 + ["1"] * 6
    assert order[0] == "actor_gen@0"


def test_graph_dict_is_json_ready():
    import json

    doc = graph_to_dict(build_graph("grpo", 2))
    assert json.loads(json.dumps(doc)) == doc
    assert [n["id"] for n in doc["nodes"]] == doc["order"]


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_MFCS))
def test_runtime_order_is_the_global_order(algorithm):
    # rlhf-run walks each iteration's calls in the canonical order of plans.algorithms; that
    # must be exactly the planner's global order, iteration after iteration.
    canonical = [m.name for m in mfcs(algorithm)]
    order = global_order(build_graph(algorithm, 3))
    assert order == [f"{name}@{it}" for it in range(3) for name in canonical]
