#!/usr/bin/env bash
# The tests of the optional tracker extras: installs .[wandb,mlflow] into ./.venv (kept out of
# the default suite: MLflow alone pulls dozens of packages) and runs the tracker tests, which
# the default suite skips without them. .ci/run calls this when RLHF_CI_EXTRAS=1.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$root"
python -m pip install --quiet -e ".[test,wandb,mlflow]" >&2
exec python -m pytest -n 0 -q tests/distributed/test_trackers_eval.py "$@"
