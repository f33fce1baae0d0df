"""What `rlhf-plan profile` times on one device: the executor's own block (plain and with
activation checkpointing), head, decode step and optimizer step on one rank's shard (a tp=k
entry holds 1/k of the heads and MLP columns, built by executor.model.Transformer with no tp
group, so no communication is timed with it), and at tp=1 whole passes (passes.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

from estimator.profile import OpTiming, ShardShape
from estimator.shapes import DECODE_STACK_BYTES as STACK_BYTES
from estimator.shapes import decode_stack, shard_shape
from executor.profiling.passes import generate_step, pass_points
from plans import ModelSpec, preset

# Forward passes over fewer tokens than this stream weights more than they compute: they are
# timed through the decode stack too. Per block, 12 distinct blocks of the 85M preset against
# one repeated (2-core Xeon, float32): forward x1.55 at 16 tokens, x1.20 at 64, x1.07 at 128,
# x1.04 at 256, x0.98 at 512; forward+backward x0.94-1.04 at all of them, so it is not stacked.
STACK_TOKENS = 512


@dataclass(frozen=True)
class Grid:
    """What to time: model shards, batch sizes, lengths and optimizer sizes."""

    models: tuple[str, ...]
    tps: tuple[int, ...]
    batches: tuple[int, ...]
    seqs: tuple[int, ...]
    caches: tuple[int, ...]
    opt_layers: tuple[int, ...]
    min_time_s: float
    min_reps: int
    rounds: int = 1


GRIDS = {
    ("cpu", True): Grid(("tiny", "small"), (1, 2), (1, 8), (16, 128), (16, 128),
                        (1, 4), 0.05, 2),
    ("cpu", False): Grid(("tiny", "small"), (1, 2, 4), (1, 2, 8), (16, 64, 256), (16, 64, 256),
                         (1, 4, 12), 0.2, 3, 3),
    ("cuda", True): Grid(("llama2-7b",), (1, 2, 8), (1, 8, 32), (128, 1024), (128, 1024),
                         (1, 2), 0.05, 3),
    ("cuda", False): Grid(("llama2-7b", "llama2-70b"), (1, 2, 4, 8), (1, 4, 16, 64),
                          (128, 512, 2048), (128, 512, 2048), (1, 4),
                          0.2, 5),
}  # fmt: skip
ADAM_SHAPE = ShardShape(
    model="adamw", hidden_size=1, intermediate_size=1, num_heads=1, num_kv_heads=1,
    head_dim=1, vocab_size=1,
)  # fmt: skip


STATISTIC = "median"  # what a new profile records of each point's repeated runs


def timer(
    sync: Callable[[], None], grid: Grid, clock: Callable[[], float], statistic: str = STATISTIC
) -> Callable[[Callable[[], object]], float]:
    """Times a function: its `statistic` ("median", or "min" as profiles before 2026-12 were
    made on CPU) over repeated runs after one warm-up run."""
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic must be median or min, not {statistic!r}")

    def run(fn: Callable[[], object]) -> float:
        fn()
        sync()
        times: list[float] = []
        while len(times) < grid.min_reps or (sum(times) < grid.min_time_s and len(times) < 200):
            t0 = clock()
            fn()
            sync()
            times.append(clock() - t0)
        # The typical run, as a call in rlhf-run takes it. The fastest of many back-to-back
        # runs is an outlier: on the 2-core EPYC a 1M-parameter model's inference pass took
        # 10.6 ms at best and 12.9 ms at the median of 600 (a 25M one 154 and 168 ms), and
        # priced at the best every small call came out low. Other jobs stay out of a CPU
        # profile through its clock (process time), not through the statistic.
        return min(times) if statistic == "min" else statistics.median(times)

    return run


def shard_pieces(name: str | ModelSpec, tp: int, dtype, device, layers: int = 1):
    """Embedding, `layers` blocks, final norm and head of tp rank 0 of a copy of `name`."""
    import torch

    from executor.model import Transformer
    from executor.model.weights import random_init_

    spec = (preset(name) if isinstance(name, str) else name).model_copy(
        update={"num_hidden_layers": layers}
    )
    model = Transformer(spec, tp=tp, tp_rank=0, dtype=dtype).to(device)
    with torch.no_grad():
        random_init_(model, seed=0)
    return model


def op_points(grid: Grid, model, name, tp, dt, device, dtype, timed) -> list[OpTiming]:
    import torch
    from torch.utils.checkpoint import checkpoint

    from executor.compute.generate import FUSE_MAX_HIDDEN
    from executor.compute.logprobs import token_logprobs
    from executor.model.fusion import fused_inference
    from executor.model.layers import LayerCache

    spec = model.spec
    shape = shard_shape(spec, tp, dt)
    blk, emb = model.model.layers["0"], model.model.embed_tokens
    norm, lm = model.model.norm, model.lm_head
    h, v_local = spec.hidden_size, lm.weight.shape[0]
    out: list[OpTiming] = []
    # Decode, and forward passes of few tokens, run through a stack of distinct blocks (decode:
    # each with its own cache) as a whole model streams them; the time per block is recorded
    # (estimator.shapes.decode_stack says how many and why).
    n_stack = decode_stack(shape, STACK_BYTES)
    deep = shard_pieces(spec, tp, dtype, device, n_stack) if n_stack > 1 else model
    stack = list(deep.model.layers.values())

    def rec(op: str, b: int, s: int, fn: Callable[..., object], *args: object) -> None:
        out.append(
            OpTiming(op=op, shape=shape, batch=b, seq_len=s, time_s=timed(partial(fn, *args)))
        )

    def rope(b: int, s: int, start: int = 0):
        pos = torch.arange(start, start + s, device=device).expand(b, -1)
        return model.rotary(pos, dtype, start + s)

    def embed(ids, pos, bound):  # what body() does before the blocks: lookup and RoPE tables
        return emb(ids), model.rotary(pos, dtype, bound)

    def head(x, ids):  # what inference and the loss do after the last block
        return token_logprobs(lm(norm(x))[:, :-1], ids[:, 1:], 0, None)

    def blocks_f(layers, x, cos, sin):
        for layer in layers:
            layer(x, cos, sin, None)

    def block_fb(x, cos, sin, gy):
        blk(x, cos, sin, None).backward(gy)

    def block_rc(x, cos, sin, gy):  # as Transformer.forward checkpoints a block
        checkpoint(blk, x, cos, sin, None, None, 0, use_reentrant=False).backward(gy)

    def per_block(op: str, b: int, s: int, fn, *args) -> None:
        layers = stack if b * s < STACK_TOKENS else [blk]
        t = timed(partial(fn, layers, *args)) / len(layers)
        out.append(OpTiming(op=op, shape=shape, batch=b, seq_len=s, time_s=t))

    def emb_fb(ids, pos, bound, gy):
        embed(ids, pos, bound)[0].backward(gy)

    def head_fb(x, ids):
        head(x, ids).sum().backward()

    for b in grid.batches:
        for s in grid.seqs:
            x = torch.randn(b, s, h, dtype=dtype, device=device)
            cos, sin = rope(b, s)
            ids = torch.randint(0, v_local, (b, s), device=device)
            pos = torch.arange(s, device=device).expand(b, -1)
            with torch.no_grad():
                per_block("block_fwd", b, s, blocks_f, x, cos, sin)
                rec("embedding_fwd", b, s, embed, ids, pos, s)
                rec("head_fwd", b, s, head, x, ids)
            xg = x.clone().requires_grad_(True)
            gy = torch.randn_like(x)
            rec("block_fwd_bwd", b, s, block_fb, xg, cos, sin, gy)
            rec("block_recompute", b, s, block_rc, xg, cos, sin, gy)
            rec("embedding_fwd_bwd", b, s, emb_fb, ids, pos, s, gy)
            rec("head_fwd_bwd", b, s, head_fb, xg, ids)
            if tp == 1:
                out += pass_points(model, b, s, shape, timed, device)
        for c in grid.caches:
            attn = blk.self_attn
            # executor.compute.generate preallocates the cache for prompt + new tokens and attends a
            # slice of it; a cache twice the attended length mimics that mid-generation.
            kv = (b, attn.heads.n_kv, 2 * c + 1, attn.hd)
            caches = [
                LayerCache(
                    torch.zeros(kv, dtype=dtype, device=device),
                    torch.zeros(kv, dtype=dtype, device=device),
                )
                for _ in stack
            ]
            x1 = torch.randn(b, 1, h, dtype=dtype, device=device)
            cos, sin = rope(b, 1, c)

            def decode_all(x1=x1, cos=cos, sin=sin, caches=caches, c=c) -> None:
                for layer, cache in zip(stack, caches, strict=True):
                    layer(x1, cos, sin, None, cache, c)

            # Fused q/k/v and gate/up weights exactly when executor.compute.generate fuses them.
            fuse = fused_inference(deep) if spec.hidden_size <= FUSE_MAX_HIDDEN else nullcontext()
            with torch.no_grad(), fuse:
                t = timed(decode_all) / len(stack)
            out.append(OpTiming(op="decode", shape=shape, batch=b, seq_len=c, time_s=t))
        if tp == 1:
            rec(
                "sample",
                b,
                1,
                _sample_step,
                torch.randn(b, spec.vocab_size, dtype=dtype, device=device),
            )
            for c in grid.caches:
                out.append(generate_step(deep, b, c, shape, timed, device))
    return out  # fmt: skip


def optimizer_points(name: str, tp: int, layers: tuple[int, ...], dtype, device, timed):
    """The executor's optimizer work per step (zero the grads, global-norm clip in float64,
    AdamW) on the parameters of real model shards with `layers` blocks: `batch` parameters
    in `seq_len` tensors (per-tensor overhead dominates small models)."""
    import torch

    from executor.model import Transformer

    out = []
    for n in layers:
        spec = preset(name)
        if n > spec.num_hidden_layers:
            continue
        model = Transformer(spec.model_copy(update={"num_hidden_layers": n}), tp=tp, dtype=dtype)
        params = list(model.to(device).parameters())
        with torch.no_grad():
            for p in params:
                p.normal_(0, 0.02)
                p.grad = torch.zeros_like(p)
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        # Real gradients, so that the timed steps run on non-zero gradients and Adam moments
        # as in training: with all-zero moments the same AdamW step took 1.7x as long (85M
        # parameters on the 2-core EPYC: 430-510 ms against 255-295 ms after two train
        # steps). The step keeps its gradients; zeroing them is timed on its own.
        ids = torch.randint(0, model.vocab_rows[1] - model.vocab_rows[0], (8, 64), device=device)
        model(ids, torch.arange(64, device=device).expand(8, -1)).float().sum().backward()
        t = timed(partial(_clip_and_step, params, opt))
        t += timed(partial(opt.zero_grad, set_to_none=False))
        count = sum(p.numel() for p in params)
        out.append(
            OpTiming(op="optimizer", shape=ADAM_SHAPE, batch=count, seq_len=len(params), time_s=t)
        )
        del model, params, opt
    return out


def _sample_step(logits) -> None:
    """executor.compute.generate's per-token work after the logits: sample, log-prob, bookkeeping."""
    import torch

    from executor.compute.sampling import choose

    b = logits.shape[0]
    tok, lp = choose(logits, False, 1.0, 1.0, torch.rand(b, device=logits.device))
    pair = torch.empty(2, b, dtype=torch.float64, device=logits.device)
    pair[0], pair[1] = tok, lp
    done = torch.zeros(b, dtype=torch.bool, device=logits.device)
    tok = torch.where(done, 0, pair[0].long())
    lp = torch.where(done, 0.0, pair[1].float())
    bool(done.all())


def _clip_and_step(params, opt) -> None:
    """The post-backward work: global grad norm (in float64), clip, AdamW -- what
    executor.compute.train.train_step does besides the passes and zero_grad. Run again and
    again on the same gradients, which the clip keeps at norm 1 at most."""
    sq = sum(p.grad.double().pow(2).sum() for p in params)
    coef = 1.0 / (float(sq) ** 0.5 + 1e-6)
    for p in params:  # always scaled: early RL steps usually clip
        p.grad.mul_(min(coef, 1.0))
    opt.step()
