"""benchmarks.e2e_analysis: which iterations count, and how two rounds of runs are compared."""

from __future__ import annotations

import pytest

from benchmarks.e2e_analysis import Entry, clean_rows, repeatability

CALL = {"start": 0.0, "end": 0.0, "compute_s": 0.0, "wait_s": 0.0, "data_s": 0.0, "realloc_s": 0.0}


def _run(rnd: int, iteration_s: list[float], call_s: list[float], shares=None) -> dict:
    rows = [
        {
            "iteration": i,
            "iteration_s": it,
            "realloc_s": 0.0,
            "peak_memory_mib": 1.0,
            "calls": {"gen": dict(CALL, end=c, compute_s=c)},
        }
        for i, (it, c) in enumerate(zip(iteration_s, call_s, strict=True))
    ]
    return {"rows": rows, "shares": shares or [0.0] * len(rows), "round": rnd}


def test_clean_rows_keeps_the_asked_rounds_and_drops_warm_up_and_loaded_iterations():
    e = Entry("p", "manual", {}, [
        _run(0, [9.0, 1.0, 1.1], [9.0, 0.5, 0.6], shares=[0.0, 0.0, 0.5]),
        _run(1, [9.0, 2.0, 2.1], [9.0, 0.7, 0.8]),
    ])  # fmt: skip
    rows, clean = clean_rows(e, 0.05, rounds=(0,))
    assert clean and [r.iteration_s for r in rows] == [1.0]
    rows, _ = clean_rows(e, 0.05)
    assert sorted(r.iteration_s for r in rows) == [1.0, 2.0, 2.1]


def test_repeatability_compares_round_one_with_round_two():
    # Plan a is faster than b in round 1 and slower in round 2: the rounds disagree.
    a = Entry("a", "manual", {}, [_run(0, [5, 1.0, 1.0], [5, 1.0, 1.0]),
                                  _run(1, [5, 3.0, 3.0], [5, 1.2, 1.2])])  # fmt: skip
    b = Entry("b", "manual", {}, [_run(0, [5, 2.0, 2.0], [5, 2.0, 2.0]),
                                  _run(1, [5, 2.5, 2.5], [5, 1.5, 1.5])])  # fmt: skip
    rep = repeatability([a, b], ("gen",), 0.05)
    assert rep["spearman"] == pytest.approx(-1.0)
    # |1.0/1.2 - 1| and |2.0/1.5 - 1|: median of 1/6 and 1/3
    assert rep["calls"] == pytest.approx((1 / 6 + 1 / 3) / 2)


def test_no_repeatability_from_one_round():
    a = Entry("a", "manual", {}, [_run(0, [5, 1.0], [5, 1.0])])
    b = Entry("b", "manual", {}, [_run(0, [5, 2.0], [5, 2.0])])
    assert repeatability([a, b], ("gen",), 0.05) is None
