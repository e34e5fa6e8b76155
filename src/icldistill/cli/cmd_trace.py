"""``icldistill trace``: decompose every attention head of a real model on a few-shot prompt and
write the report (JSON, Parquet, figures, a Markdown summary).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from icldistill.cli.options import (
    add_device,
    add_dtype,
    add_quiet,
    resolve_dtype,
    set_threads,
    thread_count,
    token_positions,
)
from icldistill.cli.readers import load_demonstrations
from icldistill.core.validation import InputError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Add ``trace`` to the command parsers ``sub``."""
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
    p.add_argument("--positions", default="query", type=token_positions,
                   help="query (default), last, all, or comma-separated token positions")
    p.add_argument("--per-demo", action="store_true", help="also report every demonstration")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="torch CPU threads (>= 1)")
    add_dtype(p)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=_cmd_trace)


def _cmd_trace(args: argparse.Namespace) -> int:
    demos = load_demonstrations(args.demos, args.text_field, args.label_field)  # before imports
    if not args.query.strip():
        raise InputError("--query is blank; give the query text the prompt ends with")

    from icldistill.data.prompts import Prompt
    from icldistill.evaluation.harness import DTYPES
    from icldistill.models.registry import load_model
    from icldistill.models.tracing import trace
    from icldistill.reporting.reports import write_trace_report

    set_threads(args)
    positions: Any = args.positions  # "query", "last", "all" or a list (token_positions)
    prompt = Prompt(demos, args.query, instruction=args.instruction)
    show = not args.quiet
    if show:
        print(f"loading {args.model} ...", file=sys.stderr)
    resolve_dtype(args)
    loaded = load_model(args.model, progress=show, device=args.device, dtype=DTYPES[args.dtype])
    if show:
        print(f"tracing {len(demos)} demonstrations on {loaded.name} ...", file=sys.stderr)
    res = trace(loaded.model, loaded.tokenizer, prompt, positions=positions,
                per_demo=args.per_demo, progress=show)
    top = int(res.logits[-1].argmax())
    precision = "" if args.dtype == "float32" else f" ({args.dtype})"
    files = write_trace_report(res, args.out,
                               title=f"{loaded.name}{precision}: {len(demos)}-shot trace",
                               metadata={"model": loaded.name, "dtype": args.dtype,
                                         "query": args.query, "demonstrations": len(demos),
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
