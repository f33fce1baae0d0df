"""The actor's staged views under bounded staleness (plans.staleness, docs/ASYNC.md).

With a plan's max_staleness k > 0 the actor's generate call of iteration i samples with
version max(0, i - k). Right before the actor's train call of iteration i the home (version
i) is copied into a new view of the generation layout, kept for the generate call of
iteration i + k; the generate calls of iterations 0 .. k - 1 share one view of version 0
taken right before the first. A view is dropped after the last generate call that reads it;
its memory is kept for the next one. Every rank takes each copy at the same place of the
global order (the moves are collective), so the order of moves stays deadlock-free.

A checkpoint after iteration i holds the views generation i + 1 .. i + k will read (older
weights than the home's), so a resumed run samples exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch

from executor.realloc.buffers import Buffers
from executor.realloc.model_shards import model_shards
from executor.runtime.roles import RoleModel
from plans import Allocation
from plans.residency import layout_key


class StagedViews:
    def __init__(self, role: RoleModel, alloc: Allocation, k: int):
        self.role, self.alloc, self.k = role, alloc, k
        self._views: dict[int, tuple] = {}  # iteration -> (model, tensors), shared by 0..k-1
        self._buffers = Buffers()
        self.last_move: tuple[float, float] | None = None

    def _take(self, its: range) -> None:
        # Also for iterations past this run's end: a checkpoint keeps them for a longer one.
        view = self.role.snapshot(self.alloc, self._buffers)
        self.last_move = self.role.last_move
        for it in its:
            self._views[it] = view

    def before_train(self, it: int) -> None:
        """Right before the actor's train call of `it`: version `it` for generation it + k."""
        self._take(range(it + self.k, it + self.k + 1))

    def for_generate(self, it: int):
        """The model generation of `it` samples with (None off the generation mesh)."""
        self.last_move = None
        if it == 0:
            self._take(range(0, self.k))
        if it not in self._views:
            raise RuntimeError(f"no staged view for the generation of iteration {it}")
        return self._views[it][0]

    def after_generate(self, it: int) -> None:
        view = self._views.pop(it)
        if all(v is not view for v in self._views.values()):
            self._buffers.give(view[1])

    def state(self) -> list[dict]:
        """This rank's views as host copies, one entry per view with the iterations that
        read it (every rank lists them; ranks off the generation mesh hold no tensors)."""
        groups: dict[int, dict] = {}
        for it, view in sorted(self._views.items()):
            g = groups.setdefault(id(view), {"iterations": [], "view": view})
            g["iterations"].append(it)
        out = []
        for g in groups.values():
            model = g["view"][0]
            shards = {} if model is None else model_shards(model)
            params = {k: v.detach().to("cpu", copy=True) for k, v in shards.items()}
            out.append({"iterations": g["iterations"], "params": params})
        return out

    def restore(self, saved: list[dict]) -> None:
        """The views of `state()`, on this rank's device."""
        rm, key = self.role, layout_key(self.alloc)
        for g in saved:
            model, tensors = None, []
            if rm.ctxs[key].in_mesh:
                with torch.no_grad():
                    shards = {
                        k: self._buffers.take(v.shape, v.dtype, rm.device).copy_(v)
                        for k, v in g["params"].items()
                    }
                model, tensors = rm.adopt(key, shards), list(shards.values())
            for it in g["iterations"]:
                self._views[it] = (model, tensors)

    @property
    def alive(self) -> int:
        """Distinct views held now."""
        return len({id(v) for v in self._views.values()})
