"""ZeRO-1: AdamW whose states live on one dp rank's share of every parameter.

After the gradients are summed over dp (as without ZeRO), each dp rank updates only its
contiguous share of each flattened parameter (split_range, the one split rule) and the shares
are all-gathered back into the full parameter. AdamW is elementwise, so the result is the
same as the unsharded update; what changes is that the fp32 moments of a parameter take
1/dp of the memory on each rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from executor.parallel.collectives import all_gather_dim
from executor.parallel.context import ParallelContext
from plans.slicing import split_range, split_sizes


class ZeroOneAdamW:
    """Duck-types the parts of torch.optim.Optimizer that train_step and checkpoints use."""

    def __init__(self, params: list[nn.Parameter], ctx: ParallelContext, **adamw: Any):
        self.params = [p for p in params if p.requires_grad]
        self.ctx = ctx
        self.shards: list[nn.Parameter] = []
        for p in self.params:
            lo, hi = split_range(p.numel(), ctx.dp_size, ctx.dp_rank)
            # A view of the parameter's own storage: updating it updates the parameter.
            self.shards.append(nn.Parameter(p.data.view(-1)[lo:hi], requires_grad=True))
        self.inner = torch.optim.AdamW(self.shards, **adamw)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = False) -> None:
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        ctx = self.ctx
        for p, sh in zip(self.params, self.shards, strict=True):
            lo, hi = split_range(p.numel(), ctx.dp_size, ctx.dp_rank)
            sh.grad = p.grad.view(-1)[lo:hi] if p.grad is not None else torch.zeros_like(sh)
        self.inner.step()
        for p, sh in zip(self.params, self.shards, strict=True):
            full = all_gather_dim(sh.data, ctx.dp_group, split_sizes(p.numel(), ctx.dp_size), dim=0)
            p.data.view(-1).copy_(full)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
