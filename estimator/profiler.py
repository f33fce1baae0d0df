"""`rlhf-plan profile`: time the executor's own modules on the local device (imports torch).

Compute ops are timed on one rank's shard of a block (a tp=k entry holds 1/k of the heads and
MLP columns, built by executor.model.Transformer with no tp group, so no communication is
timed with it). Collectives are timed only when launched under torchrun with several processes
(gloo on CPU, NCCL on CUDA); rank 0 then goes on to the compute grid and writes the profile.
CPU profiles run one torch thread, as every CPU worker of the executor does.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from estimator.collective_bench import CONTEXTS, time_collectives
from estimator.profile import (
    CollectiveTiming,
    OpTiming,
    Profile,
    Roofline,
    ShardShape,
)
from estimator.shapes import DTYPE_BYTES, op_flops_bytes, shard_shape
from plans import preset


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


def _timer(
    sync: Callable[[], None], grid: Grid, clock: Callable[[], float]
) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        fn()
        sync()
        times: list[float] = []
        while len(times) < grid.min_reps or (sum(times) < grid.min_time_s and len(times) < 200):
            t0 = clock()
            fn()
            sync()
            times.append(clock() - t0)
        # On a shared CPU other jobs only ever add time, so the fastest run is the estimate
        # of an idle machine; a GPU's runs are steady and the median is kept.
        return min(times) if clock is time.process_time else statistics.median(times)

    return run


def _shard_pieces(name: str, tp: int, dtype, device):
    """Embedding, one block, final norm and head of tp rank 0 of a one-layer copy of `name`."""
    import torch

    from executor.model import Transformer
    from executor.weights import random_init_

    spec = preset(name).model_copy(update={"num_hidden_layers": 1})
    model = Transformer(spec, tp=tp, tp_rank=0, dtype=dtype).to(device)
    with torch.no_grad():
        random_init_(model, seed=0)
    return model


def _op_points(grid: Grid, model, name, tp, dt, device, dtype, timed) -> list[OpTiming]:
    import torch

    from executor.fusion import fused_inference
    from executor.generate import FUSE_MAX_HIDDEN
    from executor.logprobs import token_logprobs
    from executor.model.layers import LayerCache

    spec = model.spec
    shape = shard_shape(spec, tp, dt)
    blk, emb = model.model.layers["0"], model.model.embed_tokens
    norm, lm = model.model.norm, model.lm_head
    h, v_local = spec.hidden_size, lm.weight.shape[0]
    out: list[OpTiming] = []

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

    def block_fb(x, cos, sin, gy):
        blk(x, cos, sin, None).backward(gy)

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
                rec("block_fwd", b, s, blk, x, cos, sin, None)
                rec("embedding_fwd", b, s, embed, ids, pos, s)
                rec("head_fwd", b, s, head, x, ids)
            xg = x.clone().requires_grad_(True)
            gy = torch.randn_like(x)
            rec("block_fwd_bwd", b, s, block_fb, xg, cos, sin, gy)
            rec("embedding_fwd_bwd", b, s, emb_fb, ids, pos, s, gy)
            rec("head_fwd_bwd", b, s, head_fb, xg, ids)
        for c in grid.caches:
            attn = blk.self_attn
            # executor.generate preallocates the cache for prompt + new tokens and attends a
            # slice of it; a cache twice the attended length mimics that mid-generation.
            kv = (b, attn.heads.n_kv, 2 * c + 1, attn.hd)
            cache = LayerCache(
                torch.zeros(kv, dtype=dtype, device=device),
                torch.zeros(kv, dtype=dtype, device=device),
            )
            x1 = torch.randn(b, 1, h, dtype=dtype, device=device)
            cos, sin = rope(b, 1, c)
            # Fused q/k/v and gate/up weights exactly when executor.generate fuses them.
            fuse = fused_inference(model) if spec.hidden_size <= FUSE_MAX_HIDDEN else nullcontext()
            with torch.no_grad(), fuse:
                rec("decode", b, c, blk, x1, cos, sin, None, cache, c)
        if tp == 1:
            rec(
                "sample",
                b,
                1,
                _sample_step,
                torch.randn(b, spec.vocab_size, dtype=dtype, device=device),
            )
            for c in grid.caches:
                out.append(_generate_step(model, b, c, shape, timed, device))
    return out  # fmt: skip


def _optimizer_points(name: str, tp: int, layers: tuple[int, ...], dtype, device, timed):
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
        # One forward/backward first, as in a training process: on CPU the allocator then
        # serves the norm's float64 temporaries without page faults (2-3x faster).
        ids = torch.randint(0, model.vocab_rows[1] - model.vocab_rows[0], (8, 64), device=device)
        model(ids, torch.arange(64, device=device).expand(8, -1)).float().sum().backward()
        t = timed(partial(_clip_and_step, params, opt))
        count = sum(p.numel() for p in params)
        out.append(
            OpTiming(op="optimizer", shape=ADAM_SHAPE, batch=count, seq_len=len(params), time_s=t)
        )
        del model, params, opt
    return out


GEN_STEPS = 16


def _generate_step(model, b: int, c: int, shape: ShardShape, timed, device) -> OpTiming:
    """Per-token time of executor.generate itself on the one-block shard model: the
    difference of two runs with 2 and 2 + GEN_STEPS new tokens from prompts of length c, so
    the prefill cancels. It holds one block's decode plus embedding, head, sampling and the
    loop's bookkeeping; the cost model adds the other blocks' decode steps to it."""
    import torch

    from executor.generate import GenerationConfig, generate
    from executor.parallel import ParallelContext

    ctx = ParallelContext.single()
    prompts = torch.randint(0, model.spec.vocab_size, (b, c), device=device)

    def run(n: int) -> None:
        cfg = GenerationConfig(max_new_tokens=n, greedy=False, seed=0)
        generate(model, ctx, prompts, None, cfg)

    short, long = timed(partial(run, 2)), timed(partial(run, 2 + GEN_STEPS))
    per_step = max((long - short) / GEN_STEPS, 1e-9)
    return OpTiming(
        op="generate_step", shape=shape, batch=b, seq_len=c + GEN_STEPS // 2, time_s=per_step
    )


def _sample_step(logits) -> None:
    """executor.generate's per-token work after the logits: sample, log-prob, bookkeeping."""
    import torch

    from executor.sampling import choose

    b = logits.shape[0]
    tok, lp = choose(logits, False, 1.0, 1.0, torch.rand(b, device=logits.device))
    pair = torch.empty(2, b, dtype=torch.float64, device=logits.device)
    pair[0], pair[1] = tok, lp
    done = torch.zeros(b, dtype=torch.bool, device=logits.device)
    tok = torch.where(done, 0, pair[0].long())
    lp = torch.where(done, 0.0, pair[1].float())
    bool(done.all())


