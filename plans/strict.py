"""Strict field types shared by every contract document (experiment, plan, cluster, model).

Lax pydantic would turn `batch_size = true` into 1, `"8"` into 8 and `inf` into a learning
rate that only blows up inside a worker. Documents are therefore validated in strict mode
with non-finite floats refused: a number must be written as a number of the right kind. An
int is still accepted where a float is expected (`lr = 1`), since JSON and TOML writers do
that routinely and no information is lost.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict

STRICT = ConfigDict(strict=True, allow_inf_nan=False)
"""Merge into a document model's config: `ConfigDict(extra="forbid", **STRICT)`."""


def _list_as_tuple(value: Any) -> Any:
    # JSON and TOML have arrays, not tuples; strict mode would refuse every written pair.
    return tuple(value) if isinstance(value, list) else value


FloatPair = Annotated[tuple[float, float], BeforeValidator(_list_as_tuple)]
"""Two floats, written as a JSON/TOML array."""

SEED_LIMIT = 2**32
"""Seeds are derived as seed * 100_003 + iteration (data) and seed * 7919 + iteration
(sampling) and handed to torch.Generator.manual_seed, which takes 64-bit values: below 2**32
every derived seed stays in range for any realistic iteration count."""
