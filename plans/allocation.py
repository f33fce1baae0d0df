"""Where and how one model function call runs: a device mesh and a parallel strategy.

The rank grid of an allocation is the mesh's device list reshaped to (pp, dp, tp), tp fastest,
so a TP group is a run of neighbouring devices (inside one node whenever tp <= GPUs per node)
and pipeline stages are the outermost blocks. The executor's process groups, the estimator's
link choice and the reallocation planner all read the grid from here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plans.strict import STRICT


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class DeviceMesh(BaseModel):
    """A contiguous block of devices: `n_gpus` devices starting at `gpu_start` on each of
    `n_nodes` nodes starting at `node_start`. Inside one node the size is a power of two and
    the block is aligned to its size; a mesh spanning several nodes takes them whole."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    node_start: int = Field(0, ge=0, description="First node of the mesh.")
    n_nodes: int = Field(1, ge=1, description="Number of consecutive nodes.")
    gpu_start: int = Field(0, ge=0, description="First device index inside each node.")
    n_gpus: int = Field(ge=1, description="Devices used on each node.")

    @model_validator(mode="after")
    def _shape(self) -> DeviceMesh:
        if self.n_nodes == 1:
            if not is_power_of_two(self.n_gpus):
                raise ValueError(
                    f"n_gpus={self.n_gpus}: a mesh inside one node has a power-of-two size"
                )
            if self.gpu_start % self.n_gpus:
                raise ValueError(
                    f"gpu_start={self.gpu_start} is not aligned to the mesh size {self.n_gpus}"
                )
        elif self.gpu_start != 0:
            raise ValueError(f"gpu_start={self.gpu_start}: a mesh spanning nodes takes whole nodes")
        return self

    @property
    def size(self) -> int:
        return self.n_nodes * self.n_gpus

    def ranks(self, gpus_per_node: int) -> list[int]:
        """Global ranks of the mesh, node-major (rank = node * gpus_per_node + gpu)."""
        return [
            node * gpus_per_node + gpu
            for node in range(self.node_start, self.node_start + self.n_nodes)
            for gpu in range(self.gpu_start, self.gpu_start + self.n_gpus)
        ]

    def overlaps(self, other: DeviceMesh, gpus_per_node: int) -> bool:
        return bool(set(self.ranks(gpus_per_node)) & set(other.ranks(gpus_per_node)))

    def label(self) -> str:
        """Short human form: `n0:g0-3`, `n0-1` (whole nodes)."""
        nodes = f"n{self.node_start}" + (
            f"-{self.node_start + self.n_nodes - 1}" if self.n_nodes > 1 else ""
        )
        if self.n_nodes > 1:
            return nodes
        gpus = f"g{self.gpu_start}" + (
            f"-{self.gpu_start + self.n_gpus - 1}" if self.n_gpus > 1 else ""
        )
        return f"{nodes}:{gpus}"

    @classmethod
    def whole(cls, nodes: int, gpus_per_node: int) -> DeviceMesh:
        """Every device of a cluster."""
        return cls(node_start=0, n_nodes=nodes, gpu_start=0, n_gpus=gpus_per_node)


class ParallelStrategy(BaseModel):
    """How a call's work is split over its mesh: dp x tp x pp == mesh size."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    dp: int = Field(
        1, ge=1, description="Data-parallel replicas; each takes a share of the sequences."
    )
    tp: int = Field(
        1, ge=1, description="Tensor-parallel degree: heads, MLP columns and vocabulary split."
    )
    pp: int = Field(1, ge=1, description="Pipeline stages: contiguous layer ranges.")
    micro_batches: int = Field(
        1,
        ge=1,
        description="Micro-batches per step on each dp rank (pipeline filling, activation memory).",
    )
    zero1: bool = Field(
        False,
        description="Train calls only: shard optimizer states (and the update) across dp ranks.",
    )
    recompute: bool = Field(
        False,
        description="Train calls only: activation checkpointing. Keep each transformer block's "
        "input and recompute its activations during backward (one more forward of every block, "
        "activations of one block per micro-batch alive).",
    )

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    def label(self) -> str:
        z = "+z1" if self.zero1 else ""
        r = "+rc" if self.recompute else ""
        return f"d{self.dp}t{self.tp}p{self.pp} m{self.micro_batches}{z}{r}"


class Allocation(BaseModel):
    """The placement of one model function call."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    mesh: DeviceMesh = Field(description="Devices the call runs on.")
    strategy: ParallelStrategy = Field(description="Parallel strategy on that mesh.")

    @model_validator(mode="after")
    def _strategy_fills_mesh(self) -> Allocation:
        s = self.strategy
        if s.world != self.mesh.size:
            raise ValueError(
                f"dp*tp*pp = {s.dp}*{s.tp}*{s.pp} = {s.world} differs from the mesh size {self.mesh.size}"
            )
        return self

    def rank_grid(self, gpus_per_node: int) -> list[list[list[int]]]:
        """Global ranks as grid[pp_stage][dp_rank][tp_rank] (tp fastest)."""
        r = self.mesh.ranks(gpus_per_node)
        s = self.strategy
        return [
            [r[(p * s.dp + d) * s.tp : (p * s.dp + d + 1) * s.tp] for d in range(s.dp)]
            for p in range(s.pp)
        ]

    def coords(self, rank: int, gpus_per_node: int) -> tuple[int, int, int] | None:
        """(pp, dp, tp) coordinates of a global rank, or None when the rank is outside the mesh."""
        r = self.mesh.ranks(gpus_per_node)
        if rank not in r:
            return None
        i, s = r.index(rank), self.strategy
        return i // (s.dp * s.tp), (i // s.tp) % s.dp, i % s.tp

    def label(self) -> str:
        return f"{self.mesh.label()} {self.strategy.label()}"
