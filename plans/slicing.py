"""The one even-split rule shared by parameter sharding and batch splitting.

Every place that cuts something into `parts` contiguous pieces (TP slices of a weight, PP
ranges of layers, DP shares of a batch, micro-batches, ZeRO-1 shares) calls `split_range`, so
a layout computed by the executor, the reallocation planner and the estimator always agree.
"""

from __future__ import annotations


def split_range(n: int, parts: int, i: int) -> tuple[int, int]:
    """[start, stop) of piece `i` when `n` items are cut into `parts` contiguous pieces.

    The first `n % parts` pieces get one extra item, so sizes differ by at most one and
    the pieces tile [0, n) in order.
    """
    if parts <= 0:
        raise ValueError(f"parts={parts} must be positive")
    if not 0 <= i < parts:
        raise ValueError(f"piece {i} is outside 0..{parts - 1}")
    base, extra = divmod(n, parts)
    start = i * base + min(i, extra)
    return start, start + base + (1 if i < extra else 0)


def split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of all pieces of `split_range(n, parts, .)`."""
    return [b - a for a, b in (split_range(n, parts, i) for i in range(parts))]
