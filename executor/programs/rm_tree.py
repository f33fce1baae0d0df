"""Reward-model training on trees of responses the actor samples (plans.tree): per prompt the
actor generates one tree (shared prefixes decoded once, the KV cache copied at each split), the
experiment's rule scores the leaves, and the reward model is trained Bradley-Terry on every
pair of leaves of a prompt whose scores differ (the higher one chosen; ties carry no
preference). With `depths = [0]` the leaves are independent samples: the chain-based baseline
at the same call structure.

Figures: `labelled_pairs` (pairs with a preference this iteration), `pair_accuracy` (share of
those the reward model ranks right before any step has seen them) and, on the built-in task,
`heldout_accuracy`: the share of a fixed set of HELDOUT built-in pairs (independent responses,
clean labels, never trained on) ranked right after the iteration's steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from executor.compute.generate import generate
from executor.data.batching import Batch
from executor.data.preferences import synthetic_pairs
from executor.parallel.collectives import all_gather_dim, all_reduce_
from executor.programs import calls
from executor.programs.program import CallEnv, Program, PromptSource, prompt_response_rows
from plans.slicing import split_range, split_sizes

HELDOUT = 256
HELDOUT_SEED = 987_654_321  # far from any iteration's seed (seed * 100_003 + it)


def tree_rollout(model, ctx, exp, prompt_ids, prompt_mask, tok, seed: int) -> Batch:
    """This dp rank's share (split_range over all leaves) of every prompt's tree of leaves:
    input_ids/attention_mask [b, T], response_mask [b, G]. Generation splits the prompts over
    dp; the leaves are then regrouped so the rows follow the store's split of B * leaves."""
    t, g, leaves = exp.tree, exp.gen_len, exp.tree.leaves
    cfg = calls.sampling_config(exp, tok, seed, branch=t.branch, split_at=tuple(t.depths))
    out = generate(model, ctx, prompt_ids, prompt_mask, cfg)
    big_b = prompt_ids.shape[0]
    lo, hi = split_range(big_b, ctx.dp_size, ctx.dp_rank)
    b, n = out.tokens.shape
    dev = out.tokens.device
    tokens = torch.full((b, g), tok.pad_token_id, dtype=torch.long, device=dev)
    tokens[:, :n] = out.tokens
    resp = (torch.arange(g, device=dev)[None, :] < out.lengths[:, None]).long()
    ids = torch.cat([prompt_ids[lo:hi].repeat_interleave(leaves, 0), tokens], dim=1)
    am = torch.cat([prompt_mask[lo:hi].long().repeat_interleave(leaves, 0), resp], dim=1)
    both = torch.cat([ids, am, resp], dim=1)  # one gather for the three tensors
    sizes = [s * leaves for s in split_sizes(big_b, ctx.dp_size)]
    both = all_gather_dim(both, ctx.dp_group, sizes, dim=0)
    a, z = split_range(big_b * leaves, ctx.dp_size, ctx.dp_rank)
    both = both[a:z]
    seq = exp.seq_len
    return {
        "input_ids": both[:, :seq],
        "attention_mask": both[:, seq : 2 * seq],
        "response_mask": both[:, 2 * seq :].float(),
    }


def leaf_pairs(label: torch.Tensor, leaves: int) -> torch.Tensor:
    """[groups, L, L] 1 where leaf i's label beats leaf j's within a prompt's tree."""
    x = label.view(-1, leaves)
    return (x[:, :, None] > x[:, None, :]).to(label.dtype)


def bt_tree_loss(score: torch.Tensor, label: torch.Tensor, leaves: int) -> torch.Tensor:
    """Bradley-Terry summed over every labelled leaf pair: -sum log sigmoid(s_w - s_l)."""
    s = score.view(-1, leaves)
    diff = s[:, :, None] - s[:, None, :]
    return -(F.logsigmoid(diff) * leaf_pairs(label, leaves)).sum()


