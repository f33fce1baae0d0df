"""Concatenated q/k/v and gate/up weights for inference-only loops (generation).

On small matrices a decode step is dominated by per-op overhead, so one matmul for q, k and v
and one for gate and up (biases concatenated alike) cut a step's matmul count from 7 to 4 per layer. The copies exist only
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
            blk.self_attn.fuse()
            blk.mlp.fuse()
    try:
        yield model
    finally:
        for blk in blocks:
            blk.self_attn.unfuse()
            blk.mlp.unfuse()
