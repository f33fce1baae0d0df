"""Online anchored DPO on one rank: each iteration the actor samples `group_size` candidates
per prompt, the reward (the experiment's rule, else the reward model) scores them, and the
actor fits the listwise ADPO target q = softmax(zscore(score) / beta_r) within each prompt's
candidates, anchored on the frozen reference (`anchor = "ref"`) or on the actor at the start of
the train call (`anchor = "policy"`, the dynamic anchor of arXiv 2510.18913).

`label_noise` reverses the scores of that share of the prompts' candidate lists (drawn with the
iteration's seed), the online counterpart of swapped labels: the list's best candidate becomes
its worst. `true_accuracy` counts the lists whose truly best candidate (by the unreversed
score) the actor ranks strictly highest by its implicit reward against the reference, before
any step of the iteration has seen them.
"""

from __future__ import annotations

import torch

from executor.data.batching import Batch
from executor.losses.adpo import adpo_listwise_loss, reward_targets
from executor.losses.dpo import sequence_logprobs
from executor.parallel.collectives import all_reduce_
from executor.programs import calls
from executor.programs.ppo import PPO
from executor.programs.preference import policy_sequence_logprobs, ranked_right
from executor.programs.program import CallEnv


def noisy_scores(score: torch.Tensor, k: int, noise: float, seed: int) -> torch.Tensor:
    """[n] scores with a `noise` share of the k-candidate lists negated (order reversed)."""
    if noise <= 0:
        return score
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(score.shape[0] // k, generator=g) < noise  # [lists]
    sign = 1.0 - 2.0 * flip.to(score.dtype)
    return (score.view(-1, k) * sign[:, None]).reshape(-1)


class ADPOOnline(PPO):
    """PPO's generation and scoring calls (each prompt repeated group_size times, consecutive
    rows); the actor's training is listwise ADPO. Lists are never split (unit = group_size)."""

    def __init__(self, exp, tok, data):
        super().__init__(exp, tok, data)
        self.unit = exp.group_size

    def train_actor(self, model, ctx, data: Batch, env: CallEnv) -> None:
        exp, c, k = env.exp, env.exp.adpo, env.exp.group_size
        mask = data["response_mask"]
        ref = sequence_logprobs(data["ref_logprobs"], mask)  # [n]
        if c.anchor == "policy":
            anchor = policy_sequence_logprobs(model, ctx, data, env)
        else:
            anchor = ref
        seed = exp.seed * 100_003 + env.iteration
        label = noisy_scores(data["score"], k, exp.label_noise, seed)
        batch = {
            **calls.model_batch(data),
            "response_mask": mask,
            "anchor": anchor,
            "ref": ref,
            "label": label,
            "truth": data["score"],
        }
        counts = torch.zeros(
            2, dtype=torch.float64, device=data["input_ids"].device
        )  # right, lists
        p, g = exp.prompt_len, exp.gen_len
        first = [True]

        def loss_fn(logits: torch.Tensor, mb: Batch) -> torch.Tensor:
            tok_lp = calls.token_logprobs(model, ctx, logits, mb)[:, p - 1 : p - 1 + g]
            lp = sequence_logprobs(tok_lp.float(), mb["response_mask"])
            q = reward_targets(mb["label"].view(-1, k), c.beta_r)
            stats = adpo_listwise_loss(lp.view(-1, k), mb["anchor"].view(-1, k), q, c.tau, 1.0)
            if first[0]:
                with torch.no_grad():
                    counts[0] += ranked_right(lp - mb["ref"], mb["truth"], k)  # no host sync
                    counts[1] += lp.shape[0] // k
            return stats.loss

        steps = calls.group_epochs(model, ctx, env, batch, loss_fn, k, "actor", first)
        all_reduce_(counts, ctx.dp_group)
        kl = (data["logprobs"] - data["ref_logprobs"]) * mask
        env.stats.update(
            {
                "reward_mean": float(data["score"].mean()),
                "kl_mean": float((kl.sum(1) / mask.sum(1).clamp(min=1)).mean()),
                "response_len": float(mask.sum(1).mean()),
                **calls.step_summary("actor", steps),
            }
        )
        if ctx.is_last_stage and counts[1] > 0:
            env.stats["true_accuracy"] = float(counts[0] / counts[1])
