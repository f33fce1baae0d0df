"""Run checkpoints: everything a resumed run needs to continue exactly where it stopped.

A checkpoint after `done` iterations is a folder `checkpoints/iter-<done>` with one file per
rank (its home shards and optimizer state of every trained model) and a Hugging Face folder per
trained model. Data order and sampling are functions of (seed, iteration), so the iteration
count is all the data position and RNG state there is. Written into a temporary folder first
and renamed once every rank has finished, so an interrupted save never looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from executor.model.hf_checkpoint import save_checkpoint
from plans import Plan, PlanError

KEEP = 2  # complete checkpoints kept; older ones are removed


def plan_id(plan: Plan) -> str:
    """Identity of what a checkpoint's shards depend on: cluster, experiment and layouts."""
    doc = plan.model_dump_json(include={"cluster", "experiment", "allocations"})
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _dir(out_dir: Path, done: int) -> Path:
    return out_dir / "checkpoints" / f"iter-{done:06d}"


def save_hf(rm, folder: Path, tokenizer) -> None:
    """A role's model as a Hugging Face folder, with the run's tokenizer when it is an HF one
    (so the folder works on its own, e.g. as another experiment's reward model)."""
    written = save_checkpoint(
        rm.model,
        rm.home_ctx,
        folder,
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    if written is not None and hasattr(tokenizer, "tok"):
        tokenizer.tok.save_pretrained(str(written))


def save(out_dir: Path, done: int, rank: int, plan: Plan, roles, opts, tokenizer) -> None:
    """Collective over the world."""
    final = _dir(out_dir, done)
    tmp = final.with_name(f".{final.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    state = {"iteration": done, "plan": plan_id(plan), "roles": {}}
    for role, opt in opts.items():
        state["roles"][role] = {
            "params": {k: v.clone() for k, v in roles[role].shards().items()},
            "optim": opt.state_dict(),
        }
    part = tmp / f"rank{rank:05d}.pt.part"
    torch.save(state, part)
    os.replace(part, tmp / f"rank{rank:05d}.pt")
    for role in opts:  # trained models as HF folders too, for use outside rlhf-run
        save_hf(roles[role], tmp / "hf" / role, tokenizer)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(final.parent.glob("iter-*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def latest(out_dir: Path, world: int) -> Path | None:
    """The newest complete checkpoint (every rank's file present), or None."""
    for d in sorted((out_dir / "checkpoints").glob("iter-*"), reverse=True):
        if all((d / f"rank{r:05d}.pt").exists() for r in range(world)):
            return d
    return None


def load(path: Path, rank: int, plan: Plan, roles, opts) -> int:
    """Restore this rank's shards and optimizer states; returns the iterations already done."""
    state = torch.load(path / f"rank{rank:05d}.pt", weights_only=False)
    if state["plan"] != plan_id(plan):
        raise PlanError(
            "the checkpoint was written by a different plan (cluster, experiment or layouts "
            "differ)",
            source=str(path),
        )
    for role, opt in opts.items():
        saved = state["roles"][role]
        params = dict(roles[role].model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, value in saved["params"].items():
                params[name].copy_(value)
        opt.load_state_dict(saved["optim"])
    return int(state["iteration"])
