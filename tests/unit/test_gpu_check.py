"""The figures of scripts/gpu_check.sh (benchmarks/gpu_check.py) on a CPU with tiny models:
the formulas against hand computation, the report of a run folder, the experiments it plans,
and the bf16-against-fp32 comparison it prints."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from plans import PlanEstimate, load_experiment, load_plan, preset
from plans.plan import CallEstimate

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)


def test_decode_bound_by_hand():
    spec = preset("tiny")
    rows, prompt, steps, tp, bw = 3, 5, 4, 2, 1e9
    kv_row_pos = 2 * spec.num_hidden_layers * spec.num_key_value_heads * spec.head_dim * 2 / tp
    total = 0.0
    for t in range(1, steps + 1):  # step t reads the weights and prompt + t cached positions
        total += spec.num_params() * 2 / tp + rows * (prompt + t) * kv_row_pos
    assert gc.decode_bound_s(spec, 2, rows, prompt, steps, tp, bw) == pytest.approx(total / bw)


def test_mfu_counts_model_flops_of_every_pass():
    spec = preset("tiny")
    flops = spec.train_flops(8, 32)
    assert gc.train_mfu(spec, 8, 32, 2, 4.0, 2, flops) == pytest.approx(2 * flops / (4 * 2 * flops))


def _row(it: int, compute: dict[str, float], peak_mib: float) -> dict:
    calls = {
        name: {"start": 0.0, "end": s, "compute_s": s, "wait_s": 0.0, "data_s": 0.0,
               "realloc_s": 0.0, "estimate_s": None}
        for name, s in compute.items()
    }  # fmt: skip
    return {"iteration": it, "iteration_s": 1.0, "realloc_s": 0.0, "peak_memory_mib": peak_mib,
            "calls": calls, "response_len": 16.0}  # fmt: skip


def test_report_of_a_run_folder(tmp_path):
    from plans.io import example_path

    plan = load_plan(example_path("ppo-tiny-4cpu", "plan"))
    names = [m.name for m in plan.experiment.mfcs()]
    est = {n: CallEstimate(time_s=1.0, peak_memory_gib=0.5) for n in names}
    plan = plan.model_copy(
        update={"estimate": PlanEstimate(iteration_time_s=6.0, calls=est, profile="x")}
    )
    rows = [_row(0, dict.fromkeys(names, 9.0), 99.0)]  # a warm-up iteration, skipped
    rows += [_row(i, dict.fromkeys(names, t), 256.0 * i) for i, t in ((1, 2.0), (2, 0.5), (3, 0.8))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = gc.run_report(tmp_path, plan)
    train = next(x for x in lines if x.startswith("actor_train"))
    assert "measured    0.800 s" in train and "(+25%)" in train  # the median, 1.0 against 0.8
    exp = plan.experiment
    s = plan.allocations["actor_train"].strategy
    mfu = 2 * exp.model("actor").train_flops(exp.batch_size, exp.seq_len)
    mfu /= 0.8 * s.world * plan.cluster.peak_tflops * 1e12
    assert f"MFU {mfu:.1%}" in train
    gen = next(x for x in lines if x.startswith("actor_gen"))
    assert f"decode {exp.batch_size * exp.gen_len / 0.8:,.0f} tokens/s" in gen
    assert lines[-1].startswith("peak memory 0.75 GiB") and "0.50 GiB planned (+50%)" in lines[-1]


def test_experiments_are_valid_and_shaped_as_asked(tmp_path):
    gc.experiments(tmp_path, "qwen2.5-0.5b", 16, 64, "bfloat16")
    for alg in ("grpo", "ppo"):
        exp = load_experiment(str(tmp_path / f"{alg}-gpu-check.json"))
        assert exp.algorithm == alg and exp.dtype == "bfloat16" and exp.batch_size == 16
        assert exp.model("actor").hidden_size == preset("qwen2.5-0.5b").hidden_size


def test_bf16_losses_follow_fp32():
    """Mixed precision (bf16 weights, fp32 masters and gradients) tracks fp32 training from
    the same weights; a bf16 path that lost the fp32 masters would drift off in a few steps."""
    pairs = gc.precision("tiny", "cpu", 3, 4, 32)
    assert len(pairs) == 3
    for f32, b16 in pairs:
        assert abs(b16 - f32) / f32 < 0.01
    assert pairs[-1][0] < pairs[0][0] and pairs[-1][1] < pairs[0][1]  # both learn


def test_decode_figures_run_on_cpu():
    f = gc.decode("tiny", "cpu", 2, 8, 4, 20.0)
    assert f["tokens_per_s"] > 0 and 0 < f["bandwidth_share"] and f["prefill_s"] > 0


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0