def _clip_and_step(params, opt) -> None:
    """zero_grad(set_to_none=False), then the post-backward work: global grad norm (in
    float64), clip, AdamW -- what executor.train.train_step does besides the passes."""
    opt.zero_grad(set_to_none=False)
    sq = sum(p.grad.double().pow(2).sum() for p in params)
    coef = 1.0 / (float(sq) ** 0.5 + 1e-6)
    for p in params:  # always scaled: early RL steps usually clip
        p.grad.mul_(min(coef, 1.0))
    opt.step()


def fit_roofline(ops: list[OpTiming], intra: float, inter: float) -> Roofline:
    """Sustained FLOP/s and bytes/s: the best any compute-heavy / memory-heavy op reached."""
    flops = [
        op_flops_bytes(t.op, t.shape, t.batch, t.seq_len)[0] / t.time_s
        for t in ops
        if t.op.startswith("block")
    ]
    mem = [
        op_flops_bytes(t.op, t.shape, t.batch, t.seq_len)[1] / t.time_s
        for t in ops
        if t.op in ("decode", "optimizer")
    ]
    return Roofline(flops_per_s=max(flops, default=1e9), memory_bytes_per_s=max(mem, default=1e9),
                    intra_node_bytes_per_s=intra, inter_node_bytes_per_s=inter)  # fmt: skip


