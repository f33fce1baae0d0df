"""Memory a role keeps from one reallocation for the next into the same layout."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch


class Buffers:
    """Destination memory kept from one reallocation for the next into the same layout, as a
    GPU caching allocator keeps freed blocks. On a CPU, writing into newly allocated memory
    (first-touch page faults) costs about as much as the transfer itself; reused memory does
    not. Holds tensors by (shape, dtype, device), nothing else; `release()` frees them all."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[torch.Tensor]] = defaultdict(list)

    def take(
        self, shape: Sequence[int], dtype: torch.dtype, device: torch.device | str
    ) -> torch.Tensor:
        """A kept tensor of that shape, dtype and device (contents undefined), else a new one."""
        free = self._free.get((tuple(shape), dtype, _device(device)))
        if free:
            return free.pop()
        return torch.empty(tuple(shape), dtype=dtype, device=device)

    def give(self, tensors: Iterable[torch.Tensor]) -> None:
        """Keep these for a later `take`; the caller must hold no other reference to them."""
        for t in tensors:
            self._free[(tuple(t.shape), t.dtype, t.device)].append(t)

    def release(self) -> None:
        self._free.clear()

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for ts in self._free.values() for t in ts)


def _device(device: torch.device | str) -> torch.device:
    """With its index, as a tensor's .device has it ("cuda" is the current device)."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def added(result: Mapping[str, torch.Tensor], shards: Mapping[str, torch.Tensor] | None) -> list:
    """The tensors of a reallocation's result that are not source memory (kept pieces and
    views into source tensors): the memory the result added, which may go back to a
    `Buffers` once the result is dropped."""
    sources = {t.untyped_storage().data_ptr() for t in (shards or {}).values()}
    return [t for t in result.values() if t.untyped_storage().data_ptr() not in sources]
