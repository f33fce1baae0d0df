"""What a pipeline stage runs for each micro-batch: the padded micro-batch as it is, or its
real tokens packed into rows (plans.packing) with the results put back into the padded layout.

A packed micro-batch of b padded rows of width T becomes r rows of width L (r * L <= b * T,
plans.packing.pack_rows): each sequence's real tokens (one contiguous run per padded row:
left-padded prompt, right-padded response) with position ids 0..n-1, and a bool mask that lets
a token see the earlier tokens of its own sequence only. `StageInput.restore` scatters the
head output of the packed rows back to [b, T, ...] (zeros where the padded row has padding,
which every loss and result masks), so losses and callers see the padded layout. Every stage derives the same rows from
the same batch, hence the same hidden shapes to send and receive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor.data.batching import Batch, micro_batches, model_inputs, padded, rows
from plans.packing import pack_rows, token_cuts


@dataclass(frozen=True)
class StageInput:
    mb: Batch
    """The padded micro-batch: what losses and results see."""
    ids: torch.Tensor
    """First-stage input [r, L] (the padded input_ids when not packed)."""
    pos: torch.Tensor
    """Position ids [r, L]."""
    mask: torch.Tensor | None
    """bool [r, 1, L, L], or None for plain causal attention."""
    slots: torch.Tensor | None = None
    """[n] flat index into the r * L packed slots of each real token (None: not packed)."""
    dest: torch.Tensor | None = None
    """[n] flat index into the b * T padded slots of the same tokens."""

    def hidden_shape(self, hidden: int) -> tuple[int, int, int]:
        return self.ids.shape[0], self.ids.shape[1], hidden

    def restore(self, out: torch.Tensor) -> torch.Tensor:
        """Head output [r, L, ...] of the packed rows -> [b, T, ...] (differentiable)."""
        if self.slots is None:
            return out
        b, t = self.mb["input_ids"].shape
        rest = out.shape[2:]
        real = out.reshape(-1, *rest).index_select(0, self.slots)
        return real.new_zeros(b * t, *rest).index_copy(0, self.dest, real).view(b, t, *rest)

    def next_tokens(self) -> torch.Tensor:
        """[r, L]: at each packed slot the token of the next column of its padded row (what
        the padded log-probs score there; the last column scores itself, and is dropped)."""
        ids = self.mb["input_ids"]
        nxt = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1).reshape(-1).index_select(0, self.dest)
        flat = self.ids.new_zeros(self.ids.numel()).index_copy(0, self.slots, nxt)
        return flat.view(self.ids.shape)


def plain_inputs(micro: list[Batch]) -> list[StageInput]:
    """The padded micro-batches as they are (one host sync for all of them)."""
    pads = padded(micro)
    return [
        StageInput(mb, mb["input_ids"], *model_inputs(mb, p))
        for mb, p in zip(micro, pads, strict=True)
    ]


def row_spans(batch: Batch) -> list[tuple[int, int]]:
    """(first real column, real tokens) of each row, read in one host sync. Packing needs the
    real tokens of a row to be one contiguous run; anything else is refused, not guessed."""
    am = batch["attention_mask"].long()
    t = am.shape[1]
    n = am.sum(1)
    first = am.argmax(1)  # the first 1 of the row (0 for an empty row)
    last = t - 1 - am.flip(1).argmax(1)
    first_l, n_l, last_l = torch.stack([first, n, last]).tolist()
    for i, (a, k, z) in enumerate(zip(first_l, n_l, last_l, strict=True)):
        if k and z - a + 1 != k:
            raise ValueError(
                f"row {i}'s real tokens are not one contiguous run (attention_mask has a "
                "hole); packing needs left-padded prompts and right-padded responses"
            )
    return list(zip(first_l, n_l, strict=True))


def pack_micro(mb: Batch, spans: list[tuple[int, int]]) -> StageInput:
    """One micro-batch packed into rows (plans.packing.pack_rows)."""
    ids = mb["input_ids"]
    b, t = ids.shape
    lengths = [k for _, k in spans]
    if all(k == t for k in lengths):  # no padding: exactly the padded computation
        return plain_inputs([mb])[0]
    packed = pack_rows(lengths, t)
    width = max(sum(lengths[i] for i in row) for row in packed)
    # Per sequence (host, O(b)): where its run starts in the packed rows; per token (torch).
    order = [i for row in packed for i in row]
    starts: list[int] = []
    for r, row in enumerate(packed):
        at = r * width
        for i in row:
            starts.append(at)
            at += lengths[i]
    k = torch.tensor([lengths[i] for i in order], dtype=torch.long)
    run = torch.repeat_interleave(torch.arange(len(order)), k)  # [n] sequence of each token
    within = torch.arange(int(k.sum())) - torch.repeat_interleave(k.cumsum(0) - k, k)
    src = torch.tensor([i * t + spans[i][0] for i in order], dtype=torch.long)
    seq = torch.tensor(order, dtype=torch.long)
    slots_h = torch.tensor(starts, dtype=torch.long)[run] + within
    shape = (len(packed), width)
    pos_h = torch.zeros(shape[0] * width, dtype=torch.long).index_copy_(0, slots_h, within)
    # Sequence of each slot; -1: filler after a row's last sequence.
    seg_h = torch.full((shape[0] * width,), -1, dtype=torch.long).index_copy_(0, slots_h, seq[run])
    dev = ids.device
    slots_t, dest_t = slots_h.to(dev), (src[run] + within).to(dev)
    flat = ids.reshape(-1).index_select(0, dest_t)
    packed_ids = ids.new_zeros(shape[0] * width).index_copy(0, slots_t, flat).view(shape)
    seg_t = seg_h.view(shape).to(dev)
    idx = torch.arange(width, device=dev)
    causal = idx[None, :] <= idx[:, None]  # [L, L]: key <= query
    # Same sequence and not later. The diagonal is always allowed, so no row is all-False
    # (SDPA would give NaN); the filler slots only see filler and are never read.
    mask = (seg_t[:, :, None] == seg_t[:, None, :]) & causal[None]
    pos_t = pos_h.view(shape).to(dev)
    return StageInput(mb, packed_ids, pos_t, mask.unsqueeze(1), slots_t, dest_t)


def stage_inputs(local: Batch, n: int, unit: int = 1, pack: bool = False) -> list[StageInput]:
    """A dp rank's share cut into `n` micro-batches (groups of `unit` rows kept whole): by rows
    and padded, or with `pack` by tokens (plans.packing.token_cuts) and packed. Empty
    micro-batches are dropped (every stage drops the same ones)."""
    if not pack or "attention_mask" not in local:
        return plain_inputs(micro_batches(local, n, unit))
    spans = row_spans(local)
    cuts = token_cuts([k for _, k in spans], n, unit)
    return [pack_micro(rows(local, a, z), spans[a:z]) for a, z in cuts]
