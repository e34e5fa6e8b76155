"""Command-line interface: ``icldistill <command> ...`` (:func:`main` in :mod:`icldistill.cli.app`,
one ``cmd_*`` module per command group; see the module map in :mod:`icldistill.cli.app`)."""

from icldistill.cli.app import main
from icldistill.cli.parser import build_parser
from icldistill.cli.readers import load_matrix

__all__ = ["build_parser", "load_matrix", "main"]
