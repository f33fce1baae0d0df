#!/usr/bin/env bash
# The main job on a built-in default: plan the tiny PPO experiment for 4 CPU workers, then run
# it and show the reward curve. Creates ./.venv on first use. Output goes to runs/demo/.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$root"
out=runs/demo
rm -rf "$out"
mkdir -p "$out"
echo "== planning ppo-tiny for 1 node x 4 CPU workers"
rlhf-plan search ppo-tiny --nodes 1 --gpus-per-node 4 --device cpu --seed 0 \
    --profile estimator/profiles/cpu-epyc-2core-1thread.json --out "$out/plan.json"
echo "== running it"
exec rlhf-run "$out/plan.json" --iterations "${DEMO_ITERATIONS:-40}" --out "$out/run"
