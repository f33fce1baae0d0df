"""Around a run: trackers fed from metrics.jsonl (their records equal its rows), and rlhf-eval
scoring a trained actor exactly as the run's own evaluation did."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plans import (
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    Plan,
    experiment_from_dict,
    load_experiment,
    save_plan,
)
from plans.metrics import read_metrics

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _cli(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [PY, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def _plan(tmp: Path, evaluation: dict | None, tag: str) -> Path:
    """ppo-tiny on 2 CPU workers, every call data-parallel over both (the evaluation then
    splits its questions as rlhf-eval --workers 2 does)."""
    doc = load_experiment("ppo-tiny").model_dump(mode="json")
    doc.update(batch_size=16, evaluation=evaluation)
    exp = experiment_from_dict(doc)
    both = Allocation(mesh=DeviceMesh(n_gpus=2), strategy=ParallelStrategy(dp=2))
    plan = Plan(
        cluster=ClusterSpec(nodes=1, gpus_per_node=2, device="cpu"),
        experiment=exp,
        allocations={m.name: both for m in exp.mfcs()},
    )
    path = tmp / f"{tag}.json"
    save_plan(plan, path)
    return path


def _run(plan: Path, out: Path, *extra: str, iterations: int = 2) -> list:
    r = _cli("cli.run_app", str(plan), "--iterations", str(iterations), "--out", str(out), *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return read_metrics(out / "metrics.jsonl")


def test_tensorboard_scalars_equal_metrics_jsonl_across_a_resume(tmp_path):
    """3 iterations with a checkpoint after 2, then a resume to 4: iteration 2 runs twice,
    and TensorBoard shows each iteration once, with the values metrics.jsonl ends with."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from executor.runtime.trackers import scalars

    plan, out = _plan(tmp_path, None, "p"), tmp_path / "run"
    tb = ("--tracker", "tensorboard", "--checkpoint-every", "2")
    _run(plan, out, *tb, iterations=3)
    rows = _run(plan, out, *tb, "--resume", iterations=4)
    assert [r.iteration for r in rows] == [0, 1, 2, 3]
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert "plan" in " ".join(acc.Tags()["tensors"])  # the plan, as text
    logged = 0
    for row in rows:
        numbers = scalars(row)
        assert {"reward_mean", "iteration_s", "calls/actor_gen/compute_s"} <= set(numbers)
        for tag, value in numbers.items():
            got = [e.value for e in acc.Scalars(tag) if e.step == row.iteration]
            assert got == [np.float32(value)], (tag, row.iteration)  # TensorBoard keeps float32
            logged += 1
    assert logged == sum(len(scalars(r)) for r in rows) > 80


def _wandb_history(folder: Path) -> list[dict]:
    """History records of an offline wandb run: its .wandb file is a 7-byte header, then
    LevelDB-log blocks of 32 KiB holding protobuf records (crc32, length, type headers)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, part, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and n == 0):
            pos += left
            continue
        body, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        part = body if kind in (1, 2) else part + body
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(part)
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                )
    return rows


def test_wandb_and_mlflow_offline_records(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store so
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from executor.runtime.trackers import scalars

    out = tmp_path / "run"
    rows = _run(_plan(tmp_path, None, "p"), out, "--tracker", "wandb", "--tracker", "mlflow")
    history = {h["_step"]: h for h in _wandb_history(out)}
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("rlhf-run").experiment_id])
    assert run.data.params["experiment.algorithm"] == "ppo"
    for row in rows:
        for tag, value in scalars(row).items():
            assert history[row.iteration][tag] == pytest.approx(value, rel=1e-12), tag
            steps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
            assert steps[row.iteration] == pytest.approx(value, rel=1e-12), tag


def test_rlhf_eval_equals_the_runs_evaluation(tmp_path):
    """The run evaluates its actor after every iteration; rlhf-eval on the saved actor (final,
    or a checkpoint's) gives the same accuracy. To make the comparison able to fail, the
    references are then rigged from rlhf-eval's own predictions, half right and half wrong,
    and the last iteration is run again from its checkpoint (bit for bit the same training):
    the run's evaluation and rlhf-eval must both score exactly that half."""
    qa = [
        {"question": f"What is {a} plus {a}?", "answer": f"{a} + {a} = {2 * a}. #### {2 * a}"}
        for a in range(1, 11)
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa))
    spec = {"dataset": str(data), "every": 1, "shots": 2, "questions": 8, "max_new_tokens": 10}
    plan, out = _plan(tmp_path, spec, "p"), tmp_path / "run"
    rows = _run(plan, out, "--checkpoint-every", "1", iterations=4)

    def evaluate(*extra: str) -> dict:
        r = _cli("cli.eval_app", str(out), "--workers", "2", "--json", *extra)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout)

    final = evaluate()
    assert final["questions"] == 8 and len(final["answers"]) == 8
    assert final["accuracy"] == rows[3].stat("eval_accuracy")
    assert evaluate("--iteration", "3")["accuracy"] == rows[2].stat("eval_accuracy")

    predicted = [a["predicted"] for a in final["answers"]]
    assert all(predicted)  # the trained actor answers with digits: numbers to match
    wrong = next(str(n) for n in range(10**6, 10**7) if str(n) not in predicted)
    rigged = [
        {**q, "answer": f"#### {p if i % 2 == 0 else wrong}"}
        for i, (q, p) in enumerate(zip(qa[2:], predicted, strict=True))
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in qa[:2] + rigged))
    shutil.rmtree(out / "checkpoints" / "iter-000004")
    again = _run(plan, out, "--resume", iterations=4)
    assert [r.iteration for r in again] == [0, 1, 2, 3]
    assert again[3].stat("eval_accuracy") == 0.5  # the run's own evaluation, rigged data
    assert again[3].stat("reward_mean") == rows[3].stat("reward_mean")  # the same training
    assert evaluate()["accuracy"] == 0.5
