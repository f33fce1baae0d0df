"""Measured memory of a train call next to the estimator's figure for the same call.

    .venv/bin/python -m benchmarks.memory            # 10 allocations of a 25M-parameter actor
    .venv/bin/python -m benchmarks.memory --quick    # the tiny model, 4 allocations

Each allocation runs one optimizer step of the real executor (executor.compute.train) on 1-4
gloo workers. On every rank it counts, as live tensor bytes on the CPU:
- weights: the parameters; master: fp32 master copies (bf16 only); optimizer: Adam moments
  (plus masters, as the estimator's `optimizer` figure); grads: the gradient buffers;
- activations: the peak, over the forwards and backwards of a second step, of the bytes that
  step allocates, the parameters' gradients left out (benchmarks.live_bytes: activations
  saved for backward, temporaries, autograd's buffers), what the call needs on top of what
  stays allocated.
The busiest rank's figure of each component is printed next to estimator.memory.call_memory
for the same call (the experiment's actor_train with this allocation), with their ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.live_bytes import transient_peak
from estimator.memory import call_memory, optimizer_bytes_per_param, stage_params
from executor.compute import train
from executor.data.batching import dp_share, micro_batches
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from executor.parallel.grads import grad_of
from executor.parallel.pipeline import pipeline_train
from executor.parallel.zero import MasterAdamW
from executor.runtime.launch import launch
from plans import Allocation, DeviceMesh, ExperimentSpec, ParallelStrategy, experiment_from_dict

MODEL = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
         "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 264,
         "max_position_embeddings": 512}  # fmt: skip
# (dp, tp, pp, micro-batches, zero1, recompute, dtype)
LAYOUTS = [
    (1, 1, 1, 1, False, False, "float32"),
    (1, 1, 1, 2, False, True, "float32"),
    (1, 1, 2, 4, False, False, "float32"),
    (1, 1, 2, 4, False, True, "float32"),
    (1, 1, 4, 8, False, False, "float32"),
    (2, 1, 1, 1, True, False, "float32"),
    (2, 1, 1, 1, True, False, "bfloat16"),
    (1, 1, 2, 4, False, False, "bfloat16"),
    (1, 1, 4, 4, False, True, "bfloat16"),
    (1, 2, 1, 2, False, False, "float32"),
]
QUICK = [LAYOUTS[0], LAYOUTS[3], LAYOUTS[6], LAYOUTS[8]]


def experiment(model: dict, dtype: str, rows: int, seq: int) -> ExperimentSpec:
    return experiment_from_dict({
        "name": "memory", "algorithm": "grpo", "dtype": dtype, "batch_size": rows // 2,
        "group_size": 2, "mini_batches": 1, "prompt_len": seq // 2, "gen_len": seq - seq // 2,
        "roles": {"actor": {"model": {**model, "head": "lm"}},
                  "ref": {"model": {**model, "head": "lm"}},
                  "reward": {"model": {**model, "head": "value"}}},
    })  # fmt: skip


@dataclass(frozen=True)
class Task:
    model: dict
    layout: tuple
    rows: int
    seq: int
    out: str


def _measure(env, task: Task) -> None:
    dp, tp, pp, m, zero1, rc, dtype = task.layout
    alloc = _alloc(task.layout)
    ctx = ParallelContext.build(alloc, 4)
    if not ctx.in_mesh:
        return
    exp = experiment(task.model, dtype, task.rows, task.seq)
    model = Transformer.for_context(exp.model("actor"), ctx, getattr(torch, dtype))
    random_init_(model, seed=0)
    model.recompute = rc
    opt = train.make_optimizer(model, train.OptimConfig(lr=1e-5), ctx, zero1=zero1)
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(0, 256, (task.rows, task.seq), generator=g)}
    loss_fn, count_fn = train.next_token_loss(model, ctx)
    params = list({id(p): p for p in model.parameters()}.values())

    train.train_step(model, ctx, opt, batch, loss_fn, count_fn, n_micro=m)  # creates the states
    micro = micro_batches(dp_share(batch, ctx.dp_size, ctx.dp_rank), m)
    # The forwards and backwards of a step, as train_step runs them: where activations peak.
    peak = transient_peak(lambda: pipeline_train(model, ctx, micro, loss_fn), params)
    masters = (
        sum(sh.nbytes for sh in opt.shards if sh.dtype != params[0].dtype)
        if isinstance(opt, MasterAdamW)
        else 0
    )
    inner = opt.inner if isinstance(opt, MasterAdamW) else opt
    moments = sum(
        v.nbytes
        for s in inner.state.values()
        for v in s.values()
        if torch.is_tensor(v) and v.dim() > 0
    )
    grad_buf = getattr(model, "_main_grad", None)
    grads = grad_buf.nbytes if grad_buf is not None else sum(grad_of(p).nbytes for p in params)
    row = {"rank": env.rank, "weights": sum(p.nbytes for p in params), "master": masters,
           "optimizer": masters + moments, "grads": grads, "activations": peak}  # fmt: skip
    Path(task.out, f"{env.rank}.json").write_text(json.dumps(row))


def _alloc(layout: tuple) -> Allocation:
    dp, tp, pp, m, zero1, rc, _ = layout
    strategy = ParallelStrategy(dp=dp, tp=tp, pp=pp, micro_batches=m, zero1=zero1, recompute=rc)
    return Allocation(mesh=DeviceMesh(n_gpus=dp * tp * pp), strategy=strategy)


def estimate(model: dict, layout: tuple, rows: int, seq: int) -> dict[str, float]:
    exp = experiment(model, layout[-1], rows, seq)
    mfc = next(m for m in exp.mfcs() if m.name == "actor_train")
    alloc = _alloc(layout)
    mem = call_memory(mfc, alloc, exp)
    s = alloc.strategy
    params = max(stage_params(exp.model("actor"), s.tp, s.pp))
    master = params * (optimizer_bytes_per_param(exp.dtype) - 8) / (s.dp if s.zero1 else 1)
    return {"weights": mem.weights, "master": master, "optimizer": mem.optimizer,
            "grads": mem.grads, "activations": mem.activations}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--per-rank", action="store_true", help="also print each rank's activations")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    args = ap.parse_args()
    model = {**MODEL, "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
             "num_key_value_heads": 2, "num_hidden_layers": 4} if args.quick else MODEL  # fmt: skip
    print(f"model: {model}; {args.rows} sequences x {args.seq} tokens per step")
    print("layout                      component    measured MiB  estimated MiB  est/meas")
    worst = 0.0
    for layout in QUICK if args.quick else LAYOUTS:
        with tempfile.TemporaryDirectory() as tmp:
            world = layout[0] * layout[1] * layout[2]
            code = launch(_measure, Task(model, layout, args.rows, args.seq, tmp), world, 600.0)
            assert code == 0, f"{layout} failed"
            rows = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("*.json"))]
            if args.per_rank:
                print(layout, [round(r["activations"] / 2**20, 2) for r in rows])
        est = estimate(model, layout, args.rows, args.seq)
        label = f"{_alloc(layout).strategy.label()} {layout[-1]}"
        for k in ("weights", "master", "optimizer", "grads", "activations"):
            meas = max(r[k] for r in rows)
            if meas == 0 and est[k] == 0:
                continue
            ratio = est[k] / meas if meas else float("inf")
            worst = max(worst, abs(ratio - 1))
            print(f"{label:<27} {k:<12} {meas / 2**20:12.2f}  {est[k] / 2**20:13.2f}  {ratio:8.3f}")
    print(f"largest deviation of an estimate from its measurement: {worst:.1%}")


if __name__ == "__main__":
    main()
