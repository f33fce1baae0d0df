"""Regenerate the hand-written example plans shipped in plans/examples/ (run after a contract change).

.venv/bin/python scripts/make_example_plans.py
"""

from plans import (
    Allocation,
    ClusterSpec,
    DeviceMesh,
    ParallelStrategy,
    Plan,
    Provenance,
    load_experiment,
)
from plans.io import example_path, save_plan


def alloc(
    node_start=0, n_nodes=1, gpu_start=0, n_gpus=1, dp=1, tp=1, pp=1, mb=1, zero1=False
) -> Allocation:
    return Allocation(
        mesh=DeviceMesh(node_start=node_start, n_nodes=n_nodes, gpu_start=gpu_start, n_gpus=n_gpus),
        strategy=ParallelStrategy(dp=dp, tp=tp, pp=pp, micro_batches=mb, zero1=zero1),
    )


def write(name: str, experiment: str, cluster: dict, allocations: dict[str, Allocation]) -> None:
    plan = Plan(
        cluster=ClusterSpec(**cluster),
        experiment=load_experiment(experiment),
        allocations=allocations,
        provenance=Provenance(method="manual"),
    )
    save_plan(plan, example_path(name, "plan"))
    print("wrote", example_path(name, "plan"))


if __name__ == "__main__":
    # Four CPU workers: generation on devices 0-1 while ref/reward/critic share 2-3; the actor
    # trains on all four in a different layout, so it is reallocated every iteration.
    write(
        "ppo-tiny-4cpu",
        "ppo-tiny",
        dict(nodes=1, gpus_per_node=4, device="cpu"),
        {
            "actor_gen": alloc(n_gpus=2, dp=2),
            "ref_inf": alloc(gpu_start=2, n_gpus=2, dp=2),
            "rew_inf": alloc(gpu_start=2, n_gpus=2, tp=2),
            "critic_inf": alloc(gpu_start=2, n_gpus=2, dp=2),
            "actor_train": alloc(n_gpus=4, dp=2, tp=2, mb=2),
            "critic_train": alloc(gpu_start=2, n_gpus=2, dp=2),
        },
    )
    write(
        "ppo-llama2-7b-8xh100",
        "ppo-llama2-7b",
        dict(nodes=1, gpus_per_node=8, device="h100"),
        {
            # Generation and the critic's scoring in the train layouts (no copy next to the
            # homes, whose fp32 gradients and optimizer states stay resident); the frozen
            # models sharded tp4 on half the node each.
            "actor_gen": alloc(n_gpus=8, dp=4, tp=2),
            "ref_inf": alloc(n_gpus=4, tp=4, mb=4),
            "rew_inf": alloc(gpu_start=4, n_gpus=4, tp=4, mb=4),
            "critic_inf": alloc(n_gpus=8, dp=4, tp=2, mb=4),
            "actor_train": alloc(n_gpus=8, dp=4, tp=2, mb=4, zero1=True),
            "critic_train": alloc(n_gpus=8, dp=4, tp=2, mb=4, zero1=True),
        },
    )
    whole = dict(n_nodes=16, n_gpus=8)
    write(
        "ppo-llama2-70b-128xh100",
        "ppo-llama2-70b",
        dict(nodes=16, gpus_per_node=8, device="h100"),
        {
            "actor_gen": alloc(**whole, dp=16, tp=8),
            "ref_inf": alloc(n_nodes=8, n_gpus=8, dp=8, tp=8, mb=4),
            "rew_inf": alloc(node_start=8, n_nodes=8, n_gpus=8, dp=8, tp=8, mb=4),
            # The critic scores in its training layout: no second copy next to its home.
            "critic_inf": alloc(**whole, dp=4, tp=8, pp=4, mb=8),
            "actor_train": alloc(**whole, dp=4, tp=8, pp=4, mb=16, zero1=True),
            "critic_train": alloc(**whole, dp=4, tp=8, pp=4, mb=16, zero1=True),
        },
    )
