"""Call bodies shared by the algorithms: generate, score, and the optimizer-step loop.

Shapes: P = prompt_len, G = gen_len, T = P + G. Prompts are left-padded to P, responses
right-padded to G, so response token j sits at column P + j and is predicted by the logits
at column P - 1 + j. Every call gets the whole batch and returns this rank's dp share (the
executor functions cut it with split_range); `None` off the last pipeline stage. With the
experiment's [packing] the scoring and train calls run packed rows (executor.data.packing) and
still see and return this padded layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from executor.compute import forward
from executor.compute.generate import GenerationConfig, generate
from executor.compute.logprobs import next_token_logprobs
from executor.compute.train import LossFn, StepStats, train_step
from executor.data.batching import Batch, micro_batches
from executor.data.sources import RewardFn, wants_answer
from executor.data.tokenizer import Tokenizer
from executor.model import Transformer
from executor.parallel.context import ParallelContext
from plans import ExperimentSpec
from plans.slicing import split_range

ROLLOUT_SCHEMA = {  # the tensors of a generated sequence, by name: (per-row shape, dtype)
    "input_ids": ("T", torch.long),
    "attention_mask": ("T", torch.long),
    "response_mask": ("G", torch.float32),
}


def shaped(exp: ExperimentSpec, named: dict[str, tuple[str, torch.dtype]]) -> dict:
    """Per-row shapes of a schema written with the symbols T (sequence), P (prompt),
    G (response) and '' (a scalar per row)."""
    dims = {"T": (exp.seq_len,), "P": (exp.prompt_len,), "G": (exp.gen_len,), "": ()}
    return {k: (dims[d], dt) for k, (d, dt) in named.items()}


def sampling_config(
    exp: ExperimentSpec, tok: Tokenizer, seed: int, greedy: bool = False, **extra
) -> GenerationConfig:
    """The experiment's generation settings (gen_len new tokens, its temperature and top-p,
    the tokenizer's EOS and pad ids); `extra`: further GenerationConfig fields (a tree's)."""
    return GenerationConfig(
        max_new_tokens=exp.gen_len,
        greedy=greedy,
        temperature=exp.generation.temperature,
        top_p=exp.generation.top_p,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        seed=seed,
        **extra,
    )


def rollout(
    model: Transformer,
    ctx: ParallelContext,
    exp: ExperimentSpec,
    prompt_ids: torch.Tensor,  # [n, P], the whole batch
    prompt_mask: torch.Tensor,  # [n, P]
    tok: Tokenizer,
    seed: int,
    greedy: bool = False,
) -> Batch:
    """Sample (or greedily decode) a response per prompt: this dp rank's rows of
    input_ids/attention_mask [b, T], response_mask [b, G] and the sampling log-probs [b, G]."""
    g = exp.gen_len
    out = generate(model, ctx, prompt_ids, prompt_mask, sampling_config(exp, tok, seed, greedy))
    lo, hi = split_range(prompt_ids.shape[0], ctx.dp_size, ctx.dp_rank)
    b, n = out.tokens.shape
    dev = out.tokens.device
    tokens = torch.full((b, g), tok.pad_token_id, dtype=torch.long, device=dev)
    logps = torch.zeros(b, g, device=dev)
    tokens[:, :n], logps[:, :n] = out.tokens, out.logprobs
    resp_mask = (torch.arange(g, device=dev)[None, :] < out.lengths[:, None]).float()
    return {
        "input_ids": torch.cat([prompt_ids[lo:hi], tokens], dim=1),
        "attention_mask": torch.cat([prompt_mask[lo:hi].long(), resp_mask.long()], dim=1),
        "response_mask": resp_mask,
        "logprobs": logps * resp_mask,
    }


def token_logprobs(model, ctx, logits: torch.Tensor, mb: Batch) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) [b, T-1] from this rank's vocab shard of the logits."""
    return next_token_logprobs(logits, mb["input_ids"], model.vocab_rows[0], ctx.tp_group)


def packs(exp: ExperimentSpec) -> bool:
    """Whether the experiment's scoring and train calls run on packed sequences."""
    return exp.packing is not None


def model_batch(data: Batch, prefix: str = "") -> Batch:
    return {
        "input_ids": data[prefix + "input_ids"],
        "attention_mask": data[prefix + "attention_mask"],
    }


def response_logprobs(model, ctx, exp: ExperimentSpec, data: Batch, n_micro: int, prefix=""):
    """log p of each response token [b, G] under `model` (None off the last stage)."""
    lp = forward.logprobs(model, ctx, model_batch(data, prefix), n_micro, packs(exp))  # [b, T-1]
    p = exp.prompt_len
    return None if lp is None else lp[:, p - 1 : p - 1 + exp.gen_len].float()


def response_values(model, ctx, exp: ExperimentSpec, data: Batch, n_micro: int):
    """The value head at the positions that predict each response token [b, G]."""
    v = forward.values(model, ctx, model_batch(data), n_micro, packs(exp))  # [b, T]
    p = exp.prompt_len
    return None if v is None else v[:, p - 1 : p - 1 + exp.gen_len].float()


