"""benchmarks.e2e_analysis and e2e_drift: which iterations count, how two rounds of runs are
compared, and which plans two e2e runs share."""

from __future__ import annotations

import json

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


def _folder(root, plans: dict[str, dict], calls: dict[str, float]):
    """An e2e results folder: each label's plan.json and one run of 3 iterations in which
    every call of the plan takes calls[label] seconds."""
    from plans.io import example_path

    root.mkdir()
    entries = []
    for label, changes in plans.items():
        doc = json.loads(example_path("ppo-tiny-4cpu", "plan").read_text())
        for name, strategy in changes.items():
            doc["allocations"][name]["strategy"].update(strategy)
        (root / label).mkdir()
        (root / label / "plan.json").write_text(json.dumps(doc))
        c = calls[label]
        rows = [{"iteration": i, "iteration_s": 4 * c, "realloc_s": 0.0, "peak_memory_mib": 1.0,
                 "calls": {n: dict(CALL, end=c, compute_s=c) for n in doc["allocations"]}}
                for i in range(3)]  # fmt: skip
        entries.append({"label": label, "method": "manual",
                        "runs": [{"rows": rows, "shares": [0.0] * 3, "round": 0}]})  # fmt: skip
    (root / "results.json").write_text(
        json.dumps({"args": {"foreign_max": 0.05}, "entries": entries})
    )
    return root


def test_drift_pairs_plans_with_the_same_layout_only(tmp_path):
    from benchmarks.e2e_drift import ratios

    same, moved = {}, {"actor_gen": {"dp": 1, "tp": 2}}
    a = _folder(tmp_path / "a", {"p": same, "q": same}, {"p": 1.0, "q": 1.0})
    b = _folder(tmp_path / "b", {"p": same, "q": moved}, {"p": 1.2, "q": 5.0})
    r = ratios(a, b)
    assert r["plans"] == ["p"]  # q's actor_gen changed layout: not the same plan
    assert r["iterations"] == [pytest.approx(1.2)]
    assert r["calls"] and all(x == pytest.approx(1.2) for x in r["calls"])
