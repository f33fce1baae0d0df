"""A rule reward stands in for the reward model: rlhf-run does not load its weights and the
estimator gives the reward call no memory; with a reward model both count it."""

from __future__ import annotations

from estimator import CostModel
from executor.runtime.roles import _rule_replaces
from plans import example_path, load_plan


def test_rule_reward_loads_no_reward_model():
    plan = load_plan(example_path("ppo-tiny-4cpu", "plan"))
    assert plan.experiment.reward_function is not None
    assert _rule_replaces(plan, "reward")
    assert not any(_rule_replaces(plan, r) for r in ("actor", "critic", "ref"))
    cm = CostModel(plan.cluster, plan.experiment)
    assert cm.call_cost("rew_inf", plan.allocations["rew_inf"]).memory.total == 0

    model_reward = plan.model_copy(
        update={"experiment": plan.experiment.model_copy(update={"reward_function": None})}
    )
    assert not _rule_replaces(model_reward, "reward")
    cm = CostModel(model_reward.cluster, model_reward.experiment)
    assert cm.call_cost("rew_inf", model_reward.allocations["rew_inf"]).memory.weights > 0
