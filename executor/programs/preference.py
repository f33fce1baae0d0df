"""Preference algorithms on one rank: DPO/IPO, anchored DPO and reward-model training.

Their data are groups of fixed (prompt, response) rows, consecutive in the batch: a pair
(chosen first, then rejected) or a prompt's candidate list. Each row carries `reward` (the
label: 1 chosen / 0 rejected, or the candidate's reward) and `true_reward` (the built-in
task's rule, which knows the truth even where labels are noisy; else the label). Groups are
never split across dp ranks or micro-batches (Program.unit), since their loss couples them.
"""

from __future__ import annotations

import torch

from executor.data.batching import Batch
from executor.data.preferences import (
    load_candidate_lists,
    load_trees,
    synthetic_candidate_lists,
    synthetic_pairs,
    synthetic_trees,
)
from executor.data.sources import digit_reward, epoch_order, load_pairs
from executor.losses.adpo import adpo_listwise_loss, adpo_pairwise_loss, reward_targets
from executor.losses.dpo import dpo_loss, ipo_loss, sequence_logprobs
from executor.losses.reward_model import bradley_terry_loss, tree_pairs
from executor.parallel.collectives import all_gather_dim, all_reduce_, broadcast_
from executor.programs import calls
from executor.programs.program import CallEnv, Program, prompt_response_rows
from plans import PlanError
from plans.slicing import split_range, split_sizes

ROW_SCHEMA = {
    **calls.ROLLOUT_SCHEMA,
    "reward": ("", torch.float32),
    "true_reward": ("", torch.float32),
}


