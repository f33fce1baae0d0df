"""A model's parameters as the shard dict that reallocation moves, and back, without copies.

`reallocate` works on plain dicts keyed by state_dict name (the names of plans.layout);
these two helpers connect them to a Transformer: `model_shards` hands out the tensors a model
holds, `adopt_shards_` makes a freshly built model use moved tensors as its parameters. With
both, a layout change costs the transfer only, and dropping the model (or the dict) is what
releases its memory.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from executor.model import Transformer


def model_shards(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's parameter tensors by layout name (shared memory, not copies). A tied head
    on a single stage shares the embedding and is not listed, as in the layout."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {name: params[name].data for name in model.slices}


def adopt_shards_(model: Transformer, shards: Mapping[str, torch.Tensor]) -> Transformer:
    """Make `model`'s parameters the tensors of `shards` (no copy). The model is a shell: its
    own parameters (uninitialised, or on "meta" so that nothing was allocated) are replaced
    by new ones on the shards' memory and device, tied ones (a single stage's head and
    embedding) by the same new parameter."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = set(model.slices) - set(shards)
    if missing:
        raise KeyError(f"shards lack {sorted(missing)[:3]}")
    new: dict[int, nn.Parameter] = {}
    for name in model.slices:
        p, t = params[name], shards[name]
        if p.shape != t.shape or p.dtype != t.dtype:
            raise ValueError(
                f"{name}: model wants {p.dtype} {tuple(p.shape)}, got {t.dtype} {tuple(t.shape)}"
            )
        new[id(p)] = nn.Parameter(t, requires_grad=p.requires_grad)
    for module in model.modules():
        for key, p in module._parameters.items():
            if p is not None and id(p) in new:
                module._parameters[key] = new[id(p)]
    return model
