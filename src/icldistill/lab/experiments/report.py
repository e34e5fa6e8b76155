"""Render laboratory sections as one Markdown + HTML report (through the report model of
:mod:`icldistill.artifacts.document`), and store / read sections as JSON (so an interrupted
``reproduce`` resumes without recomputing finished experiments)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icldistill.artifacts import document as rp
from icldistill.artifacts.store import to_jsonable, write_json
from icldistill.lab.experiments._common import Check, Section, Table

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


def _table(t: Table) -> rp.Table:
    return rp.Table(t.columns, [[format_cell(c) for c in r] for r in t.rows], caption=t.title)


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
    the command that reproduces it. Both files render one
    :class:`icldistill.artifacts.document.Report`; ``header`` lines, descriptions, findings,
    checks and notes are inline Markdown (user text in them is escaped in the HTML).
    """
    out = Path(out_dir)
    section_commands = dict(section_commands or {})
    n_ok = sum(c.holds for s in sections for c in s.checks)
    n_all = sum(len(s.checks) for s in sections)
    summary = rp.Section("Summary of the checks", (
        rp.Paragraph(f"{n_ok} of {n_all} checks hold. A check that does not hold is shown as "
                     "such; settings were not chosen to make them hold."),
        rp.Table(("experiment", "claim", "holds", "measured"),
                 [(rp.plain(s.name), c.claim, "yes" if c.holds else "**NO**", c.detail)
                  for s in sections for c in s.checks]),
    ))
    parts = [summary]
    for s in sections:
        blocks: list[Any] = [rp.Paragraph(s.description)]
        if s.findings:
            blocks.append(rp.BulletList(s.findings))
        blocks += [rp.Figure(fig, rp.plain(Path(fig).stem)) for fig in s.figures]
        blocks += [_table(t) for t in s.tables]
        cmd = section_commands.get(s.name)
        blocks.append(rp.Paragraph(f"Run time {s.seconds:.1f} s."
                                   + (f" Reproduce this section alone: {rp.inline_code(cmd)}"
                                      if cmd else "")))
        parts.append(rp.Section(s.title, blocks, anchor=s.name))
    report = rp.Report(title, parts, notes=tuple(notes), commands=tuple(commands),
                       meta=tuple(header))
    md, page = rp.write_report(report, out)
    write_json(out / "report.json", to_jsonable({"title": title, "header": list(header),
                                                 "checks_holding": n_ok, "checks": n_all}))
    return {"markdown": md, "html": page}
