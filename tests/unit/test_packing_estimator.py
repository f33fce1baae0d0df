"""The estimator prices packed train and inference calls by the tokens present
(plans.packing.expected_shape), generation as before, and refines the expected response
length from a run's measured response_len."""

from __future__ import annotations

import pytest

from estimator.cost import CostModel
from estimator.profile import analytic_profile
from plans import (
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    experiment_from_dict,
    load_experiment,
)
from plans.packing import expected_shape, sequence_tokens, with_measured_lengths

CLUSTER = ClusterSpec(nodes=1, gpus_per_node=8, device="h100")
ALLOC = Allocation(mesh=DeviceMesh(n_gpus=2), strategy=ParallelStrategy(dp=2, micro_batches=2))


def _exp(packing=None, **changes):
    doc = load_experiment("ppo-llama2-7b").model_dump(mode="json")
    doc.update(changes)
    if packing is not None:
        doc["packing"] = packing
    return experiment_from_dict(doc)


def _costs(exp):
    cm = CostModel(CLUSTER, exp, analytic_profile(CLUSTER))
    return {m.name: cm.call_cost(m.name, ALLOC) for m in exp.mfcs()}


def test_packed_calls_cost_what_their_tokens_cost():
    padded = _exp()
    quarter = _exp({"expected_response_len": padded.gen_len / 4})
    full = _exp({})  # expected lengths default to the padded ones: nothing saved
    a, b, c = _costs(padded), _costs(quarter), _costs(full)
    for m in padded.mfcs():
        if m.kind == "generate":
            assert b[m.name].time_s == a[m.name].time_s, m.name
        else:
            assert b[m.name].breakdown["compute"] < 0.8 * a[m.name].breakdown["compute"], m.name
        assert c[m.name].time_s == pytest.approx(a[m.name].time_s), m.name


def test_expected_tokens_and_shape():
    exp = _exp({"expected_response_len": 64, "expected_prompt_len": 100})
    assert sequence_tokens(exp) == 164
    per_micro = -(-exp.sequences_per_step(exp.mfcs()[-1]) // 4)
    rows, width = expected_shape(per_micro, sequence_tokens(exp), exp.seq_len)
    assert rows * width >= per_micro * 164 and rows < per_micro and width <= exp.seq_len


def test_a_run_refines_the_expected_response_length():
    exp = _exp({})
    assert with_measured_lengths(exp, [10.0, 30.0]).packing.expected_response_len == 20.0
    assert with_measured_lengths(exp, []) is exp
    chosen = _exp({"expected_response_len": 8})
    assert with_measured_lengths(chosen, [10.0]).packing.expected_response_len == 8
    assert with_measured_lengths(_exp(), [10.0]).packing is None


def test_a_calibration_prices_a_packed_run_at_its_measured_lengths():
    from estimator.calibrate import RunData
    from plans import example_path, load_plan
    from plans.metrics import MetricsRow

    plan = load_plan(example_path("ppo-tiny-4cpu", "plan"))
    exp = experiment_from_dict({**plan.experiment.model_dump(mode="json"), "packing": {}})
    packed = plan.model_copy(update={"experiment": exp})
    rows = [
        MetricsRow(
            iteration=i,
            iteration_s=1.0,
            realloc_s=0.0,
            peak_memory_mib=1.0,
            calls={},
            response_len=float(n),
        )  # fmt: skip
        for i, n in enumerate((4, 8))
    ]
    assert RunData(packed, rows).experiment.packing.expected_response_len == 6.0
    assert RunData(plan, rows).experiment is plan.experiment  # padded: nothing to refine
