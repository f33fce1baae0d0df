"""Hugging Face checkpoint folders (config.json + safetensors).

Loading: every rank opens the files lazily (safetensors `safe_open`) and reads only the rows
or columns its slices name, so no rank ever materialises a tensor it does not hold.
Saving: dp replica 0 gathers each stage's slices to its tp rank 0, stages send whole tensors
to the first stage's writer, which writes one `model.safetensors` plus `config.json` into a
temporary sibling folder and renames it into place, so a crash never leaves a half-written
checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from executor.model import Transformer
from executor.model.hf_config import hf_config_dict
from executor.model.weights import init_full
from executor.parallel.context import ParallelContext
from plans.layout import ParamSlice, param_slices


def _key_files(folder: Path) -> dict[str, Path]:
    """Checkpoint key -> file holding it (single file, sharded index, or any *.safetensors)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: folder / f for k, f in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    out: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            out.update({k: f for k in sf.keys()})  # noqa: SIM118 (safe_open has no __iter__)
    return out


def _read_slice(sf: Any, path: Path, key: str, sl: ParamSlice) -> torch.Tensor:
    part = sf.get_slice(key)
    shape = tuple(part.get_shape())
    if shape != sl.full_shape:
        raise ValueError(f"{path.name}: {key} has shape {shape}, the model expects {sl.full_shape}")
    return part[sl.index()]


@torch.no_grad()
def load_checkpoint_(
    model: Transformer, folder: str | Path, seed_for_missing_head: int | None = 0
) -> Transformer:
    """Fill this rank's slices from an HF folder. A value head missing from the folder (a
    critic started from an LM checkpoint) is initialised from `seed_for_missing_head`, or
    is an error when that is None."""
    folder = Path(folder)
    files = _key_files(folder)
    params = dict(model.named_parameters(remove_duplicate=False))
    with ExitStack() as stack:
        handles: dict[Path, Any] = {}
        for name, sl in model.slices.items():
            key = sl.source
            if key not in files and name == "lm_head.weight" and model.spec.tie_word_embeddings:
                key = "model.embed_tokens.weight"
            if key not in files:
                if name == "score.weight" and seed_for_missing_head is not None:
                    full = init_full(name, sl.full_shape, seed_for_missing_head)
                    params[name].copy_(full[sl.index()])
                    continue
                raise KeyError(f"{folder}: no tensor {key!r}")
            path = files[key]
            if path not in handles:  # each file is opened (memory-mapped) once
                handles[path] = stack.enter_context(safe_open(str(path), framework="pt"))
            params[name].copy_(_read_slice(handles[path], path, key, sl))
    return model


def _gather_tp(
    model: Transformer, ctx: ParallelContext, sl: ParamSlice, local: torch.Tensor
) -> torch.Tensor | None:
    """Assemble the full tensor on tp rank 0 from every tp rank's slice (None elsewhere)."""
    if ctx.tp_group is None or sl.dim is None:
        return local
    spec = model.spec
    # The slices of the other tp ranks, from the same table they were built from.
    others = [
        {s.name: s for s in param_slices(spec, ctx.tp_size, r, ctx.pp_size, ctx.pp_rank)}[sl.name]
        for r in range(ctx.tp_size)
    ]
    top = max(o.stop - o.start for o in others)
    pad_shape = list(sl.full_shape)
    pad_shape[sl.dim] = top
    buf = local.new_zeros(pad_shape)
    buf.narrow(sl.dim, 0, local.shape[sl.dim]).copy_(local)
    dst = ctx.tp_ranks[0]
    pieces = [torch.empty_like(buf) for _ in others] if ctx.rank == dst else None
    dist.gather(buf, pieces, dst=dst, group=ctx.tp_group)
    if pieces is None:
        return None
    full = local.new_empty(sl.full_shape)
    for o, piece in zip(others, pieces, strict=True):
        full[o.index()] = piece.narrow(sl.dim, 0, o.stop - o.start)
    return full


def _write_folder(folder: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(tmp / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def save_checkpoint(
    model: Transformer,
    ctx: ParallelContext,
    folder: str | Path,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> Path | None:
    """Collective over dp replica 0 of the mesh (other replicas return at once). Returns the
    folder on the writing rank (first stage, dp 0, tp 0), None elsewhere. The writer holds
    the whole model in CPU memory while writing."""
    if not ctx.in_mesh or ctx.dp_rank != 0:
        return None
    folder = Path(folder)
    params = dict(model.named_parameters(remove_duplicate=False))
    mine: dict[str, torch.Tensor] = {}
    for name, sl in model.slices.items():
        full = _gather_tp(model, ctx, sl, params[name].detach())
        if full is not None and sl.source == name:  # a tied head copy is not written twice
            mine[name] = full  # stays on the device: NCCL sends device tensors only
    if ctx.tp_rank != 0:
        return None
    writer = ctx.pp_ranks[0]
    if not ctx.is_first_stage:
        for t in mine.values():
            dist.send(t.contiguous(), dst=writer, group=ctx.pp_group)
        return None
    tensors = {k: v.cpu() for k, v in mine.items()}
    device = next(model.parameters()).device
    for stage in range(1, ctx.pp_size):
        for sl in param_slices(model.spec, ctx.tp_size, 0, ctx.pp_size, stage):
            if sl.source != sl.name:
                continue
            buf = torch.empty(sl.full_shape, dtype=model.dtype, device=device)
            dist.recv(buf, src=ctx.pp_ranks[stage], group=ctx.pp_group)
            tensors[sl.name] = buf.cpu()
    config = hf_config_dict(model.spec, pad_token_id, bos_token_id, eos_token_id)
    config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    _write_folder(folder, tensors, config)
    return folder
