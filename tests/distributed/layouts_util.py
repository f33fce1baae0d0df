"""Shared pieces of the distributed checks: allocations on a 4-rank world, reference runs."""

from __future__ import annotations

import torch

from executor.compute import forward, train
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.model import ModelSpec, preset

GPUS_PER_NODE = 4
SEED = 7
# 12 query / 4 kv heads; vocab, MLP width and layer count that tp and pp do not divide evenly.
ODD = ModelSpec(
    hidden_size=48,
    intermediate_size=100,
    num_hidden_layers=5,
    num_attention_heads=12,
    num_key_value_heads=4,
    vocab_size=263,
    max_position_embeddings=64,
)


def spec_for(name: str, tied: bool = False) -> ModelSpec:
    spec = ODD if name == "odd" else preset(name)
    return spec.model_copy(update={"tie_word_embeddings": tied})


def allocation(tp: int, pp: int, dp: int, n_micro: int = 2) -> Allocation:
    """The first tp*pp*dp ranks of the 4-rank world (the rest sit outside the mesh)."""
    return Allocation(
        mesh=DeviceMesh(n_gpus=tp * pp * dp),
        strategy=ParallelStrategy(tp=tp, pp=pp, dp=dp, micro_batches=n_micro),
    )


def all_layouts(world: int = 4) -> list[tuple[int, int, int]]:
    """Every (tp, pp, dp) with tp in {1,2,4}, pp in {1,2}, dp in {1,2} fitting `world` ranks."""
    return [
        (tp, pp, dp) for tp in (1, 2, 4) for pp in (1, 2) for dp in (1, 2) if tp * pp * dp <= world
    ]


def ragged_batch(batch: int = 6, length: int = 11, seed: int = 3) -> dict[str, torch.Tensor]:
    """Left-padded token batch with an attention mask (rows of different lengths)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):
        mask[i, : (i * 2) % 5] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 258), "attention_mask": mask}


def reference_run(spec, batch, steps: int, lr: float = 1e-3):
    """Single-process model: logits, losses of each step, and the full weights after."""
    ctx = ParallelContext.single()
    model = random_init_(Transformer(spec), seed=SEED)
    logits = forward.logits(model, ctx, batch)
    opt = train.make_optimizer(model, train.OptimConfig(lr=lr))
    loss_fn, count_fn = train.next_token_loss(model, ctx)
    losses = [
        train.train_step(model, ctx, opt, batch, loss_fn, count_fn, n_micro=1).loss
        for _ in range(steps)
    ]
    return logits, losses, {k: v.detach().clone() for k, v in model.state_dict().items()}
