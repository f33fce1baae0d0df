"""The actor's staged views under bounded staleness (plans.staleness, docs/ASYNC.md).

With a plan's max_staleness k > 0 the actor's generate call of iteration i samples with
version max(0, i - k). Right before the actor's train call of iteration i the home (version
i) is copied into a new view of the generation layout, kept for the generate call of
iteration i + k; the generate calls of iterations 0 .. k - 1 share one view of version 0
taken right before the first. A view is dropped after the last generate call that reads it;
its memory is kept for the next one. Every rank takes each copy at the same place of the
global order (the moves are collective), so the order of moves stays deadlock-free.
"""

from __future__ import annotations

from executor.realloc.buffers import Buffers
from executor.runtime.roles import RoleModel
from plans import Allocation


class StagedViews:
    def __init__(self, role: RoleModel, alloc: Allocation, k: int, iterations: int):
        self.role, self.alloc, self.k, self.iterations = role, alloc, k, iterations
        self._views: dict[int, tuple] = {}  # iteration -> (model, tensors), shared by 0..k-1
        self._buffers = Buffers()
        self.last_move: tuple[float, float] | None = None

    def _take(self, its: range) -> None:
        its = range(its.start, min(its.stop, self.iterations))  # none past the run's end
        self.last_move = None
        if not its:
            return
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

    @property
    def alive(self) -> int:
        """Distinct views held now."""
        return len({id(v) for v in self._views.values()})
