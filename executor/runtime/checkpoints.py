"""Run checkpoints: everything a resumed run needs to continue exactly where it stopped.

A checkpoint after `done` iterations is a folder `checkpoints/iter-<done>` with one file per
rank (its home shards and optimizer state of every trained model) and a Hugging Face folder per
trained model. Data order and sampling are functions of (seed, iteration), so the iteration
count is all the data position and RNG state there is. Written into a temporary folder first
and renamed once every rank has finished, so an interrupted save never looks complete.
`run.json` next to the rank files says what the checkpoint belongs to: the iteration, the
plan's identity and the data source (a dataset file's path and content hash, or "builtin"),
so a resume can be checked before any worker starts. A resume takes the newest *intact*
checkpoint (every rank file present and readable as a whole: a torch file is a zip archive
with CRCs), saying which newer ones it skipped and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist

from executor.model.hf_checkpoint import save_checkpoint
from executor.runtime.launch import RunError, os_error_in
from plans import Plan, PlanError

KEEP = 2  # complete checkpoints kept; older ones are removed


def plan_id(plan: Plan) -> str:
    """Identity of what a checkpoint's shards depend on: cluster, experiment and layouts."""
    # max_staleness only when set: identities of earlier checkpoints stay as they were.
    fields = {"cluster", "experiment", "allocations"} | (
        {"max_staleness"} if plan.max_staleness else set()
    )
    doc = plan.model_dump_json(include=fields)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def data_source(path: str | None) -> dict:
    """What a run trains on: a dataset file (its path and content hash) or a built-in task
    (None: the synthetic task; `builtin:<name>`: a generated data set, e.g. builtin:trees)."""
    if path is None:
        return {"dataset": "builtin"}
    if path.startswith("builtin:"):
        return {"dataset": path}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"dataset": str(Path(path).resolve()), "sha256": h.hexdigest()}


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


def save(
    out_dir: Path,
    done: int,
    rank: int,
    plan: Plan,
    roles,
    opts,
    tokenizer,
    data: dict,
    staged: dict | None = None,
) -> None:
    """Collective over the world. `data`: the run's data_source; `staged`: call -> its
    StagedViews under max_staleness (the older weights generation still reads)."""
    final = _dir(out_dir, done)
    tmp = final.with_name(f".{final.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        _write(tmp / "run.json", {"iteration": done, "plan": plan_id(plan), "data": data})
    dist.barrier()
    state = {"iteration": done, "plan": plan_id(plan), "roles": {}}
    for role, opt in opts.items():
        state["roles"][role] = {
            # A host copy (a clone on a CPU): written from there, not kept on the GPU.
            "params": {k: v.detach().to("cpu", copy=True) for k, v in roles[role].shards().items()},
            "optim": opt.state_dict(),
        }
    if staged:
        state["staged"] = {name: sv.state() for name, sv in staged.items()}
    part = tmp / f"rank{rank:05d}.pt.part"
    try:
        with open(part, "wb") as f:  # a file object: a full disk is an OSError, not torch's
            torch.save(state, f)
        os.replace(part, tmp / f"rank{rank:05d}.pt")
    except (OSError, RuntimeError) as e:  # torch wraps a failed write in a RuntimeError
        cause = os_error_in(e)
        if cause is None:
            raise
        raise RunError(f"cannot write {part}: {cause.strerror or cause}") from None
    for role in opts:  # trained models as HF folders too, for use outside rlhf-run
        save_hf(roles[role], tmp / "hf" / role, tokenizer)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(final.parent.glob("iter-*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _write(path: Path, doc: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e}") from None


def damage(d: Path, world: int) -> str | None:
    """Why checkpoint folder `d` cannot be resumed from, or None when it is intact."""
    for r in range(world):
        f = d / f"rank{r:05d}.pt"
        if not f.exists():
            return f"{f.name} is missing"
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            return f"{f.name} is damaged ({e})"
        if bad is not None:
            return f"{f.name} is damaged (bad CRC in {bad})"
    meta = d / "run.json"
    if meta.exists():
        try:
            json.loads(meta.read_text())["iteration"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"run.json is damaged ({type(e).__name__})"
    return None


def resumable(out_dir: Path, world: int) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint (or None), and a line for every newer one skipped."""
    skipped = []
    for d in sorted((out_dir / "checkpoints").glob("iter-*"), reverse=True):
        why = damage(d, world)
        if why is None:
            return d, skipped
        skipped.append(f"skipped checkpoint {d}: {why}")
    return None, skipped


def latest(out_dir: Path, world: int) -> Path | None:
    """The newest intact checkpoint, or None."""
    return resumable(out_dir, world)[0]


def iteration_of(path: Path) -> int:
    """Iterations done when checkpoint `path` was written (its folder name: iter-NNNNNN)."""
    return int(path.name.removeprefix("iter-"))


def check_resume(path: Path, plan: Plan, data: dict, data_field: str) -> None:
    """Refuse to resume from `path` with another plan or other data (`data_field` names the
    option or field that chose the data, for the message)."""
    meta = path / "run.json"
    if not meta.exists():  # written before checkpoints recorded this: the shards say the plan
        return
    doc = json.loads(meta.read_text())
    if doc.get("plan") != plan_id(plan):
        raise PlanError(
            f"{path} was written by a different plan (cluster, experiment or layouts differ)",
            field="--resume",
        )
    saved = doc.get("data", {})
    if saved.get("sha256") != data.get("sha256") or (
        "sha256" not in data and saved.get("dataset") != data.get("dataset")
    ):
        raise PlanError(
            f"the checkpoint was trained on {_data_words(saved)}, this run reads "
            f"{_data_words(data)}; resume with the same data",
            field=data_field,
        )


def _data_words(d: dict) -> str:
    if d.get("dataset", "builtin") == "builtin":
        return "the built-in task"
    return f"{d['dataset']} (sha256 {d.get('sha256', '?')[:12]})"


def load(path: Path, rank: int, plan: Plan, roles, opts, staged: dict | None = None) -> int:
    """Restore this rank's shards, optimizer states and staged views; returns the iterations
    already done."""
    # Onto this worker's device, whichever device index wrote the file.
    device = next((rm.device for rm in roles.values()), torch.device("cpu"))
    state = torch.load(path / f"rank{rank:05d}.pt", weights_only=False, map_location=device)
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
    for name, sv in (staged or {}).items():  # the plan's identity says they were saved
        sv.restore(state["staged"][name])
    return int(state["iteration"])
