"""Search time and quality: the searched PPO plan against every tuned baseline.

    .venv/bin/python -m benchmarks.search                 # the full table (about 15 minutes)
    .venv/bin/python -m benchmarks.search --quick         # 1 and 4 nodes only
    .venv/bin/python -m benchmarks.search --longer 10     # also re-run 16-node settings 10x longer

Clusters are nodes of 8 H100 with the analytic H100 profile (labeled as such); experiments are
PPO with 512 prompts of 256 tokens and 256 generated tokens, 4 PPO mini-batches, the reference
sized like the actor and the reward model like the critic (as in the ReaLHF paper's settings).

The last columns are a lower bound on any plan's iteration time (planner.bounds: the longest
chain of the calls' fastest candidates that a version edge closes into a cycle, or all calls'
device-seconds spread over the whole cluster, whichever is larger) and the speedup over the
best baseline that bound leaves room for.
"""

from __future__ import annotations

import argparse
import math
import time

from estimator.cost import CostModel
from planner.bounds import lower_bounds
from planner.candidates import candidates
from planner.context import SearchContext
from planner.search import search
from plans import ClusterSpec, ExperimentSpec, PlanError, experiment_from_dict

PAIRS = [
    ("llama2-7b", "llama2-7b"),
    ("llama2-13b", "llama2-7b"),
    ("llama2-70b", "llama2-7b"),
    ("llama2-70b", "llama2-70b"),
]


def experiment(actor: str, critic: str) -> ExperimentSpec:
    return experiment_from_dict(
        {
            "name": f"ppo-{actor}-{critic}",
            "algorithm": "ppo",
            "batch_size": 512,
            "prompt_len": 256,
            "gen_len": 256,
            "mini_batches": 4,
            "roles": {
                "actor": {"model": actor},
                "ref": {"model": actor},
                "critic": {"model": critic},
                "reward": {"model": critic},
            },
        }
    )


def fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2f}"


def bound(exp: ExperimentSpec, cluster: ClusterSpec) -> float:
    """planner.bounds' lower bound on the iteration time of any plan (iterations may overlap)."""
    ctx = SearchContext(exp, cluster, CostModel(cluster, exp))
    return lower_bounds(exp, cluster.world_size, candidates(ctx)).lower_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 and 4 nodes only")
    ap.add_argument("--nodes", type=int, nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=20_000, help="steps per chain")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument(
        "--longer", type=int, default=0, help="also re-run 16-node settings with N x steps"
    )
    ap.add_argument("--actors", nargs="*", default=None, help="only these actor presets")
    args = ap.parse_args()
    nodes_list = args.nodes or ([1, 4] if args.quick else [1, 2, 4, 8, 16])
    print(
        "| actor / critic | nodes | search s | searched s/it | symmetric | separated | megatron "
        "| speedup vs best baseline | lower bound s/it | best baseline / bound |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    speedups = []
    for actor, critic in [p for p in PAIRS if not args.actors or p[0] in args.actors]:
        exp = experiment(actor, critic)
        for nodes in nodes_list:
            cluster = ClusterSpec(nodes=nodes, gpus_per_node=8, device="h100")
            t = time.monotonic()
            try:
                out = search(exp, cluster, seed=0, steps=args.steps, time_limit=args.time_limit)
            except PlanError as e:
                print(
                    f"| {actor} / {critic} | {nodes} | {time.monotonic() - t:.1f} | does not fit ({e.reason[:40]}) | | | | | | |"
                )
                continue
            b = out.baselines
            best = min(b.values())
            sp = best / out.cost if math.isfinite(best) else math.inf
            speedups.append(sp)
            flag = " (time limit)" if out.timed_out else ""
            lb = bound(exp, cluster)
            room = f"{best / lb:.2f}x" if math.isfinite(best) else ""
            print(
                f"| {actor} / {critic} | {nodes} | {out.search_time_s:.1f}{flag} | {out.cost:.2f} | "
                f"{fmt(b['symmetric'])} | {fmt(b['separated'])} | {fmt(b['megatron'])} | "
                f"{'only feasible plan' if not math.isfinite(sp) else f'{sp:.2f}x'} | "
                f"{lb:.2f} | {room} |",
                flush=True,
            )
            if args.longer and nodes == max(nodes_list):
                long = search(
                    exp,
                    cluster,
                    seed=0,
                    steps=args.steps * args.longer,
                    time_limit=args.time_limit * args.longer,
                )
                gain = (out.cost - long.cost) / out.cost
                print(
                    f"|   {args.longer}x longer | {nodes} | {long.search_time_s:.1f} | {long.cost:.2f} | | | | "
                    f"improves {100 * gain:.2f}% | | |",
                    flush=True,
                )
    finite = [s for s in speedups if math.isfinite(s)]
    if finite:
        print(
            f"\nsettings: {len(speedups)}; speedup >= 1.3x on {sum(s >= 1.3 for s in speedups)}; "
            f"never slower: {all(s >= 1 for s in finite)}; geometric mean {math.prod(finite) ** (1 / len(finite)):.2f}x"
        )


if __name__ == "__main__":
    main()
