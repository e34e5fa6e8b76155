"""Benchmark: the MMD permutation test of icldistill against peer libraries.

Run (the peers live only in the benchmark venv, never in icldistill's dependencies)::

    bash benchmarks/setup_env.sh && benchmarks/.env/bin/python benchmarks/bench_mmd_test.py

Options: ``--sizes 1000 5000 --dim 384 --permutations 1000 --peers hyppo torchdrift alibi``,
``--peers-only`` (skip icldistill), ``--budget SECONDS``, ``--repeats N``, ``--json PATH``.

Data: X ~ N(0, I), Y ~ N(0.05 * 1, I), float32, n = m. One Gaussian bandwidth h (median of
the pairwise Euclidean distances of a 2,000-point subsample of the pooled data, computed here
in numpy) is handed to every library, each in its own parameterisation:

=========== ============================================= ===================================
library     kernel as the library writes it               parameter passed
=========== ============================================= ===================================
icldistill  exp(-|x-y|^2 / (2 h^2))                       ``bandwidth=h``
hyppo       sklearn rbf: exp(-gamma |x-y|^2)              ``gamma=1 / (2 h^2)``
torchdrift  GaussianKernel: exp(-|x-y|^2 / (2 l^2))       ``lengthscale=h``
alibi       GaussianRBF: exp(-|x-y|^2 / (2 sigma^2))      ``sigma=[h]``
=========== ============================================= ===================================

Native statistics, and how each is converted to the biased V-statistic MMD_b^2 (mean K_XX +
mean K_YY - 2 mean K_XY, diagonals included) that icldistill reports:

* hyppo (``MMD(bias=True)``): 2 n^2 m^2 / N^4 * dcorr_b, where dcorr_b^2 = (n m / N) MMD_b^2 /
  ||H K H||_F (the biased HSIC with the two-sample label kernel, normalised to a correlation;
  N = n + m, H the centring matrix, K the pooled kernel matrix). Converted with ||H K H||_F
  from the float64 numpy reference. Works in float64 whatever the input dtype.
* torchdrift (``kernel_mmd``): sum K_XX / (n(n-1)) + sum K_YY / (m(m-1)) - 2 mean K_XY with
  the diagonals kept, i.e. MMD_u^2 + 1/(n-1) + 1/(m-1) for a kernel with k(x, x) = 1.
* alibi (``MMDDrift(backend="pytorch")``): the unbiased U-statistic MMD_u^2.
* Unbiased values are moved to MMD_b^2 by adding (MMD_b^2 - MMD_u^2) of the float64 numpy
  reference, a data-only correction (1/n)(1 - mean' K_XX) + (1/m)(1 - mean' K_YY), where
  mean' is the mean off the diagonal.

p-value conventions: icldistill and hyppo (1 + #{T_b >= T}) / (1 + B); alibi #{T_b >= T} / B;
torchdrift #{T_b > T} / B. "agree" compares the converted statistic with icldistill's (with the
numpy reference when icldistill is skipped); icldistill's own row is compared with the reference.

Timing: wall time of the whole test (kernel matrix, observed statistic, B permutations), after
one untimed warm-up call per library (imports, numba JIT). Two pilot runs (B = 5 and 20) fit
time = a + b * B; a library predicted to need more than ``--budget`` seconds for the full B is
not run in full, and its time is that fit, marked "(extrapolated from B=5,20)". hyppo runs its
permutations with ``workers=1``: joblib processes (``workers=2``) were 5x slower on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata

import numpy as np
import torch

PILOTS = (5, 20)
SHIFT = 0.05


@dataclass(frozen=True)
class Reference:
    """Float64 numpy values on the shared kernel, used for conversions and checks."""

    biased: float
    unbiased: float
    centred_frobenius: float  # ||H K H||_F of the pooled kernel matrix
    n: int
    m: int


@dataclass
class Row:
    n: int
    library: str
    seconds: float
    extrapolated_from: list[int] | None
    native_statistic: float
    statistic: float  # converted to biased MMD^2
    p_value: float
    p_value_permutations: int
    rel_diff: float
    compared_with: str


Runner = Callable[[np.ndarray, np.ndarray, float, int, int], tuple[float, float]]


def run_icldistill(
    x: np.ndarray, y: np.ndarray, h: float, b: int, seed: int
) -> tuple[float, float]:
    import icldistill

    res = icldistill.mmd_test(x, y, kernel="gaussian", permutations=b, seed=seed, bandwidth=h)
    return float(res.statistic), float(res.p_value)


def run_hyppo(x: np.ndarray, y: np.ndarray, h: float, b: int, seed: int) -> tuple[float, float]:
    from hyppo.ksample import MMD

    # hyppo 0.5.2: Hsic.test drops random_state and draws its permutations from np.random
    np.random.seed(seed)  # noqa: NPY002
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "reps under 1000" for the pilots
        stat, p = MMD(compute_kernel="gaussian", bias=True, gamma=1.0 / (2.0 * h * h)).test(
            x, y, reps=b, workers=1, auto=False
        )
    return float(stat), float(p)


def run_torchdrift(
    x: np.ndarray, y: np.ndarray, h: float, b: int, seed: int
) -> tuple[float, float]:
    from torchdrift.detectors.mmd import GaussianKernel, kernel_mmd

    torch.manual_seed(seed)
    stat, p = kernel_mmd(
        torch.from_numpy(x), torch.from_numpy(y), n_perm=b, kernel=GaussianKernel(lengthscale=h)
    )
    return float(stat), float(p)


def run_alibi(x: np.ndarray, y: np.ndarray, h: float, b: int, seed: int) -> tuple[float, float]:
    from alibi_detect.cd import MMDDrift

    torch.manual_seed(seed)
    detector = MMDDrift(
        x,
        backend="pytorch",
        sigma=np.array([h], dtype=x.dtype),  # a float64 sigma would promote the kernel to float64
        configure_kernel_from_x_ref=False,
        n_permutations=b,
        device="cpu",
    )
    p, stat, _threshold = detector.score(y)
    return float(stat), float(p)


def _unbiased_to_biased(u: float, ref: Reference) -> float:
    return u + (ref.biased - ref.unbiased)


def _hyppo_to_biased(stat: float, ref: Reference) -> float:
    n, m = ref.n, ref.m
    big_n = n + m
    dcorr = stat * big_n**4 / (2.0 * n**2 * m**2)
    return dcorr**2 * ref.centred_frobenius * big_n / (n * m)


def _torchdrift_to_biased(stat: float, ref: Reference) -> float:
    return _unbiased_to_biased(stat - 1.0 / (ref.n - 1) - 1.0 / (ref.m - 1), ref)


LIBRARIES: dict[str, tuple[Runner, Callable[[float, Reference], float], str]] = {
    "icldistill": (run_icldistill, lambda s, _ref: s, "icldistill"),
    "hyppo": (run_hyppo, _hyppo_to_biased, "hyppo"),
    "torchdrift": (run_torchdrift, _torchdrift_to_biased, "torchdrift"),
    "alibi": (run_alibi, _unbiased_to_biased, "alibi-detect"),
}


def make_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    y = rng.standard_normal((n, dim), dtype=np.float32) + np.float32(SHIFT)
    return x, y


def _sq_dists(a: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", a, a)
    d2 = a @ a.T
    d2 *= -2.0
    d2 += sq[:, None]
    d2 += sq[None, :]
    np.fill_diagonal(d2, 0.0)
    return np.maximum(d2, 0.0, out=d2)


def median_bandwidth(x: np.ndarray, y: np.ndarray, seed: int, subsample: int = 2000) -> float:
    z = np.vstack([x, y]).astype(np.float64)
    idx = np.random.default_rng(seed).choice(len(z), size=min(subsample, len(z)), replace=False)
    d2 = _sq_dists(z[idx])
    return float(np.sqrt(np.median(d2[np.triu_indices(len(idx), k=1)])))


def reference(x: np.ndarray, y: np.ndarray, h: float) -> Reference:
    n, m = len(x), len(y)
    k = _sq_dists(np.vstack([x, y]).astype(np.float64))
    k *= -1.0 / (2.0 * h * h)
    np.exp(k, out=k)
    sxx, syy, sxy = k[:n, :n].sum(), k[n:, n:].sum(), k[:n, n:].sum()
    biased = sxx / n**2 + syy / m**2 - 2.0 * sxy / (n * m)
    unbiased = (sxx - n) / (n * (n - 1)) + (syy - m) / (m * (m - 1)) - 2.0 * sxy / (n * m)
    row_means = k.mean(axis=0)
    k -= row_means[:, None]
    k -= row_means[None, :]
    k += row_means.mean()
    return Reference(float(biased), float(unbiased), float(np.linalg.norm(k)), n, m)


def timed(
    run: Runner, x: np.ndarray, y: np.ndarray, h: float, b: int, seed: int
) -> tuple[float, float, float]:
    start = time.perf_counter()
    stat, p = run(x, y, h, b, seed)
    return time.perf_counter() - start, stat, p


def measure(
    run: Runner,
    x: np.ndarray,
    y: np.ndarray,
    h: float,
    b: int,
    seed: int,
    budget: float,
    repeats: int,
) -> tuple[float, list[int] | None, float, float, int]:
    """Return (seconds, extrapolated_from, native statistic, p-value, B behind the p-value)."""
    b1, b2 = PILOTS
    if b > b2:
        t1, _, _ = timed(run, x, y, h, b1, seed)
        t2, stat, p = timed(run, x, y, h, b2, seed)
        slope = max(t2 - t1, 0.0) / (b2 - b1)
        predicted = t1 + slope * (b - b1)
        if predicted > budget:
            return predicted, [b1, b2], stat, p, b2
    runs = [timed(run, x, y, h, b, seed) for _ in range(repeats)]
    seconds, stat, p = min(runs, key=lambda r: r[0])
    return seconds, None, stat, p, b


def bench(args: argparse.Namespace) -> list[Row]:
    names = ([] if args.peers_only else ["icldistill"]) + list(args.peers)
    wx, wy = make_data(64, args.dim, args.seed)
    available = []
    for name in names:
        try:
            LIBRARIES[name][0](wx, wy, 20.0, 5, args.seed)  # warm-up: imports, numba JIT
            available.append(name)
        except Exception as exc:  # a missing peer, or icldistill still being written
            print(f"skipping {name}: {exc!r}")
    rows: list[Row] = []
    for n in args.sizes:
        x, y = make_data(n, args.dim, args.seed)
        h = median_bandwidth(x, y, args.seed)
        ref = reference(x, y, h)
        print(f"n={n}: h={h:.6g}, reference MMD_b^2={ref.biased:.6e}, MMD_u^2={ref.unbiased:.6e}")
        target, target_name = ref.biased, "numpy-f64"
        for name in available:
            run, to_biased, label = LIBRARIES[name]
            sec, extra, native, p, pb = measure(
                run, x, y, h, args.permutations, args.seed, args.budget, args.repeats
            )
            stat = to_biased(native, ref)
            compared = target_name
            if name == "icldistill":
                target, target_name = stat, "icldistill"
                compared = "numpy-f64"
                rel = abs(stat - ref.biased) / abs(ref.biased)
            else:
                rel = abs(stat - target) / abs(target)
            rows.append(Row(n, label, sec, extra, native, stat, p, pb, rel, compared))
            print(f"  {label}: {sec:.2f} s, MMD_b^2={stat:.6e}, p={p:.4g}, rel.diff={rel:.1e}")
    return rows


def table(rows: list[Row], tol: float) -> str:
    lines = [
        "| n | library | time (s) | time / icldistill | MMD_b^2 | native statistic | p-value "
        "| agree? (rel. diff, vs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    for n in sorted({r.n for r in rows}):
        group = [r for r in rows if r.n == n]
        base = next((r.seconds for r in group if r.library == "icldistill"), None)
        for r in group:
            time_s = f"{r.seconds:.2f}"
            if r.extrapolated_from:
                time_s += f" (extrapolated from B={','.join(map(str, r.extrapolated_from))})"
            ratio = f"{r.seconds / base:.1f}x" if base else "n/a"
            p = f"{r.p_value:.4g}" + (
                "" if r.extrapolated_from is None else f" (B={r.p_value_permutations})"
            )
            ok = "yes" if r.rel_diff <= tol else "NO"
            lines.append(
                f"| {n} | {r.library} | {time_s} | {ratio} | {r.statistic:.6e} "
                f"| {r.native_statistic:.6e} | {p} | {ok} ({r.rel_diff:.1e}, {r.compared_with}) |"
            )
        peers = [r for r in group if r.library != "icldistill"]
        if base and peers:
            fastest = min(peers, key=lambda r: r.seconds)
            summary.append(
                f"n={n}: icldistill is {fastest.seconds / base:.1f}x faster than the fastest "
                f"peer ({fastest.library}, {fastest.seconds:.2f} s vs {base:.2f} s)"
            )
    return "\n".join([*lines, "", *summary])


def versions(names: list[str]) -> dict[str, str]:
    dists = {
        "icldistill": "icldistill",
        "hyppo": "hyppo",
        "torchdrift": "torchdrift",
        "alibi": "alibi-detect",
        "torch": "torch",
        "numpy": "numpy",
    }
    out = {}
    for name in ["torch", "numpy", *names]:
        try:
            out[dists[name]] = metadata.version(dists[name])
        except metadata.PackageNotFoundError:
            out[dists[name]] = "not installed"
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument(
        "--peers",
        nargs="*",
        default=["hyppo", "torchdrift", "alibi"],
        choices=["hyppo", "torchdrift", "alibi"],
    )
    parser.add_argument("--peers-only", action="store_true", help="skip icldistill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget",
        type=float,
        default=600.0,
        help="seconds; a longer predicted full run is extrapolated from pilots",
    )
    parser.add_argument("--repeats", type=int, default=1, help="best-of-N for full runs")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative agreement tolerance")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    names = ([] if args.peers_only else ["icldistill"]) + list(args.peers)
    vers = versions(names)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    print(
        f"torch threads: {torch.get_num_threads()} (default); hyppo workers: 1; "
        f"d={args.dim}, B={args.permutations}, float32 inputs, seed={args.seed}"
    )
    load_before = os.getloadavg()
    rows = bench(args)
    load_after = os.getloadavg()
    print()
    print(table(rows, args.tol))
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {load_after}")
    if args.json:
        payload = {
            "versions": vers,
            "threads": torch.get_num_threads(),
            "load_average_before_after": [load_before, load_after],
            "args": vars(args),
            "rows": [asdict(r) for r in rows],
        }
        from icldistill.artifacts.store import write_text

        write_text(args.json, json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
