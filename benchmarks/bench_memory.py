"""Memory-bounded scoring (issue 14, item 5): peak memory and speed, old path vs new path.

Two measurements, every configuration in a fresh subprocess (peak RSS is the process's
``ru_maxrss``, model loading included; the scoring peak above the loaded model is sampled every
5 ms):

1. **Long inputs.** BoolQ passages kept up to ``--max-words`` words (the registry cuts them to
   80), ``--k`` = 8 demonstrations per query drawn from the long passages of the training pool,
   ``--n-query`` test passages of the same length band: prompts of several thousand tokens.
   Scored on each model by

   - ``old``: the scorer before budgets - eager attention, fixed batches of 8
     (``attn="eager", max_batch_tokens=None, label_tree=False``);
   - ``new``: the defaults - sdpa attention where supported, batches by token budget
     (``max_batch_tokens="auto"``), multi-token labels in one trie-masked row.

2. **Multi-token labels.** R52 (52 labels, up to 4 tokens each) with ``k = 4`` per-query
   demonstrations, ``--r52-queries`` queries: ``old``, ``old+trie`` (eager, fixed batches, labels
   in one trie-masked row: the label path's share of the speed-up) and ``new``.

For each: seconds, peak RSS, the largest difference of a label log-probability from ``old`` and
the fraction of identical predictions. A half-precision model is also run in float32 (new path,
``float32 reference``): the largest difference of each half-precision row from it shows which
path is closer to exact. A watchdog kills a configuration whose RSS passes
``--rss-limit-gb`` or that leaves less than 1.5 GiB of the machine's memory available (reported
as killed; workers also volunteer first for the kernel's OOM killer). Writes
``benchmarks/results/memory_2cpu.md`` / ``.json``.

    python benchmarks/bench_memory.py                 # both models, both measurements
    python benchmarks/bench_memory.py --models smollm2-135m:float32 --n-query 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GB = 1 << 30

CONFIGS = {
    "old": {"attn": "eager", "max_batch_tokens": None, "label_tree": False},
    "old+trie": {"attn": "eager", "max_batch_tokens": None, "label_tree": True},
    "new": {},
    # the reference where "old" cannot run (several-thousand-token prompts in batches of 8 pass
    # any RSS limit): eager attention, one prompt per forward, a cache copy per label
    "eager-1": {"attn": "eager", "max_batch_tokens": None, "label_tree": False,
                "batch_size": 1},
}


# --------------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------------


def _boolq_prompts(k: int, n: int, max_words: int, min_words: int, seed: int) -> dict:
    from icldistill.data import DATASETS, fetch_dataset
    from icldistill.data.parsers import parse_dataset

    spec = replace(DATASETS["boolq"], max_words=max_words)
    built = parse_dataset(spec, fetch_dataset("boolq", None, False))
    ds = built.dataset
    words = np.array([len(t.split()) for t in ds.texts])
    band = (words >= min_words) & (words <= max_words + 1)
    pool = np.flatnonzero(band & (built.splits == "train"))
    test = np.flatnonzero(band & (built.splits == "test"))
    rng = np.random.default_rng(seed)
    queries = rng.choice(test, size=n, replace=False)
    per = [rng.choice(pool, size=k, replace=False) for _ in range(n)]
    fmt = spec.format
    return {"name": f"boolq, passages {min_words}-{max_words} words, k={k} per query",
            "label_words": dict(fmt.label_words), "instruction": fmt.instruction,
            "template": [fmt.template.demo, fmt.template.query],
            "queries": [ds.texts[i] for i in queries],
            "truth": [str(ds.labels[i]) for i in queries],
            "per_query": [[(ds.texts[j], str(ds.labels[j])) for j in row] for row in per]}


def _r52_prompts(k: int, n: int, seed: int) -> dict:
    from icldistill.data.datasets import load_split

    split = load_split("r52", progress=False)
    rng = np.random.default_rng(seed)
    tr, te = split.train, split.test
    queries = rng.choice(len(te), size=n, replace=False)
    per = [rng.choice(len(tr), size=k, replace=False) for _ in range(n)]
    fmt = tr.format
    return {"name": f"r52, k={k} per query (52 labels)",
            "label_words": dict(fmt.label_words), "instruction": fmt.instruction,
            "template": [fmt.template.demo, fmt.template.query],
            "queries": [te.texts[i] for i in queries],
            "truth": [str(te.labels[i]) for i in queries],
            "per_query": [[(tr.texts[j], str(tr.labels[j])) for j in row] for row in per]}


# --------------------------------------------------------------------------------------------
# one configuration (subprocess)
# --------------------------------------------------------------------------------------------


def _worker(job_path: str) -> int:
    import psutil
    import torch

    from icldistill.data.prompts import Template
    from icldistill.evaluation.scoring import FewShotScorer
    from icldistill.models.registry import load_model

    try:    # under memory pressure the kernel kills this worker first, not its neighbours
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    pr = json.loads(Path(job["prompts"]).read_text())
    proc = psutil.Process()
    dtype = getattr(torch, job["dtype"])
    lm = load_model(job["model"], dtype=dtype, progress=False)
    with torch.no_grad():      # pages in the (memory-mapped) weights, starts the thread pools
        lm.model(input_ids=torch.tensor([[1, 2, 3]]))
    rss_loaded = proc.memory_info().rss
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    hwm_reset = _reset_peak()
    sc = FewShotScorer(lm.model, lm.tokenizer, pr["label_words"],
                       template=Template(*pr["template"]), instruction=pr["instruction"],
                       **{"batch_size": 8, **job["config"]})
    shapes: list[tuple[int, int, int]] = []
    orig = sc._batch

    def spy(batch, cache, p_len, device):
        shapes.append((len(batch), max(len(it.context) for it in batch), p_len))
        return orig(batch, cache, p_len, device)

    sc._batch = spy
    calls = [0]
    lm.model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    sampled = [rss_loaded]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sampled[0] = max(sampled[0], proc.memory_info().rss)
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0, c0 = time.perf_counter(), time.process_time()
    res = sc.score(pr["queries"], per_query=pr["per_query"])
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    th.join()
    scoring_peak = _vm_hwm() if hwm_reset else sampled[0]
    np.save(job["out"] + ".npy", res.logprobs)
    predicted = max(sc.batch_bytes(r, w, p) for r, w, p in shapes)
    out = {"seconds": seconds, "cpu_seconds": cpu,
           "peak_rss": max(peak_load, scoring_peak), "peak_rss_loading": peak_load,
           "rss_loaded": rss_loaded, "peak_rss_scoring": scoring_peak,
           "peak_exact": hwm_reset, "scoring_peak_above_load": scoring_peak - rss_loaded,
           "predicted_batch_bytes": predicted,
           "attn": sc.attn_implementation, "label_mode": sc.label_mode,
           "max_batch_tokens": sc.max_batch_tokens, "batches": len(shapes),
           "max_rows": max(r for r, _, _ in shapes), "forwards": calls[0],
           "prompt_tokens": res.n_prompt_tokens, "n": len(pr["queries"]),
           "predictions": [str(p) for p in res.predictions]}
    Path(job["out"] + ".json").write_text(json.dumps(out))
    return 0


def _reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _vm_hwm() > 0
    except OSError:
        return False


def _vm_hwm() -> int:
    """Peak RSS of this process since start or the last :func:`_reset_peak` (bytes)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _run_job(job: dict, tmp: Path, rss_limit: int, timeout: float) -> dict:
    import psutil

    path = tmp / f"{job['tag']}.job.json"
    job["out"] = str(tmp / job["tag"])
    path.write_text(json.dumps(job))
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(path)])
    ps = psutil.Process(proc.pid)
    peak, why = 0, None
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if peak > rss_limit:
            why = f"killed: RSS passed {rss_limit / GB:.0f} GB"
        elif _mem_available() < 1.5 * GB:
            why = f"killed: machine memory nearly exhausted (RSS {peak / GB:.1f} GB)"
        elif time.perf_counter() - t0 > timeout:
            why = f"killed: over {timeout:.0f} s"
        if why:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.05)
    if why or proc.returncode != 0:
        return {"failed": why or f"exit {proc.returncode}", "watchdog_peak_rss": peak}
    out = json.loads(Path(job["out"] + ".json").read_text())
    out["logprobs"] = np.load(job["out"] + ".npy")
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def _compare(rows: list[dict]) -> None:
    """Δ, predictions and speed-up against ``old`` (``old+trie`` where ``old`` did not finish);
    for half-precision models also the largest difference from the float32 reference."""
    ok = [r for r in rows if "failed" not in r]
    for r in ok:
        key = (r["part"], r["model"])
        same = [x for x in ok if (x["part"], x["model"]) == key and x["dtype"] == r["dtype"]]
        base = next((x for name in ("old", "old+trie", "eager-1") for x in same
                     if x["config"] == name), None)
        if base is not None:
            r["reference"] = base["config"]
            r["max_abs_diff"] = float(np.abs(r["logprobs"] - base["logprobs"]).max())
            r["same_predictions"] = float(np.mean(np.asarray(r["predictions"])
                                                  == np.asarray(base["predictions"])))
            r["speedup"] = base["seconds"] / r["seconds"]
            r["speedup_cpu"] = base["cpu_seconds"] / r["cpu_seconds"]
        ref = next((x for x in ok if (x["part"], x["model"]) == key
                    and x["config"] == "float32 reference"), None)
        if ref is not None and r is not ref:
            r["max_abs_diff_float32"] = float(np.abs(r["logprobs"] - ref["logprobs"]).max())
        r["accuracy"] = float(np.mean(np.asarray(r["predictions"]) == np.asarray(r["truth"])))


