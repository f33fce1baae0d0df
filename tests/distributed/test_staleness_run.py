"""Bounded staleness in rlhf-run (docs/ASYNC.md): k = 0 changes nothing; with k > 0 and the
generation on its own device, generation of iteration i samples with exactly the weights
after max(0, i - k) train calls (recomputed on one process from the recorded versions),
the runs finish and report their version lags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from executor.compute import forward
from executor.model import Transformer
from executor.parallel.context import ParallelContext
from executor.programs.calls import model_batch
from executor.realloc.model_shards import adopt_shards_
from executor.runtime.launch import launch
from executor.runtime.worker import RunTask, Worker, run
from plans import (
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    Plan,
    example_path,
    experiment_from_dict,
    load_experiment,
    load_plan,
    plan_from_dict,
    save_plan,
)

pytestmark = pytest.mark.distributed

ITERATIONS = 3
TRAIN = DeviceMesh(n_gpus=2, gpu_start=0)
GEN = DeviceMesh(n_gpus=1, gpu_start=2)
SHARED = DeviceMesh(n_gpus=2, gpu_start=2)


def _experiment(name: str, bound: int, **changes):
    doc = load_experiment(name).model_dump(mode="json", by_alias=True)
    doc.update(batch_size=4, evaluation=None, mini_batches=2, **changes)
    if bound:
        doc["async"] = {"max_staleness": bound}
    return experiment_from_dict(doc)


def _plan(exp, k: int, shared: bool = False) -> Plan:
    """Generation alone on device 2, everything else data parallel on devices 0 and 1; or
    (`shared`, 4 devices) the actor's training data parallel on devices 2 and 3, so that the
    generation device holds a home replica too (a view there would be that very memory)."""

    def alloc(m):
        if m.kind == "generate":
            return Allocation(mesh=GEN, strategy=ParallelStrategy())
        if shared and m.kind == "train" and m.role == "actor":
            return Allocation(mesh=SHARED, strategy=ParallelStrategy(dp=2))
        return Allocation(mesh=TRAIN, strategy=ParallelStrategy(dp=2))

    allocs = {m.name: alloc(m) for m in exp.mfcs()}
    cluster = ClusterSpec(nodes=1, gpus_per_node=4 if shared else 3, device="cpu")
    return Plan(cluster=cluster, experiment=exp, allocations=allocs, max_staleness=k)


def _recording_worker(env, task) -> None:
    """rlhf-run's worker, also keeping what the actor's generate calls returned (on the
    generation rank) and the actor's weights before the run and after each train call (on
    its train ranks, which hold them whole: train is dp only)."""
    w = Worker(env, task)
    gens, weights, alive = {}, {}, []
    trains = w.roles["actor"].model is not None
    if trains:
        weights[0] = {k: v.clone() for k, v in w.roles["actor"].shards().items()}
    inner = w.program.run

    def run_call(m, model, ctx, data, call_env):
        out = inner(m, model, ctx, data, call_env)
        if m.name == "actor_gen" and out is not None:
            gens[call_env.iteration] = {k: v.clone() for k, v in out.items()}
        if m.name == "actor_train" and trains:
            shards = w.roles["actor"].shards()
            weights[call_env.iteration + 1] = {k: v.clone() for k, v in shards.items()}
        return out

    w.program.run = run_call
    try:
        for it in range(task.iterations):
            w.iteration(it)
            alive.extend(sv.alive for sv in w.staged.values())
        w.drain()
    finally:
        w.close()
    torch.save(
        {"gens": gens, "weights": weights, "alive": alive}, Path(task.out_dir) / f"rec{env.rank}.pt"
    )


def _run(tmp, tag, plan, fn=run, iterations=ITERATIONS):
    path = tmp / f"{tag}.json"
    save_plan(plan, path)
    out = tmp / tag
    task = RunTask(str(path), iterations, str(out), save_final=True)
    assert launch(fn, task, world=plan.cluster.world_size, timeout_s=120) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows


def _stats(row: dict) -> dict:
    times = ("iteration_s", "realloc_s", "peak_memory_mib", "calls")
    return {k: v for k, v in row.items() if k not in times}


def test_k0_with_a_bound_is_the_synchronous_run(tmp_path):
    """An experiment that allows staleness, run with k = 0, is bitwise the run without it."""
    (a_out, a), (b_out, b) = (
        _run(tmp_path, "plain", _plan(_experiment("grpo-tiny", 0, group_size=2), 0)),
        _run(tmp_path, "bound", _plan(_experiment("grpo-tiny", 2, group_size=2), 0)),
    )
    assert [_stats(r) for r in a] == [_stats(r) for r in b]
    assert [r["version_lag"] for r in a] == [0] * ITERATIONS
    x = (a_out / "final/actor/model.safetensors").read_bytes()
    assert x == (b_out / "final/actor/model.safetensors").read_bytes()


def _logprobs(spec, weights: dict, gen: dict, exp) -> torch.Tensor:
    model = adopt_shards_(Transformer(spec), weights)
    lp = forward.logprobs(model, ParallelContext.single(), model_batch(gen))
    p = exp.prompt_len
    return lp[:, p - 1 : p - 1 + exp.gen_len] * gen["response_mask"]


CASES = {  # experiment, k, shared
    # (PPO's stale runs: test_example_plan_runs_stale_across_tp_and_pp)
    "grpo-k2": ("grpo-tiny", 2, False),
    "grpo-k1-shared": ("grpo-tiny", 1, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generation_samples_with_the_older_version(case, tmp_path):
    name, k, shared = CASES[case]
    n = k + 2  # a lag of k, and a generation of version 1
    exp = _experiment(name, k, **({"group_size": 2} if name == "grpo-tiny" else {}))
    out, rows = _run(tmp_path, "stale", _plan(exp, k, shared), _recording_worker, n)
    _, sync = _run(tmp_path, "sync", _plan(exp, 0, shared), iterations=n)
    assert [r["version_lag"] for r in rows] == [min(i, k) for i in range(n)]
    assert [r["version_lag"] for r in sync] == [0] * n
    for r in rows:
        assert 0 <= r["behav_dropped_frac"] <= 1 and r["behav_weight_mean"] > 0, r
        assert r["actor_loss"] == r["actor_loss"]  # finite
    assert "behav_weight_mean" not in sync[0]
    # Iteration 0 samples version 0 either way: the same rollouts, and the proximal policy
    # is the behaviour policy up to rounding (w = 1, nothing dropped).
    for key in ("reward_mean", "response_len", "kl_mean"):
        assert rows[0][key] == sync[0][key], key
    assert rows[0]["behav_weight_mean"] == pytest.approx(1, abs=1e-5)
    assert rows[0]["behav_dropped_frac"] == 0
    # Iteration 1 samples version 0 under k > 0 but version 1 synchronously.
    assert rows[1]["kl_mean"] != sync[1]["kl_mean"]
    rec = torch.load(out / "rec2.pt")
    weights = torch.load(out / f"rec{3 if shared else 0}.pt")["weights"]
    assert sorted(rec["gens"]) == list(range(n))
    assert sorted(weights) == list(range(n + 1))
    assert max(rec["alive"]) <= k  # staged views held at once on the generation device
    spec = exp.model("actor")
    for it, gen in rec["gens"].items():
        used = max(0, it - k)
        for version in range(n):
            gap = (_logprobs(spec, weights[version], gen, exp) - gen["logprobs"]).abs().max()
            if version == used:  # recomputed from the weights it should have used
                assert gap < 1e-5, (it, version, float(gap))
            else:
                assert gap > 1e-4, (it, version, float(gap))  # another version would show


@pytest.mark.parametrize(("k", "stop"), [(2, 1)])
def test_a_resumed_stale_run_continues_exactly(k, stop, tmp_path):
    """The checkpoint holds the staged older versions: stopped after `stop` iterations and
    resumed, the run ends bitwise where an uninterrupted one does (k = 2, stop = 1: the
    version-0 view generation 1 still reads and the one staged for generation 2)."""
    plan = _plan(_experiment("grpo-tiny", k, group_size=2), k)
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    world, n = plan.cluster.world_size, 4

    def go(out, iterations, **kw):
        task = RunTask(str(path), iterations, str(out), checkpoint_every=stop, **kw)
        assert launch(run, task, world=world, timeout_s=120) == 0

    go(whole, n, save_final=True)
    go(parts, stop)
    go(parts, n, save_final=True, resume=True)
    a, b = (
        [_stats(json.loads(x)) for x in (out / "metrics.jsonl").read_text().splitlines()]
        for out in (whole, parts)
    )
    assert [r["iteration"] for r in b] == list(range(n))
    assert [r["version_lag"] for r in b] == [min(i, k) for i in range(n)]
    assert a == b
    x = (whole / "final/actor/model.safetensors").read_bytes()
    assert x == (parts / "final/actor/model.safetensors").read_bytes()
    # The last checkpoint: the views generation n .. n + k - 1 will read, on the generation
    # rank only, each of its own version (n - k + j).
    last = parts / "checkpoints" / f"iter-{n:06d}"
    gen, train = (torch.load(last / f"rank{r:05d}.pt")["staged"]["actor_gen"] for r in (2, 0))
    assert [g["iterations"] for g in gen] == [[n + j] for j in range(k)]
    assert [g["iterations"] for g in train] == [[n + j] for j in range(k)]
    assert all(g["params"] for g in gen) and not any(g["params"] for g in train)
    if k == 2:  # two different versions
        first, second = gen[0]["params"], gen[1]["params"]
        assert not all(torch.equal(first[t], second[t]) for t in first)


def test_example_plan_runs_stale_across_tp_and_pp(tmp_path):
    """ppo-tiny-4cpu (generation dp 2 on devices 0-1) with the actor's training tp 2 x pp 2
    over all 4 and k = 1: the proximal log-probs are put together from the tp shards and
    pipeline stages of the train layout, so in iteration 0 (version-0 data, version-0 weights) every behaviour
    weight is 1 up to rounding and the loss is the synchronous one's."""
    doc = load_plan(example_path("ppo-tiny-4cpu", "plan")).model_dump(mode="json", by_alias=True)
    doc["experiment"].update(batch_size=8, mini_batches=2)
    doc["experiment"]["async"] = {"max_staleness": 1}
    doc["allocations"]["actor_train"]["strategy"].update(dp=1, tp=2, pp=2)

    def runs(k):
        return _run(tmp_path, f"k{k}", plan_from_dict({**doc, "max_staleness": k}), iterations=2)

    (_, stale), (_, sync) = runs(1), runs(0)
    assert [r["version_lag"] for r in stale] == [0, 1]
    assert stale[0]["behav_weight_mean"] == pytest.approx(1, abs=1e-5)
    assert stale[0]["behav_dropped_frac"] == 0
    for key in ("reward_mean", "response_len", "kl_mean", "critic_loss"):
        assert stale[0][key] == sync[0][key], key
    assert stale[0]["actor_loss"] == pytest.approx(sync[0]["actor_loss"], abs=1e-5)
    assert stale[1]["kl_mean"] != sync[1]["kl_mean"]
