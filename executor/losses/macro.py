"""MA-RLHF (arXiv 2410.02743): PPO over macro actions, i.e. spans of consecutive tokens.

Why: with one decision per token, the end-of-response reward has to be credited back over
hundreds of steps; treating a span as one action shortens the horizon GAE works over. Only
the advantage/return computation changes: the actor and critic losses stay the token-level
`ppo.policy_loss` / `ppo.value_loss`, fed each token's macro advantage and macro return
(this is what the released code does; `ernie-research/MA-RLHF`, dschat/rlhf/ppo_trainer.py).

A segmentation is a 0/1 `starts` tensor [B, T]: 1 on the first token of each macro. Tensors
cover response positions only with a contiguous 0/1 `mask` (1 up to and including EOS). As in
the released code, the last real token is always a macro of its own, so the reward-model score
placed there is not averaged with the KL terms of other tokens.

Rules implemented:
- fixed n-gram: a macro starts at every n-th real token (positions 0, n, 2n, ...).
- perplexity (`--termination_condition ppl`): with ppl_i = exp(-logp_ref_i) the reference
  model's per-token perplexity, token i starts a macro when ppl_{i+1} > ppl_i (the released
  code's `ppl_selection`, which appends `start + i`); token 0 always starts one; ties do not
  start one. Compared on -logp_ref, which orders the same as ppl and cannot overflow.
- parsing-based: a macro starts at the token holding the first character of each sentence,
  clause, statement or line of the decoded response (`executor.data.text_units`); the
  segmentation is computed from text, so `parse_starts` takes each row's start indices.

Macro quantities are weighted sums of their tokens' quantities (`--value_function`):
"equal" (the mean; the released scripts' choice, for both values and rewards), "unit" (last
token), "position" (weights 1/(k+1) normalised, k = offset in the macro), plus "sum" (plain sum,
e.g. for rewards, keeping the total KL penalty) and "first" (the value at the macro's first
token). With n = 1 every choice reduces to token-level PPO.
"""

from __future__ import annotations

import torch

from executor.losses.ppo import gae

WEIGHTINGS = ("equal", "unit", "position", "sum", "first")


def _positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # [B, T]
    length = mask.sum(dim=1, keepdim=True).long()  # [B, 1]
    return t, length


def fixed_ngram_starts(mask: torch.Tensor, n: int) -> torch.Tensor:  # [B, T] -> [B, T]
    """Macros of n real tokens, the last real token on its own."""
    if n < 1:
        raise ValueError(f"n-gram length must be >= 1, got {n}")
    t, length = _positions(mask)
    starts = (t % n == 0) | (t == length - 1)
    return (starts & (t < length)).to(mask.dtype)


def ppl_starts(ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [B, T]
    """Token i starts a macro when the reference perplexity rises at i+1 (see module doc);
    token 0 and the last real token always start one."""
    t, length = _positions(mask)
    nll = -ref_logprobs  # ppl = exp(nll) is monotone in nll
    rises = torch.zeros_like(mask, dtype=torch.bool)
    rises[:, :-1] = nll[:, 1:] > nll[:, :-1]
    rises &= t + 1 < length  # i + 1 must be a real token
    starts = rises | (t == 0) | (t == length - 1)
    return (starts & (t < length)).to(mask.dtype)


def parse_starts(firsts: list[list[int]], mask: torch.Tensor) -> torch.Tensor:  # [B, T]
    """Macros that begin at the given token indices of each row (token 0 and the last real
    token always start one, as for the other rules)."""
    t, length = _positions(mask)
    given = torch.zeros_like(mask, dtype=torch.bool)
    for row, idx in enumerate(firsts):
        if idx:
            given[row, torch.tensor(idx, dtype=torch.long)] = True
    starts = given | (t == 0) | (t == length - 1)
    return (starts & (t < length)).to(mask.dtype)


def macro_index(starts: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx [B, T] long: the macro each token belongs to, 0 on padding; macro_mask [B, M]:
    1 on real macros). M = the most macros in any row (at least 1)."""
    real = starts * mask
    idx = (real.cumsum(dim=1) - 1).clamp(min=0).long() * (mask > 0)
    count = real.sum(dim=1).long()  # [B]
    m = max(int(count.max()) if count.numel() else 0, 1)
    macro_mask = (torch.arange(m, device=mask.device)[None, :] < count[:, None]).to(mask.dtype)
    return idx, macro_mask


def macro_reduce(
    x: torch.Tensor,  # [B, T] token quantity (rewards or values)
    starts: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T]
    weighting: str = "equal",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-macro weighted sums of `x`: (macro_x [B, M], macro_mask [B, M])."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown macro weighting {weighting!r}; expected one of {WEIGHTINGS}")
    idx, macro_mask = macro_index(starts, mask)
    t, _ = _positions(mask)
    first = (t * (starts * mask > 0)).cummax(dim=1).values  # position of the macro's first token
    k = (t - first).to(x.dtype)  # offset within the macro
    per_macro = torch.zeros(mask.shape[0], macro_mask.shape[1], dtype=x.dtype, device=x.device)
    size = per_macro.scatter_add(1, idx, mask.to(x.dtype)).gather(1, idx)  # macro length per token
    if weighting == "equal":
        w = 1.0 / size.clamp(min=1)
    elif weighting == "sum":
        w = torch.ones_like(x)
    elif weighting == "unit":
        w = (k == size - 1).to(x.dtype)
    elif weighting == "first":
        w = (k == 0).to(x.dtype)
    else:  # position
        inv = 1.0 / (k + 1.0)
        w = inv / per_macro.scatter_add(1, idx, inv * mask).gather(1, idx).clamp(min=1e-30)
    return per_macro.scatter_add(1, idx, x * w * mask), macro_mask


def macro_gae(
    rewards: torch.Tensor,  # [B, T] token rewards (e.g. ppo.shaped_rewards)
    values: torch.Tensor,  # [B, T] rollout critic values
    starts: torch.Tensor,  # [B, T] segmentation
    mask: torch.Tensor,  # [B, T]
    gamma: float,
    lam: float,
    reward_weighting: str = "equal",
    value_weighting: str = "equal",
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over macro steps, broadcast back to tokens: (advantages [B, T], returns [B, T]).

    delta_tau = R_tau + gamma V_{tau+1} - V_tau, A_tau = delta_tau + gamma lam A_{tau+1},
    return_tau = A_tau + V_tau, computed by `ppo.gae` on the compacted [B, M] macro tensors;
    every token of macro tau gets A_tau and return_tau (0 on padding)."""
    macro_r, macro_mask = macro_reduce(rewards, starts, mask, reward_weighting)
    macro_v, _ = macro_reduce(values, starts, mask, value_weighting)
    adv, ret = gae(macro_r, macro_v, macro_mask, gamma, lam)
    idx, _ = macro_index(starts, mask)
    return adv.gather(1, idx) * mask, ret.gather(1, idx) * mask
