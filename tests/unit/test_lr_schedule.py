"""Learning-rate schedules of a trained role: the rate of every optimizer step, the checks of
the optimizer section, and the torch scheduler that train_step drives (one process)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from executor.compute import train
from executor.compute.schedule import ScheduledOptimizer, scheduled
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans import OptimizerSpec, PlanError, example_path, experiment_from_dict, load_plan
from plans.model import preset

CTX = ParallelContext.single()
LR = 1e-2


def test_warmup_rises_linearly_from_zero():
    spec = OptimizerSpec(lr=LR, warmup_steps=4)
    assert [spec.lr_at(k) for k in range(6)] == [0.0, LR / 4, LR / 2, 3 * LR / 4, LR, LR]


def test_linear_and_cosine_decay_to_the_floor_and_stay_there():
    common = dict(lr=LR, warmup_steps=2, decay_steps=12, min_lr=1e-3)
    lin = OptimizerSpec(schedule="linear", **common)
    cos = OptimizerSpec(schedule="cosine", **common)
    for spec in (lin, cos):
        assert spec.lr_at(1) == LR / 2  # the warmup first
        assert spec.lr_at(2) == pytest.approx(LR)  # decay starts at the peak
        assert spec.lr_at(7) == pytest.approx((LR + 1e-3) / 2)  # halfway both are midway
        assert [spec.lr_at(k) for k in (12, 13, 10_000)] == pytest.approx([1e-3] * 3)
        rates = [spec.lr_at(k) for k in range(2, 13)]
        assert all(a > b for a, b in zip(rates, rates[1:], strict=False))  # strictly falling
    assert lin.lr_at(4) == pytest.approx(1e-3 + 9e-3 * 0.8)
    assert cos.lr_at(4) == pytest.approx(1e-3 + 9e-3 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert OptimizerSpec(lr=LR, schedule="cosine", decay_steps=4).lr_at(0) == LR  # no warmup


def test_constant_is_lr_at_every_step():
    spec = OptimizerSpec(lr=LR)
    assert not spec.scheduled
    assert all(spec.lr_at(k) == LR for k in range(100))
    assert OptimizerSpec(lr=LR, warmup_steps=3).lr_at(1000) == LR


# ---- the checks of the optimizer section ---------------------------------------------------------
BASE = load_plan(example_path("ppo-tiny-4cpu", "plan")).experiment.model_dump(mode="json")


def _experiment(**optimizer):
    doc = copy.deepcopy(BASE)
    doc["roles"]["actor"]["optimizer"].update(optimizer)
    return experiment_from_dict(doc)


BAD = [
    (dict(schedule="cosin", decay_steps=10), "schedule", "'cosine'"),
    (dict(schedule="linear"), "decay_steps", "needs"),
    (dict(schedule="cosine", warmup_steps=10, decay_steps=10), "decay_steps", "warmup_steps=10"),
    (dict(decay_steps=10), "decay_steps", "constant"),
    (dict(min_lr=1e-4), "min_lr", "constant"),
    (dict(schedule="linear", decay_steps=10, min_lr=0.003), "min_lr", "below lr=0.003"),
    (dict(warmup_steps=-1), "warmup_steps", "greater than or equal to 0"),
    (dict(warmup_steps=1.5), "warmup_steps", "integer"),
    (dict(warmup_steps=True), "warmup_steps", "integer"),
    (dict(schedule="linear", decay_steps=0), "decay_steps", "greater than or equal to 1"),
    (dict(schedule="linear", decay_steps=10, min_lr=-1e-4), "min_lr", "greater than or equal"),
]


@pytest.mark.parametrize("optimizer,field,word", BAD)
def test_bad_schedules_name_the_field(optimizer, field, word):
    with pytest.raises(PlanError) as info:
        _experiment(**optimizer)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"roles.actor.optimizer.{field}" in msg, msg
    assert word.lower() in msg.lower(), msg


def test_good_schedules_load():
    exp = _experiment(schedule="cosine", warmup_steps=3, decay_steps=30, min_lr=3e-4)
    assert exp.optimizer("actor").scheduled and exp.optimizer("critic").schedule == "constant"
    assert _experiment(warmup_steps=5).optimizer("actor").scheduled  # warmup, then constant


# ---- the torch scheduler on the optimizer ----------------------------------------------------------
def _model():
    return random_init_(Transformer(preset("tiny")), seed=3)


def _batch(step: int):
    g = torch.Generator().manual_seed(step)
    return {"input_ids": torch.randint(0, 264, (4, 12), generator=g)}


def _train(model, opt, steps: range) -> list[float]:
    """The rate each step ran at, read off the optimizer before the step."""
    loss_fn, count_fn = train.next_token_loss(model, CTX)
    rates = []
    for step in steps:
        rates.append(opt.param_groups[0]["lr"])
        train.train_step(model, CTX, opt, _batch(step), loss_fn, count_fn)
    return rates


def _adamw(model, spec):
    return train.make_optimizer(model, train.OptimConfig(lr=spec.lr, weight_decay=0.1))


def test_every_train_step_runs_at_the_schedules_rate():
    spec = OptimizerSpec(lr=LR, schedule="cosine", warmup_steps=3, decay_steps=8, min_lr=1e-3)
    model = _model()
    rates = _train(model, scheduled(_adamw(model, spec), spec), range(10))
    assert rates == pytest.approx([spec.lr_at(k) for k in range(10)], rel=1e-12, abs=0)
    assert rates[0] == 0.0 and rates[3] == pytest.approx(LR) and rates[9] == pytest.approx(1e-3)


def test_constant_schedule_is_bitwise_the_plain_optimizer():
    spec = OptimizerSpec(lr=LR)
    plain, under = _model(), _model()
    assert scheduled(_adamw(plain, spec), spec).__class__ is torch.optim.AdamW  # left as it is
    _train(plain, _adamw(plain, spec), range(4))
    rates = _train(under, ScheduledOptimizer(_adamw(under, spec), spec), range(4))
    assert rates == [LR] * 4
    for (k, a), b in zip(plain.state_dict().items(), under.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_schedule_resumes_bitwise_from_the_state_dict():
    spec = OptimizerSpec(lr=LR, schedule="linear", warmup_steps=2, decay_steps=7, min_lr=1e-4)
    whole = _model()
    _train(whole, scheduled(_adamw(whole, spec), spec), range(9))
    first = _model()
    opt = scheduled(_adamw(first, spec), spec)
    _train(first, opt, range(4))
    saved = copy.deepcopy(opt.state_dict())
    params = {k: v.clone() for k, v in first.state_dict().items()}
    resumed = _model()  # a fresh process: new model and optimizer, then the checkpoint
    resumed.load_state_dict(params)
    opt = scheduled(_adamw(resumed, spec), spec)
    opt.load_state_dict(saved)
    assert saved["lr_schedule"]["last_epoch"] == 4
    rates = _train(resumed, opt, range(4, 9))
    assert rates == pytest.approx([spec.lr_at(k) for k in range(4, 9)], rel=1e-12, abs=0)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
