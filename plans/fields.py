"""Which experiment fields each algorithm can use: the refusals that keep a field from being
silently ignored or combined into something the runtime cannot do exactly."""

from __future__ import annotations

from typing import Any

from plans.errors import PlanError


def check_algorithm_fields(exp: Any) -> None:
    """Raise PlanError naming the field when `exp` (an ExperimentSpec) combines its algorithm
    with a field it cannot honour."""
    alg = exp.algorithm
    if alg in ("dpo", "adpo", "rm") and exp.reward_function is not None:
        raise PlanError(
            f"{alg} learns from the dataset's labels and never scores responses; for ADPO on "
            "sampled, scored candidates use algorithm = 'adpo-online', for a reward model on "
            "sampled trees 'rm-tree'",
            field="reward_function",
        )
    if alg == "adpo-online" and exp.adpo.mode == "pairwise":
        raise PlanError(
            "online ADPO ranks its sampled candidates by score: use mode = 'listwise'",
            field="adpo.mode",
        )
    if alg == "adpo" and exp.adpo.mode == "pairwise" and exp.group_size != 2:
        raise PlanError(
            "pairwise ADPO compares 2 candidates; set group_size = 2", field="group_size"
        )
    if alg in ("adpo", "adpo-online", "grpo") and exp.group_size < 2:
        raise PlanError(
            f"{alg} compares the candidates of a prompt; use group_size >= 2", field="group_size"
        )
    if alg == "rm-tree":
        if exp.tree is None:
            raise PlanError("rm-tree samples a tree per prompt: add a [tree] section", field="tree")
        exp.tree.check(exp.gen_len)
        if exp.reward_function is None:
            raise PlanError(
                "rm-tree labels the sampled leaves with a rule: set reward_function (a judging "
                "reward model or a label file is not supported)",
                field="reward_function",
            )
        if exp.group_size != 1 or exp.label_noise:
            raise PlanError("rm-tree's leaves come from [tree]", field="group_size/label_noise")
    elif exp.tree is not None:
        raise PlanError(f"{alg} does not sample trees; only rm-tree reads [tree]", field="tree")
