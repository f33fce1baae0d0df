"""Fault injection on rlhf-run's process lifecycle and run folder: signals to the launcher, a
killed launcher, a stopped worker, write errors, a non-finite loss, run folders that hold a
run, are locked, or hold damaged files. Every case checks the exit code, one clean message (no
traceback), that no process of the run is left (its session, after a bounded wait) nor
anything in its TMPDIR, that the last checkpoint is intact, and for resumes that the result
equals an uninterrupted run bit for bit. Two workers, a batch of 8, short timeouts."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from executor.runtime import checkpoints
from executor.runtime.launch import EXIT_ERROR, launch
from executor.runtime.worker import RunTask
from tests.distributed.fault_helpers import (
    Run,
    messages,
    numbers,
    one_rank_stuck,
    rows,
    run_with_full_disk,
    shared_once,
    small_plan,
    snapshot,
)

pytestmark = [
    pytest.mark.faults,
    pytest.mark.distributed,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc"),
]
ITERATIONS = 5  # the uninterrupted run; interrupted runs stop (well) before it
LONG = "200"  # iterations of a run that is stopped from outside
TIMEOUT = "30"


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    return small_plan(tmp_path_factory.mktemp("plan") / "plan.json")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, plan) -> Path:
    """The uninterrupted run (a checkpoint every iteration: the last two are kept), made once
    for all xdist workers of this session; tests copy it before changing anything."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, shared by its workers
    return shared_once(base, "faults-reference", lambda f: _reference(f, plan)) / "run"


def _reference(folder: Path, plan: Path) -> None:
    out = folder / "run"
    run = Run(folder, plan, "--iterations", str(ITERATIONS), "--out", str(out),
              "--checkpoint-every", "1", "--timeout", TIMEOUT)  # fmt: skip
    code, _, err = run.finish()
    assert code == 0, err


def _copy(reference: Path, tmp: Path) -> Path:
    out = tmp / "run"
    shutil.copytree(reference, out)
    return out


def _long_run(tmp: Path, plan: Path, out: Path, *args: str, timeout: str = TIMEOUT) -> Run:
    """A run that goes on until stopped, once its first checkpoint is written."""
    run = Run(tmp, plan, "--iterations", LONG, "--out", str(out), "--checkpoint-every", "1",
              "--timeout", timeout, *args)  # fmt: skip
    run.wait_for(lambda: checkpoints.latest(out, 2) is not None)
    run.wait_for(lambda: len(run.workers()) == 2)
    return run


def _clean(run: Run, err: str) -> None:
    assert "Traceback" not in err, err
    assert run.left_behind() == []


