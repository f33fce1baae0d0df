"""GRPO on one rank: `group_size` samples per prompt (consecutive rows), rewards normalised
within each group, the k3 KL to the reference as a loss term; no critic."""

from __future__ import annotations

import torch

from executor.data.batching import Batch
from executor.losses.grpo import group_advantages, grpo_loss, k3_kl, token_advantages
from executor.programs import calls
from executor.programs.decoupled import proximal_inputs, ratio_inputs
from executor.programs.ppo import PPO, clipped_policy_steps
from executor.programs.program import CallEnv


def sequences(b: Batch) -> float:
    return float(b["input_ids"].shape[0])


class GRPO(PPO):
    """PPO's generation and scoring calls (with each prompt repeated group_size times); only
    the actor's training differs."""

    def train_actor(self, model, ctx, data: Batch, env: CallEnv) -> None:
        exp, c = env.exp, env.exp.grpo
        mask = data["response_mask"]
        adv = group_advantages(data["score"], exp.group_size, scale=c.scale_rewards)
        ref = data.get("ref_logprobs")  # None when kl_coef = 0 left the reference out
        batch = {
            **calls.model_batch(data),
            "old_logprobs": data["logprobs"],
            **({} if ref is None else {"ref_logprobs": ref}),
            "advantages": token_advantages(adv, mask),
            "response_mask": mask,
        }
        batch.update(proximal_inputs(model, ctx, env, data))  # stale data: decoupled PPO
        per_sample = c.loss_level == "sample"

        def terms(lp, mb):
            old, w = ratio_inputs(mb, env.staleness > 0)
            out = grpo_loss(
                lp,
                old,
                mb.get("ref_logprobs"),
                mb["advantages"],
                mb["response_mask"],
                c.eps_clip,
                c.kl_coef,
                1.0,  # train_step divides by the mini-batch's count
                c.loss_level,
                weight=w,
            )
            return out.loss, out.clip_count

        count = sequences if per_sample else (lambda b: float(b["response_mask"].sum()))
        steps, clip_frac, gaps = clipped_policy_steps(model, ctx, env, batch, terms, count)
        env.stats["reward_mean"] = float(data["score"].mean())
        if ref is not None:  # without a reference its KL is unknown, not 0: left out
            with torch.no_grad():
                k3 = k3_kl(data["logprobs"], ref, mask)  # the rollout policy's KL to the reference
            env.stats["kl_mean"] = float((k3.sum(1) / mask.sum(1).clamp(min=1)).mean())
        env.stats["response_len"] = float(mask.sum(1).mean())
        env.stats.update(calls.step_summary("actor", steps))
        if ctx.is_last_stage:
            env.stats["clip_frac"] = clip_frac
            env.stats.update(gaps)
