"""What an algorithm's calls do on one rank, behind one small interface the worker walks.

A `Program` names the tensors its calls exchange (per MFC data key), produces the dataset rows
of an iteration (the keys no call produces: prompts, preference pairs, candidate lists; the
same whole batch on every rank), and runs one call on its mesh. The worker does the rest:
order, reallocation, moving outputs to consumers, metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from executor.data.batching import Batch
from executor.data.prompt_rows import (
    PromptRow,
    chat_of,
    check_rows,
    encode_row,
    read_prompt_rows,
)
from executor.data.sources import (
    RewardFn,
    epoch_order,
    reward_function,
    synthetic_prompts,
    wants_answer,
)
from executor.data.tokenizer import Tokenizer, left_pad
from executor.model import Transformer
from executor.parallel.context import ParallelContext
from executor.programs.calls import shaped
from plans import MFC, ExperimentSpec, PlanError


@dataclass
class CallEnv:
    """Everything a call needs besides its model and data."""

    exp: ExperimentSpec
    tok: Tokenizer
    rule: RewardFn | None
    iteration: int
    n_micro: int
    opt: object | None = None
    stats: dict = field(default_factory=dict)
    staleness: int = 0
    """The plan's max_staleness: > 0 when the actor trains on data of an older policy."""


class Program:
    unit = 1
    """Consecutive rows that belong together in a loss (a preference pair: 2)."""
    tensors: dict[str, tuple[str, ...]] = {}
    """MFC data key -> the tensors that carry it."""
    named_schema: dict[str, tuple[str, torch.dtype]] = {}
    """Tensor -> (per-row shape in symbols T, G or '', dtype); see calls.shaped."""

    def __init__(self, exp: ExperimentSpec, tok: Tokenizer, data: str | None):
        self.exp, self.tok = exp, tok
        self.data_path = data or exp.dataset

    def schema(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return shaped(self.exp, self.named_schema)

    def rows(self) -> int:
        """Rows of every call's data in an iteration."""
        return self.exp.batch_size

    def dataset(self, it: int) -> Batch:
        """The dataset keys of iteration `it` (whole batch, identical on every rank)."""
        raise NotImplementedError

    def run(
        self, m: MFC, model: Transformer | None, ctx: ParallelContext, data: Batch, env: CallEnv
    ) -> Batch | None:
        """Run call `m` on this rank of its mesh; return this rank's share of its outputs
        (None off the last stage) and put what the metrics should show into env.stats."""
        raise NotImplementedError


class PromptSource:
    """The prompts of an iteration, tokenized and left-padded to exactly prompt_len: from a
    JSONL or Parquet file (executor.data.prompt_rows: text or chat rows, with answers;
    shuffled anew every epoch: executor.data.sources.epoch_order), else the built-in synthetic
    task. Either way the prompts of an iteration are a function of (seed, iteration). Each
    prompt is repeated `repeat` times in consecutive rows (a GRPO group)."""

    def __init__(self, exp: ExperimentSpec, tok: Tokenizer, path: str | None, repeat: int = 1):
        self.exp, self.tok, self.repeat = exp, tok, repeat
        self.rows = read_prompt_rows(path) if path else None
        rule = exp.reward_function
        needs = rule if rule and wants_answer(reward_function(rule)) else None
        if self.rows is not None:
            check_rows(self.rows, str(path), tok, needs)
        elif needs:
            raise PlanError(
                f"{needs} checks each prompt's answer: give a dataset whose rows have one",
                field="dataset",
            )
        self._answers: dict[tuple[int, ...], str] = {}
        self._previous: dict[tuple[int, ...], str] = {}

    def _rows(self, it: int) -> list[PromptRow] | None:
        if self.rows is None:
            return None
        n = self.exp.batch_size
        return [self.rows[i] for i in epoch_order(len(self.rows), self.exp.seed, it * n, n)]

    def texts(self, it: int) -> list[str]:
        """The prompts of iteration `it` as text (a chat row: as its template renders it)."""
        rows = self._rows(it)
        if rows is None:
            return synthetic_prompts(self.exp.batch_size, seed=self.exp.seed * 100_003 + it)
        return [r.prompt if r.messages is None else self.tok.chat(chat_of(r)) for r in rows]

    def batch(self, it: int) -> Batch:
        p = self.exp.prompt_len
        rows = self._rows(it)
        if rows is None:
            encoded = [self.tok.encode(t) for t in self.texts(it)]
        else:
            encoded = [encode_row(r, self.tok) for r in rows]
        encoded = [x for x in encoded for _ in range(self.repeat)]
        ids, mask = pad_prompts(encoded, p, self.tok.pad_token_id)
        if rows is not None:
            # Answers by the very ids the reward call sees; this and the last iteration's.
            self._previous, self._answers = self._answers, {}
            repeated = [r for r in rows for _ in range(self.repeat)]
            for row, key in zip(repeated, ids.tolist(), strict=True):
                if row.answer is not None:
                    self._answers.setdefault(tuple(key), row.answer)
        return {"prompt_ids": ids, "prompt_mask": mask}

    def answer_of(self, prompt_ids: tuple[int, ...]) -> str | None:
        """The answer of the dataset row whose padded prompt ids these are."""
        return self._answers.get(prompt_ids, self._previous.get(prompt_ids))


def pad_prompts(ids: list[list[int]], p: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad (keeping the end of a long prompt) to exactly `p` columns."""
    ids = [x[-p:] for x in ids]
    out, mask = left_pad(ids, pad)
    if out.shape[1] < p:
        extra = p - out.shape[1]
        out = torch.cat([torch.full((len(ids), extra), pad), out], dim=1)
        mask = torch.cat([torch.zeros(len(ids), extra, dtype=mask.dtype), mask], dim=1)
    return out, mask.long()


def prompt_response_rows(
    tok: Tokenizer, exp: ExperimentSpec, prompts: list[str], responses: list[str]
) -> Batch:
    """Fixed (prompt, response) texts as rows shaped like a rollout: the prompt left-padded to
    P, the response (ended by EOS when it fits) right-padded to G."""
    p, g = exp.prompt_len, exp.gen_len
    pid, pmask = pad_prompts([tok.encode(t) for t in prompts], p, tok.pad_token_id)
    resp = torch.full((len(responses), g), tok.pad_token_id, dtype=torch.long)
    rmask = torch.zeros(len(responses), g)
    for i, text in enumerate(responses):
        ids = tok.encode(text, add_bos=False)
        if tok.eos_token_id is not None:
            ids = [*ids, tok.eos_token_id]
        ids = ids[:g]
        resp[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        rmask[i, : len(ids)] = 1.0
    return {
        "input_ids": torch.cat([pid, resp], dim=1),
        "attention_mask": torch.cat([pmask, rmask.long()], dim=1),
        "response_mask": rmask,
    }
