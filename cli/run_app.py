"""`rlhf-run`: execute a plan on torch.distributed workers."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli.common import err, run_app

app = typer.Typer(name="rlhf-run", pretty_exceptions_enable=False, add_completion=False)

EXIT_CODES_RUN = (
    "Exit codes: 0 done; 1 a problem with an input or of the run (each named on stderr: the "
    "file and field, or the rank and what it hit), or a worker that failed; 2 a usage error "
    "(unknown option, missing argument); 3 an internal error (rerun with --debug), or under "
    "torchrun a worker that stopped after losing a peer; 130 / 143 interrupted by SIGINT / "
    "SIGTERM."
)


class Tracker(StrEnum):
    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"


@app.command(epilog=EXIT_CODES_RUN)
def run(
    plan: Annotated[Path, typer.Argument(help="Plan JSON file (from rlhf-plan search).")],
    iterations: Annotated[int, typer.Option(min=1, help="Iterations to run.")] = 40,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Run folder for metrics.jsonl (default: runs/<plan>-<time>)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last complete checkpoint in --out.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the run already in --out (its metrics, checkpoints, final models).",
        ),
    ] = False,
    checkpoint_every: Annotated[
        int, typer.Option(min=0, help="Save a checkpoint every N iterations (0: never).")
    ] = 10,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Dataset JSONL (prompts, pairs, candidate lists or trees, as the algorithm reads); default: the plan's dataset.",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            min=1,
            help="Seconds any wait may take: a lost or stopped worker is named within it (plus about 1 s).",
        ),
    ] = 120.0,
    tracker: Annotated[
        list[Tracker] | None,
        typer.Option(
            "--tracker",
            help="Also log every metrics row and the plan to this experiment tracker "
            "(repeatable): tensorboard, wandb or mlflow (the last two are optional extras, "
            "run offline). metrics.jsonl stays the source of truth.",
        ),
    ] = None,
    tracker_dir: Annotated[
        Path | None,
        typer.Option("--tracker-dir", help="Where trackers write (default: the run folder)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Run RLHF training as a plan says: one worker per device, parameters reallocated between
    the layouts of the plan's calls, metrics as JSON lines (one per iteration). The trained
    models are written as Hugging Face folders to OUT/final/<role> at the end (a trained
    reward model is then usable as the `model` of another experiment's reward role)."""
    from estimator.report import estimate_plan
    from executor.programs.registry import PROGRAMS
    from executor.runtime.launch import launch, local_devices, under_torchrun, workers_here
    from executor.runtime.worker import RunTask
    from executor.runtime.worker import run as worker
    from plans import PlanError, load_plan
    from plans.devices import backend, run_refusal
    from plans.folders import check_plan_folders

    p = load_plan(plan)
    # A GPU plan needs CUDA and a GPU per worker of this machine; said in one line before any
    # worker starts (NCCL would fail far later, in every worker).
    refusal = run_refusal(p.cluster.device, workers_here(p.cluster), local_devices())
    if refusal:
        raise PlanError(refusal, field="cluster.device")
    if p.experiment.algorithm not in PROGRAMS:
        raise PlanError(
            f"rlhf-run runs {', '.join(PROGRAMS)} plans so far, not {p.experiment.algorithm}",
            field="experiment.algorithm",
        )
    if resume and out_dir is None:
        raise PlanError("--resume needs the run folder given with --out", field="--resume")
    estimate_plan(p)  # a plan that does not fit in memory stops here, naming the call
    # Everything the workers would read is read here first, so a broken input is one line
    # before any worker starts, not a traceback in each of them.
    exp = p.experiment
    check_plan_folders(p, source=str(plan))
    from executor.data.sources import reward_function
    from executor.data.tokenizer import tokenizer_for
    from executor.programs.evaluate import Evaluation
    from executor.programs.registry import program_for

    tok = tokenizer_for([exp.model(r) for r in exp.roles], exp.tokenizer)
    program_for(exp, tok, str(data) if data else None).dataset(0)  # a bad dataset line
    if exp.evaluation is not None:
        Evaluation(exp.evaluation, tok, exp.model("actor").max_position_embeddings)
    if exp.reward_function:
        reward_function(exp.reward_function)
    if tracker:
        from executor.runtime.trackers import check_available

        check_available([k.value for k in tracker])
    if out_dir is None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path("runs") / f"{plan.stem}-{stamp}"
    folder = None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 keeps the folder
        from executor.runtime.run_folder import open_run_folder

        folder = open_run_folder(out_dir, p, str(data) if data else None, resume, overwrite)
        for note in folder.notes:
            err.print(f"rlhf-run: {note}", highlight=False)
    follower = None
    if tracker and folder is not None:  # the launcher (rank 0 under torchrun) follows the rows
        follower = _follow(tracker, tracker_dir or out_dir, out_dir, p, folder.resume_from)
    if not under_torchrun():
        err.print(
            f"rlhf-run: {p.cluster.world_size} workers, {iterations} iterations -> {out_dir}/metrics.jsonl",
            highlight=False,
        )
    try:
        code = launch(
            worker,
            RunTask(
                str(plan),
                iterations,
                str(out_dir),
                str(data) if data else None,
                save_final=True,
                checkpoint_every=checkpoint_every,
                resume=resume,
                resume_from=str(folder.resume_from) if folder and folder.resume_from else None,
            ),
            world=p.cluster.world_size,
            timeout_s=timeout,
            device=backend(p.cluster.device),
        )
    finally:
        if follower is not None:
            follower.finish()
    _closing(code, out_dir, p)


def _follow(kinds, folder: Path, out_dir: Path, p, resume_from: Path | None):
    """Trackers fed from metrics.jsonl by a launcher thread. On a resume (open_run_folder has
    checked the checkpoint), the rows past the checkpoint are dropped first, as the workers
    drop them, so no stale row reaches a tracker."""
    from executor.runtime import checkpoints, metrics
    from executor.runtime.trackers import MetricsFollower, open_trackers
    from plans.metrics import FILE

    start = checkpoints.iteration_of(Path(resume_from)) if resume_from is not None else 0
    trackers = open_trackers([k.value for k in kinds], folder, p, out_dir.name, start)
    if resume_from is not None:
        metrics.truncate(out_dir, start)
    return MetricsFollower(out_dir / FILE, trackers, start).start()


def _closing(code: int, out_dir: Path, p) -> None:
    """What the command prints and returns once the workers are done."""
    from executor.runtime.launch import under_torchrun

    if code != 0:
        from executor.runtime.run_folder import stopped_at, tidy

        tidy(out_dir)  # a checkpoint the stop cut short
        if sys.stdout.isatty():  # rank 0's live table may have gone with its cursor hidden
            sys.stdout.write("\x1b[?25h\n")
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        err.print(
            f"rlhf-run: interrupted {stopped_at(out_dir, p.cluster.world_size)}", highlight=False
        )
        sys.exit(code)
    if code == 0 and not under_torchrun():
        from cli.common import out
        from cli.run_views import call_table, load_metrics, reward_curve

        rows = load_metrics(out_dir)
        if rows:
            out.print(call_table(rows))
            out.print(reward_curve(rows), highlight=False)
            last = rows[-1]
            out.print(
                f"last iteration: {last.iteration_s:.2f} s, reallocation {last.realloc_s:.3f} s; "
                f"metrics in {out_dir}/metrics.jsonl",
                highlight=False,
            )
    sys.exit(code)


def main() -> None:
    run_app(app, "rlhf-run")


if __name__ == "__main__":
    main()
