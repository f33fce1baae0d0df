"""The tracker follower: every complete row of metrics.jsonl once, in order, nothing from
before a resume, a failing tracker dropped without stopping the others."""

from __future__ import annotations

import importlib.util

import pytest

from executor.runtime.trackers import MetricsFollower, check_available, scalars
from plans import PlanError
from plans.metrics import MetricsRow

CALL = {"start": 1.0, "end": 2.0, "compute_s": 1.0, "wait_s": 0.1, "data_s": 0.2, "realloc_s": 0.0}


def row(it: int) -> MetricsRow:
    return MetricsRow(
        iteration=it,
        iteration_s=1.5,
        realloc_s=0.0,
        peak_memory_mib=10.0,
        calls={"actor_gen": CALL},
        reward_mean=0.1 * it,
        kl_mean=None,
    )


class Sink:
    def __init__(self, fail: bool = False):
        self.rows, self.closed, self.fail = [], False, fail

    def log(self, r: MetricsRow) -> None:
        if self.fail:
            raise OSError("disk full")
        self.rows.append(r.iteration)

    def close(self) -> None:
        self.closed = True


def test_scalars_are_every_number_of_the_row():
    assert scalars(row(3)) == {
        "iteration_s": 1.5,
        "realloc_s": 0.0,
        "peak_memory_mib": 10.0,
        "reward_mean": pytest.approx(0.3),
        "calls/actor_gen/compute_s": 1.0,
        "calls/actor_gen/wait_s": 0.1,
        "calls/actor_gen/data_s": 0.2,
        "calls/actor_gen/realloc_s": 0.0,
    }  # kl_mean is None: left out; start/end are wall-clock stamps, not metrics


def test_follower_logs_complete_rows_once_from_the_resume_point(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text(row(0).to_line() + "\n" + row(1).to_line() + "\n")
    good, bad = Sink(), Sink(fail=True)
    f = MetricsFollower(path, [good, bad], start=1)
    f.poll()
    line = row(2).to_line()
    with open(path, "a") as out:
        out.write(line[:20])  # rank 0 mid-write: not a row yet
    f.poll()
    assert good.rows == [1]
    with open(path, "a") as out:
        out.write(line[20:] + "\n")
    f.finish()
    assert good.rows == [1, 2] and good.closed
    assert "tracker stopped" in capsys.readouterr().err  # the failing one, dropped once
    assert f.trackers == [good]


def test_missing_extra_is_one_line_naming_the_option(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(PlanError, match=r"--tracker: wandb: .*pip install '\.\[wandb\]'"):
        check_available(["tensorboard", "wandb"])
