"""Commands on the math core: ``icldistill mmd X Y`` (two-sample MMD estimates and a permutation
test on files of row vectors) and ``icldistill demo`` (every part of the core on generated data).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from icldistill.cli.options import (
    finite_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from icldistill.cli.readers import load_matrix
from icldistill.core.validation import InputError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Add ``mmd`` and ``demo`` to the command parsers ``sub`` (``add_subparsers()``)."""
    from icldistill.core.kernels import KERNELS

    p = sub.add_parser("mmd", help="MMD estimates and permutation test between two samples",
                       description="MMD^2 (biased, unbiased, linear-time) and a permutation test "
                                   "between the row vectors of two .npy/.csv files.")
    p.add_argument("x", help="sample X: .npy or .csv/.tsv file of row vectors [n, d]")
    p.add_argument("y", help="sample Y: .npy or .csv/.tsv file of row vectors [m, d]")
    p.add_argument("--kernel", default="gaussian", choices=KERNELS,
                   help="kernel (default gaussian)")
    p.add_argument("--bandwidth", type=positive_float, default=None,
                   help="bandwidth h (default: median heuristic on the pooled sample)")
    p.add_argument("--scale", type=finite_float, default=None,
                   help="scale of softmax/attention kernels")
    p.add_argument("--key-dim", type=positive_int, default=None,
                   help="key columns for --kernel attention")
    p.add_argument("--permutations", type=positive_int, default=1000,
                   help="permutations (default 1000)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_mmd)

    p = sub.add_parser("demo", help="end-to-end demo of the math core on generated data",
                       description="Runs every part of the math core on a synthetic attention "
                                   "head, prints a summary and writes a figure.")
    p.add_argument("--out", default="icldistill-demo",
                   help="output folder (default ./icldistill-demo)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    p.set_defaults(func=_cmd_demo)


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _samples(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The two samples of ``mmd``: finite row vectors of the same dimension."""
    x = load_matrix(args.x)
    y = load_matrix(args.y)
    for path, arr in ((args.x, x), (args.y, y)):
        if arr.size and not np.isfinite(arr).all():
            row, col = np.argwhere(~np.isfinite(arr))[0]
            raise InputError(f"{path}: {int((~np.isfinite(arr)).sum())} NaN or infinite value(s) "
                             f"(the first in row {row + 1}, column {col + 1}); remove or impute "
                             "them")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"dimension mismatch: {args.x} has rows of dimension {x.shape[1]}, "
                         f"{args.y} has {y.shape[1]}; both samples need the same columns")
    return x, y


def _cmd_mmd(args: argparse.Namespace) -> int:
    from icldistill.core.mmd import mmd, mmd_test

    x, y = _samples(args)
    params = {name: value for name, value in (("bandwidth", args.bandwidth),
                                              ("scale", args.scale), ("key_dim", args.key_dim))
              if value is not None}
    res = mmd_test(x, y, kernel=args.kernel, permutations=args.permutations, seed=args.seed,
                   **params)
    kp = dict(res.kernel.params)
    linear = None
    if min(res.n_x, res.n_y) >= 2:
        linear = mmd(x, y, res.kernel, "linear")
    out = {
        "mmd2_biased": res.statistic,
        "mmd2_unbiased": res.unbiased_statistic,
        "mmd2_linear": linear,
        "p_value": res.p_value,
        "permutations": res.permutations,
        "seed": args.seed,
        "kernel": res.kernel.name,
        "kernel_params": {k: _finite_or_none(v) if isinstance(v, float) else v
                          for k, v in kp.items()},
        "bandwidth": res.bandwidth,
        "n_x": res.n_x,
        "n_y": res.n_y,
        "dim": int(x.shape[1]),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"MMD two-sample test  ({res.kernel.name} kernel"
          + (f", bandwidth {res.bandwidth:.6g}" if res.bandwidth is not None else "") + ")")
    print(f"  n_x = {res.n_x}, n_y = {res.n_y}, dim = {out['dim']}")
    print(f"  MMD^2 biased   = {res.statistic:.6g}")
    if res.unbiased_statistic is not None:
        print(f"  MMD^2 unbiased = {res.unbiased_statistic:.6g}")
    if linear is not None:
        print(f"  MMD^2 linear   = {linear:.6g}")
    print(f"  p-value        = {res.p_value:.6g}  ({res.permutations} permutations, "
          f"seed {args.seed})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from icldistill.lab.demo import run_demo

    run_demo(out_dir=Path(args.out), seed=args.seed, quiet=args.quiet)
    return 0
