"""One line of a run's metrics.jsonl: what rlhf-run writes per iteration and what every
reader (rlhf-run's closing summary, `rlhf-plan profile --from-run`, the benchmarks) reads.

A row has fixed fields (iteration, times, memory, one `CallMetrics` per call) and the
algorithm's statistics as further top-level numbers (reward_mean, kl_mean, actor_loss,
eval_accuracy, ...; which ones depends on the algorithm). Lines are strict JSON: a value that
is not finite is written as null, so any JSON reader takes the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from plans.errors import PlanError

FILE = "metrics.jsonl"


class CallMetrics(BaseModel):
    """One call of one iteration, over its ranks (a call takes as long as its slowest rank)."""

    model_config = ConfigDict(extra="forbid")

    start: float = Field(description="Wall-clock time the last of its ranks started the call.")
    end: float = Field(description="Wall-clock time the last of its ranks finished it.")
    compute_s: float = Field(description="The call itself: from `start` to `end`.")
    wait_s: float = Field(description="Waiting for its inputs, slowest rank.")
    data_s: float = Field(description="Handing its outputs to their consumers, slowest rank.")
    realloc_s: float = Field(
        description="Moving the model into the call's layout, from the last participant's "
        "arrival to the end of the move (0 without a move)."
    )
    estimate_s: float | None = Field(
        default=None, description="The plan's estimate of the call, when the plan has one."
    )


class MetricsRow(BaseModel):
    """One iteration of a run. Further top-level fields are the algorithm's statistics."""

    model_config = ConfigDict(extra="allow")

    iteration: int = Field(ge=0)
    iteration_s: float = Field(
        description="Time between the ends of this and the previous iteration (the run's rate "
        "when iterations overlap); the first iteration of a process: its own span."
    )
    realloc_s: float = Field(description="Sum of the calls' realloc_s.")
    peak_memory_mib: float = Field(
        description="Peak memory of the busiest worker (GPU: allocated; CPU: resident set)."
    )
    calls: dict[str, CallMetrics]

    @model_validator(mode="after")
    def _stats_are_numbers(self) -> MetricsRow:
        for k, v in (self.model_extra or {}).items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise ValueError(f"statistic {k} is {v!r}, not a number")
        return self

    @property
    def stats(self) -> dict[str, float | None]:
        """The algorithm's statistics of this iteration."""
        return dict(self.model_extra or {})

    def stat(self, name: str) -> float | None:
        """A statistic or a fixed number field by name; None where the row has none."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(name)

    def to_line(self) -> str:
        """Strict JSON (no NaN or Infinity), one line."""
        return json.dumps(_finite(self.model_dump()), allow_nan=False)


def _finite(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


def read_metrics(path: str | Path) -> list[MetricsRow]:
    """Every row of a metrics.jsonl; a line that is not a row is an error naming it."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(MetricsRow.model_validate_json(line))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            msg = f"line {n}: {where + ': ' if where else ''}{first['msg']}"
            raise PlanError(msg, source=str(path)) from None
    return rows


def append_metrics(path: str | Path, row: MetricsRow) -> None:
    with open(path, "a") as f:
        f.write(row.to_line() + "\n")
