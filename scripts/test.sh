#!/usr/bin/env bash
# Run the test suite (and ruff) in ./.venv, creating it on first use.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$root"
ruff check .
ruff format --check .
exec python -m pytest -n 2 -q "$@"
