"""The profile format: loading, errors, schema, analytic labels and table lookups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from estimator import CostModel, analytic_profile, load_profile, plan_report, profile_schema
from estimator.lookup import ProfileLookup
from estimator.profile import OpTiming, Profile, save_profile
from estimator.shapes import op_flops_bytes, shard_shape
from plans import ClusterSpec, PlanError, example_path, load_plan, preset
from tests.profile_util import measured_profile

SHIPPED = sorted((Path(__file__).parents[2] / "estimator" / "profiles").glob("*.json"))
SMALL = shard_shape(preset("small"), 1, 4)


def measured(points: dict[tuple[int, int], float], op: str = "block_fwd") -> Profile:
    return measured_profile(
        ops=[
            OpTiming(op=op, shape=SMALL, batch=b, seq_len=s, time_s=t)
            for (b, s), t in points.items()
        ],
    )


GRID = {(1, 16): 0.01, (1, 64): 0.03, (4, 16): 0.035, (4, 64): 0.12}


def lookup(p: Profile) -> ProfileLookup:
    return ProfileLookup(p, 1e9, 1e8)


def test_grid_points_are_reproduced():
    lk = lookup(measured(GRID))
    for (b, s), t in GRID.items():
        assert lk.op_time("block_fwd", SMALL, b, s) == pytest.approx(t)


@settings(max_examples=50, deadline=None)
@given(b=st.floats(1, 4), s=st.floats(16, 64))
def test_inside_the_grid_times_stay_between_the_corners(b, s):
    t = lookup(measured(GRID)).op_time("block_fwd", SMALL, b, s)
    assert min(GRID.values()) - 1e-12 <= t <= max(GRID.values()) + 1e-12


@settings(max_examples=30, deadline=None)
@given(k=st.floats(1.5, 64))
def test_beyond_the_grid_time_scales_with_flops(k):
    """Compute-bound here (1e11 FLOP/s against 1e12 B/s): k times the tokens past the edge
    costs the roofline ratio times the edge point."""
    lk = lookup(measured(GRID))
    t = lk.op_time("block_fwd", SMALL, 4 * k, 64)
    ratio = lk.roof_time("block_fwd", SMALL, 4 * k, 64) / lk.roof_time("block_fwd", SMALL, 4, 64)
    assert t == pytest.approx(GRID[(4, 64)] * ratio)
    f1 = op_flops_bytes("block_fwd", SMALL, 4, 64)[0]
    assert ratio == pytest.approx(op_flops_bytes("block_fwd", SMALL, 4 * k, 64)[0] / f1)


def test_a_measured_profile_wins_and_is_labelled():
    plan = load_plan(example_path("ppo-tiny-4cpu", "plan"))
    analytic = plan_report(plan)
    assert analytic.profile_kind == "analytic" and analytic.profile == "analytic:cpu"
    assert any("analytic" in w for w in analytic.warnings)
    prof = measured({k: v * 1000 for k, v in GRID.items()})
    mine = plan_report(plan, prof)
    assert mine.profile_kind == "measured" and mine.profile == "test"
    assert mine.iteration_time_s > analytic.iteration_time_s  # 1000x slower blocks


@pytest.mark.parametrize("device", ["h100", "h200", "a100", "a100-40gb", "l40s", "cpu"])
def test_analytic_profiles_of_the_device_table(device):
    p = analytic_profile(ClusterSpec(device=device))
    assert p.kind == "analytic" and p.id == f"analytic:{device}" and "analytic" in p.label
    assert p.roofline.flops_per_s == pytest.approx(
        ClusterSpec(device=device).peak_tflops * 1e12 * p.efficiency.compute
    )
    cm = CostModel(ClusterSpec(device=device, gpus_per_node=1), _tiny_exp())
    assert math.isfinite(cm.call_cost("actor_gen", _one()).time_s)


def _tiny_exp():
    from plans import load_experiment

    return load_experiment("ppo-tiny")


def _one():
    from plans import Allocation, DeviceMesh, ParallelStrategy

    return Allocation(mesh=DeviceMesh(n_gpus=1), strategy=ParallelStrategy())


def test_round_trip_and_schema(tmp_path):
    p = measured(GRID)
    save_profile(p, tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json") == p
    schema = profile_schema()
    assert schema["title"] == "Profile" and {"ops", "collectives", "roofline"} <= set(
        schema["properties"]
    )


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"format_version": 99}), "format_version"),
        ("BROKEN_FIELD", "ops.[0].time_s"),
    ],
)
def test_bad_profile_files_are_one_plan_error(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    if content == "BROKEN_FIELD":
        doc = measured(GRID).model_dump(mode="json")
        doc["ops"][0]["time_s"] = -1
        content = json.dumps(doc)
    if content is not None:
        path.write_text(content)
    with pytest.raises(PlanError) as e:
        load_profile(path)
    assert str(path) in str(e.value) and needle.replace(".[", "[") in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profiles_load(path):
    p = load_profile(path)
    assert p.kind == "measured" and p.ops
    ops = {t.op for t in p.ops}
    assert {"block_fwd", "block_fwd_bwd", "decode", "head_fwd", "embedding_fwd"} <= ops


def _shapes_profile(times: dict) -> Profile:
    base = measured({})
    ops = [
        OpTiming(op="decode", shape=sh, batch=b, seq_len=s, time_s=t)
        for sh, pts in times.items()
        for (b, s), t in pts.items()
    ]
    return base.model_copy(update={"ops": ops})


def _shape(hidden: int, name: str):
    spec = preset("small").model_copy(
        update={"name": name, "hidden_size": hidden, "intermediate_size": 4 * hidden}
    )
    return shard_shape(spec, 1, 4)


def test_a_shape_between_two_profiled_ones_is_overhead_plus_throughput():
    """Times of the form overhead + rate x roofline on two profiled shapes give exactly that
    line's time for a shape between them; proportional scaling of the nearest shape would
    have scaled the overhead too."""
    lo, mid, hi = _shape(128, "lo"), _shape(512, "mid"), _shape(768, "hi")
    lk = lookup(measured({}))
    over, rate = 2e-4, 1.7

    def law(sh, b, s):
        return over + rate * lk.roof_time("decode", sh, b, s)

    pts = [(1, 16), (1, 64), (8, 16), (8, 64)]
    prof = _shapes_profile({sh: {p: law(sh, *p) for p in pts} for sh in (lo, hi)})
    lk = lookup(prof)
    for b, s in pts:
        assert lk.op_time("decode", mid, b, s) == pytest.approx(law(mid, b, s))
    # Outside the profiled shapes: the nearest one, scaled by the roofline ratio.
    big = _shape(2048, "big")
    want = law(hi, 8, 64) * lk.roof_time("decode", big, 8, 64) / lk.roof_time("decode", hi, 8, 64)
    assert lk.op_time("decode", big, 8, 64) == pytest.approx(want)
    # A profiled shape answers for itself.
    assert lk.op_time("decode", lo, 1, 16) == pytest.approx(law(lo, 1, 16))


def test_decode_stack_rule():
    from estimator.shapes import DECODE_STACK_MAX, decode_stack

    tiny, small = shard_shape(preset("tiny"), 1, 4), shard_shape(preset("small"), 1, 4)
    seven, seventy = (shard_shape(preset(m), 1, 2) for m in ("llama2-7b", "llama2-70b"))
    assert decode_stack(tiny, None) == decode_stack(seven, None) == 1  # older profiles
    assert decode_stack(tiny, 2**30) == decode_stack(small, 2**30) == DECODE_STACK_MAX
    assert decode_stack(seven, 2**30) == 3  # 404 MB of bf16 weights per block
    assert decode_stack(seventy, 2**30) == 1  # one block is past a GiB


@pytest.mark.parametrize("stack_bytes", [None, 2**30])
def test_generation_takes_the_stacks_decode_out_of_the_step(stack_bytes):
    """generate_step is timed on a model of the decode stack: the per-token overhead is that
    step minus the stack's decode, whatever the stack's depth."""
    from estimator.shapes import decode_stack
    from plans import Allocation, DeviceMesh, ParallelStrategy, experiment_from_dict

    exp = experiment_from_dict(
        {
            "name": "gen",
            "algorithm": "grpo",
            "batch_size": 2,
            "group_size": 2,
            "prompt_len": 8,
            "gen_len": 9,
            "roles": {"actor": {"model": "small"}, "ref": {"model": "small"}, "reward": "small"},
        }
    )
    full = shard_shape(exp.model("actor"), 1, 4)
    decode, over = 2e-3, 5e-3
    blocks = decode_stack(full, stack_bytes)
    pts = [(b, c) for b in (1, 8) for c in (8, 64)]
    ops = [OpTiming(op="decode", shape=full, batch=b, seq_len=c, time_s=decode) for b, c in pts]
    ops += [
        OpTiming(op="generate_step", shape=full, batch=b, seq_len=c, time_s=blocks * decode + over)
        for b, c in pts
    ]
    prof = measured({}).model_copy(update={"ops": ops, "decode_stack_bytes": stack_bytes})
    cluster = ClusterSpec(nodes=1, gpus_per_node=1, device="cpu")
    alloc = Allocation(mesh=DeviceMesh(n_gpus=1), strategy=ParallelStrategy())
    got = CostModel(cluster, exp, prof).call_cost("actor_gen", alloc).breakdown["compute"]
    layers = exp.model("actor").num_hidden_layers
    assert got == pytest.approx((exp.gen_len - 1) * (layers * decode + over))
