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
from icldistill.lab.experiments._common import (
    CLAIM,
    IDENTITY,
    IDENTITY_PREFIX,
    Check,
    Section,
    Table,
    checks_summary,
    tally,
    untestable,
)

__all__ = ["NO_PROVENANCE", "format_cell", "provenance_line", "read_section", "write_lab_report",
           "write_section"]


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


def _check_row(c: Check) -> list[Any]:
    """A check as stored: ``[claim, holds, detail]``, with its kind appended when it is not a
    claim or its testability was assessed, and then its testability (so sections of claims
    alone, not assessed, are stored as before)."""
    row: list[Any] = [c.claim, bool(c.holds), c.detail]
    if c.kind != CLAIM or c.testable is not None:
        row.append(c.kind)
    if c.testable is not None:
        row.append(bool(c.testable))
    return row


def _read_check(row: Sequence[Any]) -> Check:
    """A stored check row; one stored before checks had a kind is an identity when its claim
    starts with :data:`~icldistill.lab.experiments._common.IDENTITY_PREFIX`; one stored
    before testability was recorded is not assessed (``testable=None``)."""
    if len(row) > 3:
        kind = str(row[3])
    else:
        kind = IDENTITY if str(row[0]).startswith(IDENTITY_PREFIX) else CLAIM
    testable = None if len(row) <= 4 or row[4] is None else bool(row[4])
    return Check(row[0], bool(row[1]), row[2], kind=kind, testable=testable)


def _holds_cell(c: Check) -> str:
    """The "holds" cell of a check in the report."""
    if c.holds:
        return "yes"
    return "**NO** (not testable at this size)" if c.testable is False else "**NO**"


def write_section(section: Section, path: str | Path, *, fingerprint: str = "") -> Path:
    """Store ``section`` as JSON (atomic), tagged with the ``fingerprint`` of its settings
    (and with its provenance, when it has one: recorded, not part of the fingerprint)."""
    payload = {
        "fingerprint": fingerprint,
        "name": section.name, "title": section.title, "description": section.description,
        "checks": [_check_row(c) for c in section.checks],
        "findings": list(section.findings),
        "tables": [{"title": t.title, "columns": list(t.columns), "rows": [list(r) for r in
                                                                           t.rows]}
                   for t in section.tables],
        "figures": list(section.figures), "data": section.data, "seconds": section.seconds,
    }
    if section.provenance is not None:
        payload["provenance"] = dict(section.provenance)
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
        prov = d.get("provenance")
        return Section(
            name=d["name"], title=d["title"], description=d["description"],
            checks=[_read_check(c) for c in d["checks"]],
            findings=list(d["findings"]),
            tables=[Table(t["title"], tuple(t["columns"]),
                          tuple(tuple(r) for r in t["rows"])) for t in d["tables"]],
            figures=list(d["figures"]), data=d["data"], seconds=float(d["seconds"]),
            provenance=dict(prov) if isinstance(prov, dict) else None,
        )
    except (KeyError, TypeError, ValueError, IndexError):
        return None


#: What a section read back without provenance shows.
NO_PROVENANCE = ("provenance not recorded (computed before sections recorded their commit and "
                 "versions)")


def provenance_line(section: Section) -> str:
    """One line saying what computed ``section``: the source commit, torch and transformers
    versions and the time it was computed; :data:`NO_PROVENANCE` without a record."""
    p = section.provenance
    if not p:
        return NO_PROVENANCE[0].upper() + NO_PROVENANCE[1:] + "."
    commit = p.get("commit")
    return (f"Computed {p.get('computed') or 'at an unrecorded time'} from source commit "
            + (rp.inline_code(str(commit)) if commit else "unknown (not a git checkout)")
            + f" with torch {p.get('torch') or 'unknown'}, transformers "
            f"{p.get('transformers') or 'unknown'}.")


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
    every = [c for s in sections for c in s.checks]
    n_ok, n_all, id_ok, id_all = tally(every)
    n_untestable = untestable(every)

    def rows(identity: bool) -> list[tuple[Any, ...]]:
        return [(rp.plain(s.name), c.claim, _holds_cell(c), c.detail)
                for s in sections for c in s.checks if c.is_identity == identity]

    blocks_summary: list[Any] = [
        rp.Paragraph(f"{checks_summary(every)}. A check that does not hold is shown as such; "
                     "settings were not chosen to make them hold."
                     + (" A check marked *not testable at this size* could not have held "
                        "whatever the data: its units (demonstration sets, tasks) cannot give "
                        "p-values small enough, for the paired comparison with a random-init "
                        "twin or for the claim's own test after the section's multiplicity "
                        "correction, so its NO is no evidence against the claim; more units "
                        "(e.g. `--sets`) make it testable." if n_untestable else "")
                     + (" Identities hold for any weights (the random-init controls satisfy "
                        "them too): they check the software, not a claim, and are listed and "
                        "counted apart." if id_all else "")),
        rp.Table(("experiment", "claim", "holds", "measured"), rows(False)),
    ]
    if id_all:
        blocks_summary.append(rp.Table(("experiment", "identity (any weights)", "holds",
                                        "measured"), rows(True),
                                       caption="Software identities (not counted among the "
                                               "checks)"))
    parts = [rp.Section("Summary of the checks", tuple(blocks_summary))]
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
        blocks.append(rp.Paragraph(provenance_line(s)))
        parts.append(rp.Section(s.title, blocks, anchor=s.name))
    report = rp.Report(title, parts, notes=tuple(notes), commands=tuple(commands),
                       meta=tuple(header))
    md, page = rp.write_report(report, out)
    write_json(out / "report.json", to_jsonable({"title": title, "header": list(header),
                                                 "checks_holding": n_ok, "checks": n_all,
                                                 "checks_not_testable": n_untestable,
                                                 "identities_holding": id_ok,
                                                 "identities": id_all}))
    return {"markdown": md, "html": page}
