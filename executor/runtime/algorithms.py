"""The Program of each algorithm (see executor.runtime.program)."""

from __future__ import annotations

from executor.runtime.grpo import GRPO
from executor.runtime.ppo import PPO
from executor.runtime.preference import ADPO, DPO, RewardModel
from executor.runtime.program import Program
from executor.runtime.remax import ReMax
from executor.tokenizer import Tokenizer
from plans import ExperimentSpec

PROGRAMS: dict[str, type[Program]] = {
    "ppo": PPO,
    "grpo": GRPO,
    "remax": ReMax,
    "dpo": DPO,
    "adpo": ADPO,
    "rm": RewardModel,
}


def program_for(exp: ExperimentSpec, tok: Tokenizer, data: str | None) -> Program:
    if exp.algorithm not in PROGRAMS:
        raise NotImplementedError(f"rlhf-run does not run {exp.algorithm} yet")
    return PROGRAMS[exp.algorithm](exp, tok, data)
