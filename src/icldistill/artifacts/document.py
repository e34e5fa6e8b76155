"""One report model for every report icldistill writes, rendered to Markdown and to HTML.

The demo (``summary.md`` / ``summary.html``), the trace report, the selector comparison, the
ablation and the laboratory all build a :class:`Report` and hand it to :func:`write_report`,
which writes ``<stem>.md`` and ``<stem>.html`` atomically.

The model
---------
A :class:`Report` has a title, ``meta`` lines under it, optional ``intro`` blocks, a list of
:class:`Section` objects (a section's blocks may include sub-sections, rendered one heading level
deeper), ``commands`` (a "Commands" section with a shell code block) and ``notes`` (a "Notes"
section with a bullet list). Blocks are :class:`Paragraph`, :class:`Table`, :class:`Figure`,
:class:`CodeBlock`, :class:`BulletList`, :class:`Quote` and :class:`Section`.

Text
----
Titles (of the report, sections and figures' alt text) are plain text. Every other piece of text
(paragraphs, table cells and captions, list items, meta lines, notes, figure captions) is
*inline Markdown* of a small subset: ```code```, ``**bold**``, ``*emphasis*``, ``[text](url)``
with a relative or ``http(s)`` target only, and backslash escapes of ASCII punctuation. The
Markdown renderer writes it as it is; the HTML renderer **escapes the text first** and only then
applies the subset, so no input can become markup: ``<img src=x onerror=...>`` in a file name is
shown as text, a ``javascript:`` link target is left as plain text. Text that must be shown
literally (file names, labels, user input) goes through :func:`plain`, which backslash-escapes
the subset's characters (Markdown viewers then show it literally too); :func:`inline_code`
makes a code span of any text.

The HTML page comes from one jinja2 template with ``autoescape=True`` (user text is never part of
the template source, so ``{{ 7*7 }}`` in a label stays text) and a small embedded stylesheet; a
Content-Security-Policy ``<meta>`` forbids scripts as a second line of defence.
"""

from __future__ import annotations

import functools
import html as _html
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar, Union
from urllib.parse import quote

from icldistill.artifacts.store import write_text
from icldistill.core.validation import InputError

__all__ = [
    "Block",
    "BulletList",
    "CodeBlock",
    "Figure",
    "Paragraph",
    "Quote",
    "Report",
    "Section",
    "Table",
    "inline_code",
    "plain",
    "provenance",
    "render_inline",
    "to_html",
    "to_markdown",
    "to_text",
    "write_report",
]


# ============================================================================ blocks
def _text(value: Any, what: str) -> str:
    if isinstance(value, Paragraph):
        return value.text
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str (format numbers before building the report), "
                        f"got {type(value).__name__}")
    return value


def _texts(values: Iterable[Any], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of str, not one str")
    return tuple(_text(v, what) for v in values)


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of inline-Markdown text (see the module docstring for the subset)."""

    text: str
    kind: ClassVar[str] = "paragraph"

    def __post_init__(self) -> None:
        _text(self.text, "Paragraph.text")


@dataclass(frozen=True)
class Table:
    """A table: ``header[j]`` names column ``j``; ``rows[i][j]`` is a cell.

    Cells and header names are inline-Markdown text (``str`` or :class:`Paragraph`); numbers are
    formatted by the caller. ``caption`` (inline text) is shown above the table. Rows must have
    as many cells as the header.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str | None = None
    kind: ClassVar[str] = "table"

    def __post_init__(self) -> None:
        header = _texts(self.header, "a table header cell")
        rows = tuple(_texts(r, "a table cell") for r in self.rows)
        for r in rows:
            if len(r) != len(header):
                raise ValueError(f"table row {r!r} has {len(r)} cells for {len(header)} "
                                 "columns")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "rows", rows)
        if self.caption is not None:
            _text(self.caption, "Table.caption")


def _check_relative(path: str) -> str:
    bad = (not path or "\\" in path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
           or PurePosixPath(path).is_absolute() or PureWindowsPath(path).drive != ""
           or ".." in PurePosixPath(path).parts or _scheme(path) is not None
           or path.startswith("//"))
    if bad:
        raise InputError(f"figure path {path!r} must be a relative path inside the report "
                         "folder (no absolute path, '..', URL scheme or backslash)")
    return path


@dataclass(frozen=True)
class Figure:
    """An image file of the report folder, shown with ``caption`` (inline text).

    ``path`` must be relative to the folder the report is written to and stay inside it: an
    absolute path, a ``..`` component, a URL scheme or a backslash raises :class:`InputError`.
    """

    path: str
    caption: str = ""
    kind: ClassVar[str] = "figure"

    def __post_init__(self) -> None:
        p = self.path.as_posix() if isinstance(self.path, PurePath) else self.path
        object.__setattr__(self, "path", _check_relative(_text(p, "Figure.path")))
        _text(self.caption, "Figure.caption")


