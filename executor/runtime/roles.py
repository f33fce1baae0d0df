"""The models of a run, each with a home layout and temporary views in other layouts.

A trained model lives in the layout of its train call, together with its optimizer; a frozen
one in the layout of its first call. A call that wants the model in another layout gets a
*view*: a copy built by reallocating the home shards (executor.realloc), kept until the model
is needed in yet another layout or its weights change, then dropped, so its memory is freed.
Every rank of the world takes part in every reallocation call (ranks not concerned return at
once), in the one global order of calls, which is what keeps point-to-point moves deadlock-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from executor.checkpoint import load_checkpoint_
from executor.model import Transformer
from executor.model_shards import adopt_shards_, model_shards
from executor.parallel import ParallelContext
from executor.realloc import reallocate
from executor.weights import random_init_
from plans import Allocation, ModelSpec, Plan
from plans.transfer import TransferPlan, plan_params

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def layout_key(alloc: Allocation) -> tuple:
    """What decides which shards a rank holds (micro-batches and ZeRO-1 do not)."""
    s = alloc.strategy
    return alloc.mesh, s.dp, s.tp, s.pp


def build_contexts(plan: Plan) -> dict[tuple, ParallelContext]:
    """Process groups of every distinct layout of the plan, created in the same order on every
    rank (torch.distributed.new_group is collective over the world)."""
    ctxs: dict[tuple, ParallelContext] = {}
    for m in plan.experiment.mfcs():
        alloc = plan.allocations[m.name]
        if layout_key(alloc) not in ctxs:
            ctxs[layout_key(alloc)] = ParallelContext.build(alloc, plan.cluster.gpus_per_node)
    return ctxs


@dataclass
class RoleModel:
    name: str
    spec: ModelSpec
    home: Allocation
    ctxs: dict[tuple, ParallelContext]
    gpus_per_node: int
    dtype: torch.dtype
    model: Transformer | None = None
    _view: tuple[tuple, Transformer | None] | None = None
    _plans: dict[tuple, TransferPlan] = field(default_factory=dict)

    @property
    def home_ctx(self) -> ParallelContext:
        return self.ctxs[layout_key(self.home)]

    def init(self, seed: int) -> None:
        """Build the home shards: from the spec's HF checkpoint, else a seeded random init that
        is the same under every layout."""
        if not self.home_ctx.in_mesh:
            return
        self.model = Transformer.for_context(self.spec, self.home_ctx, self.dtype)
        if self.spec.checkpoint:
            load_checkpoint_(self.model, self.spec.checkpoint, seed_for_missing_head=seed)
        else:
            random_init_(self.model, seed)

    def shards(self) -> dict[str, torch.Tensor]:
        """The home shards by layout name (the model's own tensors, not copies)."""
        return {} if self.model is None else model_shards(self.model)

    def view(self, alloc: Allocation) -> Transformer | None:
        """The model in `alloc`'s layout on this rank (None off that mesh). Collective over
        the ranks of the home and the target layouts; every rank must call it."""
        key = layout_key(alloc)
        if key == layout_key(self.home):
            return self.model
        if self._view is not None and self._view[0] == key:
            return self._view[1]
        self.drop_view()
        if key not in self._plans:
            self._plans[key] = plan_params(self.home, alloc, self.spec, self.gpus_per_node)
        shards = reallocate(self._plans[key], self.shards(), self.dtype, keep_source=True)
        ctx = self.ctxs[key]
        model = None
        if ctx.in_mesh:  # adopt the moved tensors as parameters: no copy
            model = adopt_shards_(Transformer.for_context(self.spec, ctx, self.dtype), shards)
        self._view = (key, model)
        return model

    def drop_view(self) -> None:
        """Forget the temporary copy (its weights are stale after a train step, or its memory
        is wanted back)."""
        self._view = None


def build_roles(plan: Plan, ctxs: dict[tuple, ParallelContext]) -> dict[str, RoleModel]:
    exp = plan.experiment
    dtype = DTYPES[exp.dtype]
    roles: dict[str, RoleModel] = {}
    for role in exp.roles:
        calls = [m for m in exp.mfcs() if m.role == role]
        home_call = next((m for m in calls if m.kind == "train"), calls[0])
        roles[role] = RoleModel(
            role,
            exp.model(role),
            plan.allocations[home_call.name],
            ctxs,
            plan.cluster.gpus_per_node,
            dtype,
        )
    # The reference starts as the actor and the reward model as the critic, as in RLHF from
    # one SFT model and one reward model: same seeds.
    seeds = {"actor": exp.seed, "ref": exp.seed, "critic": exp.seed + 1, "reward": exp.seed + 1}
    for role, rm in roles.items():
        rm.init(seeds[role])
    return roles