class PreferenceSource:
    """`exp.batch_size` groups per iteration: from a file (shuffled anew every epoch:
    executor.data.sources.epoch_order), else freshly drawn from the built-in task with the
    iteration's seed (so each batch is unseen before its first step)."""

    def __init__(self, exp, tok, path: str | None, kind: str):
        self.exp, self.tok, self.kind = exp, tok, kind
        self.path = path
        self.builtin = path is None or path.startswith("builtin:")
        if path == "builtin:trees":
            self.kind = "trees"
        elif path is not None and path.startswith("builtin:"):
            raise PlanError(f"unknown built-in dataset {path!r}", field="dataset")
        self.groups = None if self.builtin else self._load(path)

    def _load(self, path: str) -> list[tuple[str, list[str], list[float]]]:
        if self.kind == "lists":
            return [
                (c.prompt, list(c.responses), list(c.rewards)) for c in load_candidate_lists(path)
            ]
        try:
            pairs = load_pairs(path)
        except PlanError:
            pairs = tree_pairs(load_trees(path), seed=self.exp.seed)  # a tree file instead
        return [(p.prompt, [p.chosen, p.rejected], [1.0, 0.0]) for p in pairs]

    def _draw(self, it: int) -> list[tuple[str, list[str], list[float]]]:
        n, seed, k = self.exp.batch_size, self.exp.seed * 100_003 + it, self.exp.group_size
        if self.kind == "lists":
            return [
                (c.prompt, list(c.responses), list(c.rewards))
                for c in synthetic_candidate_lists(n, seed, k)
            ]
        if self.kind == "trees":
            pairs, m = [], n
            while len(pairs) < n:  # a tree of 4 leaves gives up to 6 pairs
                pairs = tree_pairs(synthetic_trees(m, seed), seed)
                m *= 2
            pairs = pairs[:n]
        else:
            pairs = synthetic_pairs(n, seed, noise=self.exp.label_noise)
        return [(p.prompt, [p.chosen, p.rejected], [1.0, 0.0]) for p in pairs]

    def batch(self, it: int) -> Batch:
        if self.groups is None:
            groups = self._draw(it)
        else:
            n = self.exp.batch_size
            order = epoch_order(len(self.groups), self.exp.seed, it * n, n)
            groups = [self.groups[i] for i in order]
        k = len(groups[0][1])
        if any(len(r) != k for _, r, _ in groups):
            raise PlanError(f"every candidate list must have {k} responses", source=self.path)
        prompts = [p for p, rs, _ in groups for _ in rs]
        responses = [r for _, rs, _ in groups for r in rs]
        rows = prompt_response_rows(self.tok, self.exp, prompts, responses)
        rows["reward"] = torch.tensor([x for _, _, rw in groups for x in rw])
        if self.builtin:  # the rule knows the truth behind noisy labels
            truth = [digit_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
            rows["true_reward"] = torch.tensor(truth, dtype=torch.float32)
        else:
            rows["true_reward"] = rows["reward"].clone()
        return rows


def policy_sequence_logprobs(model, ctx, data: Batch, env: CallEnv) -> torch.Tensor:  # [n]
    """Sequence log-probs of the whole batch under the current actor, on every rank of the
    mesh (an on-policy anchor must be known wherever a loss is computed)."""
    lp = calls.response_logprobs(model, ctx, env.exp, data, env.n_micro)
    n = data["input_ids"].shape[0]
    if lp is None:
        b = split_sizes(n, ctx.dp_size)[ctx.dp_rank]
        lp = torch.zeros(b, env.exp.gen_len, device=data["input_ids"].device)
    lo, hi = split_range(n, ctx.dp_size, ctx.dp_rank)
    seq = sequence_logprobs(lp, data["response_mask"][lo:hi])
    seq = all_gather_dim(seq, ctx.dp_group, split_sizes(n, ctx.dp_size), dim=0)
    broadcast_(seq, ctx.last_stage_rank, ctx.pp_group)
    return seq


def _groups(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.view(-1, k)  # [rows] -> [groups, k]


def ranked_right(score: torch.Tensor, truth: torch.Tensor, k: int) -> torch.Tensor:
    """Groups whose truly best candidate has a strictly higher score than every other one (for
    pairs: the right order; a tie, as before any training, counts as wrong)."""
    s, t = _groups(score, k), _groups(truth, k)
    best = t.argmax(1, keepdim=True)
    s_best = s.gather(1, best)
    others = s.scatter(1, best, float("-inf")).amax(1, keepdim=True)
    return (s_best > others).sum()


class _Preference(Program):
    data_key = "pairs"
    kind = "pairs"
    named_schema = {**ROW_SCHEMA, "ref_logprobs": ("", torch.float32)}

    def __init__(self, exp, tok, data):
        super().__init__(exp, tok, data)
        self.unit = 2 if self.kind == "pairs" else exp.group_size
        self.tensors = {self.data_key: tuple(ROW_SCHEMA), "ref_logprobs": ("ref_logprobs",)}
        self.source = PreferenceSource(exp, tok, self.data_path, self.kind)

    def rows(self) -> int:
        return self.exp.batch_size * self.unit

    def dataset(self, it: int) -> Batch:
        return self.source.batch(it)

    def seq_logprobs(self, model, ctx, logits, mb) -> torch.Tensor:
        p, g = self.exp.prompt_len, self.exp.gen_len
        lp = calls.token_logprobs(model, ctx, logits, mb)[:, p - 1 : p - 1 + g]
        return sequence_logprobs(lp.float(), mb["response_mask"])

    def run(self, m, model, ctx, data: Batch, env: CallEnv):
        if m.name == "ref_inf":
            lp = calls.response_logprobs(model, ctx, env.exp, data, env.n_micro)
            return (
                None
                if lp is None
                else {"ref_logprobs": sequence_logprobs(lp, self._mask(ctx, data))}
            )
        if m.kind == "train":
            self.train(model, ctx, data, env)
            return None
        raise NotImplementedError(f"{env.exp.algorithm} has no call {m.name}")

    @staticmethod
    def _mask(ctx, data: Batch) -> torch.Tensor:
        lo, hi = split_range(data["input_ids"].shape[0], ctx.dp_size, ctx.dp_rank)
        return data["response_mask"][lo:hi]

    def train(self, model, ctx, data: Batch, env: CallEnv) -> None:
        k = self.unit
        dev = data["input_ids"].device
        counts = torch.zeros(3, dtype=torch.float64, device=dev)  # right, truly right, groups
        first_pass = [True]

        def loss_fn(out: torch.Tensor, mb: Batch) -> torch.Tensor:
            loss, score = self.group_loss(model, ctx, out, mb)
            if first_pass[0]:  # each group scored once, before any step has seen it
                with torch.no_grad():
                    counts[0] += ranked_right(score, mb["reward"], k)  # no host sync
                    counts[1] += ranked_right(score, mb["true_reward"], k)
                    counts[2] += mb["input_ids"].shape[0] // k
            return loss

        batch = self.train_batch(model, ctx, data, env)
        steps = calls.group_epochs(
            model, ctx, env, batch, loss_fn, k, self.trained_role, first_pass
        )
        all_reduce_(counts, ctx.dp_group)
        env.stats.update(calls.step_summary(self.trained_role, steps))
        if ctx.is_last_stage and counts[2] > 0:
            env.stats["pref_accuracy"] = float(counts[0] / counts[2])
            env.stats["true_accuracy"] = float(counts[1] / counts[2])

    def train_batch(self, model, ctx, data: Batch, env: CallEnv) -> Batch:
        keep = (
            "input_ids",
            "attention_mask",
            "response_mask",
            "reward",
            "true_reward",
            "ref_logprobs",
        )
        return {k: data[k] for k in keep if k in data}

    trained_role = "actor"

    def group_loss(self, model, ctx, out, mb) -> tuple[torch.Tensor, torch.Tensor]:
        """(the summed loss of the micro-batch's groups, a score per row whose order within a
        group is the model's preference)."""
        raise NotImplementedError


class DPO(_Preference):
    def group_loss(self, model, ctx, out, mb):
        c = self.exp.dpo
        lp, ref = self.seq_logprobs(model, ctx, out, mb), mb["ref_logprobs"]
        fn = dpo_loss if c.loss == "sigmoid" else ipo_loss
        stats = fn(lp[0::2], lp[1::2], ref[0::2], ref[1::2], c.beta, 1.0)
        return stats.loss, (lp - ref).detach()


class ADPO(_Preference):
    data_key = "candidates"

    def __init__(self, exp, tok, data):
        self.kind = "pairs" if exp.adpo.mode == "pairwise" else "lists"
        super().__init__(exp, tok, data)

    def train_batch(self, model, ctx, data, env):
        batch = super().train_batch(model, ctx, data, env)
        if env.exp.adpo.anchor == "policy":  # the actor before this iteration's steps
            batch["anchor"] = self.policy_logprobs(model, ctx, data, env)
        else:
            batch["anchor"] = data["ref_logprobs"]
        return batch

    def policy_logprobs(self, model, ctx, data, env) -> torch.Tensor:
        return policy_sequence_logprobs(model, ctx, data, env)

    def group_loss(self, model, ctx, out, mb):
        c, k = self.exp.adpo, self.unit
        lp, anchor = self.seq_logprobs(model, ctx, out, mb), mb["anchor"]
        if c.mode == "pairwise":
            stats = adpo_pairwise_loss(
                lp[0::2], lp[1::2], anchor[0::2], anchor[1::2], c.tau, 1.0, c.label
            )
        else:
            q = reward_targets(_groups(mb["reward"], k), c.beta_r)
            stats = adpo_listwise_loss(_groups(lp, k), _groups(anchor, k), q, c.tau, 1.0)
        # The model's preference is measured against the reference, as for DPO: against an
        # on-policy anchor every candidate starts the iteration at a tie.
        return stats.loss, (lp - mb["ref_logprobs"]).detach()


class RewardModel(_Preference):
    """Pairwise Bradley-Terry training of the reward role's value head on the last token."""

    trained_role = "reward"
    named_schema = dict(ROW_SCHEMA)

    def __init__(self, exp, tok, data):
        super().__init__(exp, tok, data)
        self.tensors = {"pairs": tuple(ROW_SCHEMA)}

    def group_loss(self, model, ctx, out, mb):
        am = mb["attention_mask"]
        last = (am * torch.arange(am.shape[1], device=am.device)).argmax(dim=1)
        score = out.float().gather(1, last[:, None]).squeeze(1)  # [b] value at the last token
        return bradley_terry_loss(score[0::2], score[1::2], 1.0).loss, score.detach()
