"""plans.metrics: one schema for a metrics.jsonl row, written and read the same way."""

from __future__ import annotations

import json
import math

import pytest

from plans import PlanError
from plans.metrics import CallMetrics, MetricsRow, append_metrics, read_metrics


def _row(it: int, **stats) -> MetricsRow:
    call = CallMetrics(
        start=1.0, end=2.0, compute_s=1.0, wait_s=0.0, data_s=0.1, realloc_s=0.0, estimate_s=None
    )
    return MetricsRow(
        iteration=it,
        iteration_s=2.0,
        realloc_s=0.0,
        peak_memory_mib=10.0,
        calls={"actor_gen": call},
        **stats,
    )


def test_rows_round_trip_and_stats_are_named_fields(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, _row(0, reward_mean=0.5, kl_mean=0.01))
    append_metrics(path, _row(1, reward_mean=0.7))
    rows = read_metrics(path)
    assert [r.iteration for r in rows] == [0, 1]
    assert rows[0].stat("reward_mean") == 0.5 and rows[1].stat("kl_mean") is None
    assert rows[0].stat("iteration_s") == 2.0  # fixed fields by name too
    assert rows[0].calls["actor_gen"].compute_s == 1.0


def test_non_finite_numbers_are_written_as_null(tmp_path):
    line = _row(0, reward_mean=math.nan, kl_mean=math.inf).to_line()
    doc = json.loads(line)  # strict readers reject NaN/Infinity; this one would too
    assert doc["reward_mean"] is None and doc["kl_mean"] is None
    assert "NaN" not in line and "Infinity" not in line


def test_a_bad_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, _row(0))
    with open(path, "a") as f:
        f.write('{"iteration": 1, "iteration_s": 1.0}\n')
    with pytest.raises(PlanError, match="line 2"):
        read_metrics(path)


def test_a_statistic_must_be_a_number():
    with pytest.raises(ValueError, match="reward_mean"):
        _row(0, reward_mean="high")
