"""Plan diff: per-call changes and reallocations."""

from __future__ import annotations

from planner.diff import diff_plans, reallocations
from plans import ParallelStrategy, example_path, load_plan


def _plan():
    return load_plan(example_path("ppo-tiny-4cpu", "plan"))


def test_reallocations_of_example():
    # The actor generates on devices 0-1 and trains on 0-3: it moves both ways every iteration.
    assert reallocations(_plan()) >= {
        ("actor", "actor_gen", "actor_train"),
        ("actor", "actor_train", "actor_gen"),
    }
    assert not any(r == "ref" for r, _, _ in reallocations(_plan()))


def test_diff_with_itself_is_empty():
    p = _plan()
    est = {"actor_gen": 1.0, "iteration": 3.0}
    d = diff_plans(p, p, est, est)
    assert all(not c["changes"] for c in d["calls"])
    assert d["reallocations_added"] == d["reallocations_removed"] == []
    assert d["iteration_delta_s"] == 0.0


def test_diff_reports_changes_and_moves():
    a = _plan()
    gen = a.allocations["actor_gen"]
    train = a.allocations["actor_train"]
    b = a.model_copy(
        update={
            "allocations": {
                **a.allocations,
                "actor_gen": train.model_copy(
                    update={"strategy": ParallelStrategy(dp=2, tp=2, micro_batches=1)}
                ),
            }
        }
    )
    d = diff_plans(a, b, {"actor_gen": 2.0, "iteration": 5.0}, {"actor_gen": 1.5, "iteration": 4.0})
    row = next(c for c in d["calls"] if c["call"] == "actor_gen")
    assert any(ch.startswith("mesh") for ch in row["changes"]) and "tp 1 -> 2" in row["changes"]
    assert row["delta_s"] == -0.5 and d["iteration_delta_s"] == -1.0
    # Generation now shares the training layout: both actor moves disappear.
    removed = {(m["role"], m["from"], m["to"]) for m in d["reallocations_removed"]}
    assert ("actor", "actor_gen", "actor_train") in removed
    assert gen != b.allocations["actor_gen"]


def test_diff_names_a_change_of_staleness():
    a = _plan()
    b = a.model_copy(update={"max_staleness": 1})
    d = diff_plans(a, b, {"iteration": 3.0}, {"iteration": 2.5})
    assert (d["max_staleness_a"], d["max_staleness_b"]) == (0, 1)
    assert diff_plans(a, a, {}, {})["max_staleness_b"] == 0
