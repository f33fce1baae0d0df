"""rlhf-run as a user runs it: a finished run prints its summary; a killed worker stops the
run, naming the lost rank."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plans import example_path

pytestmark = pytest.mark.distributed
EXE = shutil.which("rlhf-run") or f"{sys.executable} -m cli.run_app"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return sorted(out)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
def test_killed_worker_stops_the_run(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            *EXE.split(),
            str(example_path("ppo-tiny-4cpu", "plan")),
            "--iterations",
            "500",
            "--out",
            str(out),
            "--timeout",
            "20",
            "--checkpoint-every",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        workers = [
            p for p in _children(proc.pid) if "spawn" in Path(f"/proc/{p}/cmdline").read_text()
        ]
        assert len(workers) >= 4, workers
        victim = workers[2]  # spawned in rank order
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank 2: killed by signal 9" in stderr, stderr
    assert "lost contact with rank(s) 2" in stderr, stderr
    assert "Traceback" not in stderr, stderr


def test_a_finished_run_prints_its_summary_and_exits_0(tmp_path):
    out = tmp_path / "run"
    cmd = [*EXE.split(), str(example_path("ppo-tiny-4cpu", "plan")), "--iterations", "2"]
    done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "last iteration:" in done.stdout and "reward" in done.stdout
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