def _fmt_rows(rows: list[dict], part: str) -> list[str]:
    head = ("| model | dtype | config | tokens / prompt | attention / labels | batches (max rows) "
            "| peak RSS scoring GB | above loaded GB (model) | peak RSS loading GB | seconds "
            "(CPU s) | speed-up wall / CPU | max abs Δ log p | same predictions | max abs Δ vs "
            "float32 |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        if r["part"] != part:
            continue
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['config']} | | | | "
                         f"≥ {r['watchdog_peak_rss'] / GB:.2f} | {r['failed']} | | | | | | |")
            continue
        vs = "" if r.get("reference", "old") == "old" else f" (vs {r['reference']})"
        f32 = r.get("max_abs_diff_float32")
        if "reference" not in r:
            speed, diff, same = "", "", ""
        else:
            speed = f"{r['speedup']:.2f}x / {r['speedup_cpu']:.2f}x{vs}"
            diff, same = f"{r['max_abs_diff']:.2e}", f"{r['same_predictions']:.3f}"
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['config']} | {r['prompt_tokens'] / r['n']:.0f} | "
            f"{r['attn']} / {r['label_mode']} | "
            f"{r['batches']} ({r['max_rows']}) | {r['peak_rss_scoring'] / GB:.2f} | "
            f"{r['scoring_peak_above_load'] / GB:.2f} ({r['predicted_batch_bytes'] / GB:.2f}) | "
            f"{r['peak_rss_loading'] / GB:.2f} | {r['seconds']:.1f} ({r['cpu_seconds']:.0f}) | "
            f"{speed} | {diff} | {same} | {'' if f32 is None else f'{f32:.2e}'} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="smollm2-135m:float32,qwen2.5-0.5b:bfloat16",
                    help="comma-separated MODEL:DTYPE")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--n-query", type=int, default=16)
    ap.add_argument("--max-words", type=int, default=170)
    ap.add_argument("--min-words", type=int, default=120)
    ap.add_argument("--r52-queries", type=int, default=16)
    ap.add_argument("--r52-k", type=int, default=4)
    ap.add_argument("--parts", default="long,r52")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rss-limit-gb", type=float, default=14.0)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-reference", dest="reference", action="store_false",
                    help="skip the float32 reference run of half-precision models")
    ap.add_argument("--out", default=str(HERE / "results" / "memory_2cpu"))
    ap.add_argument("--configs", default=None,
                    help=f"comma-separated configurations to run ({', '.join(CONFIGS)}; default "
                         "old,new for long inputs and old,old+trie,new for r52)")
    ap.add_argument("--merge", default=None,
                    help="a .json of an earlier run with the same prompts: its rows are kept, "
                         "except the configurations this run measures again (--configs)")
    args = ap.parse_args()
    if args.worker:
        return _worker(args.worker)
    import torch
    import transformers

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    parts = [p for p in args.parts.split(",") if p]
    prompts = {}
    if "long" in parts:
        prompts["long"] = _boolq_prompts(args.k, args.n_query, args.max_words, args.min_words,
                                         args.seed)
    if "r52" in parts:
        prompts["r52"] = _r52_prompts(args.r52_k, args.r52_queries, args.seed)
    rows: list[dict] = []
    merged_meta = None
    if args.merge:
        try:
            earlier = json.loads(Path(args.merge).read_text())
            merged_meta, earlier_rows = earlier["meta"], list(earlier["rows"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: --merge {args.merge}: not a results file of this benchmark "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
            return 2
        redo = set((args.configs or "").split(","))
        specs_now = {tuple(m.split(":")) for m in args.models.split(",") if m}
        for r in earlier_rows:
            if r["config"] in redo and (r["model"], r["dtype"]) in specs_now:   # measured again
                continue
            if "logprobs" in r:
                r["logprobs"] = np.asarray(r["logprobs"], dtype=np.float64)
            rows.append(r)
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for part, pr in prompts.items():
            (tmp / f"{part}.json").write_text(json.dumps(pr))
        for spec in [m for m in args.models.split(",") if m]:
            model, dtype = spec.split(":")
            for part in prompts:
                configs = ["old", "new"] if part == "long" else ["old", "old+trie", "new"]
                if args.configs:
                    configs = [c for c in args.configs.split(",") if c]
                runs = [(cfg, dtype, CONFIGS[cfg]) for cfg in configs]
                if dtype != "float32" and args.reference and not args.configs:
                    runs.append(("float32 reference", "float32", CONFIGS["new"]))
                for cfg, dt, kw in runs:
                    tag = f"{part}-{model}-{cfg}".replace("+", "_").replace(" ", "_")
                    job = {"tag": tag, "model": model, "dtype": dt, "config": kw,
                           "threads": args.threads, "prompts": str(tmp / f"{part}.json")}
                    r = _run_job(job, tmp, int(args.rss_limit_gb * GB), args.timeout)
                    r.update(part=part, model=model, dtype=dt, config=cfg,
                             truth=prompts[part]["truth"])
                    rows.append(r)
                    print(json.dumps({k: v for k, v in r.items()
                                      if k not in ("logprobs", "predictions", "truth")}),
                          flush=True)
    _compare(rows)
    load1 = os.getloadavg()
    meta = {"machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": args.threads, "load_avg_start": load0, "load_avg_end": load1,
            "seconds_total": time.perf_counter() - t_start, "args": vars(args),
            "prompts": {p: f"{pr['name']}, {len(pr['queries'])} queries"
                        for p, pr in prompts.items()}, "merged_from": merged_meta}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: (np.round(v, 7).tolist() if k == "logprobs" else v) for k, v in r.items()}
             for r in rows]
    from icldistill.artifacts.store import write_text

    write_text(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": clean}, indent=1)
               + "\n")
    text = _report(meta, rows)
    write_text(out.with_suffix(".md"), text)
    print(text)
    return 0


