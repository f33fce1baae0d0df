"""What every command shares: consoles, error reporting, JSON output."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from plans import PlanError

PIPED_WIDTH = 240
"""Widest table line printed when the output is not a terminal (and COLUMNS is not set)."""


class _Console(Console):
    """A console whose tables never cut a value. On a terminal a cell that does not fit wraps
    (folds) instead of ending in an ellipsis; piped output, where rich would assume 80
    columns, gets each table at its natural width (up to PIPED_WIDTH, folding beyond)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        tables = [o for o in objects if isinstance(o, Table)]
        for t in tables:
            for c in t.columns:
                c.overflow = "fold"
        if tables and not self.is_terminal and "COLUMNS" not in os.environ:
            wide = self.options.update_width(PIPED_WIDTH)
            need = max(self.measure(t, options=wide).maximum for t in tables)
            width = self.width
            self.width = max(width, min(need, PIPED_WIDTH))  # print() only narrows its width
            try:
                super().print(*objects, **kwargs)
            finally:
                self.width = width
            return
        super().print(*objects, **kwargs)


out = _Console(soft_wrap=True)  # tables and reports; stdout
err = _Console(stderr=True, soft_wrap=True)

EXIT_USER_ERROR = 1
EXIT_USAGE = 2  # click's own code for an unknown option or a missing argument
EXIT_INTERNAL = 3
MAX_PROBLEMS = 20
"""A bad document's problems printed at most (the rest are counted)."""

EXIT_CODES_PLAN = (
    "Exit codes: 0 done; 1 a problem with an input (each problem on stderr, naming its file "
    "and field), or a plan that does not fit (estimate); 2 a usage error (unknown option, "
    "missing argument); 3 an internal error (rerun with --debug for the traceback); 130 "
    "interrupted."
)


def print_json(doc: Any) -> None:
    """Exactly one JSON document on stdout, nothing else there."""
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def fail(message: str, code: int = EXIT_USER_ERROR) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def problem_lines(e: PlanError) -> list[str]:
    """Every problem of `e`, one line each, at most MAX_PROBLEMS of them."""
    lines = e.lines()
    if len(lines) > MAX_PROBLEMS:
        rest = len(lines) - MAX_PROBLEMS
        lines = lines[:MAX_PROBLEMS] + [f"(+{rest} more problem{'s' if rest > 1 else ''})"]
    return lines


def report(e: PlanError) -> None:
    for line in problem_lines(e):
        err.print(f"[bold red]error:[/] {escape(line)}", highlight=False)


def run_app(app: Callable[..., Any], prog: str) -> None:
    """Run a typer app, turning library errors into one line on stderr (traceback with --debug)."""
    debug = "--debug" in sys.argv
    try:
        app(prog_name=prog)
    except PlanError as e:
        if debug:
            traceback.print_exc()
        report(e)
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
