"""Layouts on a 4-rank world and reference tensors for the reallocation tests.

The world is 4 ranks seen as 1 node x 4 devices or 2 nodes x 2 devices; every legal
Allocation (mesh x dp/tp/pp) of each topology is listed, so tests can sweep or sample pairs.
Reference tensors are seeded random values per key, so every element differs (norms too)
and a misplaced slice cannot compare equal by chance.
"""

from __future__ import annotations

import gc
import warnings
import zlib

import torch

from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.layout import check_tp, param_slices
from plans.model import ModelSpec, preset
from plans.transfer import Box, Piece

WORLD = 4
TOPOLOGIES = ((1, 4), (2, 2))  # (nodes, gpus per node)


def specs() -> dict[str, ModelSpec]:
    """The 'tiny' preset (GQA: tp=4 replicates kv heads), a variant with a value head, and
    an uneven one (3 layers, vocab 37, MLP 90, tied embeddings) so splits differ by one."""
    tiny = preset("tiny")
    return {
        "tiny": tiny,
        "tiny-value": tiny.model_copy(update={"head": "value"}),
        "uneven-tied": ModelSpec(
            name="uneven-tied",
            hidden_size=48,
            intermediate_size=90,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=37,
            max_position_embeddings=64,
            tie_word_embeddings=True,
        ),
    }


def meshes(nodes: int, gpus_per_node: int) -> list[DeviceMesh]:
    out = []
    for node in range(nodes):
        size = 1
        while size <= gpus_per_node:
            for start in range(0, gpus_per_node, size):
                out.append(DeviceMesh(node_start=node, n_nodes=1, gpu_start=start, n_gpus=size))
            size *= 2
    for n in range(2, nodes + 1):
        for first in range(nodes - n + 1):
            out.append(DeviceMesh(node_start=first, n_nodes=n, n_gpus=gpus_per_node))
    return out


def allocations(nodes: int, gpus_per_node: int, spec: ModelSpec) -> list[Allocation]:
    """Every mesh x (dp, tp, pp) that `spec` accepts on the topology."""
    out = []
    for mesh in meshes(nodes, gpus_per_node):
        n = mesh.size
        for tp in (t for t in range(1, n + 1) if n % t == 0):
            for pp in (p for p in range(1, n // tp + 1) if (n // tp) % p == 0):
                try:
                    check_tp(spec, tp)
                except ValueError:
                    continue
                if pp <= spec.num_hidden_layers:
                    strategy = ParallelStrategy(dp=n // (tp * pp), tp=tp, pp=pp)
                    out.append(Allocation(mesh=mesh, strategy=strategy))
    return out


def relation(a: Allocation, b: Allocation, gpus_per_node: int) -> str:
    ra, rb = set(a.mesh.ranks(gpus_per_node)), set(b.mesh.ranks(gpus_per_node))
    if a == b:
        return "identical"
    return "overlapping" if ra & rb else "disjoint"


def full_tensor(
    key: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7919 + zlib.crc32(key.encode()))
    return torch.randn(shape, generator=g).to(dtype)


def param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> full shape (a tied head has none of its own)."""
    return {sl.source: sl.full_shape for sl in param_slices(spec, 1, 0, 1, 0)}


def make_shards(
    pieces: dict[str, Piece], spec: ModelSpec, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A rank's shards of the reference model under a layout."""
    shapes = param_shapes(spec)
    return {
        name: full_tensor(p.key, shapes[p.key], dtype, seed)[index(p.box)].clone()
        for name, p in pieces.items()
    }


def index(box: Box) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in box)


def live_tensor_bytes() -> int:
    """Bytes of every distinct tensor storage reachable in this process (gc-tracked)."""
    gc.collect()
    seen: dict[int, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance touches deprecated torch attributes
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                st = obj.untyped_storage()
                seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
    return sum(seen.values())
