"""Macro-action PPO settings (`[ppo.macro]`): how a response is cut into macro actions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plans.errors import PlanError
from plans.strict import STRICT


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)


class MacroSpec(_Section):
    """Macro-action PPO (MA-RLHF): values, rewards and GAE per span of tokens."""

    termination: Literal["none", "fixed", "ppl", "parse"] = Field(
        "none",
        description="`none`: plain PPO; `fixed`: a macro every `n` tokens (n=1 is PPO); `ppl`: "
        "cut where the reference model's per-token perplexity stops falling; `parse`: a macro "
        "per `unit` of the decoded response.",
    )
    unit: Literal["sentence", "clause", "statement", "line"] | None = Field(
        None,
        description="Units for `parse` (None = `clause`): text `sentence`s (pysbd) or `clause`s "
        "(sentences cut after , ; : and whitespace); code `statement`s (Python's tokenizer) or "
        "`line`s.",
    )
    n: int = Field(
        5, ge=1, le=4096, description="Tokens per macro action for `fixed` (MA-RLHF: 5)."
    )
    value_function: Literal["equal", "unit", "position"] = Field(
        "equal",
        description="How a macro's value and reward aggregate its tokens' (MA-RLHF `equal`: mean).",
    )

    @model_validator(mode="after")
    def _unit_needs_parse(self) -> MacroSpec:
        if self.unit is not None and self.termination != "parse":
            raise PlanError("`unit` only applies to termination = 'parse'", field="unit")
        return self
