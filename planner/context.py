"""What every search step needs, with caches: the experiment, the cluster and the cost model."""

from __future__ import annotations

from estimator.cost import CostModel
from estimator.simulate import estimate_allocations
from planner import candidates
from plans import MFC, Allocation, ClusterSpec, DeviceMesh, ExperimentSpec, ParallelStrategy

TIE = 1e-9
"""Relative difference below which two estimates are equally fast."""


class SearchContext:
    """Cost queries of one (experiment, cluster, profile), shared by baselines and search.
    `staleness`: the k a plan may run with (plans.staleness); a plan costs as much as its
    fastest k (the synchronous order alone by default)."""

    def __init__(
        self,
        exp: ExperimentSpec,
        cluster: ClusterSpec,
        cost_model: CostModel,
        staleness: tuple[int, ...] = (0,),
    ):
        self.exp = exp
        self.cluster = cluster
        self.cm = cost_model
        self.staleness = staleness
        self._strategies: dict[tuple[str, int, int], list[ParallelStrategy]] = {}
        self._fastest: dict[tuple, ParallelStrategy | None] = {}
        self._scores: dict[tuple[str, int, int, ParallelStrategy], tuple[float, float, bool]] = {}

    def strategies(self, mesh: DeviceMesh, mfc: MFC) -> list[ParallelStrategy]:
        """Legal strategies of a call on a mesh; they depend only on the mesh's shape."""
        key = (mfc.name, mesh.n_nodes, mesh.n_gpus)
        if key not in self._strategies:
            self._strategies[key] = candidates.strategies(mesh, mfc, self.exp, self.cluster)
        return self._strategies[key]

    def score(
        self, name: str, mesh: DeviceMesh, strategy: ParallelStrategy
    ) -> tuple[float, float, bool]:
        """(seconds, peak bytes on the busiest device, fits alone) of one call; like the
        strategies, it depends on the mesh's shape only, so it is cached by shape."""
        key = (name, mesh.n_nodes, mesh.n_gpus, strategy)
        if key not in self._scores:
            c = self.cm.call_cost(name, Allocation(mesh=mesh, strategy=strategy))
            self._scores[key] = (c.time_s, c.memory.total, c.feasible)
        return self._scores[key]

    def fastest(
        self, mfc: MFC, mesh: DeviceMesh, budget: float, shape: tuple[int, int, int] | None = None
    ) -> ParallelStrategy | None:
        """The fastest strategy of a call on a mesh whose stand-alone peak memory fits in
        `budget` bytes, optionally with a fixed (dp, tp, pp)."""
        key = (mfc.name, mesh.n_nodes, mesh.n_gpus, budget, shape)
        if key not in self._fastest:
            best, best_t = None, float("inf")
            for s in self.strategies(mesh, mfc):
                if shape is not None and (s.dp, s.tp, s.pp) != shape:
                    continue
                t, mem, fits = self.score(mfc.name, mesh, s)
                if fits and mem <= budget and t < best_t:
                    best, best_t = s, t
            self._fastest[key] = best
        return self._fastest[key]

    def plan_cost(self, allocations: dict[str, Allocation]) -> float:
        """Simulated steady-state iteration seconds at the fastest k; inf when the plan does
        not fit."""
        return self.fastest_staleness(allocations)[0]

    def fastest_staleness(self, allocations: dict[str, Allocation]) -> tuple[float, int]:
        """(seconds, k) of the fastest k of `staleness` for these allocations; the smallest k
        of equally fast ones (fewer views, fresher data)."""
        best, best_k = float("inf"), self.staleness[0]
        for k in self.staleness:
            t = estimate_allocations(self.cm, allocations, staleness=k)[0]
            if t < best * (1 - TIE):  # a larger k must gain more than rounding
                best, best_k = t, k
        return best, best_k
