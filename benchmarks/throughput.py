"""Packed against padded sequences (the experiment's [packing]): tokens/s of a train call (one
optimizer step: forward, backward, AdamW) and of an inference call (per-token log-probs) on a
batch whose prompts are left-padded and whose responses are spread uniformly over 8..64
tokens, the two variants interleaved in one run, and whether they agree.

    .venv/bin/python -m benchmarks.throughput                  # one process
    .venv/bin/python -m benchmarks.throughput --workers 4      # 4 CPU workers (gloo), dp 4

(Generation running ahead of training, the other throughput lever: benchmarks/staleness.py.)

Tokens/s counts the real tokens of the batch (the same for both variants), so the ratio is the
time ratio. Each repeat runs padded then packed; the figure is the best of the repeats (the
least disturbed), by the wall clock and by the CPU time of the process (the slowest rank's;
one thread per process), which other jobs on a shared machine disturb less; the wall clock's
medians follow. The
train calls start from the same weights, so their first step's loss and gradient norm must
agree (1e-5), as must the log-probs of every real token.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

from benchmarks.ranks import join_group, spawn
from executor.compute import forward, train
from executor.compute.logprobs import next_token_logprobs
from executor.data.batching import dp_share
from executor.model import Transformer
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.model import ModelSpec

# About 5.5M parameters: a LLaMA-style model a user trains on a CPU (byte vocabulary).
SPEC = ModelSpec(
    name="llama-5m",
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=264,
    max_position_embeddings=512,
)
PROMPT, GEN = 16, 64


def varied_batch(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Prompts of 8..16 real tokens left-padded to PROMPT, responses of 8..64 tokens (uniform)
    right-padded to GEN."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (b, PROMPT + GEN), generator=g)
    am = torch.zeros_like(ids)
    p = torch.randint(8, PROMPT + 1, (b,), generator=g)
    r = torch.randint(8, GEN + 1, (b,), generator=g)
    for i in range(b):
        am[i, PROMPT - int(p[i]) : PROMPT + int(r[i])] = 1
    return {"input_ids": ids.masked_fill(am == 0, 0), "attention_mask": am}


def _pairs(am: torch.Tensor) -> torch.Tensor:
    return am[:, :-1] * am[:, 1:]


def _loss(model, ctx):
    def loss_fn(logits, mb):
        lp = next_token_logprobs(logits, mb["input_ids"], model.vocab_rows[0], ctx.tp_group)
        return -(lp * _pairs(mb["attention_mask"])).sum()

    return loss_fn, lambda b: float(_pairs(b["attention_mask"]).sum())


def _timed(ctx, fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of `fn`; with workers, wall from a barrier
    before to a barrier after (the slowest rank)."""
    if ctx.dp_group is not None:
        dist.barrier()
    t, c = time.perf_counter(), time.process_time()
    fn()
    c = time.process_time() - c
    if ctx.dp_group is not None:
        dist.barrier()
    return time.perf_counter() - t, c


def measure(ctx: ParallelContext, batch_size: int, n_micro: int, repeats: int) -> dict:
    batch = varied_batch(batch_size)
    tokens = int(batch["attention_mask"].sum())
    models = {k: random_init_(Transformer.for_context(SPEC, ctx), seed=1) for k in ("pad", "pack")}
    opts = {k: train.make_optimizer(m, train.OptimConfig(lr=1e-4)) for k, m in models.items()}
    out: dict = {"tokens": tokens, "slots": batch_size * (PROMPT + GEN)}

    def infer(k):
        return forward.logprobs(models[k], ctx, batch, n_micro, pack=k == "pack")

    def step(k):
        loss_fn, count_fn = _loss(models[k], ctx)
        return train.train_step(
            models[k], ctx, opts[k], batch, loss_fn, count_fn, n_micro, 1.0, pack=k == "pack"
        )

    # Agreement, from equal weights: log-probs of real tokens, then the first step.
    keep = _pairs(dp_share(batch, ctx.dp_size, ctx.dp_rank)["attention_mask"]).bool()
    out["logprob_diff"] = (infer("pack")[keep] - infer("pad")[keep]).abs().max().item()
    s_pad, s_pack = step("pad"), step("pack")
    out["loss_diff"] = abs(s_pack.loss - s_pad.loss)
    out["grad_norm_diff"] = abs(s_pack.grad_norm - s_pad.grad_norm)
    times: dict[str, list[tuple[float, float]]] = {
        f"{c} {k}": [] for c in ("train", "infer") for k in models
    }
    for _ in range(repeats):
        for k in ("pad", "pack"):
            times[f"train {k}"].append(_timed(ctx, lambda k=k: step(k)))
        for k in ("pad", "pack"):
            times[f"infer {k}"].append(_timed(ctx, lambda k=k: infer(k)))
    # Best of the repeats: the least disturbed run (as benchmarks/model.py); the medians too.
    out["seconds"] = {k: min(w for w, _ in v) for k, v in times.items()}
    out["cpu_seconds"] = {k: min(c for _, c in v) for k, v in times.items()}
    out["median_seconds"] = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    return out


