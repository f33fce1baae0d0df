"""The redistribution planner without processes: exact coverage, replica choice, prices."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.model import preset
from plans.transfer import (
    SAMPLES,
    Piece,
    box_numel,
    intersect,
    param_layout,
    plan_batch,
    plan_params,
    plan_transfers,
)
from tests.distributed.realloc_cases import TOPOLOGIES, allocations, relation, specs


def _alloc(mesh: DeviceMesh, dp: int = 1, tp: int = 1, pp: int = 1) -> Allocation:
    return Allocation(mesh=mesh, strategy=ParallelStrategy(dp=dp, tp=tp, pp=pp))


def _check_exact_cover(plan) -> None:
    """Every destination element comes from exactly one transfer, out of a source piece of
    the same tensor that really holds it."""
    by_dst = defaultdict(list)
    for t in plan.transfers:
        src_piece = plan.src_layout[t.src][t.src_name]
        dst_piece = plan.dst_layout[t.dst][t.dst_name]
        assert src_piece.key == dst_piece.key == t.key
        assert intersect(src_piece.box, t.box) == t.box
        assert intersect(dst_piece.box, t.box) == t.box
        by_dst[(t.dst, t.dst_name)].append(t.box)
    for rank, pieces in plan.dst_layout.items():
        for name, piece in pieces.items():
            boxes = by_dst.get((rank, name), [])
            assert sum(box_numel(b) for b in boxes) == piece.numel, (rank, name)
            for i, a in enumerate(boxes):  # pairwise disjoint, so the sum means "once"
                assert all(intersect(a, b) is None for b in boxes[i + 1 :]), (rank, name)


@st.composite
def _pair(draw):
    nodes, gpn = draw(st.sampled_from(TOPOLOGIES))
    name = draw(st.sampled_from(sorted(specs())))
    allocs = allocations(nodes, gpn, specs()[name])
    return gpn, name, draw(st.sampled_from(allocs)), draw(st.sampled_from(allocs))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_pair())
def test_every_destination_element_covered_once(pair):
    gpn, name, src, dst = pair
    _check_exact_cover(plan_params(src, dst, specs()[name], gpn))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(_pair(), st.integers(0, 13), st.booleans())
def test_batch_elements_covered_once(pair, n, last_only):
    gpn, _, src, dst = pair
    plan = plan_batch(src, dst, n, gpn, src_last_stage_only=last_only)
    _check_exact_cover(plan)
    assert set(plan.dst_layout) == set(dst.mesh.ranks(gpn))
    # Every consumer rank of one dp position (its tp ranks and stages) gets the same rows.
    grid = dst.rank_grid(gpn)
    for d in range(dst.strategy.dp):
        boxes = {plan.dst_layout[r][SAMPLES].box for stage in grid for r in stage[d]}
        assert len(boxes) == 1


def test_identical_layouts_move_nothing():
    for name, spec in specs().items():
        for nodes, gpn in TOPOLOGIES:
            for a in allocations(nodes, gpn, spec):
                plan = plan_params(a, a, spec, gpn)
                assert all(t.src == t.dst for t in plan.transfers), (name, a)
                # and every local transfer is a whole piece: the executor keeps the tensor
                for t in plan.transfers:
                    assert plan.dst_layout[t.dst][t.dst_name].box == t.box
                assert plan_batch(a, a, 8, gpn).bytes_per_pair(100) == {}


def test_disjoint_move_carries_each_destination_copy_once():
    """Disjoint meshes: bytes = dst dp replicas x (the whole model + a copy of the norms on
    every further tp rank) (untied, tp <= kv heads)."""
    spec = preset("tiny-mha")
    gpn = 8
    src = _alloc(DeviceMesh(n_gpus=4), dp=2, tp=2)
    for dst in [
        _alloc(DeviceMesh(gpu_start=4, n_gpus=4), dp=1, tp=4),
        _alloc(DeviceMesh(gpu_start=4, n_gpus=4), dp=2, pp=2),
        _alloc(DeviceMesh(gpu_start=4, n_gpus=4), dp=4),
    ]:
        b = plan_params(src, dst, spec, gpn).bytes_per_pair(2)
        norms = (2 * spec.num_hidden_layers + 1) * spec.hidden_size
        per_copy = spec.num_params() + (dst.strategy.tp - 1) * norms
        assert sum(b.values()) == dst.strategy.dp * per_copy * 2
        assert all(s < 4 <= d for s, d in b)
    # batches: every consumer rank gets its dp share, whatever its tp/pp position
    dst = _alloc(DeviceMesh(gpu_start=4, n_gpus=4), dp=2, tp=2)
    b = plan_batch(src, dst, 10, gpn).bytes_per_pair(36)
    assert sum(b.values()) == 10 * 36 * dst.strategy.tp


def test_load_spread_over_replicas():
    """4 dp replicas on node 0 feed a tp=4 copy on node 1: each replica sends about 1/4."""
    spec = preset("small")
    src = _alloc(DeviceMesh(node_start=0, n_gpus=4), dp=4)
    dst = _alloc(DeviceMesh(node_start=1, n_gpus=4), tp=4)
    sent = defaultdict(int)
    for (s, _), n in plan_params(src, dst, spec, 4).bytes_per_pair(2).items():
        sent[s] += n
    assert sorted(sent) == [0, 1, 2, 3]
    total = sum(sent.values())
    assert max(sent.values()) <= 1.05 * total / 4
    # one replica only: the same bytes, all from it
    one = plan_params(_alloc(DeviceMesh(n_gpus=1)), dst, spec, 4).bytes_per_pair(2)
    assert sum(one.values()) == total and {s for s, _ in one} == {0}


def test_replicas_on_the_destination_node_preferred():
    """A dp=2 x tp=4 source spans nodes 0 and 1; a tp=2 copy on node 1 is fed from node 1."""
    spec = preset("tiny")
    src = _alloc(DeviceMesh.whole(2, 4), dp=2, tp=4)
    dst = _alloc(DeviceMesh(node_start=1, gpu_start=2, n_gpus=2), tp=2)
    b = plan_params(src, dst, spec, 4).bytes_per_pair(2)
    assert b and all(s // 4 == d // 4 for s, d in b)  # same node
    # without the topology the choice may cross nodes, but the bytes stay the same
    plan = plan_transfers(param_layout(src, spec, 4), param_layout(dst, spec, 4))
    assert sum(plan.bytes_per_pair(2).values()) == sum(b.values())


def test_local_pieces_are_not_sent():
    """tp=2 -> tp=1 on ranks {0,1} -> {0}: rank 0 keeps its half, only rank 1's half moves."""
    spec = preset("tiny")
    src = _alloc(DeviceMesh(n_gpus=2), tp=2)
    dst = _alloc(DeviceMesh(n_gpus=1))
    b = plan_params(src, dst, spec, 4).bytes_per_pair(4)
    assert list(b) == [(1, 0)]
    # rank 1 holds half of every split tensor; replicated ones (norms, kv at tp > kv) are local
    plan = plan_params(src, dst, spec, 4)
    remote = sum(t.numel for t in plan.transfers if t.src != t.dst)
    local = sum(t.numel for t in plan.transfers if t.src == t.dst)
    assert remote + local == spec.num_params() and 0.45 < remote / spec.num_params() < 0.5


