"""What a plan with max_staleness k > 0 is refused and what it changes in the residency
rules (plans.staleness, docs/ASYNC.md)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from executor.runtime.worker import RunTask, Worker
from plans import PlanError, load_plan, save_plan
from plans.io import example_path, plan_from_dict
from plans.residency import Residency


def _plan_doc(bound: int) -> dict:
    doc = load_plan(example_path("ppo-tiny-4cpu", "plan")).model_dump(mode="json")
    doc["experiment"]["async"] = {"max_staleness": bound}
    return doc


def test_generation_in_the_train_layout_is_refused():
    doc = _plan_doc(1)
    doc["allocations"]["actor_gen"] = doc["allocations"]["actor_train"]
    assert plan_from_dict({**doc, "max_staleness": 0}).max_staleness == 0
    with pytest.raises(PlanError) as e:
        plan_from_dict({**doc, "max_staleness": 1})
    assert e.value.field == "max_staleness"
    assert "actor_gen" in e.value.reason


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"checkpoint_every": 1}, "--checkpoint-every"), ({"resume": True}, "--resume")],
)
def test_checkpoints_are_refused_with_k_above_0(tmp_path, changes, field):
    path = tmp_path / "k1.json"
    save_plan(plan_from_dict({**_plan_doc(1), "max_staleness": 1}), path)
    with pytest.raises(PlanError) as e:
        Worker(SimpleNamespace(rank=0), RunTask(str(path), 2, str(tmp_path / "o"), **changes))
    assert e.value.field == field
    assert "max_staleness" in e.value.reason


def test_a_stale_role_never_hosts_its_home_in_a_view():
    doc = _plan_doc(1)
    # Generation with less tp on part of the train ranks: the actor could host its home rows.
    doc["allocations"]["actor_gen"] = {
        "mesh": {"n_gpus": 4},
        "strategy": {"dp": 4, "tp": 1},
    }
    plan = plan_from_dict({**doc, "max_staleness": 1})
    assert "actor" in Residency.of(plan.experiment, plan.allocations).hosting
    assert "actor" not in Residency.of(plan.experiment, plan.allocations, 1).hosting
