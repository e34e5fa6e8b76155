"""``icldistill select``: choose demonstrations from a task's pool for its test inputs (or a user
file's), print them, and with ``--out DIR`` write ``DIR/selection.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from icldistill.cli.options import add_device, positive_int, selector_param
from icldistill.cli.tasks import add_selection_args, add_task_args, load_tasks, selector_params
from icldistill.core.validation import InputError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Add ``select`` to the command parsers ``sub``."""
    from icldistill.selection.registry import DEFAULT_SELECTOR

    p = sub.add_parser("select", help="choose demonstrations for a task's test inputs",
                       description="Fit a selector on a task's pool and select k demonstrations "
                                   "for its test inputs (one set for set-level selectors). "
                                   "Prints a summary (or, with --json, the selection); with "
                                   "--out DIR also writes DIR/selection.json. Caches go to "
                                   "DIR, else to the user cache folder: nothing is written to "
                                   "the working directory.")
    add_task_args(p)
    p.add_argument("--selector", default=DEFAULT_SELECTOR,
                   help=f"selector name (default {DEFAULT_SELECTOR}, the best supported by the "
                        "paired benchmarks; see icldistill compare --help for the list)")
    p.add_argument("--k", type=positive_int, default=8, help="demonstrations (default 8)")
    p.add_argument("--model", default=None,
                   help="language model, needed for hidden:/kv: encoders")
    p.add_argument("--param", action="append", type=selector_param,
                   help="selector parameter NAME=VALUE (repeatable)")
    p.add_argument("--out", default=None,
                   help="folder for selection.json and the caches (default: no file; caches "
                        "in the user cache folder)")
    p.add_argument("--json", action="store_true", help="print the selection as JSON on stdout")
    add_device(p)
    add_selection_args(p)
    p.set_defaults(func=_cmd_select)


def _cmd_select(args: argparse.Namespace) -> int:
    from icldistill.encoders.representations import needs_language_model
    from icldistill.evaluation.harness import Harness, UnitSpec
    from icldistill.selection.registry import make_selector

    if args.file and args.dataset:
        raise InputError("select works on one task: give --file or --dataset, not both")
    tasks = load_tasks(args)
    name, task = next(iter(tasks.items()))
    if args.out:
        out = Path(args.out)
    else:                   # caches only: the user cache folder, nothing in the working dir
        from icldistill.artifacts.fetch import cache_root

        out = cache_root() / "select"
    preferred = make_selector(args.selector).preferred_encoder
    enc = preferred if preferred and args.encoder == "minilm" else args.encoder
    if args.model is None and needs_language_model(enc):
        raise InputError(f"selector {args.selector!r} with encoder {enc!r} works in a language "
                         "model's representation space: give --model (e.g. --model "
                         "smollm2-135m)")
    h = Harness(out, tasks=tasks, progress=not args.quiet, device=args.device,
                reference_encoder=args.reference_encoder)
    if args.model is None and needs_language_model(h.reference_encoder):
        raise InputError(f"--reference-encoder {h.reference_encoder!r} measures MMD² in a "
                         "language model's representation space: give --model (e.g. --model "
                         "smollm2-135m)")
    n = task.n_items(args.n_test)
    spec = UnitSpec(args.model or "-", name, args.selector, args.k, args.seed, 0, args.encoder,
                    params=tuple(sorted(selector_params(args.param).items())))
    sel = h.select(spec, task, np.arange(n))
    pool, test = task.split.train, task.split.test
    rows = sel.indices[:1] if sel.shared else sel.indices
    mmd_task, mmd_query = h.mmd_to_task(task, spec.model, rows, np.arange(n), sel.shared)
    payload = {"task": name, "selector": sel.selector, "k": sel.k, "shared": sel.shared,
               "seconds": sel.seconds, "mmd2_task": mmd_task, "mmd2_query": mmd_query,
               "reference_encoder": h.reference_encoder,
               "sets": [
                   {"query": None if sel.shared else test.texts[i],
                    "demonstrations": [{"pool_index": int(j), "text": pool.texts[j],
                                        "label": str(pool.labels[j])} for j in row]}
                   for i, row in enumerate(rows)]}
    written = None
    if args.out:
        from icldistill.artifacts.store import write_json

        written = write_json(out / "selection.json", payload)
    if args.json:
        print(json.dumps(payload, ensure_ascii=False))
        return 0
    _print_selection(sel, payload, n, h.reference_encoder, written)
    return 0


def _print_selection(sel: Any, payload: dict[str, Any], n: int, encoder: str,
                     written: Path | None) -> None:
    """The text summary of ``select``: the MMD of the choice and the first sets."""
    head = ("one set for all queries" if sel.shared
            else f"one set per query ({len(payload['sets'])})")
    print(f"{sel.selector}, k={sel.k}, {head}, {sel.seconds:.3f} s")
    print(f"MMD² to the {n} test inputs: {payload['mmd2_task']:.4f} (set); mean per query "
          f"{payload['mmd2_query']:.4f} (Gaussian kernel on {encoder}, median bandwidth of "
          "pool + test)")
    for s in payload["sets"][: 1 if sel.shared else 3]:
        if s["query"] is not None:
            print(f"\nquery: {s['query']}")
        for d in s["demonstrations"]:
            print(f"  [{d['label']}] {d['text'][:100]}")
    if written is not None:
        print(f"\nselection: {written}")
