"""Render laboratory sections as one Markdown + HTML report, and store / read sections as JSON
(so an interrupted ``reproduce`` resumes without recomputing finished experiments)."""

from __future__ import annotations

import html as _html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..reports import to_jsonable, write_json, write_text
from ._common import Check, Section, Table

__all__ = ["format_cell", "read_section", "write_lab_report", "write_section"]


def format_cell(v: Any) -> str:
    """A table cell: floats with 4 significant digits, NaN/None as an en dash."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def write_section(section: Section, path: str | Path, *, fingerprint: str = "") -> Path:
    """Store ``section`` as JSON (atomic), tagged with the ``fingerprint`` of its settings."""
    payload = {
        "fingerprint": fingerprint,
        "name": section.name, "title": section.title, "description": section.description,
        "checks": [[c.claim, bool(c.holds), c.detail] for c in section.checks],
        "findings": list(section.findings),
        "tables": [{"title": t.title, "columns": list(t.columns), "rows": [list(r) for r in
                                                                           t.rows]}
                   for t in section.tables],
        "figures": list(section.figures), "data": section.data, "seconds": section.seconds,
    }
    return write_json(path, payload)


def read_section(path: str | Path, *, fingerprint: str | None = None) -> Section | None:
    """The section stored at ``path``, or ``None`` when absent, unreadable or made with other
    settings (``fingerprint`` differs)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if fingerprint is not None and d.get("fingerprint") != fingerprint:
        return None
    try:
        return Section(
            name=d["name"], title=d["title"], description=d["description"],
            checks=[Check(c[0], bool(c[1]), c[2]) for c in d["checks"]],
            findings=list(d["findings"]),
            tables=[Table(t["title"], tuple(t["columns"]),
                          tuple(tuple(r) for r in t["rows"])) for t in d["tables"]],
            figures=list(d["figures"]), data=d["data"], seconds=float(d["seconds"]),
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def _md_table(t: Table) -> list[str]:
    out = [f"**{t.title}**", "", "| " + " | ".join(t.columns) + " |",
           "|" + "---|" * len(t.columns)]
    out += ["| " + " | ".join(format_cell(c) for c in r) + " |" for r in t.rows]
    return [*out, ""]


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{_html.escape(format_cell(c))}</td>" for c in r)
                   + "</tr>" for r in t.rows)
    return (f"<p><b>{_html.escape(t.title)}</b></p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
          "padding:0 1em;line-height:1.45}table{border-collapse:collapse;margin:.5em 0 1.2em;"
          "font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}"
          "th{background:#f3f3f3}.ok{color:#176b2c;font-weight:600}.no{color:#a4161a;"
          "font-weight:600}pre{background:#f6f6f6;padding:.8em;overflow-x:auto}"
          "img{max-width:100%}")


def write_lab_report(
    sections: Sequence[Section],
    out_dir: str | Path,
    *,
    title: str,
    header: Sequence[str] = (),
    commands: Sequence[str] = (),
    section_commands: dict[str, str] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` in ``out_dir`` (figures referenced relatively).

    The report starts with a summary of every check (holds or not, with the measured detail),
    then one part per section: description, checks, findings, figures, tables, run time and
    the command that reproduces it.
    """
    out = Path(out_dir)
    section_commands = dict(section_commands or {})
    md: list[str] = [f"# {title}", ""]
    md += [f"- {h}" for h in header] + [""]
    hp: list[str] = [f"<h1>{_html.escape(title)}</h1>",
                     "<ul>" + "".join(f"<li>{_html.escape(h)}</li>" for h in header) + "</ul>"]
    n_ok = sum(c.holds for s in sections for c in s.checks)
    n_all = sum(len(s.checks) for s in sections)
    md += ["## Summary of the checks", "",
           f"{n_ok} of {n_all} checks hold. A check that does not hold is shown as such; "
           "settings were not chosen to make them hold.", "",
           "| experiment | claim | holds | measured |", "|---|---|---|---|"]
    rows_html = []
    for s in sections:
        for c in s.checks:
            mark = "yes" if c.holds else "**NO**"
            md.append(f"| {s.name} | {c.claim} | {mark} | {c.detail} |")
            cls = "ok" if c.holds else "no"
            rows_html.append(f"<tr><td>{_html.escape(s.name)}</td><td style='text-align:left'>"
                             f"{_html.escape(c.claim)}</td><td class='{cls}'>"
                             f"{'yes' if c.holds else 'NO'}</td><td style='text-align:left'>"
                             f"{_html.escape(c.detail)}</td></tr>")
    md.append("")
    hp += [f"<h2>Summary of the checks</h2><p>{n_ok} of {n_all} checks hold. A check that does "
           "not hold is shown as such; settings were not chosen to make them hold.</p>",
           "<table><thead><tr><th>experiment</th><th>claim</th><th>holds</th><th>measured</th>"
           "</tr></thead><tbody>" + "".join(rows_html) + "</tbody></table>"]
    for s in sections:
        md += [f"## {s.title}", "", s.description, ""]
        hp += [f"<h2 id='{_html.escape(s.name)}'>{_html.escape(s.title)}</h2>",
               f"<p>{_html.escape(s.description)}</p>"]
        if s.findings:
            md += [f"- {f}" for f in s.findings] + [""]
            hp.append("<ul>" + "".join(f"<li>{_html.escape(f)}</li>" for f in s.findings)
                      + "</ul>")
        for fig in s.figures:
            md += [f"![{Path(fig).stem}]({fig})", ""]
            hp.append(f"<p><img src='{_html.escape(fig)}' alt='{_html.escape(Path(fig).stem)}'>"
                      "</p>")
        for t in s.tables:
            md += _md_table(t)
            hp.append(_html_table(t))
        cmd = section_commands.get(s.name)
        foot = f"Run time {s.seconds:.1f} s."
        md += [foot + (f" Reproduce this section alone: `{cmd}`" if cmd else ""), ""]
        hp.append(f"<p>{_html.escape(foot)}"
                  + (f" Reproduce this section alone: <code>{_html.escape(cmd)}</code>"
                     if cmd else "") + "</p>")
    if commands:
        md += ["## Commands", "", "```bash", *commands, "```", ""]
        hp.append("<h2>Commands</h2><pre>" + _html.escape("\n".join(commands)) + "</pre>")
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        hp.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_html.escape(n)}</li>" for n in notes)
                  + "</ul>")
    files = {
        "markdown": write_text(out / "report.md", "\n".join(md)),
        "html": write_text(out / "report.html",
                           "<!doctype html><html><head><meta charset='utf-8'><title>"
                           f"{_html.escape(title)}</title><style>{_STYLE}</style></head><body>"
                           + "\n".join(hp) + "</body></html>"),
    }
    write_json(out / "report.json", to_jsonable({"title": title, "header": list(header),
                                                 "checks_holding": n_ok, "checks": n_all}))
    return files
