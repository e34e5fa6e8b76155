"""Throughput against lm-evaluation-harness: the same log-likelihood requests, side by side.

Few-shot classification prompts of one registry task (one MMD-selected set of k demonstrations
for the whole test set, as every set-level selector gives) are scored twice in one run:

- by icldistill's :class:`~icldistill.evaluation.scoring.FewShotScorer` (the prefix shared by all
  prompts is encoded once; queries and labels run on its cached keys/values), and
- by lm-evaluation-harness's Hugging Face backend (``lm_eval.models.huggingface.HFLM``,
  ``loglikelihood``) on the same model object, one request per (query, label): context = the
  rendered prompt, continuation = the label prefix and label word.

Reported per model: requests per second for both, the ratio, the largest difference of the
log-likelihoods and whether the predictions (argmax over labels) are identical. lm-eval is not a
dependency of icldistill: run this with an interpreter that has it (a benchmark venv):

    python -m venv --system-site-packages /work/bench-venv
    /work/bench-venv/bin/pip install -c constraints.txt "lm_eval==0.4.*"
    /work/bench-venv/bin/python benchmarks/bench_lm_eval.py

Writes ``benchmarks/results/lm_eval_2cpu.md`` / ``.json``.
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

from bench_scoring import mmd_demonstrations
from icldistill.evaluation.scoring import FewShotScorer
from icldistill.models.registry import load_model

HERE = Path(__file__).resolve().parent


def _lm_eval_scores(lm, contexts: list[str], continuations: list[str], n_labels: int
                    ) -> tuple[np.ndarray, float]:
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
            for i, (c, x) in enumerate(zip(contexts, continuations, strict=True))]
    t = time.perf_counter()
    out = lm.loglikelihood(reqs, disable_tqdm=True)
    seconds = time.perf_counter() - t
    lp = np.array([float(o[0]) for o in out]).reshape(-1, n_labels)
    return lp, seconds


def _requests(scorer: FewShotScorer, queries: list[str], demos: list[tuple[str, str]]
              ) -> tuple[list[str], list[str]]:
    contexts, continuations = [], []
    for q in queries:
        text = scorer.prompt(demos, q).render().text
        for label in scorer.labels:
            contexts.append(text)
            continuations.append(scorer.label_prefix + scorer.verbalize(label))
    return contexts, continuations


def _one_model(name: str, n: int, split, demos, args) -> dict:
    from lm_eval.models.huggingface import HFLM

    fmt = split.train.format
    lm = load_model(name)
    scorer = FewShotScorer(lm.model, lm.tokenizer, fmt.label_words, template=fmt.template,
                           instruction=fmt.instruction, batch_size=args.batch_size)
    queries = list(split.test.texts[:n])
    contexts, continuations = _requests(scorer, queries, demos)
    hf = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=args.batch_size,
              device="cpu")
    # warm-up both (first-call allocations), then time each on all requests
    scorer.score(queries[:2], demos)
    _lm_eval_scores(hf, contexts[:2], continuations[:2], 1)
    t = time.perf_counter()
    ours = scorer.score(queries, demos)
    t_ours = time.perf_counter() - t
    theirs, t_theirs = _lm_eval_scores(hf, contexts, continuations, len(scorer.labels))
    n_req = len(contexts)
    return {"model": name, "n_queries": n, "n_labels": len(scorer.labels),
            "n_requests": n_req, "k": args.k, "prompt_tokens": ours.n_prompt_tokens,
            "seconds_icldistill": t_ours, "seconds_lm_eval": t_theirs,
            "req_per_s_icldistill": n_req / t_ours, "req_per_s_lm_eval": n_req / t_theirs,
            "speedup": t_theirs / t_ours,
            "max_abs_loglik_diff": float(np.abs(ours.logprobs - theirs).max()),
            "same_predictions": bool(np.array_equal(ours.logprobs.argmax(1),
                                                    theirs.argmax(1))),
            "prediction_agreement": float(np.mean(ours.logprobs.argmax(1)
                                                  == theirs.argmax(1)))}


def _write(rows: list[dict], args, versions: dict) -> None:
    load = os.getloadavg()
    header = (f"# Log-likelihood throughput: icldistill vs lm-evaluation-harness (HF backend)\n\n"
              f"Task `{args.task}`, one MMD-selected set of k={args.k} demonstrations for all "
              f"queries, every label of every query one request, batch size {args.batch_size}, "
              f"float32, {platform.machine()} {os.cpu_count()} CPUs, torch "
              f"{versions['torch']} ({torch.get_num_threads()} threads), lm_eval "
              f"{versions['lm_eval']}, transformers {versions['transformers']}; load average "
              f"after the run {load[0]:.1f}/{load[1]:.1f}.\n\n"
              "Command: `/work/bench-venv/bin/python benchmarks/bench_lm_eval.py`\n\n")
    table = ["| model | requests | prompt tokens | seconds (icldistill / lm-eval) | requests/s "
             "(icldistill / lm-eval) | speed-up | max abs Δ log-lik | same predictions |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['model']} | {r['n_requests']} | {r['prompt_tokens']} | "
                     f"{r['seconds_icldistill']:.1f} / {r['seconds_lm_eval']:.1f} | "
                     f"{r['req_per_s_icldistill']:.2f} / {r['req_per_s_lm_eval']:.2f} | "
                     f"**{r['speedup']:.1f}×** | {r['max_abs_loglik_diff']:.1e} | "
                     f"{'yes' if r['same_predictions'] else 'no'} "
                     f"({r['prediction_agreement']:.3f}) |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from icldistill.artifacts.store import write_text

    write_text(out.with_suffix(".md"), header + "\n".join(table) + "\n")
    write_text(out.with_suffix(".json"), json.dumps({"versions": versions, "rows": rows},
                                                    indent=1))
    print("\n".join(table))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m:32,qwen2.5-0.5b:16",
                    help="comma-separated MODEL[:N_QUERIES]")
    ap.add_argument("--task", default="rt-sentiment")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "lm_eval_2cpu"))
    args = ap.parse_args()
    try:
        import lm_eval
    except ImportError:
        ap.error("this benchmark needs lm-evaluation-harness (see the module docstring)")
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    split, demos = mmd_demonstrations(args.task, args.k)
    rows = []
    for item in args.models.split(","):
        name, _, n = item.partition(":")
        rows.append(_one_model(name, int(n) if n else 64, split, demos, args))
        print(json.dumps(rows[-1]), flush=True)
    versions = {"torch": torch.__version__, "lm_eval": getattr(lm_eval, "__version__", "?"),
                "transformers": transformers.__version__}
    _write(rows, args, versions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
