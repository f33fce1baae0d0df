"""Sequence packing: the rules the runtime (executor.data.packing) and the estimator share.

With `[packing]` in the experiment, the train and inference calls (not generation) run each
micro-batch's real tokens (attention_mask == 1) concatenated into packed rows instead of the
padded [b, prompt_len + gen_len] layout: position ids restart at 0 per sequence and each token
attends to its own sequence only, so every real token's result equals the padded one's.

- Micro-batches of a dp rank's share are consecutive sequences with about equal token counts
  (`token_cuts`), not equal row counts; groups of `unit` rows stay whole.
- A micro-batch's sequences go into rows of about equal length (`pack_rows`), as many as make
  the fewest slots (rows x width) without more slots or more attention pairs than the padded
  rows, so no call does more work than padded.
- The estimator prices a packed call's micro-batch at the (rows, width) `expected_shape`
  gives for the expected tokens per sequence (`sequence_tokens`).
"""

from __future__ import annotations

import heapq
import math

from pydantic import BaseModel, ConfigDict, Field

from plans.strict import STRICT


class PackingSpec(BaseModel):
    """Packed variable-length sequences in the train and inference calls."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    expected_response_len: float | None = Field(
        None,
        gt=0,
        description="Mean response tokens the estimator prices packed calls with; None = "
        "gen_len, or the mean response_len of the run's metrics when a profile is calibrated "
        "from a run.",
    )
    expected_prompt_len: float | None = Field(
        None,
        gt=0,
        description="Mean real (unpadded) prompt tokens the estimator prices packed calls "
        "with; None = prompt_len.",
    )


def token_cuts(lengths: list[int], parts: int, unit: int = 1) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of `parts` consecutive pieces of rows with token counts
    `lengths`, each about sum/parts tokens, cut between groups of `unit` rows only. Piece i
    ends at the group boundary whose running token count is nearest to (i+1)/parts of the
    total (ties: the earlier boundary). Empty pieces are dropped; the same lengths give the
    same cuts on every rank."""
    if len(lengths) % unit:
        raise ValueError(f"a batch of {len(lengths)} rows is not made of groups of {unit}")
    groups = len(lengths) // unit
    running = [0]
    for g in range(groups):
        running.append(running[-1] + sum(lengths[g * unit : (g + 1) * unit]))
    total = running[-1]
    cuts, prev = [0], 0
    for i in range(1, parts):
        target = total * i / parts
        best = min(range(prev, groups + 1), key=lambda k: (abs(running[k] - target), k))
        cuts.append(best)
        prev = best
    cuts.append(groups)
    return [(a * unit, z * unit) for a, z in zip(cuts, cuts[1:], strict=False) if z > a]


def _deal(lengths: list[int], order: list[int], r: int) -> list[list[int]]:
    """Sequences dealt longest first, each to the row with the fewest tokens so far (the
    lowest index among equals)."""
    heap = [(0, k) for k in range(r)]
    rows: list[list[int]] = [[] for _ in range(r)]
    for i in order:
        load, k = heapq.heappop(heap)
        rows[k].append(i)
        heapq.heappush(heap, (load + lengths[i], k))
    return rows


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices per packed row, for sequences of `lengths` tokens whose padded rows
    are `capacity` wide. Rows are as even as dealing longest first to the shortest row makes
    them. The row count r is chosen among a few: for target widths from the longest sequence
    to twice it (in eighths), the r and r + 1 rows the tokens need at that width, and one
    sequence per row; kept are the counts that do no more work than the padded rows
    (r * width <= n * capacity slots, r * width^2 <= n * capacity^2 attention pairs), and of
    those the one with the fewest slots, then pairs, then rows. Empty rows are dropped."""
    n = len(lengths)
    if n == 0:
        return []
    longest = max(lengths)
    if longest > capacity:
        raise ValueError(f"a sequence of {longest} tokens exceeds the row of {capacity}")
    total = sum(lengths)
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    counts = {n}
    for j in range(9):
        r = math.ceil(total / (longest * (8 + j) / 8))
        counts |= {min(n, max(1, r)), min(n, r + 1)}
    best: tuple[tuple[int, int, int], list[list[int]]] | None = None
    for r in sorted(counts):
        rows = [row for row in _deal(lengths, order, r) if row]
        width = max(sum(lengths[i] for i in row) for row in rows)
        slots, pairs = len(rows) * width, len(rows) * width * width
        if slots > n * capacity or pairs > n * capacity * capacity:
            continue
        key = (slots, pairs, len(rows))
        if best is None or key < best[0]:
            best = (key, rows)
    assert best is not None, "one sequence per row is always allowed"
    return best[1]


def sequence_tokens(exp) -> float:
    """Expected real tokens of one sequence of a packed call of `exp` (an ExperimentSpec with
    `packing`): the expected prompt and response lengths, each at most its padded length."""
    pk = exp.packing
    p = exp.prompt_len if pk.expected_prompt_len is None else pk.expected_prompt_len
    r = exp.gen_len if pk.expected_response_len is None else pk.expected_response_len
    return min(p, exp.prompt_len) + min(r, exp.gen_len)


def expected_shape(sequences: int, tokens: float, capacity: int) -> tuple[int, int]:
    """(rows, width) of the packed micro-batch of `sequences` sequences of `tokens` tokens on
    average, in rows of `capacity`: as few full rows as the tokens need (first fit gets close
    to that when sequences are short against the row), never more rows than sequences and
    never wider than the padded row."""
    if sequences <= 0:
        return 0, capacity
    total = sequences * min(max(tokens, 1.0), capacity)
    rows = min(sequences, max(1, math.ceil(total / capacity)))
    return rows, min(capacity, math.ceil(total / rows))


def with_measured_lengths(exp, response_lens: list[float]):
    """`exp` with the mean of a run's measured `response_len` (its metrics rows') as the
    expected response length, where it packs and does not set one itself; else `exp`."""
    pk = exp.packing
    if pk is None or pk.expected_response_len is not None or not response_lens:
        return exp
    mean = min(max(sum(response_lens) / len(response_lens), 1.0), float(exp.gen_len))
    packing = pk.model_copy(update={"expected_response_len": mean})
    return exp.model_copy(update={"packing": packing})
