"""Which experiment fields each algorithm can use: the refusals that keep a field from being
silently ignored or combined into something the runtime cannot do exactly."""

from __future__ import annotations

from typing import Any

from plans.algorithms import MFC, mfcs, trained_roles, without_reference
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


def role_problems(exp: Any, need: list[str]) -> list[PlanError]:
    """Every role section of `exp` (an ExperimentSpec) that the roles its calls run (`need`)
    cannot take as given, each naming the field."""
    bad: list[PlanError] = []

    def refuse(message: str, field: str) -> None:
        bad.append(PlanError(message, field=field))

    alg, train = exp.algorithm, trained_roles(exp.mfcs())
    for role in need:
        if role not in exp.roles:
            refuse(f"{alg} needs a {role} model", f"roles.{role}")
    for role, spec in exp.roles.items():
        if role not in need:
            refuse(f"{alg} has no {role} role (it uses {', '.join(need)})", f"roles.{role}")
            continue
        if spec.trainable is not None and spec.trainable != (role in train):
            does = "trains" if role in train else "freezes"
            refuse(f"{alg} {does} the {role}", f"roles.{role}.trainable")
        if spec.optimizer is not None and role not in train:
            refuse(f"the {role} does not train here", f"roles.{role}.optimizer")
        longest, most = exp.prompt_len + exp.gen_len, spec.spec.max_position_embeddings
        if longest > most:
            refuse(
                f"prompt_len + gen_len = {longest} exceeds max_position_embeddings={most} of "
                f"the {role} model",
                "gen_len",
            )
    return bad


def reads_reference(exp: Any) -> bool:
    """Whether anything of `exp` (an ExperimentSpec) reads the reference's log-probs; when
    nothing does, its calls leave out `ref_inf` (ExperimentSpec.mfcs).

    - ppo: the KL penalty folded into the rewards, unless `ppo.kl_coef` is 0; MA-PPO with
      `ppo.macro.termination = "ppl"` cuts macro actions by the reference's perplexity, so it
      reads them whatever the coefficient.
    - grpo: the k3 KL loss term, unless `grpo.kl_coef` is 0.
    - remax: the KL folded into the return, unless `ppo.kl_coef` is 0.
    - dpo, adpo, adpo-online: always (their losses or targets are relative to the reference;
      adpo-online also reports its KL).
    - rm, rm-tree: have no reference call.

    Without the reference the dropped terms are exactly zero: the same numbers, except that
    runs report no `kl_mean` (a KL to a model that never ran is unknown, not zero).
    """
    alg = exp.algorithm
    if alg == "ppo":
        return exp.ppo.kl_coef != 0 or exp.ppo.macro.termination == "ppl"
    if alg == "grpo":
        return exp.grpo.kl_coef != 0
    if alg == "remax":
        return exp.ppo.kl_coef != 0
    return alg in ("dpo", "adpo", "adpo-online")


def kl_setting(exp: Any) -> str:
    """The field of `exp`'s KL coefficient to the reference."""
    return "grpo.kl_coef" if exp.algorithm == "grpo" else "ppo.kl_coef"


def experiment_calls(exp: Any) -> tuple[MFC, ...]:
    """ExperimentSpec.mfcs: the algorithm's calls, less the reference's when nothing reads it."""
    return mfcs(exp.algorithm) if reads_reference(exp) else without_reference(exp.algorithm)


def unused_role_notes(exp: Any) -> list[str]:
    """One line per role section `exp` set aside (ExperimentSpec.unused_roles): not an error,
    but the user should know that model is never loaded."""
    return [
        f"roles.{role} is not used: with {kl_setting(exp)} = 0 no call reads the reference's "
        "log-probs, so the reference call does not run and its model is not loaded"
        for role in exp.unused_roles
    ]
