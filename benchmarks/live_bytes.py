"""Peak bytes of the tensors a piece of code allocates, counted from torch's dispatcher.

A CPU has no allocator counter like `torch.cuda.max_memory_allocated`. Instead, every aten op
that runs inside `TransientBytes` is looked at as it returns: an output whose storage is none
of the op's inputs' is a new allocation, and a finalizer on that storage logs when it is
freed. Views and in-place ops (collectives included) allocate nothing and are not counted;
nor is anything allocated before the block (weights, optimizer states, inputs, gradient
buffers that already exist). The gradients autograd hands to the parameters are logged but
left out of the peak, so that the figure is what a call needs on top of what stays: saved
activations, temporaries and autograd's buffers. Scratch memory inside one kernel is not
seen; at the sizes benchmarks/memory.py runs, it agreed with torch's (private, and for
tensor-parallel runs failing) memory profiler, see benchmarks/README.md.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TransientBytes(TorchDispatchMode):
    """Logs every new storage's bytes as +n when an op creates it and -n when it dies."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[int, int]] = []  # (storage key, +bytes or -bytes) in time order
        self.gradients: set[int] = set()  # keys of storages that held a parameter's gradient
        self._alive: dict[int, int] = {}  # id(storage object) -> key, while it lives

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {id(t.untyped_storage()) for t in _tensors((args, kwargs))}
        for t in _tensors(out):
            s = t.untyped_storage()
            if id(s) in seen or id(s) in self._alive or s.nbytes() == 0:
                continue
            key = len(self.log)
            self._alive[id(s)] = key
            self.log.append((key, s.nbytes()))
            weakref.finalize(s, self._freed, id(s), key, s.nbytes())
        return out

    def _freed(self, storage_id: int, key: int, nbytes: int) -> None:
        self._alive.pop(storage_id, None)
        self.log.append((key, -nbytes))

    def mark_gradient(self, grad: torch.Tensor) -> None:
        key = self._alive.get(id(grad.untyped_storage()))
        if key is not None:
            self.gradients.add(key)

    def peak(self) -> int:
        live = top = 0
        for key, delta in self.log:
            if key not in self.gradients:
                live += delta
                top = max(top, live)
        return top


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def transient_peak(step: Callable[[], object], params: Iterable[torch.Tensor]) -> int:
    """Run `step()` and return the peak over time of the bytes it allocated, gradients handed
    to `params` left out."""
    mode = TransientBytes()
    hooks = [p.register_hook(mode.mark_gradient) for p in params if p.requires_grad]
    try:
        with mode:
            step()
    finally:
        for h in hooks:
            h.remove()
    return mode.peak()
