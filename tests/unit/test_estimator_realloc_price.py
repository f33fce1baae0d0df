"""The reallocation price: the busiest rank's link bytes (sends and receives) plus its local
copies at the profile's measured memory-copy rate; older profiles without that rate fall back
to half the memory bandwidth; the profiler writes a measured rate into a profile file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from estimator.lookup import ProfileLookup
from estimator.profile import Profile, Roofline, load_profile
from estimator.transfer import copy_rate, realloc_transfer
from executor.profiling.profiler import main as patch_profiles
from plans import Allocation, DeviceMesh, ParallelStrategy, preset

SHIPPED = Path(__file__).parents[2] / "estimator" / "profiles"
LINK, COPY = 1e9, 1e10
SPEC = preset("small")


def lookup(device: str = "cpu", copy: float | None = COPY) -> ProfileLookup:
    # No collective tables: send_recv is priced from the link rate alone.
    profile = Profile(
        kind="measured",
        id="test",
        device=device,
        roofline=Roofline(
            flops_per_s=1e11,
            memory_bytes_per_s=4e10,
            intra_node_bytes_per_s=LINK,
            inter_node_bytes_per_s=LINK,
            copy_memory_bytes_per_s=copy,
        ),
    )
    return ProfileLookup(profile, intra_bw=LINK, inter_bw=LINK)


def alloc(first: int, size: int, dp: int = 1, tp: int = 1, pp: int = 1) -> Allocation:
    return Allocation(
        mesh=DeviceMesh(gpu_start=first, n_gpus=size),
        strategy=ParallelStrategy(dp=dp, tp=tp, pp=pp),
    )


def price(src: Allocation, dst: Allocation, lk: ProfileLookup | None = None) -> float:
    return realloc_transfer(SPEC, 4, src, dst, 4, lk or lookup()).time_s


def test_copy_rate_falls_back_to_half_the_memory_bandwidth():
    assert copy_rate(lookup()) == COPY
    assert copy_rate(lookup(copy=None)) == 2e10


def test_a_whole_model_to_another_rank_is_its_bytes_at_the_link_rate():
    t = price(alloc(0, 1), alloc(1, 1))
    assert t == pytest.approx(SPEC.num_params() * 4 / LINK, rel=0.01)


def _o_down_bytes() -> float:
    h, heads, hd, inter = (
        SPEC.hidden_size,
        SPEC.num_attention_heads,
        SPEC.head_dim,
        SPEC.intermediate_size,
    )
    return SPEC.num_hidden_layers * (h * heads * hd + h * inter) * 4


def test_sends_and_receives_add_up_on_a_cpu_not_on_a_gpu():
    """t2 -> d2 on the same two ranks: each receives the half it lacks and sends the half it
    has (a CPU core does both); of its own half it copies only the o/down column blocks (the
    rest is the home shard living inside the view), and the o/down column blocks it receives
    arrive into a buffer."""
    half = SPEC.num_params() * 4 / 2
    cpu = price(alloc(0, 2, tp=2), alloc(0, 2, dp=2))
    gpu = price(alloc(0, 2, tp=2), alloc(0, 2, dp=2), lookup("h100"))
    assert cpu - gpu == pytest.approx(half / LINK, rel=0.02)
    assert gpu == pytest.approx(half / LINK + _o_down_bytes() / COPY, rel=0.01)


def test_without_hosting_the_home_half_is_copied():
    """A role that does not host (plans.residency: a ZeRO-1 home, whose optimizer keeps views
    of the parameters' memory, or a second view layout): the whole own half is copied."""
    home = Allocation(
        mesh=DeviceMesh(gpu_start=0, n_gpus=2),
        strategy=ParallelStrategy(dp=1, tp=2, zero1=True),
    )
    half = SPEC.num_params() * 4 / 2
    gpu = realloc_transfer(SPEC, 4, home, alloc(0, 2, dp=2), 4, lookup("h100"), hosting=False)
    assert gpu.time_s == pytest.approx(
        half / LINK + half / COPY + _o_down_bytes() / 2 / COPY, rel=0.01
    )


def test_copies_are_priced_at_the_copy_rate():
    src, dst = alloc(0, 4, dp=2, pp=2), alloc(0, 4, tp=4)
    slow = price(src, dst, lookup(copy=COPY / 10))
    assert slow > price(src, dst) > 0


def test_rows_inside_a_wider_source_are_views():
    """dp2 -> tp2 on the same ranks: each rank holds the whole model, so nothing crosses a
    link; its rows of column-parallel weights, the embedding and head are views of what it
    holds, only its column blocks of o and down are copied."""
    t = price(alloc(0, 2, dp=2), alloc(0, 2, tp=2))
    assert t == pytest.approx(_o_down_bytes() / 2 / COPY, rel=0.01)


def test_kept_pieces_cost_nothing():
    """The same slices on the same ranks: no move; fewer layers with the same tp slice: the
    tensors a rank keeps are the ones it holds."""
    assert price(alloc(0, 4, tp=4), alloc(0, 4, tp=4)) == 0
    # dp2 -> pp2: each rank keeps the very tensors of its stage's layers
    assert price(alloc(0, 2, dp=2), alloc(0, 2, pp=2)) == 0


def test_the_profiler_writes_a_measured_copy_rate(tmp_path):
    path = tmp_path / "p.json"
    shutil.copy(SHIPPED / "cpu-epyc-2core-1thread.json", path)
    before = json.loads(path.read_text())
    patch_profiles([str(path)])
    after = load_profile(path)
    assert after.roofline.copy_memory_bytes_per_s > 0
    assert after.refinements[-1].what == "memory"
    # the rest is kept
    assert after.ops == load_profile(SHIPPED / "cpu-epyc-2core-1thread.json").ops
    assert after.id == before["id"]


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("cpu-*.json")), ids=lambda p: p.name)
def test_shipped_cpu_profiles_have_a_measured_copy_rate(path):
    """Measured when the profile was made, or added later by executor.profiling.profiler
    (a `memory` refinement) for profiles older than the rate."""
    profile = load_profile(path)
    assert profile.roofline.copy_memory_bytes_per_s
    if profile.created is not None and profile.created < "2026-11-26":
        assert any(r.what == "memory" for r in profile.refinements)
