"""Few-shot accuracy of every selector on real tasks and packaged models (issue 4, item 6).

Runs the grid tasks x selectors x k on each model through
:class:`icldistill.evaluation.harness.Harness`,
appending every finished unit to ``<out>/results.jsonl`` (resumable: rerun the same command
after an interruption), then writes ``<out>/report.md`` and ``report.html`` with the figures.

    python benchmarks/bench_fewshot.py                         # full grid (hours on 2 CPU cores)
    python benchmarks/bench_fewshot.py --models smollm2-135m --tasks amazon,yelp --ks 4
    python benchmarks/bench_fewshot.py --report-only           # rebuild the report
    python benchmarks/bench_fewshot.py --models qwen2.5-0.5b --dtype bfloat16 --threads 1 &
    python benchmarks/bench_fewshot.py --models qwen2.5-0.5b --dtype bfloat16 --threads 1 &

Several processes started with the same command share the grid: a worker runs a unit only
under its lock (``<out>/locks/<key>.lock``, :func:`icldistill.artifacts.store.unit_lock`, taken
without
waiting) and skips units another live worker holds; the operating system releases a dead
worker's locks, so its units are picked up by the next pass or the next run. Claim files of the
former scheme (``<out>/claims/<key>`` holding a live worker's pid) are still honoured, so a
worker of this version can join workers started before it.

A random-init control of the same grid (the evidence standard: a real-model claim counts only
when the trained model differs from an architecture-identical model with random weights):

    python benchmarks/bench_fewshot.py ... --control 1 --out DIR-control-1    # run it
    python benchmarks/bench_fewshot.py ... --report-only --control-dir DIR-control-1

The first runs the grid on each model's random twin (``random_twin``, initialisation seed 1) in
its own folder, marked by ``control.json`` (a folder holds one kind of model only); the second
sets the control's paired comparisons beside the trained grid's in the report ("Against a
random-init control").

Defaults: tasks amazon, imdb, yelp, rt-sentiment, rt-subjectivity, r8 (+ boolq with
``--tasks ...,boolq``), all selectors, k in {4, 8}, 200 test inputs per task, 3 seeds for the
randomised parts, MiniLM embeddings for selection and for the reported MMD.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from icldistill.artifacts.fetch import pid_alive
from icldistill.artifacts.store import held_locks, unit_lock, write_json
from icldistill.cli.options import CommandParser, positive_float, positive_int, thread_count
from icldistill.core.stats import check_pairs, majority_shares, paired_comparisons
from icldistill.core.validation import InputError
from icldistill.evaluation.harness import (
    Harness,
    Task,
    UnitSpec,
    load_predictions,
    load_results,
    unit_grid,
)
from icldistill.evaluation.precision import compare_precisions
from icldistill.models.registry import REGISTRY, unknown_model_message
from icldistill.reporting.reports import write_comparison_report
from icldistill.selection import SELECTORS

HERE = Path(__file__).resolve().parent
TASKS = ("amazon", "imdb", "yelp", "rt-sentiment", "rt-subjectivity", "r8")
MODELS = ("smollm2-135m", "qwen2.5-0.5b")


def _legacy_claim_held(out: Path, key: str) -> bool:
    """Whether ``<out>/claims/<key>`` (the former claim files) names another live worker."""
    try:
        pid = int((out / "claims" / key).read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    return pid > 0 and pid != os.getpid() and pid_alive(pid)


def run_shared(h: Harness, out: Path, units: list[UnitSpec], *,
               deadline: float | None = None) -> None:
    """Run ``units`` through ``h``, sharing them with other workers on the folder ``out``.

    A unit is run only under its lock, taken without waiting; units held by another worker
    are skipped, and retried once at the end (their worker may have died meanwhile).
    ``deadline`` (``time.time()`` value) stops starting new units.
    """
    skipped: list[UnitSpec] = []
    for second in (False, True):
        for u in skipped if second else units:
            if deadline is not None and time.time() > deadline:
                print(f"time budget reached; rerun to resume ({out})", file=sys.stderr)
                return
            key = u.key(h.task(u.task).fingerprint)
            if key in h.finished() or _legacy_claim_held(out, key):
                continue
            with unit_lock(out, key, blocking=False) as mine:
                if mine:
                    h.run([u])
                elif not second:
                    skipped.append(u)


def others_running(out: Path) -> bool:
    """Whether another worker holds a unit of ``out`` (a lock, or a former claim file)."""
    claims = out / "claims"
    legacy = claims.is_dir() and any(_legacy_claim_held(out, p.name) for p in claims.iterdir())
    return legacy or bool(held_locks(out))


def incomplete_groups(grid: set, results: list) -> dict[str, tuple[int, int]]:
    """``"model k=K"`` -> (units finished, units in ``grid``) for every (model, k) group of
    ``grid`` that ``results`` do not finish; the report's bar gives these no verdict."""
    finished = grid & {r.spec for r in results}
    per_group = Counter(f"{u.model_label} k={u.k}" for u in grid)
    done = Counter(f"{u.model_label} k={u.k}" for u in finished)
    return {tag: (done[tag], n) for tag, n in sorted(per_group.items()) if done[tag] < n}


