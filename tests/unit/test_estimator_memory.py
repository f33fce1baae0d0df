"""Memory of the cost model against hand calculations for the 7B and 70B presets."""

from __future__ import annotations

import pytest

from estimator import CostModel, estimate_allocations, estimate_plan, plan_report
from estimator.memory import shared_weight_bytes
from plans import (
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    PlanError,
    example_path,
    load_plan,
    preset,
)
from plans.io import experiment_from_dict

GIB = 2**30
P7 = 6_738_415_616  # llama2-7b parameters (Hugging Face count)
P70 = 68_976_648_192  # llama2-70b


def exp(model: str, batch: int = 64, dtype: str = "bfloat16"):
    return experiment_from_dict(
        {
            "algorithm": "ppo",
            "roles": {r: model for r in ("actor", "critic", "ref", "reward")},
            "batch_size": batch,
            "prompt_len": 256,
            "gen_len": 256,
            "dtype": dtype,
        }
    )


def alloc(n_gpus: int, dp=1, tp=1, pp=1, m=1, zero1=False, n_nodes=1) -> Allocation:
    return Allocation(
        mesh=DeviceMesh(n_nodes=n_nodes, n_gpus=n_gpus),
        strategy=ParallelStrategy(dp=dp, tp=tp, pp=pp, micro_batches=m, zero1=zero1),
    )


def test_7b_weights_grads_adam_on_one_device():
    cm = CostModel(ClusterSpec(nodes=1, gpus_per_node=8, device="h100"), exp("llama2-7b"))
    mem = cm.call_cost("actor_train", alloc(1)).memory
    assert mem.weights == 2 * P7  # bf16
    assert mem.grads == 4 * P7  # accumulated and reduced in fp32
    assert mem.optimizer == 12 * P7  # fp32 master + two fp32 moments
    assert mem.resident == 18 * P7  # all of it outlives the call (the trained role's home)
    # ZeRO-1 over dp=8 divides only the optimizer part.
    z = cm.call_cost("actor_train", alloc(8, dp=8, zero1=True)).memory
    assert z.weights == 2 * P7 and z.grads == 4 * P7
    assert z.optimizer == pytest.approx(12 * P7 / 8)
    # Weights already in fp32: no separate master copy.
    cm32 = CostModel(ClusterSpec(device="h100"), exp("llama2-7b", dtype="float32"))
    m32 = cm32.call_cost("actor_train", alloc(1)).memory
    assert m32.weights == 4 * P7 and m32.optimizer == 8 * P7


def test_70b_shards_with_tp8_and_pp():
    cm = CostModel(ClusterSpec(nodes=2, gpus_per_node=8, device="h100"), exp("llama2-70b"))
    h, vocab, layers = 8192, 32000, 80
    matmul = 2 * h * h + 2 * h * 1024 + 3 * h * 28672  # q,o + k,v (8 kv heads) + MLP
    assert matmul + 2 * h == (P70 - 2 * vocab * h - h) // layers
    # tp=8: matmuls, embedding and LM head split 8 ways; RMSNorm weights replicated.
    per_rank = 2 * vocab * h / 8 + layers * (matmul / 8 + 2 * h) + h
    mem = cm.call_cost("ref_inf", alloc(8, tp=8)).memory
    assert mem.weights == pytest.approx(2 * per_rank)
    assert mem.grads == 0 and mem.optimizer == 0
    # pp=2 on top: 40 layers per stage, the embedding on the first, the final norm and the
    # LM head on the last (the heavier one, by the norm).
    last = 40 * (matmul / 8 + 2 * h) + h + vocab * h / 8
    train = cm.call_cost("actor_train", alloc(8, n_nodes=2, tp=8, pp=2)).memory
    assert train.weights == pytest.approx(2 * last, rel=1e-12)
    assert train.optimizer == pytest.approx(12 * last, rel=1e-12)


def test_kv_cache_of_generation():
    cm = CostModel(ClusterSpec(device="h100"), exp("llama2-7b", batch=64))
    mem = cm.call_cost("actor_gen", alloc(2, dp=2)).memory
    # 2 (k and v) x 32 layers x 32 sequences per dp rank x 512 positions x 4096 x 2 bytes
    assert mem.kv_cache == 2 * 32 * 32 * 512 * 4096 * 2


def _70b_actor_train_on_one_gpu():
    plan = load_plan(example_path("ppo-llama2-70b-128xh100", "plan"))
    doc = plan.model_dump(mode="json")
    doc["allocations"]["actor_train"] = alloc(1).model_dump(mode="json")
    return type(plan).model_validate(doc)


def test_70b_actor_training_on_one_80gb_gpu_is_infeasible():
    plan = _70b_actor_train_on_one_gpu()
    cm = CostModel(plan.cluster, plan.experiment)
    fits, reason = cm.feasible("actor_train", plan.allocations["actor_train"])
    assert not fits
    assert reason.startswith("actor_train: needs") and "GiB" in reason and "80.0 GiB" in reason
    t, details = estimate_allocations(cm, plan.allocations)
    assert t == float("inf") and not details.feasible
    assert details.reason.startswith("actor_train:")
    report = plan_report(plan)
    assert not report.feasible and report.iteration_time_s is None
    assert "actor_train" in [c.name for c in report.calls if not c.feasible]
    with pytest.raises(PlanError, match="actor_train: needs"):
        estimate_plan(plan)


