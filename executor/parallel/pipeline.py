"""Running micro-batches through the pipeline stages of one (dp, tp) position.

Inference streams micro-batches stage to stage. Training runs the non-interleaved 1F1B
schedule (`pipeline_train`): activations go forward and activation gradients back, each
exchange with the neighbours posted as one batch. Every stage walks the micro-batches in the
same order, so each send meets its recv. With one stage, each micro-batch runs its backward
right after its forward, so only one micro-batch of activations is alive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

from executor.data.batching import Batch
from executor.data.packing import StageInput, plain_inputs
from executor.model import Transformer
from executor.parallel.context import ParallelContext

R = TypeVar("R")


def _inputs(micro: list[Batch] | list[StageInput]) -> list[StageInput]:
    """Micro-batches as stage inputs: padded batches as they are, or prepared ones (packed,
    executor.data.packing)."""
    if micro and isinstance(micro[0], StageInput):
        return micro  # type: ignore[return-value]
    return plain_inputs(micro)  # type: ignore[arg-type]


def _recv(
    model: Transformer, ctx: ParallelContext, shape: tuple[int, ...], src: int
) -> torch.Tensor:
    device = next(model.parameters()).device
    buf = torch.empty(shape, dtype=model.dtype, device=device)
    dist.recv(buf, src=src, group=ctx.pp_group)
    return buf


def _send(t: torch.Tensor, ctx: ParallelContext, dst: int) -> None:
    dist.send(t.contiguous(), dst=dst, group=ctx.pp_group)


def stage_input(model: Transformer, ctx: ParallelContext, inp: StageInput) -> torch.Tensor:
    """Token ids on the first stage; the previous stage's hidden [r, L, hidden] otherwise."""
    if ctx.is_first_stage:
        return inp.ids
    shape = inp.hidden_shape(model.spec.hidden_size)
    return _recv(model, ctx, shape, ctx.prev_stage_rank)  # type: ignore[arg-type]


def pipeline_forward(
    model: Transformer,
    ctx: ParallelContext,
    micro: list[Batch] | list[StageInput],
    on_output: Callable[[torch.Tensor, Batch], R],
    raw: bool = False,
) -> list[R] | None:
    """Forward each micro-batch through the stages; on the last stage `on_output(head_out, mb)`
    turns each head output (logits shard [b, T, V_local] or values [b, T]) into a result right
    away, so no more than one micro-batch of logits is alive. Returns the results on the last
    stage, None on the others. A packed micro-batch's head output reaches `on_output` in the
    padded layout; with `raw`, as the model gave it, next to its StageInput instead."""
    results: list[R] = []
    for inp in _inputs(micro):  # prepared at once: the loop never waits on the device
        out = model(stage_input(model, ctx, inp), inp.pos, inp.mask)
        if ctx.is_last_stage:
            results.append(on_output(out, inp) if raw else on_output(inp.restore(out), inp.mb))
        else:
            _send(out, ctx, ctx.next_stage_rank)  # type: ignore[arg-type]
    return results if ctx.is_last_stage else None


