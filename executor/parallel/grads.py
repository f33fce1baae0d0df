"""Gradient bookkeeping after backward: fp32 accumulation for bf16 models, summing partial
shares across tp, tying the embedding copies of the first and last stage, dp all-reduce, and
the global norm.

All reductions go through one flat buffer per group: gloo pays a round trip per call, so
one all-reduce of everything beats one per parameter by a wide margin."""

from __future__ import annotations

import math

import torch

from executor.model import Transformer
from executor.parallel.collectives import Group, all_reduce_
from executor.parallel.context import ParallelContext


def attach_main_grads(model: Transformer) -> None:
    """Accumulate this model's gradients in fp32 (`p.main_grad`, views of one flat buffer)
    instead of in the parameters' bf16: each backward's bf16 gradient is added into the fp32
    accumulator as soon as it is complete and then dropped, so micro-batches accumulate and
    the tp, dp and norm reductions below run in fp32. Nothing to do for fp32 models."""
    params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    if all(p.dtype == torch.float32 for p in params) or hasattr(model, "_main_grad"):
        return
    buf = torch.zeros(sum(p.numel() for p in params), dtype=torch.float32, device=params[0].device)
    offset = 0
    for p in params:
        p.main_grad = buf[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        p.register_post_accumulate_grad_hook(_into_main_grad)
    model._main_grad = buf


def _into_main_grad(p: torch.Tensor) -> None:
    p.main_grad.add_(p.grad)
    p.grad = None


def grad_of(p: torch.Tensor) -> torch.Tensor | None:
    """The gradient the reductions and the optimizer use: the fp32 accumulator where there is
    one (attach_main_grads), else the parameter's own."""
    return getattr(p, "main_grad", p.grad)


def _grads(model: Transformer, names: list[str]) -> list[torch.Tensor]:
    params = dict(model.named_parameters(remove_duplicate=False))
    out = []
    for n in names:
        p = params[n]
        if grad_of(p) is None:  # e.g. an unused parameter: make it take part with zeros
            p.grad = torch.zeros_like(p)
        out.append(grad_of(p))
    return out


def _all_reduce_flat(grads: list[torch.Tensor], group: Group) -> None:
    if group is None or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_(flat, group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_partial_tp_(model: Transformer, ctx: ParallelContext) -> None:
    """kv heads replicated over tp ranks (tp > num_key_value_heads): each copy's gradient
    covers only the query heads of its rank. Scatter every copy into a full-size buffer,
    all-reduce over tp, read the own slice back."""
    partial = [sl for sl in model.slices.values() if sl.partial_grad]
    if ctx.tp_group is None or not partial:
        return
    grads = _grads(model, [sl.name for sl in partial])
    fulls = []
    for sl, g in zip(partial, grads, strict=True):
        full = g.new_zeros(sl.full_shape)
        full[sl.index()] = g
        fulls.append(full)
    _all_reduce_flat(fulls, ctx.tp_group)
    for sl, g, full in zip(partial, grads, fulls, strict=True):
        g.copy_(full[sl.index()])


def sync_tied_(model: Transformer, ctx: ParallelContext) -> None:
    """pp > 1 with tied embeddings: the first stage's embedding and the last stage's head
    are copies of one tensor; both get the sum of their gradients."""
    if ctx.embed_group is None or not model.spec.tie_word_embeddings or model.spec.head != "lm":
        return
    name = "model.embed_tokens.weight" if ctx.is_first_stage else "lm_head.weight"
    _all_reduce_flat(_grads(model, [name]), ctx.embed_group)


def sum_dp_(model: Transformer, ctx: ParallelContext) -> None:
    """Sum over dp replicas. Each rank's loss is already divided by the *global* token count
    (see executor.compute.train), so the sum is the gradient of the global token mean; this equals
    averaging per-rank means when the shares are equal, and stays exact when they are not."""
    if ctx.dp_group is None:
        return
    main = getattr(model, "_main_grad", None)
    if main is not None:  # fp32 accumulators: already one buffer
        all_reduce_(main, ctx.dp_group)
        return
    if len({p.dtype for p in model.parameters()}) > 1:  # one buffer holds one dtype
        _all_reduce_flat(_grads(model, list(model.slices)), ctx.dp_group)
        return
    all_reduce_(_flat_grads(model), ctx.dp_group)


def _flat_grads(model: Transformer) -> torch.Tensor:
    """One buffer that every parameter's gradient is a view of, so the dp sum is one
    all-reduce with nothing to pack: a fresh model-sized buffer every step costs, on a CPU,
    about as much as the reduction itself. Backward accumulates into existing gradients in
    place and train_step zeroes them without dropping them, so the views last; if anything
    replaced a gradient, the buffer is rebuilt around the current values."""
    params = list({id(p): p for p in model.parameters()}.values())  # tied copies once
    _grads(model, [n for n, _ in model.named_parameters()])  # every parameter has one
    buf: torch.Tensor | None = getattr(model, "_flat_grad", None)
    if buf is not None and all(
        p.grad.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr() for p in params
    ):
        return buf
    buf = torch.empty(
        sum(p.numel() for p in params), dtype=params[0].grad.dtype, device=params[0].device
    )
    offset = 0
    for p in params:
        view = buf[offset : offset + p.numel()].view_as(p)
        view.copy_(p.grad)
        p.grad = view
        offset += p.numel()
    model._flat_grad = buf
    return buf


def global_grad_norm(model: Transformer, ctx: ParallelContext) -> float:
    """L2 norm of the full model's gradient: each element counted once (replicated params on
    their first tp holder, the tied head on the first stage), summed over tp then pp. DP
    replicas hold identical gradients after sum_dp_ and are not summed."""
    grads = _grads(model, [sl.name for sl in model.slices.values() if sl.grad_owner])
    sq = torch.zeros((), dtype=torch.float64, device=grads[0].device if grads else None)
    for g in grads:
        sq += g.double().pow(2).sum()
    all_reduce_(sq, ctx.tp_group)
    all_reduce_(sq, ctx.pp_group)
    return math.sqrt(float(sq))


def clip_(model: Transformer, norm: float, max_norm: float) -> None:
    """Scale gradients so the global norm is at most max_norm (as torch's clip_grad_norm_)."""
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in _grads(model, list(model.slices)):
            g.mul_(coef)
