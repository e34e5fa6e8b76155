"""Selection from a million-item pool: the candidate index against exact search.

A pool of ``--n`` 384-d unit vectors (a seeded mixture of 1,000 Gaussian clusters, the shape of
MiniLM sentence embeddings of a large corpus) and ``--queries`` queries from the same mixture;
``k`` demonstrations per query. For each per-query selector (knn, mmd-query, mmr, dpp) with a
faiss index (``index="ivf"``, ``"ivf-sq8"``) the benchmark times ``fit`` (building the index) and
``select``, and records the process's peak memory above the embeddings. Set-level MMD runs with
landmarks (``make_selector("mmd", landmarks=128)``).

Agreement with exact selection is measured on a ``--n-check`` pool (default 100,000), where the
exact selectors still run in reasonable time: recall of the exact selection (the fraction of the
exact ``k`` items the indexed selector also picked) and the MMD² ratio (mean over queries of
``MMD²(S_q, {q})`` of the indexed selection over that of the exact one, under each selector's
reference Gaussian kernel; for set-level mmd the MMD² to all queries).

    python benchmarks/bench_large_pool.py                       # 1M pool, 1,000 queries, k=8
    python benchmarks/bench_large_pool.py --n 200000 --n-check 20000   # quicker

Each configuration runs in its own process (``--one``), so peak memory is per configuration.
Writes ``benchmarks/results/large_pool_2cpu.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
GB = 1 << 30
CONFIGS = [("knn", {"index": "ivf"}), ("knn", {"index": "ivf", "nprobe": 128}),
           ("knn", {"index": "ivf-sq8"}),
           ("mmd-query", {"index": "ivf"}), ("mmd-query", {"index": "ivf-sq8"}),
           ("mmr", {"index": "ivf-sq8"}), ("dpp", {"index": "ivf-sq8"}),
           ("mmd", {"landmarks": 128})]


def _data(n: int, t: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(1000, d)).astype(np.float32)
    pool = np.empty((n, d), dtype=np.float32)
    step = 100_000
    for a in range(0, n, step):                     # in blocks: no float64 copy of the pool
        b = min(n, a + step)
        pool[a:b] = centers[rng.integers(0, 1000, b - a)]
        pool[a:b] += 0.6 * rng.standard_normal((b - a, d), dtype=np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    q = centers[rng.integers(0, 1000, t)] + 0.6 * rng.standard_normal((t, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return pool, q.astype(np.float32)


def _status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> int:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS; elsewhere the
    lifetime peak (which may hide a peak below the data generation's)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return _peak()
    return _status("VmRSS") or _peak()


def _peak() -> int:
    hwm = _status("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _gauss(a: np.ndarray, b: np.ndarray, h2: float) -> np.ndarray:
    """``exp(-|a_i - b_j|² / (2 h²))`` ``[..., n, m]`` by the inner-product expansion."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d2 = ((a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :]
          - 2 * a @ np.swapaxes(b, -1, -2))
    return np.exp(-np.maximum(d2, 0.0) / (2 * h2))


def _mmd2_query(pool: np.ndarray, q: np.ndarray, idx: np.ndarray, h2: float) -> np.ndarray:
    """Biased ``MMD²(S_q, {q})`` under the Gaussian kernel of bandwidth ``h`` per query."""
    s = pool[idx]                                                 # [T, k, d]
    kss = _gauss(s, s, h2).mean((1, 2))
    ksq = _gauss(s, q[:, None, :], h2)[..., 0].mean(1)
    return kss - 2 * ksq + 1.0


def _mmd2_set(pool: np.ndarray, q: np.ndarray, idx: np.ndarray, h2: float) -> float:
    """Biased ``MMD²`` between the chosen set and all queries."""
    s = pool[np.unique(np.asarray(idx).reshape(-1))]
    return float(_gauss(s, s, h2).mean() - 2 * _gauss(s, q, h2).mean() + _gauss(q, q, h2).mean())


