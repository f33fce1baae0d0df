"""Experiment trackers (`rlhf-run --tracker tensorboard|wandb|mlflow`): sinks that follow the
run's metrics.jsonl.

metrics.jsonl stays the source of truth: rank 0 writes it (executor.runtime.metrics) and a
thread in the launcher reads each new complete line back through plans.metrics and hands the
row to every tracker. No worker ever waits for a tracker, and a tracker that fails (a full
disk, a broken extra) is dropped with one warning instead of stopping the run.

Per row, every number of the row is logged at step = iteration: `iteration_s`, `realloc_s`,
`peak_memory_mib`, each statistic of the algorithm (`reward_mean`, `task_reward_mean`,
`eval_accuracy`, ...: the reward curve is the `reward_mean` / `task_reward_mean` series), and
per call `calls/<call>/<field>` (compute_s, wait_s, data_s, realloc_s, estimate_s). The plan
goes in once, as the run's config (wandb), params plus a plan.json artifact (MLflow), or a
text summary (TensorBoard).

wandb and MLflow are optional extras (`pip install '.[wandb]'`, `'.[mlflow]'`) and run offline
by default: wandb in offline mode (WANDB_MODE, if set, wins), MLflow into a file store in the
tracker folder (MLFLOW_TRACKING_URI, if set, wins).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from plans import Plan, PlanError
from plans.metrics import MetricsRow

TRACKERS = ("tensorboard", "wandb", "mlflow")
PROJECT = "rlhf-run"
"""The wandb project and MLflow experiment every run logs into."""
POLL_S = 1.0


def scalars(row: MetricsRow) -> dict[str, float]:
    """Every number of a metrics row by tracker tag (None values left out)."""
    out: dict[str, float] = {
        "iteration_s": row.iteration_s,
        "realloc_s": row.realloc_s,
        "peak_memory_mib": row.peak_memory_mib,
    }
    out.update({k: float(v) for k, v in row.stats.items() if v is not None})
    for name, call in row.calls.items():
        for k, v in call.model_dump().items():
            if v is not None and k not in ("start", "end"):
                out[f"calls/{name}/{k}"] = float(v)
    return out


def plan_params(plan: Plan) -> dict[str, str]:
    """The plan flattened to `experiment.<field>` and `allocations.<call>` strings."""
    flat: dict[str, str] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}", x)
        else:
            flat[prefix] = json.dumps(v) if not isinstance(v, str) else v

    walk("experiment", plan.experiment.model_dump(mode="json"))
    walk("cluster", plan.cluster.model_dump(mode="json"))
    for name, alloc in plan.allocations.items():
        flat[f"allocations.{name}"] = alloc.label()
    return flat


def _missing(kind: str, package: str) -> PlanError:
    how = "pip install tensorboardX" if kind == "tensorboard" else f"pip install '.[{kind}]'"
    return PlanError(
        f"{kind}: the {package} package is not installed here; install it with {how}",
        field="--tracker",
    )


class TensorBoard:
    def __init__(self, folder: Path, plan: Plan, name: str, start: int):
        try:  # tensorboardX: the writer alone (protobuf), not TensorBoard's server
            from tensorboardX import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboardX") from None
        # purge_step: a resumed run hides the events an interrupted one logged past its
        # checkpoint; a fresh run (0) hides an earlier run's events in the same folder.
        self.writer = SummaryWriter(str(folder / "tensorboard"), purge_step=start)
        text = "\n".join(
            f"    {line}"
            for line in json.dumps(plan.model_dump(mode="json"), indent=2).splitlines()
        )
        self.writer.add_text("plan", text, global_step=start)

    def log(self, row: MetricsRow) -> None:
        for tag, v in scalars(row).items():
            self.writer.add_scalar(tag, v, global_step=row.iteration)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, folder: Path, plan: Plan, name: str, start: int):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=PROJECT,
            name=name,
            dir=str(folder),
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=plan.model_dump(mode="json"),
            settings=wandb.Settings(silent=True, console="off"),  # the run's output is ours
        )

    def log(self, row: MetricsRow) -> None:
        self.run.log(scalars(row), step=row.iteration)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, folder: Path, plan: Plan, name: str, start: int):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow-skinny") from None
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a file store in the tracker folder: offline, nothing to set up
            uri = (folder / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(PROJECT)
        exp_id = found.experiment_id if found else self.client.create_experiment(PROJECT)
        self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in plan_params(plan).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, plan.model_dump(mode="json"), "plan.json")

    def log(self, row: MetricsRow) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, row.iteration) for k, v in scalars(row).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


_PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow"}


def check_available(kinds: list[str]) -> None:
    """A tracker whose package is missing is refused before the run folder is touched."""
    import importlib.util

    for k in kinds:
        if importlib.util.find_spec(_PACKAGES[k]) is None:
            raise _missing(k, "mlflow-skinny" if k == "mlflow" else _PACKAGES[k])


def open_trackers(kinds: list[str], folder: Path, plan: Plan, name: str, start: int) -> list:
    """The trackers named by --tracker, opened before any worker starts (a missing extra is
    one line then, not a surprise after training)."""
    for k in kinds:
        if k not in _KINDS:
            raise PlanError(f"{k!r} is not a tracker ({', '.join(TRACKERS)})", field="--tracker")
    opened = []
    for k in dict.fromkeys(kinds):
        try:
            opened.append(_KINDS[k](folder, plan, name, start))
        except PlanError:
            raise
        except Exception as e:  # the tracker's own error: one line naming it
            for t in opened:
                t.close()
            why = " ".join(str(e).split())[:200]
            raise PlanError(
                f"{k}: cannot start: {type(e).__name__}: {why}", field="--tracker"
            ) from None
    return opened


class MetricsFollower:
    """A launcher thread that hands each new row of metrics.jsonl to the trackers."""

    def __init__(self, path: Path, trackers: list, start: int):
        self.path, self.trackers, self.next = path, list(trackers), start
        self.offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trackers", daemon=True)

    def start(self) -> MetricsFollower:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.poll()

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # complete lines only: rank 0 may be mid-write
        self.offset += end
        for line in chunk[:end].splitlines():
            if not line.strip():
                continue
            try:
                row = MetricsRow.model_validate_json(line)
            except ValueError:
                continue  # the run reports a bad metrics line itself
            if row.iteration < self.next:
                continue  # logged before a resume
            self.next = row.iteration + 1
            for t in list(self.trackers):
                self._call(t, "log", row)

    def _call(self, tracker, what: str, *args) -> None:
        try:
            getattr(tracker, what)(*args)
        except Exception as e:  # a tracker never stops the run
            self.trackers.remove(tracker)
            print(
                f"rlhf-run: warning: {type(tracker).__name__} tracker stopped ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:160]}); metrics.jsonl is complete",
                file=sys.stderr,
            )

    def finish(self) -> None:
        """The last rows, then close every tracker."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.poll()
        for t in list(self.trackers):
            self._call(t, "close")
