"""Concatenated q/k/v and gate/up weights for inference-only loops (generation).

On small matrices a decode step is dominated by per-op overhead, so one matmul for q, k and v
and one for gate and up cut a step's matmul count from 7 to 4 per layer. The copies exist only
inside the `with` block (they would double those weights' memory) and are ignored whenever
autograd is on, so training always sees the real parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from executor.model import Transformer


@contextmanager
def fused_inference(model: Transformer) -> Iterator[Transformer]:
    blocks = list(model.model.layers.values())
    with torch.no_grad():
        for blk in blocks:
            a, m = blk.self_attn, blk.mlp
            a.fused_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            m.fused_gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight])
    try:
        yield model
    finally:
        for blk in blocks:
            blk.self_attn.fused_qkv = None
            blk.mlp.fused_gate_up = None
