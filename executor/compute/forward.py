"""Inference calls over a layout: full logits (tests, small batches), per-token log-probs and
values. The global batch is passed on every rank of the mesh; each dp rank works on its
share and results live on the last pipeline stage (None elsewhere). With `pack` the share's
micro-batches are balanced by tokens and run packed (executor.data.packing); results keep the
padded layout, with zeros where the input is padding."""

from __future__ import annotations

import torch

from executor.compute.logprobs import next_token_logprobs, token_logprobs
from executor.data.batching import Batch, dp_share
from executor.data.packing import StageInput, stage_inputs
from executor.model import Transformer
from executor.parallel.collectives import all_gather_dim
from executor.parallel.context import ParallelContext
from executor.parallel.pipeline import pipeline_forward
from plans.slicing import split_sizes


@torch.no_grad()
def logits(
    model: Transformer, ctx: ParallelContext, batch: Batch, n_micro: int = 1, pack: bool = False
) -> torch.Tensor | None:
    """Full-vocabulary logits [B_local, T, vocab] of this dp rank's share (gathered over tp)."""
    sizes = split_sizes(model.spec.vocab_size, ctx.tp_size)
    out = pipeline_forward(
        model,
        ctx,
        stage_inputs(dp_share(batch, ctx.dp_size, ctx.dp_rank), n_micro, pack=pack),
        lambda lg, mb: all_gather_dim(lg, ctx.tp_group, sizes, dim=-1),
    )
    return None if out is None else torch.cat(out)


@torch.no_grad()
def logprobs(
    model: Transformer, ctx: ParallelContext, batch: Batch, n_micro: int = 1, pack: bool = False
) -> torch.Tensor | None:
    """log p(input_ids[:, t+1] | prefix) [B_local, T-1] in float32, computed micro-batch by
    micro-batch with the vocab-parallel log-softmax (never a full-vocab tensor)."""

    def on_output(lg: torch.Tensor, inp: StageInput) -> torch.Tensor:
        lo, group = model.vocab_rows[0], ctx.tp_group
        if inp.slots is None:
            return next_token_logprobs(lg, inp.mb["input_ids"], lo, group)
        # Scored in the packed rows (no vocabulary-wide work on padding), then scattered.
        return inp.restore(token_logprobs(lg, inp.next_tokens(), lo, group))[:, :-1]

    out = pipeline_forward(
        model,
        ctx,
        stage_inputs(dp_share(batch, ctx.dp_size, ctx.dp_rank), n_micro, pack=pack),
        on_output,  # type: ignore[arg-type]
        raw=True,
    )
    return None if out is None else torch.cat(out)


@torch.no_grad()
def values(
    model: Transformer, ctx: ParallelContext, batch: Batch, n_micro: int = 1, pack: bool = False
) -> torch.Tensor | None:
    """Per-token values [B_local, T] of a value-head model."""
    if model.spec.head != "value":
        raise ValueError("values() needs a model with head='value'")
    out = pipeline_forward(
        model,
        ctx,
        stage_inputs(dp_share(batch, ctx.dp_size, ctx.dp_rank), n_micro, pack=pack),
        lambda v, mb: v.float(),
    )
    return None if out is None else torch.cat(out)
