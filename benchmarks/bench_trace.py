"""Tracer overhead: time and peak memory of ``trace`` against a plain forward and TransformerLens.

Run (from the repository root, package installed with the ``models`` extra)::

    python benchmarks/bench_trace.py                                  # qwen2.5-0.5b, 1,024 tokens
    python benchmarks/bench_trace.py --models qwen2.5-0.5b smollm2-135m --json out.json
    python benchmarks/bench_trace.py --modes eager trace-query --tokens 512 --repeats 5
    python benchmarks/bench_trace.py --profile                         # where the tracer spends

For one prompt of about ``--tokens`` tokens (repeated sentiment demonstrations plus a query, the
instruction padded word by word to hit the length) every mode runs in its own subprocess, so
that peak memory is per mode:

``eager``        ``model(input_ids)`` with ``attn_implementation="eager"`` (the tracer's baseline:
                 it computes the same eager attention);
``sdpa``         the same with transformers' default ``"sdpa"`` attention;
``trace-query``  ``icldistill.models.trace(..., positions="query")``;
``trace-all``    ``trace(..., positions="all")`` (every token is a traced query position);
``tl-bridge``    TransformerLens 4.x ``TransformerBridge.run_with_cache`` on the same weights;
``tl-hooked``    TransformerLens 3.x ``HookedTransformer.run_with_cache`` on the same weights.

All forwards run under ``torch.no_grad()`` with full ``[T, V]`` output logits (what ``trace`` asks
the model for too). Time is the median of ``--repeats`` runs after one warm-up (which also pages
in the memory-mapped safetensors weights). On a shared machine another process competing for the
cores slows a 2-thread OpenMP forward several-fold, so before every run the child waits until
other processes use less than ``--quiet`` (default 10 %) of the CPUs, measures that share again
over the run (``/proc/stat`` busy time minus its own CPU time) and repeats disturbed runs; the
table's last column is the largest share over the kept runs. Memory: a thread samples the
resident set (``/proc/self/statm``) every ~2 ms; "forward growth" is the peak during the forward
minus the RSS just before it (after ``gc.collect()`` and ``malloc_trim(0)``, so freed heap pages
of the previous run do not hide the working set), the largest over the kept runs; "RSS at
forward peak" is that peak itself and "total peak" the process's ``ru_maxrss`` (model loading
included). RSS depends on glibc's allocator (per-thread arenas, the dynamic mmap threshold):
``--env MALLOC_ARENA_MAX=1`` runs the children with other allocator settings. Linux only.

TransformerLens is not an icldistill dependency. It goes into virtual environments of its own
outside the package env (see ``benchmarks/README.md``); ``--tl-python`` / ``--tl3-python`` name
their interpreters, and TL modes whose interpreter is missing are skipped. Nothing is downloaded:
the TL models are built from the locally cached HF model (``HF_HUB_OFFLINE=1``), and their logits
are compared with HF's eager logits (max abs difference reported).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MODES = ("eager", "sdpa", "trace-query", "trace-all", "tl-bridge", "tl-hooked")
TL_MODES = ("tl-bridge", "tl-hooked")
TARGET = 1.5  # issue: trace <= 1.5x eager time and <= 1.5x eager peak memory (1,024 tokens)
#: The repository root: the TransformerLens venvs default to ``.venv-tl`` / ``.venv-tl3`` in it
#: (ignored by git, like every ``.venv*`` folder); ``$TL_PYTHON`` / ``$TL3_PYTHON`` or
#: ``--tl-python`` / ``--tl3-python`` name other interpreters.
ROOT = Path(__file__).resolve().parents[1]

_REVIEWS = (
    ("A warm, funny and beautifully acted film.", "positive"),
    ("The plot drags and the dialogue is wooden.", "negative"),
    ("I loved every minute of this charming story.", "positive"),
    ("A tedious mess that wastes a talented cast.", "negative"),
    ("Gorgeous photography and a soundtrack to remember.", "positive"),
    ("The jokes fall flat and the ending makes no sense.", "negative"),
    ("An uplifting tale told with real tenderness.", "positive"),
    ("Two hours of my life I will never get back.", "negative"),
    ("Smart, sharp and surprisingly moving.", "positive"),
    ("Predictable from the first scene to the last.", "negative"),
    ("The lead gives the performance of her career.", "positive"),
    ("Clumsy editing and a script full of holes.", "negative"),
    ("A delightful surprise that kept the whole family smiling.", "positive"),
    ("Loud, long and utterly forgettable.", "negative"),
    ("Every character feels alive and worth caring about.", "positive"),
    ("The director seems to have lost interest halfway through.", "negative"),
    ("A clever thriller with a twist I never saw coming.", "positive"),
    ("Bland visuals, bland acting, bland everything.", "negative"),
    ("Heartfelt, honest and wonderfully paced.", "positive"),
    ("I walked out before the second act was over.", "negative"),
    ("The best comedy I have seen in years.", "positive"),
    ("A confused story drowned in needless special effects.", "negative"),
    ("Quietly brilliant and full of small joys.", "positive"),
    ("The sequel nobody asked for, and it shows.", "negative"),
)
_QUERY = "An unforgettable film with a moving story."
_INSTRUCTION = "Classify the sentiment of each movie review as positive or negative."
_FILLER = ("Each review below comes from an online forum and is followed by its label, "
           "written by a human annotator who read the whole text carefully before deciding. "
           "Mixed reviews were removed, so every label is either clearly positive or clearly "
           "negative, and no review appears twice in the list that follows.").split()


# ============================================================================ prompt
def build_prompt(tokenizer: Any, n_tokens: int) -> Any:
    """A few-shot sentiment prompt of ``n_tokens`` tokens (within a token or two).

    Whole demonstrations (cycling through the review pool) are added while they fit; the
    instruction is then lengthened word by word from a filler text to close the gap.
    """
    from icldistill.data.prompts import Prompt

    def size(demos: list[tuple[str, str]], instruction: str) -> int:
        return len(Prompt(demos, _QUERY, instruction=instruction).tokenize(tokenizer))

    demos: list[tuple[str, str]] = []
    while size([*demos, _REVIEWS[len(demos) % len(_REVIEWS)]], _INSTRUCTION) <= n_tokens:
        demos.append(_REVIEWS[len(demos) % len(_REVIEWS)])
        if len(demos) > 10 * n_tokens:
            raise RuntimeError("prompt does not grow with demonstrations")
    instruction = _INSTRUCTION
    words = iter(_FILLER * (1 + n_tokens // len(_FILLER)))
    while True:
        candidate = instruction + " " + next(words)
        if size(demos, candidate) > n_tokens:
            break
        instruction = candidate
    return Prompt(demos, _QUERY, instruction=instruction)


# ============================================================================ child: measure
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS(threading.Thread):
    """Samples the resident set every ``interval`` seconds until stopped; keeps the peak."""

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = _rss()
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _rss())
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _rss())
        return self.peak


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _cpu_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine so far (all CPUs, from ``/proc/stat``)."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _wait_quiet(limit: float, max_wait: float, window: float = 1.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``limit`` of the machine's CPUs
    over a ``window``; returns the waiting time. This process is idle while it samples."""
    t0 = time.perf_counter()
    ncpu = os.cpu_count() or 1
    while True:
        b0, c0 = _cpu_busy_seconds(), time.process_time()
        time.sleep(window)
        others = (_cpu_busy_seconds() - b0) - (time.process_time() - c0)
        if others / (window * ncpu) < limit or time.perf_counter() - t0 > max_wait:
            return time.perf_counter() - t0


