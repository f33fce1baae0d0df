"""`rlhf-plan profile`: run the estimator's microbenchmarks with a progress bar, write JSON."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cli.common import err, fail, out


def run_profile_command(device: str, out_path: Path | None, quick: bool) -> None:
    import torch  # only this command needs torch

    from estimator.profile import save_profile
    from estimator.profiler import run_profile

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cuda", "cpu"):
        fail(f"--device: {device!r} is neither cuda nor cpu")
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda: torch sees no CUDA device here")
    rank = int(os.environ.get("RANK", "0"))
    command = "rlhf-plan " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if "WORLD_SIZE" in os.environ:
        command = f"torchrun --nproc-per-node {os.environ['WORLD_SIZE']} ... {command}"
    columns = (TextColumn("{task.description:<24}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=rank != 0) as progress:
        profile = run_profile(device, quick, command, progress)
    if profile is None:  # a helper rank of a torchrun launch
        return
    path = out_path or Path(f"profile-{profile.id}.json")
    try:
        save_profile(profile, path)
    except OSError as e:
        fail(f"{path}: cannot write: {e.strerror}")
    out.print(
        f"wrote {path}: {len(profile.ops)} op timings, {len(profile.collectives)} collective "
        f"timings on {profile.device_name} ({profile.dtype}); sustained "
        f"{profile.roofline.flops_per_s / 1e9:.1f} GFLOP/s, "
        f"{profile.roofline.memory_bytes_per_s / 1e9:.1f} GB/s",
        highlight=False,
    )
