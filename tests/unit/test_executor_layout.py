"""The even-split rule, the parameter layout table and the single-process context."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from executor.parallel.context import ParallelContext
from executor.parallel.slicing import shard
from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.layout import check_tp, head_split, param_slices, stage_layers
from plans.model import ModelSpec, preset
from plans.slicing import split_range, split_sizes


@given(st.integers(0, 500), st.integers(1, 17))
def test_split_range_tiles_evenly(n, parts):
    pieces = [split_range(n, parts, i) for i in range(parts)]
    assert pieces[0][0] == 0 and pieces[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
    sizes = split_sizes(n, parts)
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n


def test_split_range_rejects_bad_pieces():
    with pytest.raises(ValueError):
        split_range(10, 3, 3)
    with pytest.raises(ValueError):
        split_range(10, 0, 0)


def test_shard_reassembles():
    t = torch.arange(30.0).view(5, 6)
    assert torch.equal(torch.cat([shard(t, 1, 4, i) for i in range(4)], 1), t)


# 12 query / 4 kv heads, and sizes that tp and pp do not divide evenly.
ODD = ModelSpec(
    hidden_size=48,
    intermediate_size=100,
    num_hidden_layers=5,
    num_attention_heads=12,
    num_key_value_heads=4,
    vocab_size=263,
    max_position_embeddings=64,
)


@pytest.mark.parametrize("name", ["tiny", "tiny-mha", "odd"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("pp", [1, 2, 3])
def test_slices_cover_every_tensor_exactly(name, tp, pp):
    """Over all tp ranks and stages each checkpoint element is held, and exactly one holder
    owns each element for the grad norm (replicated norms, kv copies, uneven splits)."""
    spec = ODD if name == "odd" else preset(name)
    if spec.num_attention_heads % tp:
        pytest.skip("tp does not divide the heads")
    owned: dict[str, torch.Tensor] = {}
    held: dict[str, torch.Tensor] = {}

    def count(into: dict[str, torch.Tensor], sl) -> None:
        if sl.name not in into:
            into[sl.name] = torch.zeros(sl.full_shape, dtype=torch.int8)
        into[sl.name][sl.index()] += 1

    for p in range(pp):
        for r in range(tp):
            for sl in param_slices(spec, tp, r, pp, p):
                if sl.source != sl.name:
                    continue
                count(held, sl)
                if sl.grad_owner:
                    count(owned, sl)
    n_tensors = 2 + 9 * spec.num_hidden_layers + 1  # embed, 9 per block, norm, lm_head
    assert len(held) == n_tensors
    for name_, count in owned.items():
        assert (count == 1).all(), name_
    assert set(owned) == set(held)


def test_kv_heads_replicate_when_tp_exceeds_them():
    spec = preset("tiny")  # 4 query heads, 2 kv heads
    splits = [head_split(spec, 4, r) for r in range(4)]
    assert [s.kv_heads for s in splits] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [s.q_heads for s in splits] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    k = {s.name: s for s in param_slices(spec, 4, 1, 1, 0)}[
        "model.layers.0.self_attn.k_proj.weight"
    ]
    assert k.partial_grad and not k.grad_owner


def test_check_tp_rejects_uneven_heads():
    with pytest.raises(ValueError, match="num_attention_heads"):
        check_tp(preset("tiny"), 3)
    with pytest.raises(ValueError, match="exceeds"):
        stage_layers(preset("tiny"), 5, 0)


def test_tied_head_on_a_later_stage_reads_the_embedding():
    spec = preset("tiny").model_copy(update={"tie_word_embeddings": True})
    last = {s.name: s for s in param_slices(spec, 2, 1, 2, 1)}
    assert last["lm_head.weight"].source == "model.embed_tokens.weight"
    assert not last["lm_head.weight"].grad_owner
    only = {s.name for s in param_slices(spec, 1, 0, 1, 0)}
    assert "lm_head.weight" not in only


def test_single_context_and_no_dist_fallback():
    ctx = ParallelContext.single()
    assert (ctx.tp_size, ctx.dp_size, ctx.pp_size) == (1, 1, 1)
    assert ctx.is_first_stage and ctx.is_last_stage and ctx.tp_group is None
    one = Allocation(mesh=DeviceMesh(n_gpus=1), strategy=ParallelStrategy())
    assert ParallelContext.build(one, 8).in_mesh
    two = Allocation(mesh=DeviceMesh(n_gpus=2), strategy=ParallelStrategy(tp=2))
    with pytest.raises(RuntimeError, match="needs torch.distributed"):
        ParallelContext.build(two, 8)
