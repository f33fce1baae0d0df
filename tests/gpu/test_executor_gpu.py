"""The executor model on CUDA: same numbers as on CPU, generation and a train step in bf16."""

from __future__ import annotations

import pytest
import torch

from executor.compute import forward, train
from executor.compute.generate import GenerationConfig, generate
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans.model import preset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CTX = ParallelContext.single()


def _ids(device):
    return torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0)).to(device)


def test_cuda_fp32_matches_cpu():
    cpu = random_init_(Transformer(preset("tiny")), seed=1)
    gpu = random_init_(Transformer(preset("tiny")), seed=1).cuda()
    batch = {"input_ids": _ids("cpu")}
    ref = forward.logits(cpu, CTX, batch)
    got = forward.logits(gpu, CTX, {"input_ids": batch["input_ids"].cuda()})
    assert (got.cpu() - ref).abs().max() < 1e-4
    cfg = GenerationConfig(16, pad_token_id=258)
    a = generate(cpu, CTX, batch["input_ids"], None, cfg).tokens
    b = generate(gpu, CTX, batch["input_ids"].cuda(), None, cfg).tokens.cpu()
    assert (a == b).float().mean() > 0.9  # TF32/kernel differences may flip a late near-tie


def test_bf16_train_step_and_sampling_run():
    model = random_init_(Transformer(preset("small"), dtype=torch.bfloat16), seed=1).cuda()
    opt = train.make_optimizer(model, train.OptimConfig(lr=1e-4))
    loss_fn, count_fn = train.next_token_loss(model, CTX)
    batch = {"input_ids": _ids("cuda")}
    losses = [
        train.train_step(model, CTX, opt, batch, loss_fn, count_fn, n_micro=2).loss
        for _ in range(3)
    ]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    cfg = GenerationConfig(8, greedy=False, temperature=0.8, top_p=0.9, seed=3, pad_token_id=258)
    out = generate(model, CTX, batch["input_ids"], None, cfg)
    assert out.tokens.shape == (4, 8) and bool((out.logprobs <= 0).all())