def _run_once(fn: Any) -> dict[str, float]:
    _trim()
    before = _rss()
    sampler = _PeakRSS()
    sampler.start()
    b0 = _cpu_busy_seconds()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    t1, c1 = time.perf_counter(), time.process_time()
    b1 = _cpu_busy_seconds()
    peak = sampler.stop()
    del out
    others = max(0.0, (b1 - b0) - (c1 - c0)) / ((t1 - t0) * (os.cpu_count() or 1))
    return {"seconds": t1 - t0, "cpu_seconds": c1 - c0, "others_cpu_share": others,
            "rss_before_mb": before / 2**20, "rss_peak_mb": peak / 2**20,
            "growth_mb": (peak - before) / 2**20, "samples": sampler.samples}


def _measure(fn: Any, repeats: int, quiet: float, max_wait: float) -> list[dict[str, float]]:
    """One warm-up, then ``repeats`` runs during which other processes used less than ``quiet``
    of the CPUs (a run that other load disturbed is repeated, up to 3x ``repeats`` attempts;
    if quiet runs are still missing, the disturbed ones are kept and show in
    ``others_cpu_share``)."""
    _wait_quiet(quiet, max_wait)
    runs = [dict(_run_once(fn), warmup=True)]
    clean: list[dict[str, float]] = []
    noisy: list[dict[str, float]] = []
    for _ in range(3 * repeats):
        if len(clean) == repeats:
            break
        waited = _wait_quiet(quiet, max_wait)
        r = dict(_run_once(fn), waited_s=waited)
        (clean if r["others_cpu_share"] < quiet else noisy).append(r)
        runs.append(r)
    kept = clean + sorted(noisy, key=lambda r: r["others_cpu_share"])[:repeats - len(clean)]
    for r in kept:
        r["kept"] = True
    return runs


