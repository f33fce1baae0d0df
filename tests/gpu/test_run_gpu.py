"""rlhf-run on GPUs as a user runs it: a plan searched for this machine's GPU runs GRPO on one
GPU and, where there are two, with the actor reallocated between two GPUs over NCCL; the same
plan for CPU workers gives the same first-iteration reward (the same prompts and weights)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from plans.devices import device_kind

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
PLAN = [sys.executable, "-m", "cli.plan_app"]
RUN = [sys.executable, "-m", "cli.run_app"]


def _kind() -> str:
    p = torch.cuda.get_device_properties(0)
    kind = device_kind(p.name, p.total_memory / 2**30)
    if kind is None:
        pytest.skip(f"{p.name} is not in the device table")
    return kind


def _search(tmp_path, gpus: int, device: str) -> str:
    out = tmp_path / f"grpo-{gpus}-{device}.json"
    r = subprocess.run(
        [*PLAN, "search", "grpo-tiny", "--nodes", "1", "--gpus-per-node", str(gpus),
         "--device", device, "--time-limit", "5", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return str(out)


def _run(plan: str, out) -> list[dict]:
    r = subprocess.run(
        [*RUN, plan, "--iterations", "3", "--out", str(out), "--checkpoint-every", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("gpus", [1, 2])
def test_grpo_runs_on_gpus(tmp_path, gpus):
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} GPUs")
    plan = _search(tmp_path, gpus, _kind())
    rows = _run(plan, tmp_path / "gpu")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(r["peak_memory_mib"] > 0 for r in rows)  # allocated CUDA memory
    # The same allocations for CPU workers: the same prompts and initial weights give the
    # same first rewards up to kernel differences in sampling (a flipped near-tie).
    doc = json.loads(open(plan).read())
    doc["cluster"] = {"nodes": 1, "gpus_per_node": gpus, "device": "cpu"}
    cpu_plan = tmp_path / "cpu-plan.json"
    cpu_plan.write_text(json.dumps({k: v for k, v in doc.items() if k != "estimate"}))
    cpu_rows = _run(str(cpu_plan), tmp_path / "cpu")
    assert abs(cpu_rows[0]["reward_mean"] - rows[0]["reward_mean"]) < 0.05
