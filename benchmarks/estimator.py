"""Estimator accuracy on this machine: predicted vs measured single-process times.

Feeds a measured CPU profile to the cost model and compares its estimate of a train step
(forward + backward + clip + AdamW, and forward + backward alone) and of a generation call
with the executor's real code (executor.compute.train.train_step, executor.compute.generate.generate) run in
one process with one torch thread, for the presets `tiny` and `small` (~85M parameters).

    .venv/bin/python benchmarks/estimator.py [--profile estimator/profiles/cpu-....json]

Timings take the median of several runs after a warm-up; run it on a quiet machine (the
script prints the load average it saw).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from estimator import CostModel, load_profile  # noqa: E402
from executor.compute.generate import GenerationConfig, generate  # noqa: E402
from executor.compute.train import OptimConfig, make_optimizer, next_token_loss, train_step  # noqa: E402
from executor.model import Transformer  # noqa: E402
from executor.model.weights import random_init_  # noqa: E402
from executor.parallel.context import ParallelContext  # noqa: E402
from plans import Allocation, ClusterSpec, DeviceMesh, ParallelStrategy  # noqa: E402
from plans.io import experiment_from_dict  # noqa: E402

# (model, train batch, train seq, gen batch, prompt, new tokens)
CASES = [("tiny", 8, 128, 8, 32, 64), ("small", 2, 128, 2, 32, 32)]
ONE_DEVICE = Allocation(mesh=DeviceMesh(n_gpus=1), strategy=ParallelStrategy())


def median_time(fn, reps: int) -> tuple[float, float]:
    """Fastest (CPU time, wall time) of `reps` runs after a warm-up, as the profile takes its
    CPU timings: other jobs on the machine only ever add time. With one thread the process's
    CPU time is what the wall time would be on an idle machine."""
    fn()  # warm-up
    cpu, wall = [], []
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return min(cpu), min(wall)


def cost_model(profile, name: str, batch: int, prompt: int, gen: int) -> CostModel:
    exp = experiment_from_dict(
        {
            "algorithm": "ppo",
            "roles": {r: name for r in ("actor", "critic", "ref", "reward")},
            "batch_size": batch,
            "prompt_len": prompt,
            "gen_len": gen,
            "dtype": "float32",
        }
    )
    return CostModel(ClusterSpec(nodes=1, gpus_per_node=1, device="cpu"), exp, profile)


def measure(name: str, tb: int, ts: int, gb: int, gp: int, gn: int, reps: int) -> dict:
    from plans import preset

    spec = preset(name)
    ctx = ParallelContext.single()
    model = random_init_(Transformer(spec), seed=0)
    opt = make_optimizer(model, OptimConfig(lr=1e-5))
    loss_fn, count_fn = next_token_loss(model, ctx)
    ids = torch.randint(0, spec.vocab_size, (tb, ts))

    def fwd_bwd() -> None:  # gradients accumulate, as over micro-batches
        pos = torch.arange(ts).expand(tb, -1)
        loss_fn(model(ids, pos), {"input_ids": ids}).backward()

    def step() -> None:
        train_step(model, ctx, opt, {"input_ids": ids}, loss_fn, count_fn)

    prompts = torch.randint(0, spec.vocab_size, (gb, gp))
    cfg = GenerationConfig(max_new_tokens=gn, greedy=False, seed=1)
    return {
        "fwd_bwd": median_time(fwd_bwd, reps),
        "train_step": median_time(step, reps),
        "generate": median_time(lambda: generate(model, ctx, prompts, None, cfg), reps),
    }


def estimate(profile, name: str, tb: int, ts: int, gb: int, gp: int, gn: int) -> dict:
    train = cost_model(profile, name, tb, ts // 2, ts - ts // 2).call_cost(
        "actor_train", ONE_DEVICE
    )
    gen = cost_model(profile, name, gb, gp, gn).call_cost("actor_gen", ONE_DEVICE)
    return {
        "fwd_bwd": train.breakdown["compute"],
        "train_step": train.time_s,
        "generate": gen.time_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = sorted((ROOT / "estimator" / "profiles").glob("cpu-*.json"))
    ap.add_argument("--profile", type=Path, default=default[-1] if default else None)
    ap.add_argument("--reps", type=int, default=5, help="runs per round (fastest kept)")
    ap.add_argument("--rounds", type=int, default=2, help="passes over all cases")
    args = ap.parse_args()
    if args.profile is None:
        sys.exit("no measured CPU profile: run rlhf-plan profile --device cpu first")
    torch.set_num_threads(1)  # as the profile (and every CPU worker of the executor)
    torch.manual_seed(0)
    profile = load_profile(args.profile)
    print(f"profile {args.profile.name} ({profile.kind}, {profile.threads} thread)")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"clock of the profile: {profile.clock}")
    head = f"{'model':6} {'what':10} {'estimated':>10} {'cpu time':>10} {'error':>7}"
    print(head + f" {'wall':>10} {'error':>7}")
    worst = 0.0
    measured: dict[str, dict] = {}
    for _ in range(args.rounds):  # time-separated passes: keep each figure's fastest
        for case in CASES:
            got = measure(*case, reps=args.reps)
            old = measured.setdefault(case[0], got)
            measured[case[0]] = {k: min(v, old[k]) for k, v in got.items()}
    for case in CASES:
        est = estimate(profile, *case)
        got = measured[case[0]]
        for what in ("fwd_bwd", "train_step", "generate"):
            cpu, wall = got[what]
            err, werr = est[what] / cpu - 1, est[what] / wall - 1
            worst = max(worst, abs(err))
            print(
                f"{case[0]:6} {what:10} {est[what] * 1e3:8.1f}ms {cpu * 1e3:8.1f}ms {err:+7.1%}"
                f" {wall * 1e3:8.1f}ms {werr:+7.1%}"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}; worst error (cpu time) {worst:.1%}")


if __name__ == "__main__":
    main()
