"""AdamW on fp32 master shards: mixed precision and ZeRO-1 in one optimizer.

The model's parameters are in the compute dtype. With bf16 parameters the optimizer keeps an
fp32 master copy of each and fp32 Adam moments, steps the masters on the fp32 gradients
(executor.parallel.grads.attach_main_grads), and writes the masters back into the parameters
cast to bf16: updates far below bf16's resolution accumulate in the master instead of being
lost. With ZeRO-1 (dp > 1) each dp rank holds and updates only its contiguous share of every
flattened parameter (split_range, the one split rule) and the shares are all-gathered back
into the full parameters, in the parameters' dtype (half the bytes of fp32 for bf16).

fp32 parameters need no master: the shard is a view of the parameter's own storage, so
updating it updates the parameter (fp32 without ZeRO-1 uses torch's AdamW directly).
AdamW is elementwise, so sharded parameters update exactly like whole ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from executor.parallel.collectives import all_gather_dim
from executor.parallel.context import ParallelContext
from executor.parallel.grads import grad_of
from plans.slicing import split_range, split_sizes


class MasterAdamW:
    """Duck-types the parts of torch.optim.Optimizer that train_step and checkpoints use."""

    def __init__(
        self, params: list[nn.Parameter], ctx: ParallelContext | None, zero1: bool, **adamw: Any
    ):
        self.params = list({id(p): p for p in params if p.requires_grad}.values())
        self.ctx = ctx
        self.parts = ctx.dp_size if zero1 and ctx is not None and ctx.dp_size > 1 else 1
        self.part = ctx.dp_rank if self.parts > 1 else 0
        self.shards: list[nn.Parameter] = []
        for p in self.params:
            lo, hi = split_range(p.numel(), self.parts, self.part)
            own = p.data.view(-1)[lo:hi]
            # fp32: a view, so updating the shard updates the parameter; else an fp32 master.
            master = own if p.dtype == torch.float32 else own.float()
            self.shards.append(nn.Parameter(master, requires_grad=True))
        self.inner = torch.optim.AdamW(self.shards, **adamw)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = False) -> None:
        for p in self.params:
            g = grad_of(p)
            if g is not None:
                g.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for p, sh in zip(self.params, self.shards, strict=True):
            lo, hi = split_range(p.numel(), self.parts, self.part)
            g = grad_of(p)
            sh.grad = g.view(-1)[lo:hi] if g is not None else torch.zeros_like(sh)
        self.inner.step()
        for p, sh in zip(self.params, self.shards, strict=True):
            if self.parts > 1:
                sizes = split_sizes(p.numel(), self.parts)
                full = all_gather_dim(sh.data.to(p.dtype), self.ctx.dp_group, sizes, dim=0)
                p.data.view(-1).copy_(full)
            elif sh.dtype != p.dtype:
                p.data.view(-1).copy_(sh.data)  # the master, rounded to the compute dtype

    def state_dict(self) -> dict:
        masters = [sh.data.clone() for sh, p in zip(self.shards, self.params, strict=True)
                   if p.dtype != torch.float32]  # fmt: skip
        return {"inner": self.inner.state_dict(), "masters": masters}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        own = [
            sh for sh, p in zip(self.shards, self.params, strict=True) if p.dtype != torch.float32
        ]
        with torch.no_grad():
            for sh, saved in zip(own, state["masters"], strict=True):
                sh.data.copy_(saved)
