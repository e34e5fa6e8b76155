"""Bootstrap intervals of accuracy and macro-F1: per-resample loop vs vectorised (issue 16.7).

    python benchmarks/bench_stats.py            # prints a table, writes results/stats_2cpu.md

Both paths draw the same resamples (same seed) and give identical intervals; the loop is
``bootstrap_ci`` with a generic metric callable (one Python call per resample, as before), the
vectorised path is ``classification_metrics`` (:func:`icldistill.evaluation.bootstrap_values`).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from icldistill.evaluation.scoring import accuracy, bootstrap_ci, classification_metrics, macro_f1
from icldistill.reporting.reports import write_text

HERE = Path(__file__).resolve().parent


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "stats_2cpu.md"))
    args = ap.parse_args(argv)
    rows = []
    for n, n_lab in ((200, 2), (200, 52), (300, 20), (1000, 8)):
        rng = np.random.default_rng(0)
        labs = [f"l{i}" for i in range(n_lab)]
        t = np.array(rng.choice(labs, n), dtype=object)
        p = np.where(rng.random(n) < 0.6, t, rng.choice(labs, n)).astype(object)

        def loop(t=t, p=p, labs=labs):
            a = bootstrap_ci(t, p, lambda x, y: accuracy(x, y), n_boot=1000, seed=0)
            f = bootstrap_ci(t, p, lambda x, y: macro_f1(x, y, labs), n_boot=1000, seed=0)
            return a, f

        def vec(t=t, p=p, labs=labs):
            m = classification_metrics(t, p, labels=labs, n_boot=1000, seed=0)
            return m.accuracy, m.macro_f1

        same = loop() == vec()
        tl, tv = _best(loop, args.repeats), _best(vec, args.repeats)
        rows.append(f"| {n} | {n_lab} | {1000 * tl:.1f} | {1000 * tv:.2f} | {tl / tv:.0f}x | "
                    f"{'yes' if same else 'NO'} |")
    load = os.getloadavg()[0]
    text = "\n".join([
        "# Bootstrap CIs of accuracy + macro-F1 (1000 resamples): loop vs vectorised", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU threads, numpy {np.__version__}, "
        f"torch {torch.__version__}; load average {load:.1f}; best of {args.repeats}.", "",
        "| items | labels | loop (ms) | vectorised (ms) | speed-up | identical intervals |",
        "|---:|---:|---:|---:|---:|---|", *rows, "",
        "Command: `python benchmarks/bench_stats.py`", ""])
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