def control_loader(seed: int, progress: bool = True):
    """``name, dtype=... -> LoadedModel`` of the registry model's random-init twin (seed
    ``seed``; :func:`icldistill.lab.experiments.phenomena.twin_loader`)."""
    from icldistill.lab.experiments.phenomena import twin_loader

    return twin_loader(seed, progress=progress)


def check_control_folder(out: Path, seed: int | None) -> str | None:
    """Why ``out`` cannot take this run (one line), or ``None``: a control folder
    (``control.json``) holds the units of one random-init seed only, a trained folder none."""
    marker = out / "control.json"
    mark = json.loads(marker.read_text()) if marker.exists() else None
    if seed is None:
        if mark is not None:
            return (f"{out} is a random-init control folder (seed {mark['seed']}); pass "
                    f"--control {mark['seed']} to add to it")
        return None
    if isinstance(seed, bool) or seed < 1:
        return f"--control takes an initialisation seed >= 1, got {seed}"
    if mark is None:
        if load_results(out):
            return (f"{out} holds trained-model results; give the control its own folder "
                    "(--out)")
        out.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"control": "random-init", "seed": seed})
        return None
    if mark.get("seed") != seed:
        return f"{out} is the control folder of seed {mark.get('seed')}, not {seed}"
    return None


def control_dir_problem(folder: Path) -> str | None:
    """Why ``--control-dir folder`` is not a control folder (one line), or ``None``."""
    if (Path(folder) / "control.json").exists():
        return None
    return (f"--control-dir {folder}: not a control folder (no control.json; run the grid "
            "there with --control SEED)")


def read_control_paired(folder: Path) -> list:
    """The paired comparisons of a control folder (its ``paired.json``)."""
    from icldistill.core.stats import PairedComparison

    problem = control_dir_problem(folder)
    if problem is not None:
        raise ValueError(problem)
    path = folder / "paired.json"
    if not path.exists():
        raise ValueError(f"--control-dir {folder}: no paired.json yet (write its report first)")
    return [PairedComparison(**d) for d in json.loads(path.read_text())]


