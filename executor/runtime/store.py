"""Data between calls: each call's outputs stay where they were computed (its dp shares on
its last pipeline stage) and are posted to each consumer's mesh right after the call.

A consumer receives the *whole* batch of each key on every rank of its mesh, which is what
the executor's forward, generate and train functions take (each dp rank then cuts its own
share with split_range). Rollout data is small next to parameters, and replicating it keeps
the mini-batch composition independent of the layout, so every plan trains on the same
samples in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from executor.realloc.batches import post_batch
from executor.realloc.move import Pending
from plans import Allocation
from plans.transfer import SAMPLES, Piece, TransferPlan, batch_layout, plan_transfers

Schema = dict[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass
class Entry:
    producer: Allocation
    n_samples: int
    keys: tuple[str, ...]
    local: dict[str, torch.Tensor]  # this rank's share ({} off the producer's last stage)


class DataStore:
    def __init__(self, gpus_per_node: int, schema: Schema, device: torch.device | str = "cpu"):
        self.gpn = gpus_per_node
        self.device = torch.device(device)
        """Where received batches land: this worker's device."""
        self.schema = schema
        self.entries: dict[str, Entry] = {}  # by producing call
        self._plans: dict[tuple, TransferPlan] = {}

    def put(
        self,
        call: str,
        producer: Allocation,
        n_samples: int,
        keys: tuple[str, ...],
        local: dict[str, torch.Tensor] | None,
    ) -> None:
        local = local or {}
        for k, v in local.items():
            want = self.schema[k]
            if tuple(v.shape[1:]) != want[0] or v.dtype != want[1]:
                raise ValueError(
                    f"{call} produced {k} as {tuple(v.shape)} {v.dtype}, expected [*, {want}]"
                )
        self.entries[call] = Entry(producer, n_samples, keys, local)

    def post(self, call: str, consumer: Allocation) -> tuple[dict[str, torch.Tensor], Pending]:
        """Start moving `call`'s outputs to every rank of `consumer`'s mesh: (the whole batch
        on this rank, {} off that mesh, readable once the pending part is waited; the pending
        part). Every rank must call it, in the same order; nobody waits here, so a producer
        goes on with its next call while the consumer may still be busy with another."""
        e = self.entries[call]
        key = (call, e.producer, consumer.mesh, e.n_samples)
        if key not in self._plans:
            src = batch_layout(e.producer, e.n_samples, self.gpn, last_stage_only=True)
            whole = {SAMPLES: Piece(SAMPLES, ((0, e.n_samples),))}
            dst = {r: whole for r in consumer.mesh.ranks(self.gpn)}
            self._plans[key] = plan_transfers(src, dst, self.gpn)
        schema = {k: self.schema[k] for k in e.keys}
        return post_batch(self._plans[key], dict(e.local), schema, device=self.device)
