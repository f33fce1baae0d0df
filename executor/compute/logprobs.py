"""Vocab-parallel log-softmax: log-probabilities of given tokens from logits sharded over the
vocabulary, without gathering the full vocabulary. Each tp rank contributes its max, its sum
of exponentials and (if it holds it) the target's logit; three small all-reduces of
[B, T] tensors replace an all-gather of [B, T, vocab]."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from executor.parallel.collectives import Group, all_reduce_, reduce_from_tp


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, vocab_lo: int, group: Group
) -> torch.Tensor:
    """logits [B, T, V_local] for vocab rows [vocab_lo, vocab_lo + V_local), targets [B, T]
    (global ids) -> log p(target) [B, T] in float32, differentiable w.r.t. logits."""
    logits = logits.float()
    if group is None:
        # Whole vocabulary here: the fused kernel is faster and needs less memory.
        flat = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none")
        return -flat.view(targets.shape)
    # The max only stabilises exp(); it cancels in the result, so no gradient flows through it.
    top = logits.detach().amax(-1)
    all_reduce_(top, group, dist.ReduceOp.MAX)
    shifted = logits - top.unsqueeze(-1)
    sum_exp = reduce_from_tp(shifted.exp().sum(-1), group)
    v_local = logits.shape[-1]
    local = targets - vocab_lo
    held = (local >= 0) & (local < v_local)
    picked = shifted.gather(-1, local.clamp(0, v_local - 1).unsqueeze(-1)).squeeze(-1)
    picked = reduce_from_tp(picked * held, group)
    return picked - sum_exp.log()


def next_token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, vocab_lo: int, group: Group
) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) for t < T-1: [B, T-1]."""
    return token_logprobs(logits[:, :-1], input_ids[:, 1:], vocab_lo, group)
