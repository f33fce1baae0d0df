"""`rlhf-plan profile`: run the estimator's microbenchmarks with a progress bar, write JSON;
or refine a profile from rlhf-run measurements (`--from-run`)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import err, fail, out, print_json


def _command() -> str:
    command = "rlhf-plan " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if "WORLD_SIZE" in os.environ:
        command = f"torchrun --nproc-per-node {os.environ['WORLD_SIZE']} ... {command}"
    return command


def run_profile_command(
    device: str,
    out_path: Path | None,
    quick: bool,
    base_path: Path | None = None,
    as_json: bool = False,
) -> None:
    import torch  # only this command needs torch

    from estimator.profile import load_profile
    from executor.profiling.profiler import run_collectives_into, run_profile
    from plans import DEVICES
    from plans.devices import backend, device_kind

    device = (device or ("cuda" if torch.cuda.is_available() else "cpu")).lower()
    if device not in DEVICES and device != "cuda":
        fail(f"--device: {device!r} is none of cuda, {', '.join(DEVICES)}")
    if device != "cpu" and not torch.cuda.is_available():
        hint = (
            f" (rlhf-plan search --device {device} without --profile uses its datasheet figures)"
            if device in DEVICES
            else ""
        )
        fail(f"--device {device}: torch sees no CUDA device here{hint}")
    if device in DEVICES and device != "cpu":  # a table row: the GPU here must be that one
        props = torch.cuda.get_device_properties(0)
        kind = device_kind(props.name, props.total_memory / 2**30)
        if kind != device:
            fail(
                f"--device {device}: this machine's GPU is {props.name} "
                f"({kind or 'not in the device table'}); profile it as --device {kind or 'cuda'}"
            )
    device = backend(device)
    base = load_profile(base_path) if base_path else None
    if base is not None and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        fail(
            "--profile without --from-run measures collectives into the given profile, which "
            "needs several processes: run it under torchrun (e.g. --nproc-per-node 2)"
        )
    rank = int(os.environ.get("RANK", "0"))
    command = _command()
    columns = (TextColumn("{task.description:<24}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=rank != 0 or as_json) as progress:
        if base is not None:
            profile = run_collectives_into(base, device, quick, command, progress)
        else:
            profile = run_profile(device, quick, command, progress)
    if profile is None:  # a helper rank of a torchrun launch
        return
    path = _save(profile, out_path)
    if as_json:
        print_json(
            {
                "profile": str(path),
                "id": profile.id,
                "device": profile.device,
                "device_name": profile.device_name,
                "dtype": profile.dtype,
                "op_timings": len(profile.ops),
                "collective_timings": len(profile.collectives),
                "flops_per_s": profile.roofline.flops_per_s,
                "memory_bytes_per_s": profile.roofline.memory_bytes_per_s,
            }
        )
        return
    out.print(
        f"wrote {path}: {len(profile.ops)} op timings, {len(profile.collectives)} collective "
        f"timings on {profile.device_name} ({profile.dtype}); sustained "
        f"{profile.roofline.flops_per_s / 1e9:.1f} GFLOP/s, "
        f"{profile.roofline.memory_bytes_per_s / 1e9:.1f} GB/s",
        highlight=False,
    )


def run_check_command(path: Path, as_json: bool) -> None:
    """Re-time some of a measured profile's points here and report measured / profiled."""
    from estimator.profile import load_profile
    from executor.profiling.check import check_profile, verdict
    from executor.profiling.profiler import machine_name
    from plans.devices import backend

    profile = load_profile(path)
    if profile.kind != "measured":
        fail(f"{path}: an analytic profile has no timings to check; give a measured one")
    if profile.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            fail(f"{path}: measured on {profile.device}; torch sees no CUDA device here")
    here = machine_name(backend(profile.device))
    with err.status(f"re-timing {path.name} on {here} ..."):
        rows = check_profile(profile)
    ratio, line = verdict(rows)
    same = here == profile.device_name
    if as_json:
        print_json(
            {
                "profile": str(path),
                "profile_device": profile.device_name,
                "this_device": here,
                "same_device": same,
                "median_ratio": ratio,
                "verdict": line,
                "points": [{**vars(r), "ratio": r.ratio} for r in rows],
            }
        )
        return
    table = Table(title=f"{profile.id} ({(profile.created or 'undated')[:10]}) re-timed here")
    for col in ("op", "shard", "batch x len", "profiled", "here", "here / profiled"):
        table.add_column(col, justify="left" if col in ("op", "shard") else "right")
    for r in rows:
        table.add_row(
            r.op,
            f"{r.model} tp{r.tp}",
            f"{r.batch} x {r.seq_len}",
            f"{r.profiled_s * 1e3:.3f} ms",
            f"{r.measured_s * 1e3:.3f} ms",
            f"{r.ratio:.2f}",
        )
    out.print(table)
    if not same:
        out.print(
            f"profiled on {profile.device_name or 'an unnamed device'!r}; this is {here!r}",
            highlight=False,
        )
    out.print(line, highlight=False)


