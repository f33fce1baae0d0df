"""The one error type the contract raises at users.

Every problem found while loading or checking a plan, an experiment or a cluster becomes a
`PlanError` whose message is a single line naming the field (a dotted path such as
`allocations.actor_train.strategy.tp`) and the offending value. A document with several
problems raises one `PlanError` for the first that carries the others (`more`); its message
says how many more there are, and `lines()` gives every problem as its own line, which the CLI
prints (up to a cap). Nothing else should escape the loaders.
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

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        source: str | None = None,
        more: tuple[PlanError, ...] | list[PlanError] = (),
    ):
        self.field = field
        self.source = source
        self.reason = message
        self.more = tuple(more)
        """Further problems of the same document, each naming its own field."""
        where = f"{source}: " if source else ""
        what = f"{field}: " if field else ""
        # One line, whatever the document contained.
        self.line = " ".join(f"{where}{what}{message}".splitlines())
        n = len(self.lines()) - 1
        super().__init__(self.line + (f" (+{n} more problem{'s' if n > 1 else ''})" if n else ""))

    def lines(self) -> list[str]:
        """Every problem, one line each, this one first."""
        return [self.line] + [x for e in self.more for x in e.lines()]

    def problems(self) -> list[dict[str, str | None]]:
        """Every problem as {source, field, message} (for --json output)."""
        own = {"source": self.source, "field": self.field, "message": self.reason}
        return [own] + [p for e in self.more for p in e.problems()]

    def with_source(self, source: str) -> PlanError:
        """The same error, prefixed with the file (or preset) it came from."""
        more = [e.with_source(source) for e in self.more]
        return PlanError(self.reason, field=self.field, source=source, more=more)


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
    """Turn pydantic's multi-line report into one PlanError per problem (the first carries
    the others), each naming its field."""
    found: list[PlanError] = []
    seen: set[str] = set()
    for e in err.errors(include_url=False):
        for one in _problems(e, prefix):
            if one.line not in seen:  # union branches can report the same problem twice
                seen.add(one.line)
                found.append(one)
    first, rest = found[0], found[1:]
    return PlanError(first.reason, field=first.field, more=rest)


def _problems(e: Any, prefix: str) -> list[PlanError]:
    # Union branches add their type name to the location ("function-after[...]", "str"):
    # keep only the parts a user wrote.
    loc = [p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    base = [prefix] if prefix else []
    inner = e.get("ctx", {}).get("error")
    if isinstance(inner, PlanError):  # one of our checks, raised inside a nested model
        return [
            PlanError(x.reason, field=_field(base + loc + (x.field.split(".") if x.field else [])))
            for x in [inner, *_flat(inner.more)]
        ]
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] != "missing" and "input" in e and not isinstance(e["input"], dict):
        msg = f"{msg} (got {_short(e['input'])})"
    return [PlanError(msg, field=_field(base + loc))]


def _field(parts: list[Any]) -> str | None:
    return dotted(parts) if parts else None


def _flat(errors: tuple[PlanError, ...]) -> list[PlanError]:
    return [x for e in errors for x in [e, *_flat(e.more)]]


_UNION_TAGS = {"str", "int", "float", "dict", "list", "ModelSpec", "function-plain"}