def test_missing_source_is_an_error():
    dst = {0: {"w": Piece("w", ((0, 4), (0, 2)))}}
    src = {1: {"w": Piece("w", ((0, 2), (0, 2)))}}
    with pytest.raises(ValueError, match="not covered"):
        plan_transfers(src, dst)
    src = {1: {"a": Piece("w", ((0, 3), (0, 2)))}, 2: {"b": Piece("w", ((2, 4), (0, 2)))}}
    with pytest.raises(ValueError, match="overlap"):
        plan_transfers(src, dst)


def test_plan_is_deterministic_and_grouped():
    spec = specs()["uneven-tied"]
    for nodes, gpn in TOPOLOGIES:
        allocs = allocations(nodes, gpn, spec)
        for a in allocs[::3]:
            for b in allocs[::4]:
                p, q = plan_params(a, b, spec, gpn), plan_params(a, b, spec, gpn)
                assert p.transfers == q.transfers
                pairs = [(t.src, t.dst) for t in p.transfers]
                assert pairs == sorted(pairs), relation(a, b, gpn)  # one run per pair


@pytest.mark.parametrize("module", ["transfer", "layout", "slicing"])
def test_planner_imports_no_torch(module):
    """The layout math and the transfer planner use only plans/ and the standard library, so
    the estimator and the planner share them without importing torch."""
    path = Path(__file__).parents[2] / "plans" / f"{module}.py"
    allowed = ("plans", "__future__")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            assert mod.startswith(allowed) or mod.split(".")[0] in _stdlib(), mod
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in _stdlib(), alias.name


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)


def test_planner_starts_without_torch():
    """Importing the planner (and pricing a move) loads no torch, as the estimator needs."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from plans.transfer import plan_params\n"
        "from plans.allocation import Allocation, DeviceMesh, ParallelStrategy\n"
        "from plans.model import preset\n"
        "a = Allocation(mesh=DeviceMesh(n_gpus=2), strategy=ParallelStrategy(tp=2))\n"
        "b = Allocation(mesh=DeviceMesh(n_gpus=2), strategy=ParallelStrategy(pp=2))\n"
        "assert plan_params(a, b, preset('tiny'), 2).bytes_per_pair(2)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = Path(__file__).parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
