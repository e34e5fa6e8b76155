"""``icldistill lab ...`` (train a small in-context learner, run one experiment or one real-model
phenomenon, each with its one-section report) and ``icldistill reproduce`` (every experiment,
one report that checks each claim).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from icldistill.cli.options import (
    add_quiet,
    command_line,
    names,
    nonnegative_int,
    positive_int,
    set_threads,
    split_names,
    thread_count,
)

__all__ = ["add_parsers"]

_LAB_EXPERIMENTS = {
    "training": "training curve and in-context error vs number of examples",
    "alignment": "eta* per layer, head and position; implicit alignment; stationarity",
    "bias": "||W_0(P) - W_0(Q)|| against MMD under shifts; ICL error vs MMD",
    "generalization": "Rademacher bound and observed gap vs number of demonstrations",
    "gd": "the transformer against gradient descent and least squares",
}
_PHENOMENA = {
    "adaptation": "accuracy and eta*, 1/D', demo share, ||W_0|| for k = 0..32 demonstrations",
    "ordering": "accuracy and W_0 across demonstration orders; an order rule vs random and "
                "most-similar-last",
    "interference": "another task's demonstrations mixed in: accuracy vs MMD (K_att, MiniLM); "
                    "random labels",
    "icl-vs-finetuning": "Dai et al.'s comparison: Rec2FTP and SimAOU of ICL vs fine-tuning",
}


# ---------------------------------------------------------------------------------- parsers
def add_parsers(sub: Any) -> None:
    """Add ``lab`` (with its subcommands) and ``reproduce`` to the command parsers ``sub``."""
    p = sub.add_parser("lab", help="the laboratory: train an in-context learner, run one "
                                   "experiment", description="Small softmax transformers trained "
                       "on in-context regression / classification (checkpoints cached) and the "
                       "experiments that check the framework on them.")
    lsub = p.add_subparsers(dest="lab_command", required=True)
    _add_learner_parsers(lsub)
    _add_real_parser(lsub)
    _add_phenomenon_parsers(lsub)
    _add_reproduce_parser(sub)


def _add_run_opts(q: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--quiet``, last on every lab command and ``reproduce``."""
    q.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads (>= 1)")
    add_quiet(q)


def _add_learner_opts(q: argparse.ArgumentParser) -> None:
    q.add_argument("--task", choices=("regression", "classification"), default="regression",
                   help="in-context task the small transformer learns (default regression)")
    q.add_argument("--preset", choices=("tiny", "quick", "full"), default="quick",
                   help="model size and training length (default quick)")
    q.add_argument("--seed", type=nonnegative_int, default=None,
                   help="training / experiment seed (default 0)")
    _add_run_opts(q)


def _add_learner_parsers(lsub: Any) -> None:
    """``lab train`` and the experiments on a trained small learner."""
    q = lsub.add_parser("train", help="train (or load from the cache) and print its error curve")
    _add_learner_opts(q)
    q.add_argument("--steps", type=positive_int, default=None,
                   help="override the preset's steps")
    q.add_argument("--retrain", action="store_true", help="ignore the cached checkpoint")
    q.set_defaults(func=_cmd_lab_train)
    for name, text in _LAB_EXPERIMENTS.items():
        q = lsub.add_parser(name, help=text)
        _add_learner_opts(q)
        q.add_argument("--out", default=f"icldistill-lab/{name}", help="output folder")
        q.set_defaults(func=_cmd_lab_experiment, experiment=name)


def _add_real_parser(lsub: Any) -> None:
    q = lsub.add_parser("real", help="eta* and demo share of a real model; accuracy vs MMD")
    q.add_argument("--model", default="smollm2-135m", help="registry model (default smollm2-135m)")
    q.add_argument("--dataset", default="amazon", help="registry dataset (default amazon)")
    q.add_argument("--quick", action="store_true",
                   help="6 prompts and a 5-unit grid on 60 test inputs")
    q.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default 0)")
    q.add_argument("--fewshot-results", default=None,
                   help="read accuracy vs MMD from this harness folder instead of running a grid")
    q.add_argument("--out", default="icldistill-lab/real", help="output folder")
    _add_run_opts(q)
    q.set_defaults(func=_cmd_lab_real)


