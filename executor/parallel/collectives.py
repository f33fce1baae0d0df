"""Collectives that short-circuit on a missing (size-1) group, and the two autograd-aware
tensor-parallel operators of Megatron-LM.

`copy_to_tp` (identity forward, all-reduce backward) goes in front of column-parallel layers:
their input is replicated, so the gradient each rank computes for it is only its shards'
share. `reduce_from_tp` (all-reduce forward, identity backward) closes row-parallel layers:
every rank then holds the same sum, and since every rank computes the same loss from it the
incoming gradient is already the full one. Using torch.distributed.nn's all_reduce instead
would sum gradients in backward and scale them by tp.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

Group = dist.ProcessGroup | None


def all_reduce_(
    t: torch.Tensor, group: Group, op: dist.ReduceOp = dist.ReduceOp.SUM
) -> torch.Tensor:
    """In-place all-reduce; a no-op without a group."""
    if group is not None:
        dist.all_reduce(t, op=op, group=group)
    return t


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def copy_to_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Identity forward; all-reduce of the gradient over `group` in backward."""
    if group is None or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """All-reduce (sum) over `group` forward; identity backward."""
    if group is None:
        return x
    if not (torch.is_grad_enabled() and x.requires_grad):
        return all_reduce_(x.contiguous(), group)
    return _ReduceFromTP.apply(x, group)


def all_gather_dim(t: torch.Tensor, group: Group, sizes: list[int], dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's piece of `t` along `dim`; pieces may differ in size (`sizes`,
    in group order) because gloo's all_gather needs equal shapes we pad to the largest.
    No autograd: used for sampling, tests and checkpoint gathering."""
    if group is None:
        return t
    dim = dim % t.dim()
    top = max(sizes)
    pad = list(t.shape)
    pad[dim] = top
    buf = t.new_zeros(pad)
    buf.narrow(dim, 0, t.shape[dim]).copy_(t)
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf, group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes, strict=True)], dim=dim)


def broadcast_(t: torch.Tensor, src: int, group: Group) -> torch.Tensor:
    """In-place broadcast from global rank `src`; a no-op without a group."""
    if group is not None:
        dist.broadcast(t, src=src, group=group)
    return t
