"""AdamW settings of a trained role, and its learning rate at every optimizer step.

A step is one optimizer step (one `train_step`); an iteration takes `ppo_epochs x mini_batches`
of them for each trained role. The schedule is a pure function of the steps already taken
(`OptimizerSpec.lr_at`): the runtime drives a torch LambdaLR with it
(executor.compute.schedule), whose position travels in the optimizer's state and so in run
checkpoints. The decay horizon is an explicit field rather than the run's length, so a run
resumed with another `--iterations` keeps its schedule.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plans.errors import PlanError
from plans.strict import STRICT, FloatPair


class OptimizerSpec(BaseModel):
    """AdamW settings of a trained role."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    lr: float = Field(
        1e-6, gt=0, description="Learning rate (OpenRLHF actor default 1e-6; critic 9e-6)."
    )
    betas: FloatPair = Field((0.9, 0.95), description="Adam betas (OpenRLHF default).")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay.")
    grad_clip: float = Field(1.0, ge=0, description="Global gradient-norm clip; 0 disables it.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant",
        description="Learning rate after the warmup, per optimizer step (ppo_epochs x "
        "mini_batches of them per iteration): `constant` stays at `lr`; `linear` and `cosine` "
        "decay from `lr` after the warmup to `min_lr` at step `decay_steps`, then stay there.",
    )
    warmup_steps: int = Field(
        0,
        ge=0,
        description="Optimizer steps of linear warmup from 0: step k (counted from 0) takes "
        "lr * k / warmup_steps, as transformers' schedules do; 0: none.",
    )
    decay_steps: int | None = Field(
        None,
        ge=1,
        description="Optimizer step (counted from the run's first, warmup included) at which a "
        "`linear` or `cosine` schedule reaches `min_lr`; required by them, refused by `constant`. "
        "Explicit, so that resuming with another --iterations keeps the schedule.",
    )
    min_lr: float = Field(
        0.0,
        ge=0,
        description="Absolute floor (below `lr`) that `linear` and `cosine` decay to "
        "(OpenRLHF: 0.1 * lr).",
    )

    @model_validator(mode="after")
    def _schedule(self) -> OptimizerSpec:
        decays = self.schedule != "constant"
        if decays and self.decay_steps is None:
            raise PlanError(
                f"a {self.schedule} schedule needs the step at which it reaches min_lr",
                field="decay_steps",
            )
        if not decays and self.decay_steps is not None:
            raise PlanError(
                "a constant schedule does not decay; choose linear or cosine, or drop it",
                field="decay_steps",
            )
        if not decays and self.min_lr != 0:
            raise PlanError(
                "a constant schedule has no floor; choose linear or cosine, or drop it",
                field="min_lr",
            )
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise PlanError(
                f"{self.decay_steps} must exceed warmup_steps={self.warmup_steps} (the decay "
                "follows the warmup)",
                field="decay_steps",
            )
        if self.min_lr >= self.lr:
            raise PlanError(f"{self.min_lr} must be below lr={self.lr}", field="min_lr")
        return self

    @property
    def scheduled(self) -> bool:
        """Whether the learning rate ever differs from `lr`."""
        return self.schedule != "constant" or self.warmup_steps > 0

    def lr_at(self, step: int) -> float:
        """The learning rate of the optimizer step taken after `step` steps (0: the first)."""
        w = self.warmup_steps
        if step < w:
            return self.lr * step / w
        if self.schedule == "constant" or self.decay_steps is None:
            return self.lr
        done = min((step - w) / (self.decay_steps - w), 1.0)
        if self.schedule == "linear":
            left = 1.0 - done
        else:
            left = 0.5 * (1.0 + math.cos(math.pi * done))
        return self.min_lr + (self.lr - self.min_lr) * left
