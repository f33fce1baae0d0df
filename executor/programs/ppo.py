"""PPO on one rank: generate, score with the reference, reward and critic, then train the
actor and the critic on the same shaped rewards and advantages."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from executor.data.batching import Batch
from executor.data.sources import digit_reward
from executor.data.text_units import token_unit_starts
from executor.losses.macro import fixed_ngram_starts, macro_gae, parse_starts, ppl_starts
from executor.losses.ppo import gae, policy_loss, shaped_rewards, value_loss, whiten
from executor.parallel.collectives import all_reduce_
from executor.programs import calls
from executor.programs.decoupled import proximal_inputs, ratio_inputs
from executor.programs.program import CallEnv, Program, PromptSource
from plans import MFC, ExperimentSpec


@dataclass
class Advantages:
    rewards: torch.Tensor
    kl: torch.Tensor | None  # None: no reference ran (kl_coef = 0)
    advantages: torch.Tensor
    returns: torch.Tensor


def macro_starts(exp: ExperimentSpec, data: Batch, tok) -> torch.Tensor:  # [B, G]
    """The segmentation of each response into macro actions by `[ppo.macro] termination`."""
    m, mask = exp.ppo.macro, data["response_mask"]
    if m.termination == "fixed":
        return fixed_ngram_starts(mask, m.n)
    if m.termination == "ppl":
        return ppl_starts(data["ref_logprobs"], mask)
    p = exp.prompt_len
    lengths = mask.sum(1).long().tolist()
    ids = data["input_ids"][:, p:].tolist()
    firsts = [
        token_unit_starts(tok, row[:n], m.unit or "clause")
        for row, n in zip(ids, lengths, strict=True)
    ]
    return parse_starts(firsts, mask)


def advantages(exp: ExperimentSpec, data: Batch, tok=None) -> Advantages:
    """Shaped rewards, GAE and whitening over the whole rollout batch: the same numbers on
    every rank and under every layout, since every train rank holds the whole batch. `tok`
    decodes responses for parsing-based macro actions."""
    c = exp.ppo
    mask = data["response_mask"]
    rewards, kl = shaped_rewards(
        data["logprobs"], data.get("ref_logprobs"), data["score"], mask, c.kl_coef, c.reward_clip
    )
    if c.macro.termination == "none":
        adv, ret = gae(rewards, data["values"], mask, c.gamma, c.lam)
    else:  # MA-PPO: GAE over macro actions, each token takes its macro's advantage and return
        starts = macro_starts(exp, data, tok)
        w = c.macro.value_function
        adv, ret = macro_gae(rewards, data["values"], starts, mask, c.gamma, c.lam, w, w)
    if c.whiten_advantages:
        adv = whiten(adv, mask)
    return Advantages(rewards, kl, adv, ret)


def rollout_stats(data: Batch, kl: torch.Tensor | None, env: CallEnv) -> dict[str, float]:
    """The rollout's reward, KL to the reference (per-token KL `kl`; left out without a
    reference: a KL to a model that never ran is unknown, not 0) and response length."""
    mask = data["response_mask"]
    out = {"reward_mean": float(data["score"].mean())}
    if kl is not None:
        out["kl_mean"] = float((kl.sum(1) / mask.sum(1).clamp(min=1)).mean())
    out["response_len"] = float(mask.sum(1).mean())
    if env.rule is None and env.exp.dataset is None:
        # A reward model on the built-in task: also report the task's own rule, the truth the
        # reward model was trained to imitate (the model's score can be gamed; this cannot).
        out["task_reward_mean"] = float(
            calls.rule_score_all(env.exp, data, digit_reward, env.tok).mean()
        )
    return out


def tokens(b: Batch) -> float:
    return float(b["response_mask"].sum())


def clipped_policy_steps(model, ctx, env: CallEnv, batch: Batch, loss_terms, count_fn):
    """Optimizer steps of a clipped-ratio policy loss; `loss_terms(lp, mb)` returns the loss
    (a sum over the micro-batch: train_step divides by count_fn's total) and the number of
    response tokens whose ratio was clipped. Returns the steps, the share of clipped tokens
    and the rollout/train log-prob gap (both meaningful on the last pipeline stage, where the
    loss is computed).

    The gap: during the first optimizer step the weights are still the ones that generated
    the batch, so the log-probs the trainer computes for the first mini-batch's response
    tokens should equal `old_logprobs`, which the generation call recorded; the mean and max
    |difference| over those tokens say how far apart the two code paths are."""
    exp = env.exp
    p, g = exp.prompt_len, exp.gen_len
    dev = batch["input_ids"].device
    clipped = torch.zeros((), dtype=torch.float64, device=dev)  # summed on the device: no sync
    gap = torch.zeros(3, dtype=torch.float64, device=dev)  # sum |diff|, tokens, max |diff|
    step = [-1]  # train_step asks count_fn once per optimizer step, before its passes

    def count(b: Batch) -> float:
        step[0] += 1
        return count_fn(b)

    def loss_fn(logits: torch.Tensor, mb: Batch) -> torch.Tensor:
        nonlocal clipped
        lp = calls.token_logprobs(model, ctx, logits, mb)[:, p - 1 : p - 1 + g]
        if step[0] == 0:
            with torch.no_grad():
                mask = mb["response_mask"]
                diff = (lp.double() - mb["old_logprobs"].double()).abs() * mask
                gap[0] += diff.sum()
                gap[1] += mask.sum()
                gap[2] = torch.maximum(gap[2], diff.max())
        loss, n_clipped = loss_terms(lp, mb)
        clipped = clipped + n_clipped.detach().double()
        return loss

    grad_clip = exp.optimizer("actor").grad_clip
    steps = calls.optimizer_steps(
        model, ctx, env.opt, exp, batch, loss_fn, count, env.n_micro, grad_clip
    )
    all_reduce_(clipped, ctx.dp_group)  # last stage: every dp share's count
    top = gap[2:].clone()
    all_reduce_(gap, ctx.dp_group)
    all_reduce_(top, ctx.dp_group, dist.ReduceOp.MAX)
    total = tokens(batch) * exp.ppo_epochs
    gaps = {"logprob_gap_mean": float(gap[0] / gap[1].clamp(min=1)), "logprob_gap_max": float(top)}
    return steps, float(clipped) / max(total, 1.0), gaps


class PPO(Program):
    tensors = {
        "prompts": ("prompt_ids", "prompt_mask"),
        "seq": ("input_ids", "attention_mask", "response_mask"),
        "logprobs": ("logprobs",),
        "ref_logprobs": ("ref_logprobs",),
        "rewards": ("score",),
        "values": ("values",),
    }
    named_schema = {
        "prompt_ids": ("P", torch.long),
        "prompt_mask": ("P", torch.long),
        **calls.ROLLOUT_SCHEMA,
        "logprobs": ("G", torch.float32),
        "ref_logprobs": ("G", torch.float32),
        "score": ("", torch.float32),
        "values": ("G", torch.float32),
    }

    def __init__(self, exp, tok, data):
        super().__init__(exp, tok, data)
        self.prompts = PromptSource(exp, tok, self.data_path, repeat=exp.group_size)

    def rows(self) -> int:
        return self.exp.batch_size * self.exp.group_size

    def answer_of(self, prompt_ids: tuple[int, ...]) -> str | None:
        return self.prompts.answer_of(prompt_ids)

    def dataset(self, it: int) -> Batch:
        return self.prompts.batch(it)

    def run(self, m: MFC, model, ctx, data: Batch, env: CallEnv):
        exp = env.exp
        if m.name == "actor_gen":
            seed = exp.seed * 7919 + env.iteration
            return calls.rollout(
                model, ctx, exp, data["prompt_ids"], data["prompt_mask"], env.tok, seed
            )
        if m.name == "ref_inf":
            lp = calls.response_logprobs(model, ctx, exp, data, env.n_micro)
            return None if lp is None else {"ref_logprobs": lp}
        if m.name == "rew_inf":
            s = calls.score(
                model, ctx, exp, data, env.n_micro, env.rule, env.tok, answers=self.answer_of
            )
            return None if s is None else {"score": s}
        if m.name == "critic_inf":
            v = calls.response_values(model, ctx, exp, data, env.n_micro)
            return None if v is None else {"values": v}
        if m.name == "actor_train":
            self.train_actor(model, ctx, data, env)
            return None
        if m.name == "critic_train":
            self.train_critic(model, ctx, data, env)
            return None
        raise NotImplementedError(f"PPO has no call {m.name}")

    def advantages(self, data: Batch) -> Advantages:
        return advantages(self.exp, data, self.tok)

    def train_actor(self, model, ctx, data: Batch, env: CallEnv) -> None:
        exp, adv = env.exp, self.advantages(data)
        batch = {
            **calls.model_batch(data),
            "old_logprobs": data["logprobs"],
            "advantages": adv.advantages,
            "response_mask": data["response_mask"],
        }
        batch.update(proximal_inputs(model, ctx, env, data))  # stale data: decoupled PPO

        def terms(lp, mb):
            mask, (old, w) = mb["response_mask"], ratio_inputs(mb, env.staleness > 0)
            out = policy_loss(lp, old, mb["advantages"], mask, exp.ppo.eps_clip, 1.0, w)
            return out.loss, out.clip_frac  # denominator 1: clip_frac is a token count here

        steps, clip_frac, gaps = clipped_policy_steps(model, ctx, env, batch, terms, tokens)
        env.stats.update(rollout_stats(data, adv.kl, env))
        env.stats.update(calls.step_summary("actor", steps))
        if ctx.is_last_stage:  # where the loss, hence the clipping, is computed
            env.stats["clip_frac"] = clip_frac
            env.stats.update(gaps)

    def train_critic(self, model, ctx, data: Batch, env: CallEnv) -> None:
        exp, adv = env.exp, self.advantages(data)
        p, g, clip = exp.prompt_len, exp.gen_len, exp.ppo.value_clip
        batch = {
            **calls.model_batch(data),
            "old_values": data["values"],
            "returns": adv.returns,
            "response_mask": data["response_mask"],
        }

        def loss_fn(values: torch.Tensor, mb: Batch) -> torch.Tensor:
            v = values[:, p - 1 : p - 1 + g].float()
            return value_loss(v, mb["old_values"], mb["returns"], mb["response_mask"], clip, 1.0)

        grad_clip = exp.optimizer("critic").grad_clip
        steps = calls.optimizer_steps(
            model, ctx, env.opt, exp, batch, loss_fn, tokens, env.n_micro, grad_clip
        )
        env.stats.update(calls.step_summary("critic", steps))
