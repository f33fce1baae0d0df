"""Anchored DPO (ADPO, arXiv 2510.18913): KL(q || softmax((l - l_anchor) / tau_anc)).

Why: instead of pushing a pair's log-ratio margin through a sigmoid (DPO), ADPO fits a target
distribution q over a candidate list S = {y_1..y_K} of one prompt with the model's "anchored"
distribution p(i|S) = softmax_i(s), s_i = (l_i - l_i^anchor) / tau_anc, where l is a sequence
log-prob. Soft or reward-derived targets make it tolerant of noisy labels, and tau_anc sets
the trust region around the anchor (curvature ~ 1/tau_anc^2).

The anchor is just the tensor the caller passes as `anchor_*`: the frozen reference's sequence
log-probs (fixed anchor, offline) or the rollout policy's (on-policy / dynamic anchor).

- Pairwise (K = 2) with a soft label q = P(chosen preferred):
  KL = -[q log sigmoid(z) + (1-q) log sigmoid(-z)] - H(q), z = s_w - s_l.
  With q = 1 it is DPO with beta = 1/tau_anc.
- Listwise with rewards: q = softmax(zscore(r) / beta_r) within the list (the verlm
  implementation: z-score with the unbiased std, a list with std < 1e-8 gets q uniform).

Losses return the KL itself (cross-entropy minus the target's entropy): the same gradient as
the cross-entropy, but 0 at the optimum, which makes logs readable. Losses are sums divided by a
`denominator` counting PAIRS (pairwise) or CANDIDATE LISTS (listwise) in the whole mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def anchored_logits(
    logps: torch.Tensor,  # [...] policy sequence log-probs
    anchor_logps: torch.Tensor,  # [...] anchor sequence log-probs (reference or rollout policy)
    tau: float,
) -> torch.Tensor:  # [...]
    """s = (l - l_anchor) / tau_anc."""
    return (logps - anchor_logps) / tau


def reward_targets(
    rewards: torch.Tensor,  # [P, K] one row per candidate list
    beta_r: float,
    mask: torch.Tensor | None = None,  # [P, K] 0/1, 1 on real candidates (ragged lists)
    standardise: bool = True,
) -> torch.Tensor:  # [P, K], rows sum to 1, 0 on padding
    """q = softmax(zscore(r) / beta_r) per list; z-score over the real candidates with the
    unbiased std (std < 1e-8, e.g. all rewards equal, counts as 1). Lower beta_r = sharper q."""
    m = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype)
    valid = m > 0
    n = m.sum(dim=1, keepdim=True)
    x = rewards * m
    if standardise:
        mean = x.sum(dim=1, keepdim=True) / n.clamp(min=1)
        var = (((rewards - mean) * m) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)
        std = var.sqrt()
        std = torch.where(std < 1e-8, torch.ones_like(std), std)
        x = (rewards - mean) / std
    logits = torch.where(valid, x / beta_r, torch.full_like(x, float("-inf")))
    return torch.softmax(logits, dim=1).nan_to_num(0.0)


@dataclass
class ADPOStats:
    loss: torch.Tensor  # sum of KL(q || p) / denominator
    correct: torch.Tensor  # pairwise: pairs with z > 0; listwise: lists whose argmax p = argmax q
    margin: torch.Tensor | None = None  # pairwise only: sum of z = s_w - s_l / denominator


def adpo_listwise_loss(
    logps: torch.Tensor,  # [P, K] policy sequence log-probs, with grad
    anchor_logps: torch.Tensor,  # [P, K] anchor sequence log-probs, no grad
    targets: torch.Tensor,  # [P, K] q, rows sum to 1 (e.g. reward_targets)
    tau: float,
    denominator: float,
    mask: torch.Tensor | None = None,  # [P, K] 0/1 for ragged lists; q must be 0 where 0
) -> ADPOStats:
    """sum over lists of KL(q || softmax(s)) / denominator, s the anchored logits."""
    s = anchored_logits(logps, anchor_logps, tau)
    valid = torch.ones_like(s, dtype=torch.bool) if mask is None else mask > 0
    s = torch.where(valid, s, torch.full_like(s, float("-inf")))
    log_p = torch.log_softmax(s, dim=1)
    q = targets.detach()
    cross = -torch.where(valid, q * log_p, torch.zeros_like(log_p)).sum(dim=1)  # [P]
    neg_entropy = torch.xlogy(q, q).sum(dim=1)  # [P], 0 for one-hot q
    with torch.no_grad():
        correct = (s.argmax(dim=1) == q.masked_fill(~valid, -1.0).argmax(dim=1)).sum()
    return ADPOStats((cross + neg_entropy).sum() / denominator, correct)


def adpo_pairwise_loss(
    chosen: torch.Tensor,  # [N] policy sequence log-probs, with grad
    rejected: torch.Tensor,  # [N]
    anchor_chosen: torch.Tensor,  # [N] anchor sequence log-probs, no grad
    anchor_rejected: torch.Tensor,  # [N]
    tau: float,
    denominator: float,
    q: torch.Tensor | float = 1.0,  # [N] or scalar: probability that `chosen` is preferred
) -> ADPOStats:
    """Anchored soft-DPO: KL(Bernoulli(q) || Bernoulli(sigmoid(z))) per pair, summed / denominator,
    z = ((l_w - l_w^anc) - (l_l - l_l^anc)) / tau_anc. q = 1 gives -log sigmoid(z) = DPO(beta=1/tau)."""
    z = anchored_logits(chosen, anchor_chosen, tau) - anchored_logits(
        rejected, anchor_rejected, tau
    )
    qt = torch.as_tensor(q, dtype=z.dtype, device=z.device).expand_as(z)
    per_pair = -(qt * F.logsigmoid(z) + (1.0 - qt) * F.logsigmoid(-z))
    per_pair = per_pair + torch.xlogy(qt, qt) + torch.xlogy(1.0 - qt, 1.0 - qt)
    with torch.no_grad():
        correct, margin = (z > 0).sum(), z.sum() / denominator
    return ADPOStats(per_pair.sum() / denominator, correct, margin)
