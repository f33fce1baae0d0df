#!/usr/bin/env bash
# rlhf-run on several nodes under SLURM: one torchrun per node, rendezvous at the first node.
#
#   sbatch --nodes 2 scripts/slurm_rlhf_run.sh plan.json /shared/runs/p [rlhf-run options...]
#
# The plan's cluster must match the allocation: cluster.nodes = --nodes and
# cluster.gpus_per_node = the GPUs per node (GPUS_PER_NODE, default: the plan's). The run
# folder must be on a filesystem every node sees. Ports PORT and PORT + 1 on the first node
# must be reachable from the others (PORT: torchrun's rendezvous; PORT + 1: the run's store).
#SBATCH --job-name=rlhf-run
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
plan=${1:?usage: slurm_rlhf_run.sh PLAN OUT [rlhf-run options]}
out=${2:?usage: slurm_rlhf_run.sh PLAN OUT [rlhf-run options]}
shift 2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# sbatch runs a copy of this script; SLURM_SUBMIT_DIR is where it was submitted from.
[ -f "$root/pyproject.toml" ] || root="${SLURM_SUBMIT_DIR:-$PWD}"
python="$root/.venv/bin/python"
gpus=${GPUS_PER_NODE:-$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['cluster']['gpus_per_node'])" "$plan")}
nodes=${SLURM_NNODES:?run under sbatch or salloc}
addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${PORT:-$((20000 + SLURM_JOB_ID % 20000))}
extra=$(printf '%q ' "$@")  # the remaining rlhf-run options, quoted for the inner shell
echo "rlhf-run: $nodes nodes x $gpus workers, rendezvous at $addr:$port -> $out" >&2
# One task per node; each starts that node's workers. SLURM_NODEID is the node's rank.
srun --ntasks="$nodes" --ntasks-per-node=1 bash -c "
    cd '$root' && exec '$python' -m torch.distributed.run \
        --nnodes $nodes --node-rank \$SLURM_NODEID --nproc-per-node $gpus \
        --master-addr $addr --master-port $port \
        -m cli.run_app '$plan' --out '$out' $extra"
