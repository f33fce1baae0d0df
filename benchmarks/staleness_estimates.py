"""Estimated iteration time of the best plan at staleness k = 0, 1 and 2 (estimates only).

    .venv/bin/python -m benchmarks.staleness_estimates            # every shipped PPO/GRPO experiment
    .venv/bin/python -m benchmarks.staleness_estimates --quick    # the tiny ones only

Each shipped PPO or GRPO experiment gets `[async] max_staleness = 2` and is searched three
times on its cluster: the synchronous search (planner.search.search with the bound at 0), then
a search at exactly k = 1 and at exactly k = 2 (planner.search.search_at), both also started
from the synchronous plan. Every figure is the simulator's estimate (analytic profiles: the
device's datasheet figures), not a measured run. The last column is the lower bound on any
plan's iteration time at k = 2 (planner.bounds: the calls' device-seconds spread over the
cluster, or the actor's cycle over k + 1 iterations): how much room any k leaves.
"""

from __future__ import annotations

import argparse
import math
import time

from estimator.cost import CostModel
from planner.bounds import lower_bounds
from planner.candidates import candidates
from planner.context import SearchContext
from planner.search import search, search_at
from plans import ClusterSpec, ExperimentSpec, experiment_from_dict, load_experiment
from plans.io import example_path

CPU4 = ClusterSpec(nodes=1, gpus_per_node=4, device="cpu")
H100x8 = ClusterSpec(nodes=1, gpus_per_node=8, device="h100")
H100x128 = ClusterSpec(nodes=16, gpus_per_node=8, device="h100")

SETTINGS = [  # (experiment, cluster, tiny)
    ("ppo-tiny", CPU4, True),
    ("grpo-tiny", CPU4, True),
    ("grpo-math-tiny", CPU4, True),
    ("ppo-llama2-7b", H100x8, False),
    ("grpo-llama2-7b", H100x8, False),
    ("ppo-llama2-70b", H100x128, False),
]


def allowing(name: str, bound: int) -> ExperimentSpec:
    doc = load_experiment(example_path(name, "experiment")).model_dump(mode="json")
    return experiment_from_dict({**doc, "async": {"max_staleness": bound}})


def fmt(t: float, base: float) -> str:
    if not math.isfinite(t):
        return "does not fit"
    return f"{t:.3f} s ({base / t:.2f}x)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny experiments only")
    ap.add_argument("--time-limit", type=float, default=20.0, help="seconds per search")
    ap.add_argument("--steps", type=int, default=4000, help="MCMC steps per chain")
    args = ap.parse_args()
    print("estimates (analytic profiles), best plan found at each k; x = speed over k = 0")
    print(
        f"{'experiment':<16} {'cluster':<12} {'k=0':>10} {'k=1':>20} {'k=2':>20} "
        f"{'search s':>9} {'bound k=2':>10}"
    )
    for name, cluster, tiny in SETTINGS:
        if args.quick and not tiny:
            continue
        t0 = time.monotonic()
        common = dict(time_limit=args.time_limit, seed=0, steps=args.steps)
        sync = search(allowing(name, 0), cluster, **common)
        exp = allowing(name, 2)
        at = [search_at(exp, cluster, k, start=sync.allocations, **common)[0] for k in (1, 2)]
        ctx = SearchContext(exp, cluster, CostModel(cluster, exp))
        bound = lower_bounds(exp, cluster.world_size, candidates(ctx), 2).lower_s
        print(
            f"{name:<16} {cluster.label():<12} {sync.cost:>8.3f} s "
            f"{fmt(at[0], sync.cost):>20} {fmt(at[1], sync.cost):>20} "
            f"{time.monotonic() - t0:>9.0f} {bound:>8.3f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