def fresh_memory_rate(device: str = "cpu", nbytes: int = 256 * 2**20, reps: int = 3) -> float:
    """Bytes/s of filling a newly allocated buffer (on a CPU mostly page faults), best of
    `reps`: what a reallocation's new shards and the DP all-reduce's flat buffer cost here."""
    import torch

    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        buf = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        buf.fill_(1.0)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        del buf
    return nbytes / best


def copy_memory_rate(device: str = "cpu", nbytes: int = 256 * 2**20, reps: int = 5) -> float:
    """Bytes/s of copying between two buffers already in use, best of `reps`: what the local
    copies, packing and unpacking of a reallocation into reused memory cost here."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)  # touched, so no page faults are timed
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def memory_rates(device: str) -> dict[str, float]:
    """The roofline's measured memory rates (fields of estimator.profile.Roofline)."""
    return {
        "fresh_memory_bytes_per_s": fresh_memory_rate(device),
        "copy_memory_bytes_per_s": copy_memory_rate(device),
    }


def with_memory_rates(base: Profile, rates: dict[str, float], command: str) -> Profile:
    """`base` with measured memory rates (fields of Roofline, as `memory_rates` gives them),
    the change recorded in `refinements`; everything else is kept."""
    import torch

    stamp = datetime.now(UTC)
    note = ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in rates.items())
    return base.refined(
        {"roofline": base.roofline.model_copy(update=rates)},
        "memory",
        stamp,
        command,
        f"measured with one torch thread (torch {torch.__version__}): {note}",
    )


def main(argv: list[str] | None = None) -> None:
    """Measure this CPU's memory-copy rate (one torch thread) and write it into the profiles
    named on the command line, in place: how a profile made before the rate was part of it
    gets a measured value without timing everything again (its other figures are kept)."""
    import sys

    import torch

    from estimator.profile import load_profile, save_profile

    paths = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)
    rates = {"copy_memory_bytes_per_s": copy_memory_rate("cpu")}
    command = "python -m estimator.profiler " + " ".join(paths)
    for path in paths:
        save_profile(with_memory_rates(load_profile(path), rates, command), path)
        print(f"{path}: " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in rates.items()))


def _link_rates(colls: list[CollectiveTiming]) -> tuple[float, float]:
    def best(scope: str) -> float:
        rates = [c.bytes / c.time_s for c in colls if c.scope == scope and c.op == "send_recv"]
        return max(rates, default=0.0)

    intra, inter = best("intra"), best("inter")
    return intra or 1e9, inter or intra or 1e8


