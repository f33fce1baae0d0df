"""Around a run: trackers fed from metrics.jsonl (their records equal its rows), and rlhf-eval
scoring a trained actor exactly as the run's own evaluation did."""

from __future__ import annotations

import json
import os
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
    doc.update(batch_size=8, mini_batches=2, evaluation=evaluation)
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


def _run(plan: Path, out: Path, *extra: str) -> list:
    r = _cli("cli.run_app", str(plan), "--iterations", "2", "--out", str(out), *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    return read_metrics(out / "metrics.jsonl")


def test_tensorboard_scalars_equal_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from executor.runtime.trackers import scalars

    rows = _run(_plan(tmp_path, None, "p"), tmp_path / "run", "--tracker", "tensorboard")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert "plan" in " ".join(acc.Tags()["tensors"])  # the plan, as text
    logged = 0
    for row in rows:
        numbers = scalars(row)
        assert {"reward_mean", "iteration_s", "calls/actor_gen/compute_s"} <= set(numbers)
        for tag, value in numbers.items():
            got = [e.value for e in acc.Scalars(tag) if e.step == row.iteration]
            assert got == [np.float32(value)], tag  # TensorBoard keeps float32
            logged += 1
    assert logged == sum(len(scalars(r)) for r in rows) > 40


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


def test_wandb_and_mlflow_offline_records(tmp_path):
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
    """The run evaluates its actor after the last iteration; rlhf-eval on the saved actor
    gives the same accuracy. To make that comparison able to fail, a second run (the same
    training, bit for bit) evaluates on references built from rlhf-eval's own predictions,
    half of them right and half wrong: both must then score exactly that half."""
    qa = [
        {"question": f"What is {a} plus {a}?", "answer": f"{a} + {a} = {2 * a}. #### {2 * a}"}
        for a in range(1, 11)
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa))
    spec = {"dataset": str(data), "every": 1, "shots": 2, "questions": 8, "max_new_tokens": 10}
    first = _run(_plan(tmp_path, spec, "a"), tmp_path / "a")
    r = _cli("cli.eval_app", str(tmp_path / "a"), "--workers", "2", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["questions"] == 8 and len(doc["answers"]) == 8
    assert doc["accuracy"] == first[-1].stat("eval_accuracy")

    # references: the predicted number for even questions, a number never predicted for odd
    taken = {a["predicted"] for a in doc["answers"]}
    wrong = next(str(n) for n in range(10**6, 10**7) if str(n) not in taken)
    rigged = qa[:2] + [
        {**q, "answer": f"#### {a['predicted'] if i % 2 == 0 and a['predicted'] else wrong}"}
        for i, (q, a) in enumerate(zip(qa[2:], doc["answers"], strict=True))
    ]
    expect = sum(1 for i, a in enumerate(doc["answers"]) if i % 2 == 0 and a["predicted"]) / 8
    assert expect > 0  # the tiny actor answers with digits: there is a number to match
    data2 = tmp_path / "rigged.jsonl"
    data2.write_text("".join(json.dumps(r) + "\n" for r in rigged))
    second = _run(_plan(tmp_path, {**spec, "dataset": str(data2)}, "b"), tmp_path / "b")
    assert second[-1].stat("eval_accuracy") == expect
    r = _cli("cli.eval_app", str(tmp_path / "b"), "--workers", "2", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["accuracy"] == expect