def model_dtypes(spec: str, models: list[str],
                 ks: list[int] | None = None) -> dict[str | tuple[str, int], str]:
    """``--dtype``: one precision for every model, or ``model=dtype,...`` (models not named
    stay float32), where ``model@k=dtype`` sets one k's block of a model (it wins over the
    model's entry: ``qwen2.5-0.5b=bfloat16,qwen2.5-0.5b@4=float32``). Keys: model names, and
    ``(model, k)`` for the blocks named. Raises ValueError naming what is not understood."""
    allowed = ("float32", "bfloat16", "float16")
    if "=" not in spec:
        if spec not in allowed:
            raise ValueError(f"--dtype {spec!r}: expected one of {', '.join(allowed)}")
        return dict.fromkeys(models, spec)
    out: dict[str | tuple[str, int], str] = dict.fromkeys(models, "float32")
    seen: set[str] = set()
    for part in filter(None, spec.split(",")):
        name, _, dtype = part.partition("=")
        model, at, k_text = name.partition("@")
        if model not in models:
            raise ValueError(f"--dtype names {model!r}, which is not in --models")
        if dtype not in allowed:
            raise ValueError(f"--dtype {part!r}: expected one of {', '.join(allowed)}")
        if name in seen:
            raise ValueError(f"--dtype sets {name!r} twice")
        seen.add(name)
        if not at:
            out[model] = dtype
            continue
        if not k_text.isdigit() or (ks is not None and int(k_text) not in ks):
            raise ValueError(f"--dtype {part!r}: {k_text!r} is not one of --ks "
                             f"({','.join(map(str, ks or []))})")
        out[(model, int(k_text))] = dtype
    return out


def grid_units(models: list[str], dtypes: dict, *, ks: list[int], **kw) -> list[UnitSpec]:
    """:func:`unit_grid` of every model and k in its own precision (``dtypes`` as
    :func:`model_dtypes` returns it)."""
    return [u for m in models for k in ks
            for u in unit_grid(models=[m], ks=[k], dtype=dtypes.get((m, k), dtypes[m]), **kw)]


