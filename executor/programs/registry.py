"""The Program of each algorithm (see executor.programs.program)."""

from __future__ import annotations

from executor.data.tokenizer import Tokenizer
from executor.programs.adpo_online import ADPOOnline
from executor.programs.grpo import GRPO
from executor.programs.ppo import PPO
from executor.programs.preference import ADPO, DPO, RewardModel
from executor.programs.program import Program
from executor.programs.remax import ReMax
from executor.programs.rm_tree import RMTree
from plans import ExperimentSpec

PROGRAMS: dict[str, type[Program]] = {
    "ppo": PPO,
    "grpo": GRPO,
    "remax": ReMax,
    "dpo": DPO,
    "adpo": ADPO,
    "adpo-online": ADPOOnline,
    "rm": RewardModel,
    "rm-tree": RMTree,
}


def program_for(exp: ExperimentSpec, tok: Tokenizer, data: str | None) -> Program:
    if exp.algorithm not in PROGRAMS:
        raise NotImplementedError(f"rlhf-run does not run {exp.algorithm} yet")
    return PROGRAMS[exp.algorithm](exp, tok, data)