def _resume_matches(out: Path, reference: Path, tmp: Path, plan: Path) -> str:
    """Resume `out` to ITERATIONS: the metrics rows and the final weights equal the
    uninterrupted run's bit for bit. Returns the resume's stderr."""
    run = Run(tmp, plan, "--iterations", str(ITERATIONS), "--out", str(out), "--resume",
              "--checkpoint-every", "1", "--timeout", TIMEOUT)  # fmt: skip
    code, _, err = run.finish()
    assert code == 0, err
    _clean(run, err)
    assert numbers(rows(out)) == numbers(rows(reference))
    for role in ("actor", "critic"):
        a = load_file(str(out / "final" / role / "model.safetensors"))
        b = load_file(str(reference / "final" / role / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role
    return err


def _interrupted(err: str, out: Path) -> int:
    """The one line of an interrupted run; returns the checkpoint's iteration."""
    (line,) = messages(err)
    last = checkpoints.latest(out, 2)
    assert last is not None and checkpoints.damage(last, 2) is None
    assert line.startswith("rlhf-run: interrupted at iteration ")
    assert line.endswith(f"; last checkpoint: {last}"), line
    done = int(last.name.removeprefix("iter-"))
    assert done < ITERATIONS, "the run got too far before the signal to compare it"
    return done


# ---- signals ------------------------------------------------------------------------------------
def test_sigint_to_the_launcher_stops_the_run_and_a_resume_matches(tmp_path, plan, reference):
    out = tmp_path / "run"
    run = _long_run(tmp_path, plan, out)
    os.kill(run.pid, signal.SIGINT)
    code, _, err = run.finish()
    assert code == 130
    _clean(run, err)
    _interrupted(err, out)
    assert not list((out / "checkpoints").glob(".*.tmp"))
    _resume_matches(out, reference, tmp_path, plan)


def test_sigterm_to_the_launcher_stops_the_workers(tmp_path, plan):
    out = tmp_path / "run"
    run = _long_run(tmp_path, plan, out)
    assert (out / ".lock").read_text().strip() == str(run.pid)  # held for the run's life
    os.kill(run.pid, signal.SIGTERM)
    code, _, err = run.finish()
    assert code == 143
    _clean(run, err)
    _interrupted(err, out)


def test_ctrl_c_twice_to_the_process_group_says_one_line(tmp_path, plan):
    out = tmp_path / "run"
    run = _long_run(tmp_path, plan, out)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    os.killpg(run.pid, signal.SIGINT)
    code, _, err = run.finish()
    assert code == 130
    _clean(run, err)
    _interrupted(err, out)


def test_killed_launcher_takes_its_workers_along(tmp_path, plan, reference):
    """SIGKILL cannot be handled: the workers notice (PDEATHSIG, watchdog) and stop writing;
    the lock goes with the launcher, and a resume (repairing a metrics line cut short, as a
    kill in the middle of a write leaves it) matches the uninterrupted run."""
    out = tmp_path / "run"
    run = _long_run(tmp_path, plan, out)
    os.kill(run.pid, signal.SIGKILL)
    code, _, err = run.finish()
    assert code == -signal.SIGKILL
    _clean(run, err)  # the workers are gone (bounded wait) ...
    before = snapshot(out)
    time.sleep(1.0)
    assert snapshot(out) == before  # ... and wrote nothing more
    last = checkpoints.latest(out, 2)
    assert last is not None and checkpoints.damage(last, 2) is None
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 7, "iteration_s": 0.')
    err = _resume_matches(out, reference, tmp_path, plan)
    assert "metrics.jsonl: dropped a last line cut short" in err


def test_a_stopped_worker_is_named_within_the_timeout(tmp_path, plan):
    out = tmp_path / "run"
    run = _long_run(tmp_path, plan, out, timeout="10")
    os.kill(run.workers()[1], signal.SIGSTOP)
    code, _, err = run.finish()
    assert code == EXIT_ERROR
    _clean(run, err)
    assert messages(err) == [
        "rlhf-run: rank 1 stopped responding (no heartbeat for 10 s); stopping the run",
        "rank 0: lost contact with rank(s) 1; stopping",
    ], err
    assert checkpoints.damage(checkpoints.latest(out, 2), 2) is None


# ---- run folders ---------------------------------------------------------------------------------
def test_a_fresh_run_into_a_folder_with_a_run_is_refused(tmp_path, plan, reference):
    out = _copy(reference, tmp_path)
    before = snapshot(out)
    run = Run(tmp_path, plan, "--iterations", "1", "--out", str(out))
    code, _, err = run.finish()
    assert code == 1
    _clean(run, err)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(out) == before


def test_overwrite_replaces_the_old_run(tmp_path, plan, reference):
    out = _copy(reference, tmp_path)
    (out / "notes.txt").write_text("mine")
    run = Run(tmp_path, plan, "--iterations", "1", "--out", str(out), "--overwrite",
              "--checkpoint-every", "0", "--timeout", TIMEOUT)  # fmt: skip
    code, _, err = run.finish()
    assert code == 0, err
    _clean(run, err)
    assert numbers(rows(out)) == numbers(rows(reference))[:1]
    assert not (out / "checkpoints").exists()  # the old run's, cleared
    assert (out / "notes.txt").read_text() == "mine"  # not the run's: left alone


def test_a_locked_folder_is_refused_naming_the_holder(tmp_path, plan):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        run = Run(tmp_path, plan, "--iterations", "1", "--out", str(out))
        code, _, err = run.finish()
    assert code == 1
    _clean(run, err)
    assert "in use by another rlhf-run (pid 4242)" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_refused_resume_writes_nothing(tmp_path, plan):
    out = tmp_path / "run"
    out.mkdir()
    (out / "plan.json").write_text("the old plan")
    run = Run(tmp_path, plan, "--iterations", "1", "--out", str(out), "--resume")
    code, _, err = run.finish()
    assert code == 1
    _clean(run, err)
    assert "no complete checkpoint" in err
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]
    assert (out / "plan.json").read_text() == "the old plan"


def test_a_resume_with_other_data_is_refused(tmp_path, plan, reference):
    out = _copy(reference, tmp_path)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"prompt": "p{i}"}}\n' for i in range(8)))
    before = snapshot(out)
    run = Run(tmp_path, plan, "--iterations", "6", "--out", str(out), "--resume",
              "--data", str(data))  # fmt: skip
    code, _, err = run.finish()
    assert code == 1
    _clean(run, err)
    assert "--data" in err and "the built-in task" in err and str(data) in err
    assert snapshot(out) == before


