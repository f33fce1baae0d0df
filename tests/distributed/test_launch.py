"""Launching workers: a clean run exits 0; a killed worker makes the others stop, naming it."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from executor.runtime.launch import EXIT_ERROR, launch

pytestmark = pytest.mark.distributed


def _sum_ranks(env, task):
    t = torch.tensor([float(env.rank)])
    dist.all_reduce(t)
    assert t.item() == sum(range(env.world))


def _one_dies(env, victim):
    for step in range(200):
        t = torch.ones(1)
        dist.all_reduce(t)
        if env.rank == victim and step == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.02)


def test_clean_run():
    assert launch(_sum_ranks, None, world=2, timeout_s=20) == 0


def test_killed_worker_is_named(capfd):
    code = launch(_one_dies, 2, world=3, timeout_s=10)
    err = capfd.readouterr().err
    assert code == EXIT_ERROR
    for r in (0, 1):
        assert f"rank {r}: lost contact with rank(s) 2" in err, err
    assert "rank 2: killed by signal 9" in err
