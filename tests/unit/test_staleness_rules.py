"""What a plan with max_staleness k > 0 is refused and what it changes in the residency
rules (plans.staleness, docs/ASYNC.md)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from executor.runtime import checkpoints
from executor.runtime.staged import StagedViews
from plans import PlanError, load_plan
from plans.io import example_path, plan_from_dict
from plans.residency import Residency
from plans.staleness import version_used


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


def test_a_checkpoint_is_resumed_with_the_same_staleness_only():
    doc = _plan_doc(2)
    ids = {checkpoints.plan_id(plan_from_dict({**doc, "max_staleness": k})) for k in (0, 1, 2)}
    assert len(ids) == 3
    # Without staleness the identity is the one checkpoints had before the field existed.
    plain = plan_from_dict({**doc, "max_staleness": 0})
    before = plain.model_dump_json(include={"cluster", "experiment", "allocations"})
    assert checkpoints.plan_id(plain) == hashlib.sha256(before.encode()).hexdigest()[:16]


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


class _Role:
    """Stands in for a RoleModel: a snapshot is the home's version number."""

    def __init__(self):
        self.version, self.last_move = 0, None

    def snapshot(self, alloc, buffers):
        return ("version", self.version), [torch.zeros(1)]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_staged_views_follow_the_rule_in_the_global_order(k):
    """generate i, then (before train i) a view for generation i + k, then train i: generation
    i reads version max(0, i - k), and at most k views are alive."""
    role = _Role()
    views = StagedViews(role, None, k)
    for it in range(3 * k + 4):
        assert views.for_generate(it) == ("version", version_used(it, k))
        views.after_generate(it)
        views.before_train(it)
        assert views.alive <= k
        role.version += 1  # the train call
    assert views.alive == k  # those the next k generations would read
