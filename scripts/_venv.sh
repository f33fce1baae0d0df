# Sourced by the set-up scripts: creates ./.venv on first use and installs the project into it.
# On a machine without CUDA the CPU wheel of torch is installed first, so the open `torch>=2.4`
# requirement in pyproject.toml does not pull a multi-GB CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
    echo "setting up $venv (first use) ..." >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
            "$venv/bin/python" -m pip install --quiet "torch>=2.4" >&2
        else
            "$venv/bin/python" -m pip install --quiet "torch==2.13.0" >&2 || "$venv/bin/python" -m pip install --quiet "torch>=2.4" >&2
        fi
    fi
    "$venv/bin/python" -m pip install -e "$root[test]" >"$venv/install.log" 2>&1 \
        || { cat "$venv/install.log" >&2; echo "installing the project failed (log: $venv/install.log)" >&2; exit 1; }
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
