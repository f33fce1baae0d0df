"""The calls of a PPO iteration on one rank: generate, score, train.

Shapes: P = prompt_len, G = gen_len, T = P + G. Prompts are left-padded to P, responses
right-padded to G, so response token j sits at column P + j and is predicted by the logits
at column P - 1 + j. Every call gets the whole batch and returns this rank's dp share (the
executor functions cut it with split_range).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor import forward
from executor.algorithms.ppo import gae, policy_loss, shaped_rewards, value_loss, whiten
from executor.batching import Batch, micro_batches
from executor.collectives import all_reduce_
from executor.generate import GenerationConfig, generate
from executor.logprobs import next_token_logprobs
from executor.model import Transformer
from executor.parallel import ParallelContext
from executor.train import StepStats, train_step
from plans import ExperimentSpec
from plans.slicing import split_range

ROLLOUT_KEYS = ("input_ids", "attention_mask", "response_mask", "logprobs")


def schema(exp: ExperimentSpec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    t, g = exp.seq_len, exp.gen_len
    return {
        "input_ids": ((t,), torch.long),
        "attention_mask": ((t,), torch.long),
        "response_mask": ((g,), torch.float32),
        "logprobs": ((g,), torch.float32),
        "ref_logprobs": ((g,), torch.float32),
        "score": ((), torch.float32),
        "values": ((g,), torch.float32),
    }


def actor_generate(
    model: Transformer,
    ctx: ParallelContext,
    exp: ExperimentSpec,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    eos: int,
    pad: int,
    seed: int,
) -> Batch:
    g = exp.gen_len
    cfg = GenerationConfig(
        max_new_tokens=g,
        greedy=False,
        temperature=exp.generation.temperature,
        top_p=exp.generation.top_p,
        eos_token_id=eos,
        pad_token_id=pad,
        seed=seed,
    )
    out = generate(model, ctx, prompt_ids, prompt_mask, cfg)
    lo, hi = split_range(prompt_ids.shape[0], ctx.dp_size, ctx.dp_rank)
    b, n = out.tokens.shape
    tokens = torch.full((b, g), pad, dtype=torch.long)
    logps = torch.zeros(b, g)
    tokens[:, :n], logps[:, :n] = out.tokens, out.logprobs
    resp_mask = (torch.arange(g)[None, :] < out.lengths[:, None]).float()
    return {
        "input_ids": torch.cat([prompt_ids[lo:hi], tokens], dim=1),
        "attention_mask": torch.cat([prompt_mask[lo:hi].long(), resp_mask.long()], dim=1),
        "response_mask": resp_mask,
        "logprobs": logps * resp_mask,
    }


def _model_batch(data: Batch) -> Batch:
    return {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]}


def response_logprobs(model, ctx, exp: ExperimentSpec, data: Batch, n_micro: int) -> Batch | None:
    lp = forward.logprobs(model, ctx, _model_batch(data), n_micro)  # [b, T-1]
    if lp is None:
        return None
    p = exp.prompt_len
    return {"ref_logprobs": lp[:, p - 1 : p - 1 + exp.gen_len].float()}


def response_values(model, ctx, exp: ExperimentSpec, data: Batch, n_micro: int) -> Batch | None:
    v = forward.values(model, ctx, _model_batch(data), n_micro)  # [b, T]
    if v is None:
        return None
    p = exp.prompt_len
    return {"values": v[:, p - 1 : p - 1 + exp.gen_len].float()}


def last_token_score(model, ctx, data: Batch, n_micro: int) -> Batch | None:
    """The reward model's value at each sequence's last real token."""
    v = forward.values(model, ctx, _model_batch(data), n_micro)
    if v is None:
        return None
    lo, hi = split_range(data["input_ids"].shape[0], ctx.dp_size, ctx.dp_rank)
    am = data["attention_mask"][lo:hi]
    last = (am * torch.arange(am.shape[1])).argmax(dim=1)
    return {"score": v.gather(1, last[:, None]).squeeze(1).float()}


@dataclass
class Advantages:
    rewards: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def advantages(exp: ExperimentSpec, data: Batch) -> Advantages:
    """Shaped rewards, GAE and whitening over the whole rollout batch: the same numbers on
    every rank and under every layout, since every train rank holds the whole batch."""
    c = exp.ppo
    mask = data["response_mask"]
    rewards, kl = shaped_rewards(
        data["logprobs"], data["ref_logprobs"], data["score"], mask, c.kl_coef, c.reward_clip
    )
    adv, ret = gae(rewards, data["values"], mask, c.gamma, c.lam)
    if c.whiten_advantages:
        adv = whiten(adv, mask)
    return Advantages(rewards, kl, adv, ret)


def train_actor(
    model,
    ctx,
    opt,
    exp: ExperimentSpec,
    data: Batch,
    adv: Advantages,
    n_micro: int,
    grad_clip: float,
) -> tuple[list[StepStats], float]:
    """PPO steps of the actor; also the share of response tokens whose ratio was clipped
    (meaningful on the last pipeline stage, where the loss is computed)."""
    p, g, eps = exp.prompt_len, exp.gen_len, exp.ppo.eps_clip
    batch = {
        **_model_batch(data),
        "old_logprobs": data["logprobs"],
        "advantages": adv.advantages,
        "response_mask": data["response_mask"],
    }

    clipped = torch.zeros((), dtype=torch.float64)  # clipped response tokens, this rank's share

    def loss_fn(logits: torch.Tensor, mb: Batch) -> torch.Tensor:
        nonlocal clipped
        lp = next_token_logprobs(logits, mb["input_ids"], model.vocab_rows[0], ctx.tp_group)
        lp = lp[:, p - 1 : p - 1 + g]
        out = policy_loss(lp, mb["old_logprobs"], mb["advantages"], mb["response_mask"], eps, 1.0)
        clipped = clipped + out.clip_frac.double().cpu()  # denominator 1: a token count
        return out.loss

    steps = _epochs(model, ctx, opt, exp, batch, loss_fn, n_micro, grad_clip)
    all_reduce_(clipped, ctx.dp_group)  # last stage: every dp share's count
    tokens = float(data["response_mask"].sum()) * exp.ppo_epochs
    return steps, float(clipped) / max(tokens, 1.0)


def train_critic(
    model,
    ctx,
    opt,
    exp: ExperimentSpec,
    data: Batch,
    adv: Advantages,
    n_micro: int,
    grad_clip: float,
) -> list[StepStats]:
    p, g, clip = exp.prompt_len, exp.gen_len, exp.ppo.value_clip
    batch = {
        **_model_batch(data),
        "old_values": data["values"],
        "returns": adv.returns,
        "response_mask": data["response_mask"],
    }

    def loss_fn(values: torch.Tensor, mb: Batch) -> torch.Tensor:
        v = values[:, p - 1 : p - 1 + g].float()
        return value_loss(v, mb["old_values"], mb["returns"], mb["response_mask"], clip, 1.0)

    return _epochs(model, ctx, opt, exp, batch, loss_fn, n_micro, grad_clip)


def _epochs(model, ctx, opt, exp, batch, loss_fn, n_micro, grad_clip) -> list[StepStats]:
    stats = []
    for _ in range(exp.ppo_epochs):
        for mb in micro_batches(
            batch, exp.mini_batches
        ):  # the one split rule, for mini-batches too
            stats.append(
                train_step(
                    model,
                    ctx,
                    opt,
                    mb,
                    loss_fn,
                    lambda b: float(b["response_mask"].sum()),
                    n_micro,
                    grad_clip if grad_clip > 0 else None,
                )
            )
    return stats
