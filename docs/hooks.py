"""MkDocs hook of the docs build: include Markdown files of the repository in a page.

A line ``{{ include "benchmarks/results/reliability_faults.md" from=3 }}`` in a page is replaced
by that file (a path relative to the repository root, which must stay inside it), from its
line 3 on (``from`` is optional). The results tables are written by tests and benchmarks; the
site shows them as they are in the repository, so it cannot drift from them.

The included text is Markdown from generated tables: outside code spans and fenced code blocks,
``<`` and ``>`` are written as entities, so an error message such as
``ICLDISTILL_MAX_FILE_BYTES=<bytes>`` is shown, not swallowed as an HTML tag.

Loaded by ``mkdocs.yml`` (``hooks:``); not part of the package.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

_INCLUDE = re.compile(r'^\{\{ include "(?P<path>[^"]+)"(?: from=(?P<start>\d+))? \}\}[ \t]*$',
                      re.MULTILINE)
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def _escape_angles(line: str) -> str:
    """``<``/``>`` as entities outside the line's code spans."""
    out, pos = [], 0
    for m in _CODE_SPAN.finditer(line):
        out.append(line[pos:m.start()].replace("<", "&lt;").replace(">", "&gt;"))
        out.append(m.group(0))
        pos = m.end()
    out.append(line[pos:].replace("<", "&lt;").replace(">", "&gt;"))
    return "".join(out)


def _included(root: Path, rel: str, start: int) -> str:
    path = (root / rel).resolve()
    if root != path and root not in path.parents:
        raise PluginError(f"include {rel!r}: the path leaves the repository")
    if not path.is_file():
        raise PluginError(f"include {rel!r}: no such file in the repository")
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines()[max(start, 1) - 1:]:
        if _FENCE.match(line):
            fenced = not fenced
            lines.append(line)
        else:
            lines.append(line if fenced else _escape_angles(line))
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = Path(config["config_file_path"]).resolve().parent

    def sub(m: re.Match[str]) -> str:
        return _included(root, m["path"], int(m["start"] or 1))

    return _INCLUDE.sub(sub, markdown)
