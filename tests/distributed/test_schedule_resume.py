"""rlhf-run with learning-rate schedules and shuffled prompts: a run stopped and resumed
mid-schedule ends bitwise where an uninterrupted one does (the schedule's position travels in
the checkpoint; the data order is a function of seed and iteration), also for a ZeRO-1 home.
Structured like test_runtime's resume test."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from executor.runtime.launch import launch
from executor.runtime.worker import RunTask, run
from plans import example_path, load_plan, plan_from_dict, save_plan

pytestmark = pytest.mark.distributed

SCHEDULES = {  # ppo-tiny-4cpu: 2 epochs x 4 mini-batches = 8 optimizer steps per iteration
    "actor": dict(schedule="cosine", warmup_steps=4, decay_steps=24, min_lr=3e-4),
    "critic": dict(schedule="linear", warmup_steps=3, decay_steps=20, min_lr=1e-4),
}
STEPS_PER_ITERATION = 8


def _numbers(rows):
    keep = ("reward_mean", "kl_mean", "response_len", "actor_loss", "critic_loss", "clip_frac")
    return [{k: r[k] for k in keep} for r in rows]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out, role):
    return load_file(str(out / "final" / role / "model.safetensors"))


def test_resume_mid_schedule_matches_uninterrupted_run(tmp_path):
    doc = load_plan(example_path("ppo-tiny-4cpu", "plan")).model_dump(mode="json")
    for role, schedule in SCHEDULES.items():
        doc["experiment"]["roles"][role]["optimizer"].update(schedule)
    doc["allocations"]["critic_train"]["strategy"]["zero1"] = True  # the critic's home, dp 2
    # Prompts from a file of 1.5 batches: every iteration's rows come from a new shuffled
    # epoch order, and the resumed run must draw the same ones.
    n = doc["experiment"]["batch_size"] * 3 // 2
    prompts = tmp_path / "prompts.jsonl"
    letters = "abcdefghijklmnopqrstuvwxyz"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": letters[i % 26] * (1 + i % 5) + letters[(3 * i) % 26]}) + "\n"
            for i in range(n)
        )
    )
    doc["experiment"]["dataset"] = str(prompts)
    plan = plan_from_dict(doc)
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    world = plan.cluster.world_size
    task = RunTask(str(path), 4, str(whole), save_final=True, checkpoint_every=2)
    assert launch(run, task, world=world) == 0
    # Stopped after two iterations, inside both decays (step 16) ...
    assert launch(run, RunTask(str(path), 2, str(parts), checkpoint_every=2), world=world) == 0
    # ... and resumed to four, past both ends of the decay (step 32).
    task = RunTask(str(path), 4, str(parts), save_final=True, checkpoint_every=2, resume=True)
    assert launch(run, task, world=world) == 0

    assert [r["iteration"] for r in _rows(parts)] == [0, 1, 2, 3]
    assert _numbers(_rows(parts)) == _numbers(_rows(whole))
    # Each row reports the rate of the iteration's first optimizer step, resumed or not.
    for role in SCHEDULES:
        spec = plan.experiment.optimizer(role)
        want = [spec.lr_at(it * STEPS_PER_ITERATION) for it in range(4)]
        for rows in (_rows(whole), _rows(parts)):
            assert [r[f"{role}_lr"] for r in rows] == pytest.approx(want, rel=1e-12), role
    for role in ("actor", "critic"):
        a, b = _weights(whole, role), _weights(parts, role)
        assert all(torch.equal(a[k], b[k]) for k in a), role

    # The checkpoints hold each role's schedule position: one count per optimizer step.
    for done in (2, 4):
        state = torch.load(
            parts / "checkpoints" / f"iter-{done:06d}" / "rank00002.pt", weights_only=False
        )
        steps = done * STEPS_PER_ITERATION
        for role in SCHEDULES:
            spec = plan.experiment.optimizer(role)
            optim = state["roles"][role]["optim"]
            assert optim["lr_schedule"]["last_epoch"] == steps, role
            inner = optim["optimizer"]
            inner = inner.get("inner", inner)  # ZeRO-1's MasterAdamW wraps its AdamW's state
            lr = inner["param_groups"][0]["lr"]
            assert lr == pytest.approx(spec.lr_at(steps), rel=1e-12), role
            assert (lr == pytest.approx(spec.min_lr)) == (done == 4), role