@dataclass(frozen=True)
class CodeBlock:
    """Preformatted text (commands, logs), shown verbatim; ``language`` tags the Markdown
    fence (``"bash"``)."""

    text: str
    language: str = ""
    kind: ClassVar[str] = "code"

    def __post_init__(self) -> None:
        _text(self.text, "CodeBlock.text")
        if not re.fullmatch(r"[A-Za-z0-9_+-]*", _text(self.language, "CodeBlock.language")):
            raise ValueError(f"code block language {self.language!r} is not a plain name")


@dataclass(frozen=True)
class BulletList:
    """A bullet list; each item is inline text."""

    items: tuple[str, ...]
    kind: ClassVar[str] = "list"

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", _texts(self.items, "a list item"))


@dataclass(frozen=True)
class Quote:
    """A remark set apart from the text (Markdown ``>``); inline text."""

    text: str
    kind: ClassVar[str] = "quote"

    def __post_init__(self) -> None:
        _text(self.text, "Quote.text")


@dataclass(frozen=True)
class Section:
    """A titled part of a report; ``blocks`` may hold sub-sections (one heading level deeper).

    ``title`` is plain text; ``anchor`` (optional) becomes the heading's HTML ``id`` (letters,
    digits, ``_ . -``; other runs of characters become ``-``).
    """

    title: str
    blocks: tuple[Block, ...] = ()
    anchor: str | None = None
    kind: ClassVar[str] = "section"

    def __post_init__(self) -> None:
        _text(self.title, "Section.title")
        object.__setattr__(self, "blocks", _blocks(self.blocks))
        if self.anchor is not None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", _text(self.anchor, "Section.anchor"))
            object.__setattr__(self, "anchor", slug.strip("-") or None)


Block = Union[Paragraph, Table, Figure, CodeBlock, BulletList, Quote, Section]  # noqa: UP007
_BLOCK_TYPES = (Paragraph, Table, Figure, CodeBlock, BulletList, Quote, Section)


def _blocks(blocks: Iterable[Any]) -> tuple[Block, ...]:
    out = tuple(blocks)
    for b in out:
        if not isinstance(b, _BLOCK_TYPES):
            raise TypeError(f"a report block must be one of "
                            f"{', '.join(t.__name__ for t in _BLOCK_TYPES)}, got "
                            f"{type(b).__name__}")
    return out


@dataclass(frozen=True)
class Report:
    """A whole report.

    Attributes
    ----------
    title : str
        Plain text; the page title and the top heading.
    sections : tuple of Section
    notes : tuple of str
        Inline text, rendered as a final "Notes" bullet list.
    commands : tuple of str
        Shell commands that reproduce the report, rendered verbatim in a "Commands" section.
    meta : tuple of str or (str, str)
        Lines under the title (bullets): a ``str`` is inline text; a ``(key, value)`` pair is
        plain text shown as "**key**: value".
    intro : tuple of Block
        Blocks between the meta lines and the first section.
    """

    title: str
    sections: tuple[Section, ...] = ()
    notes: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    meta: tuple[str | tuple[str, str], ...] = ()
    intro: tuple[Block, ...] = ()

    def __post_init__(self) -> None:
        _text(self.title, "Report.title")
        sections = tuple(self.sections)
        for s in sections:
            if not isinstance(s, Section):
                raise TypeError(f"Report.sections holds Section objects, got "
                                f"{type(s).__name__}")
        object.__setattr__(self, "sections", sections)
        object.__setattr__(self, "notes", _texts(self.notes, "a note"))
        object.__setattr__(self, "commands", _texts(self.commands, "a command"))
        object.__setattr__(self, "intro", _blocks(self.intro))
        meta: list[str] = []
        for m in self.meta:
            if isinstance(m, tuple):
                if len(m) != 2:
                    raise ValueError(f"a meta pair is (key, value), got {m!r}")
                k, v = (_text(x, "a meta key or value") for x in m)
                meta.append(f"**{plain(k)}**: {plain(v)}")
            else:
                meta.append(_text(m, "a meta line"))
        object.__setattr__(self, "meta", tuple(meta))

    def all_sections(self) -> tuple[Section, ...]:
        """The sections as rendered: ``sections``, then "Commands" and "Notes" when given."""
        extra = []
        if self.commands:
            extra.append(Section("Commands", (CodeBlock("\n".join(self.commands), "bash"),)))
        if self.notes:
            extra.append(Section("Notes", (BulletList(self.notes),)))
        return (*self.sections, *extra)


