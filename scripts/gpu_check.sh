#!/usr/bin/env bash
# One command on a machine with at least one GPU: tests/gpu, a measured profile of the GPU,
# GRPO and PPO planned and run for a random Qwen2.5-0.5B-shaped model on 1 GPU and (where
# there are more) on all of them, and the figures: train-call MFU, decode tokens/s and its
# share of the memory-bandwidth limit, per-call estimate against measured, peak memory
# against plan memory, bf16 against fp32 loss over a few steps.
#
#   bash scripts/gpu_check.sh [OUT]        # default OUT: runs/gpu-check
#
# Environment: ITERATIONS (default 6), MODEL (default qwen2.5-0.5b), BATCH (prompts per
# iteration, default 64), LENGTH (prompt and response tokens, default 128), QUICK=0 for the
# full profile grid. Everything it prints is also in OUT/figures.txt.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$root"
out=${1:-runs/gpu-check}
iterations=${ITERATIONS:-6}
model=${MODEL:-qwen2.5-0.5b}
quick=$([ "${QUICK:-1}" = 1 ] && echo --quick || true)
mkdir -p "$out"
exec > >(tee "$out/figures.txt") 2>&1

gpus=$(python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$gpus" -lt 1 ]; then
    echo "gpu_check: torch sees no CUDA device here; this check needs at least one GPU" >&2
    exit 1
fi
device=$(python -c "
import torch
from plans.devices import device_kind
p = torch.cuda.get_device_properties(0)
print(device_kind(p.name, p.total_memory / 2**30) or '')")
if [ -z "$device" ]; then
    echo "gpu_check: $(python -c 'import torch; print(torch.cuda.get_device_name())') is not in the device table (plans/cluster.py DEVICES); add its row first" >&2
    exit 1
fi
echo "== $gpus x $device ($(python -c 'import torch; print(torch.cuda.get_device_name(), torch.__version__)'))"

echo "== tests/gpu"
failed=""
python -m pytest -q -n 0 -m gpu tests/gpu || failed="tests/gpu"  # the figures still follow

echo "== profile"
python -m cli.plan_app profile --device "$device" $quick --out "$out/profile-1.json"
profile="$out/profile-1.json"
if [ "$gpus" -gt 1 ]; then  # NCCL collectives over every GPU, into the kernel profile
    python -m torch.distributed.run --nproc-per-node "$gpus" -m cli.plan_app profile \
        --device "$device" $quick --profile "$profile" --out "$out/profile-$gpus.json"
fi

echo "== bf16 against fp32"
python benchmarks/gpu_check.py precision --model "$model" --device cuda
echo "== decode on one GPU"
python benchmarks/gpu_check.py decode --model "$model" --device cuda

python benchmarks/gpu_check.py experiments "$out/experiments" --model "$model" \
    --batch "${BATCH:-64}" --length "${LENGTH:-128}"
counts=1
[ "$gpus" -gt 1 ] && counts="1 $gpus"
for n in $counts; do
    prof="$out/profile-$n.json"
    for alg in grpo ppo; do
        plan="$out/$alg-$n.plan.json"
        echo "== $alg on $n GPU(s)"
        python -m cli.plan_app search "$out/experiments/$alg-gpu-check.json" --nodes 1 \
            --gpus-per-node "$n" --device "$device" --profile "$prof" --time-limit 60 --out "$plan"
        python -m cli.run_app "$plan" --iterations "$iterations" --out "$out/$alg-$n" \
            --overwrite --checkpoint-every 0
        python benchmarks/gpu_check.py report "$out/$alg-$n"
    done
done
if [ -n "$failed" ]; then
    echo "gpu_check: $failed failed (above); figures in $out/figures.txt" >&2
    exit 1
fi
echo "gpu_check: done; figures in $out/figures.txt"
