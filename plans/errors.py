"""The one error type the contract raises at users.

Every problem found while loading or checking a plan, an experiment or a cluster becomes a
`PlanError` whose message is a single line naming the field (a dotted path such as
`allocations.actor_train.strategy.tp`) and the offending value. The CLI prints that line and
exits non-zero; nothing else should escape the loaders.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError


class PlanError(ValueError):
    """A plan, experiment, cluster or profile document is malformed or inconsistent.

    It is a ValueError so that, raised inside a pydantic validator, pydantic records where in
    the document it happened; `from_validation_error` then joins that location and `field`.
    """

    def __init__(self, message: str, *, field: str | None = None, source: str | None = None):
        self.field = field
        self.source = source
        self.reason = message
        where = f"{source}: " if source else ""
        what = f"{field}: " if field else ""
        # One line, whatever the document contained.
        super().__init__(" ".join(f"{where}{what}{message}".splitlines()))

    def with_source(self, source: str) -> PlanError:
        """The same error, prefixed with the file (or preset) it came from."""
        return PlanError(self.reason, field=self.field, source=source)


_PLAIN_KEY = re.compile(r"^[\w\-@]+$")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dotted(loc: tuple[Any, ...] | list[Any]) -> str:
    """`('allocations', 'actor_gen', 'mesh', 'n_gpus')` -> `allocations.actor_gen.mesh.n_gpus`."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) or not _PLAIN_KEY.match(str(item)):
            parts.append(f"[{item!r}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(document)"


def from_validation_error(err: ValidationError, prefix: str = "") -> PlanError:
    """Turn pydantic's multi-line report into one line about its first problem."""
    first = err.errors(include_url=False)[0]
    # Union branches add their type name to the location ("function-after[...]", "str"):
    # keep only the parts a user wrote.
    loc = [p for p in first["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    inner = first.get("ctx", {}).get("error")
    if isinstance(inner, PlanError):  # one of our checks, raised inside a nested model
        loc += inner.field.split(".") if inner.field else []
        msg = inner.reason
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] != "missing" and "input" in first and not isinstance(first["input"], dict):
            msg = f"{msg} (got {_short(first['input'])})"
    field = dotted(([prefix] if prefix else []) + loc) if (prefix or loc) else None
    more = err.error_count() - 1
    if more:
        msg += f" (+{more} more problem{'s' if more > 1 else ''})"
    return PlanError(msg, field=field)


_UNION_TAGS = {"str", "int", "float", "dict", "list", "ModelSpec", "function-plain"}
