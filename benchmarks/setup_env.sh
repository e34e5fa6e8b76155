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
# OpenICL (benchmarks/bench_selection.py) is installed with --no-deps: it pins transformers==4.28.1,
# tokenizers==0.13.3 and faiss-gpu. What its imports need is installed here, pinned to the versions
# that resolve next to alibi-detect (numpy<2, so pyarrow<21 and datasets<5; transformers<5;
# dill<0.4).
# Nothing is downloaded from the Hugging Face Hub: the benchmark injects the embeddings and
# replaces nltk's word_tokenize (whose punkt data would need a download).
"${pip[@]}" transformers==4.57.6 dill==0.3.8 huggingface_hub==0.36.2 pyarrow==20.0.0 \
    datasets==4.0.0 fsspec==2025.3.0 faiss-cpu==1.15.1 rank-bm25==0.2.2 nltk==3.10.4 \
    accelerate==1.15.0 evaluate==0.4.6 sentence-transformers==5.7.0 openai==3.54.0
"${pip[@]}" --no-deps openicl==0.1.8
"${pip[@]}" -e "$root"
# OpenICL's own pins are knowingly unmet (see above); anything else is an error.
if ! report="$("$env/bin/python" -m pip check)"; then
    other="$(grep -v '^openicl ' <<<"$report" || true)"
    if [[ -n "$other" ]]; then
        echo "$other" >&2
        exit 1
    fi
fi
echo "benchmark env ready: $env/bin/python benchmarks/bench_mmd_test.py"
echo "                     $env/bin/python benchmarks/bench_selection.py"
