"""What to train: algorithm, models per role, batch shape and loss settings (TOML or JSON).

Defaults follow widely used RLHF frameworks; each field says whose default it is. See
ALGORITHMS.md in the design notes for the formulas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from plans.algorithms import ALGORITHM_MFCS, MFC, ROLE_HEAD, Algorithm, roles, trained_roles
from plans.errors import PlanError
from plans.fields import algorithm_field_problems, experiment_calls, role_problems
from plans.folders import check_data_files, check_model_folders, resolve_experiment_paths
from plans.macro import MacroSpec
from plans.model import ModelSpec, resolve_model
from plans.optimizer import OptimizerSpec
from plans.packing import PackingSpec
from plans.staleness import ASYNC_ALGORITHMS, AsyncSpec
from plans.strict import SEED_LIMIT, STRICT
from plans.tree import TreeSpec

_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9._+\-]{0,99}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)


@dataclass(frozen=True)
class _Unresolved:
    """A role's `model` that named no preset or folder: refused by RoleSpec's validation,
    so the document's other problems are reported with it."""

    error: PlanError


class RoleSpec(_Section):
    """One model of the experiment."""

    model: ModelSpec | str = Field(
        description="A preset name (tiny, small, llama2-7b, ...), a local HF folder (relative to "
        "the experiment file), or an inline spec."
    )
    trainable: bool | None = Field(
        None, description="Whether the role trains; implied by the algorithm."
    )
    optimizer: OptimizerSpec | None = Field(
        None, description="AdamW settings (trained roles only)."
    )

    @field_validator("model", mode="before")
    @classmethod
    def _resolved(cls, model: Any) -> Any:
        if isinstance(model, _Unresolved):
            raise PlanError(model.error.reason)
        return model

    @property
    def spec(self) -> ModelSpec:
        assert isinstance(self.model, ModelSpec), "resolved by ExperimentSpec"
        return self.model


class GenerationSpec(_Section):
    """Sampling settings of generate calls."""

    temperature: float = Field(1.0, gt=0, description="Softmax temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass; 1 disables it.")


class PPOSpec(_Section):
    """PPO loss settings (DeepSpeed-Chat defaults unless noted)."""

    kl_coef: float = Field(
        0.1,
        ge=0,
        description="Per-token KL penalty beta folded into the reward (PPO, ReMax); 0: no "
        "reference call runs, unless macro.termination = 'ppl'.",
    )
    reward_clip: float = Field(5.0, gt=0, description="Reward-model score clipped to [-c, c].")
    eps_clip: float = Field(0.2, gt=0, description="Policy ratio clip.")
    value_clip: float = Field(0.2, gt=0, description="Value clip around the rollout values.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(
        True, description="Whiten advantages over the rollout batch (OpenRLHF)."
    )
    macro: MacroSpec = Field(default_factory=MacroSpec, description="Macro actions (MA-PPO).")


class GRPOSpec(_Section):
    """GRPO settings (DeepSeekMath recipe)."""

    kl_coef: float = Field(
        0.04, ge=0, description="Weight of the k3 KL loss term; 0: no reference call runs."
    )
    eps_clip: float = Field(0.2, gt=0, description="Policy ratio clip.")
    scale_rewards: bool = Field(
        True,
        description="Divide by the group's reward std (GRPO); false: mean-centring only (Dr. GRPO).",
    )
    loss_level: Literal["sample", "token"] = Field(
        "sample",
        description="`sample`: token mean per response, then mean over responses (the paper); "
        "`token`: one mean over all response tokens (DAPO).",
    )


class DPOSpec(_Section):
    """DPO / IPO settings."""

    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="`sigmoid` = DPO, `ipo` = IPO.")
    beta: float = Field(0.1, gt=0, description="Inverse temperature beta (tau for IPO).")


class ADPOSpec(_Section):
    """Anchored DPO: KL(q || softmax((l - l_anchor) / tau)) over each prompt's candidates."""

    mode: Literal["listwise", "pairwise"] = Field(
        "listwise",
        description="`listwise`: candidate lists with rewards, q = softmax(zscore(r) / beta_r); "
        "`pairwise`: preference pairs (group_size 2) with soft label `label`.",
    )
    tau: float = Field(0.5, gt=0, description="Anchor temperature tau_anc (verl ADPO: 0.5).")
    beta_r: float = Field(0.5, gt=0, description="Reward temperature of listwise targets.")
    label: float = Field(
        1.0,
        ge=0.5,
        le=1,
        description="Pairwise: probability that `chosen` is preferred (1 = hard labels = DPO "
        "with beta = 1/tau under a fixed anchor).",
    )
    anchor: Literal["ref", "policy"] = Field(
        "policy",
        description="`ref`: the frozen reference (fixed anchor); `policy`: the actor at the "
        "start of the iteration (on-policy anchor).",
    )


