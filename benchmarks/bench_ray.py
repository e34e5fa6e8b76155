"""Evaluation grid on the Ray backend: 1 vs 2 workers on this machine, against the local harness.

One small grid (``--model``, ``--task``, selectors x seeds, k, ``--n-test`` items) is run three
times from scratch in fresh folders: by the local harness in this process, and by
:func:`icldistill.evaluation.distributed.run_ray` with 1 and with 2 workers (one CPU and one torch
thread each, a local Ray instance). Wall time includes each worker's model load; the results
must be identical (same unit keys and accuracies).

    python benchmarks/bench_ray.py
    python benchmarks/bench_ray.py --model qwen2.5-0.5b --n-test 60

Writes ``benchmarks/results/ray_2cpu.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from icldistill.evaluation.distributed import run_ray
from icldistill.evaluation.harness import Harness, unit_grid

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="amazon")
    ap.add_argument("--selectors", default="random,knn,mmd,mmd-query")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--out", default=str(HERE / "results" / "ray_2cpu"))
    args = ap.parse_args()
    import ray

    units = unit_grid(models=[args.model], tasks=[args.task],
                      selectors=args.selectors.split(","), ks=[args.k], seeds=args.seeds,
                      n_test=args.n_test)
    root = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    kwargs = {"batch_size": 8}
    rows, outcomes = [], {}
    torch.set_num_threads(1)
    Harness(root / "warm", progress=False, **kwargs).task(args.task)   # data and MiniLM cached
    t = time.perf_counter()
    outcomes["local"] = Harness(root / "local", progress=False, **kwargs).run(units)
    rows.append({"backend": "local (1 process, 1 thread)", "workers": 1,
                 "seconds": time.perf_counter() - t})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for n in (1, 2):
        t = time.perf_counter()
        outcomes[f"ray{n}"] = run_ray(units, root / f"ray{n}", harness_kwargs=kwargs,
                                      num_workers=n, cpus_per_worker=1, progress=False)
        rows.append({"backend": f"ray, {n} worker(s) x 1 CPU", "workers": n,
                     "seconds": time.perf_counter() - t})
    ray.shutdown()
    ref = {r.key: r.accuracy.value for r in outcomes["local"]}
    same = all({r.key: r.accuracy.value for r in v} == ref for v in outcomes.values())
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_local"] = base / r["seconds"]
    load = os.getloadavg()
    lines = ["# Evaluation grid: local harness vs Ray with 1 and 2 workers\n",
             f"{len(units)} units ({args.model}, {args.task}, selectors {args.selectors}, "
             f"k={args.k}, {args.seeds} seed(s), {args.n_test} test items), each run from "
             f"scratch (model loads included); {platform.machine()}, {os.cpu_count()} CPUs, "
             f"torch {torch.__version__}, ray {ray.__version__}; load average after the run "
             f"{load[0]:.1f}/{load[1]:.1f}. Results identical across the three runs: "
             f"**{'yes' if same else 'NO'}**.\n",
             "Command: `python benchmarks/bench_ray.py`\n",
             "| backend | wall time (s) | speed-up vs local |", "|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['seconds']:.1f} | {r['speedup_vs_local']:.2f}× |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from icldistill.artifacts.store import write_text

    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_text(out.with_suffix(".json"), json.dumps({"rows": rows, "identical": same,
                                                     "units": len(units)}, indent=1))
    print("\n".join(lines))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