#: Phenomena sections whose number of demonstration sets per task can be set (``--sets``),
#: with their defaults (quick / full).
_SET_SECTIONS = {"adaptation": "1 quick, 2 full", "ordering": "1 per k",
                 "interference": "1 quick, 2 full",
                 "icl-vs-finetuning": "1, each set with its own fine-tuning run"}


def _add_phenomenon_parsers(lsub: Any) -> None:
    """The ICL phenomena on real models, each against random-initialised twins."""
    for name, text in _PHENOMENA.items():
        q = lsub.add_parser(name, help=text + " (against a random-init control)")
        q.add_argument("--models", default="smollm2-135m", type=names,
                       help="comma-separated registry models (default smollm2-135m)")
        q.add_argument("--datasets", "--tasks", dest="tasks", default=None, type=names,
                       help="comma-separated registry datasets (default amazon,rt-subjectivity,"
                            "r8); --tasks is an alias")
        q.add_argument("--controls", type=positive_int, default=1,
                       help="random-init twins per model (default 1)")
        q.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
        if name in _SET_SECTIONS:
            q.add_argument("--sets", type=positive_int, default=None, metavar="N",
                           help=f"demonstration sets per task (default {_SET_SECTIONS[name]}); "
                                "the (task, set) is the unit of the claims' tests, and fewer "
                                "than 6 units in all cannot give p < 0.05 (about 9 are needed "
                                "after Holm)")
        q.add_argument("--seed", type=nonnegative_int, default=0,
                       help="random seed (default 0)")
        q.add_argument("--out", default=f"icldistill-lab/{name}", help="output folder")
        _add_run_opts(q)
        q.set_defaults(func=_cmd_lab_phenomenon, experiment=name)


def _add_reproduce_parser(sub: Any) -> None:
    p = sub.add_parser("reproduce", help="run every experiment; one Markdown + HTML report",
                       description="Train the in-context learners, run every experiment of the "
                                   "laboratory and the real-model checks, and write report.md / "
                                   "report.html with every figure, table, seed and version "
                                   "(resumable: finished experiments are read back; the same "
                                   "command started twice on one --out shares the experiments "
                                   "between the two processes, one per core).")
    p.add_argument("--quick", action="store_true",
                   help="small presets: about 10 minutes on 2 cores with the default model")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of training, data and experiments (default 0)")
    p.add_argument("--model", default="smollm2-135m", help="real model (default smollm2-135m)")
    p.add_argument("--dataset", default="amazon", help="real dataset (default amazon)")
    p.add_argument("--fewshot-results", default=None,
                   help="harness folder to read accuracy vs MMD from (default: run a small grid)")
    p.add_argument("--only", default=None, type=names,
                   help="comma-separated experiments to run (default: all): training, "
                        "alignment, bias, generalization, gd, real, adaptation, ordering, "
                        "interference, icl-vs-finetuning; the report also holds the others "
                        "already stored in --out")
    p.add_argument("--out", default="icldistill-report", help="output folder")
    _add_run_opts(p)
    p.set_defaults(func=_cmd_reproduce)


# ---------------------------------------------------------------------------------- commands
def _trained(args: argparse.Namespace) -> Any:
    """The small learner of ``--task`` / ``--preset``, trained once and then read from the cache."""
    import dataclasses

    from icldistill.lab.training import load_or_train, preset

    set_threads(args)
    cfg, tcfg = preset(args.preset, args.task)
    overrides = {k: v for k, v in (("seed", args.seed), ("steps", getattr(args, "steps", None)))
                 if v is not None}
    tcfg = dataclasses.replace(tcfg, **overrides)
    return load_or_train(cfg, tcfg, progress=not args.quiet, retrain=getattr(args, "retrain",
                                                                             False))


def _cmd_lab_train(args: argparse.Namespace) -> int:
    from icldistill.lab.training import evaluate_icl

    tr = _trained(args)
    ev = evaluate_icl(tr, batches=4, seed=10_000 + tr.train.seed)
    n = ev.n_examples
    picks = sorted({1, 2, tr.config.d_x, min(2 * tr.config.d_x, n - 1), n - 1})
    settings = ", ".join(f"{k}={v}" for k, v in tr.config.to_dict().items())
    print(f"{tr.config.task} model: {settings}")
    print(f"trained {tr.train.steps} steps in {tr.seconds:.0f} s; checkpoint {tr.path}")
    print(ev.table(picks))
    return 0


