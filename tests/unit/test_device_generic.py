"""Every call body of every algorithm makes its tensors on its inputs' device: run in one
process on the CPU (the same code a GPU worker runs), no factory call of the project's code
(torch.zeros, torch.full, torch.arange, torch.tensor, ...) may leave its device to torch's
default. On a GPU such a tensor would land on the CPU and fail, or cost a copy, far from here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from executor.compute.train import OptimConfig, make_optimizer
from executor.data.batching import to_device
from executor.data.sources import reward_function
from executor.data.tokenizer import tokenizer_for
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.programs.program import CallEnv
from executor.programs.registry import program_for
from plans import experiment_from_dict, load_experiment
from plans.dataflow import unrolled

ROOT = str(Path(__file__).resolve().parents[2])
FACTORIES = {
    torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor,
    torch.rand, torch.randn, torch.randint, torch.as_tensor, torch.linspace,
}  # fmt: skip


class NoDefaultDevice(TorchFunctionMode):
    """Records factory calls of the project's own code that name no device."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(ROOT) and "/tests/" not in caller.co_filename:
                where = f"{Path(caller.co_filename).relative_to(ROOT)}:{sys._getframe(1).f_lineno}"
                self.found.append(f"{func.__name__} at {where}")
        return func(*args, **kwargs)


def _exp(name):
    doc = load_experiment(name).model_dump(mode="json")
    doc.update(evaluation=None, batch_size=4, mini_batches=2, ppo_epochs=1)
    if doc.get("group_size", 1) > 1:  # (rm-tree's leaves come from its tree: group_size 1)
        doc["group_size"] = 2
    return experiment_from_dict(doc)


@pytest.mark.parametrize(
    "name",
    [
        "ppo-tiny",
        "grpo-tiny",
        "remax-tiny",
        "dpo-tiny",
        "adpo-tiny",
        "rm-tiny",
        "adpo-online-tiny",
        "rm-tree-tiny",
    ],
)
def test_call_bodies_name_their_device(name):
    exp = _exp(name)
    tok = tokenizer_for([exp.model(r) for r in exp.roles], exp.tokenizer)
    program = program_for(exp, tok, None)
    ctx, dev = ParallelContext.single(), torch.device("cpu")
    rule = reward_function(exp.reward_function) if exp.reward_function else None
    trained = {m.role for m in exp.mfcs() if m.kind == "train"}
    models, opts = {}, {}
    for role in exp.roles:
        if role == "reward" and rule is not None and role not in trained:
            models[role] = None  # the rule stands in
            continue
        models[role] = random_init_(Transformer(exp.model(role), device=dev), seed=1)
        if role in trained:
            opts[role] = make_optimizer(models[role], OptimConfig(lr=1e-3))
    data = to_device(program.dataset(0), dev)  # the dataset is read on the host, then moved
    with NoDefaultDevice() as mode:
        for node in unrolled(exp.algorithm, 1):
            m = node.mfc
            env = CallEnv(exp, tok, rule, 0, 2, opts.get(m.role))
            out = program.run(m, models[m.role], ctx, data, env)
            data.update(out or {})
    assert not mode.found, "; ".join(sorted(set(mode.found)))
