"""`rlhf-plan profile`: time the executor's own modules on the local device (imports torch).

Compute ops are timed on one rank's shard of a block (a tp=k entry holds 1/k of the heads and
MLP columns, built by executor.model.Transformer with no tp group, so no communication is
timed with it). Collectives are timed only when launched under torchrun with several processes
(gloo on CPU, NCCL on CUDA); rank 0 then goes on to the compute grid and writes the profile.
CPU profiles run one torch thread, as every CPU worker of the executor does.
"""

from __future__ import annotations

import math
import os
import platform
import time
from datetime import UTC, datetime

from estimator.fitting import fit_roofline, link_rates
from estimator.profile import (
    CollectiveTiming,
    ContentionTiming,
    OpTiming,
    Profile,
)
from estimator.shapes import DECODE_STACK_BYTES, DTYPE_BYTES
from executor.profiling.collectives import CONTEXTS, time_collectives
from executor.profiling.kernels import (
    GRIDS,
    STATISTIC,
    op_points,
    optimizer_points,
    shard_pieces,
    timer,
)
from executor.runtime.cpu_process import setup_cpu_process
from plans import preset
from plans.devices import device_kind


def fresh_memory_rate(device: str = "cpu", nbytes: int = 256 * 2**20, reps: int = 3) -> float:
    """Bytes/s of filling a newly allocated buffer (on a CPU mostly page faults), best of
    `reps`: what a reallocation's new shards and the DP all-reduce's flat buffer cost here."""
    import torch

    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        buf = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        buf.fill_(1.0)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        del buf
    return nbytes / best


def copy_memory_rate(device: str = "cpu", nbytes: int = 256 * 2**20, reps: int = 5) -> float:
    """Bytes/s of copying between two buffers already in use, best of `reps`: what the local
    copies, packing and unpacking of a reallocation into reused memory cost here."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.zeros_like(src)  # touched, so no page faults are timed
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def memory_rates(device: str) -> dict[str, float]:
    """The roofline's measured memory rates (fields of estimator.profile.Roofline)."""
    return {
        "fresh_memory_bytes_per_s": fresh_memory_rate(device),
        "copy_memory_bytes_per_s": copy_memory_rate(device),
    }


def with_memory_rates(base: Profile, rates: dict[str, float], command: str) -> Profile:
    """`base` with measured memory rates (fields of Roofline, as `memory_rates` gives them),
    the change recorded in `refinements`; everything else is kept."""
    import torch

    stamp = datetime.now(UTC)
    note = ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in rates.items())
    return base.refined(
        {"roofline": base.roofline.model_copy(update=rates)},
        "memory",
        stamp,
        command,
        f"measured with one torch thread (torch {torch.__version__}): {note}",
    )


def main(argv: list[str] | None = None) -> None:
    """Measure this CPU's memory-copy rate (one torch thread) and write it into the profiles
    named on the command line, in place: how a profile made before the rate was part of it
    gets a measured value without timing everything again (its other figures are kept)."""
    import sys

    from estimator.profile import load_profile, save_profile

    paths = sys.argv[1:] if argv is None else argv
    setup_cpu_process()
    rates = {"copy_memory_bytes_per_s": copy_memory_rate("cpu")}
    command = "python -m executor.profiling.profiler " + " ".join(paths)
    for path in paths:
        save_profile(with_memory_rates(load_profile(path), rates, command), path)
        print(f"{path}: " + ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in rates.items()))


