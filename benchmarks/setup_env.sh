#!/usr/bin/env bash
# Create (or update) the benchmark venv at benchmarks/.env with the peer libraries and an
# editable icldistill. Idempotent: re-running reuses the venv and only installs what is missing.
# The peers go into this venv only, never into icldistill's dependencies.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
env="$here/.env"
python="${PYTHON:-python3}"

if [[ ! -x "$env/bin/python" ]]; then
    "$python" -m venv "$env"  # no --system-site-packages: the peers stay isolated
fi
pip=("$env/bin/python" -m pip install --disable-pip-version-check -c "$root/constraints.txt")
# torch first, pinned, so nothing can pull a CUDA build in.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -r "$here/requirements.txt"
"${pip[@]}" -e "$root"
"$env/bin/python" -m pip check
echo "benchmark env ready: $env/bin/python benchmarks/bench_mmd_test.py"
