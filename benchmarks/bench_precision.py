"""Scoring in bfloat16 vs float32: speed and agreement of label scores (issue 4, item 6-7).

The few-shot grid on qwen2.5-0.5b runs its model in bfloat16 (``--dtype bfloat16``): this CPU
has bf16 matrix instructions, and a bf16 forward is several times faster than float32. The
output head stays float32 (:func:`icldistill.models.float32_head`), so logits never come from
bf16 arithmetic. This script measures what that changes, on the same prompts the grid scores:

- a shared demonstration set (set-level MMD, ``k = 8``; prefix reuse), ``--n-shared`` queries;
- per-query demonstrations (kNN, ``k = 4``), ``--n-query`` queries;

for each model and task: seconds in each precision, the speed-up, the fraction of identical
predictions, the accuracy in each precision and the largest difference of a label
log-probability and of a label *margin* (score of the first label minus the others').

    python benchmarks/bench_precision.py               # qwen, amazon + rt-subjectivity (recorded)
    python benchmarks/bench_precision.py --models smollm2-135m --tasks amazon --n-query 32

Writes ``benchmarks/results/precision_2cpu.md`` / ``.json``.
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
from icldistill.reporting.reports import write_json, write_text
from icldistill.selection import make_selector

HERE = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _prompts(task: str, n_shared: int, n_query: int) -> dict:
    split = load_split(task)
    enc = make_encoder("minilm")
    pool = encode_cached(enc, list(split.train.texts))
    test = encode_cached(enc, list(split.test.texts))
    texts, labels = split.train.texts, split.train.labels
    shared = make_selector("mmd").fit(pool).select(test[:n_shared], 8)
    per = make_selector("knn").fit(pool).select(test[:n_query], 4)
    return {
        "split": split,
        "shared": ("mmd k=8 shared", list(split.test.texts[:n_shared]),
                   {"demonstrations": [(texts[j], str(labels[j])) for j in shared.demo_set()]}),
        "per": ("knn k=4 per query", list(split.test.texts[:n_query]),
                {"per_query": [[(texts[j], str(labels[j])) for j in row]
                               for row in per.indices]}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="qwen2.5-0.5b")
    ap.add_argument("--tasks", default="amazon,rt-subjectivity")
    ap.add_argument("--n-shared", type=int, default=200)
    ap.add_argument("--n-query", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "precision_2cpu"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = {t: _prompts(t, args.n_shared, args.n_query) for t in args.tasks.split(",") if t}
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        scores: dict[tuple[str, str, str], tuple[np.ndarray, float, np.ndarray]] = {}
        for dname, dt in DTYPES.items():
            lm = load_model(name, dtype=dt, progress=False)
            for task, pr in tasks.items():
                fmt = pr["split"].train.format
                sc = FewShotScorer(lm.model, lm.tokenizer, fmt.label_words,
                                   template=fmt.template, instruction=fmt.instruction,
                                   batch_size=args.batch_size)
                for part in ("shared", "per"):
                    _, queries, kw = pr[part]
                    sc.score(queries[:2], **{k: v[:2] if k == "per_query" else v
                                             for k, v in kw.items()})       # warm-up
                    t = time.perf_counter()
                    res = sc.score(queries, **kw)
                    scores[(task, part, dname)] = (res.logprobs, time.perf_counter() - t,
                                                   res.predictions)
            del lm
        for task, pr in tasks.items():
            truth = np.asarray([str(y) for y in pr["split"].test.labels], dtype=object)
            for part in ("shared", "per"):
                what, queries, _ = pr[part]
                (a, ta, pa), (b, tb, pb) = (scores[(task, part, d)] for d in DTYPES)
                n = len(queries)
                margin_a = a[:, :1] - a[:, 1:]
                margin_b = b[:, :1] - b[:, 1:]
                rows.append({
                    "model": name, "task": task, "prompts": what, "n": n,
                    "seconds_float32": ta, "seconds_bfloat16": tb, "speedup": ta / tb,
                    "prediction_agreement": float(np.mean(pa == pb)),
                    "accuracy_float32": float(np.mean(pa == truth[:n])),
                    "accuracy_bfloat16": float(np.mean(pb == truth[:n])),
                    "max_abs_logprob_diff": float(np.abs(a - b).max()),
                    "max_abs_margin_diff": float(np.abs(margin_a - margin_b).max()),
                    "median_abs_margin_diff": float(np.median(np.abs(margin_a - margin_b))),
                })
                print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_avg": load[0]}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows})
    head = ("| model | task | prompts | n | float32 s | bfloat16 s | speed-up | same predictions "
            "| accuracy fp32 / bf16 | max abs Δ log-prob | max / median abs Δ margin |")
    lines = [f"# Scoring precision: bfloat16 (float32 head) vs float32 ({meta['machine']}, "
             f"{meta['cpus']} CPUs, torch {meta['torch']}, {meta['threads']} threads, load "
             f"{load[0]:.1f})", "", head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['prompts']} | {r['n']} | "
            f"{r['seconds_float32']:.1f} | {r['seconds_bfloat16']:.1f} | {r['speedup']:.2f}x | "
            f"{r['prediction_agreement']:.3f} | {r['accuracy_float32']:.3f} / "
            f"{r['accuracy_bfloat16']:.3f} | {r['max_abs_logprob_diff']:.3f} | "
            f"{r['max_abs_margin_diff']:.3f} / {r['median_abs_margin_diff']:.3f} |")
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