def run_profile(device: str, quick: bool, command: str, progress=None) -> Profile | None:
    """Measure; returns None on ranks other than 0 of a torchrun launch."""
    import torch

    dev_type = "cuda" if device == "cuda" else "cpu"
    if dev_type == "cpu":
        setup_cpu_process()
    grid = GRIDS[(dev_type, quick)]
    dtype = torch.float32 if dev_type == "cpu" else torch.bfloat16
    dtype_name = "float32" if dev_type == "cpu" else "bfloat16"
    dt = DTYPE_BYTES[dtype_name]
    torch_dev = torch.device(dev_type)
    sync = torch.cuda.synchronize if dev_type == "cuda" else (lambda: None)
    colls: list[CollectiveTiming] = []
    contention: list[ContentionTiming] = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        timings = time_collectives(dev_type, quick, progress)
        if timings is None:
            return None
        colls, contention = timings
    # On CPU (one thread) the process's CPU time is the wall time of an idle machine, and
    # stays so when other jobs share the cores; a GPU is timed by the wall clock.
    clock = time.process_time if dev_type == "cpu" else time.perf_counter
    timed = timer(sync, grid, clock, STATISTIC)
    jobs = [
        (m, tp) for m in grid.models for tp in grid.tps if preset(m).num_key_value_heads % tp == 0
    ]
    rounds = grid.rounds
    task = progress.add_task("compute ops", total=rounds * (len(jobs) + 1)) if progress else None
    seen: dict[tuple, list[OpTiming]] = {}
    # Several passes over the whole grid, keeping each point's middle one: a burst of other
    # work on a shared machine (or a lucky pass) then moves no point.
    for r in range(rounds):
        ops: list[OpTiming] = []
        for name, tp in jobs:
            if progress:
                progress.update(task, description=f"{name} tp={tp} ({r + 1}/{rounds})")
            model = shard_pieces(name, tp, dtype, torch_dev)
            ops += op_points(grid, model, name, tp, dt, torch_dev, dtype, timed)
            del model
            ops += optimizer_points(name, tp, grid.opt_layers, dtype, torch_dev, timed)
            if progress:
                progress.advance(task)
        for t in ops:
            seen.setdefault((t.op, t.shape, t.batch, t.seq_len), []).append(t)
        if progress:
            progress.advance(task)
    ops = [sorted(ts, key=lambda t: t.time_s)[len(ts) // 2] for ts in seen.values()]
    if dev_type == "cuda":
        props = torch.cuda.get_device_properties(0)
        dev_name = props.name
        # The device table's name (plans.devices), as search --device and plans spell it.
        dev_kind = device_kind(dev_name, props.total_memory / 2**30) or "cuda"
    else:
        dev_name, dev_kind = machine_name("cpu"), "cpu"
    stamp = datetime.now(UTC)
    return Profile(
        kind="measured",
        id=f"{dev_kind}-{stamp:%Y%m%d-%H%M%S}{'-quick' if quick else ''}",
        device=dev_kind,
        device_name=dev_name,
        dtype=dtype_name,
        threads=torch.get_num_threads() if dev_type == "cpu" else None,
        model_code="executor.model.Transformer",
        clock="process_time" if dev_type == "cpu" else "perf_counter",
        statistic=STATISTIC,
        created=stamp.isoformat(timespec="seconds"),
        decode_stack_bytes=DECODE_STACK_BYTES,
        command=command,
        torch_version=torch.__version__,
        roofline=fit_roofline(ops, *link_rates(colls)).model_copy(update=memory_rates(dev_type)),
        ops=ops,
        collectives=colls,
        contention=contention,
    )


def run_collectives_into(
    base: Profile, device: str, quick: bool, command: str, progress=None
) -> Profile | None:
    """Time the collectives only (under torchrun) and return `base` with them: its compute
    timings are kept, its collective tables and link rates replaced, and the change recorded
    in `refinements`. None on ranks other than 0."""
    import torch

    dev_type = "cuda" if device == "cuda" else "cpu"
    if dev_type == "cpu":
        setup_cpu_process()
    timings = time_collectives(dev_type, quick, progress)
    if timings is None:
        return None
    colls, contention = timings
    intra, inter = link_rates(colls)
    stamp = datetime.now(UTC)
    sizes = sorted({c.group_size for c in colls})
    context = (
        "; group collectives timed in context, back to back after compute "
        f"bursts of {', '.join(f'{c * 1e3:g}' for c in CONTEXTS[quick])} ms"
        if dev_type == "cpu"
        else ""
    )
    note = (
        f"{len(colls)} collective timings over group sizes {', '.join(map(str, sizes))} "
        f"({'gloo' if dev_type == 'cpu' else 'nccl'}, torch {torch.__version__}{context}); "
        f"fresh-memory and memory-copy rates measured"
        + (
            f"; {len(contention)} passes timed alone and next to a busy worker"
            if contention
            else ""
        )
        + f"; compute timings of {base.id} kept"
    )
    rates = {"intra_node_bytes_per_s": intra, "inter_node_bytes_per_s": inter}
    return base.refined(
        {
            "id": f"{base.id.split('+')[0]}+coll-{stamp:%Y%m%d-%H%M%S}",
            "collectives": colls,
            "contention": contention,
            "roofline": base.roofline.model_copy(update={**rates, **memory_rates(dev_type)}),
        },
        "collectives",
        stamp,
        command,
        note,
    )


def machine_name(dev_type: str) -> str:
    """The device name a profile made here records (`Profile.device_name`): the GPU's as torch
    says it, or the CPU model."""
    if dev_type == "cuda":
        import torch

        return torch.cuda.get_device_name()
    if platform.processor():
        return platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


if __name__ == "__main__":
    main()
