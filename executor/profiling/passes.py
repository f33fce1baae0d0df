"""Whole passes of the executor's own call code, timed by `rlhf-plan profile` next to the ops.

The op timings (kernels.py) cover a block, the embedding, the head and the optimizer. A call
runs more than that per micro-batch: cutting the batch, positions and the padding mask, the
log-prob gather or the loss, accumulating results. On a small model that is a few milliseconds
per pass and the ops alone price its scoring and train calls 25-40% low. So each pass kind is
also timed whole, through the same functions rlhf-run calls, on a model of the profiled shape
with one block (`infer_pass`, `train_pass`) or the decode stack (`generate_step`); the cost
model subtracts the ops it prices itself and keeps the rest as a per-pass cost
(estimator.overhead).

The batches are left-padded, as prompts are in every RL call, so the padding-mask path runs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from estimator.profile import OpTiming, ShardShape

GEN_STEPS = 16


def padded_batch(vocab: int, b: int, s: int, device) -> dict:
    """`b` rows of `s` token ids with the first quarter of every other row left-padded."""
    import torch

    ids = torch.randint(0, vocab, (b, s), device=device)
    am = torch.ones(b, s, dtype=torch.long, device=device)
    am[::2, : s // 4] = 0
    return {"input_ids": ids, "attention_mask": am}


def pass_fns(model, b: int, s: int, device) -> dict[str, Callable[[], None]]:
    """`infer_pass`: forward.logprobs of one micro-batch; `train_pass`: one micro-batch of
    pipeline_train with the next-token loss (forward, loss, backward; the optimizer step is
    its own op). `model` has no tp group."""
    from executor.compute import forward
    from executor.compute.train import next_token_loss
    from executor.data.packing import stage_inputs
    from executor.parallel.context import ParallelContext
    from executor.parallel.pipeline import pipeline_train

    ctx = ParallelContext.single()
    batch = padded_batch(model.spec.vocab_size, b, s, device)
    loss_fn, _ = next_token_loss(model, ctx)

    def infer() -> None:
        forward.logprobs(model, ctx, batch)

    def train() -> None:
        pipeline_train(model, ctx, stage_inputs(batch, 1), loss_fn)

    return {"infer_pass": infer, "train_pass": train}


def pass_points(model, b: int, s: int, shape: ShardShape, timed, device) -> list[OpTiming]:
    """Both pass_fns timed on a model of one block."""
    out = [
        OpTiming(op=op, shape=shape, batch=b, seq_len=s, time_s=timed(fn))
        for op, fn in pass_fns(model, b, s, device).items()
    ]
    model.zero_grad(set_to_none=True)
    return out


def generate_fn(model, b: int, c: int, new_tokens: int, device) -> Callable[[], None]:
    """executor.compute.generate of `new_tokens` sampled tokens from `b` prompts of length c."""
    import torch

    from executor.compute.generate import GenerationConfig, generate
    from executor.parallel.context import ParallelContext

    ctx = ParallelContext.single()
    prompts = torch.randint(0, model.spec.vocab_size, (b, c), device=device)
    cfg = GenerationConfig(max_new_tokens=new_tokens, greedy=False, seed=0)
    return partial(generate, model, ctx, prompts, None, cfg)


def generate_step(model, b: int, c: int, shape: ShardShape, timed, device) -> OpTiming:
    """Per-token time of executor.compute.generate itself on the decode-stack model (see
    kernels.op_points): the difference of two runs with 2 and 2 + GEN_STEPS new tokens from
    prompts of length c, so the prefill cancels. It holds the stack's decode plus embedding,
    head, sampling and the loop's bookkeeping; the cost model takes the stack's decode out
    again and adds the model's own blocks."""
    short = timed(generate_fn(model, b, c, 2, device))
    long = timed(generate_fn(model, b, c, 2 + GEN_STEPS, device))
    per_step = max((long - short) / GEN_STEPS, 1e-9)
    return OpTiming(
        op="generate_step", shape=shape, batch=b, seq_len=c + GEN_STEPS // 2, time_s=per_step
    )
