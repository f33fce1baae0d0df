"""What rlhf-run prints when a run ends: the reward curve and the per-call times."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from plans.metrics import FILE, MetricsRow, read_metrics

BARS = " ▁▂▃▄▅▆▇█"


def load_metrics(run_dir: Path) -> list[MetricsRow]:
    path = run_dir / FILE
    return read_metrics(path) if path.exists() else []


HEADLINES = ("task_reward_mean", "reward_mean", "true_accuracy", "pref_accuracy", "eval_accuracy")
"""What a run's curve shows: the first of these the run logs (RL: the task's own rule
where a reward model stands in for it, else the reward; preference training: accuracy against the true ranking, else against the labels)."""


def reward_curve(rows: list[MetricsRow], width: int = 60) -> str:
    """The run's headline metric as one text line: a bar per iteration (bucketed to `width`),
    with first and last value."""
    name = next((k for k in HEADLINES if any(r.stat(k) is not None for r in rows)), None)
    if name is None:
        return "(no rewards logged)"
    vals = [v for r in rows if (v := r.stat(name)) is not None]
    step = max(1, -(-len(vals) // width))
    buckets = [sum(vals[i : i + step]) / len(vals[i : i + step]) for i in range(0, len(vals), step)]
    lo, hi = min(buckets), max(buckets)
    span = (hi - lo) or 1.0
    bars = "".join(BARS[round((v - lo) / span * (len(BARS) - 1))] for v in buckets)
    label = {"reward_mean": "reward", "task_reward_mean": "task reward"}.get(name, name)
    return f"{label} {vals[0]:.3f} {bars} {vals[-1]:.3f}  (min {lo:.3f}, max {hi:.3f}, {len(vals)} iterations)"


def call_table(rows: list[MetricsRow]) -> Table:
    """Mean measured time per call over the run (the first iteration, which warms up, excluded
    when there are others), next to the plan's estimate."""
    use = rows[1:] if len(rows) > 1 else rows
    table = Table(title="per-call time, mean over iterations (s)")
    for col in ("call", "compute", "realloc", "data", "estimate"):
        table.add_column(col, justify="left" if col == "call" else "right")
    names = list(use[0].calls) if use else []
    for name in names:

        def mean(k: str, name: str = name) -> float:
            return sum(getattr(r.calls[name], k) for r in use) / len(use)

        est = use[0].calls[name].estimate_s
        table.add_row(
            name,
            f"{mean('compute_s'):.3f}",
            f"{mean('realloc_s'):.3f}",
            f"{mean('data_s'):.3f}",
            "-" if est is None else f"{est:.3f}",
        )
    return table
