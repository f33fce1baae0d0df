"""GRPO: group-normalised advantages, the k3 KL estimator, and the clipped policy loss.

Why a group baseline: GRPO drops the critic and samples G responses per prompt; each response's
advantage is its reward relative to its siblings (DeepSeekMath, arXiv 2402.03300). The KL to the
reference is a loss term (k3 estimator), not folded into the reward as in PPO-RLHF.

Layout: the rollout batch holds B = P * G responses, the G responses of one prompt consecutive
(rows p*G .. p*G+G-1). Token tensors cover response positions only, [B, T], with a 0/1 `mask`.

Reductions (all losses are sums divided by a caller-given `denominator`, so micro-batches on any
number of data-parallel ranks add up to the mean over the whole mini-batch):
- "sample" (the paper): token mean within each response, then mean over responses; the
  denominator counts SEQUENCES in the mini-batch.
- "token" (DAPO): one mean over all tokens; the denominator counts RESPONSE TOKENS. Dr. GRPO's
  "drop 1/|o_i|" is this level with denominator = sequences * a fixed generation budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(
    rewards: torch.Tensor,  # [P * G] scalar reward per response, groups consecutive
    group_size: int,
    eps: float = 1e-9,
    scale: bool = True,
) -> torch.Tensor:  # [P * G]
    """(r - group mean) / (group std + eps), or r - group mean with `scale=False` (Dr. GRPO).

    The std is the unbiased (Bessel-corrected) one, as `torch.std` and OpenRLHF's `group_norm`
    use; it matters for small G. A group with identical rewards gets advantage 0 (hence eps,
    OpenRLHF's 1e-9). Scaling needs G >= 2, since the unbiased std of one sample is undefined.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}"
        )
    if scale and group_size < 2:
        raise ValueError("std-scaled group advantages need a group size of at least 2")
    groups = rewards.view(-1, group_size)  # [P, G]
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, unbiased=True, keepdim=True) + eps)
    return centred.reshape(-1)


def token_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Outcome supervision: every token of response i gets the response's advantage. [B] -> [B, T]."""
    return advantages[:, None].to(mask.dtype) * mask


def k3_kl(
    logprobs: torch.Tensor,  # [B, T] current policy
    ref_logprobs: torch.Tensor,  # [B, T] frozen reference
    mask: torch.Tensor,  # [B, T]
) -> torch.Tensor:  # [B, T], >= 0, 0 on padding
    """exp(ref - logp) - (ref - logp) - 1: an unbiased, non-negative per-token KL(pi || ref)
    estimate, low-variance compared with k1 = logp - ref (which can be negative per token)."""
    d = (ref_logprobs - logprobs) * mask  # masked first so padding contributes exactly 0
    return (torch.exp(d) - d - 1.0) * mask


def aggregate(
    per_token: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T]
    denominator: float,
    level: str = "sample",
) -> torch.Tensor:
    """Sum of per-sequence token means / denominator ("sample"; denominator counts sequences),
    or sum over all tokens / denominator ("token"; denominator counts response tokens).
    A response with no tokens contributes 0 at sample level."""
    if level == "sample":
        lengths = mask.sum(dim=1).clamp(min=1)  # [B]
        return ((per_token * mask).sum(dim=1) / lengths).sum() / denominator
    if level == "token":
        return (per_token * mask).sum() / denominator
    raise ValueError(f"unknown aggregation level {level!r}; expected 'sample' or 'token'")


@dataclass
class GRPOStats:
    loss: torch.Tensor  # pg_loss + beta * kl, the scalar to backpropagate
    pg_loss: torch.Tensor  # clipped surrogate alone, same aggregation as loss
    kl: torch.Tensor | None  # k3 KL to the reference, same aggregation as loss; None without one
    clip_count: torch.Tensor  # number of real tokens whose clipped branch was active
    token_count: torch.Tensor  # number of real tokens (clip fraction = clip_count / token_count)


def grpo_loss(
    logprobs: torch.Tensor,  # [B, T] current policy, with grad
    old_logprobs: torch.Tensor,  # [B, T] rollout policy
    ref_logprobs: torch.Tensor | None,  # [B, T] frozen reference; None: none ran (beta = 0)
    advantages: torch.Tensor,  # [B, T] (token_advantages of group_advantages)
    mask: torch.Tensor,  # [B, T]
    eps_clip: float,
    beta: float,
    denominator: float,
    level: str = "sample",
    eps_clip_high: float | None = None,
    weight: torch.Tensor | None = None,
) -> GRPOStats:
    """max(-A rho, -A clip(rho, 1-eps, 1+eps_high)) + beta * k3 per token, aggregated by `level`.

    This is the negated GRPO objective. `eps_clip_high` defaults to `eps_clip` (DAPO's
    "clip-higher" uses a larger one). With beta = 0 the reference log-probs are unused, and
    may be None: the loss is then the clipped surrogate alone.
    A `weight` [B, T] (executor.losses.ppo.behaviour_weights, for data of an older policy)
    multiplies each token's clipped surrogate, not the KL term; `old_logprobs` are then the
    proximal policy's (decoupled PPO, docs/ASYNC.md).
    """
    high = eps_clip if eps_clip_high is None else eps_clip_high
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - eps_clip, 1.0 + high)
    surrogate = torch.maximum(unclipped, clipped)
    if weight is not None:  # without one: the synchronous code path, unchanged
        surrogate = surrogate * weight
    pg = aggregate(surrogate, mask, denominator, level)
    with torch.no_grad():
        clip_count = ((clipped > unclipped).to(mask.dtype) * mask).sum()
    if ref_logprobs is None:
        if beta != 0:
            raise ValueError("a KL term needs the reference's log-probs")
        return GRPOStats(pg, pg.detach(), None, clip_count, mask.sum())
    kl_term = aggregate(k3_kl(logprobs, ref_logprobs, mask), mask, denominator, level)
    return GRPOStats(pg + beta * kl_term, pg.detach(), kl_term.detach(), clip_count, mask.sum())
