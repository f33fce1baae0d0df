"""The evaluation call: the actor answers held-out questions greedily with few-shot
chain-of-thought prompts, scored by exact match of the extracted final number (GSM8K style).

It runs in the layout of the actor's generation call (or its home when the algorithm does
not generate), every `every` iterations and after the last, and is logged with the metrics.
"""

from __future__ import annotations

import random

import torch

from executor.compute.generate import GenerationConfig, generate
from executor.data.tokenizer import Tokenizer
from executor.losses.evaluation import (
    QA,
    STOP,
    accuracy,
    exact_match,
    extract_answer,
    few_shot_prompt,
    load_qa,
)
from executor.parallel.collectives import all_reduce_
from executor.programs.program import pad_prompts
from plans import PlanError
from plans.experiment import EvalSpec
from plans.slicing import split_range


def arithmetic_questions(n: int, seed: int = 0) -> list[QA]:
    """`builtin:arithmetic`: GSM8K-shaped two-step word problems with worked answers, for runs
    without a dataset file (a tiny model answers few of them; the point is the pipeline)."""
    rng = random.Random(f"arithmetic-{seed}")
    rows = []
    for _ in range(n):
        a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(1, 9)
        q = f"Sam has {a} apples, buys {b} more, then gives away {c}. How many apples are left?"
        rows.append(QA(q, f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}. #### {a + b - c}"))
    return rows


def load_questions(spec: EvalSpec) -> list[QA]:
    if spec.dataset == "builtin:arithmetic":
        return arithmetic_questions(spec.shots + spec.questions)
    return load_qa(spec.dataset)


def answer_record(q: QA, completion: str) -> dict:
    """One question's outcome, as rlhf-eval --json prints it."""
    return {
        "question": q.question,
        "reference": extract_answer(q.answer),
        "completion": completion,
        "predicted": extract_answer(completion.split(STOP, 1)[0]),
        "correct": exact_match(completion, q.answer),
    }


class Evaluation:
    def __init__(self, spec: EvalSpec, tok: Tokenizer, max_positions: int):
        self.spec, self.tok = spec, tok
        rows = load_questions(spec)
        if len(rows) <= spec.shots:
            raise PlanError(
                f"{len(rows)} rows leave no held-out question after {spec.shots} exemplars",
                source=spec.dataset,
            )
        self.shots: list[QA] = rows[: spec.shots]
        self.held_out: list[QA] = rows[spec.shots : spec.shots + spec.questions]
        # The prompt keeps its end (the question) when exemplars do not fit the context.
        self.prompt_len = max_positions - spec.max_new_tokens
        if self.prompt_len < 8:
            raise PlanError(
                f"max_new_tokens={spec.max_new_tokens} leaves no room for a prompt in "
                f"{max_positions} positions",
                field="evaluation.max_new_tokens",
            )

    def due(self, it: int, last: int) -> bool:
        return (it + 1) % self.spec.every == 0 or it + 1 == last

    def run(self, model, ctx, answers: list[dict] | None = None) -> dict[str, float]:
        """Collective over the mesh of `ctx`; every rank of it returns the same accuracy.
        `answers`, when given, receives this replica's share of the questions, each with its
        completion and whether it matched (rlhf-eval prints them)."""
        prompts = [few_shot_prompt(self.shots, q.question, len(self.shots)) for q in self.held_out]
        ids = [self.tok.encode(p) for p in prompts]
        width = min(self.prompt_len, max(len(x) for x in ids))
        pid, pmask = pad_prompts(ids, width, self.tok.pad_token_id)
        cfg = GenerationConfig(
            max_new_tokens=self.spec.max_new_tokens,
            greedy=True,
            eos_token_id=self.tok.eos_token_id,
            pad_token_id=self.tok.pad_token_id,
        )
        out = generate(model, ctx, pid, pmask, cfg)
        lo, hi = split_range(len(prompts), ctx.dp_size, ctx.dp_rank)
        texts = [self.tok.decode(out.tokens[i, : out.lengths[i]].tolist()) for i in range(hi - lo)]
        correct, total = accuracy(texts, [q.answer for q in self.held_out[lo:hi]])
        if answers is not None:
            answers.extend(
                answer_record(q, t) for q, t in zip(self.held_out[lo:hi], texts, strict=True)
            )
        counts = torch.tensor([correct, total], dtype=torch.float64, device=out.tokens.device)
        all_reduce_(counts, ctx.dp_group)  # every replica answered its share
        return {"eval_accuracy": float(counts[0] / counts[1]), "eval_questions": int(counts[1])}
