"""Command-line interface: ``icldistill <command> ...`` (see :mod:`icldistill.cli.app`)."""

from icldistill.cli.app import build_parser, load_matrix, main

__all__ = ["build_parser", "load_matrix", "main"]