def _tl_hooked(lm: Any) -> Any:
    """TL 3.x HookedTransformer built from the loaded HF model with TL's own converters."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import (
        convert_llama_weights,
        convert_qwen2_weights,
    )

    arch = lm.model.config.architectures[0]
    converters = {"Qwen2ForCausalLM": convert_qwen2_weights,
                  "LlamaForCausalLM": convert_llama_weights}
    if arch not in converters:
        raise RuntimeError(f"no TransformerLens converter wired up here for {arch}")
    # TL derives the config from the local folder's config.json (no hub access)
    cfg = loading.get_pretrained_model_config(str(lm.path), hf_cfg=lm.model.config.to_dict(),
                                              dtype=lm.model.dtype, device="cpu")
    state = converters[arch](lm.model, cfg)
    tl = HookedTransformer(cfg, tokenizer=lm.tokenizer, move_to_device=False)
    # no folding / centring: raw weights, so logits are comparable with HF's
    tl.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False,
                                   center_unembed=False, fold_value_biases=False,
                                   refactor_factored_attn_matrices=False)
    tl.eval()
    return tl


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    mode = args.child
    from icldistill.models import load_model

    load0 = os.getloadavg()
    attn = "sdpa" if mode == "sdpa" else "eager"
    t0 = time.perf_counter()
    lm = load_model(args.model, dtype=torch.float32, attn_implementation=attn, progress=False)
    load_s = time.perf_counter() - t0
    prompt = build_prompt(lm.tokenizer, args.tokens)
    tok = prompt.tokenize(lm.tokenizer)
    ids = tok.input_ids[None]
    info: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    if mode in ("eager", "sdpa"):
        model = lm.model

        def fn() -> Any:
            with torch.no_grad():
                return model(input_ids=ids, use_cache=False)
    elif mode.startswith("trace-"):
        from icldistill.models.tracing import trace

        positions = mode.removeprefix("trace-")

        def fn() -> Any:
            return trace(lm.model, lm.tokenizer, tok, positions=positions)

        res = fn()
        info["traced_positions"] = int(res.positions.numel())
        info["max_decomposition_error"] = float(res.max_decomposition_error)
        del res
    elif mode == "tl-bridge":
        import transformer_lens
        from transformer_lens.model_bridge import TransformerBridge

        info["transformer_lens"] = transformer_lens.__version__ if hasattr(
            transformer_lens, "__version__") else _dist_version("transformer-lens")
        tl = TransformerBridge.boot_transformers(str(lm.path), hf_model=lm.model,
                                                 tokenizer=lm.tokenizer, dtype=torch.float32,
                                                 device="cpu")

        def fn() -> Any:
            with torch.no_grad():
                return tl.run_with_cache(ids)
    elif mode == "tl-hooked":
        info["transformer_lens"] = _dist_version("transformer-lens")
        tl = _tl_hooked(lm)
        lm = None  # the HF copy is not needed by TL; reloaded below for the logit check
        _trim()

        def fn() -> Any:
            with torch.no_grad():
                return tl.run_with_cache(ids)
    else:
        raise SystemExit(f"unknown mode {mode}")

    runs = _measure(fn, args.repeats, args.quiet, args.max_wait)
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if mode in TL_MODES:
        with torch.no_grad():
            logits, cache = tl.run_with_cache(ids)
        info["cache_entries"] = len(cache)
        storages = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes()
                    for v in cache.values()}  # hooks that alias one tensor count once
        info["cache_mb"] = sum(storages.values()) / 2**20
        del cache
        ref_model = load_model(args.model, dtype=torch.float32, attn_implementation="eager",
                               progress=False).model
        with torch.no_grad():
            ref = ref_model(input_ids=ids, use_cache=False).logits
        info["max_abs_logit_diff_vs_hf_eager"] = float((logits - ref).abs().max())
        info["logit_scale"] = float(ref.abs().max())
    if args.profile and mode.startswith("trace-"):
        extra["profile"] = _profile_trace(lm, tok, mode.removeprefix("trace-"))
    timed = [r for r in runs if r.get("kept")]
    print(json.dumps({
        "model": args.model, "tokens": len(tok), "mode": mode, "threads": args.threads,
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith("MALLOC_")},
        "seconds": statistics.median(r["seconds"] for r in timed),
        "seconds_min": min(r["seconds"] for r in timed),
        "others_cpu_share_max": max(r["others_cpu_share"] for r in timed),
        "runs": runs,
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in timed),
        "growth_mb": max(r["growth_mb"] for r in timed),
        "rss_before_mb": timed[-1]["rss_before_mb"],
        "rss_peak_forward_mb": max(r["rss_peak_mb"] for r in timed),
        "total_peak_rss_mb": maxrss_mb, "load_seconds": load_s,
        "loadavg_before": load0, "loadavg_after": os.getloadavg(),
        "torch": torch.__version__, "python": sys.executable, **info, **extra,
    }))


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _profile_trace(lm: Any, tok: Any, positions: str) -> dict[str, Any]:
    """Split the traced forward into attention, the per-head reduction and the rest."""
    import torch

    import icldistill.models.tracing as tracing
    from icldistill.models.tracing import trace

    spent = {"record": 0.0, "attention_total": 0.0, "segment_decomposition": 0.0}
    record, attn = tracing._record, tracing._trace_attention
    # the per-head reduction: the math core's pieces as the tracer imported them
    pieces = {name: getattr(tracing, name)
              for name in ("attention_probs_", "segment_components", "segment_mass")}

    def timed(key: str, f: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    tracing._record = timed("record", record)
    for name, f in pieces.items():
        setattr(tracing, name, timed("segment_decomposition", f))
    # the attention function is looked up by name in transformers' registry at call time
    from transformers import AttentionInterface

    AttentionInterface.register(tracing.TRACE_ATTENTION, timed("attention_total", attn))
    try:
        t0 = time.perf_counter()
        trace(lm.model, lm.tokenizer, tok, positions=positions)
        total = time.perf_counter() - t0
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            trace(lm.model, lm.tokenizer, tok, positions=positions)
    finally:
        tracing._record = record
        for name, f in pieces.items():
            setattr(tracing, name, f)
        AttentionInterface.register(tracing.TRACE_ATTENTION, attn)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
    return {"wall_s": total, "record_s": spent["record"],
            "segment_decomposition_s": spent["segment_decomposition"],
            "attention_incl_record_s": spent["attention_total"], "op_table": table}


# ============================================================================ parent
def _run_child(python: str, mode: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [python, os.path.abspath(__file__), "--child", mode, "--model", model,
           "--tokens", str(args.tokens), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--quiet", str(args.quiet),
           "--max-wait", str(args.max_wait)]
    if args.profile:
        cmd.append("--profile")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.update(kv.split("=", 1) for kv in args.env)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-15:])
        return {"model": model, "mode": mode, "error": tail}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt_load(la: Any) -> str:
    return "/".join(f"{x:.2f}" for x in la)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["qwen2.5-0.5b"])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tl-python",
                    default=os.environ.get("TL_PYTHON", str(ROOT / ".venv-tl" / "bin" / "python")),
                    help="interpreter of the TransformerLens 4.x env (tl-bridge; default "
                         "$TL_PYTHON, else .venv-tl/bin/python in the repository)")
    ap.add_argument("--tl3-python",
                    default=os.environ.get("TL3_PYTHON",
                                           str(ROOT / ".venv-tl3" / "bin" / "python")),
                    help="interpreter of the TransformerLens 3.x env (tl-hooked; default "
                         "$TL3_PYTHON, else .venv-tl3/bin/python in the repository)")
    ap.add_argument("--quiet", type=float, default=0.1,
                    help="a timed run counts only if other processes used less than this share "
                         "of the CPUs during it (others are waited out, then repeated)")
    ap.add_argument("--max-wait", type=float, default=600.0,
                    help="longest wait (s) for a quiet machine before a run")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for the measuring subprocesses, e.g. MALLOC_ARENA_MAX=1")
    ap.add_argument("--profile", action="store_true",
                    help="also profile the trace modes (op table, time in the reduction)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return

    print(f"load average before (1/5/15 min): {_fmt_load(os.getloadavg())}; "
          f"{os.cpu_count()} CPUs; torch threads {args.threads}; median of {args.repeats} runs "
          f"after 1 warm-up, each run with other processes < {args.quiet:.0%} of the CPUs"
          + (f"; subprocess env {' '.join(args.env)}" if args.env else "") + "\n", flush=True)
    pythons = {"tl-bridge": args.tl_python, "tl-hooked": args.tl3_python}
    rows: list[dict[str, Any]] = []
    print("| model | tokens | mode | time (s) | time / eager | forward peak RSS growth (MB) "
          "| growth / eager | RSS at forward peak (MB) | total peak RSS (MB) | load avg 1 min "
          "| others' CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for model in args.models:
        base: dict[str, Any] | None = None
        for mode in args.modes:
            python = pythons.get(mode, sys.executable)
            if not Path(python).exists():
                rows.append({"model": model, "mode": mode,
                             "error": f"skipped: {python} not found"})
                print(f"| {model} | | {mode} | skipped: no interpreter at {python} "
                      "| | | | | | | |", flush=True)
                continue
            r = _run_child(python, mode, model, args)
            rows.append(r)
            if "error" in r:
                msg = r["error"].splitlines()[-1] if r["error"] else "failed"
                print(f"| {model} | | {mode} | failed: {msg} | | | | | | | |", flush=True)
                continue
            if mode == "eager":
                base = r
            t_ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
            m_ratio = f"{r['growth_mb'] / base['growth_mb']:.2f}x" if base else "-"
            print(f"| {model} | {r['tokens']:,} | {mode} | {r['seconds']:.2f} | {t_ratio} | "
                  f"{r['growth_mb']:,.0f} | {m_ratio} | {r['rss_peak_forward_mb']:,.0f} | "
                  f"{r['total_peak_rss_mb']:,.0f} | {r['loadavg_before'][0]:.2f} | "
                  f"{r['others_cpu_share_max']:.0%} |",
                  flush=True)
    print(f"\nload average after (1/5/15 min): {_fmt_load(os.getloadavg())}")
    _summary(rows)
    if args.json:
        from icldistill.artifacts.store import write_text

        write_text(args.json, json.dumps(rows, indent=2))


def _summary(rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if "error" not in r]
    print()
    for model in dict.fromkeys(r["model"] for r in ok):
        by = {r["mode"]: r for r in ok if r["model"] == model}
        if "eager" not in by:
            continue
        e = by["eager"]
        for mode in ("trace-query", "trace-all"):
            if mode in by:
                t = by[mode]["seconds"] / e["seconds"]
                m = by[mode]["growth_mb"] / e["growth_mb"]
                print(f"- {model}, {mode}: time {t:.2f}x eager "
                      f"({'meets' if t <= TARGET else 'MISSES'} <= {TARGET}x), forward memory "
                      f"{m:.2f}x eager ({'meets' if m <= TARGET else 'MISSES'} <= {TARGET}x)")
                if "max_decomposition_error" in by[mode]:
                    print(f"  traced positions {by[mode]['traced_positions']}, max "
                          f"decomposition error {by[mode]['max_decomposition_error']:.1e}")
        for mode in TL_MODES:
            if mode in by:
                r = by[mode]
                print(f"- {model}, {mode} (TransformerLens {r.get('transformer_lens')}): max |logit"
                      f" - HF eager logit| = {r['max_abs_logit_diff_vs_hf_eager']:.2e} (logits up"
                      f" to {r['logit_scale']:.1f}); cache {r['cache_entries']} tensors, "
                      f"{r['cache_mb']:,.0f} MB")
        for mode in ("trace-query", "trace-all"):
            prof = by.get(mode, {}).get("profile")
            if prof:
                print(f"\n{model}, {mode} profile: wall {prof['wall_s']:.2f} s, attention "
                      f"function incl. reduction {prof['attention_incl_record_s']:.2f} s, "
                      f"_record {prof['record_s']:.2f} s (of which segment_decomposition "
                      f"{prof['segment_decomposition_s']:.2f} s)\n")
                print(prof["op_table"])


if __name__ == "__main__":
    main()
