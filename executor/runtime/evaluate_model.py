"""`rlhf-eval`: score a saved model (a run's final actor, a checkpoint's, any supported Hugging
Face folder) on held-out questions with the in-run evaluation's own code
(executor.programs.evaluate.Evaluation): few-shot chain-of-thought prompts, greedy decoding,
exact match of the final number.

The workers split the questions as data-parallel replicas of one layout (dp = workers), which
is how the in-run evaluation splits them in the generation layout of a dp-only plan: with the
same number of workers and the run's dtype, the command's completions are the run's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist

from executor.data.tokenizer import tokenizer_for
from executor.model import Transformer
from executor.model.hf_checkpoint import load_checkpoint_
from executor.parallel.context import ParallelContext
from executor.programs.evaluate import Evaluation
from executor.runtime.launch import WorkerEnv
from executor.runtime.roles import DTYPES
from plans import Allocation
from plans.experiment import EvalSpec
from plans.model import from_hf_folder


@dataclass(frozen=True)
class EvalTask:
    folder: str
    """The model: a Hugging Face folder (config.json and safetensors)."""
    spec: dict
    """The evaluation's settings, as plans.experiment.EvalSpec fields."""
    dtype: str
    """float32 or bfloat16: the weights' dtype while the model answers."""
    tokenizer: str | None
    """A tokenizer folder; None: the model folder's, else the built-in byte tokenizer."""
    result: str
    """Where rank 0 writes the result document (JSON)."""


def prepare(task: EvalTask) -> Evaluation:
    """Everything a worker reads before it builds the model: a bad folder, tokenizer or data
    file is a PlanError here, before any worker starts."""
    spec = from_hf_folder(task.folder, "lm")
    tok = tokenizer_for([spec], task.tokenizer)
    return Evaluation(EvalSpec.model_validate(task.spec), tok, spec.max_position_embeddings)


def evaluate_worker(env: WorkerEnv, task: EvalTask) -> None:
    evaluation = prepare(task)
    spec = from_hf_folder(task.folder, "lm")
    alloc = Allocation.model_validate(
        {"mesh": {"n_gpus": env.world}, "strategy": {"dp": env.world}}
    )
    ctx = ParallelContext.build(alloc, env.world)
    model = Transformer.for_context(spec, ctx, DTYPES[task.dtype])
    load_checkpoint_(model, task.folder, seed_for_missing_head=None)
    model = model.to(env.device)
    answers: list[dict] = []
    stats = evaluation.run(model, ctx, answers)
    shares: list[list[dict] | None] = [None] * env.world
    dist.all_gather_object(shares, answers)  # replicas hold consecutive slices, rank order
    if env.rank == 0:
        doc = {
            "accuracy": stats["eval_accuracy"],
            "questions": stats["eval_questions"],
            "correct": sum(a["correct"] for share in shares for a in share or []),
            "answers": [a for share in shares for a in share or []],
        }
        Path(task.result).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