def run_profile(device: str, quick: bool, command: str, progress=None) -> Profile | None:
    """Measure; returns None on ranks other than 0 of a torchrun launch."""
    import torch

    dev_type = "cuda" if device == "cuda" else "cpu"
    if dev_type == "cpu":
        torch.set_num_threads(1)
    grid = GRIDS[(dev_type, quick)]
    dtype = torch.float32 if dev_type == "cpu" else torch.bfloat16
    dtype_name = "float32" if dev_type == "cpu" else "bfloat16"
    dt = DTYPE_BYTES[dtype_name]
    torch_dev = torch.device(dev_type)
    sync = torch.cuda.synchronize if dev_type == "cuda" else (lambda: None)
    colls: list[CollectiveTiming] = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        colls = time_collectives(dev_type, quick, progress)
        if colls is None:
            return None
    # On CPU (one thread) the process's CPU time is the wall time of an idle machine, and
    # stays so when other jobs share the cores; a GPU is timed by the wall clock.
    clock = time.process_time if dev_type == "cpu" else time.perf_counter
    timed = _timer(sync, grid, clock)
    jobs = [
        (m, tp) for m in grid.models for tp in grid.tps if preset(m).num_key_value_heads % tp == 0
    ]
    rounds = grid.rounds
    task = progress.add_task("compute ops", total=rounds * (len(jobs) + 1)) if progress else None
    best: dict[tuple, OpTiming] = {}
    # Several passes over the whole grid, keeping each point's fastest: a burst of other
    # work on a shared machine then spoils at most one pass of a point.
    for r in range(rounds):
        ops: list[OpTiming] = []
        for name, tp in jobs:
            if progress:
                progress.update(task, description=f"{name} tp={tp} ({r + 1}/{rounds})")
            model = _shard_pieces(name, tp, dtype, torch_dev)
            ops += _op_points(grid, model, name, tp, dt, torch_dev, dtype, timed)
            del model
            ops += _optimizer_points(name, tp, grid.opt_layers, dtype, torch_dev, timed)
            if progress:
                progress.advance(task)
        for t in ops:
            key = (t.op, t.shape, t.batch, t.seq_len)
            if key not in best or t.time_s < best[key].time_s:
                best[key] = t
        if progress:
            progress.advance(task)
    ops = list(best.values())
    if dev_type == "cuda":
        dev_name = torch.cuda.get_device_name()
        dev_kind = _device_kind(dev_name)
    else:
        dev_name, dev_kind = platform.processor() or _cpu_name(), "cpu"
    stamp = datetime.now(UTC)
    return Profile(
        kind="measured",
        id=f"{dev_kind}-{stamp:%Y%m%d-%H%M%S}{'-quick' if quick else ''}",
        device=dev_kind,
        device_name=dev_name,
        dtype=dtype_name,
        threads=torch.get_num_threads() if dev_type == "cpu" else None,
        model_code="executor.model.Transformer",
        clock="process_time" if dev_type == "cpu" else "perf_counter",
        created=stamp.isoformat(timespec="seconds"),
        command=command,
        torch_version=torch.__version__,
        roofline=fit_roofline(ops, *_link_rates(colls)).model_copy(update=memory_rates(dev_type)),
        ops=ops,
        collectives=colls,
    )


def run_collectives_into(
    base: Profile, device: str, quick: bool, command: str, progress=None
) -> Profile | None:
    """Time the collectives only (under torchrun) and return `base` with them: its compute
    timings are kept, its collective tables and link rates replaced, and the change recorded
    in `refinements`. None on ranks other than 0."""
    import torch

    dev_type = "cuda" if device == "cuda" else "cpu"
    if dev_type == "cpu":
        torch.set_num_threads(1)
    colls = time_collectives(dev_type, quick, progress)
    if colls is None:
        return None
    intra, inter = _link_rates(colls)
    stamp = datetime.now(UTC)
    sizes = sorted({c.group_size for c in colls})
    context = (
        "; group collectives timed in context, back to back after compute "
        f"bursts of {', '.join(f'{c * 1e3:g}' for c in CONTEXTS[quick])} ms"
        if dev_type == "cpu"
        else ""
    )
    note = (
        f"{len(colls)} collective timings over group sizes {', '.join(map(str, sizes))} "
        f"({'gloo' if dev_type == 'cpu' else 'nccl'}, torch {torch.__version__}{context}); "
        f"fresh-memory and memory-copy rates measured; compute timings of {base.id} kept"
    )
    rates = {"intra_node_bytes_per_s": intra, "inter_node_bytes_per_s": inter}
    return base.refined(
        {
            "id": f"{base.id.split('+')[0]}+coll-{stamp:%Y%m%d-%H%M%S}",
            "collectives": colls,
            "roofline": base.roofline.model_copy(update={**rates, **memory_rates(dev_type)}),
        },
        "collectives",
        stamp,
        command,
        note,
    )


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def _device_kind(name: str) -> str:
    low = name.lower()
    for kind in ("h200", "h100", "a100", "l40s"):
        if kind in low:
            return kind
    return "cuda"


if __name__ == "__main__":
    main()