# ============================================================================ inline text
_SPECIAL = re.compile(r"([\\`*\[\]|~]|<(?=[A-Za-z/!?])|&(?=#?\w+;)"
                      r"|(?<![^\W_])_|_(?![^\W_]))")
_RAW_HTML = re.compile(r"<(?=[A-Za-z/!?])")
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def plain(text: str) -> str:
    """Inline-Markdown source that shows ``text`` literally, on one line, in Markdown viewers
    and in the HTML report alike.

    Line breaks become spaces (a name must not end a table row or a list item); ``\\ ` * [ ]
    | ~`` are backslash-escaped, and so are a ``<`` that could open a tag, a ``&`` that could
    start a character reference (``&amp;``, ``&#60;``) and a ``_`` that could open or close
    emphasis (one not between two letters or digits). Everything else is kept as it is, so an
    ordinary name (``mmd-local,label_weight=0.0``, ``qwen2.5-0.5b (bfloat16)``, ``a&b``) reads
    the same in the Markdown source.

    Parameters
    ----------
    text : str
        Any text (other objects are converted with ``str``).

    Returns
    -------
    str
        Inline-Markdown source; :func:`render_inline` of it is ``text`` HTML-escaped, with
        line breaks as spaces.
    """
    return _SPECIAL.sub(r"\\\1", _LINE_BREAK.sub(" ", str(text)))


def _md_title(title: str) -> str:
    """A plain-text title for a Markdown heading (no raw HTML, one line)."""
    return _RAW_HTML.sub(r"\\<", " ".join(title.splitlines()))


def inline_code(text: str) -> str:
    """A code span showing ``text`` verbatim, newlines as spaces (the fence is longer than any
    backtick run inside); ``""`` for empty text."""
    text = str(text).replace("\n", " ")
    if not text:
        return ""
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if (text[0] == "`" or text[-1] == "`"
                  or (text[0] == text[-1] == " " and text.strip())) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


