"""A role's learning-rate schedule on its optimizer: a torch LambdaLR that every optimizer
step advances, with the rate of each step from `plans.OptimizerSpec.lr_at`.

The schedule's position is part of the optimizer's `state_dict`, so run checkpoints carry it
and a resumed run takes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from executor.parallel.zero import MasterAdamW
from plans import OptimizerSpec


class ScheduledOptimizer:
    """Duck-types the parts of torch.optim.Optimizer that train_step and checkpoints use: each
    `step` is the optimizer's step at the current rate, then the schedule's step to the next
    rate. With ZeRO-1 the schedule sets the rate of the AdamW over this rank's shares."""

    def __init__(self, opt: torch.optim.Optimizer | MasterAdamW, spec: OptimizerSpec):
        self.opt = opt
        inner = opt.inner if isinstance(opt, MasterAdamW) else opt
        assert all(g["lr"] == spec.lr for g in inner.param_groups), "built with spec.lr"
        # LambdaLR scales the optimizer's lr (spec.lr) by the factor of the step count.
        self.schedule = LambdaLR(inner, lambda step: spec.lr_at(step) / spec.lr)

    @property
    def param_groups(self) -> list[dict]:
        return self.opt.param_groups

    def zero_grad(self, set_to_none: bool = False) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.opt.step()
        self.schedule.step()

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "lr_schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["lr_schedule"])


def scheduled(
    opt: torch.optim.Optimizer | MasterAdamW, spec: OptimizerSpec
) -> torch.optim.Optimizer | MasterAdamW | ScheduledOptimizer:
    """`opt` under the spec's schedule; a constant rate without warmup leaves it as it is
    (the same steps and the same checkpoint contents as before schedules existed)."""
    return ScheduledOptimizer(opt, spec) if spec.scheduled else opt
