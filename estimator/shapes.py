"""Per-rank shard shapes and the FLOP/byte counts of each profiled op (the roofline inputs).

These counts serve two purposes: the analytic profile turns them into times directly, and a
measured profile uses their *ratio* to carry a timing to a shape or size it did not measure
(FLOP- or byte-scaling beyond the grid).
"""

from __future__ import annotations

import math

from estimator.profile import ShardShape
from plans import ModelSpec

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAM_BYTES_PER_PARAM = 28  # read weight, grad, m, v (4 x fp32), write weight, m, v (3 x fp32)


def shard_shape(model: ModelSpec, tp: int, dtype_bytes: int) -> ShardShape:
    """One rank's share of `model` under tensor parallelism `tp` (heads, MLP, vocab split)."""
    vocab = 1 if model.head == "value" else -(-model.vocab_size // tp)
    return ShardShape(
        model=model.name,
        tp=tp,
        hidden_size=model.hidden_size,
        intermediate_size=max(1, model.intermediate_size // tp),
        num_heads=max(1, model.num_attention_heads // tp),
        num_kv_heads=max(1, model.num_key_value_heads // tp),
        head_dim=model.head_dim,
        vocab_size=vocab,
        dtype_bytes=dtype_bytes,
    )


def block_matmul_params(s: ShardShape) -> int:
    h, d = s.hidden_size, s.head_dim
    return 2 * h * s.num_heads * d + 2 * h * s.num_kv_heads * d + 3 * h * s.intermediate_size


# Decode streams every block's weights once per token: a one-block timing repeated in a loop
# keeps that block in the CPU's caches and measured 1.6-1.9x faster per block than the 12
# distinct blocks of the 85M-parameter preset (2-core Xeon, float32). Profiles therefore time
# decode (and the generation step) through a stack of distinct blocks: enough to hold
# DECODE_STACK_BYTES of weights, at most DECODE_STACK_MAX of them (a real model's depth).
DECODE_STACK_BYTES = 2**30
DECODE_STACK_MAX = 12


def decode_stack(s: ShardShape, stack_bytes: float | None) -> int:
    """Distinct blocks a profile's `decode` and `generate_step` timings ran through, given the
    profile's `decode_stack_bytes` (None: one block, as profiles before the stack were made)."""
    if not stack_bytes:
        return 1
    per_block = block_matmul_params(s) * s.dtype_bytes
    return max(1, min(DECODE_STACK_MAX, math.ceil(stack_bytes / per_block)))


def op_size(s: ShardShape, op: str) -> float:
    """A scalar size of the shard for an op, used to pick the nearest profiled shape."""
    if op.startswith("block") or op in ("decode", "generate_step", "infer_pass", "train_pass"):
        return float(block_matmul_params(s))
    if op.startswith("head"):
        return float(s.hidden_size * s.vocab_size)
    if op.startswith("embedding"):
        return float(s.hidden_size)
    if op == "sample":
        return float(s.vocab_size * s.tp)
    return 1.0


def op_flops_bytes(op: str, s: ShardShape, batch: float, seq: float) -> tuple[float, float]:
    """(FLOPs, memory bytes) of one op invocation on shard `s` at (batch, seq_len)."""
    h, d, dt = s.hidden_size, s.head_dim, s.dtype_bytes
    qw, kvw = s.num_heads * d, s.num_kv_heads * d
    if op == "block_recompute":  # forward, forward again, backward
        f, b = op_flops_bytes("block_fwd", s, batch, seq)
        return 4 * f, 4 * b
    if op in ("infer_pass", "train_pass"):  # one block, embedding and head
        suffix = "_fwd" if op == "infer_pass" else "_fwd_bwd"
        parts = [op_flops_bytes(p + suffix, s, batch, seq) for p in ("block", "embedding", "head")]
        return sum(f for f, _ in parts), sum(b for _, b in parts)
    if op in ("block_fwd", "block_fwd_bwd"):
        tokens = batch * seq
        p = block_matmul_params(s)
        flops = 2.0 * p * tokens + 4.0 * qw * tokens * (seq + 1) / 2
        act = tokens * (4 * h + 2 * (qw + 2 * kvw) + 3 * s.intermediate_size) * dt
        nbytes = p * dt + act
        return (3 * flops, 3 * nbytes) if op == "block_fwd_bwd" else (flops, nbytes)
    if op == "generate_step":  # one block's decode plus head and sampling
        f1, b1 = op_flops_bytes("decode", s, batch, seq)
        f2, b2 = op_flops_bytes("head_fwd", s, batch, 1)
        f3, b3 = op_flops_bytes("sample", s, batch, 1)
        return f1 + f2 + f3, b1 + b2 + b3
    if op == "decode":
        p = block_matmul_params(s)
        flops = 2.0 * p * batch + 4.0 * qw * batch * (seq + 1)
        kv_read = 2.0 * batch * seq * kvw * dt
        return flops, p * dt + kv_read + batch * (4 * h + 3 * s.intermediate_size) * dt
    if op in ("head_fwd", "head_fwd_bwd"):
        tokens = batch * seq
        flops = 2.0 * h * s.vocab_size * tokens
        nbytes = h * s.vocab_size * dt + tokens * (h * dt + 3 * 4 * s.vocab_size)
        return (3 * flops, 3 * nbytes) if op == "head_fwd_bwd" else (flops, nbytes)
    if op in ("embedding_fwd", "embedding_fwd_bwd"):
        tokens = batch * seq
        nbytes = 2.0 * tokens * h * dt
        if op == "embedding_fwd_bwd":
            nbytes += 2.0 * tokens * h * dt + s.vocab_size * h * dt  # scatter-add, zero the grad
        return 0.0, nbytes
    if op == "sample":  # softmax, sort and search over the full vocabulary
        v = s.vocab_size * s.tp
        return 10.0 * batch * v, 4.0 * 6 * batch * v
    if op == "optimizer":
        return 10.0 * batch, ADAM_BYTES_PER_PARAM * batch
    raise ValueError(f"unknown op {op!r}")
