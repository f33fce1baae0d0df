"""Which experiment fields each algorithm can use: the refusals that keep a field from being
silently ignored or combined into something the runtime cannot do exactly."""

from __future__ import annotations

from typing import Any

from plans.errors import PlanError


def algorithm_field_problems(exp: Any) -> list[PlanError]:
    """Every combination of `exp`'s algorithm (an ExperimentSpec's) with a field it cannot
    honour, each naming the field."""
    bad: list[PlanError] = []

    def refuse(message: str, field: str) -> None:
        bad.append(PlanError(message, field=field))

    alg = exp.algorithm
    if alg in ("dpo", "adpo", "rm") and exp.reward_function is not None:
        refuse(
            f"{alg} learns from the dataset's labels and never scores responses; for ADPO on "
            "sampled, scored candidates use algorithm = 'adpo-online', for a reward model on "
            "sampled trees 'rm-tree'",
            "reward_function",
        )
    if alg == "adpo-online" and exp.adpo.mode == "pairwise":
        refuse(
            "online ADPO ranks its sampled candidates by score: use mode = 'listwise'",
            "adpo.mode",
        )
    if alg == "adpo" and exp.adpo.mode == "pairwise" and exp.group_size != 2:
        refuse("pairwise ADPO compares 2 candidates; set group_size = 2", "group_size")
    if alg in ("adpo", "adpo-online", "grpo") and exp.group_size < 2:
        refuse(f"{alg} compares the candidates of a prompt; use group_size >= 2", "group_size")
    if alg == "rm-tree":
        if exp.tree is None:
            refuse("rm-tree samples a tree per prompt: add a [tree] section", "tree")
        else:
            try:
                exp.tree.check(exp.gen_len)
            except PlanError as e:
                bad.append(e)
        if exp.reward_function is None:
            refuse(
                "rm-tree labels the sampled leaves with a rule: set reward_function (a judging "
                "reward model or a label file is not supported)",
                "reward_function",
            )
        if exp.group_size != 1 or exp.label_noise:
            refuse("rm-tree's leaves come from [tree]", "group_size/label_noise")
    elif exp.tree is not None:
        refuse(f"{alg} does not sample trees; only rm-tree reads [tree]", "tree")
    pk = exp.packing
    for name, most in (("response", exp.gen_len), ("prompt", exp.prompt_len)):
        got = None if pk is None else getattr(pk, f"expected_{name}_len")
        if got is not None and got > most:
            refuse(
                f"more than the {most} {name} tokens a row holds", f"packing.expected_{name}_len"
            )
    return bad
