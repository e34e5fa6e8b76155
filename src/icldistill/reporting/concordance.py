"""The comparison report's section "Within an item, do closer demonstrations answer right?".

The theory says the bias of the distilled weights grows with the MMD between the demonstrations
and the task. Across units that claim is confounded by everything else a selector changes; within
one test item it can be asked directly: of two prompts for the same item, one answered right and
one wrong, was the right one's demonstration set closer to the query (lower ``MMD^2(S_q, {q})``
under the report's reference kernel)? :func:`icldistill.core.stats.within_item_concordance`
answers it per task and over all tasks, over all such pairs and over the pairs whose prompts
showed the query's label equally often (so that the association cannot come from label
coverage alone), beside the same on a random-init control that read the same prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icldistill.core.results import Result
from icldistill.core.stats import holm, within_item_concordance

__all__ = [
    "CONCORDANCE_STRATA",
    "CONTROL_TASKS",
    "ConcordanceRecord",
    "concordance_records",
    "concordance_section",
]

#: The pair sets, by name: every discordant pair; pairs whose prompts both show (or both do not
#: show) the query's label; pairs whose prompts have the same number of demonstrations carrying
#: the query's label.
CONCORDANCE_STRATA = ("all pairs", "same label shown", "same label count")
#: The ``task`` of a pooled record over the control's tasks, where the control ran fewer tasks
#: than the trained grid (the trained model's "all" pools every task).
CONTROL_TASKS = "all, the control's tasks"


@dataclass(frozen=True)
class ConcordanceRecord(Result):
    """One line of ``concordance.json``.

    Attributes
    ----------
    model : str
        Model label (with its precision unless float32).
    k : int
    task : str
        A task, ``"all"`` (the items of every task together) or :data:`CONTROL_TASKS` (the
        items of the tasks the control ran, where it ran fewer).
    pairs_compared : str
        One of :data:`CONCORDANCE_STRATA`.
    reader : str
        ``"trained"`` or ``"control"`` (the random-init twin, on the same prompts).
    space : str
        Where the MMD is measured: ``"reference"`` (the report's reference embeddings and
        kernel, the units' ``mmd2_query``) or ``"K_att"`` (the keys and values of the trained
        model's demo-carrying heads under normalised ``K_att``,
        :meth:`icldistill.evaluation.Harness.item_mmd`).
    value, low, high : float
        Share of discordant pairs in which the right answer had the closer demonstrations,
        with its 95% item-bootstrap interval (0.5: no association).
    p, p_holm : float
        Two-sided item-bootstrap p-value of ``value = 0.5`` (the null: the pair-weighted
        share over the population of items is 50%, however it varies from item to item;
        :func:`icldistill.core.stats.within_item_concordance`), from the resamples of the
        interval, and Holm-adjusted over the model's and ``k``'s records of the same reader.
        (``concordance.json`` files written before held a within-item permutation p-value
        here, a test of no association on any item, under the same field names.)
    n_items, n_pairs, n_conditions : int
        Items with a discordant pair, discordant pairs, units compared per item.
    """

    model: str
    k: int
    task: str
    pairs_compared: str
    reader: str
    space: str
    value: float
    low: float
    high: float
    p: float
    p_holm: float
    n_items: int
    n_pairs: int
    n_conditions: int


def _matrices(rs: Sequence[Any], coverage: Mapping[str, Any],
              mmd_of: Mapping[str, np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``correct, mmd, shown, count`` ``[n, C]`` of one task's units (the units' test items
    must be the same), the MMD from ``mmd_of`` (unit key -> ``[n]``) or else the coverage
    records' ``mmd2_query``; ``None`` when fewer than two units have both."""
    def per_item(key: str) -> np.ndarray | None:
        return mmd_of.get(key) if mmd_of is not None else coverage[key].mmd2_query

    rs = [r for r in rs if r.key in coverage and per_item(r.key) is not None]
    recs = [coverage[r.key] for r in rs]
    if len(recs) < 2 or len({len(c.correct) for c in recs}) != 1:
        return None
    k = np.array([r.spec.k for r in rs], dtype=np.float64)
    return (np.stack([c.correct for c in recs], 1),
            np.stack([np.asarray(per_item(r.key), dtype=np.float64) for r in rs], 1),
            np.stack([c.shown for c in recs], 1).astype(np.int64),
            np.rint(np.stack([c.share for c in recs], 1) * k).astype(np.int64))


