"""``icldistill evaluate`` (few-shot accuracy of selectors, resumable) and ``icldistill compare``
(a grid of evaluations and a Markdown + HTML report). Both take the same grid flags.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from icldistill.cli.options import (
    add_device,
    add_dtype,
    check_local_device,
    command_line,
    positive_int,
    resolve_dtype,
    selector_param,
    set_threads,
    split_names,
    thread_count,
)
from icldistill.cli.tasks import add_grid_args, add_selection_args, load_tasks, selector_params
from icldistill.core.validation import InputError

__all__ = ["add_parsers"]


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="scoring batch size (default 8)")
    add_dtype(p)
    add_device(p, remote=True)
    p.add_argument("--backend", default="local", choices=("local", "ray"),
                   help="run the units here (local, default) or as Ray tasks (ray: pip install "
                        "'icldistill[ray]'; the output folder must be shared by every node)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address for --backend ray (e.g. auto or "
                        "ray://head:10001; default: start Ray on this machine)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="Ray workers for --backend ray (default: as many as the cluster's CPUs, "
                        "or GPUs with --device cuda, allow)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="torch threads (local) or CPUs per Ray worker (default: torch's "
                        "default; 1 per Ray worker)")


def _add_status_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", action="store_true",
                   help="print where this grid stands in --out (units done, running, partly "
                        "scored, to do; estimated CPU-hours of scoring left; with compare "
                        "--control, its control folder too) and exit without computing")


def _print_status(args: argparse.Namespace, units: list[Any], tasks: Any) -> int:
    """``--status``: the grid's :class:`~icldistill.evaluation.GridStatus` in ``--out``, and
    in its control folder ``OUT/control-SEED`` with ``compare --control SEED``."""
    from icldistill.evaluation.harness import Harness

    if not Path(args.out).is_dir():
        raise InputError(f"--status: {args.out} does not exist (nothing has run there yet)")
    folders = [Path(args.out)]
    control = getattr(args, "control", None)
    if control is not None:
        folders.append(Path(args.out) / f"control-{control}")
    for i, folder in enumerate(folders):
        if i:
            print()
        if not folder.is_dir():
            print(f"control grid in {folder}: not started ({len(units)} units to do)")
            continue
        # the control reads the trained folder's prompts: its finished units time the rest
        source = folders[0] if i and (folders[0] / "selections").is_dir() else None
        st = Harness(folder, tasks=tasks, progress=False, selections_from=source).status(units)
        print(st.summary(workers=max(1, st.count("running"))))
    return 0


def _check_backend_flags(args: argparse.Namespace) -> None:
    """``--address`` and ``--workers`` configure Ray: refused with the local backend (they
    would be ignored)."""
    given = [flag for flag, value in (("--address", args.address), ("--workers", args.workers))
             if value is not None]
    if given and args.backend != "ray":
        verb, them = ("configure", "them") if len(given) > 1 else ("configures", "it")
        raise InputError(f"{' and '.join(given)} {verb} Ray workers: add --backend ray, or "
                         f"drop {them} to run here")


def _run_units(args: argparse.Namespace, units: list[Any], harness_kwargs: dict[str, Any]
               ) -> list[Any]:
    """The units run by the chosen backend; the same results either way."""
    from icldistill.evaluation.harness import Harness

    if args.backend == "ray":
        from icldistill.evaluation.distributed import run_ray

        gpus = 1.0 if str(args.device).startswith("cuda") else 0.0
        return run_ray(units, args.out, harness_kwargs={**harness_kwargs,
                                                        "device": args.device},
                       address=args.address, num_workers=args.workers,
                       cpus_per_worker=float(args.threads or 1), gpus_per_worker=gpus,
                       progress=not args.quiet)
    set_threads(args)
    h = Harness(args.out, progress=not args.quiet, device=args.device, **harness_kwargs)
    return h.run(units)


def add_parsers(sub: Any) -> None:
    """Add ``evaluate`` and ``compare`` to the command parsers ``sub``."""
    from icldistill.selection.registry import DEFAULT_SELECTOR

    p = sub.add_parser("evaluate", help="few-shot accuracy of selectors on tasks (resumable)",
                       description="Evaluate few-shot classification with demonstrations chosen "
                                   "by each selector, for every model, task and k (the grid "
                                   "flags of compare); results are appended to "
                                   "OUT/results.jsonl as they finish, and a rerun resumes.")
    add_grid_args(p, selectors_default=DEFAULT_SELECTOR, ks_default="8", singular_dests=True)
    p.add_argument("--calibrate", action="store_true", help="contextual calibration")
    p.add_argument("--param", action="append", type=selector_param,
                   help="selector parameter NAME=VALUE (repeatable; given to every selector)")
    _add_scoring_args(p)
    p.add_argument("--no-prefix-reuse", action="store_true",
                   help="encode every prompt from scratch (slower; for comparison)")
    p.add_argument("--out", default="icldistill-eval",
                   help="output folder: results.jsonl and caches (default icldistill-eval)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    _add_status_arg(p)
    add_selection_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="grid of selectors x tasks x k; Markdown + HTML report",
                       description="Evaluate every selector on every task and k for every model "
                                   "and write report.md / report.html with tables and figures "
                                   "(resumable).")
    add_grid_args(p, selectors_default=None, ks_default="4,8")
    _add_scoring_args(p)
    p.add_argument("--control", type=positive_int, default=None, metavar="SEED",
                   help="also run the grid on each model's random-init twin (initialisation "
                        "seed SEED, in OUT/control-SEED, local backend), reading exactly the "
                        "trained units' demonstrations, and set its paired comparisons beside "
                        "the trained model's in the report")
    p.add_argument("--posthoc", nargs=2, action="append", default=None,
                   metavar=("SELECTOR", "BASELINE"),
                   help="an exploratory comparison chosen after seeing the results: SELECTOR "
                        "against BASELINE, paired, in a Holm family of its own (repeatable; "
                        "e.g. --posthoc vote-k mmd); the report labels these post hoc")
    p.add_argument("--katt-concordance", action="store_true",
                   help="also measure each test item's MMD² to its demonstrations in the "
                        "model's own K_att space (keys/values of its demo-carrying heads) for "
                        "the report's within-item concordance tables; encodes every task's "
                        "pool with the model once (cached)")
    p.add_argument("--out", default="icldistill-compare",
                   help="output folder: report.md, report.html, figures, results and caches "
                        "(default icldistill-compare)")
    _add_status_arg(p)
    add_selection_args(p)
    p.set_defaults(func=_cmd_compare)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from icldistill.evaluation.harness import unit_grid

    check_local_device(args)
    _check_backend_flags(args)
    resolve_dtype(args)
    tasks = load_tasks(args)
    params = selector_params(args.param)
    selectors = split_names(args.selector)
    units = unit_grid(models=split_names(args.model), tasks=list(tasks), selectors=selectors,
                      ks=list(args.k), seeds=args.seeds,
                      orderings=args.orderings, encoder=args.encoder, calibrate=args.calibrate,
                      n_test=args.n_test, params={s: params for s in selectors},
                      dtype=args.dtype)
    if args.status:
        return _print_status(args, units, tasks)
    results = _run_units(args, units, {"tasks": tasks, "batch_size": args.batch_size,
                                       "reuse_prefix": not args.no_prefix_reuse,
                                       "reference_encoder": args.reference_encoder})
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
    from icldistill.core.stats import check_pairs, majority_shares, paired_comparisons
    from icldistill.evaluation.harness import (
        Harness,
        load_predictions,
        load_results,
        unit_grid,
    )
    from icldistill.reporting.reports import write_comparison_report
    from icldistill.selection.registry import SELECTORS

    check_local_device(args)
    _check_backend_flags(args)
    resolve_dtype(args)
    if args.control is not None and args.backend != "local":
        raise InputError("--control runs the random-init twins on the local backend; drop "
                         "--backend ray or --control")
    try:
        pairs = check_pairs(args.posthoc or [])
    except InputError as exc:
        raise InputError(f"--posthoc: {exc}") from None
    tasks = load_tasks(args)
    selectors = split_names(args.selectors or ",".join(SELECTORS))
    units = unit_grid(models=split_names(args.models), tasks=list(tasks), selectors=selectors,
                      ks=list(args.ks), seeds=args.seeds,
                      orderings=args.orderings, encoder=args.encoder, n_test=args.n_test,
                      dtype=args.dtype)
    labels = sorted({u.label for u in units})
    unknown = sorted({x for pair in pairs for x in pair} - set(labels))
    if unknown:      # before any work: a typo should not cost a grid
        raise InputError(f"--posthoc names {', '.join(map(repr, unknown))}, which this grid "
                         f"does not run (its selectors: {', '.join(labels)})")
    if args.status:
        return _print_status(args, units, tasks)
    done = _run_units(args, units, {"tasks": tasks, "batch_size": args.batch_size,
                                    "reference_encoder": args.reference_encoder})
    keys = {r.key for r in done}
    results = [r for r in load_results(args.out) if r.key in keys]
    preds = load_predictions(args.out)
    # baselines: knn and random as run in this grid (their labels carry a non-default encoder)
    bases = sorted({r.spec.label for r in results
                    if r.spec.selector in ("knn", "random") and not r.spec.params})
    mine = {k: v for k, v in preds.items() if k in keys}
    paired = paired_comparisons(results, mine, baselines=bases)
    paired_f1 = paired_comparisons(results, mine, baselines=bases, metric="macro_f1")
    posthoc = paired_comparisons(results, mine, pairs=pairs) if pairs else None
    h = Harness(args.out, tasks=tasks, progress=not args.quiet, device=args.device)
    coverage = h.label_coverage(results, item_mmd=True)
    # each item's MMD² in the model's own K_att space: computed on request (it encodes every
    # task's pool with the model), else whatever an earlier run stored
    katt = h.item_mmd(results, compute=args.katt_concordance)
    control, control_cov, control_posthoc = ((None, None, None) if args.control is None
                                             else _control_grid(args, units, tasks, bases, pairs))
    rep = write_comparison_report(results, args.out, commands=[command_line(args)],
                                  paired=paired, paired_macro_f1=paired_f1,
                                  majority=majority_shares(results, mine), coverage=coverage,
                                  control_paired=control, control_coverage=control_cov,
                                  control_imported=control is not None,
                                  posthoc=posthoc, control_posthoc=control_posthoc,
                                  katt_mmd=katt or None, reference=h.reference_encoder,
                                  control_label=f"the random-init twins (seed {args.control}) "
                                                f"in {Path(args.out) / f'control-{args.control}'}")
    _print_comparison(rep, paired, control is not None)
    return 0


def _print_comparison(rep: Any, paired: list[Any], with_control: bool) -> None:
    """What ``compare`` prints after writing its report: the best selector per (model, k), the
    significant mean differences, the MMD family against the bar, the control's agreement and
    where the report and its JSON records are."""
    from icldistill.reporting.reports import format_p

    for tag in rep.mmd_family_best:        # every (model, k) with a complete grid, in order
        if tag in rep.ties:
            print(f"{tag}: tie between {', '.join(rep.ties[tag])} for the best mean accuracy")
        else:
            print(f"{tag}: best mean accuracy {rep.best[tag]}")
    for p in paired:
        if p.task == "mean" and p.p_holm < 0.05:
            verdict = "better" if p.diff > 0 else "worse"
            print(f"{p.model} k={p.k}: {p.selector} {verdict} than {p.baseline} by "
                  f"{100 * p.diff:+.1f} points (paired over {p.n} items, Holm p="
                  f"{format_p(p.p_holm)})")
    for tag, ok in rep.meets_bar.items():
        print(f"{tag}: MMD family vs the bar (beats knn on the mean, never worse than random): "
              + (", ".join(ok) if ok else "none meets it"))
    if with_control:
        sig = [c for c in rep.control if c.trained.p_holm < 0.05]
        print(f"random-init control: {sum(c.differs for c in sig)} of the {len(sig)} "
              "significant comparisons differ from the control (their 95% interval lies "
              "beyond the control's)")
    print(f"report: {rep.markdown} and {rep.html}")
    records = [p.name for p in (rep.paired_json, rep.paired_macro_f1_json, rep.posthoc_json,
                                rep.coverage_json, rep.concordance_json) if p is not None]
    if records:
        print(f"records (JSON, beside the report): {', '.join(records)}")


def _control_grid(args: argparse.Namespace, units: list[Any], tasks: Any, bases: list[str],
                  pairs: list[tuple[str, str]]
                  ) -> tuple[list[Any], dict[str, Any], list[Any] | None]:
    """The grid's units on each model's random-init twin in ``OUT/control-SEED`` (its own
    report there too); returns its paired comparisons, its label coverage and its post-hoc
    comparisons (of ``pairs``; ``None`` without)."""
    from icldistill.core.stats import paired_comparisons
    from icldistill.evaluation.harness import Harness, load_predictions, load_results
    from icldistill.lab.experiments.phenomena import twin_loader
    from icldistill.reporting.reports import write_comparison_report

    folder = Path(args.out) / f"control-{args.control}"
    set_threads(args)
    h = Harness(folder, tasks=tasks, batch_size=args.batch_size, progress=not args.quiet,
                device=args.device, reference_encoder=args.reference_encoder,
                model_loader=twin_loader(args.control, progress=not args.quiet,
                                         device=args.device),
                selections_from=args.out)     # the trained units' prompts, whatever --encoder
    keys = {r.key for r in h.run(units)}
    results = [r for r in load_results(folder) if r.key in keys]
    preds = {k: v for k, v in load_predictions(folder).items() if k in keys}
    paired = paired_comparisons(results, preds, baselines=bases)
    posthoc = paired_comparisons(results, preds, pairs=pairs) if pairs else None
    coverage = h.label_coverage(results, item_mmd=True)
    write_comparison_report(results, folder, commands=[command_line(args)], paired=paired,
                            coverage=coverage, posthoc=posthoc, reference=h.reference_encoder,
                            random_init=True,
                            title="Demonstration selection: few-shot accuracy, random-init "
                                  f"control (seed {args.control})")
    return paired, coverage, posthoc
