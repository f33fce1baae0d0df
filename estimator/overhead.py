"""What the executor's own code adds around the profiled ops, per pass or per generated token.

Both are measured the same way: a whole executor pass (or generation step) on a small model
minus the ops that model's pass consists of; what is left is the call code itself (the batch
cut, positions and masks, the loss or log-prob gather, sampling, loop bookkeeping). A profile
without those timings gives 0 (passes) or the sum of the small ops (tokens).
"""

from __future__ import annotations

from estimator.lookup import ProfileLookup
from estimator.shapes import decode_stack, shard_shape


def pass_overhead(
    lk: ProfileLookup, model, dtype_bytes: int, train: bool, batch: float, seq: float
) -> float:
    """Per micro-batch pass, beyond the ops: a whole pass of a one-block model
    (executor.profiling.passes) minus that model's block, embedding and head at the same
    shape. Taken at the model's full width with its LM head, as the passes were timed."""
    op = "train_pass" if train else "infer_pass"
    if not lk.measured(op):
        return 0.0
    shape = shard_shape(model, 1, dtype_bytes).model_copy(update={"vocab_size": model.vocab_size})
    kind = "_fwd_bwd" if train else "_fwd"
    parts = sum(lk.op_time(p + kind, shape, batch, seq) for p in ("block", "embedding", "head"))
    return max(lk.op_time(op, shape, batch, seq) - parts, 0.0)


def token_overhead(lk: ProfileLookup, stack_bytes: float, full, batch: int, cache: float) -> float:
    """Per generated token, beyond the blocks: embedding, head, sampling, loop bookkeeping.
    Measured as executor.compute.generate's per-token time on a model of the profile's decode
    stack (estimator.shapes.decode_stack blocks under `stack_bytes`) minus that many blocks'
    decode; without that measurement, the sum of the embedding, head and sample ops."""
    if lk.measured("generate_step"):
        step = lk.op_time("generate_step", full, batch, cache)
        blocks = decode_stack(full, stack_bytes)
        return max(step - blocks * lk.op_time("decode", full, batch, cache), 0.0)
    emb = lk.op_time("embedding_fwd", full, batch, 1)
    return emb + lk.op_time("head_fwd", full, batch, 1) + lk.op_time("sample", full, batch, 1)
