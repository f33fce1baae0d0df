"""The staleness bound of an experiment and the k a plan chooses: read, written and refused
by name."""

from __future__ import annotations

import pytest

from plans import PlanError, load_experiment, load_plan
from plans.io import example_path, experiment_from_dict, plan_from_dict
from plans.staleness import version_lag, version_used


def _doc(name: str) -> dict:
    return load_experiment(example_path(name, "experiment")).model_dump(mode="json")


def test_async_section_is_read_and_written_under_its_name():
    doc = _doc("grpo-tiny")
    assert doc["async"] == {"max_staleness": 0, "importance_cap": 5.0}
    exp = experiment_from_dict({**doc, "async": {"max_staleness": 2}})
    assert exp.async_.max_staleness == 2
    assert exp.model_dump(mode="json")["async"]["max_staleness"] == 2


def test_staleness_is_refused_where_the_loss_has_no_correction():
    doc = _doc("remax-tiny")
    with pytest.raises(PlanError) as e:
        experiment_from_dict({**doc, "async": {"max_staleness": 1}})
    assert e.value.field == "async.max_staleness"


def test_plan_k_above_the_experiment_bound_is_refused():
    plan = load_plan(example_path("ppo-tiny-4cpu", "plan")).model_dump(mode="json")
    assert plan["max_staleness"] == 0
    with pytest.raises(PlanError) as e:
        plan_from_dict({**plan, "max_staleness": 1})
    assert e.value.field == "max_staleness"
    plan["experiment"]["async"] = {"max_staleness": 2}
    assert plan_from_dict({**plan, "max_staleness": 1}).max_staleness == 1


def test_versions_and_lag():
    assert [version_used(i, 2) for i in range(5)] == [0, 0, 0, 1, 2]
    assert [version_lag(i, 2) for i in range(5)] == [0, 1, 2, 2, 2]
    assert [version_lag(i, 0) for i in range(3)] == [0, 0, 0]
