"""Choosing the next token from full-vocabulary logits, deterministically given a uniform
draw: every layout that computes the same logits and draws the same uniforms picks the same
tokens (no reliance on torch.multinomial's internal stream)."""

from __future__ import annotations

import torch


def top_p_pick(probs: torch.Tensor, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """probs [B, V] (rows sum to 1), u [B] uniforms in [0, 1) -> token ids [B].

    Nucleus: keep the most likely tokens whose cumulative probability before them is below
    top_p (at least one), renormalise, and invert the CDF at u."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(-1)
    if top_p < 1.0:
        keep = (cum - sorted_p) < top_p
        keep[:, 0] = True
        sorted_p = sorted_p * keep
        cum = sorted_p.cumsum(-1)
    target = (u.to(cum.dtype) * cum[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cum, target, right=True).clamp_(max=probs.shape[-1] - 1)
    return order.gather(-1, idx).squeeze(-1)


def choose(
    logits: torch.Tensor, greedy: bool, temperature: float, top_p: float, u: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, V] -> (tokens [B], log-prob of each token under softmax(logits / T) [B])."""
    logits = logits.float()
    if greedy:
        tokens = logits.argmax(-1)
        logp = torch.log_softmax(logits, -1)
    else:
        assert u is not None, "sampling needs uniforms"
        logp = torch.log_softmax(logits / temperature, -1)
        tokens = top_p_pick(logp.exp(), u, top_p)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