def _heldout_rows(tok, exp) -> Batch:
    """The HELDOUT built-in pairs as (prompt, response) rows, chosen then rejected."""
    pairs = synthetic_pairs(HELDOUT, HELDOUT_SEED)
    prompts = [p.prompt for p in pairs for _ in range(2)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    return prompt_response_rows(tok, exp, prompts, responses)


class RMTree(Program):
    tensors = {
        "prompts": ("prompt_ids", "prompt_mask"),
        "tree_seq": tuple(calls.ROLLOUT_SCHEMA),
    }
    named_schema = {
        "prompt_ids": ("P", torch.long),
        "prompt_mask": ("P", torch.long),
        **calls.ROLLOUT_SCHEMA,
    }

    def __init__(self, exp, tok, data):
        super().__init__(exp, tok, data)
        self.prompts = PromptSource(exp, tok, self.data_path)
        self.unit = exp.tree.leaves
        self.builtin = exp.dataset is None and exp.reward_function == "builtin:digits"
        # The held-out pairs as rows, built once on the host (heldout_accuracy moves them).
        self.heldout = _heldout_rows(tok, exp) if self.builtin else None

    def rows(self) -> int:
        return self.exp.batch_size * self.unit

    def dataset(self, it: int) -> Batch:
        return self.prompts.batch(it)

    def run(self, m, model, ctx, data: Batch, env: CallEnv):
        exp = env.exp
        if m.name == "actor_tree":
            seed = exp.seed * 7919 + env.iteration
            p_ids, p_mask = data["prompt_ids"], data["prompt_mask"]
            return tree_rollout(model, ctx, exp, p_ids, p_mask, env.tok, seed)
        if m.name == "rew_train":
            self.train(model, ctx, data, env)
            return None
        raise NotImplementedError(f"rm-tree has no call {m.name}")

    def _score(self, model, ctx, out: torch.Tensor, mb: Batch) -> torch.Tensor:
        am = mb["attention_mask"]
        last = (am * torch.arange(am.shape[1], device=am.device)).argmax(dim=1)
        return out.float().gather(1, last[:, None]).squeeze(1)  # [b] value at the last token

    def train(self, model, ctx, data: Batch, env: CallEnv) -> None:
        exp, k = env.exp, self.unit
        label = calls.rule_score_all(exp, data, env.rule, env.tok, answers=self.prompts.answer_of)
        batch = {**calls.model_batch(data), "label": label.float()}
        dev = data["input_ids"].device
        counts = torch.zeros(2, dtype=torch.float64, device=dev)  # right, labelled
        first = [True]

        def loss_fn(out: torch.Tensor, mb: Batch) -> torch.Tensor:
            s = self._score(model, ctx, out, mb)
            if first[0]:
                with torch.no_grad():
                    w = leaf_pairs(mb["label"], k)
                    sv = s.view(-1, k)
                    counts[0] += float(((sv[:, :, None] > sv[:, None, :]).float() * w).sum())
                    counts[1] += float(w.sum())
            return bt_tree_loss(s, mb["label"], k)

        def pairs(b: Batch) -> float:
            return float(leaf_pairs(b["label"], k).sum())

        one = exp.model_copy(update={"ppo_epochs": 1})
        steps = []
        for epoch in range(exp.ppo_epochs):
            first[0] = epoch == 0
            grad_clip = exp.optimizer("reward").grad_clip
            steps += calls.optimizer_steps(
                model, ctx, env.opt, one, batch, loss_fn, pairs, env.n_micro, grad_clip, unit=k
            )
        all_reduce_(counts, ctx.dp_group)
        env.stats.update(calls.step_summary("reward", steps))
        if ctx.is_last_stage:
            env.stats["labelled_pairs"] = float(leaf_pairs(label, k).sum())
            if counts[1] > 0:
                env.stats["pair_accuracy"] = float(counts[0] / counts[1])
        if self.builtin:
            acc = self.heldout_accuracy(model, ctx, env)
            if acc is not None:
                env.stats["heldout_accuracy"] = acc

    def heldout_accuracy(self, model, ctx, env: CallEnv) -> float | None:
        """Share of the HELDOUT built-in pairs whose chosen response scores strictly higher."""
        assert self.heldout is not None
        dev = next(model.parameters()).device
        rows = {k: v.to(dev, non_blocking=True) for k, v in self.heldout.items()}
        with torch.no_grad():
            v = calls.last_token_score(model, ctx, rows, env.n_micro)
        if v is None:
            return None
        n = rows["input_ids"].shape[0]
        v = all_gather_dim(v, ctx.dp_group, split_sizes(n, ctx.dp_size), dim=0)
        return float((v[0::2] > v[1::2]).float().mean())
