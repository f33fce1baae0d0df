"""The run folder (`--out`) of rlhf-run: checked, then locked, before any worker starts.

- Nothing in the folder is written before the checks pass: `--out` is a folder (or can be
  made one); a resume has an intact checkpoint of the same plan and the same data; a fresh run
  goes into a folder that holds no run (no metrics.jsonl, no checkpoints/) unless `overwrite`,
  which then clears the old run's files (RUN_FILES; nothing else in the folder is touched).
- `.lock` in the folder is held (flock) by the launcher for the run's life, with its pid in it:
  a second run into the same folder is refused, naming that pid. The kernel drops the lock
  when the launcher exits, however it exits.
- A resume repairs a last metrics line cut short (a killed run) and says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from executor.runtime import checkpoints, metrics
from plans import Plan, PlanError
from plans.metrics import FILE

RUN_FILES = ("plan.json", FILE, "checkpoints", "final")
LOCK = ".lock"


@dataclass
class RunFolder:
    path: Path
    resume_from: Path | None
    notes: list[str] = field(default_factory=list)
    """Warnings for the user: checkpoints skipped, a metrics line repaired."""
    lock: IO | None = None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def open_run_folder(
    out: Path, plan: Plan, data: str | None, resume: bool, overwrite: bool
) -> RunFolder:
    """Check `out` for this run and take its lock (raises PlanError naming the option)."""
    if resume and overwrite:
        raise PlanError(
            "--resume continues the run in --out, --overwrite replaces it", field="--overwrite"
        )
    _check_writable(out)
    lock = _lock(out, create=False) if (out / LOCK).exists() else None  # only reads
    try:
        folder = RunFolder(out, None, lock=lock)
        if resume:
            folder.resume_from, folder.notes = checkpoints.resumable(out, plan.cluster.world_size)
            if folder.resume_from is None:
                why = f" ({'; '.join(folder.notes)})" if folder.notes else ""
                raise PlanError(
                    f"no complete checkpoint in {out / 'checkpoints'}{why}", field="--resume"
                )
            source = checkpoints.data_source(data or plan.experiment.dataset)
            where = "--data" if data else "experiment.dataset"
            checkpoints.check_resume(folder.resume_from, plan, source, where)
        elif not overwrite and (held := _run_files(out)):
            raise PlanError(
                f"{out} already holds a run ({', '.join(held)}); continue it with --resume or "
                f"replace it with --overwrite",
                field="--out",
            )
        # The checks passed: from here on the folder is written.
        try:
            out.mkdir(parents=True, exist_ok=True)
            folder.lock = folder.lock or _lock(out, create=True)
            folder.lock.seek(0)
            folder.lock.truncate()
            folder.lock.write(f"{os.getpid()}\n")
            folder.lock.flush()
            if overwrite:
                for name in RUN_FILES:
                    _remove(out / name)
            if resume and (note := metrics.repair(out)):
                folder.notes.append(f"warning: {note}")
        except OSError as e:
            raise PlanError(
                f"cannot write {e.filename or out}: {e.strerror}", field="--out"
            ) from None
        return folder
    except BaseException:
        if lock is not None:
            lock.close()
        raise


def _check_writable(out: Path) -> None:
    """`out` is a folder or can be made one, and can be written."""
    if out.exists() and not out.is_dir():
        raise PlanError(f"{out} is a file, not a folder", field="--out")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PlanError(f"{existing} is a file, so {out} cannot be created", field="--out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PlanError(f"{existing} is not writable", field="--out")


def _run_files(out: Path) -> list[str]:
    held = [FILE] if (out / FILE).is_file() else []
    return held + (["checkpoints/"] if (out / "checkpoints").is_dir() else [])


def _lock(out: Path, create: bool) -> IO:
    f = open(out / LOCK, "a+" if create else "r+")  # noqa: SIM115 (held for the run's life)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise PlanError(
            f"{out} is in use by another rlhf-run (pid {pid}); wait for it to end or choose "
            f"another --out",
            field="--out",
        ) from None
    return f


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def tidy(out: Path) -> None:
    """After an interrupted run: remove checkpoint folders a stopped save left half-written."""
    for tmp in (out / "checkpoints").glob(".iter-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def stopped_at(out: Path, world: int) -> str:
    """Where an interrupted run stopped, for its one line: the iteration it was in (the one
    after the last in metrics.jsonl) and the newest intact checkpoint."""
    done = 0
    try:
        for line in (out / FILE).read_text().splitlines():
            try:
                done = max(done, int(json.loads(line)["iteration"]) + 1)
            except (ValueError, KeyError, TypeError):
                pass
    except OSError:
        pass
    last = checkpoints.latest(out, world)
    if last is not None:
        done = max(done, int(last.name.removeprefix("iter-")))
    return f"at iteration {done}; " + (f"last checkpoint: {last}" if last else "no checkpoint")
