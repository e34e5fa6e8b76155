"""How close MMD selection with Nyström landmarks gets to exact greedy MMD on real tasks.

For every task (MiniLM embeddings of the pool and of the first ``--n-test`` test inputs, as the
few-shot grid uses them) and every k, exact set-level greedy MMD is compared with
``greedy_mmd(..., landmarks=m)`` for several ``m`` and landmark seeds: the ratio of the exact
biased MMD^2 (to the test inputs) of the landmark set to the exact greedy set's, and the
certified row-mean error bound ``eps``.

    python benchmarks/bench_landmarks.py [--tasks amazon,yelp] [--ks 4,8] [--landmarks 32,64,128]
        [--seeds 3] [--markdown PATH]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from icldistill import greedy_mmd
from icldistill.evaluation.harness import Harness

TASKS = ("amazon", "yelp", "imdb", "rt-sentiment", "rt-subjectivity", "r8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--ks", default="4,8")
    ap.add_argument("--landmarks", default="32,64,128")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ms = [int(m) for m in args.landmarks.split(",")]
    h = Harness("/tmp/icldistill-bench-landmarks", progress=False)
    head = "| task | pool | k | exact MMD² | " + " | ".join(
        f"m={m}: ratio mean (max), eps" for m in ms) + " |"
    lines = [head, "|" + "---|" * (4 + len(ms))]
    allr: dict[int, list[float]] = {m: [] for m in ms}
    t0 = time.time()
    for task in args.tasks.split(","):
        t = h.task(task)
        pool = h.embeddings(t, "train", "minilm", "")
        test = h.embeddings(t, "test", "minilm", "")[: args.n_test]
        for k in (int(x) for x in args.ks.split(",")):
            exact = greedy_mmd(pool, test, k)
            cells = []
            for m in ms:
                runs = [greedy_mmd(pool, test, k, landmarks=m, seed=s)
                        for s in range(args.seeds)]
                ratio = [r.mmd2[-1] / exact.mmd2[-1] for r in runs]
                allr[m] += ratio
                eps = np.mean([r.approx_error or 0.0 for r in runs])
                cells.append(f"{np.mean(ratio):.3f} ({np.max(ratio):.3f}), {eps:.3f}")
            lines.append(f"| {task} | {len(pool)} | {k} | {exact.mmd2[-1]:.5f} | "
                         + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    summary = "; ".join(f"m={m}: ratio {min(v):.3f}-{max(v):.3f}, mean {np.mean(v):.3f}"
                        for m, v in allr.items())
    text = "\n".join([
        "MMD² (biased, exact, Gaussian kernel with the selector's median bandwidth) of the "
        f"landmark set / of the exact greedy set; {args.seeds} landmark seeds; first "
        f"{args.n_test} test inputs; MiniLM embeddings.", "", *lines, "",
        f"Over all rows: {summary}. ({time.time() - t0:.0f} s)", ""])
    print(text)
    if args.markdown:
        from icldistill.artifacts.store import write_text

        write_text(args.markdown, f"`python benchmarks/bench_landmarks.py --markdown "
                                  f"{args.markdown}`\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