class EvalSpec(_Section):
    """A held-out evaluation: greedy generation on question/answer rows with few-shot
    chain-of-thought prompts, scored by exact match of the extracted number."""

    dataset: str = Field(
        description='JSONL (relative to the experiment file) with one {"question", "answer"} per '
        'line (answer: reasoning, then "#### <number>"); `builtin:arithmetic` = generated word problems.'
    )
    every: int = Field(10, ge=1, description="Evaluate every N iterations (and after the last).")
    shots: int = Field(4, ge=0, le=64, description="Few-shot exemplars taken from the same file.")
    questions: int = Field(32, ge=1, description="Held-out questions per evaluation.")
    max_new_tokens: int = Field(32, ge=1, description="Tokens generated per answer.")


class ExperimentSpec(BaseModel):
    """An RLHF experiment: everything but the placement."""

    # `async` is a Python keyword: the field is `async_`, read and written as `async`.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, serialize_by_alias=True, **STRICT
    )
    _unused_roles: tuple[str, ...] = ()  # a private attribute: see unused_roles

    name: str = Field(
        "experiment",
        description="Label used in plans and run folders, and in the default plan file name: "
        "letters, digits and `._+-`, not starting with a dot.",
    )
    algorithm: Algorithm = Field(description="ppo, grpo, remax, dpo, adpo or rm.")
    roles: dict[str, RoleSpec] = Field(
        description="Models by role: actor, critic, ref, reward as the algorithm needs."
    )
    batch_size: int = Field(
        gt=0, le=1 << 20, description="Prompts (or preference pairs) per iteration."
    )
    prompt_len: int = Field(gt=0, le=1 << 20, description="Prompt tokens (padded length).")
    gen_len: int = Field(gt=0, le=1 << 20, description="Generated (response) tokens at most.")
    group_size: int = Field(1, ge=1, le=4096, description="Samples per prompt (GRPO).")
    ppo_epochs: int = Field(1, ge=1, le=1000, description="Passes over each rollout batch.")
    mini_batches: int = Field(1, ge=1, le=1 << 20, description="Optimizer steps per pass.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16",
        description="Weights and activations (float16 needs loss scaling, which the trainer "
        "does not have).",
    )
    seed: int = Field(
        1,
        ge=0,
        lt=SEED_LIMIT,
        description="Seed of initialisation, data order and sampling (0 <= seed < 2**32: "
        "derived seeds go to torch.Generator.manual_seed, which takes 64 bits).",
    )
    dataset: str | None = Field(
        None,
        description="JSONL file (relative to the experiment file) of prompts (JSONL or Parquet "
        "rows with `prompt` text or chat `messages`, optional `answer`), preference pairs, "
        "candidate lists or preference trees (as the algorithm reads); None = the built-in synthetic task; `builtin:trees` = "
        "its tree-structured preference sets (reward-model training).",
    )
    reward_function: str | None = Field(
        None,
        description="Rule reward `module:function` (prompt, response[, answer]) -> float, "
        "`builtin:digits` (the synthetic task's rule) or `builtin:math` (the final `####` or "
        "\\boxed{} answer against the row's `answer`), scored on the reward call's devices instead of the reward model.",
    )
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="Sampling settings."
    )
    ppo: PPOSpec = Field(default_factory=PPOSpec, description="PPO settings.")
    grpo: GRPOSpec = Field(default_factory=GRPOSpec, description="GRPO settings.")
    dpo: DPOSpec = Field(default_factory=DPOSpec, description="DPO/IPO settings.")
    adpo: ADPOSpec = Field(default_factory=ADPOSpec, description="Anchored DPO settings.")
    async_: AsyncSpec = Field(
        default_factory=AsyncSpec,
        alias="async",
        description="Generation running ahead of training (bounded staleness).",
    )
    tree: TreeSpec | None = Field(
        None, description="rm-tree: how the actor's tree of responses per prompt branches."
    )
    label_noise: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="Share of the built-in task's preference pairs with swapped labels.",
    )
    evaluation: EvalSpec | None = Field(
        None, description="Held-out exact-match evaluation of the actor every N iterations."
    )
    packing: PackingSpec | None = Field(
        None, description="Train and inference calls on packed sequences (plans.packing)."
    )
    tokenizer: str | None = Field(
        None,
        description="A Hugging Face tokenizer folder for every role; None = the tokenizer in the "
        "model folders (they must agree), else the built-in byte tokenizer.",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        # The name becomes a file name (rlhf-plan search's default plan path): `../../x`
        # must not write outside the folder, and a leading dot would hide the file.
        if not _NAME.fullmatch(name):
            raise PlanError(
                f"{name!r} is not a file-name-safe label (1-100 letters, digits and ._+-, "
                "not starting with a dot)"
            )
        return name

    @field_validator("dtype", mode="before")
    @classmethod
    def _no_float16(cls, dtype: Any) -> Any:
        if dtype == "float16":  # said in words; the Literal alone would only list the others
            raise PlanError(
                "float16 needs loss scaling, which the trainer does not have; use bfloat16 "
                "(same memory) or float32"
            )
        return dtype

    @model_validator(mode="before")
    @classmethod
    def _resolve_models(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        context = info.context or {}
        data = resolve_experiment_paths(data, context.get("base_dir"))
        if context.get("check_folders"):
            check_data_files(data)
        if not isinstance(data.get("roles"), dict):
            return data
        algorithm = data.get("algorithm")
        known = isinstance(algorithm, str) and algorithm in ALGORITHM_MFCS
        train = trained_roles(algorithm) if known else None
        resolved = {}
        for role, spec in data["roles"].items():
            if isinstance(spec, str | ModelSpec):
                spec = {"model": spec}
            if isinstance(spec, dict):
                spec = dict(spec)  # never modify the caller's document
            if isinstance(spec, dict) and role in ROLE_HEAD and "model" in spec:
                ref = spec["model"]
                head = ROLE_HEAD[role]
                given = (
                    ref.get("head", head) if isinstance(ref, dict) else getattr(ref, "head", head)
                )
                if given != head:
                    raise PlanError(
                        f"the {role} role needs a {head!r} head, not {given!r}",
                        field=f"roles.{role}.model.head",
                    )
                if isinstance(ref, str | dict | ModelSpec):
                    try:
                        spec = {**spec, "model": resolve_model(ref, head)}
                    except PlanError as e:  # reported with the document's other problems
                        spec = {**spec, "model": _Unresolved(e)}
            if isinstance(spec, dict) and train is not None:
                spec.setdefault("trainable", role in train)
            resolved[role] = spec
        if context.get("check_folders"):  # experiment documents; plans: rlhf-run checks them
            check_model_folders(
                {
                    r: s["model"]
                    for r, s in resolved.items()
                    if isinstance(s, dict) and isinstance(s.get("model"), ModelSpec)
                },
                data.get("tokenizer") if isinstance(data.get("tokenizer"), str) else None,
            )
        return {**data, "roles": resolved}

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        need = roles(self.mfcs())
        bad: list[PlanError] = []  # every problem, not only the first
        # A section for a role the algorithm has but this experiment's calls leave out (a
        # reference with kl_coef = 0) is not wrong: it is set aside, and rlhf-plan notes it.
        unused = tuple(r for r in self.roles if r in roles(self.algorithm) and r not in need)
        if unused:
            kept = {r: s for r, s in self.roles.items() if r not in unused}
            object.__setattr__(self, "roles", kept)  # frozen; nothing has read it yet
            self._unused_roles = unused

        def refuse(message: str, field: str) -> None:
            bad.append(PlanError(message, field=field))

        bad += role_problems(self, need)
        if self.batch_size % self.mini_batches:
            refuse(
                f"{self.mini_batches} does not divide batch_size={self.batch_size}", "mini_batches"
            )
        bad += algorithm_field_problems(self)
        if self.async_.max_staleness and self.algorithm not in ASYNC_ALGORITHMS:
            names = " and ".join(ASYNC_ALGORITHMS)
            refuse(f"only {names} correct for stale data", "async.max_staleness")
        if self.evaluation is not None and "actor" not in need:
            refuse(f"{self.algorithm} has no actor to evaluate", "evaluation")
        if bad:
            raise PlanError(bad[0].reason, field=bad[0].field, more=bad[1:])
        return self

    # ---- derived -------------------------------------------------------------------------
    def model(self, role: str) -> ModelSpec:
        return self.roles[role].spec

    def optimizer(self, role: str) -> OptimizerSpec:
        return self.roles[role].optimizer or OptimizerSpec()

    def mfcs(self) -> tuple[MFC, ...]:
        """This experiment's calls, the one source every planner, estimator and runtime path
        reads: the algorithm's table less calls whose outputs nothing reads (`ref_inf` when
        no setting reads the reference: plans.fields.reads_reference says when)."""
        return experiment_calls(self)

    @property
    def unused_roles(self) -> tuple[str, ...]:
        """Role sections given but set aside: none of this experiment's calls runs them."""
        return self._unused_roles

    @property
    def seq_len(self) -> int:
        """Full sequence length a call sees (prompt plus response)."""
        return self.prompt_len + self.gen_len

    def sequences(self, mfc: MFC) -> int:
        """Sequences one call processes per iteration (all mini-batches together)."""
        if "pairs" in mfc.inputs:
            return 2 * self.batch_size  # chosen and rejected
        if mfc.name in ("actor_greedy", "rew_greedy"):
            return self.batch_size
        if self.tree is not None:  # every call of rm-tree handles the leaves
            return self.batch_size * self.tree.leaves
        return self.batch_size * self.group_size

    def sequences_per_step(self, mfc: MFC) -> int:
        """Sequences in one optimizer step (train) or in the whole call (others)."""
        n = self.sequences(mfc)
        return n // self.mini_batches if mfc.kind == "train" else n
