"""DPO and IPO: preference losses on sequence log-probs, no reward model and no rollouts.

Why: DPO (arXiv 2305.18290) turns the KL-regularised reward objective into a classification
loss on preference pairs; IPO (arXiv 2310.12036) regresses the same log-ratio margin to a fixed
target instead, which does not push the margin to infinity on deterministic preferences.

Both use h = (l_w - l_w^ref) - (l_l - l_l^ref), where l is a SEQUENCE log-prob (sum over the
response tokens). Losses are sums over pairs divided by a `denominator` counting PAIRS in the
whole mini-batch, so micro-batches on any data-parallel layout add up to the same mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sequence_logprobs(
    logprobs: torch.Tensor,  # [B, T] per-token log-probs of the response tokens
    mask: torch.Tensor,  # [B, T] 0/1, 1 on real response tokens
) -> torch.Tensor:  # [B]
    """log pi(y|x) = sum of the response tokens' log-probs (padding contributes 0)."""
    return (logprobs * mask).sum(dim=1)


def log_ratio_margin(
    chosen: torch.Tensor,  # [N] policy sequence log-probs
    rejected: torch.Tensor,  # [N]
    ref_chosen: torch.Tensor,  # [N] reference sequence log-probs
    ref_rejected: torch.Tensor,  # [N]
) -> torch.Tensor:  # [N]
    """h = (l_w - l_w^ref) - (l_l - l_l^ref)."""
    return (chosen - ref_chosen) - (rejected - ref_rejected)


@dataclass
class PreferenceStats:
    loss: torch.Tensor  # sum over pairs / denominator
    correct: torch.Tensor  # count of pairs whose implicit reward margin is > 0
    chosen_reward: torch.Tensor  # sum of beta (l_w - l_w^ref) / denominator
    rejected_reward: torch.Tensor  # sum of beta (l_l - l_l^ref) / denominator
    margin: torch.Tensor  # chosen_reward - rejected_reward (mean implicit reward margin)


def _stats(
    loss_sum: torch.Tensor,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    denominator: float,
) -> PreferenceStats:
    with torch.no_grad():
        rc = beta * (chosen - ref_chosen)  # implicit rewards, as OpenRLHF's DPOLoss reports
        rr = beta * (rejected - ref_rejected)
        c, r = rc.sum() / denominator, rr.sum() / denominator
        correct = (rc > rr).sum()
    return PreferenceStats(loss_sum / denominator, correct, c, r, c - r)


def dpo_loss(
    chosen: torch.Tensor,  # [N] policy sequence log-probs, with grad
    rejected: torch.Tensor,  # [N]
    ref_chosen: torch.Tensor,  # [N] reference, no grad
    ref_rejected: torch.Tensor,  # [N]
    beta: float,
    denominator: float,
    label_smoothing: float = 0.0,
) -> PreferenceStats:
    """-log sigmoid(beta h) per pair; with label_smoothing eps (cDPO) the pair is taken to be
    flipped with probability eps: -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
    beta scales the whole difference, reference terms included."""
    z = beta * log_ratio_margin(chosen, rejected, ref_chosen, ref_rejected)
    per_pair = -F.logsigmoid(z)
    if label_smoothing:
        per_pair = (1.0 - label_smoothing) * per_pair - label_smoothing * F.logsigmoid(-z)
    return _stats(per_pair.sum(), chosen, rejected, ref_chosen, ref_rejected, beta, denominator)


def ipo_loss(
    chosen: torch.Tensor,  # [N] policy sequence log-probs, with grad
    rejected: torch.Tensor,  # [N]
    ref_chosen: torch.Tensor,  # [N]
    ref_rejected: torch.Tensor,  # [N]
    beta: float,
    denominator: float,
) -> PreferenceStats:
    """(h - 1/(2 beta))^2 per pair: beta sets only the target margin (OpenRLHF ipo=True).
    Stats report the implicit rewards beta (l - l^ref) as for DPO."""
    h = log_ratio_margin(chosen, rejected, ref_chosen, ref_rejected)
    per_pair = (h - 1.0 / (2.0 * beta)) ** 2
    return _stats(per_pair.sum(), chosen, rejected, ref_chosen, ref_rejected, beta, denominator)
