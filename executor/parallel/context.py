"""Process groups of one allocation and this rank's place in them.

A `ParallelContext` is what every executor function receives instead of reading global
state: it names the tp, dp and pp groups of the calling rank, its coordinates in the
allocation's rank grid (grid[pp][dp][tp], tp fastest, see plans.allocation), and the
neighbours a pipeline stage talks to. Without torch.distributed (or for a 1x1x1 strategy)
`ParallelContext.single()` gives the same interface with every size 1 and no groups, and
every collective in executor.parallel.collectives short-circuits on a missing group.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from plans.allocation import Allocation

DEFAULT_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class ParallelContext:
    """This rank's view of one allocation. Groups of size 1 are None (no collective needed)."""

    rank: int
    """Global rank in the world (0 without torch.distributed)."""
    in_mesh: bool
    """False for a rank outside the allocation's mesh: it only took part in group creation."""
    tp_size: int = 1
    dp_size: int = 1
    pp_size: int = 1
    tp_rank: int = 0
    dp_rank: int = 0
    pp_rank: int = 0
    tp_group: dist.ProcessGroup | None = None
    dp_group: dist.ProcessGroup | None = None
    pp_group: dist.ProcessGroup | None = None
    embed_group: dist.ProcessGroup | None = None
    """First and last stage of the same (dp, tp) position: syncs tied embedding gradients."""
    pp_ranks: tuple[int, ...] = (0,)
    """Global ranks of this rank's pipeline, stage order."""
    tp_ranks: tuple[int, ...] = (0,)
    dp_ranks: tuple[int, ...] = (0,)

    @classmethod
    def single(cls) -> ParallelContext:
        """One process, no torch.distributed: everything is size 1."""
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return cls(rank=rank, in_mesh=True, pp_ranks=(rank,), tp_ranks=(rank,), dp_ranks=(rank,))

    @classmethod
    def build(
        cls, alloc: Allocation, gpus_per_node: int, timeout: timedelta = DEFAULT_TIMEOUT
    ) -> ParallelContext:
        """Create the groups of `alloc`. Collective: every rank of the world must call it with
        the same arguments, in the same order relative to other group creations, because
        `dist.new_group` is collective over the whole world even for ranks outside the mesh."""
        if not dist.is_initialized():
            if alloc.strategy.world != 1:
                raise RuntimeError(f"allocation {alloc.label()} needs torch.distributed")
            return cls.single()
        grid = alloc.rank_grid(gpus_per_node)
        s = alloc.strategy
        top = max(r for stage in grid for rep in stage for r in rep)
        if top >= dist.get_world_size():
            raise RuntimeError(
                f"allocation {alloc.label()} needs rank {top} but the world has "
                f"{dist.get_world_size()} ranks"
            )
        rank = dist.get_rank()
        mine: dict[str, tuple[tuple[int, ...], dist.ProcessGroup | None]] = {}

        def make(kind: str, ranks: list[int]) -> None:
            # The decision to skip a size-1 group depends only on `alloc`, so every rank
            # skips the same calls and the new_group sequence stays aligned.
            group = dist.new_group(ranks, timeout=timeout) if len(ranks) > 1 else None
            if rank in ranks:
                mine[kind] = (tuple(ranks), group)

        for p in range(s.pp):
            for d in range(s.dp):
                make("tp", grid[p][d])
        for p in range(s.pp):
            for t in range(s.tp):
                make("dp", [grid[p][d][t] for d in range(s.dp)])
        for d in range(s.dp):
            for t in range(s.tp):
                make("pp", [grid[p][d][t] for p in range(s.pp)])
        if s.pp > 1:
            for d in range(s.dp):
                for t in range(s.tp):
                    make("embed", [grid[0][d][t], grid[s.pp - 1][d][t]])

        coords = alloc.coords(rank, gpus_per_node)
        if coords is None:
            return cls(rank=rank, in_mesh=False)
        p, d, t = coords
        return cls(
            rank=rank,
            in_mesh=True,
            tp_size=s.tp,
            dp_size=s.dp,
            pp_size=s.pp,
            tp_rank=t,
            dp_rank=d,
            pp_rank=p,
            tp_group=mine["tp"][1],
            dp_group=mine["dp"][1],
            pp_group=mine["pp"][1],
            embed_group=mine["embed"][1] if "embed" in mine else None,
            pp_ranks=mine["pp"][0],
            tp_ranks=mine["tp"][0],
            dp_ranks=mine["dp"][0],
        )

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def prev_stage_rank(self) -> int | None:
        """Global rank of the previous pipeline stage (same dp, tp), None on the first."""
        return None if self.is_first_stage else self.pp_ranks[self.pp_rank - 1]

    @property
    def next_stage_rank(self) -> int | None:
        return None if self.is_last_stage else self.pp_ranks[self.pp_rank + 1]

    @property
    def last_stage_rank(self) -> int:
        return self.pp_ranks[-1]