def _summary(rows: list[dict]) -> list[str]:
    """The issue's targets, read off the rows."""
    ok = {(r["part"], r["model"], r["config"]): r for r in rows if "failed" not in r}
    lines = []
    for (part, model, cfg), r in ok.items():
        if cfg != "new":
            continue
        old = ok.get((part, model, "old"))
        what = "long inputs" if part == "long" else "r52 labels"
        ref = ok.get((part, model, "eager-1"))
        if old is None and ref is not None:
            same = "identical" if r.get("same_predictions") == 1.0 else \
                f"{r.get('same_predictions', 0):.1%} identical"
            f32 = r.get("max_abs_diff_float32")
            lines.append(
                f"- {model} ({r['dtype']}), {what}, {r['prompt_tokens'] / r['n']:.0f} tokens per "
                f"prompt: old path killed past the RSS limit; new path peak RSS while scoring "
                f"{r['peak_rss_scoring'] / GB:.2f} GB (process peak with loading "
                f"{r['peak_rss'] / GB:.2f} GB) against {ref['peak_rss_scoring'] / GB:.2f} GB "
                f"for eager-1; {r['speedup']:.2f}x faster than eager-1 (wall); max abs Δ log p "
                f"vs eager-1 {r['max_abs_diff']:.1e}; {same} predictions"
                + (f"; largest difference from float32: eager-1 "
                   f"{ref.get('max_abs_diff_float32', float('nan')):.1e}, new {f32:.1e}"
                   if f32 is not None else "") + ".")
            continue
        if old is None:
            lines.append(f"- {model}, {what}: new path {r['peak_rss_scoring'] / GB:.2f} GB "
                         "peak RSS while scoring (old path did not finish).")
            continue
        same = "identical" if r.get("same_predictions") == 1.0 else \
            f"{r.get('same_predictions', 0):.1%} identical"
        lines.append(
            f"- {model} ({r['dtype']}), {what}: peak RSS while scoring "
            f"{old['peak_rss_scoring'] / GB:.2f} GB old -> {r['peak_rss_scoring'] / GB:.2f} GB "
            f"new (process peak with loading {r['peak_rss'] / GB:.2f} GB); "
            f"{r['speedup']:.2f}x faster (wall); max abs Δ log p {r['max_abs_diff']:.1e}; "
            f"{same} predictions"
            + (f"; largest difference from float32: old {old['max_abs_diff_float32']:.1e}, new "
               f"{r['max_abs_diff_float32']:.1e}" if "max_abs_diff_float32" in r
               and "max_abs_diff_float32" in old else "") + ".")
    return lines


