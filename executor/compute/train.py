"""One optimizer step of a sharded model: micro-batches with gradient accumulation through the
pipeline, gradient sync across tp/pp/dp, global-norm clipping, AdamW.

The loss is a *sum* over the samples a rank sees, divided by a normaliser that the caller
defines over the whole global batch (e.g. its number of target tokens), so every layout
optimises exactly the same quantity and gets the same gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from executor.compute.logprobs import next_token_logprobs
from executor.data.batching import Batch, dp_share
from executor.data.packing import stage_inputs
from executor.model import Transformer
from executor.parallel import grads
from executor.parallel.collectives import all_reduce_, broadcast_
from executor.parallel.context import ParallelContext
from executor.parallel.pipeline import pipeline_train
from executor.parallel.zero import MasterAdamW

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]
"""(head output of a micro-batch, the micro-batch) -> summed loss (a scalar)."""
CountFn = Callable[[Batch], float]
"""A rank's share of the normaliser (e.g. its target-token count); summed over dp."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0


@dataclass(frozen=True)
class StepStats:
    loss: float
    """Global loss (sum over the batch / normaliser), the same on every rank of the mesh."""
    grad_norm: float
    """Global gradient norm before clipping."""


class NonFiniteError(ArithmeticError):
    """The loss or the gradient norm of a step is not finite; raised before the optimizer
    step, so the weights (and every checkpoint) keep their last finite values. The same on
    every rank of the mesh: the loss and the norm are global."""

    def __init__(self, loss: float, grad_norm: float):
        self.loss, self.grad_norm = loss, grad_norm
        what = "the loss" if not math.isfinite(loss) else "the gradient norm"
        super().__init__(f"{what} is not finite (loss {loss}, gradient norm {grad_norm})")


def make_optimizer(
    model: Transformer, cfg: OptimConfig, ctx: ParallelContext | None = None, zero1: bool = False
) -> torch.optim.AdamW | MasterAdamW:
    """AdamW over the model's shards. A bf16 model gets fp32 master weights, fp32 moments and
    fp32 gradient accumulation; with `zero1` (and dp > 1) masters and moments are sharded over
    dp (executor.parallel.zero). An fp32 model without ZeRO-1 uses torch's AdamW as it is."""
    kw = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    sharded = zero1 and ctx is not None and ctx.dp_size > 1
    if model.dtype == torch.float32 and not sharded:
        return torch.optim.AdamW(model.parameters(), **kw)
    grads.attach_main_grads(model)
    return MasterAdamW(list(model.parameters()), ctx, zero1, **kw)


def next_token_loss(model: Transformer, ctx: ParallelContext) -> tuple[LossFn, CountFn]:
    """Summed next-token cross-entropy over positions whose target is a real token
    (`loss_mask` [B, T-1] if given, else `attention_mask[:, 1:]`, else all)."""

    def target_mask(mb: Batch) -> torch.Tensor | None:
        if "loss_mask" in mb:
            return mb["loss_mask"]
        if "attention_mask" in mb:
            return mb["attention_mask"][:, 1:]
        return None

    def loss_fn(logits: torch.Tensor, mb: Batch) -> torch.Tensor:
        lp = next_token_logprobs(logits, mb["input_ids"], model.vocab_rows[0], ctx.tp_group)
        m = target_mask(mb)
        return -(lp if m is None else lp * m).sum()

    def count_fn(b: Batch) -> float:
        m = target_mask(b)
        ids = b["input_ids"]
        return float(ids.shape[0] * (ids.shape[1] - 1)) if m is None else float(m.sum())

    return loss_fn, count_fn


def train_step(
    model: Transformer,
    ctx: ParallelContext,
    optimizer: torch.optim.Optimizer | MasterAdamW,
    batch: Batch,
    loss_fn: LossFn,
    count_fn: CountFn,
    n_micro: int = 1,
    max_grad_norm: float | None = 1.0,
    unit: int = 1,
    pack: bool = False,
) -> StepStats:
    """`batch` is the global batch (every rank of the mesh passes the same one); each dp rank
    takes its share with split_range and cuts it into `n_micro` micro-batches. Groups of `unit`
    consecutive rows (a preference pair: 2) are never split, since their loss couples them.
    With `pack` the micro-batches are balanced by tokens and run packed (executor.data.packing);
    the loss still sees the padded layout and the normaliser is the share's, so the step is the
    padded one up to rounding."""
    local = dp_share(batch, ctx.dp_size, ctx.dp_rank, unit)
    device = next(model.parameters()).device  # NCCL reduces device tensors only
    denom = torch.tensor(count_fn(local), dtype=torch.float64, device=device)
    all_reduce_(denom, ctx.dp_group)
    scale = 1.0 / max(float(denom), 1.0)

    optimizer.zero_grad(set_to_none=False)
    micro = stage_inputs(local, n_micro, unit, pack)
    loss_sum = pipeline_train(model, ctx, micro, lambda out, mb: loss_fn(out, mb) * scale)

    grads.sum_partial_tp_(model, ctx)
    grads.sync_tied_(model, ctx)
    grads.sum_dp_(model, ctx)
    norm = grads.global_grad_norm(model, ctx)
    loss = global_loss(ctx, loss_sum)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise NonFiniteError(loss, norm)
    if max_grad_norm is not None:
        grads.clip_(model, norm, max_grad_norm)
    optimizer.step()
    return StepStats(loss=loss, grad_norm=norm)


def global_loss(ctx: ParallelContext, loss_sum: torch.Tensor) -> float:
    """Sum the last stage's loss over dp, then hand it to every stage."""
    t = loss_sum.detach().double().reshape(1).clone()
    all_reduce_(t, ctx.dp_group)
    broadcast_(t, ctx.last_stage_rank, ctx.pp_group)
    return float(t)