def last_token_score(model, ctx, data: Batch, n_micro: int, prefix: str = "", pack=False):
    """The reward model's value at each sequence's last real token [b]."""
    v = forward.values(model, ctx, model_batch(data, prefix), n_micro, pack)
    if v is None:
        return None
    lo, hi = split_range(data[prefix + "input_ids"].shape[0], ctx.dp_size, ctx.dp_rank)
    am = data[prefix + "attention_mask"][lo:hi]
    last = (am * torch.arange(am.shape[1], device=am.device)).argmax(dim=1)
    return v.gather(1, last[:, None]).squeeze(1).float()


AnswerOf = Callable[[tuple[int, ...]], str | None]
"""A prompt's padded token ids -> its dataset row's answer (PromptSource.answer_of)."""


def rule_score(
    ctx, exp: ExperimentSpec, data: Batch, rule: RewardFn, tok: Tokenizer, prefix="", answers=None
):
    """A rule reward of each (prompt, response) text pair of this dp rank [b]; computed on the
    last stage only, like a reward model's score."""
    if not ctx.is_last_stage:
        return None
    lo, hi = split_range(data[prefix + "input_ids"].shape[0], ctx.dp_size, ctx.dp_rank)
    return rule_score_all(exp, data, rule, tok, prefix, lo, hi, answers)


def rule_score_all(
    exp,
    data: Batch,
    rule: RewardFn,
    tok: Tokenizer,
    prefix="",
    lo=0,
    hi=None,
    answers: AnswerOf | None = None,
):
    """The rule's score of rows lo..hi (default: all) [hi - lo]. A rule that takes an answer
    (sources.wants_answer) gets the row's, looked up by the prompt's ids in `answers`."""
    ids, am = data[prefix + "input_ids"], data[prefix + "attention_mask"]
    resp = data[prefix + "response_mask"]
    hi = ids.shape[0] if hi is None else hi
    p = exp.prompt_len
    with_answer = wants_answer(rule)
    if with_answer and answers is None:
        raise ValueError("this reward checks answers, and the prompts have none")
    device = ids.device
    # The texts are the host's: one copy of the rows, not a sync per row.
    ids, am, resp = ids[lo:hi].cpu(), am[lo:hi].cpu(), resp[lo:hi].cpu()
    scores = []
    for i in range(hi - lo):
        prompt = tok.decode(ids[i, :p][am[i, :p] > 0].tolist())
        response = tok.decode(ids[i, p:][resp[i] > 0].tolist())
        if with_answer:
            answer = answers(tuple(ids[i, :p].tolist()))
            scores.append(0.0 if answer is None else float(rule(prompt, response, answer)))
        else:
            scores.append(float(rule(prompt, response)))
    return torch.tensor(scores, dtype=torch.float32, device=device)


def score(
    model, ctx, exp, data, n_micro, rule: RewardFn | None, tok, prefix: str = "", answers=None
):
    """The reward role's score [b]: the rule if the experiment has one, else the model."""
    if rule is not None:
        return rule_score(ctx, exp, data, rule, tok, prefix, answers)
    return last_token_score(model, ctx, data, n_micro, prefix, packs(exp))


def optimizer_steps(
    model,
    ctx,
    opt,
    exp: ExperimentSpec,
    batch: Batch,
    loss_fn: LossFn,
    count_fn: Callable[[Batch], float],
    n_micro: int,
    grad_clip: float,
    unit: int = 1,
) -> list[StepStats]:
    """`ppo_epochs` passes over the batch, `mini_batches` optimizer steps each; mini-batches
    are cut with the same split rule as everything else (groups of `unit` rows kept whole)."""
    stats = []
    for _ in range(exp.ppo_epochs):
        for mb in micro_batches(batch, exp.mini_batches, unit):
            stats.append(
                train_step(
                    model,
                    ctx,
                    opt,
                    mb,
                    loss_fn,
                    count_fn,
                    n_micro,
                    grad_clip if grad_clip > 0 else None,
                    unit,
                    packs(exp),
                )
            )
    return stats


def group_epochs(
    model, ctx, env, batch: Batch, loss_fn: LossFn, k: int, role: str, first: list[bool]
) -> list[StepStats]:
    """`ppo_epochs` passes of optimizer steps over groups of `k` rows (the normaliser counts
    groups); `first[0]` holds during the first pass only, so statistics a loss gathers per
    group count each group once."""
    one = env.exp.model_copy(update={"ppo_epochs": 1})
    steps: list[StepStats] = []
    for epoch in range(env.exp.ppo_epochs):
        first[0] = epoch == 0
        steps += optimizer_steps(
            model,
            ctx,
            env.opt,
            one,
            batch,
            loss_fn,
            lambda b: float(b["input_ids"].shape[0] // k),
            env.n_micro,
            env.exp.optimizer(role).grad_clip,
            unit=k,
        )
    return steps


def step_summary(role: str, steps: list[StepStats]) -> dict[str, float]:
    return {
        f"{role}_loss": sum(s.loss for s in steps) / len(steps),
        f"{role}_grad_norm": sum(s.grad_norm for s in steps) / len(steps),
    }
