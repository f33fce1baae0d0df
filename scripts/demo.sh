#!/usr/bin/env bash
# The main job on a built-in default, on 4 CPU workers: train a reward model on the built-in
# task's tree-structured preference sets (rm-tiny), then plan and run PPO (ppo-tiny) with that
# reward model as its reward role, and show the reward curve. Creates ./.venv on first use.
# Output goes to runs/demo/.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$root"
out=runs/demo
rm -rf "$out"
mkdir -p "$out"
profile=estimator/profiles/cpu-epyc-2core-1thread_4workers.json
plan() { rlhf-plan search "$1" --nodes 1 --gpus-per-node 4 --device cpu --seed 0 --profile "$profile" --out "$2"; }

echo "== 1/2 reward model: plan rm-tiny for 1 node x 4 CPU workers, run it"
plan rm-tiny "$out/rm-plan.json"
rlhf-run "$out/rm-plan.json" --iterations "${DEMO_RM_ITERATIONS:-80}" --out "$out/rm"

echo "== 2/2 PPO with that reward model: plan ppo-tiny for 1 node x 4 CPU workers, run it"
# ppo-tiny scores with a rule; here the trained reward model replaces it.
python - "$out" <<'PY'
import sys, tomllib, pathlib
from plans import example_path
out = pathlib.Path(sys.argv[1])
text = example_path("ppo-tiny", "experiment").read_text()
doc = tomllib.loads(text)
assert doc.pop("reward_function") == "builtin:digits"
lines = [l for l in text.splitlines() if not l.startswith("reward_function")]
text = "\n".join(lines).replace('name = "ppo-tiny"', 'name = "ppo-tiny-rm"')
text = text.replace('[roles.reward]\nmodel = "tiny"', '[roles.reward]\nmodel = "rm/final/reward"')
assert 'rm/final/reward' in text
(out / "ppo-tiny-rm.toml").write_text(text + "\n")
PY
plan "$out/ppo-tiny-rm.toml" "$out/plan.json"
exec rlhf-run "$out/plan.json" --iterations "${DEMO_ITERATIONS:-40}" --out "$out/run"
