"""Model function calls (MFCs) of each algorithm: the nodes of its dataflow graph.

This table is the single source of what calls an algorithm has, which role runs each, and
which data keys flow between them. An experiment runs `ExperimentSpec.mfcs()`: this table less
the calls its settings leave unread (`without_reference`); the planner, the estimator, plan
validation and the runtime read that. Keys with no producer (`prompts`, `pairs`,
`candidates`) come from the dataset (`candidates`: group_size responses per prompt).
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["actor", "critic", "ref", "reward"]
Kind = Literal["generate", "inference", "train"]
Algorithm = Literal["ppo", "grpo", "remax", "dpo", "adpo", "adpo-online", "rm", "rm-tree"]

ROLE_HEAD = {"actor": "lm", "ref": "lm", "critic": "value", "reward": "value"}


class MFC(BaseModel):
    """One model function call of an iteration."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Unique name within the algorithm, e.g. `actor_gen`.")
    role: Role = Field(description="Which model runs the call.")
    kind: Kind = Field(
        description="`generate` (autoregressive), `inference` (one forward) or `train`."
    )
    inputs: tuple[str, ...] = Field(description="Data keys the call reads.")
    outputs: tuple[str, ...] = Field(default=(), description="Data keys the call produces.")


def _m(name: str, role: Role, kind: Kind, inputs: str, outputs: str = "") -> MFC:
    return MFC(
        name=name,
        role=role,
        kind=kind,
        inputs=tuple(inputs.split()),
        outputs=tuple(outputs.split()),
    )


DATASET_KEYS = ("prompts", "pairs", "candidates")
"""Data keys no call produces: an iteration's rows of the dataset."""

_ROLLOUT = "seq logprobs ref_logprobs rewards"

# Order inside each list is the canonical order: ties in the global call order break by it.
ALGORITHM_MFCS: dict[str, tuple[MFC, ...]] = {
    "ppo": (
        _m("actor_gen", "actor", "generate", "prompts", "seq logprobs"),
        _m("ref_inf", "ref", "inference", "seq", "ref_logprobs"),
        _m("rew_inf", "reward", "inference", "seq", "rewards"),
        _m("critic_inf", "critic", "inference", "seq", "values"),
        _m("actor_train", "actor", "train", f"{_ROLLOUT} values"),
        _m("critic_train", "critic", "train", f"{_ROLLOUT} values"),
    ),
    "grpo": (
        _m("actor_gen", "actor", "generate", "prompts", "seq logprobs"),
        _m("ref_inf", "ref", "inference", "seq", "ref_logprobs"),
        _m("rew_inf", "reward", "inference", "seq", "rewards"),
        _m("actor_train", "actor", "train", _ROLLOUT),
    ),
    "remax": (
        _m("actor_gen", "actor", "generate", "prompts", "seq logprobs"),
        _m("actor_greedy", "actor", "generate", "prompts", "greedy_seq"),
        _m("ref_inf", "ref", "inference", "seq", "ref_logprobs"),
        _m("rew_inf", "reward", "inference", "seq", "rewards"),
        _m("rew_greedy", "reward", "inference", "greedy_seq", "greedy_rewards"),
        _m("actor_train", "actor", "train", f"{_ROLLOUT} greedy_rewards"),
    ),
    "dpo": (
        _m("ref_inf", "ref", "inference", "pairs", "ref_logprobs"),
        _m("actor_train", "actor", "train", "pairs ref_logprobs"),
    ),
    # Anchored DPO over a candidate list per prompt (group_size candidates); with an on-policy
    # anchor the actor's own log-probs are taken at the start of its train call.
    "adpo": (
        _m("ref_inf", "ref", "inference", "candidates", "ref_logprobs"),
        _m("actor_train", "actor", "train", "candidates ref_logprobs"),
    ),
    # Online ADPO: group_size candidates per prompt sampled from the current actor, scored by
    # the reward (rule or model); listwise targets from those scores.
    "adpo-online": (
        _m("actor_gen", "actor", "generate", "prompts", "seq logprobs"),
        _m("ref_inf", "ref", "inference", "seq", "ref_logprobs"),
        _m("rew_inf", "reward", "inference", "seq", "rewards"),
        _m("actor_train", "actor", "train", _ROLLOUT),
    ),
    "rm": (_m("rew_train", "reward", "train", "pairs"),),
    # A reward model on preference pairs among the leaves of a tree of responses the actor
    # samples per prompt (plans.tree); a rule labels the leaves inside the train call.
    "rm-tree": (
        _m("actor_tree", "actor", "generate", "prompts", "tree_seq"),
        _m("rew_train", "reward", "train", "tree_seq"),
    ),
}


Calls = str | tuple[MFC, ...]
"""An algorithm's name (its whole table) or the calls of one experiment
(`ExperimentSpec.mfcs()`, which leaves out calls nothing reads)."""


def mfcs(calls: Calls) -> tuple[MFC, ...]:
    return ALGORITHM_MFCS[calls] if isinstance(calls, str) else calls


def mfc_by_name(calls: Calls) -> dict[str, MFC]:
    return {m.name: m for m in mfcs(calls)}


def roles(calls: Calls) -> list[str]:
    """Roles the calls run, in first-use order."""
    return list(dict.fromkeys(m.role for m in mfcs(calls)))


def trained_roles(calls: Calls) -> set[str]:
    return {m.role for m in mfcs(calls) if m.kind == "train"}


REFERENCE_CALL = "ref_inf"


@cache  # one tuple per algorithm, so caches keyed on the calls hit
def without_reference(algorithm: str) -> tuple[MFC, ...]:
    """The algorithm's calls less the reference's: `ref_inf` goes, and `ref_logprobs` leaves
    every other call's inputs (ExperimentSpec.mfcs decides when)."""
    if all(m.name != REFERENCE_CALL for m in ALGORITHM_MFCS[algorithm]):
        return ALGORITHM_MFCS[algorithm]
    return tuple(
        m.model_copy(update={"inputs": tuple(k for k in m.inputs if k != "ref_logprobs")})
        for m in ALGORITHM_MFCS[algorithm]
        if m.name != REFERENCE_CALL
    )
