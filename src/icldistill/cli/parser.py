"""The argument parser of the ``icldistill`` command, assembled from the command groups.

Each ``cmd_*`` module of :mod:`icldistill.cli` contributes its sub-parsers through
``add_parsers(sub)``; the order of :data:`GROUPS` is the order of ``icldistill --help``.
"""

from __future__ import annotations

import argparse

from icldistill.cli import (
    cmd_data,
    cmd_evaluate,
    cmd_lab,
    cmd_math,
    cmd_models,
    cmd_select,
    cmd_trace,
)
from icldistill.cli.options import CommandParser

__all__ = ["GROUPS", "build_parser"]

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


# the command groups in the order of ``icldistill --help``: mmd, demo, models, trace, data,
# select, evaluate, compare, lab, reproduce
GROUPS = (cmd_math, cmd_models, cmd_trace, cmd_data, cmd_select, cmd_evaluate, cmd_lab)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``icldistill`` command.

    Returns
    -------
    argparse.ArgumentParser
        A :class:`~icldistill.cli.options.CommandParser` (errors are one line, exit status 2);
        every command sets ``func``, the function that runs it.
    """
    from icldistill import __version__

    parser = CommandParser(
        prog="icldistill",
        description="In-context learning as one-step knowledge distillation: measure it.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"icldistill {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser
