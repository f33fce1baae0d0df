"""What rank 0 shows while a run goes: on a terminal, a live table of the latest iterations
under a progress bar; elsewhere (a log file, CI), one plain line per iteration."""

from __future__ import annotations

import sys

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from plans.metrics import MetricsRow

COLUMNS = (  # metric key, header, format
    ("reward_mean", "reward", "{:.3f}"),
    ("task_reward_mean", "task reward", "{:.3f}"),
    ("greedy_reward_mean", "greedy reward", "{:.3f}"),
    ("kl_mean", "KL", "{:.4f}"),
    ("pref_accuracy", "pref acc", "{:.3f}"),
    ("true_accuracy", "true acc", "{:.3f}"),
    ("eval_accuracy", "eval acc", "{:.3f}"),
    ("actor_loss", "actor loss", "{:.4f}"),
    ("critic_loss", "critic loss", "{:.4f}"),
    ("reward_loss", "reward loss", "{:.4f}"),
    ("clip_frac", "clip", "{:.3f}"),
    ("iteration_s", "time s", "{:.2f}"),
    ("realloc_s", "realloc s", "{:.3f}"),
)


def _fmt(fmt: str, v) -> str:
    return "" if v is None else fmt.format(v)


class RunDisplay:
    def __init__(self, first: int, last: int, keep: int = 8):
        self.console = Console(file=sys.stdout)
        self.live_mode = self.console.is_terminal
        self.rows: list[MetricsRow] = []
        self.keep = keep
        self.progress = Progress(
            TextColumn("iterations"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("run", total=last, completed=first)
        self.live = Live(self._render(), console=self.console) if self.live_mode else None
        if self.live:
            self.live.start()

    def _render(self):
        cols = [c for c in COLUMNS if any(r.stat(c[0]) is not None for r in self.rows)]
        table = Table(title="latest iterations", title_justify="left")
        table.add_column("iter", justify="right")
        for _, head, _ in cols:
            table.add_column(head, justify="right")
        for r in self.rows[-self.keep :]:
            table.add_row(str(r.iteration), *(_fmt(f, r.stat(k)) for k, _, f in cols))
        return Group(table, self.progress)

    def update(self, row: MetricsRow) -> None:
        self.rows.append(row)
        self.progress.advance(self.task)
        if self.live:
            self.live.update(self._render())
            return
        parts = [f"iter {row.iteration}:"]
        for k, head, f in COLUMNS:
            if row.stat(k) is not None and k not in ("realloc_s",):
                parts.append(f"{head} {_fmt(f, row.stat(k))}")
        print(" ".join(parts), flush=True)

    def close(self) -> None:
        if self.live:
            self.live.stop()
