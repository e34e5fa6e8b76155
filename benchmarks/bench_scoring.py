"""Evaluation throughput: shared-prefix key/value reuse vs re-encoding every prompt (issue 4).

One demonstration set (k demonstrations, chosen by set-level MMD) serves a whole test set, as
for every set-level selector. ``FewShotScorer.score(..., reuse_prefix=True)`` encodes the
instruction and the demonstrations once and runs only the queries (and labels) per batch;
``reuse_prefix=False`` encodes every full prompt. Both give the same label scores (checked
here: max abs difference printed).

    python benchmarks/bench_scoring.py                    # smollm2-135m and qwen2.5-0.5b
    python benchmarks/bench_scoring.py --models smollm2-135m --n 200 --k 8

Writes ``benchmarks/results/scoring_2cpu.md`` / ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from icldistill.data.datasets import load_split
from icldistill.encoders.representations import encode_cached, make_encoder
from icldistill.evaluation.scoring import FewShotScorer
from icldistill.models.registry import load_model
from icldistill.selection import make_selector

HERE = Path(__file__).resolve().parent


def mmd_demonstrations(task: str, k: int) -> tuple[object, list[tuple[str, str]]]:
    """The split of registry task ``task`` and one set-level MMD selection of ``k`` of its pool
    items for its whole test set (MiniLM embeddings), as ``(text, label)`` pairs."""
    split = load_split(task)
    enc = make_encoder("minilm")
    pool_emb = encode_cached(enc, list(split.train.texts))
    test_emb = encode_cached(enc, list(split.test.texts))
    sel = make_selector("mmd").fit(pool_emb).select(test_emb, k)
    return split, [(split.train.texts[j], str(split.train.labels[j])) for j in sel.demo_set(0)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m:200,qwen2.5-0.5b:64",
                    help="comma-separated MODEL[:N_QUERIES]")
    ap.add_argument("--task", default="amazon")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "scoring_2cpu"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    split, demos = mmd_demonstrations(args.task, args.k)
    fmt = split.train.format
    rows = []
    for item in args.models.split(","):
        name, _, n = item.partition(":")
        n = int(n) if n else 200
        lm = load_model(name)
        scorer = FewShotScorer(lm.model, lm.tokenizer, fmt.label_words, template=fmt.template,
                               instruction=fmt.instruction, batch_size=args.batch_size)
        queries = list(split.test.texts[:n])
        scorer.score(queries[: args.batch_size], demos)           # warm-up
        t = time.perf_counter()
        fast = scorer.score(queries, demos, reuse_prefix=True)
        t_fast = time.perf_counter() - t
        t = time.perf_counter()
        slow = scorer.score(queries, demos, reuse_prefix=False)
        t_slow = time.perf_counter() - t
        diff = float(np.abs(fast.logprobs - slow.logprobs).max())
        agree = float(np.mean(fast.predictions == slow.predictions))
        rows.append({"model": name, "n_queries": n, "k": args.k,
                     "prompt_tokens": slow.n_prompt_tokens, "tokens_reuse": fast.n_tokens,
                     "tokens_full": slow.n_tokens, "seconds_reuse": t_fast,
                     "seconds_full": t_slow, "speedup": t_slow / t_fast,
                     "queries_per_s_reuse": n / t_fast, "queries_per_s_full": n / t_slow,
                     "max_abs_logprob_diff": diff, "prediction_agreement": agree})
        print(json.dumps(rows[-1]), flush=True)
        del lm, scorer
    load = os.getloadavg()
    header = (f"# Few-shot scoring throughput: prefix reuse vs full prompts\n\n"
              f"Task `{args.task}`, one MMD-selected set of k={args.k} demonstrations for all "
              f"queries, batch size {args.batch_size}, {platform.machine()} "
              f"{os.cpu_count()} threads, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), load average after the run "
              f"{load[0]:.1f}/{load[1]:.1f}.\n\n"
              "Command: `python benchmarks/bench_scoring.py`\n\n")
    table = ["| model | queries | prompt tokens | tokens run (reuse / full) | seconds (reuse / "
             "full) | queries/s (reuse / full) | speedup | max abs Δ log-prob | same "
             "predictions |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['n_queries']} | {r['prompt_tokens']} | "
                     f"{r['tokens_reuse']} / {r['tokens_full']} | {r['seconds_reuse']:.1f} / "
                     f"{r['seconds_full']:.1f} | {r['queries_per_s_reuse']:.2f} / "
                     f"{r['queries_per_s_full']:.2f} | **{r['speedup']:.1f}×** | "
                     f"{r['max_abs_logprob_diff']:.1e} | {r['prediction_agreement']:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from icldistill.artifacts.store import write_text

    write_text(out.with_suffix(".md"), header + "\n".join(table) + "\n")
    write_text(out.with_suffix(".json"), json.dumps(rows, indent=1))
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
