"""`rlhf-run`: execute a plan on torch.distributed workers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import err, run_app

app = typer.Typer(name="rlhf-run", pretty_exceptions_enable=False, add_completion=False)


@app.command()
def run(
    plan: Annotated[Path, typer.Argument(help="Plan JSON file (from rlhf-plan search).")],
    iterations: Annotated[int, typer.Option(min=1, help="Iterations to run.")] = 20,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run folder: metrics, checkpoints.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last complete checkpoint.")
    ] = False,
    data: Annotated[
        Path | None, typer.Option("--data", help="Prompts JSONL; default: the plan's dataset.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Run RLHF training as a plan says: one worker per device, parameters reallocated between
    the layouts of the plan's calls, metrics as JSON lines."""
    err.print("rlhf-run: not available yet (the runtime is still being built).", highlight=False)
    raise typer.Exit(2)


def main() -> None:
    run_app(app, "rlhf-run")


if __name__ == "__main__":
    main()
