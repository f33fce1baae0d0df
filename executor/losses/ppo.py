"""PPO for RLHF: shaped rewards, GAE, whitening, clipped policy and value losses.

All tensors cover response positions only: [B, T] with T = generated tokens and a 0/1 `mask`
that is 1 on real response tokens (up to and including EOS) and 0 on padding after it.
Formulas and defaults: DeepSpeed-Chat and OpenRLHF (see ALGORITHMS.md in the design notes).

Losses are token sums divided by a `denominator` the caller gives: the number of response
tokens in the whole mini-batch. Every micro-batch on every dp rank then adds up to the same
token-level mean, whatever the layout, which is what makes layouts comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def shaped_rewards(
    logprobs: torch.Tensor,  # [B, T] rollout policy
    ref_logprobs: torch.Tensor | None,  # [B, T]; None: no reference ran (kl_coef = 0)
    score: torch.Tensor,  # [B] reward-model score of the whole response
    mask: torch.Tensor,  # [B, T]
    kl_coef: float,
    reward_clip: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token reward -beta * (logp - logp_ref), plus the clipped score on the last real token.
    Returns (rewards [B, T], per-token k1 KL [B, T], None without a reference)."""
    if ref_logprobs is None:
        if kl_coef != 0:
            raise ValueError("a KL penalty needs the reference's log-probs")
        kl, rewards = None, torch.zeros_like(logprobs)  # the penalty is exactly 0
    else:
        kl = (logprobs - ref_logprobs) * mask
        rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # [B]
    bonus = score.clamp(-reward_clip, reward_clip) * (mask.sum(dim=1) > 0)
    rewards = rewards.scatter_add(1, last[:, None], bonus[:, None].to(rewards.dtype))
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation backwards over response positions.
    delta_t = r_t + gamma V_{t+1} - V_t (V after the last real token is 0);
    A_t = delta_t + gamma lam A_{t+1}; returns R_t = A_t + V_t. Padding gets 0."""
    values = values * mask
    rewards = rewards * mask
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        adv[:, t] = next_adv
        next_value = values[:, t]
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over all masked tokens of the rollout batch (OpenRLHF; var floored at 1e-8)."""
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    out = (x - mean) * torch.rsqrt(var.clamp(min=1e-8))
    if not shift_mean:
        out = out + mean
    return out * mask


@dataclass
class PolicyStats:
    loss: torch.Tensor
    clip_frac: torch.Tensor  # share of tokens whose ratio was clipped (token sum / denominator)
    approx_kl: torch.Tensor  # mean of (logp_old - logp) (token sum / denominator)


def policy_loss(
    logprobs: torch.Tensor,  # [B, T] current policy, with grad
    old_logprobs: torch.Tensor,  # [B, T] rollout policy
    advantages: torch.Tensor,  # [B, T]
    mask: torch.Tensor,
    eps_clip: float,
    denominator: float,
    weight: torch.Tensor | None = None,  # [B, T] behaviour weights (decoupled PPO)
) -> PolicyStats:
    """max(-A rho, -A clip(rho, 1-eps, 1+eps)) summed over tokens / denominator; with a
    `weight` (behaviour_weights, for data of an older policy) each token's term is multiplied
    by it and `old_logprobs` are the proximal policy's."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - eps_clip, 1.0 + eps_clip)
    per_token = torch.maximum(unclipped, clipped)
    if weight is not None:  # without one: the synchronous code path, unchanged
        per_token = per_token * weight
    with torch.no_grad():
        clip_frac = ((clipped > unclipped).float() * mask).sum() / denominator
        approx_kl = ((old_logprobs - logprobs) * mask).sum() / denominator
    return PolicyStats((per_token * mask).sum() / denominator, clip_frac, approx_kl)


@dataclass
class BehaviourWeights:
    """Decoupled PPO's correction of data sampled by an older (behaviour) policy."""

    weight: torch.Tensor  # [B, T] pi_prox / pi_behav on kept tokens, 0 on dropped and padding
    kept: torch.Tensor  # [B, T] 0/1: real tokens whose weight is within the cap
    dropped: torch.Tensor  # number of real tokens left out by the cap


def behaviour_weights(
    prox_logprobs: torch.Tensor,  # [B, T] the actor at the start of its train call
    behav_logprobs: torch.Tensor,  # [B, T] the policy that generated the batch
    mask: torch.Tensor,  # [B, T]
    cap: float,
) -> BehaviourWeights:
    """w = exp(prox - behav) per token; tokens with w > cap are left out (w = 0), as AReaL
    does (docs/ASYNC.md). No gradient: both log-probs are fixed for the whole train call."""
    with torch.no_grad():
        w = torch.exp(prox_logprobs - behav_logprobs)
        kept = ((w <= cap) & (mask > 0)).to(mask.dtype)
        dropped = (mask * (1 - kept)).sum()
        # where, not w * kept: a dropped weight may be inf, and inf * 0 is nan
        return BehaviourWeights(torch.where(kept > 0, w, torch.zeros_like(w)), kept, dropped)


def decoupled_policy_loss(
    logprobs: torch.Tensor,  # [B, T] current policy, with grad
    prox_logprobs: torch.Tensor,  # [B, T] proximal policy
    behav_logprobs: torch.Tensor,  # [B, T] behaviour policy (the generating version)
    advantages: torch.Tensor,  # [B, T]
    mask: torch.Tensor,
    eps_clip: float,
    cap: float,
    denominator: float,
) -> PolicyStats:
    """Decoupled PPO (AReaL, docs/ASYNC.md): per token
    w * max(-A r, -A clip(r, 1-eps, 1+eps)) with r = pi / pi_prox and w = pi_prox / pi_behav
    (0 above `cap`), summed over tokens / denominator. With prox == behav it is policy_loss."""
    w = behaviour_weights(prox_logprobs, behav_logprobs, mask, cap).weight
    return policy_loss(logprobs, prox_logprobs, advantages, mask, eps_clip, denominator, w)


def value_loss(
    values: torch.Tensor,  # [B, T] current critic, with grad
    old_values: torch.Tensor,  # [B, T] rollout values
    returns: torch.Tensor,  # [B, T]
    mask: torch.Tensor,
    value_clip: float,
    denominator: float,
) -> torch.Tensor:
    """0.5 * max((V - R)^2, (V_clip - R)^2) summed over tokens / denominator."""
    v_clip = old_values + (values - old_values).clamp(-value_clip, value_clip)
    per_token = torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2)
    return 0.5 * (per_token * mask).sum() / denominator
