"""Random and mutated documents: the loaders only ever raise PlanError."""

from __future__ import annotations

import copy
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plans import PlanError, example_path, experiment_from_dict, plan_from_dict
from plans.io import parse_document

BASE = json.loads(example_path("ppo-tiny-4cpu", "plan").read_text())

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


PATHS = [p for p in _paths(BASE) if p]


def _apply(doc, path, action, value):
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[f"extra_{last}"] = value
    else:
        parent[last] = value


def _loads_or_plan_error(fn, doc):
    try:
        fn(doc)
    except PlanError as e:
        assert str(e) and "\n" not in str(e)


mutations = st.lists(
    st.tuples(st.sampled_from(PATHS), st.sampled_from(["set", "delete", "add"]), json_values),
    min_size=1,
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
def test_mutated_plans_raise_only_plan_error(muts):
    doc = copy.deepcopy(BASE)
    for path, action, value in muts:
        try:
            _apply(doc, path, action, value)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced this path
    _loads_or_plan_error(plan_from_dict, doc)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_random_documents_raise_only_plan_error(value):
    _loads_or_plan_error(plan_from_dict, value)
    _loads_or_plan_error(experiment_from_dict, value)
    _loads_or_plan_error(experiment_from_dict, {"algorithm": "ppo", "roles": value})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.booleans())
def test_random_text_raises_only_plan_error(text, toml):
    try:
        parse_document(text, toml=toml)
    except PlanError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(PATHS), json_values)
def test_mutated_experiments_raise_only_plan_error(path, value):
    if path[0] != "experiment" or len(path) < 2:
        return
    doc = copy.deepcopy(BASE["experiment"])
    try:
        _apply(doc, path[1:], "set", value)
    except (KeyError, IndexError, TypeError):
        return
    _loads_or_plan_error(experiment_from_dict, doc)