def _write_single(section: Any, out: Path, command: str) -> None:
    """Write a one-section report and the section itself (``<name>.json``: its checks,
    tables and per-unit data, for a re-analysis), and print its checks and findings."""
    from icldistill.lab.experiments import checks_summary
    from icldistill.lab.experiments.report import write_lab_report, write_section
    from icldistill.lab.experiments.reproduce import with_provenance

    section = with_provenance(section)
    write_lab_report([section], out, title=section.title, header=[f"Command: `{command}`"],
                     commands=[command])
    write_section(section, out / f"{section.name}.json")
    print(f"{section.title}: {checks_summary(section.checks)} ({section.seconds:.1f} s)")
    for c in section.checks:
        tag = (" (identity, any weights)" if c.is_identity else
               " (not testable at this size)" if c.testable is False else "")
        print(f"  [{'ok' if c.holds else 'NO'}]{tag} {c.claim}: {c.detail}")
    for f in section.findings:
        print(f"  - {f}")
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}, {out / (section.name + '.json')}")


def _cmd_lab_experiment(args: argparse.Namespace) -> int:
    from icldistill.lab.experiments.reproduce import run_experiment

    tr = _trained(args)
    out = Path(args.out)
    sec = run_experiment(args.experiment, tr, out_dir=out, quick=args.preset != "full",
                         seed=args.seed or 0, progress=not args.quiet)
    _write_single(sec, out, command_line(args))
    return 0


def _cmd_lab_real(args: argparse.Namespace) -> int:
    from icldistill.lab.experiments import real

    set_threads(args)
    out = Path(args.out)
    sec = real.run(args.model, out_dir=out, quick=args.quick, seed=args.seed,
                   progress=not args.quiet, dataset=args.dataset,
                   fewshot_results=args.fewshot_results)
    _write_single(sec, out, command_line(args))
    return 0


def _cmd_lab_phenomenon(args: argparse.Namespace) -> int:
    from icldistill.lab.experiments.reproduce import PARTS_DIR, run_phenomenon

    set_threads(args)
    out = Path(args.out)
    models = split_names(args.models)
    under_test = None
    if args.tasks or args.controls != 1:
        from icldistill.lab.experiments.phenomena import resolve_models

        under_test = resolve_models(models, n_controls=args.controls, seed=args.seed,
                                    progress=not args.quiet)
    extra: dict[str, Any] = {}
    if args.tasks:
        extra["tasks"] = split_names(args.tasks)
    if getattr(args, "sets", None) is not None:
        if args.experiment == "ordering":
            import dataclasses

            from icldistill.lab.experiments.ordering import FULL, QUICK

            extra["sizes"] = dataclasses.replace(QUICK if args.quick else FULL,
                                                 n_sets=args.sets)
        else:
            extra["n_sets"] = args.sets
    if extra:
        import importlib

        from icldistill.lab.experiments.reproduce import PHENOMENA_SECTIONS

        mod = importlib.import_module(PHENOMENA_SECTIONS[args.experiment])
        sec = mod.run(tuple(models), out_dir=out, quick=args.quick, seed=args.seed,
                      progress=not args.quiet, under_test=under_test,
                      resume_dir=out / PARTS_DIR, **extra)
    else:
        sec = run_phenomenon(args.experiment, models, out_dir=out, quick=args.quick,
                             seed=args.seed, progress=not args.quiet, under_test=under_test,
                             resume_dir=out / PARTS_DIR)
    _write_single(sec, out, command_line(args))
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from icldistill.lab.experiments.reproduce import reproduce

    set_threads(args)
    only = split_names(args.only) or None
    res = reproduce(args.out, quick=args.quick, seed=args.seed, model=args.model,
                    dataset=args.dataset, fewshot_results=args.fewshot_results, only=only,
                    progress=not args.quiet, command=command_line(args))
    from icldistill.lab.experiments import checks_summary

    every = [c for s in res.sections for c in s.checks]
    print(f"{len(res.sections)} experiments, {checks_summary(every)}, {res.seconds:.0f} s")
    for s in res.sections:
        for c in s.checks:
            if not c.holds:
                tag = " (identity, any weights)" if c.is_identity else ""
                print(f"  [NO]{tag} {s.name}: {c.claim}: {c.detail}")
    print(f"wrote {res.files['markdown']}, {res.files['html']}")
    return 0