def _report(meta: dict, rows: list[dict]) -> str:
    load0, load1 = meta["load_avg_start"], meta["load_avg_end"]
    lines = [f"# Memory-bounded scoring: old path vs new path ({meta['machine']}, "
             f"{meta['cpus']} CPUs, Python {meta['python']}, torch {meta['torch']}, "
             f"transformers {meta['transformers']}, {meta['threads']} threads)", "",
             f"Load average (1 min) {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
             f"(the 2 cores may be shared with other jobs: timings are noisy); "
             f"{meta['seconds_total'] / 60:.0f} min in all. "
             "`old` = eager attention, fixed batches of 8, a cache copy per label; `new` = the "
             "defaults (sdpa where supported, token-budget batches, labels in one trie-masked "
             "row); `old+trie` = `old` with the trie label pass. Peak RSS scoring = the process's "
             "peak resident memory while scoring (`VmHWM`, reset after loading the model and "
             "one warm-up forward that pages in the weights); above loaded = that minus the "
             "RSS before scoring (in brackets: the scorer's memory model for its largest "
             "batch); peak RSS loading = `ru_maxrss` after `load_model` (transformers' loading "
             "transient, the same for every configuration). Speed-up and Δ / predictions are "
             "relative to `old`; max abs Δ vs float32 compares a half-precision row with the "
             "same model run in float32 (`float32 reference`, new path), to show which path is "
             "closer to exact. `eager-1` = eager attention, one prompt per forward, a cache "
             "copy per label: the reference (speed-up and Δ are relative to it, marked "
             "'vs eager-1') where `old` passes the RSS limit.", ""]
    merged = meta.get("merged_from")
    if merged:
        m0, m1 = merged["load_avg_start"], merged["load_avg_end"]
        lines += [f"Rows of an earlier run on the same prompts are merged in (load {m0[0]:.1f} "
                  f"at its start, {m1[0]:.1f} at its end; {merged['seconds_total'] / 60:.0f} "
                  "min); this run added the rest.", ""]
    lines += [*_summary(rows), ""]
    for part, name in meta["prompts"].items():
        lines += [f"## {name}", "", *_fmt_rows(rows, part), ""]
    return "\n".join(lines)


def rerender(path: str) -> str:
    """The Markdown report of a saved ``.json`` (after editing the layout)."""
    data = json.loads(Path(path).read_text())
    return _report(data["meta"], data["rows"])


if __name__ == "__main__":
    raise SystemExit(main())
