"""Refining a profile from rlhf-run metrics (`rlhf-plan profile --from-run`), and the
accuracy figures of benchmarks/e2e.py (Spearman rank correlation, relative error)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from estimator import CostModel, load_profile, save_profile
from estimator.calibrate import (
    Point,
    RunData,
    calibrate,
    fit_factors,
    fit_kind,
    load_run,
    ranks,
    relative_error,
    spearman,
)
from estimator.cost import COMPUTE_PARTS, RULE_REWARD_S_PER_SEQ
from plans import Allocation, DeviceMesh, ParallelStrategy, Plan, PlanError, save_plan
from plans.io import cluster_from_dict, experiment_from_dict
from plans.metrics import CallMetrics, MetricsRow

SHIPPED = Path(__file__).parents[2] / "estimator" / "profiles" / "cpu-epyc-2core-1thread.json"
EXE = shutil.which("rlhf-plan") or f"{sys.executable} -m cli.plan_app"


# ---- Spearman ------------------------------------------------------------------------------
def test_ranks_average_ties():
    assert ranks([10.0, 30.0, 20.0]) == [1.0, 3.0, 2.0]
    assert ranks([5.0, 1.0, 5.0, 7.0]) == [2.5, 1.0, 2.5, 4.0]


def test_spearman_monotone_and_reversed():
    x = [0.3, 1.2, 2.0, 5.5, 9.0]
    assert spearman(x, [v**3 + 1 for v in x]) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)


def test_spearman_known_value_and_ties():
    # Without ties rho = 1 - 6 sum(d^2) / (n (n^2 - 1)): d = (0, 1, -1, 0) -> 1 - 12/60 = 0.8.
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # With ties: Pearson of the averaged ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4).
    rx, ry = [1, 2.5, 2.5, 4], [1, 2, 3, 4]
    mx = my = 2.5
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    want = cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(want)


def test_spearman_degenerate():
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        spearman([1.0, 2.0], [1.0])


def test_relative_error_sign():
    assert relative_error(1.1, 1.0) == pytest.approx(0.1)
    assert relative_error(0.5, 1.0) == pytest.approx(-0.5)


# ---- the fit -------------------------------------------------------------------------------
def _pt(compute, comm, passes, scale, overhead):
    return Point("c", "train", scale * compute + comm + overhead * passes, compute, comm, passes, 1)


def test_fit_recovers_scale_and_overhead_when_passes_differ():
    pts = [_pt(1.0, 0.1, 2, 1.3, 0.02), _pt(0.5, 0.0, 8, 1.3, 0.02), _pt(2.0, 0.3, 4, 1.3, 0.02)]
    s, o, both = fit_kind(pts)
    assert both and s == pytest.approx(1.3) and o == pytest.approx(0.02)


def test_fit_falls_back_to_scale_when_points_cannot_separate():
    pts = [_pt(1.0, 0.1, 2, 1.5, 0.0), _pt(1.0, 0.2, 2, 1.5, 0.0)]  # same compute per pass
    s, o, both = fit_kind(pts)
    assert not both and o == 0.0 and s == pytest.approx(1.5, rel=1e-6)
    # A negative overhead would fit better: clamped to zero, scale alone.
    pts = [_pt(1.0, 0.0, 2, 2.0, -0.1), _pt(1.0, 0.0, 8, 2.0, -0.1)]
    s, o, both = fit_kind(pts)
    assert not both and o == 0.0 and s > 0


# ---- --from-run on a synthetic run ---------------------------------------------------------
def ppo_doc(model: str = "tiny") -> dict:
    """A small PPO experiment (8 prompts of 16 + 16 tokens) with `model` in every role."""
    return {
        "name": "t",
        "algorithm": "ppo",
        "batch_size": 8,
        "prompt_len": 16,
        "gen_len": 16,
        "mini_batches": 2,
        "dtype": "float32",
        "roles": {r: model for r in ("actor", "critic", "ref", "reward")},
    }


def _plan(rule: bool = False) -> Plan:
    doc = ppo_doc()
    if rule:
        doc["reward_function"] = "builtin:digits"
    exp = experiment_from_dict(doc)
    cluster = cluster_from_dict({"nodes": 1, "gpus_per_node": 2, "device": "cpu"})
    both = DeviceMesh(n_gpus=2)
    one = DeviceMesh(n_gpus=1)
    allocs = {
        "actor_gen": Allocation(mesh=both, strategy=ParallelStrategy(dp=2)),
        "ref_inf": Allocation(mesh=one, strategy=ParallelStrategy(micro_batches=2)),
        "rew_inf": Allocation(mesh=both, strategy=ParallelStrategy(tp=2)),
        "critic_inf": Allocation(mesh=both, strategy=ParallelStrategy(dp=2)),
        "actor_train": Allocation(mesh=both, strategy=ParallelStrategy(tp=2, micro_batches=2)),
        "critic_train": Allocation(mesh=one, strategy=ParallelStrategy()),
    }
    return Plan(cluster=cluster, experiment=exp, allocations=allocs)


TRUTH = {"generate": (1.4, 0.0), "inference": (1.2, 0.0), "train": (1.5, 0.0)}


def _write_run(
    folder: Path, plan: Plan, truth=TRUTH, rule_s: float = 2e-4, comm: float = 1.0
) -> dict[str, float]:
    """A metrics.jsonl as rlhf-run writes it, with calls taking `truth`'s scale x compute +
    comm x communication + overhead x passes; iteration 0 is a slow warm-up that must be
    ignored."""
    base = load_profile(SHIPPED)
    cm = CostModel(plan.cluster, plan.experiment, base)
    want = {}
    for name, alloc in plan.allocations.items():
        c = cm.call_cost(name, alloc)
        if cm.rule_reward(cm.mfcs[name]):
            want[name] = rule_s * 8 / alloc.strategy.dp
            continue
        compute = sum(v for k, v in c.breakdown.items() if k in COMPUTE_PARTS)
        s, o = truth[cm.mfcs[name].kind]
        want[name] = s * compute + comm * (c.time_s - compute) + o * c.passes
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for it in range(4):
        slow = 5.0 if it == 0 else 1.0 + 0.01 * (it - 2)  # medians land on the truth
        calls = {
            n: CallMetrics(
                start=0.0,
                end=t * slow,
                compute_s=t * slow,
                wait_s=0.0,
                data_s=0.001,
                realloc_s=0.0,
                estimate_s=0.1,
            )
            for n, t in want.items()
        }
        row = MetricsRow(
            iteration=it, iteration_s=3.0, realloc_s=0.0, peak_memory_mib=1.0, calls=calls
        )
        lines.append(row.to_line())
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    save_plan(plan, folder / "plan.json")
    return want


def test_calibrate_recovers_factors_and_records_provenance(tmp_path):
    plan = _plan()
    want = _write_run(tmp_path / "run", plan)
    base = load_profile(SHIPPED)
    run = load_run(tmp_path / "run")
    assert len(run.rows) == 3 and all(r.iteration >= 1 for r in run.rows)
    prof, fit = calibrate(base, [run], command="test")
    cal = prof.calibration
    assert cal is not None and set(cal.kinds) == {"generate", "inference", "train"}
    for kind, (s, _) in TRUTH.items():
        assert cal.kinds[kind].scale == pytest.approx(s, rel=1e-6)
        assert cal.kinds[kind].error_after == pytest.approx(0.0, abs=1e-6)
    assert cal.kinds["train"].samples == 2 and cal.kinds["inference"].samples == 3
    assert prof.id.startswith(base.id + "+cal-") and prof.ops == base.ops
    ref = prof.refinements[-1]
    assert ref.what == "calibration" and ref.base_id == base.id
    assert ref.sources == [str(tmp_path / "run")] and "train: scale 1.500" in ref.note
    # The calibrated cost model predicts the measured calls.
    cm = CostModel(plan.cluster, plan.experiment, prof)
    for name, t in want.items():
        assert cm.time(name, plan.allocations[name]) == pytest.approx(t, rel=1e-6)
    # A second calibration starts from the measured timings, not from the first factors.
    again, _ = calibrate(prof, [run])
    assert again.calibration.kinds["train"].scale == pytest.approx(1.5, rel=1e-6)


def test_communication_scale_is_fitted_when_the_run_tells_it_apart(tmp_path):
    """The plan has calls of one kind with and without tensor-parallel communication (ref_inf
    on one device, rew_inf over tp=2), so a shared communication factor is determined."""
    plan = _plan()
    truth = {"generate": (1.1, 0.0), "inference": (1.2, 0.0), "train": (0.9, 0.0)}
    want = _write_run(tmp_path / "run", plan, truth=truth, comm=1.7)
    prof, fit = calibrate(load_profile(SHIPPED), [load_run(tmp_path / "run")])
    cal = prof.calibration
    assert "comm" in cal.fitted and cal.comm_scale == pytest.approx(1.7, rel=1e-6)
    assert cal.kinds["inference"].scale == pytest.approx(1.2, rel=1e-6)
    cm = CostModel(plan.cluster, plan.experiment, prof)
    for name, t in want.items():
        assert cm.time(name, plan.allocations[name]) == pytest.approx(t, rel=1e-6)
    assert any("overhead" in n for n in fit.notes)  # nothing to gain: left at zero


def test_rule_reward_is_priced_as_a_rule_and_calibrated(tmp_path):
    plan = _plan(rule=True)
    base = load_profile(SHIPPED)
    cm = CostModel(plan.cluster, plan.experiment, base)
    rew = cm.call_cost("rew_inf", plan.allocations["rew_inf"])
    assert rew.breakdown == {"rule": pytest.approx(8 * RULE_REWARD_S_PER_SEQ)}
    model = CostModel(plan.cluster, _plan().experiment, base)
    assert rew.time_s < 0.25 * model.time("rew_inf", plan.allocations["rew_inf"])  # tiny model
    _write_run(tmp_path / "run", plan, rule_s=4e-4)
    prof, _ = calibrate(base, [load_run(tmp_path / "run")])
    assert prof.calibration.rule_reward_s_per_seq == pytest.approx(4e-4)
    cm2 = CostModel(plan.cluster, plan.experiment, prof)
    assert cm2.time("rew_inf", plan.allocations["rew_inf"]) == pytest.approx(8 * 4e-4)


def test_kinds_without_measurements_are_left_alone(tmp_path):
    plan = _plan()
    _write_run(tmp_path / "run", plan)
    run = load_run(tmp_path / "run")
    only_train = RunData(
        run.plan,
        [
            r.model_copy(update={"calls": {k: v for k, v in r.calls.items() if "train" in k}})
            for r in run.rows
        ],
    )
    prof, fit = calibrate(load_profile(SHIPPED), [only_train])
    assert set(prof.calibration.kinds) == {"train"}
    assert any("no measured generate call" in n for n in fit.notes)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE.split(), *args], capture_output=True, text=True, timeout=60)


def test_cli_from_run(tmp_path):
    plan = _plan()
    _write_run(tmp_path / "run", plan)
    out = tmp_path / "new.json"
    r = run_cli(
        "profile", "--from-run", str(tmp_path / "run"), "--profile", str(SHIPPED),
        "--out", str(out), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["profile"] == str(out) and doc["kinds"]["train"]["scale"] == pytest.approx(1.5)
    prof = load_profile(out)
    assert prof.calibration is not None and prof.refinements[-1].what == "calibration"
    assert "--from-run" in prof.refinements[-1].command
    # The table form, and the plan given explicitly.
    (tmp_path / "run" / "plan.json").rename(tmp_path / "p.json")
    r = run_cli(
        "profile", "--from-run", str(tmp_path / "run"), "--plan", str(tmp_path / "p.json"),
        "--profile", str(SHIPPED), "--out", str(tmp_path / "n2.json"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "scale" in r.stdout and "wrote" in r.stdout


def test_cli_from_run_errors_are_one_line(tmp_path):
    plan = _plan()
    _write_run(tmp_path / "run", plan)
    (tmp_path / "run" / "plan.json").unlink()
    r = run_cli("profile", "--from-run", str(tmp_path / "run"), "--profile", str(SHIPPED))
    assert r.returncode == 1 and "plan.json" in r.stderr and "--plan" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("profile", "--from-run", str(tmp_path / "nothing"), "--profile", str(SHIPPED))
    assert r.returncode == 1 and "metrics.jsonl" in r.stderr


def test_metrics_of_another_plan_are_refused(tmp_path):
    plan = _plan()
    _write_run(tmp_path / "run", plan)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().replace("ref_inf", "dpo_train")
    (tmp_path / "run" / "metrics.jsonl").write_text(lines)
    with pytest.raises(PlanError, match="dpo_train"):
        load_run(tmp_path / "run")


def test_calibrated_profile_round_trips(tmp_path):
    plan = _plan()
    _write_run(tmp_path / "run", plan)
    prof, _ = calibrate(load_profile(SHIPPED), [load_run(tmp_path / "run")])
    save_profile(prof, tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json") == prof


def test_contention_is_fitted_from_calls_alone_and_together():
    """Train calls measured alone (busy 0) and next to another (busy 1) determine how much
    the other cores slow compute down."""
    pts = [
        Point("a", "train", 1.0 * 2.0 + 0.3 * b * 2.0 + 0.1, 2.0, 0.1, 2, 1, b)
        for b in (0.0, 1.0, 0.5)
    ]
    values, notes = fit_factors(pts)
    assert values[("contention", "")] == pytest.approx(0.3, rel=1e-6)
    assert values[("scale", "train")] == pytest.approx(1.0, rel=1e-6)
