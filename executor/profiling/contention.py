"""Whole passes timed alone and next to a busy worker: the profile's contention timings.

Op timings are taken one process at a time. In rlhf-run the workers of a CPU node compute at
the same time (a data-parallel call's ranks, or two calls placed side by side), and cores of
one CPU share caches and memory bandwidth, so each may run slower than alone (on the 2-core
development machine 0.9-1.5x from one measurement to the next: noisy). Under torchrun, rank 0
times each call kind's pass of a whole preset model (all blocks, tp 1, through the executor's
own call code) while the other ranks wait, then while rank 1 runs the same pass; rounds of the
two alternate, so a drift of the machine's speed moves both. estimator.contention turns the
ratio into the factor the simulator stretches concurrent calls by.
"""

from __future__ import annotations

import math
import statistics
import time

from estimator.profile import ContentionTiming
from plans.model import ModelSpec, preset

# Whole models timed (tp 1): the presets tiny (0.2M parameters) and small (85M) and two
# sizes between them (1.1M, 26M): where the weights live (a core's own cache, the shared
# one, memory) may decide how much two workers slow each other, and it changes with size.
BETWEEN = {
    "between-1m": {"hidden_size": 128, "intermediate_size": 320, "num_hidden_layers": 6},
    "between-26m": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8,
                    "num_attention_heads": 8, "num_key_value_heads": 8},
}  # fmt: skip
MODELS = {True: ("tiny",), False: ("tiny", "between-1m", "between-26m", "small")}
ROUNDS = {True: 2, False: 4}
PHASE_S = 0.3  # seconds of repetitions per phase and round (at least 2 repetitions)
BATCH, SEQ, PROMPT, NEW_TOKENS = 4, 32, 16, 16


def timed_model_spec(name: str) -> ModelSpec:
    """A preset, or one of the BETWEEN sizes (the tiny preset with other dimensions)."""
    if name in BETWEEN:
        doc = preset("tiny").model_dump() | {"name": name, "head_dim": None, **BETWEEN[name]}
        return ModelSpec.model_validate(doc)  # (head_dim: hidden / heads again)
    return preset(name)


def repeat_times(fn, reps: int) -> list[float]:
    """Wall seconds of `reps` back-to-back runs of `fn`."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def time_contention(quick: bool, progress=None) -> list[ContentionTiming] | None:
    """Under an initialized CPU process group of at least 2 ranks: the timings on rank 0,
    None on the other ranks."""
    import torch
    import torch.distributed as dist

    from executor.profiling.kernels import shard_pieces
    from executor.profiling.passes import generate_fn, pass_fns

    rank = dist.get_rank()
    out: list[ContentionTiming] = []
    task = None
    if progress is not None and rank == 0:
        task = progress.add_task("contention", total=len(MODELS[quick]))
    for name in MODELS[quick]:
        spec = timed_model_spec(name)
        model = shard_pieces(spec, 1, torch.float32, "cpu", layers=spec.num_hidden_layers)
        passes = pass_fns(model, BATCH, SEQ, "cpu")
        fns = {
            "generate": generate_fn(model, BATCH, PROMPT, NEW_TOKENS, "cpu"),
            "inference": passes["infer_pass"],
            "train": passes["train_pass"],
        }
        for kind, fn in fns.items():
            fn()  # warm-up on every rank
            # Enough repetitions for PHASE_S seconds, as rank 0 counts them (the same on
            # every rank): short passes jitter by more than the contention to be measured.
            reps = torch.zeros(1, dtype=torch.int64)
            if rank == 0:
                reps[0] = max(2, math.ceil(PHASE_S / max(min(repeat_times(fn, 2)), 1e-6)))
            dist.broadcast(reps, 0)
            n = int(reps[0])
            alone, together = [], []
            for _ in range(ROUNDS[quick]):
                dist.barrier()
                if rank == 0:
                    alone += repeat_times(fn, n)
                dist.barrier()
                if rank == 0:
                    together += repeat_times(fn, n)
                elif rank == 1:  # one more than rank 0, so that rank 0 is never alone
                    repeat_times(fn, n + 1)
            model.zero_grad(set_to_none=True)
            if rank == 0:
                out.append(
                    ContentionTiming(
                        kind=kind,
                        model=name,
                        params=spec.num_params(),
                        alone_s=statistics.median(alone),
                        together_s=statistics.median(together),
                    )
                )
        del model
        if task is not None:
            progress.advance(task)
    dist.barrier()
    return out if rank == 0 else None
