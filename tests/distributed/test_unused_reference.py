"""With kl_coef = 0 the reference call leaves the plan: the run trains exactly as the run that
still computes the reference's log-probs and multiplies them by 0, and no rank builds a
reference model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from executor.runtime.launch import launch
from executor.runtime.worker import RunTask
from plans import (
    ALGORITHM_MFCS,
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ExperimentSpec,
    ParallelStrategy,
    Plan,
    experiment_from_dict,
    load_experiment,
    save_plan,
)

pytestmark = pytest.mark.distributed

BOTH = Allocation(mesh=DeviceMesh(n_gpus=2), strategy=ParallelStrategy(dp=2))
SECOND = Allocation(mesh=DeviceMesh(n_gpus=1, gpu_start=1), strategy=ParallelStrategy())
ITERATIONS = 2


def _whole_table(self: ExperimentSpec):
    """ExperimentSpec.mfcs as it was before calls nothing reads were left out."""
    return ALGORITHM_MFCS[self.algorithm]


def _recording(env, task) -> None:
    """rlhf-run's worker, writing which roles this rank built a model of."""
    from executor.runtime import worker

    build = worker.build_roles

    def build_and_record(*args, **kwargs):
        roles = build(*args, **kwargs)
        out = Path(task.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        built = sorted(r for r, rm in roles.items() if rm.model is not None)
        (out / f"roles-{env.rank}.json").write_text(json.dumps(built))
        return roles

    worker.build_roles = build_and_record
    worker.run(env, task)


def _recording_whole_table(env, task) -> None:
    """The same, with every call of the algorithm's table (the reference's too)."""
    ExperimentSpec.mfcs = _whole_table
    _recording(env, task)


def _experiment(name: str, changes: dict) -> ExperimentSpec:
    doc = load_experiment(name).model_dump(mode="json")
    doc.update(batch_size=4, evaluation=None, **changes)
    return experiment_from_dict(doc)


def _plan(exp: ExperimentSpec) -> Plan:
    allocs = {m.name: SECOND if m.name == "ref_inf" else BOTH for m in exp.mfcs()}
    cluster = ClusterSpec(nodes=1, gpus_per_node=2, device="cpu")
    return Plan(cluster=cluster, experiment=exp, allocations=allocs)


def _run(tmp: Path, tag: str, plan: Plan, fn) -> tuple[Path, list[dict], list[list[str]]]:
    path = tmp / f"{tag}.json"
    save_plan(plan, path)
    out = tmp / tag
    task = RunTask(str(path), ITERATIONS, str(out), save_final=True)
    assert launch(fn, task, world=2, timeout_s=60) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    built = [json.loads((out / f"roles-{r}.json").read_text()) for r in range(2)]
    return out, rows, built


def _stats(row: dict) -> dict:
    """A row's numbers that do not depend on timing."""
    fixed = ("iteration_s", "realloc_s", "peak_memory_mib", "calls")
    return {k: v for k, v in row.items() if k not in fixed and not k.endswith("_s")}


CASES = {
    "grpo": ("grpo-tiny", {"mini_batches": 2, "grpo": {"kl_coef": 0.0}}),
    "ppo": ("ppo-tiny", {"mini_batches": 2, "ppo": {"kl_coef": 0.0}}),
    "remax": ("remax-tiny", {"ppo": {"kl_coef": 0.0}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kl_coef_zero_runs_no_reference_and_trains_the_same(case, tmp_path, monkeypatch):
    name, changes = CASES[case]
    exp = _experiment(name, changes)
    assert "ref_inf" not in [m.name for m in exp.mfcs()] and "ref" not in exp.roles
    out, rows, built = _run(tmp_path, "without", _plan(exp), _recording)

    monkeypatch.setattr(ExperimentSpec, "mfcs", _whole_table)  # the graph before the change
    whole = _experiment(name, changes)
    assert "ref_inf" in [m.name for m in whole.mfcs()] and "ref" in whole.roles
    w_out, w_rows, w_built = _run(tmp_path, "with", _plan(whole), _recording_whole_table)

    assert all("ref" not in b for b in built), built
    assert w_built[1].count("ref") == 1 and "ref" not in w_built[0]  # the check can fail
    assert len(rows) == len(w_rows) == ITERATIONS
    for row, w_row in zip(rows, w_rows, strict=True):
        assert "ref_inf" not in row["calls"] and "ref_inf" in w_row["calls"]
        # The only difference: the run with a reference also reports its KL to it; without
        # one that KL is unknown, so it is left out rather than reported as 0.
        assert "kl_mean" not in row and "kl_mean" in w_row
        w_stats = _stats(w_row)
        w_stats.pop("kl_mean")
        assert _stats(row) == w_stats
    trained = [r for r in exp.roles if exp.roles[r].trainable]
    for role in trained:
        a = load_file(str(out / "final" / role / "model.safetensors"))
        b = load_file(str(w_out / "final" / role / "model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{case} {role} {k}"
