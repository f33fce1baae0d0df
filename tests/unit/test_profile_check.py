"""`rlhf-plan profile --check`: re-timing a profile's own points on this machine."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.plan_app import app
from estimator.profile import OpTiming, Profile, save_profile
from estimator.shapes import shard_shape
from executor.profiling.check import CheckRow, check_profile, verdict
from plans import preset
from tests.profile_util import measured_profile

TINY = shard_shape(preset("tiny"), 1, 4)


def _profile(seconds: float) -> Profile:
    """A CPU profile claiming every op of `tiny` takes `seconds` (plus one op on a shard no
    preset describes, which cannot be rebuilt and is left out)."""
    custom = TINY.model_copy(update={"model": "custom"})
    ops = [
        OpTiming(op=op, shape=TINY, batch=2, seq_len=16, time_s=seconds)
        for op in ("block_fwd", "block_fwd_bwd", "decode", "head_fwd", "embedding_fwd")
    ] + [OpTiming(op="block_fwd", shape=custom, batch=2, seq_len=16, time_s=seconds)]
    return measured_profile(
        "check-test", 1e11, 1e9, device_name="some other CPU", threads=1, ops=ops
    )


def test_a_profile_a_thousand_times_too_slow_is_called_off():
    rows = check_profile(_profile(10.0))
    assert {r.op for r in rows} == {"block_fwd", "block_fwd_bwd", "decode", "head_fwd"}
    assert all(r.model == "tiny" and (r.batch, r.seq_len) == (2, 16) for r in rows)
    assert all(r.ratio < 0.01 for r in rows)
    ratio, line = verdict(rows)
    assert ratio < 0.01 and "faster" in line and "rlhf-plan profile" in line


def test_verdict_within_tolerance_holds():
    rows = [CheckRow("block_fwd", "tiny", 1, 2, 16, 1.0, x) for x in (0.95, 1.0, 1.1)]
    ratio, line = verdict(rows)
    assert ratio == 1.0 and "holds" in line
    assert "slower" in verdict([CheckRow("decode", "tiny", 1, 2, 16, 1.0, 1.5)])[1]


def test_cli_check_json(tmp_path):
    path = tmp_path / "p.json"
    save_profile(_profile(10.0), path)
    res = CliRunner().invoke(app, ["profile", "--check", str(path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["profile_device"] == "some other CPU" and doc["same_device"] is False
    assert len(doc["points"]) == 4 and doc["median_ratio"] < 0.01


def testothers_share_of_the_cpus_during_collective_timing():
    """What the collectives profiler warns about: the machine's CPU time since a moment, less
    the timing ranks' own, over all cores and the wall time."""
    import os
    import time

    from executor.profiling.collectives import machine_busy_s, others_share

    ncpu = os.cpu_count() or 1
    busy = machine_busy_s()
    assert busy is not None
    wall0 = time.monotonic() - 1.0
    # The machine ran half its cores for that second beyond what /proc says now...
    half = others_share(busy - 0.5 * ncpu, wall0, 0.0)
    assert half is not None and 0.45 <= half <= 0.65
    # ... and all of it was the ranks' own work: nobody else.
    assert others_share(busy - 0.5 * ncpu, wall0, 0.5 * ncpu) <= 0.15
