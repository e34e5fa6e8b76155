"""Griffe extension of the docs build: Sphinx roles in docstrings become cross-references.

The package's docstrings use Sphinx roles (``:func:`make_selector```, ``:class:`~x.Pool```,
``:meth:`DualWeights.apply```). mkdocstrings renders Markdown, where a role would show up
literally; this extension rewrites each one, once the package is loaded, into an *optional*
autorefs cross-reference: a link when the target is rendered somewhere in the site, plain code
otherwise (never a broken link, never a build warning). Names are resolved in the scope of the
object whose docstring holds them (its module's imports and members), as Sphinx would. RST
literals in numpy ``name : type`` lines lose their double backticks (the type is shown as code),
RST simple tables (``===  ===`` borders) become Markdown tables, and a paragraph left after the
items of a Parameters / Attributes section gets a ``Notes`` header (else it is read as items).

Loaded by ``mkdocs.yml`` (``plugins > mkdocstrings > handlers > python > options >
extensions``); not part of the package.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?P<role>func|class|meth|mod|attr|data|obj|exc|const):"
                   r"`(?P<target>[^`]+)`")


def _resolve(obj: griffe.Object, target: str) -> str:
    """Full dotted path of ``target`` seen from ``obj`` (``target`` itself when unknown)."""
    if target.startswith("icldistill."):
        return target
    head, _, rest = target.lstrip(".").partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            full = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError, KeyError):
            scope = scope.parent
            continue
        return f"{full}.{rest}" if rest else full
    return target


def _rewrite(obj: griffe.Object, text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        target = m["target"].strip()
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", target)
        if explicit:  # :func:`title <path>`
            title, target = explicit["title"], explicit["target"].strip()
        else:
            shown = target.lstrip("~.")
            title = shown.rsplit(".", 1)[-1] if target.startswith("~") else shown
            target = shown
        if m["role"] in ("func", "meth"):
            title += "()"
        full = html.escape(_resolve(obj, target), quote=True)
        return (f'<autoref identifier="{full}" optional><code>{html.escape(title)}</code>'
                "</autoref>")

    return _ROLE.sub(sub, text)


#: A numpy-style ``name : type`` line (unindented in the dedented docstring).
_TYPED = re.compile(r"^(?P<names>[A-Za-z_*][\w, *]*) : (?P<type>.+)$", re.MULTILINE)


def _plain_types(text: str) -> str:
    """RST literals in ``name : type`` lines (``Tensor ``[N, d]````) as plain text: the type
    is already shown as code, so the backticks would appear literally."""
    return _TYPED.sub(lambda m: f"{m['names']} : {m['type'].replace('``', '')}", text)


_BORDER = re.compile(r"^(?P<indent> *)=+(?: +=+)+ *$")


def _columns(border: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", border)]


def _cells(line: str, cols: list[tuple[int, int]]) -> list[str]:
    """The cells of a simple-table row (the last column takes the rest of the line)."""
    out = []
    for i, (start, _end) in enumerate(cols):
        stop = cols[i + 1][0] if i + 1 < len(cols) else len(line)
        out.append(line[start:stop].strip())
    return out


def _escape_pipes(cell: str) -> str:
    """``|`` escaped outside code spans (Markdown tables leave pipes in code spans alone)."""
    parts = re.split(r"(`+[^`]*?`+)", cell)
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def _md_table(rows: list[list[str]]) -> list[str]:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(_escape_pipes(c) for c in cells) + " |"

    return [row(rows[0]), "|" + "---|" * len(rows[0]), *(row(r) for r in rows[1:])]


def _simple_tables(text: str) -> str:
    """RST simple tables (``====  ====`` borders, a header row) as Markdown tables. A row whose
    first cell is empty continues the row above it."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = _BORDER.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        cols = _columns(lines[i])
        borders, rows, j = [i], [], i + 1
        while j < len(lines) and len(borders) < 3:
            if _BORDER.match(lines[j]):
                borders.append(j)
            elif lines[j].strip():
                cells = _cells(lines[j], cols)
                if rows and not cells[0] and len(borders) == 2:
                    rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
                else:
                    rows.append(cells)
            j += 1
        if len(borders) < 3 or len(rows) < 1:
            out.append(lines[i])      # not a complete simple table: leave it as it is
            i += 1
            continue
        indent = m["indent"]
        out += ["", *(indent + r for r in _md_table(rows)), ""]
        i = j
    return "\n".join(out)


_ITEM_SECTIONS = ("Parameters", "Other Parameters", "Attributes")
_ITEM = re.compile(r"^\*{0,2}[A-Za-z_]\w*(\s*,\s*\*{0,2}[A-Za-z_]\w*)*(\s*:.*)?$")


def _trailing_prose(text: str) -> str:
    """A paragraph that follows the items of a Parameters / Attributes section without a
    section header of its own would be parsed as more items (griffe: "parameter 'Every' does
    not appear in the signature"); it gets a ``Notes`` header instead."""
    lines = text.split("\n")
    out: list[str] = []
    section = None
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"-{3,}", nxt.strip()):
            section = line.strip()
        elif (section in _ITEM_SECTIONS and line and not line[0].isspace()
              and i > 0 and not lines[i - 1].strip() and not _ITEM.match(line)
              and not re.fullmatch(r"-{3,}", line.strip())):
            out += ["Notes", "-----"]
            section = "Notes"
        out.append(line)
    return "\n".join(out)


def _walk(obj: griffe.Object, seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if obj.docstring is not None:
        text = _simple_tables(_plain_types(_trailing_prose(obj.docstring.value)))
        obj.docstring.value = _rewrite(obj, text)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, seen)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())