_CODE_OR_ESCAPE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)|\\([!-/:-@\[-`{-~])", re.S)
_LINK = re.compile(r"\[([^\[\]]+)\]\(([^()\s\x00]+)\)")
_BOLD = re.compile(r"\*\*(?=[^\s*])([^<]+?)(?<=[^\s*])\*\*")
_EM = re.compile(r"(?<![*\w])\*(?=[^\s*])([^<]+?)(?<=[^\s*])\*(?![*\w])")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")


def _scheme(url: str) -> str | None:
    """The URL scheme of ``url`` (lower case), or ``None`` for a relative reference."""
    first = re.split(r"[/?#]", url, maxsplit=1)[0]
    return first.split(":", 1)[0].lower() if ":" in first else None


def _safe_url(url: str) -> bool:
    if not url or "\\" in url or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return False
    scheme = _scheme(url)
    if scheme is None:
        return not url.startswith("//")
    return scheme in ("http", "https") and url[len(scheme) + 1:].startswith("//")


def _emphasis(s: str) -> str:
    return _EM.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", s))


def render_inline(text: str) -> str:
    """HTML of inline-Markdown ``text``: the text is HTML-escaped first, then the subset
    (code, bold, emphasis, safe links, backslash escapes) is applied, so nothing in ``text``
    can produce a tag or attribute of its own."""
    s = _text(text, "inline text").replace("\x00", "\ufffd")
    store: list[str] = []

    def keep(fragment: str) -> str:
        store.append(fragment)
        return f"\x00{len(store) - 1}\x00"

    def code_or_escape(m: re.Match[str]) -> str:
        if m.group(1):
            body = m.group(2)
            if len(body) > 2 and body[0] == body[-1] == " " and body.strip():
                body = body[1:-1]
            return keep(f"<code>{_html.escape(body)}</code>")
        return keep(_html.escape(m.group(3)))

    def link(m: re.Match[str]) -> str:
        url = _html.unescape(m.group(2))  # the raw target (the text was escaped once)
        if not _safe_url(url):
            return m.group(0)
        return keep(f'<a href="{_html.escape(url, quote=True)}">{_emphasis(m.group(1))}</a>')

    s = _CODE_OR_ESCAPE.sub(code_or_escape, s)
    s = _html.escape(s, quote=True)
    s = _emphasis(_LINK.sub(link, s))
    while _PLACEHOLDER.search(s):
        s = _PLACEHOLDER.sub(lambda m: store[int(m.group(1))], s)
    return s


def _strip_inline(text: str) -> str:
    """``text`` without its inline markup (for alt text and the plain-text rendering)."""
    return _html.unescape(re.sub(r"<[^>]*>", "", render_inline(text)))


# ============================================================================ Markdown
def _md_cell(text: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\\|", text.replace("\n", " "))


def _md_block(b: Block, level: int) -> list[str]:
    if isinstance(b, Section):
        out = [f"{'#' * min(level, 6)} {_md_title(b.title)}", ""]
        for sub in b.blocks:
            out += _md_block(sub, level + 1)
        return out
    if isinstance(b, Paragraph):
        return [b.text, ""]
    if isinstance(b, Quote):
        return [*(f"> {ln}" for ln in b.text.splitlines() or [""]), ""]
    if isinstance(b, BulletList):
        return [*(f"- {it}".replace("\n", "\n  ") for it in b.items), ""]
    if isinstance(b, CodeBlock):
        fence = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", b.text)), default=0))
        return [fence + b.language, b.text, fence, ""]
    if isinstance(b, Figure):
        target = f"<{b.path}>" if re.search(r"[\s()<>]", b.path) else b.path
        alt = re.sub(r"(?<!\\)([\[\]])", r"\\\1", b.caption.replace("\n", " "))
        return [f"![{alt}]({target})", ""]
    assert isinstance(b, Table)
    out = [f"**{b.caption}**", ""] if b.caption else []
    out += ["| " + " | ".join(_md_cell(c) for c in b.header) + " |",
            "|" + "|".join("---" for _ in b.header) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
    return [*out, ""]


def to_markdown(report: Report) -> str:
    """The report as Markdown (headings, pipe tables, fenced code, image links)."""
    out = [f"# {_md_title(report.title)}", ""]
    if report.meta:
        out += [*(f"- {m}" for m in report.meta), ""]
    for b in report.intro:
        out += _md_block(b, 2)
    for s in report.all_sections():
        out += _md_block(s, 2)
    return "\n".join(out).rstrip("\n") + "\n"


# ============================================================================ plain text
def _text_block(b: Block, level: int) -> list[str]:
    if isinstance(b, Section):
        title = _strip_inline(plain(b.title))
        out = ["", title, ("-" if level <= 2 else "~") * len(title)]
        for sub in b.blocks:
            out += _text_block(sub, level + 1)
        return out
    if isinstance(b, Paragraph):
        return [_strip_inline(b.text)]
    if isinstance(b, Quote):
        return [f"  note: {_strip_inline(b.text)}"]
    if isinstance(b, BulletList):
        return [f"  - {_strip_inline(it)}" for it in b.items]
    if isinstance(b, CodeBlock):
        return [f"    {ln}" for ln in b.text.splitlines()]
    if isinstance(b, Figure):
        return [f"  [figure: {b.path}]"]
    assert isinstance(b, Table)
    head = [_strip_inline(c) for c in b.header]
    rows = [[_strip_inline(c) for c in r] for r in b.rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    out = ["", f"  {_strip_inline(b.caption)}"] if b.caption else [""]
    right = [bool(rows) and all(_NUMERIC.match(r[i]) for r in rows) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  " + "  ".join((c.rjust(w) if r else c.ljust(w)) for c, w, r in
                                zip(cells, widths, right, strict=True)).rstrip()

    out += [line(head), "  " + "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    return out


def to_text(report: Report) -> str:
    """The report as plain text for a terminal (markup removed, tables aligned)."""
    out = [report.title, *(_strip_inline(m) for m in report.meta)]
    for b in report.intro:
        out += _text_block(b, 2)
    for s in report.all_sections():
        out += _text_block(s, 2)
    return "\n".join(out) + "\n"


# ============================================================================ HTML
_TEMPLATE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; \
img-src * data: file:; style-src 'unsafe-inline'">
<title>{{ report.title }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;line-height:1.45;color:#1b1b1b}
h1,h2,h3,h4{line-height:1.2}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{background:#f1f1f1;padding:0 .2em;border-radius:3px;font-size:.92em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}
pre code{background:none;padding:0}
figure{margin:1em 0}
figcaption{font-size:.85em;color:#555}
img{max-width:100%}
blockquote{margin:.6em 0;padding:.1em 1em;border-left:3px solid #ccc;color:#444}
ul.meta{color:#444}
</style>
</head>
<body>
{% macro render_blocks(blocks, level) %}
{% for b in blocks %}
{% if b.kind == "section" %}
<h{{ level }}{% if b.anchor %} id="{{ b.anchor }}"{% endif %}>{{ b.title }}</h{{ level }}>
{{ render_blocks(b.blocks, level + 1 if level < 6 else 6) }}
{%- elif b.kind == "paragraph" %}
<p>{{ b.text|inline }}</p>
{% elif b.kind == "quote" %}
<blockquote><p>{{ b.text|inline }}</p></blockquote>
{% elif b.kind == "list" %}
<ul>
{% for it in b.items %}
<li>{{ it|inline }}</li>
{% endfor %}
</ul>
{% elif b.kind == "code" %}
<pre><code>{{ b.text }}</code></pre>
{% elif b.kind == "figure" %}
<figure><img src="{{ b.path|urlpath }}" alt="{{ b.caption|alt }}">
{%- if b.caption %}<figcaption>{{ b.caption|inline }}</figcaption>{% endif %}</figure>
{% elif b.kind == "table" %}
<table>
{% if b.caption %}<caption>{{ b.caption|inline }}</caption>
{% endif %}
<thead><tr>{% for h in b.header %}<th>{{ h|inline }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in b.rows %}
<tr>{% for c in r %}<td{% if c is numeric %} class="num"{% endif %}>{{ c|inline }}</td>\
{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
{% endif %}
{% endfor %}
{% endmacro %}
<h1>{{ report.title }}</h1>
{% if report.meta %}
<ul class="meta">
{% for m in report.meta %}
<li>{{ m|inline }}</li>
{% endfor %}
</ul>
{% endif %}
{{ render_blocks(report.intro, 2) }}
{{ render_blocks(sections, 2) }}
</body>
</html>
"""

_NUMERIC = re.compile(r"[*\s[]*(?:[-+−]?\.?\d|[–-]\s*$|nan\s*$|inf\s*$)")
_ENV: Any = None


def _environment() -> Any:
    global _ENV
    if _ENV is None:
        import jinja2
        from markupsafe import Markup

        env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                                 trim_blocks=True, lstrip_blocks=True)
        env.filters["inline"] = lambda t: Markup(render_inline(t))
        env.filters["alt"] = _strip_inline
        env.filters["urlpath"] = lambda p: quote(p, safe="/")
        env.tests["numeric"] = lambda c: bool(_NUMERIC.match(c))
        _ENV = env
    return _ENV


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page (figures linked relatively).

    Rendered through a jinja2 template with autoescaping; inline text through
    :func:`render_inline` (escaped first), so user text never becomes markup.
    """
    template = _environment().from_string(_TEMPLATE)
    return template.render(report=report, sections=report.all_sections())


# ============================================================================ provenance
def _distribution_version(name: str) -> str:
    """The installed version of a distribution, without importing it (``"not installed"``)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.cache
def _git_state() -> str | None:
    """``"git <commit>"`` of the checkout the ``icldistill`` package is imported from, with
    ``", uncommitted changes"`` when its tracked files under the package differ from that
    commit; ``None`` when the package is not a tracked file of a git checkout (an installed
    wheel), git is missing, or git does not answer within 2 seconds."""
    folder = Path(__file__).resolve().parents[1]          # the icldistill package
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, timeout=2, check=True, env=env).stdout.strip()

    try:
        # only a checkout that tracks this very package identifies its code
        git("ls-files", "--error-unmatch", "--", "__init__.py")
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        return None
    return f"git {commit}" + (", uncommitted changes" if dirty else "")


def provenance() -> str:
    """The software a report was written with, as one plain-text line.

    ``icldistill`` with its version (and, when it is imported from a git checkout that tracks
    it, the commit and whether the package's files have uncommitted changes), and the
    installed versions of ``torch`` and ``transformers``; e.g. ``"icldistill 0.1.0 (git
    682ba22c1a2b), torch 2.5.1, transformers 4.46.3"``. Git is asked once per process, with a
    2-second limit; any failure leaves the version alone.

    Returns
    -------
    str
        Plain text (pass it through :func:`plain` or as a ``(key, value)`` meta pair).
    """
    from icldistill import __version__

    git = _git_state()
    return (f"icldistill {__version__}" + (f" ({git})" if git else "")
            + f", torch {_distribution_version('torch')}"
            + f", transformers {_distribution_version('transformers')}")


# ============================================================================ files
def write_report(report: Report, out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.html`` into ``out_dir`` (created if missing), each
    atomically; both are rendered before either is written.

    Returns
    -------
    (Path, Path)
        The Markdown and the HTML file.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", stem):
        raise InputError(f"report stem {stem!r} must be a plain file name stem")
    md, page = to_markdown(report), to_html(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_text(out / f"{stem}.md", md), write_text(out / f"{stem}.html", page)