def _pad(mats: Sequence[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Stack several tasks' matrices along the items, padding missing conditions with NaN
    scores (which take part in no pair)."""
    width = max(m[0].shape[1] for m in mats)
    out = []
    for j, fill in enumerate((False, np.nan, 0, 0)):
        out.append(np.concatenate([
            np.pad(m[j], ((0, 0), (0, width - m[j].shape[1])), constant_values=fill)
            for m in mats]))
    return tuple(out)


def _measure(correct: np.ndarray, mmd2: np.ndarray, shown: np.ndarray, count: np.ndarray,
             how: str, n_boot: int, seed: int) -> Any:
    strata = {"all pairs": None, "same label shown": shown, "same label count": count}[how]
    return within_item_concordance(correct, mmd2, strata=strata, n_boot=n_boot, seed=seed)


def concordance_records(groups: Mapping[tuple[str, int], Sequence[Any]],
                        coverage: Mapping[str, Any],
                        control_coverage: Mapping[str, Any] | None = None, *,
                        katt: Mapping[str, np.ndarray] | None = None,
                        n_boot: int = 2000, seed: int = 0) -> list[ConcordanceRecord]:
    """Every :class:`ConcordanceRecord` of the grid: per ``(model, k)`` group of units (from
    the report's grouping), per task and over all tasks, for each of
    :data:`CONCORDANCE_STRATA`, for the trained model and, where ``control_coverage`` has the
    same units (same keys, same prompts), for the control; in the reference space and, with
    ``katt`` (unit key -> per-item ``MMD^2`` in the trained model's ``K_att`` space, from
    :meth:`icldistill.evaluation.Harness.item_mmd`; the control's units share the keys and
    the prompts, so the same values), in that space too. Each record's ``p`` is the
    item-bootstrap test of ``value = 0.5`` of :func:`within_item_concordance` (``n_boot``
    resamples, seeded by ``seed``, the same that give the interval); Holm adjusts over the
    records of one model, ``k`` and reader."""
    spaces: list[tuple[str, Mapping[str, np.ndarray] | None]] = [("reference", None)]
    if katt:
        spaces.append(("K_att", katt))
    out: list[ConcordanceRecord] = []
    for (model, k), rs in groups.items():
        tasks = sorted({r.spec.task for r in rs})
        for reader, cov in (("trained", coverage), ("control", control_coverage or {})):
            rows: list[tuple[str, str, str, Any, int]] = []
            for space, mmd_of in spaces:
                rows += _space_rows(rs, tasks, coverage, control_coverage or {}, reader, cov,
                                    space, mmd_of, n_boot, seed)
            ps = np.array([c.p for *_, c, _ in rows])
            adj = np.full(ps.shape, np.nan)
            ok = np.isfinite(ps)
            if ok.any():
                adj[ok] = holm(ps[ok])
            out += [ConcordanceRecord(model, int(k), task, how, reader, space, c.value, c.low,
                                      c.high, c.p, float(a), c.n_items, c.n_pairs, n_cond)
                    for (task, how, space, c, n_cond), a in zip(rows, adj, strict=True)]
    return out


def _space_rows(rs: Sequence[Any], tasks: Sequence[str], coverage: Mapping[str, Any],
                control_coverage: Mapping[str, Any], reader: str, cov: Mapping[str, Any],
                space: str, mmd_of: Mapping[str, np.ndarray] | None, n_boot: int,
                seed: int) -> list[tuple[str, str, str, Any, int]]:
    """The concordances of one reader in one space: per task, pooled, and pooled over the
    control's tasks (the trained model's, to be set beside the control's) where the control
    ran fewer tasks."""
    def mats(c: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, ...]]:
        return {t: m for t in tasks
                if (m := _matrices([r for r in rs if r.spec.task == t], c, mmd_of)) is not None}

    per_task = mats(cov)
    if not per_task:
        return []
    shared = sorted(mats(control_coverage)) if control_coverage else []
    n_trained = len(per_task) if reader == "trained" else len(mats(coverage))
    items = list(per_task.items())
    if len(items) > 1:
        items.append(("all", _pad([m for _, m in items])))
    if reader == "trained" and 1 < len(shared) < len(per_task):
        items.append((CONTROL_TASKS, _pad([per_task[t] for t in shared])))
    if reader == "control" and len(items) > 1 and len(shared) < n_trained:
        items[-1] = (CONTROL_TASKS, items[-1][1])
    return [(task, how, space, _measure(*m, how, n_boot, seed),
             int(np.max((~np.isnan(m[1])).sum(axis=1))))
            for task, m in items for how in CONCORDANCE_STRATA]


#: How the section names a space of :attr:`ConcordanceRecord.space` other than the reference.
_SPACE_NAMES = {"K_att": "MMD in the model's K_att space"}


def _cell(r: ConcordanceRecord | None) -> str:
    if r is None or not np.isfinite(r.value):
        return "–"
    star = "*" if r.p_holm < 0.05 else ""
    return f"{100 * r.value:.1f}% [{100 * r.low:.1f}, {100 * r.high:.1f}]{star}"


def concordance_section(records: Sequence[ConcordanceRecord]) -> Any:
    """The report section of :func:`concordance_records` (``None`` without records)."""
    from icldistill.artifacts.document import BulletList, Paragraph, Section, Table, plain

    if not records:
        return None
    blocks: list[Any] = []
    claims: list[str] = []
    index = {(r.model, r.k, r.task, r.pairs_compared, r.reader, r.space): r for r in records}
    for model, k, space in dict.fromkeys((r.model, r.k, r.space) for r in records):
        mine = [r for r in records if (r.model, r.k, r.space) == (model, k, space)]
        tag = f"{model} k={k}" + ("" if space == "reference" else f", {_SPACE_NAMES[space]}")
        tasks = list(dict.fromkeys(r.task for r in mine if r.reader == "trained"))
        tasks = (sorted(t for t in tasks if t not in ("all", CONTROL_TASKS))
                 + [t for t in ("all", CONTROL_TASKS) if t in tasks])
        has_control = any(r.reader == "control" for r in mine)
        header = ["task", "units", "discordant pairs",
                  *(f"trained: {h}" for h in CONCORDANCE_STRATA)]
        if has_control:
            header += ["control: all pairs", "control: same label count"]
        rows = []
        for t in tasks:
            first = index[(model, k, t, "all pairs", "trained", space)]
            row = [plain(t), str(first.n_conditions), f"{first.n_pairs:,}",
                   *(_cell(index.get((model, k, t, h, "trained", space)))
                     for h in CONCORDANCE_STRATA)]
            if has_control:
                row += [_cell(index.get((model, k, t, h, "control", space)))
                        for h in ("all pairs", "same label count")]
            rows.append(row)
        blocks.append(Section(f"{tag}: share of discordant pairs in which the closer "
                              "demonstrations answered right (95% CI; * = Holm p < 0.05)",
                              (Table(header, rows),)))
        claims += _claims(plain(tag), mine)
    intro = Paragraph(
        "The theory's bias term grows with the MMD between the demonstrations and the task. "
        "Within one test item it can be checked without the confounds of a comparison across "
        "units: take two prompts for the same item (two units of the grid: selectors, seeds), "
        "one answered right and one wrong. Was the right one's demonstration set the closer to "
        "the query (lower per-query MMD² under the reference kernel; ties count one half)? "
        "50% is no association. \"same label shown\" counts only the pairs whose prompts both "
        "show the query's label among their demonstrations, or both do not; \"same label "
        "count\" only those with the same number of demonstrations carrying it, so that an "
        "association there does not come from which labels the prompts show. The interval "
        "resamples items (2000 resamples, seed 0); the p-value tests 50% on the same "
        "resamples (twice the smaller share of resamples on either side of 50%, so no p-value "
        "is below 1/2001 before adjustment, and p < 0.05 goes with an interval that excludes "
        "50%): the null is a 50% share over the items, which lets the association differ "
        "from item to item. It is Holm-adjusted over each model's and k's rows of one reader. "
        "The control "
        "is the random-init twin reading the same prompts. Descriptive: selectors differ in "
        "more than MMD (order, redundancy), and the MMD here is on the reference embeddings, "
        "not the model's attention keys, except in the tables marked K_att: there the MMD is "
        "measured on the keys and values of the trained model's demo-carrying heads (those "
        "mmd-katt selects on) under normalised K_att, the space the theory speaks of (the "
        "control reads the same prompts, so it has the same values). For multiple-choice "
        "tasks the labels are the option letters.")
    return Section("Within an item, do closer demonstrations answer right?",
                   (intro, BulletList(claims), *blocks))


def _claims(tag: str, recs: Sequence[ConcordanceRecord]) -> list[str]:
    """The computed sentences of one model and ``k`` (``tag``: its inline text, escaped); task
    names are escaped here, p-values formatted as the comparison report's
    (:func:`icldistill.reporting.reports._short_p`)."""
    from icldistill.artifacts.document import plain
    from icldistill.reporting.reports import _short_p

    def get(task: str, how: str, reader: str = "trained") -> ConcordanceRecord | None:
        return next((r for r in recs if (r.task, r.pairs_compared, r.reader)
                     == (task, how, reader)), None)

    out = []
    pooled = "all" if get("all", "all pairs") else None
    if pooled:
        a, s = get("all", "all pairs"), get("all", "same label count")
        assert a is not None and s is not None
        text = (f"{tag}, all tasks: the closer demonstrations answered right in "
                f"{_cell(a)} of {a.n_pairs:,} discordant pairs (Holm p {_short_p(a.p_holm)}); "
                f"among pairs with the same number of demonstrations carrying the query's "
                f"label, in {_cell(s)} of {s.n_pairs:,} (Holm p {_short_p(s.p_holm)}).")
        out.append(text)
    for scope in ("all", CONTROL_TASKS):
        c, cs = get(scope, "all pairs", "control"), get(scope, "same label count", "control")
        a, s = get(scope, "all pairs"), get(scope, "same label count")
        if None in (a, s, c, cs):
            continue
        where = "all tasks" if scope == "all" else "the control's tasks"
        out.append(f"{tag}, {where}: trained {_cell(a)} (all pairs) and {_cell(s)} (same "
                   f"label count); the random-init twin reading the same prompts {_cell(c)} "
                   f"and {_cell(cs)}.")
    strict = [r for r in recs if r.reader == "trained" and r.task not in ("all", CONTROL_TASKS)
              and r.pairs_compared == "same label count" and np.isfinite(r.value)]
    up = sorted(plain(r.task) for r in strict if r.p_holm < 0.05 and r.value > 0.5)
    down = sorted(plain(r.task) for r in strict if r.p_holm < 0.05 and r.value < 0.5)
    out.append(f"{tag}: with the label count held equal, closer demonstrations go with right "
               f"answers on {', '.join(up) if up else 'no task'}"
               + (f", and with wrong ones on {', '.join(down)}" if down else "")
               + f" (Holm p < 0.05; {len(strict) - len(up) - len(down)} of {len(strict)} "
               "tasks show no significant association).")
    return out
