#!/usr/bin/env bash
# The CUDA checks (tests/test_device.py, benchmarks/results/device_h200.md) on a GPU machine
# that has PyTorch but cannot reach PyPI. Two steps:
#
#   bash benchmarks/device_checks.sh wheels   # here, with PyPI: this machine's transformers and
#                                             # what it needs beyond a stock PyTorch image, as
#                                             # wheels in .whl/ (add .whl/ to .git/info/exclude)
#   bash benchmarks/device_checks.sh run      # there, from the repository root with .whl/
#                                             # beside it: install them into /tmp/site, run the
#                                             # CUDA tests; the log goes to $OUT (or .) too
#
# The GPU machine's own torch is used (its CUDA build), icldistill from this checkout
# (PYTHONPATH=src). The registry models and MiniLM are not needed: the tests build tiny models.
{
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step=${1:?usage: device_checks.sh wheels | run}
python=${PYTHON:-python3}

if [[ "$step" == wheels ]]; then
    mkdir -p .whl
    reqs=()
    for name in transformers huggingface_hub httpx2 httpcore2 truststore click; do
        version=$("$python" -c "import importlib.metadata as m; print(m.version('$name'))")
        reqs+=("$name==$version")
    done
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${reqs[@]}"
    ls -l .whl
    exit 0
fi
if [[ "$step" != run ]]; then
    echo "usage: device_checks.sh wheels | run" >&2
    exit 2
fi
out=${OUT:-.}
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
"$python" -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, \
transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
set -o pipefail
"$python" -m pytest -q -p no:cacheprovider -rfs tests/test_device.py tests/test_loading_half.py \
    2>&1 | grep -v "^SKIPPED.*needs a CUDA" | tee "$out/device-tests.log"
exit 0
}
