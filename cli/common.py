"""What every command shares: consoles, error reporting, JSON output."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console

from plans import PlanError

out = Console(soft_wrap=True)  # tables and reports; stdout
err = Console(stderr=True, soft_wrap=True)

EXIT_USER_ERROR = 1
EXIT_NOT_BUILT = 2
EXIT_INTERNAL = 3


def print_json(doc: Any) -> None:
    """Exactly one JSON document on stdout, nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def not_built(command: str, what: str) -> NoReturn:
    """Registered commands whose machinery has not landed yet say so instead of faking output."""
    err.print(
        f"rlhf-plan {command}: not available yet ({what} is still being built).", highlight=False
    )
    raise typer.Exit(EXIT_NOT_BUILT)


def run_app(app: Callable[..., Any], prog: str) -> None:
    """Run a typer app, turning library errors into one line on stderr (traceback with --debug)."""
    debug = "--debug" in sys.argv
    try:
        app(prog_name=prog)
    except PlanError as e:
        if debug:
            traceback.print_exc()
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # a bug of ours: say so, briefly
        if debug:
            traceback.print_exc()
        else:
            err.print(
                f"[bold red]internal error:[/] {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                highlight=False,
            )
        sys.exit(EXIT_INTERNAL)
