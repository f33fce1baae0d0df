"""The executor model on CUDA through the device-generic path: models built on the device,
batches moved by executor.data.batching.to_device, the same numbers as on CPU; generation and
a bf16 train step."""

from __future__ import annotations

import pytest
import torch

from executor.compute import forward, train
from executor.compute.generate import GenerationConfig, generate
from executor.data.batching import to_device
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.realloc.model_shards import adopt_shards_, model_shards
from plans.model import preset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
CTX = ParallelContext.single()
CUDA = torch.device("cuda", 0)


def _ids():
    return torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))


def _pair(name="tiny", dtype=torch.float32):
    cpu = random_init_(Transformer(preset(name), dtype=dtype), seed=1)
    gpu = random_init_(Transformer(preset(name), dtype=dtype, device=CUDA), seed=1)
    return cpu, gpu


def test_models_are_built_on_the_device():
    _, gpu = _pair()
    assert {p.device for p in gpu.parameters()} == {CUDA}
    shell = Transformer(preset("tiny"), device="meta")  # a view's shell allocates nothing
    view = adopt_shards_(shell, {k: v.clone() for k, v in model_shards(gpu).items()})
    assert {p.device for p in view.parameters()} == {CUDA}
    batch = to_device({"input_ids": _ids()}, CUDA)
    assert torch.equal(forward.logits(view, CTX, batch), forward.logits(gpu, CTX, batch))


def test_cuda_fp32_matches_cpu():
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu, gpu = _pair()
    host = {"input_ids": _ids(), "attention_mask": torch.ones(4, 24, dtype=torch.long)}
    host["attention_mask"][0, :5] = 0  # left padding: the masked (efficient) SDPA kernel
    ref = forward.logits(cpu, CTX, host)
    got = forward.logits(gpu, CTX, to_device(host, CUDA))
    assert (got.cpu() - ref).abs().max() < 1e-4
    cfg = GenerationConfig(16, pad_token_id=258)
    a = generate(cpu, CTX, host["input_ids"], None, cfg).tokens
    b = generate(gpu, CTX, host["input_ids"].to(CUDA), None, cfg).tokens.cpu()
    assert (a == b).float().mean() > 0.9  # kernel differences may flip a late near-tie


def test_bf16_train_step_and_sampling_run():
    _, model = _pair("small", torch.bfloat16)
    opt = train.make_optimizer(model, train.OptimConfig(lr=1e-4))
    loss_fn, count_fn = train.next_token_loss(model, CTX)
    batch = to_device({"input_ids": _ids()}, CUDA)
    losses = [
        train.train_step(model, CTX, opt, batch, loss_fn, count_fn, n_micro=2).loss
        for _ in range(3)
    ]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    cfg = GenerationConfig(8, greedy=False, temperature=0.8, top_p=0.9, seed=3, pad_token_id=258)
    out = generate(model, CTX, batch["input_ids"], None, cfg)
    assert out.tokens.shape == (4, 8) and bool((out.logprobs <= 0).all())
