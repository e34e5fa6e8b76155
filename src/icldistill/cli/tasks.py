"""The flags and helpers that ``select``, ``evaluate`` and ``compare`` share: which task(s) to
run on (a registry dataset or a user file, and its split), the grid of models, selectors and k,
the representation used for selection, and ``--param NAME=VALUE`` selector parameters.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from icldistill.cli.options import (
    SEEDS_HELP,
    add_quiet,
    encoder_spec,
    names,
    nonnegative_int,
    positive_int,
    positive_int_list,
    split_names,
    split_test_size,
)
from icldistill.core.validation import InputError, warn_caller

__all__ = ["add_grid_args", "add_selection_args", "add_task_args", "load_tasks",
           "selector_params"]


def add_task_args(p: argparse.ArgumentParser, multi: bool = False,
                  dest: str = "datasets") -> None:
    """``--dataset`` (``--datasets`` when ``multi``), ``--file`` and its fields, and the split.

    Parameters
    ----------
    p
        The command's parser.
    multi
        Take a comma-separated list of registry datasets (``--dataset`` is then an alias).
    dest
        Namespace attribute of the dataset list when ``multi``.
    """
    if multi:
        p.add_argument("--datasets", "--dataset", dest=dest, default=None, type=names,
                       metavar="NAMES",
                       help="registry dataset(s), comma-separated (icldistill data list); "
                            "--dataset is an alias")
    else:
        p.add_argument("--dataset", default=None, help="registry dataset (icldistill data list)")
    p.add_argument("--file", default=None,
                   help="your own CSV / TSV / JSONL / JSON / Parquet file instead of a "
                        "registry dataset")
    p.add_argument("--text-field", default="text", help="input column of --file (default text)")
    p.add_argument("--label-field", default="label",
                   help="label column of --file (default label)")
    p.add_argument("--pair-fields", default=None,
                   help="comma-separated extra input columns of --file (e.g. passage,question)")
    p.add_argument("--test-size", type=split_test_size, default=None,
                   help="test items (int) or fraction; default: the dataset's split, 0.3 for "
                        "--file")
    p.add_argument("--split-seed", type=nonnegative_int, default=0,
                   help="seed of the split (default 0)")


def add_grid_args(p: argparse.ArgumentParser, *, selectors_default: str | None,
                  ks_default: str, singular_dests: bool = False) -> None:
    """The grid flags ``evaluate`` and ``compare`` share: plural names taking comma-separated
    lists, the singular spellings accepted as aliases (one vocabulary for both commands).
    ``singular_dests``: the namespace attributes keep ``evaluate``'s historical singular names
    (``model``, ``dataset``, ``selector``, ``k``)."""
    from icldistill.selection.registry import SELECTORS

    dest = {n: n[:-1] if singular_dests else n for n in ("models", "datasets", "selectors", "ks")}
    p.add_argument("--models", "--model", dest=dest["models"], default="smollm2-135m",
                   type=names,
                   metavar="NAMES",
                   help="language model(s), comma-separated: registry keys (icldistill models "
                        "list), local folders or Hugging Face ids (default smollm2-135m); "
                        "--model is an alias")
    add_task_args(p, multi=True, dest=dest["datasets"])
    p.add_argument("--selectors", "--selector", dest=dest["selectors"], default=selectors_default,
                   type=names, metavar="NAMES",
                   help="selector(s), comma-separated (default "
                        + (selectors_default or "all: " + ", ".join(SELECTORS))
                        + "); --selector is an alias")
    p.add_argument("--ks", "--k", dest=dest["ks"], default=ks_default, type=positive_int_list,
                   metavar="K",
                   help=f"numbers of demonstrations, e.g. 8 or 4,8 (default {ks_default}); --k "
                        "is an alias")
    p.add_argument("--seeds", type=positive_int, default=3, help=SEEDS_HELP)
    p.add_argument("--orderings", type=positive_int, default=1,
                   help="demonstration orderings per unit (default 1)")


def add_selection_args(p: argparse.ArgumentParser) -> None:
    """``--encoder``, ``--reference-encoder``, ``--seed``, ``--n-test`` and ``--quiet``
    (select, evaluate, compare)."""
    p.add_argument("--encoder", type=encoder_spec, default="minilm",
                   help="representation for selection: minilm (default), hidden:LAYER, "
                        "kv:LAYER[:HEADS], or kv:auto (the model's most demo-carrying "
                        "heads, chosen from traces; mmd-katt's default)")
    p.add_argument("--reference-encoder", type=encoder_spec, default=None, metavar="ENCODER",
                   help="representation of the reference kernel that every selection's MMD² "
                        "to the task is reported under (Gaussian, median bandwidth of pool + "
                        "test): minilm, hidden:LAYER or kv:LAYER[:HEADS] (these two in the "
                        "model's own space); default: the output folder's recorded one, else "
                        "minilm")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed (default 0)")
    p.add_argument("--n-test", type=positive_int, default=None,
                   help="evaluate the first N test inputs (default all)")
    add_quiet(p)


def load_tasks(args: argparse.Namespace) -> dict[str, Any]:
    """The tasks named by the parsed task flags (:func:`add_task_args`), by name.

    ``--file`` comes first (split with ``--test-size``, default 0.3), then every registry
    dataset of ``--dataset`` / ``--datasets``.

    Raises
    ------
    InputError
        Neither a registry dataset nor ``--file`` was given, or a file or dataset is unusable.
    """
    from icldistill.data.readers import load_file, warn_test_copies
    from icldistill.evaluation.harness import Task

    datasets = getattr(args, "datasets", None) or getattr(args, "dataset", None)
    if not args.file:
        given = [flag for flag, value, default in (
            ("--text-field", args.text_field, "text"), ("--label-field", args.label_field, "label"),
            ("--pair-fields", args.pair_fields, None)) if value != default]
        if given:
            raise InputError(f"{', '.join(given)} name columns of --file, and no --file is "
                             "given (registry datasets have their own)")
    tasks: dict[str, Any] = {}
    if args.file:
        pair = [f for f in (args.pair_fields or "").split(",") if f] or None
        ds = load_file(args.file, text_field=args.text_field, label_field=args.label_field,
                       pair_fields=pair)
        size = args.test_size if args.test_size is not None else 0.3
        split = ds.split(int(size) if size >= 1 else size, seed=args.split_seed)
        warn_test_copies(split, args.file)
        tasks[ds.name] = Task(ds.name, split)
    for name in split_names(datasets):
        size = args.test_size
        if size is not None and size >= 1:
            size = int(size)
        tasks[name] = Task.from_registry(name, test_size=size, seed=args.split_seed,
                                         progress=not getattr(args, "quiet", False))
    if not tasks:
        raise InputError("give a registry dataset (--dataset/--datasets) or --file")
    n_test = getattr(args, "n_test", None)
    for name, task in tasks.items():
        size = len(task.split.test)
        if n_test is not None and n_test > size:
            warn_caller(f"{name}: --n-test {n_test} is more than its {size} test items; all "
                        f"{size} are evaluated")
    return tasks


def selector_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``--param NAME=VALUE`` items as keyword arguments (VALUE parsed as JSON when it is;
    ``true`` / ``false`` in any case are booleans). A name given twice, and ``seed`` (set by
    ``--seed`` / ``--seeds``), are :class:`InputError`."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep:
            raise InputError(f"--param expects NAME=VALUE, got {item!r}")
        if key in out:
            raise InputError(f"--param {key} is given twice ({out[key]!r} and {val!r}); give it "
                             "once")
        if key == "seed":
            raise InputError("--param seed: a selector's seed is set by --seed (select) or "
                             "--seeds (evaluate, compare)")
        if val.strip().lower() in ("true", "false"):
            out[key] = val.strip().lower() == "true"
            continue
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out
