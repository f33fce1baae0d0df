"""Helpers of the fault-injection tests: rlhf-run started as a user starts it (its own session,
its own TMPDIR), the processes it leaves behind, and worker functions with a fault built in
(importable by spawned workers: a reward rule that turns NaN part-way, a full disk)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from executor.data.sources import digit_reward
from plans import example_path, load_plan, plan_from_dict, save_plan

ROOT = Path(__file__).resolve().parents[2]
BANNER = "workers,"  # rlhf-run's first line: "rlhf-run: 2 workers, N iterations -> ..."


def small_plan(path: Path, reward: str | None = None) -> Path:
    """ppo-tiny on two CPU workers (dp 2 everywhere) with a batch of 8: starts and iterates
    fast; the same numbers whenever it runs (seeded)."""
    doc = load_plan(example_path("ppo-tiny-4cpu", "plan")).model_dump(mode="json")
    doc["cluster"]["gpus_per_node"] = 2
    doc["experiment"].update(batch_size=8, mini_batches=2)
    if reward:
        doc["experiment"]["reward_function"] = reward
    mesh = {"node_start": 0, "n_nodes": 1, "gpu_start": 0, "n_gpus": 2}
    strategy = {"dp": 2, "tp": 1, "pp": 1, "micro_batches": 1, "zero1": False}
    for a in doc["allocations"].values():
        a.update(mesh=mesh, strategy=strategy)
    doc.pop("estimate", None)
    save_plan(plan_from_dict(doc), path)
    return path


def _child_setup(limits) -> None:
    # A suite started in the background of a non-interactive shell inherits SIGINT ignored,
    # and an ignored signal stays ignored across exec: the run would never see the tests'
    # Ctrl-C. A terminal's rlhf-run starts with the default handler; so does this one.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if limits is not None:
        limits()


class Run:
    """`rlhf-run PLAN ARGS` in a session of its own, with TMPDIR inside the test's folder."""

    def __init__(self, tmp: Path, plan: Path, *args: str, limits=None):
        self.tmpdir = tmp / "tmpdir"
        self.tmpdir.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(self.tmpdir))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.run_app", str(plan), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=partial(_child_setup, limits),
        )
        self.pid = self.proc.pid

    def wait_for(self, what, limit: float = 120.0) -> None:
        """Until `what()` holds (the run must still be going)."""
        deadline = time.monotonic() + limit
        while not what():
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, f"not reached within {limit} s"
            time.sleep(0.05)

    def workers(self) -> list[int]:
        """The worker processes, in rank order (spawned in that order)."""
        kids = [p for p in descendants(self.pid) if "spawn_main" in _cmdline(p)]
        return sorted(kids, key=_start_time)

    def finish(self, limit: float = 150.0) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, 9)
            out, err = self.proc.communicate()
            raise AssertionError(f"rlhf-run did not end within {limit} s\n{err}") from None
        return self.proc.returncode, out, err

    def left_behind(self, limit: float = 30.0) -> list[str]:
        """Live processes of the run's session after it ended (waits up to `limit` for them to
        go), and what it left in its TMPDIR (torch's own compile cache aside)."""
        deadline = time.monotonic() + limit
        while (alive := in_session(self.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in alive:  # do not leave them to the next test either
            _kill(pid)
        tmp = [p.name for p in self.tmpdir.iterdir() if not p.name.startswith("torchinductor")]
        return [f"pid {p}: {_cmdline(p)[:80]}" for p in alive] + [f"TMPDIR/{n}" for n in tmp]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, session, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Live (not zombie) descendants of `pid`."""
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True) if _alive(p.pid)]
    except ImportError:
        pass
    except Exception:  # gone already
        return []
    kids: dict[int, list[int]] = {}
    for p in _all_pids():
        st = _stat(p)
        if st is not None and st[0] != "Z":
            kids.setdefault(int(st[1]), []).append(p)
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def in_session(sid: int) -> list[int]:
    """Live processes of session `sid` (a launcher's workers stay in it when orphaned)."""
    return [p for p in _all_pids() if (st := _stat(p)) and st[0] != "Z" and int(st[3]) == sid]


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _start_time(pid: int) -> int:
    st = _stat(pid)
    return int(st[19]) if st else 0


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def messages(err: str) -> list[str]:
    """rlhf-run's stderr lines but its opening banner."""
    return [line for line in err.splitlines() if line.strip() and BANNER not in line]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


NUMBERS = ("reward_mean", "kl_mean", "actor_loss", "critic_loss", "clip_frac")


def numbers(rs: list[dict]) -> list[dict]:
    return [{"iteration": r["iteration"], **{k: r[k] for k in NUMBERS}} for r in rs]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and mtime: a folder nobody wrote to is equal."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def shared_once(base: Path, name: str, make) -> Path:
    """`make(folder)` once for all test processes (pytest-xdist workers share `base`)."""
    folder = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".done").write_text("")
    return folder


# ---- faults handed to the workers --------------------------------------------------------------
NAN_AFTER = 8
"""Calls (per worker process) before the rule answers NaN: with a batch of 8 split over two
dp ranks, each rank scores 4 samples an iteration, so iteration 2 is the first with NaN."""

_calls = 0


def nan_later(prompt: str, response: str) -> float:
    global _calls
    _calls += 1
    return float("nan") if _calls > NAN_AFTER else digit_reward(prompt, response)


def run_with_full_disk(env, task) -> None:
    """rlhf-run's worker on a disk that is full when metrics.jsonl is appended to (the write
    fails as a full disk's does: an OSError without a file name)."""
    from executor.runtime import metrics
    from executor.runtime.worker import run

    def full(path, row) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    metrics.append_metrics = full
    run(env, task)


def one_rank_stuck(env, task) -> None:
    """Rank 1 stops taking part (its main thread sleeps; its heartbeat goes on) after a few
    collectives; the others wait for it in theirs."""
    import torch
    import torch.distributed as dist

    for step in range(100):
        if env.rank == 1 and step == 3:
            time.sleep(600)
        t = torch.ones(1)
        dist.all_reduce(t)
