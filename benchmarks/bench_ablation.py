"""Which part of the MMD idea carries the gain: representation x objective, paired against kNN.

Issue 12, item 4. On one model (default smollm2-135m) and a subset of tasks, every objective
runs on every representation; each unit is compared with kNN on MiniLM embeddings (the
retriever people use) on the same test items (:func:`icldistill.core.stats.paired_comparisons`,
Holm over the comparisons of the table). Units run through
:class:`icldistill.evaluation.harness.Harness`
(resumable: rerun the same command after an interruption) and several processes started with
the same command share the work, as in ``bench_fewshot.py``.

    python benchmarks/bench_ablation.py --reuse benchmarks/results/selection-grid
                                    # the committed ablation (the grid's identical units copied)
    python benchmarks/bench_ablation.py --report-only       # rebuild ablation.md / .json

Random-init control (a real-model claim counts only where the trained model differs from its
architecture-identical twin): ``--control SEED --out DIR`` scores every unit on the twin, in a
folder of its own marked ``control.json``, with the demonstrations the trained model's units
chose (``--selections-from``, default the trained ablation folder: the representations of the
*trained* model pick the prompts, the twin only reads them). Then ``--report-only
--control-dir DIR`` on the trained folder sets each comparison beside the twin's.

    python benchmarks/bench_ablation.py --control 1 --out benchmarks/results/ablation-control-1
    python benchmarks/bench_ablation.py --report-only \
        --control-dir benchmarks/results/ablation-control-1

Representations: ``minilm`` (sentence embeddings of the inputs), ``hidden:L`` (the reading
model's mean hidden state at layer ``L``, default the middle layer), ``kv:auto`` (keys and
values of the demo-carrying heads under normalised ``K_att``, chosen from traces). Objectives:
kNN, set-level MMD, per-query MMD, the joint input-label kernel (set level), the local target
(the query's neighbourhood) without and with the joint kernel, and per-query MMD / local joint
MMD with the diversity term (``diversity=1``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from icldistill.cli.options import CommandParser, positive_int, thread_count
from icldistill.core.stats import paired_comparisons
from icldistill.core.validation import InputError
from icldistill.evaluation.harness import Harness, Task, UnitSpec, load_predictions, load_results
from icldistill.reporting.reports import (
    ablation_pairs,
    control_checks,
    merge_comparisons,
    write_ablation_report,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fewshot import (
    check_control_folder,
    control_dir_problem,
    control_loader,
    others_running,
    run_shared,
)

HERE = Path(__file__).resolve().parent
TASKS = ("rt-sentiment", "r8", "openbookqa")
#: (display name, selector, params) of every objective.
OBJECTIVES: tuple[tuple[str, str, tuple[tuple[str, object], ...]], ...] = (
    ("kNN", "knn", ()),
    ("set MMD", "mmd", ()),
    ("per-query MMD", "mmd-query", ()),
    ("joint kernel (set)", "mmd-joint", ()),
    ("local MMD", "mmd-local", (("label_weight", 0.0),)),
    ("local joint MMD", "mmd-local", ()),
    ("per-query MMD + diversity", "mmd-query", (("diversity", 1.0),)),
    ("local joint MMD + diversity", "mmd-local", (("diversity", 1.0),)),
)


def units(model: str, dtype: str, tasks: list[str], encoders: list[str], k: int,
          n_test: int) -> list[UnitSpec]:
    return [UnitSpec(model, task, sel, k, encoder=enc, n_test=n_test, params=params,
                     dtype=dtype)
            for enc in encoders for task in tasks for _, sel, params in OBJECTIVES]


def reuse_problem(source: str, control: int | None) -> str | None:
    """Why ``--reuse source`` cannot serve this run (one line), or ``None``: units are copied
    only between folders of the same kind of model (trained, or the random-init control of the
    same seed)."""
    mark = Path(source) / "control.json"
    seed = json.loads(mark.read_text()).get("seed") if mark.exists() else None
    if seed == control:
        return None
    if control is None:
        return (f"--reuse {source} is a random-init control folder (seed {seed}); a trained "
                "ablation copies trained units only")
    return (f"--reuse {source} holds " + ("trained units" if seed is None else
                                           f"the control of seed {seed}")
            + f"; the control of seed {control} copies only its own kind")


def main(argv: list[str] | None = None) -> int:
    ap = CommandParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--encoders", default=None,
                    help="comma-separated representations (default minilm, the middle "
                         "layer's hidden state, kv:auto)")
    ap.add_argument("--k", type=positive_int, default=8)
    ap.add_argument("--n-test", type=positive_int, default=300)
    ap.add_argument("--pool-size", type=positive_int, default=2000,
                    help="label-stratified cap of every task's pool (as in the selection grid)")
    ap.add_argument("--threads", type=thread_count, default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "ablation"))
    ap.add_argument("--reuse", default=None, metavar="DIR",
                    help="copy units another results folder finished with the same key (the "
                         "same model, task, selector, k, encoder, test items and pool; e.g. "
                         "the selection grid's kNN on MiniLM) instead of recomputing them")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--control", type=positive_int, default=None, metavar="SEED",
                    help="score every unit on the model's random-init twin (seed SEED >= 1), in "
                         "a folder of its own, with the trained units' demonstrations")
    ap.add_argument("--selections-from", default=str(HERE / "results" / "ablation"),
                    metavar="DIR", help="with --control: the trained ablation whose "
                                        "selections the twin reads (default the committed one)")
    ap.add_argument("--control-dir", default=None, metavar="DIR",
                    help="a control folder of this ablation: its comparisons go beside these")
    ap.add_argument("--katt-concordance", action="store_true",
                    help="also measure each item's MMD² to its query in the model's K_att "
                         "space for the within-item section (encodes each task's pool with the "
                         "model once, cached; stored in OUT/item_mmd.jsonl, which later reports "
                         "read without it)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    problem = reuse_problem(args.reuse, args.control) if args.reuse else None
    if problem is None:
        problem = check_control_folder(out, args.control)
    if problem is None and args.control_dir:
        problem = control_dir_problem(Path(args.control_dir))
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = [t for t in args.tasks.split(",") if t]
    control = args.control is not None
    h = Harness(out, progress=True,
                tasks={t: Task.from_registry(t, pool_size=args.pool_size) for t in tasks},
                model_loader=control_loader(args.control) if control else None,
                selections_from=args.selections_from if control and not args.report_only
                else None)
    encoders = args.encoders.split(",") if args.encoders else None
    if encoders is None:
        cfg = h.model(args.model, args.dtype).model.config
        encoders = ["minilm", f"hidden:{cfg.num_hidden_layers // 2}", "kv:auto"]
    todo = units(args.model, args.dtype, tasks, encoders, args.k, args.n_test)
    cmd = (f"python benchmarks/bench_ablation.py --model {args.model} --dtype {args.dtype} "
           f"--tasks {','.join(tasks)} --encoders {','.join(encoders)} --k {args.k} "
           f"--n-test {args.n_test} --pool-size {args.pool_size}"
           + (f" --out {args.out}" if out != HERE / "results" / "ablation" else "")
           + (f" --control {args.control} --selections-from {args.selections_from}"
              if control else ""))
    if args.reuse and not args.report_only:
        h.import_finished(args.reuse, todo)
    if not args.report_only:
        run_shared(h, out, todo)
        if others_running(out):
            print("other workers are still running; they write the report", file=sys.stderr)
            return 0
    results = load_results(out)
    if not results:
        print("no results yet", file=sys.stderr)
        return 1
    preds = load_predictions(out)
    paired = paired_comparisons(results, preds, baselines=("knn",))
    contrasts = paired_comparisons(results, preds, pairs=ablation_pairs(OBJECTIVES, encoders))
    load = os.getloadavg()
    notes = [f"Machine: {platform.machine()}, {os.cpu_count()} CPU threads, torch "
             f"{torch.__version__}; load average at report time {load[0]:.1f}; "
             f"written {time.strftime('%Y-%m-%d %H:%M')}.",
             "Baseline: kNN on MiniLM embeddings (`knn`). Every other cell is paired with it "
             "on the same test items; Holm over every comparison of this (model, k)."]
    heads = sorted((out / "heads").glob("*.json"))
    for p in heads:
        rec = json.loads(p.read_text())
        notes.append(f"`kv:auto` on {rec['task']}: layer {rec['layer']}, KV heads "
                     f"{rec['heads']} (most demo-carrying over {rec['n_prompts']} calibration "
                     "prompts).")
    finished = {r.key for r in results}
    n_done = sum(u.key(h.task(u.task).fingerprint) in finished for u in todo)
    title = "Ablation: representation x objective, paired against kNN"
    if control:
        title += f", random-init control (seed {args.control})"
        notes.insert(0, f"Random-init control: every unit scored by an architecture-identical "
                        f"twin of {args.model} with weights initialised under seed "
                        f"{args.control}, reading the demonstrations the trained model's units "
                        f"chose (`selections/` of {args.selections_from}).")
    checks = []
    control_coverage = None
    if args.control_dir:
        c_res = load_results(args.control_dir)
        control_coverage = Harness(args.control_dir, tasks=h.tasks, progress=False
                                   ).label_coverage(c_res, item_mmd=True)
        c_preds = load_predictions(args.control_dir)
        c_paired = paired_comparisons(c_res, c_preds, baselines=("knn",))
        c_contrasts = paired_comparisons(c_res, c_preds,
                                         pairs=ablation_pairs(OBJECTIVES, encoders))
        # the objective contrasts on MiniLM repeat the cells against kNN: each comparison once,
        # with the cells' Holm p
        checks = control_checks(merge_comparisons(paired, contrasts),
                                merge_comparisons(c_paired, c_contrasts))
    if n_done < len(todo):
        title += f" (incomplete: {n_done} of {len(todo)} units)"
        notes.append(f"Incomplete: {n_done} of {len(todo)} units are finished; the tables and "
                     "conclusions cover only those, so no conclusion is drawn from them yet.")
    rep = write_ablation_report(results, paired, out, objectives=OBJECTIVES, encoders=encoders,
                                contrasts=contrasts, title=title,
                                commands=[cmd + "   # resumable", cmd + " --report-only"
                                          + (f" --control-dir {args.control_dir}"
                                             if args.control_dir else "")],
                                notes=notes,
                                coverage=h.label_coverage(results, item_mmd=True),
                                control=checks, control_coverage=control_coverage,
                                # K_att values are the trained model's, in a control folder
                                # too (its units read the trained prompts): no twin loader
                                katt_mmd=Harness(out, tasks=h.tasks).item_mmd(
                                    results, compute=args.katt_concordance) or None,
                                control_label=f"the random-init control in {args.control_dir}")
    print(rep.read_text())
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except InputError as exc:       # bad input found after parsing: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