def test_shipped_plans_fit():
    for name in ("ppo-llama2-7b-8xh100", "ppo-llama2-70b-128xh100", "ppo-tiny-4cpu"):
        plan = load_plan(example_path(name, "plan"))
        est = estimate_plan(plan)
        assert est.iteration_time_s > 0
        limit = plan.cluster.memory_gib
        assert all(0 < c.peak_memory_gib <= limit for c in est.calls.values())


def test_colocated_models_add_up():
    """Two models on the same devices count both; on disjoint devices each only its own."""
    cl = ClusterSpec(nodes=1, gpus_per_node=8, device="h100")
    cm = CostModel(cl, exp("llama2-7b"))
    every = alloc(8, dp=8)
    half = [
        Allocation(mesh=DeviceMesh(gpu_start=g, n_gpus=4), strategy=ParallelStrategy(dp=4))
        for g in (0, 4)
    ]
    base = {name: every for name in cm.mfcs}
    train = ParallelStrategy(dp=8, micro_batches=8, zero1=True)
    base["actor_train"] = base["critic_train"] = Allocation(mesh=every.mesh, strategy=train)
    _, together = estimate_allocations(cm, {**base, "ref_inf": every, "rew_inf": every})
    _, apart = estimate_allocations(cm, {**base, "ref_inf": half[0], "rew_inf": half[1]})
    # Every model is on every device in the first plan; ref and reward share them in the second.
    assert together.peak_memory["ref_inf"] > apart.peak_memory["ref_inf"]
    # The difference is the reward model's weights (a value head: no LM head, one more
    # hidden-size row), net of ref_inf's own activations (dp=8 halves the sequences of dp=4).
    reward = P7 - 32000 * 4096 + 4096
    act = cm.call_cost("ref_inf", every).memory.transient
    act_half = cm.call_cost("ref_inf", half[0]).memory.transient
    diff = together.peak_memory["ref_inf"] - apart.peak_memory["ref_inf"]
    assert diff == pytest.approx(2 * reward + act - act_half, rel=1e-9)


def test_a_copy_in_another_layout_stays_next_to_the_home():
    """rlhf-run keeps a role's home shards while its generation copy exists, and keeps the
    copy's memory across the train step for the next copy: the train call's devices hold
    both, so the plan's memory counts both -- less what the copy shares with the home. Here
    the home is the whole model (dp8) and the copy a tp2 half: its rows of q, k, v, gate, up,
    the embedding and the head are views into the home, its norms are the home's; only its
    o/down column blocks are memory of its own."""
    cl = ClusterSpec(nodes=1, gpus_per_node=8, device="h100")
    cm = CostModel(cl, exp("llama2-7b"))
    train = alloc(8, dp=8, m=8, zero1=True)
    base = {name: train for name in cm.mfcs}
    gen = alloc(8, dp=4, tp=2)
    _, same = estimate_allocations(cm, base)
    _, copied = estimate_allocations(cm, {**base, "actor_gen": gen})
    diff = copied.peak_memory["actor_train"] - same.peak_memory["actor_train"]
    m = cm.experiment.model("actor")
    o_down = m.hidden_size * (m.num_attention_heads * m.head_dim + m.intermediate_size)
    assert diff == pytest.approx(m.num_hidden_layers * o_down / 2 * 2, rel=1e-9)  # bf16
    assert diff < cm.call_cost("actor_gen", gen).memory.weights / 2


def test_a_copy_shares_with_the_home_what_rlhf_run_shares():
    """estimator.memory.shared_weight_bytes, by hand for the small model in fp32."""
    m, fp32 = preset("small"), 4
    h, layers = m.hidden_size, m.num_hidden_layers
    o_down = h * (m.num_attention_heads * m.head_dim + m.intermediate_size)
    cols = m.block_params() - 2 * h - o_down
    head = m.head_params() - h  # untied LM head

    def shared(home, copy):
        return shared_weight_bytes(m, "float32", home, copy, 4)

    # The same slices on device 0: the copy is the home's tensors.
    assert shared(alloc(1), alloc(2, dp=2)) == {0: m.num_params() * fp32}
    # t2 -> d2 on the same devices: the home's rows live inside the copy (its o/down don't).
    rows = layers * (cols / 2 + 2 * h) + m.embedding_params() / 2 + h + head / 2
    assert shared(alloc(2, tp=2), alloc(2, dp=2)) == {0: rows * fp32, 1: rows * fp32}
    # ... but not where the role does not host (plans.residency: a ZeRO-1 home, a second view
    # layout): only the replicated norms.
    norms = layers * 2 * h + h
    no_host = shared_weight_bytes(m, "float32", alloc(2, tp=2), alloc(2, dp=2), 4, hosting=False)
    assert no_host == {0: norms * fp32, 1: norms * fp32}
    # pp2 home -> the whole model on the same devices: each device shares its stage.
    per_stage = shared(alloc(2, pp=2), alloc(2, dp=2))
    assert sum(per_stage.values()) == m.num_params() * fp32
    # Disjoint devices share nothing.
    far = Allocation(mesh=DeviceMesh(gpu_start=2, n_gpus=2), strategy=ParallelStrategy(dp=2))
    assert shared(alloc(2, tp=2), far) == {}