def _worker(rank: int, world: int, store: str, args, q) -> None:
    join_group(rank, world, store, timeout_s=600)
    alloc = Allocation(
        mesh=DeviceMesh(n_gpus=world),
        strategy=ParallelStrategy(dp=world, micro_batches=args.micro_batches),
    )
    ctx = ParallelContext.build(alloc, world)
    res = measure(ctx, args.batch, args.micro_batches, args.repeats)
    diffs = torch.tensor([res["logprob_diff"], res["loss_diff"], res["grad_norm_diff"]])
    dist.all_reduce(diffs, op=dist.ReduceOp.MAX)
    res["logprob_diff"], res["loss_diff"], res["grad_norm_diff"] = diffs.tolist()
    keys = sorted(res["cpu_seconds"])
    cpu = torch.tensor([res["cpu_seconds"][k] for k in keys], dtype=torch.float64)
    dist.all_reduce(cpu, op=dist.ReduceOp.MAX)  # the slowest rank's CPU seconds
    res["cpu_seconds"] = dict(zip(keys, cpu.tolist(), strict=True))
    # Wall clocks are measured between barriers: the same on every rank.
    if rank == 0:
        q.put(res)
    dist.destroy_process_group()


def run(args) -> dict:
    if args.workers == 1:
        torch.set_num_threads(1)
        return measure(ParallelContext.single(), args.batch, args.micro_batches, args.repeats)
    return spawn(_worker, args.workers, args, timeout_s=3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=1, help="CPU workers (data parallel)")
    ap.add_argument("--batch", type=int, default=32, help="sequences per call")
    ap.add_argument("--micro-batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    res = run(args)
    n = sum(p.numel() for p in Transformer(SPEC, device="meta").parameters())
    print(
        f"model {SPEC.name} ({n / 1e6:.1f}M parameters), {args.workers} worker(s) x 1 thread, "
        f"batch {args.batch} (prompts 8..{PROMPT}, responses 8..{GEN} tokens), "
        f"{args.micro_batches} micro-batches, {args.repeats} repeats"
    )
    print(f"real tokens {res['tokens']} of {res['slots']} padded slots")
    names = {
        "seconds": "wall clock, best of the repeats",
        "cpu_seconds": "CPU time (slowest rank's process), best of the repeats",
        "median_seconds": "wall clock, median of the repeats",
    }
    for clock, name in names.items():
        s = res[clock]
        print(name)
        for call in ("train", "infer"):
            pad, pack = s[f"{call} pad"], s[f"{call} pack"]
            print(
                f"  {call:5s}  padded {res['tokens'] / pad:9.0f} tok/s  packed "
                f"{res['tokens'] / pack:9.0f} tok/s  speed-up {pad / pack:.2f}x"
            )
        both = (s["train pad"] + s["infer pad"]) / (s["train pack"] + s["infer pack"])
        print(f"  train+inference speed-up {both:.2f}x")
    print(
        f"agreement: log-probs max |diff| {res['logprob_diff']:.1e}, first step loss "
        f"{res['loss_diff']:.1e}, gradient norm {res['grad_norm_diff']:.1e}"
    )
    ok = max(res["logprob_diff"], res["loss_diff"], res["grad_norm_diff"]) < 1e-5
    print("results agree (1e-5)" if ok else "RESULTS DIFFER")


if __name__ == "__main__":
    main()
