"""ReMax on one rank: a sampled and a greedy response per prompt, both scored; REINFORCE
on the sampled one with the greedy reward as its baseline; no critic."""

from __future__ import annotations

import torch

from executor.data.batching import Batch
from executor.losses.remax import kl_penalised_advantages, remax_advantages, remax_loss
from executor.programs import calls
from executor.programs.ppo import PPO, rollout_stats, tokens
from executor.programs.program import CallEnv

GREEDY = {f"greedy_{k}": v for k, v in calls.ROLLOUT_SCHEMA.items()}


class ReMax(PPO):
    tensors = {
        **PPO.tensors,
        "greedy_seq": tuple(GREEDY),
        "greedy_rewards": ("greedy_score",),
    }
    named_schema = {**PPO.named_schema, **GREEDY, "greedy_score": ("", torch.float32)}

    def run(self, m, model, ctx, data: Batch, env: CallEnv):
        if m.name == "actor_greedy":
            out = calls.rollout(
                model, ctx, env.exp, data["prompt_ids"], data["prompt_mask"], env.tok, 0, True
            )
            return {f"greedy_{k}": out[k] for k in calls.ROLLOUT_SCHEMA}
        if m.name == "rew_greedy":
            s = calls.score(
                model,
                ctx,
                env.exp,
                data,
                env.n_micro,
                env.rule,
                env.tok,
                prefix="greedy_",
                answers=self.answer_of,
            )
            return None if s is None else {"greedy_score": s}
        return super().run(m, model, ctx, data, env)

    def train_actor(self, model, ctx, data: Batch, env: CallEnv) -> None:
        exp = env.exp
        mask = data["response_mask"]
        adv = remax_advantages(data["score"], data["greedy_score"], mask, exp.ppo.reward_clip)
        ref = data.get("ref_logprobs")  # None when kl_coef = 0 left the reference out
        adv = kl_penalised_advantages(adv, data["logprobs"], ref, mask, exp.ppo.kl_coef)
        batch = {**calls.model_batch(data), "advantages": adv, "response_mask": mask}
        p, g = exp.prompt_len, exp.gen_len

        def loss_fn(logits: torch.Tensor, mb: Batch) -> torch.Tensor:
            lp = calls.token_logprobs(model, ctx, logits, mb)[:, p - 1 : p - 1 + g]
            return remax_loss(lp, mb["advantages"], mb["response_mask"], 1.0).loss

        steps = calls.optimizer_steps(
            model,
            ctx,
            env.opt,
            exp,
            batch,
            loss_fn,
            tokens,
            env.n_micro,
            exp.optimizer("actor").grad_clip,
        )
        kl = None if ref is None else (data["logprobs"] - ref) * mask
        env.stats.update(rollout_stats(data, kl, env))
        env.stats["greedy_reward_mean"] = float(data["greedy_score"].mean())
        env.stats.update(calls.step_summary("actor", steps))