def pipeline_train(
    model: Transformer,
    ctx: ParallelContext,
    micro: list[Batch] | list[StageInput],
    loss_fn: Callable[[torch.Tensor, Batch], torch.Tensor],
) -> torch.Tensor:
    """Accumulate gradients of sum(loss_fn(head_out, mb)) over micro-batches, in the 1F1B
    schedule when pp > 1: stage s runs min(pp - s - 1, m) forwards ahead, then alternates one
    forward and one backward, then drains the backwards. At most pp - s micro-batches of
    activations are alive on stage s (pp on the first), whatever m is, which is what the
    estimator's memory model counts. Backwards run in micro-batch order, as forwards do, so
    the gradients accumulate in the same order on every schedule. Returns the detached loss
    sum on the last stage, zero elsewhere."""
    # Kept on the model's device: NCCL reduces device tensors only, and no sync per step.
    total = torch.zeros((), dtype=torch.float32, device=next(model.parameters()).device)
    inputs = _inputs(micro)  # prepared at once: the loops below never wait on the device
    if ctx.pp_size == 1:
        for inp in inputs:
            loss = loss_fn(inp.restore(model(inp.ids, inp.pos, inp.mask)), inp.mb)
            loss.backward()
            total += loss.detach().float()
        return total

    m = len(inputs)
    ahead = min(ctx.pp_size - ctx.pp_rank - 1, m)
    saved: list[
        tuple[torch.Tensor, torch.Tensor]
    ] = []  # (stage input, output or loss), oldest first
    link = _Link(model, ctx, inputs)

    def forward(k: int, x: torch.Tensor) -> torch.Tensor | None:
        nonlocal total
        if not ctx.is_first_stage:
            x.requires_grad_(True)
        inp = inputs[k]
        out = model(x, inp.pos, inp.mask)
        if ctx.is_last_stage:
            out = loss_fn(inp.restore(out), inp.mb)
            total += out.detach().float()
        saved.append((x, out))
        return None if ctx.is_last_stage else out.detach()

    def backward(grad: torch.Tensor | None) -> torch.Tensor | None:
        x, out = saved.pop(0)
        out.backward() if ctx.is_last_stage else out.backward(grad)
        return None if ctx.is_first_stage else x.grad

    for k in range(ahead):  # warm-up: forwards only
        link.exchange(fwd_out=(k, forward(k, link.exchange(fwd_in=k)[0])))
    x = link.exchange(fwd_in=ahead)[0] if ahead < m else None
    for k in range(ahead, m):  # steady state: one forward, one backward (of micro k - ahead)
        out = forward(k, x)
        b = k - ahead
        grad = link.exchange(fwd_out=(k, out), bwd_in=b)[1]
        gx = backward(grad)
        nxt = k + 1 if k + 1 < m else None
        x = link.exchange(bwd_out=(b, gx), fwd_in=nxt)[0]
    for b in range(m - ahead, m):  # cool-down: the backwards left
        gx = backward(link.exchange(bwd_in=b)[1])
        link.exchange(bwd_out=(b, gx))
    return total


class _Link:
    """Point-to-point traffic of one stage with its neighbours, each exchange posted as one
    batch (sends and receives together), so two neighbours that send to each other at the
    same time cannot deadlock (gloo's and NCCL's blocking sends could)."""

    def __init__(self, model: Transformer, ctx: ParallelContext, inputs: list[StageInput]):
        self.model, self.ctx, self.inputs = model, ctx, inputs
        self.device = next(model.parameters()).device

    def _buf(self, k: int) -> torch.Tensor:
        shape = self.inputs[k].hidden_shape(self.model.spec.hidden_size)
        return torch.empty(shape, dtype=self.model.dtype, device=self.device)

    def exchange(
        self,
        fwd_in: int | None = None,
        bwd_in: int | None = None,
        fwd_out: tuple[int, torch.Tensor | None] | None = None,
        bwd_out: tuple[int, torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Receive micro-batch `fwd_in`'s stage input and `bwd_in`'s output gradient, send a
        stage output forward and an input gradient back; returns (input, gradient). The
        first stage's input is its token ids; the last stage has no one to send to."""
        ctx, ops = self.ctx, []
        x = g = None
        if fwd_in is not None:
            if ctx.is_first_stage:
                x = self.inputs[fwd_in].ids
            else:
                x = self._buf(fwd_in)
                ops.append(dist.P2POp(dist.irecv, x, ctx.prev_stage_rank, ctx.pp_group))
        if bwd_in is not None and not ctx.is_last_stage:
            g = self._buf(bwd_in)
            ops.append(dist.P2POp(dist.irecv, g, ctx.next_stage_rank, ctx.pp_group))
        if fwd_out is not None and not ctx.is_last_stage:
            out = fwd_out[1].contiguous()
            ops.append(dist.P2POp(dist.isend, out, ctx.next_stage_rank, ctx.pp_group))
        if bwd_out is not None and not ctx.is_first_stage:
            gx = bwd_out[1].contiguous()
            ops.append(dist.P2POp(dist.isend, gx, ctx.prev_stage_rank, ctx.pp_group))
        if ops:
            for w in dist.batch_isend_irecv(ops):
                w.wait()
        return x, g