def _one(args) -> dict:
    from icldistill.selection import make_selector

    torch.set_num_threads(args.threads)
    from icldistill.selection import CandidateIndex

    name, params = CONFIGS[args.one]
    pool, q = _data(args.n, args.queries, args.dim, args.seed)
    kwargs = dict(params)
    if "nprobe" in kwargs:
        metric = "l2" if name == "mmd-query" else "cosine"
        kwargs["index"] = CandidateIndex(kwargs["index"], metric=metric,
                                         nprobe=kwargs.pop("nprobe"))
    base = _reset_peak()
    t = time.perf_counter()
    sel = make_selector(name, **kwargs).fit(pool)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    res = sel.select(q, args.k)
    t_sel = time.perf_counter() - t
    row = {"selector": name, "params": params, "n": args.n, "queries": args.queries,
           "k": args.k, "fit_seconds": t_fit, "select_seconds": t_sel,
           "peak_above_embeddings_gb": (_peak() - base) / GB,
           "embeddings_gb": pool.nbytes / GB}
    if args.check:
        exact = make_selector(name).fit(pool).select(q, args.k)
        a, b = np.asarray(exact.indices), np.asarray(res.indices)
        h2 = 1.0      # unit vectors: a fixed reference bandwidth for the ratio
        if name == "mmd":
            row["recall"] = len(set(a.ravel()) & set(b.ravel())) / len(set(a.ravel()))
            row["mmd2_ratio"] = _mmd2_set(pool, q, b, h2) / _mmd2_set(pool, q, a, h2)
        else:
            row["recall"] = float(np.mean([len(set(x) & set(y)) / args.k
                                           for x, y in zip(a, b, strict=True)]))
            row["mmd2_ratio"] = float(_mmd2_query(pool, q, b, h2).mean()
                                      / _mmd2_query(pool, q, a, h2).mean())
    return row


def _run_all(args) -> list[dict]:
    rows = []
    for i in range(len(CONFIGS)):
        for n, check in ((args.n, False), (args.n_check, True)):
            cmd = [sys.executable, __file__, "--one", str(i), "--n", str(n), "--queries",
                   str(args.queries), "--k", str(args.k), "--dim", str(args.dim),
                   "--threads", str(args.threads), "--seed", str(args.seed)]
            out = subprocess.run(cmd + (["--check"] if check else []), capture_output=True,
                                 text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _write(rows: list[dict], args) -> None:
    import faiss

    load = os.getloadavg()
    big = [r for r in rows if "recall" not in r]
    chk = {(r["selector"], json.dumps(r["params"])): r for r in rows if "recall" in r}
    lines = [f"# Selection from a {args.n:,}-item pool\n",
             f"{args.dim}-d unit vectors (mixture of 1,000 Gaussian clusters, seed {args.seed}), "
             f"{args.queries:,} queries, k={args.k}; {platform.machine()}, "
             f"{os.cpu_count()} CPUs, torch {torch.__version__} ({args.threads} threads), "
             f"faiss {faiss.__version__}; load average after the run {load[0]:.1f}/"
             f"{load[1]:.1f}. Agreement with exact selection on a {args.n_check:,}-item pool of "
             "the same mixture.\n",
             "Command: `python benchmarks/bench_large_pool.py`\n",
             f"| selector | candidate stage | fit (s) | select (s) | fit + select (s) | peak "
             f"memory above the embeddings (GB) | recall of exact (n={args.n_check:,}) | "
             "MMD² ratio to exact |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in big:
        c = chk.get((r["selector"], json.dumps(r["params"])), {})
        stage = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['selector']} | {stage} | {r['fit_seconds']:.1f} | "
                     f"{r['select_seconds']:.1f} | {r['fit_seconds'] + r['select_seconds']:.1f} "
                     f"| {r['peak_above_embeddings_gb']:.2f} | {c.get('recall', float('nan')):.3f}"
                     f" | {c.get('mmd2_ratio', float('nan')):.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from icldistill.artifacts.store import write_text

    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    write_text(out.with_suffix(".json"), json.dumps(rows, indent=1))
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--n-check", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "large_pool_2cpu"))
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(_one(args)))
        return 0
    _write(_run_all(args), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