def test_a_damaged_newest_checkpoint_is_skipped(tmp_path, plan, reference):
    out = _copy(reference, tmp_path)
    newest = checkpoints.latest(out, 2)
    victim = newest / "rank00001.pt"
    os.truncate(victim, victim.stat().st_size // 2)
    err = _resume_matches(out, reference, tmp_path, plan)
    assert f"skipped checkpoint {newest}: rank00001.pt is damaged" in err


def test_out_that_is_a_file_or_under_one_is_refused(tmp_path, plan):
    """Found before any worker starts (a read-only folder is refused the same way, when the
    lock file cannot be created: not testable as root, who may write anywhere)."""
    out = tmp_path / "run"
    out.write_text("not a folder")
    for target, words in ((out, "is a file"), (out / "sub", "cannot be created")):
        run = Run(tmp_path, plan, "--iterations", "1", "--out", str(target))
        code, _, err = run.finish()
        assert code == 1
        _clean(run, err)
        (line,) = messages(err)
        assert "--out" in line and words in line, line
    assert out.read_text() == "not a folder"


# ---- errors inside workers -----------------------------------------------------------------------
def test_a_write_error_is_reported_once_by_the_rank_that_hit_it(tmp_path, plan):
    """Files may grow to 1 MiB (RLIMIT_FSIZE): a rank's checkpoint file is larger."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))

    out = tmp_path / "run"
    run = Run(tmp_path, plan, "--iterations", "3", "--out", str(out), "--checkpoint-every", "1",
              "--timeout", TIMEOUT, limits=limit)  # fmt: skip
    code, _, err = run.finish()
    assert code == EXIT_ERROR
    _clean(run, err)
    # The two ranks' lines race: the one that hit the error is the one saying "error".
    said = messages(err)
    assert len(said) == 2, err
    first, second = sorted(said, key=lambda line: "error:" not in line)
    failed = first.split(":")[0].removeprefix("rank ")
    assert first.startswith(f"rank {failed}: error: cannot write {out}/checkpoints/")
    assert first.endswith(f"rank{int(failed):05d}.pt.part: File too large")
    assert second == f"rank {1 - int(failed)}: stopped because rank {failed} failed"
    assert list((out / "checkpoints").iterdir()) == []  # the half-written one removed


def test_a_full_disk_names_the_file_and_the_os_message(tmp_path, plan, capfd):
    before = set(_children())
    out = tmp_path / "run"
    code = launch(run_with_full_disk, RunTask(str(plan), 2, str(out)), world=2, timeout_s=30)
    err = capfd.readouterr().err
    assert code == EXIT_ERROR
    assert "Traceback" not in err
    assert messages(err) == [
        f"rank 0: error: cannot write {out}/metrics.jsonl: No space left on device",
        "rank 1: stopped because rank 0 failed",
    ], err
    assert set(_children()) <= before


def test_a_stuck_worker_is_named_by_where_it_is(capfd):
    """Rank 1's main thread stops taking part while its heartbeat goes on: rank 0's collective
    times out, and it names rank 1 by where that rank's main thread is."""
    before = set(_children())
    code = launch(one_rank_stuck, None, world=2, timeout_s=5)
    err = capfd.readouterr().err
    assert code == EXIT_ERROR
    assert "Traceback" not in err
    first, second = messages(err)
    assert first.startswith("rank 0: waited 5 s for rank(s) that did not answer (rank 1 is at ")
    assert "fault_helpers.py" in first and "in one_rank_stuck" in first
    assert second == "rank 1: stopped: the other ranks gave up waiting for this one"
    assert set(_children()) <= before


def _children() -> list[int]:
    from tests.distributed.fault_helpers import descendants

    return [p for p in descendants(os.getpid()) if "resource_tracker" not in _cmd(p)]


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_a_non_finite_loss_stops_the_run_keeping_the_last_checkpoint(tmp_path):
    plan = small_plan(tmp_path / "plan.json", "tests.distributed.fault_helpers:nan_later")
    out = tmp_path / "run"
    run = Run(tmp_path, plan, "--iterations", "5", "--out", str(out), "--checkpoint-every", "1",
              "--timeout", TIMEOUT)  # fmt: skip
    code, _, err = run.finish()
    assert code == EXIT_ERROR
    _clean(run, err)
    last = out / "checkpoints" / "iter-000002"
    # Both ranks of the mesh see the non-finite loss; whichever marks it first reports it, the
    # other says it stopped because of that rank (the two lines may come in either order).
    lines = messages(err)
    assert len(lines) == 2, lines
    (first,) = [m for m in lines if ": error: " in m]
    (second,) = [m for m in lines if m is not first]
    assert (
        first.startswith("rank ")
        and ": error: actor_train at iteration 2: the loss is not finite" in first
    )
    assert first.endswith(f"stopped (last checkpoint: {last})"), first
    failed = first.split(":")[0].removeprefix("rank ")
    assert second.endswith(f"stopped because rank {failed} failed"), second
    assert checkpoints.latest(out, 2) == last and checkpoints.damage(last, 2) is None
    assert [r["iteration"] for r in rows(out)] == [0, 1]