def run_from_run_command(
    runs: list[Path],
    plans: list[Path],
    base_path: Path | None,
    out_path: Path | None,
    skip: int,
    as_json: bool,
) -> None:
    """Fit per-call-kind factors to the runs' measured call times and write the refined
    profile (no torch needed)."""
    from estimator.calibrate import calibrate, load_run
    from estimator.profile import load_profile
    from plans import PlanError

    if plans and len(plans) != len(runs):
        raise PlanError(
            f"{len(plans)} --plan for {len(runs)} --from-run folders; give one per folder or none",
            field="--plan",
        )
    loaded = [load_run(r, plans[i] if plans else None, skip) for i, r in enumerate(runs)]
    base = load_profile(base_path) if base_path else _shipped(loaded[0].plan_profile_id)
    profile, fit = calibrate(base, loaded, command=_command())
    path = _save(profile, out_path)
    if as_json:
        print_json({"profile": str(path), "id": profile.id, **fit.summary()})
        return
    table = Table(title=f"calibration of {base.id} from {len(runs)} run(s)")
    for col in ("kind", "calls", "scale", "overhead / pass", "error before", "error after"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    assert profile.calibration is not None
    for kind, f in profile.calibration.kinds.items():
        table.add_row(
            kind,
            str(f.samples),
            f"{f.scale:.3f}",
            f"{f.overhead_s * 1e3:.2f} ms",
            f"{f.error_before:.1%}",
            f"{f.error_after:.1%}",
        )
    out.print(table)
    out.print(
        f"communication scale {profile.calibration.comm_scale:.3f}; fitted: "
        f"{', '.join(profile.calibration.fitted) or 'nothing'}",
        highlight=False,
    )
    for line in fit.notes:
        out.print(f"note: {line}", highlight=False)
    out.print(f"wrote {path} (id {profile.id})", highlight=False)


def _save(profile, out_path: Path | None) -> Path:
    """Write `profile` to `out_path` (default: profile-<id>.json here); a failed write stops
    the command naming the file."""
    from estimator.profile import save_profile

    path = out_path or Path(f"profile-{profile.id}.json")
    try:
        save_profile(profile, path)
    except OSError as e:
        fail(f"{path}: cannot write: {e.strerror}")
    return path


def _shipped(profile_id: str):
    """The shipped profile the run's plan was estimated with, when it is one of them."""
    from estimator.profile import load_profile
    from plans import PlanError

    here = Path(__file__).resolve().parents[1] / "estimator" / "profiles"
    for path in sorted(here.glob("*.json")):
        p = load_profile(path)
        if p.id == profile_id:
            return p
    raise PlanError(
        f"the run's plan was estimated with profile {profile_id!r}, which is not shipped; "
        "give it with --profile",
        field="--profile",
    )
