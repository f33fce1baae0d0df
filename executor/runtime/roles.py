"""The models of a run on this rank: each in its home layout, with a temporary view in another.

Which layout is a role's home, when a call needs a view, when a view is dropped and whether
the home rows may live inside the view are the rules of plans.residency (the simulator replays
the same ones); this module carries them out. A view is built by reallocating the home shards
(executor.realloc.move). A dropped view's memory is kept (executor.realloc.buffers.Buffers)
for the next view in the same layout -- every iteration rebuilds the generation view after the
train step, and on a CPU filling fresh memory costs as much as the transfer -- so a role holds
at most one view's memory outside its home, alive or kept, until `release_buffers()` or a view
in another layout. On a CPU the kept memory also holds the move's scratch (receive buffers for
o/down column blocks, packing frames). A hosting role's home shard moves into the view's tensor
at the first view and stays there: later views do not copy it, and the home's own copy is
freed. Every rank of the world takes part in every reallocation call (ranks not concerned
return at once), in the one global order of calls, which keeps point-to-point moves
deadlock-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from executor.model import Transformer
from executor.model.hf_checkpoint import load_checkpoint_
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.realloc.buffers import Buffers, added
from executor.realloc.model_shards import adopt_shards_, model_shards
from executor.realloc.move import host_regions, reallocate, this_rank
from plans import Allocation, ModelSpec, Plan
from plans.residency import Residency, layout_key
from plans.transfer import TransferPlan, plan_params

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """This worker's device: home shards, views and every move's buffers live there."""
    model: Transformer | None = None
    _view: tuple[tuple, Transformer | None, list[torch.Tensor]] | None = None
    loaded: bool = True
    """False when a rule reward stands in for this model: no weights anywhere, no views."""
    _plans: dict[tuple, TransferPlan] = field(default_factory=dict)
    _buffers: Buffers = field(default_factory=Buffers)
    _buffers_key: tuple | None = None
    """The layout whose destination memory `_buffers` keeps."""
    _hosts: dict[str, torch.Tensor] = field(default_factory=dict)
    """View tensors (by name) that home shards live inside, in layout `_hosts_key`."""
    _hosts_key: tuple | None = None
    hosting: bool = True
    """Whether home shards may live inside a view (plans.residency.Residency.hosting)."""
    last_move: tuple[float, float] | None = None
    """Wall-clock (start, end) of the last `view` call on this rank if it sent or received
    parameters in it, else None: metrics time a move from the last participant's arrival."""

    @property
    def home_ctx(self) -> ParallelContext:
        return self.ctxs[layout_key(self.home)]

    def init(self, seed: int) -> None:
        """Build the home shards: from the spec's HF checkpoint, else a seeded random init that
        is the same under every layout."""
        if not self.home_ctx.in_mesh:
            return
        self.model = Transformer.for_context(self.spec, self.home_ctx, self.dtype, self.device)
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
        self.last_move = None
        key = layout_key(alloc)
        if key == layout_key(self.home) or not self.loaded:
            return self.model
        if self._view is not None and self._view[0] == key:
            return self._view[1]
        self.drop_view()
        if self._buffers_key != key:  # memory of another layout: free it before the new view
            self.release_buffers()
        into = self._hosts if self._hosts_key == key else None
        plan, rank, shards = self._move(alloc, self._buffers, into)
        self._buffers_key = key
        if self._hosts_key is None:
            self._host_home(key, plan, rank, shards)
        model = self.adopt(key, shards)
        self._view = (key, model, added(shards, self.shards()))
        return model

    def _move(self, alloc: Allocation, buffers: Buffers, into=None) -> tuple:
        """The home weights moved into `alloc`'s layout: (transfer plan, this rank, shards);
        `last_move` records the move's span where this rank sends or receives."""
        key = layout_key(alloc)
        if key not in self._plans:
            self._plans[key] = plan_params(self.home, alloc, self.spec, self.gpus_per_node)
        plan, rank = self._plans[key], this_rank()
        start = time.time()
        shards = reallocate(
            plan,
            self.shards(),
            self.dtype,
            keep_source=True,
            device=self.device,
            buffers=buffers,
            into=into,
        )
        if plan.sends(rank) or plan.recvs(rank):
            self.last_move = (start, time.time())
        return plan, rank, shards

    def adopt(self, key: tuple, shards: dict) -> Transformer | None:
        """A model of the layout adopting the moved tensors as parameters (no copy, nothing
        allocated); None off its mesh."""
        ctx = self.ctxs[key]
        if not ctx.in_mesh:
            return None
        shell = Transformer.for_context(self.spec, ctx, self.dtype, "meta")
        return adopt_shards_(shell, shards)

    def snapshot(self, alloc: Allocation, buffers: Buffers) -> tuple[Transformer | None, list]:
        """A copy of the home weights in `alloc`'s layout that later train steps leave as it
        is (a staged view, plans.staleness): (model on this rank or None, its tensors, to give
        back to `buffers` when dropped). Collective like `view`; never hosts home rows."""
        self.last_move = None
        _, _, shards = self._move(alloc, buffers)
        home = self.shards()
        # A piece that is home memory (or a view into it) would change with the next train
        # step: copy it.
        homes = {t.untyped_storage().data_ptr() for t in home.values()}
        for name, t in shards.items():
            if t.untyped_storage().data_ptr() in homes:
                shards[name] = buffers.take(t.shape, t.dtype, t.device).copy_(t)
        return self.adopt(layout_key(alloc), shards), list(shards.values())

    def _host_home(self, key: tuple, plan: TransferPlan, rank: int, out: dict) -> None:
        """Let home shards that are whole, contiguous parts of this view's tensors (rows of a
        tp shard when the view has less tp) live there from now on: their old memory is
        freed, and later moves into this layout do not copy them; only where the plan's
        residency lets the role host (`hosting`)."""
        if self.model is None or not self.hosting:
            return
        parts, hosts = host_regions(plan, rank, out)
        params = dict(self.model.named_parameters(remove_duplicate=False))
        for name, part in parts.items():
            params[name].data = part
        if hosts:
            self._hosts, self._hosts_key = hosts, key

    def drop_view(self) -> None:
        """Forget the temporary copy (its weights are stale after a train step). Its memory
        is kept for the next view in the same layout; the caller must not use the dropped
        view again (its tensors will be overwritten)."""
        if self._view is not None:
            self._buffers.give(self._view[2])
        self._view = None

    def release_buffers(self) -> None:
        """Free the memory kept from dropped views."""
        self._buffers.release()
        self._buffers_key = None


def build_roles(
    plan: Plan,
    ctxs: dict[tuple, ParallelContext],
    rules: Residency,
    device: torch.device | str = "cpu",
) -> dict[str, RoleModel]:
    """Every role's model in its home layout (plans.residency), initialised on this rank's
    `device`."""
    exp = plan.experiment
    dtype = DTYPES[exp.dtype]
    roles: dict[str, RoleModel] = {}
    for role in exp.roles:
        roles[role] = RoleModel(
            role,
            exp.model(role),
            plan.allocations[rules.home[role]],
            ctxs,
            plan.cluster.gpus_per_node,
            dtype,
            torch.device(device),
            loaded=role in rules.loaded,
            hosting=role in rules.hosting,
        )
    # The reference starts as the actor and the reward model as the critic, as in RLHF from
    # one SFT model and one reward model: same seeds.
    seeds = {"actor": exp.seed, "ref": exp.seed, "critic": exp.seed + 1, "reward": exp.seed + 1}
    for role, rm in roles.items():
        if rm.loaded:
            rm.init(seeds[role])
    return roles
