#!/usr/bin/env bash
# The main job on a built-in default: plan the tiny PPO experiment for 4 CPU workers, then run it.
# Creates ./.venv on first use. Output goes to runs/demo/.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$root"
out=runs/demo
mkdir -p "$out"
echo "== the PPO dataflow graph of ppo-tiny"
rlhf-plan graph ppo-tiny
echo "== a plan for 4 CPU workers"
if rlhf-plan search ppo-tiny --nodes 1 --gpus-per-node 4 --device cpu --out "$out/plan.json" 2>/dev/null; then
    plan="$out/plan.json"
else
    echo "(the search is not built yet: using the shipped example plan ppo-tiny-4cpu)"
    plan="$(python -c 'from plans import example_path; print(example_path("ppo-tiny-4cpu", "plan"))')"
fi
rlhf-plan validate "$plan"
echo "== running it"
rlhf-run "$plan" --out "$out/run" || echo "(rlhf-run is not built yet)"
