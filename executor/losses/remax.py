"""ReMax: REINFORCE with the greedy response's reward as the baseline (arXiv 2310.10505).

Why: no critic and no GAE. For each prompt the rollout samples y ~ pi and also decodes the
greedy y_bar; r(x, y) - r(x, y_bar) is a per-prompt baseline-subtracted return that costs one
extra generation and one extra reward-model call, but no value network.

KL: ALGORITHMS.md does not say how ReMax treats the KL to the reference. We follow the
released ReMax trainer (liziniu/ReMax, step3_rlhf_finetuning/remax_trainer.py): the KL is
folded into the per-token return, not added as a loss term, and it is NOT accumulated over
later tokens: the return at token t is clip(r - r_greedy, -c, c) - beta * (logp_old_t -
logp_ref_t). With beta = 0 this is the plain ReMax advantage broadcast over the response.

Tensors cover response positions only, [B, T], with a 0/1 `mask`. The loss is a token sum
divided by a `denominator` counting RESPONSE TOKENS in the whole mini-batch (the reference
trainer divides by mask.sum()), so micro-batches on any dp layout add up to the same mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def remax_advantages(
    score: torch.Tensor,  # [B] reward of the sampled response
    greedy_score: torch.Tensor,  # [B] reward of the greedy response to the same prompt
    mask: torch.Tensor,  # [B, T]
    reward_clip: float | None = None,
) -> torch.Tensor:  # [B, T]
    """r(x, y) - r(x, y_greedy) per sequence (optionally clipped to +-reward_clip, as the
    reference trainer does to the difference), broadcast over the response's tokens."""
    diff = score - greedy_score
    if reward_clip is not None:
        diff = diff.clamp(-reward_clip, reward_clip)
    return diff[:, None].to(mask.dtype) * mask


def kl_penalised_advantages(
    advantages: torch.Tensor,  # [B, T] from remax_advantages
    logprobs: torch.Tensor,  # [B, T] rollout policy (no grad)
    ref_logprobs: torch.Tensor | None,  # [B, T] frozen reference; None: none ran (beta = 0)
    mask: torch.Tensor,  # [B, T]
    kl_coef: float,
) -> torch.Tensor:  # [B, T]
    """Fold the per-token k1 KL penalty into the return: A_t - beta * (logp_t - logp_ref_t).
    Computed without grad at rollout time, like PPO-RLHF's shaped rewards."""
    if ref_logprobs is None:
        if kl_coef != 0:
            raise ValueError("a KL penalty needs the reference's log-probs")
        return advantages * mask
    return (advantages - kl_coef * (logprobs - ref_logprobs)) * mask


@dataclass
class ReMaxStats:
    loss: torch.Tensor  # token sum / denominator
    mean_advantage: torch.Tensor  # sum of A over real tokens / denominator (adds up like loss)


def remax_loss(
    logprobs: torch.Tensor,  # [B, T] current policy, with grad
    advantages: torch.Tensor,  # [B, T] from remax_advantages (+ KL fold), treated as constant
    mask: torch.Tensor,  # [B, T]
    denominator: float,
) -> ReMaxStats:
    """REINFORCE: -sum(logp * A * mask) / denominator. No ratio and no clipping: ReMax takes
    one gradient step per rollout, so the sampling policy is the current one."""
    adv = advantages.detach()
    loss = -(logprobs * adv * mask).sum() / denominator
    return ReMaxStats(loss, (adv * mask).sum() / denominator)
