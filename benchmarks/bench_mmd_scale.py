"""Large-sample MMD: time and peak memory of the tiled estimators (issue: n = m = 50,000, d = 384).

Run (from the repository root, package installed)::

    python benchmarks/bench_mmd_scale.py                 # n = m = 50,000, d = 384, float32
    python benchmarks/bench_mmd_scale.py --n 10000 20000 --dim 384

Prints a Markdown table: n, estimator, seconds, peak resident memory of the process (GB), the
memory a dense pooled Gram matrix would need, and the estimate. Each size runs in a fresh
subprocess so that peak memory is per run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time, torch, icldistill as ic
n, d, est = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
g = torch.Generator().manual_seed(0)
x = torch.randn(n, d, generator=g)
y = torch.randn(n, d, generator=g) + 0.01
t0 = time.perf_counter()
h = ic.median_bandwidth(x, y)
t1 = time.perf_counter()
v = ic.mmd(x, y, estimator=est, bandwidth=h)
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB (Linux)
print(json.dumps({"n": n, "dim": d, "estimator": est, "bandwidth_s": t1 - t0,
                  "mmd_s": t2 - t1, "peak_rss_gb": rss, "mmd2": v, "bandwidth": h,
                  "threads": torch.get_num_threads()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[50_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--estimators", nargs="+", default=["unbiased", "linear"])
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    rows = []
    print("| n = m | d | estimator | median heuristic (s) | MMD (s) | peak RSS (GB) "
          "| dense pooled Gram would need (GB) | MMD^2 |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.n:
        for est in args.estimators:
            out = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(args.dim), est],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            dense = (2 * n) ** 2 * 4 / 1e9
            print(f"| {n:,} | {args.dim} | {est} | {r['bandwidth_s']:.1f} | {r['mmd_s']:.1f} | "
                  f"{r['peak_rss_gb']:.2f} | {dense:.0f} | {r['mmd2']:.3e} |", flush=True)
    print(f"\nthreads: {rows[0]['threads']}; float32 inputs; tiles of <= 2^24 Gram entries.")
    if args.json:
        from icldistill.artifacts.store import write_text

        write_text(args.json, json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
