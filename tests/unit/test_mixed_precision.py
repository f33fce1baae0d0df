"""bf16 training keeps fp32 master weights, fp32 moments and fp32 gradients: an update far
below bf16's resolution is not lost; fp32 training is untouched."""

from __future__ import annotations

import copy

import torch

from executor.compute import train
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.parallel.grads import grad_of
from executor.parallel.zero import MasterAdamW
from plans.model import preset


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 256, (4, 12), generator=g)}


def _step(model: Transformer, opt) -> None:
    ctx = ParallelContext.single()
    loss_fn, count_fn = train.next_token_loss(model, ctx)
    train.train_step(model, ctx, opt, _batch(), loss_fn, count_fn, n_micro=2, max_grad_norm=None)


def test_a_tiny_step_moves_every_master_element_with_a_gradient():
    model = random_init_(Transformer(preset("tiny"), dtype=torch.bfloat16), seed=3)
    opt = train.make_optimizer(model, train.OptimConfig(lr=1e-6))
    assert isinstance(opt, MasterAdamW)
    before_masters = [sh.detach().clone() for sh in opt.shards]
    before_params = [p.detach().clone() for p in opt.params]
    _step(model, opt)
    moved_params = 0
    for p, sh, m0, p0 in zip(opt.params, opt.shards, before_masters, before_params, strict=True):
        assert sh.dtype == torch.float32 and grad_of(p).dtype == torch.float32
        g = grad_of(p).reshape(-1)
        changed = sh.detach().reshape(-1) != m0.reshape(-1)
        assert torch.equal(changed, g != 0), "every element with a gradient, and only those"
        moved_params += int((p.detach() != p0).sum())
        assert torch.equal(p.detach(), sh.detach().view_as(p).to(p.dtype))  # params = masters
    # In bf16 alone most of these updates would be lost: few parameters changed at all.
    total = sum(p.numel() for p in opt.params)
    assert moved_params < total / 10


def test_fp32_training_uses_torch_adamw_unchanged():
    model = random_init_(Transformer(preset("tiny")), seed=3)
    opt = train.make_optimizer(model, train.OptimConfig(lr=1e-3))
    assert type(opt) is torch.optim.AdamW
    assert not hasattr(model, "_main_grad")
    twin = random_init_(Transformer(preset("tiny")), seed=3)
    ref = torch.optim.AdamW(twin.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    _step(model, opt)
    _step(twin, ref)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_masters_survive_a_checkpoint_round_trip():
    model = random_init_(Transformer(preset("tiny"), dtype=torch.bfloat16), seed=3)
    opt = train.make_optimizer(model, train.OptimConfig(lr=1e-4))
    _step(model, opt)
    state = copy.deepcopy(opt.state_dict())  # as written to disk: no shared tensors
    fresh = random_init_(Transformer(preset("tiny"), dtype=torch.bfloat16), seed=4)
    fresh.load_state_dict(model.state_dict())
    opt2 = train.make_optimizer(fresh, train.OptimConfig(lr=1e-4))
    opt2.load_state_dict(state)
    _step(model, opt)
    _step(fresh, opt2)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
