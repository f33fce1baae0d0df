"""Running micro-batches through the pipeline stages of one (dp, tp) position.

Inference streams micro-batches stage to stage. Training uses GPipe: every micro-batch goes
forward (activations sent with send/recv), then every micro-batch goes backward (activation
gradients sent back). Every stage walks the micro-batches in the same order, so each send
meets its recv and the chain cannot deadlock. With one stage, each micro-batch runs its
backward right after its forward, so only one micro-batch of activations is alive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from executor.data.batching import Batch, model_inputs
from executor.model import Transformer
from executor.parallel.context import ParallelContext

R = TypeVar("R")


def _hidden_shape(model: Transformer, mb: Batch) -> tuple[int, int, int]:
    b, t = mb["input_ids"].shape
    return b, t, model.spec.hidden_size


def _recv(
    model: Transformer, ctx: ParallelContext, shape: tuple[int, ...], src: int
) -> torch.Tensor:
    device = next(model.parameters()).device
    buf = torch.empty(shape, dtype=model.dtype, device=device)
    dist.recv(buf, src=src, group=ctx.pp_group)
    return buf


def _send(t: torch.Tensor, ctx: ParallelContext, dst: int) -> None:
    dist.send(t.contiguous(), dst=dst, group=ctx.pp_group)


def stage_input(model: Transformer, ctx: ParallelContext, mb: Batch) -> torch.Tensor:
    """Token ids on the first stage; the previous stage's hidden [b, T, hidden] otherwise."""
    if ctx.is_first_stage:
        return mb["input_ids"]
    return _recv(model, ctx, _hidden_shape(model, mb), ctx.prev_stage_rank)  # type: ignore[arg-type]


def pipeline_forward(
    model: Transformer,
    ctx: ParallelContext,
    micro: list[Batch],
    on_output: Callable[[torch.Tensor, Batch], R],
) -> list[R] | None:
    """Forward each micro-batch through the stages; on the last stage `on_output(head_out, mb)`
    turns each head output (logits shard [b, T, V_local] or values [b, T]) into a result right
    away, so no more than one micro-batch of logits is alive. Returns the results on the last
    stage, None on the others."""
    results: list[R] = []
    for mb in micro:
        x = stage_input(model, ctx, mb)
        pos, mask = model_inputs(mb)
        out = model(x, pos, mask)
        if ctx.is_last_stage:
            results.append(on_output(out, mb))
        else:
            _send(out, ctx, ctx.next_stage_rank)  # type: ignore[arg-type]
    return results if ctx.is_last_stage else None


def pipeline_train(
    model: Transformer,
    ctx: ParallelContext,
    micro: list[Batch],
    loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor],
) -> torch.Tensor:
    """Accumulate gradients of sum(loss_fn(head_out, mb)) over micro-batches (GPipe when
    pp > 1). Returns the detached loss sum on the last stage, zero elsewhere."""
    # Kept on the model's device: NCCL reduces device tensors only, and no sync per step.
    total = torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
    if ctx.pp_size == 1:
        for mb in micro:
            pos, mask = model_inputs(mb)
            loss = loss_fn(model(mb["input_ids"], pos, mask), mb)
            loss.backward()
            total += loss.detach().float()
        return total

    saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # (stage input, output or loss)
    for mb in micro:
        x = stage_input(model, ctx, mb)
        if not ctx.is_first_stage:
            x.requires_grad_(True)
        pos, mask = model_inputs(mb)
        out = model(x, pos, mask)
        if ctx.is_last_stage:
            out = loss_fn(out, mb)
            total += out.detach().float()
        else:
            _send(out.detach(), ctx, ctx.next_stage_rank)  # type: ignore[arg-type]
        saved.append((x, out))

    for (x, out), mb in zip(saved, micro, strict=True):
        if ctx.is_last_stage:
            out.backward()
        else:
            grad = _recv(model, ctx, _hidden_shape(model, mb), ctx.next_stage_rank)  # type: ignore[arg-type]
            out.backward(grad)
        if not ctx.is_first_stage:
            assert x.grad is not None
            _send(x.grad, ctx, ctx.prev_stage_rank)  # type: ignore[arg-type]
    return total
