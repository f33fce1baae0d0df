"""The actor's train call on data of an older policy (bounded staleness, docs/ASYNC.md): the
proximal log-probs and the behaviour weights decoupled PPO needs, computed once per train
call before its first optimizer step. With k = 0 nothing here runs."""

from __future__ import annotations

import torch

from executor.data.batching import Batch
from executor.losses.ppo import behaviour_weights
from executor.parallel.collectives import all_gather_dim
from executor.programs import calls
from executor.programs.program import CallEnv
from plans.slicing import split_sizes


def proximal_inputs(model, ctx, env: CallEnv, data: Batch) -> Batch:
    """{} when the batch is on-policy (k = 0). Else the whole batch's `prox_logprobs` (the
    actor's log-probs at the start of this train call) and `behav_weight` (pi_prox / pi_behav,
    0 above the cap) [B, G], on the last pipeline stage (zeros elsewhere: the loss, their
    only reader, runs there); their statistics go to env.stats."""
    if env.staleness == 0:
        return {}
    mask = data["response_mask"]  # [B, G]
    # This dp rank's share [b, G], under the weights before any step of this call.
    share = calls.response_logprobs(model, ctx, env.exp, data, env.n_micro)
    if share is None:  # not the last stage
        zeros = torch.zeros_like(mask, dtype=torch.float32)
        return {"prox_logprobs": zeros, "behav_weight": torch.zeros_like(zeros)}
    sizes = split_sizes(mask.shape[0], ctx.dp_size)
    prox = all_gather_dim(share.contiguous(), ctx.dp_group, sizes, dim=0)  # [B, G]
    b = behaviour_weights(prox, data["logprobs"], mask, env.exp.async_.importance_cap)
    with torch.no_grad():
        real = float(mask.sum())
        env.stats["behav_dropped_frac"] = float(b.dropped) / max(real, 1.0)
        env.stats["behav_weight_mean"] = float(b.weight.sum()) / max(float(b.kept.sum()), 1.0)
    return {"prox_logprobs": prox, "behav_weight": b.weight}


def ratio_inputs(mb: Batch, stale: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The log-probs the clipped ratio is taken against and the per-token weight: the
    proximal policy's and the behaviour weights on stale data, else the rollout's and none."""
    if stale:
        return mb["prox_logprobs"], mb["behav_weight"]
    return mb["old_logprobs"], None