def main(argv: list[str] | None = None) -> int:
    ap = CommandParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--selectors", default=",".join(SELECTORS))
    ap.add_argument("--ks", default="4,8")
    ap.add_argument("--seeds", type=positive_int, default=3)
    ap.add_argument("--n-test", type=positive_int, default=200)
    ap.add_argument("--pool-size", type=positive_int, default=None,
                    help="cap every task's demonstration pool at a label-stratified sample of "
                         "this size (seeded; default the whole pool)")
    ap.add_argument("--batch-size", type=positive_int, default=8)
    ap.add_argument("--threads", type=thread_count, default=None)
    ap.add_argument("--dtype", default="float32",
                    help="precision of the models' weights (logits stay float32): float32, "
                         "bfloat16 or float16 for every model, or per model, e.g. "
                         "smollm2-135m=float32,qwen2.5-0.5b=bfloat16; model@k=dtype sets one k's "
                         "block (qwen2.5-0.5b=bfloat16,qwen2.5-0.5b@4=float32)")
    ap.add_argument("--out", default=str(HERE / "results" / "fewshot"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--max-minutes", type=positive_float, default=None,
                    help="stop starting new units after this many minutes (resume later)")
    ap.add_argument("--no-report", action="store_true",
                    help="compute the units and exit without writing the report (a worker of a "
                         "shared folder whose report covers more than this command)")
    ap.add_argument("--report-only-if-done", action="store_true",
                    help="write the report only when no other worker holds a unit")
    ap.add_argument("--status", action="store_true",
                    help="print where this grid stands in --out (units done, running, partly "
                         "scored, to do; estimated CPU-hours left) and exit without computing")
    ap.add_argument("--control", type=positive_int, default=None, metavar="SEED",
                    help="run the grid on each model's random-init twin (initialisation seed "
                         "SEED >= 1) in a folder of its own, marked by control.json")
    ap.add_argument("--selections-from", default=None, metavar="DIR",
                    help="with --control: the twin's units take the demonstrations the "
                         "trained grid in DIR chose (needed for model-space selectors such as "
                         "mmd-katt, whose representation is the trained model's)")
    ap.add_argument("--katt-concordance", action="store_true",
                    help="also measure each item's MMD² to its query in the trained model's "
                         "K_att space (keys/values of its demo-carrying heads) for the "
                         "report's within-item concordance; encodes each task's pool with "
                         "the model once (cached), and stores the values in "
                         "OUT/item_mmd.jsonl, which later reports read without it")
    ap.add_argument("--control-dir", default=None, metavar="DIR",
                    help="a control folder of this grid: its paired comparisons go beside "
                         "these in the report")
    ap.add_argument("--posthoc", nargs=2, action="append", default=None,
                    metavar=("SELECTOR", "BASELINE"),
                    help="an exploratory comparison chosen after seeing the results (paired, "
                         "in a Holm family of its own; repeatable), e.g. --posthoc vote-k mmd; "
                         "the report labels these post hoc")
    args = ap.parse_args(argv)
    out = Path(args.out)
    problem = None
    try:
        posthoc = check_pairs(args.posthoc or [])
    except InputError as exc:
        print(f"error: --posthoc: {exc}", file=sys.stderr)
        return 2
    if args.selections_from and args.control is None:
        problem = "--selections-from gives a control the trained grid's prompts; add --control"
    model_space = [s for s in args.selectors.split(",")
                   if getattr(SELECTORS.get(s), "preferred_encoder", None)]
    if problem is None and args.control is not None and model_space \
            and not args.selections_from:
        problem = (f"{', '.join(model_space)} select in the model's own representation, and a "
                   "twin's is random: pass --selections-from TRAINED_DIR so the twin reads the "
                   "trained model's prompts")
    if problem is None:
        problem = check_control_folder(out, args.control)
    control_paired = control_results = None
    if problem is None and args.control_dir:
        try:
            control_paired = read_control_paired(Path(args.control_dir))
            control_results = load_results(args.control_dir)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    models = [m for m in args.models.split(",") if m]
    try:
        ks = [int(k) for k in args.ks.split(",") if k]
    except ValueError:
        print(f"error: --ks {args.ks!r}: expected integers separated by commas",
              file=sys.stderr)
        return 2
    try:
        dtypes = model_dtypes(args.dtype, models, ks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    selectors = [s for s in args.selectors.split(",") if s]
    try:    # a name listed twice, an unknown selector, k < 1: one line, exit 2
        labels = {u.label for u in unit_grid(models=models, tasks=tasks, selectors=selectors,
                                             ks=ks, seeds=args.seeds, n_test=args.n_test)}
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    unknown_models = [m for m in models if m not in REGISTRY and not Path(m).exists()]
    if unknown_models:      # --status would list a grid no model can run
        print(f"error: {unknown_model_message(unknown_models[0])}", file=sys.stderr)
        return 2
    unknown = sorted({x for pair in posthoc for x in pair} - labels)
    if unknown:      # before any work: a typo should not cost a grid
        print(f"error: --posthoc names {', '.join(map(repr, unknown))}, which this grid does "
              f"not run (its selectors: {', '.join(sorted(labels))})", file=sys.stderr)
        return 2
    run_cmd = (f"python benchmarks/bench_fewshot.py --models {','.join(models)} --tasks "
               f"{','.join(tasks)} --selectors {','.join(selectors)} --ks {args.ks} "
               f"--seeds {args.seeds} --n-test {args.n_test}"
               + (f" --pool-size {args.pool_size}" if args.pool_size else "")
               + (f" --dtype {args.dtype}" if args.dtype != "float32" else "")
               + (f" --out {args.out}" if Path(args.out) != HERE / "results" / "fewshot"
                  else "")
               + (f" --control {args.control}" if args.control is not None else "")
               + (f" --selections-from {args.selections_from}" if args.selections_from
                  else ""))
    run_cmd += "".join(f" --posthoc {a} {b}" for a, b in posthoc)
    report_cmd = (run_cmd + " --report-only"
                  + (f" --control-dir {args.control_dir}" if args.control_dir else ""))
    cmds = [run_cmd + "   # resumable: rerun to continue",
            report_cmd + "   # rebuild this report from results.jsonl"]
    if args.status:
        if not out.is_dir():
            print(f"error: --status: {out} does not exist (nothing has run there yet)",
                  file=sys.stderr)
            return 2
        tasks_ = ({t: Task.from_registry(t, pool_size=args.pool_size, progress=False)
                   for t in tasks} if args.pool_size else None)
        # a control's units not yet timed are timed by the trained units whose prompts it reads
        h = Harness(out, tasks=tasks_, progress=False,
                    selections_from=args.selections_from if args.control is not None else None)
        st = h.status(grid_units(models, dtypes, tasks=tasks, selectors=selectors, ks=ks,
                                 seeds=args.seeds, n_test=args.n_test))
        print(st.summary(workers=max(1, st.count("running"))))
        return 0
    if not args.report_only:
        tasks_ = ({t: Task.from_registry(t, pool_size=args.pool_size) for t in tasks}
                  if args.pool_size else None)
        h = Harness(out, tasks=tasks_, batch_size=args.batch_size, progress=True,
                    model_loader=None if args.control is None else control_loader(args.control),
                    selections_from=args.selections_from)
        t0 = time.time()
        units = grid_units(models, dtypes, tasks=tasks, selectors=selectors, ks=ks,
                           seeds=args.seeds, n_test=args.n_test)
        # cheapest first, so an interrupted run covers every task: set-level selectors (one
        # prefix pass per unit) before per-query ones, k=4 before k=8
        units.sort(key=lambda u: (models.index(u.model), not SELECTORS[u.selector].shared,
                                  u.k, tasks.index(u.task)))
        run_shared(h, out, units, deadline=None if args.max_minutes is None
                   else t0 + 60 * args.max_minutes)
        if args.no_report:
            return 0
        if args.report_only_if_done and others_running(out):
            print("other workers are still running; they write the report", file=sys.stderr)
            return 0
    results = load_results(out)
    if not results:
        print("no results yet", file=sys.stderr)
        return 1
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    grid = set(grid_units(models, dtypes, tasks=tasks, selectors=selectors, ks=ks,
                          seeds=args.seeds, n_test=args.n_test))
    n_done = len(grid & {r.spec for r in results})
    incomplete = incomplete_groups(grid, results)
    # the same units in another precision (e.g. a block first run in float32 on a CPU without
    # bf16 instructions): compared with their twins, kept out of the grid's tables
    preds = load_predictions(out)
    precision = compare_precisions(results, preds, selections_dir=out / "selections")
    outside = sorted(Counter((r.spec.model_label, r.spec.k) for r in results
                             if r.spec not in grid).items())
    results = [r for r in results if r.spec in grid]
    if not results:
        print(f"no results of this command's grid in {out} yet", file=sys.stderr)
        return 1
    status = (f"This command's grid: {n_done} of {len(grid)} units finished"
              + ("." if n_done == len(grid) else
                 " — **incomplete**: every table covers the finished units only (per-query "
                 "selectors and tasks not yet run are missing); rerun the command to continue."))
    notes = [
        status,
        *([f"Random-init control: every model is an architecture-identical twin with weights "
           f"initialised under seed {args.control} (`random_twin`), reading the same prompts "
           "as the trained model (MiniLM selectors choose the same demonstrations; "
           "`--selections-from` gives every unit the trained unit's own)."]
          if args.control is not None else []),
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU threads, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; load average at report time "
        f"{load[0]:.1f}.",
        f"Accuracy is over the first {'/'.join(map(str, sorted({r.n for r in results})))} test "
        "inputs of each "
        "task's seeded test order (every selector of a task scores the same items); one "
        "demonstration pool per task (the training part of its split"
        + (f", capped at a label-stratified sample of {args.pool_size} items with "
           "`--pool-size`" if args.pool_size else "") + ").",
        f"Deterministic selectors run once; `random` runs {args.seeds} seeds (± = std over "
        "seeds).",
        "MMD² is biased, Gaussian kernel on MiniLM embeddings with the median-heuristic "
        "bandwidth of pool + test, the same kernel for every selector of a task.",
    ]
    if outside:
        notes.append("Not in the tables: "
                     + "; ".join(f"{n} unit{'s' * (n > 1)} of {m} at k = {k}"
                                 for (m, k), n in outside)
                     + " in this folder, outside this command's grid (other models, "
                       "precisions, k, tasks, selectors or test sizes)"
                     + (". Units in two precisions are compared in \"The same units in two "
                        "precisions\"." if precision else "."))
    half = sorted({r.spec.model_label for r in results if r.spec.dtype != "float32"})
    if half:
        note = (f"{', '.join(half)}: weights and activations in half precision with the output "
                "head in float32 (`--dtype`)")
        prec = HERE / "results" / "precision_2cpu.json"
        if prec.exists():
            rows = json.loads(prec.read_text())["rows"]
            agree = [r["prediction_agreement"] for r in rows]
            speed = [r["speedup"] for r in rows]
            note += (f"; against float32 on the same prompts ({len(rows)} runs of "
                     "`python benchmarks/bench_precision.py`, `precision_2cpu.md`), predictions "
                     f"agree on {min(agree):.1%}-{max(agree):.1%} of queries, "
                     f"{min(speed):.1f}x-{max(speed):.1f}x faster")
        notes.append(note + ".")
    # paired comparisons on the same test items (predictions.jsonl), vs kNN and random
    paired = paired_comparisons(results, preds, baselines=("knn", "random"),
                                n_boot=2000, n_perm=10_000, seed=0)
    paired_f1 = paired_comparisons(results, preds, baselines=("knn", "random"), n_boot=2000,
                                   seed=0, metric="macro_f1")
    notes.append("Paired comparisons: 2000 bootstrap resamples (seed 0); sign-flip p-values "
                 "exact (the differences lie on a lattice of thirds and halves), with 10000 "
                 "random sign vectors (seed 0) only for differences off a lattice; records "
                 "in `paired.json` (accuracy) and `paired_macro_f1.json` (macro-F1, 2000 paired "
                 "bootstrap resamples, seed 0).")
    posthoc_paired = control_posthoc = None
    unknown = sorted({x for pair in posthoc for x in pair} - {r.spec.label for r in results})
    if unknown:
        print(f"error: --posthoc names {', '.join(unknown)}, which no unit of {out} ran",
              file=sys.stderr)
        return 2
    if posthoc:
        posthoc_paired = paired_comparisons(results, preds, pairs=posthoc, n_boot=2000,
                                            n_perm=10_000, seed=0)
        if control_results is not None:
            control_posthoc = paired_comparisons(control_results,
                                                 load_predictions(args.control_dir),
                                                 pairs=posthoc, n_boot=2000, n_perm=10_000,
                                                 seed=0)
        notes.append("Post-hoc comparisons (--posthoc): the same paired "
                     "statistics and seeds, a Holm family of their own per model and k; records "
                     "in `paired_posthoc.json`.")
    # whether each test item's label was among its demonstrations (selections/ + pool labels)
    tasks_ = ({t: Task.from_registry(t, pool_size=args.pool_size, progress=False)
               for t in {r.spec.task for r in results}} if args.pool_size else None)
    # (with each item's MMD² to its query: the within-item concordance section)
    harness = Harness(out, tasks=tasks_, progress=False)
    coverage = harness.label_coverage(results, item_mmd=True)
    # K_att-space values: computed with --katt-concordance, else those already stored
    katt = harness.item_mmd(results, compute=args.katt_concordance)
    control_coverage = (None if control_results is None else
                        Harness(args.control_dir, tasks=tasks_, progress=False)
                        .label_coverage(control_results, item_mmd=True))
    rep = write_comparison_report(results, out, commands=cmds, notes=notes, paired=paired,
                                  paired_macro_f1=paired_f1, coverage=coverage,
                                  majority=majority_shares(results, preds),
                                  control_paired=control_paired,
                                  control_coverage=control_coverage,
                                  control_label=f"the random-init control in {args.control_dir}",
                                  posthoc=posthoc_paired, control_posthoc=control_posthoc,
                                  precision=precision or None, katt_mmd=katt or None,
                                  incomplete=incomplete, random_init=args.control is not None,
                                 title="Demonstration selection: few-shot accuracy" + (
                                     "" if args.control is None else
                                     f", random-init control (seed {args.control})") + (
                                     "" if n_done == len(grid) else
                                     f" (incomplete: {n_done} of {len(grid)} units)"))
    print(rep.markdown.read_text())
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except InputError as exc:       # bad input found after parsing: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
