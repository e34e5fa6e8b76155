"""Reports: figures, tables and files written from results (matplotlib figures, JSON, and
Markdown + HTML built from the one report model of :mod:`icldistill.reporting`).

Everything here writes atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from icldistill.artifacts.figures import (
    heatmap,
    layer_colorbar,
    layer_colors,
    new_figure,
    save_figure,
)
from icldistill.artifacts.store import (
    atomic_write,
    report_lock,
    to_jsonable,
    write_json,
    write_text,
)
from icldistill.core.results import Result
from icldistill.core.stats import spearman
from icldistill.core.validation import InputError

if TYPE_CHECKING:  # pragma: no cover

    from icldistill.core.stats import PairedComparison
    from icldistill.evaluation.precision import PrecisionComparison
    from icldistill.models.tracing import TraceResult

__all__ = [
    "ComparisonReport",
    "ControlCheck",
    "CoverageSummary",
    "SelectorSummary",
    "ablation_pairs",
    "atomic_write",
    "control_checks",
    "format_p",
    "heatmap",
    "layer_colorbar",
    "layer_colors",
    "merge_comparisons",
    "new_figure",
    "save_figure",
    "spearman",
    "to_jsonable",
    "write_ablation_report",
    "write_comparison_report",
    "write_json",
    "write_text",
    "write_trace_report",
]


# ============================================================================ trace report
def write_trace_report(
    result: TraceResult,
    out_dir: str | Path,
    *,
    title: str = "icldistill trace",
    metadata: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write a traced model's decomposition: JSON, Parquet, figures and a Markdown summary.

    Files: ``trace.json`` (summary numbers and per layer/head arrays), ``trace.parquet`` (one row
    per layer, head, position), ``eta_heatmap.png`` and ``demo_share_heatmap.png`` (layer x head
    at the last traced position), ``positions.png`` (per-position curves averaged over heads),
    ``summary.md`` and ``summary.html`` (the same summary, :mod:`icldistill.reporting`).

    Returns
    -------
    dict[str, Path]
        The written files by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    a = _TraceArrays.of(result)
    files = _trace_figures(a, out, title)
    files["json"] = write_json(out / "trace.json", _trace_summary(result, a, title, meta, files))
    try:
        frame = result.to_frame()
        files["parquet"] = atomic_write(out / "trace.parquet",
                                        lambda fh: frame.to_parquet(fh, index=False))
    except ImportError as exc:  # pragma: no cover - pandas/pyarrow are in the models extra
        raise ImportError("writing Parquet needs pandas and pyarrow: pip install "
                          "'icldistill[models]'") from exc
    files["markdown"], files["html"] = _write_report(_trace_document(result, a, title, meta),
                                                     out, stem="summary")
    return files


def _write_report(report: Any, out: Path, stem: str = "report") -> tuple[Path, Path]:
    """:func:`icldistill.artifacts.document.write_report` of ``report`` with the software it was
    written with (:func:`icldistill.artifacts.document.provenance`: icldistill's version and
    git commit, torch's and transformers' versions) as its last meta line, "**software**:
    ...". The one place the reports of this module (trace, comparison, ablation) state it."""
    from icldistill.artifacts.document import provenance, write_report

    return write_report(replace(report, meta=(*report.meta, ("software", provenance()))), out,
                        stem=stem)


@dataclass(frozen=True)
class _TraceArrays:
    """The arrays of a trace the report shows, as float64 numpy ``[L, H, P]`` (or ``[P]``)."""

    eta: np.ndarray
    share: np.ndarray
    mass_d: np.ndarray
    pos: np.ndarray
    kernel: np.ndarray

    @classmethod
    def of(cls, result: TraceResult) -> _TraceArrays:
        return cls(result.eta.double().numpy(), result.demo_share.double().numpy(),
                   result.attention_mass["demos"].double().numpy(), result.positions.numpy(),
                   result.has_kernel_form.numpy())

    @property
    def top(self) -> np.ndarray:
        """``[5, 2]`` (layer, head) of the largest demonstration shares at the last position."""
        L, H, _ = self.share.shape
        order = np.argsort(-self.share[:, :, -1], axis=None)[:5]
        return np.dstack(np.unravel_index(order, (L, H)))[0]


def _trace_figures(a: _TraceArrays, out: Path, title: str) -> dict[str, Path]:
    """``eta_heatmap.png``, ``demo_share_heatmap.png`` and ``positions.png``."""
    eta, share, mass_d, pos = a.eta, a.share, a.mass_d, a.pos
    L = eta.shape[0]
    files: dict[str, Path] = {}
    fig, axes = new_figure(1, 2, size=(6.2, 4.6))
    heatmap(axes[0, 0], eta[:, :, -1], f"η* = N/(2D′) at the last position (t={pos[-1]})",
             "η*", fig, log=True)
    heatmap(axes[0, 1], share[:, :, -1], "demonstrations' share of the head output",
             "‖c_D‖ / Σ_S ‖c_S‖", fig)
    fig.suptitle(title)
    files["eta_heatmap"] = save_figure(fig, out / "eta_heatmap.png")
    fig, axes = new_figure(1, 1, size=(6.2, 4.6))
    heatmap(axes[0, 0], share[:, :, -1], "demonstrations' share of the head output "
             f"(t={pos[-1]})", "‖c_D‖ / Σ_S ‖c_S‖", fig)
    files["demo_share_heatmap"] = save_figure(fig, out / "demo_share_heatmap.png")

    fig, axes = new_figure(1, 3, size=(5.0, 3.8))
    cmap = layer_colors(L)
    for layer in range(L):
        kw = {"color": cmap[layer], "lw": 1.2, "label": f"layer {layer}" if L <= 12 else None}
        axes[0, 0].plot(pos, eta[layer].mean(0), **kw)
        axes[0, 1].plot(pos, mass_d[layer].mean(0), **kw)
        axes[0, 2].plot(pos, share[layer].mean(0), **kw)
    axes[0, 0].set_yscale("log")
    for ax, ylabel in zip(axes[0], ("η* (mean over heads)", "attention mass on demos",
                                    "demo share of output"), strict=True):
        ax.set_xlabel("query position t")
        ax.set_ylabel(ylabel)
    axes[0, 0].set_title("effective learning rate per position")
    axes[0, 1].set_title("attention mass on the demonstrations")
    axes[0, 2].set_title("demonstrations' share of the output")
    if L <= 12:
        axes[0, 2].legend(fontsize=7)
    else:
        layer_colorbar(fig, axes[0, 2], L)
    fig.suptitle(f"{title}: per position (colour = layer)", y=1.04)
    files["positions"] = save_figure(fig, out / "positions.png")
    return files


def _last_position(a: _TraceArrays) -> dict[str, float]:
    """Mean / min / max of the trace's quantities at the last traced position."""
    return {
        "eta_mean": float(a.eta[:, :, -1].mean()),
        "eta_min": float(a.eta[:, :, -1].min()),
        "eta_max": float(a.eta[:, :, -1].max()),
        "demo_mass_mean": float(a.mass_d[:, :, -1].mean()),
        "demo_share_mean": float(a.share[:, :, -1].mean()),
    }


def _trace_summary(result: TraceResult, a: _TraceArrays, title: str, meta: dict[str, Any],
                   files: dict[str, Path]) -> dict[str, Any]:
    """The content of ``trace.json``."""
    L, H, _ = a.eta.shape
    share = a.share
    return {
        "title": title,
        **meta,
        "num_tokens": len(result.tokens),
        "num_layers": L,
        "num_heads": H,
        "positions": a.pos,
        "num_demo_keys_last": result.num_demo_keys[:, -1],
        "heads_without_kernel_form": int((~a.kernel).sum()),
        "max_decomposition_error": result.max_decomposition_error,
        "last_position": _last_position(a),
        "top_demo_share_heads": [{"layer": int(i), "head": int(j),
                                  "demo_share": float(share[i, j, -1])} for i, j in a.top],
        "eta_last": a.eta[:, :, -1],
        "demo_share_last": share[:, :, -1],
        "demo_mass_last": a.mass_d[:, :, -1],
        "log_normalizer_last": result.log_normalizer[:, :, -1],
        "has_kernel_form": a.kernel,
        "files": {k: v.name for k, v in files.items()},
    }


def _trace_document(result: TraceResult, a: _TraceArrays, title: str,
                    meta: dict[str, Any]) -> Any:
    """The summary report (``summary.md`` / ``summary.html``) of a trace."""
    from icldistill.artifacts.document import Figure, Paragraph, Report, Section, Table

    eta, share, mass_d, pos = a.eta, a.share, a.mass_d, a.pos
    L, H, P = eta.shape
    last = _last_position(a)
    traced = pos.tolist() if P <= 12 else f"{P} (from {pos[0]} to {pos[-1]})"
    n_kernel = int((~a.kernel).sum())
    return Report(
        title,
        meta=(
            *((str(k), str(v)) for k, v in meta.items()),
            f"tokens: {len(result.tokens)}; layers × heads: {L} × {H}; traced positions: "
            f"{traced}",
            "decomposition check: max ‖Σ_S c_S − o‖ / ‖o‖ = "
            f"{result.max_decomposition_error:.2e} (against the attention output the model "
            "used)",
            f"heads without a kernel form (soft-capped or biased logits): {n_kernel} of {L * H}",
        ),
        sections=(Section(
            f"At the last position (t = {pos[-1]}, token {result.tokens[pos[-1]]!r})",
            (
                Table(("quantity", "mean over heads", "min", "max"), (
                    ("η* = N/(2D′)", f"{last['eta_mean']:.4g}", f"{last['eta_min']:.4g}",
                     f"{last['eta_max']:.4g}"),
                    ("attention mass on demos", f"{last['demo_mass_mean']:.3f}",
                     f"{mass_d[:, :, -1].min():.3f}", f"{mass_d[:, :, -1].max():.3f}"),
                    ("demo share of output", f"{last['demo_share_mean']:.3f}",
                     f"{share[:, :, -1].min():.3f}", f"{share[:, :, -1].max():.3f}"),
                )),
                Paragraph("Heads with the largest demonstration share:"),
                Table(("layer", "head", "demo share", "η*"), tuple(
                    (str(int(i)), str(int(j)), f"{share[i, j, -1]:.3f}", f"{eta[i, j, -1]:.4g}")
                    for i, j in a.top)),
                Figure("eta_heatmap.png", "η* and demo share"),
                Figure("positions.png", "per position"),
            ),
        ),),
    )


# ============================================================================ comparison report
@dataclass(frozen=True)
class SelectorSummary:
    """Accuracy of one selector for one model and ``k``, averaged over seeds and orderings."""

    model: str
    k: int
    selector: str
    per_task: dict[str, float]
    per_task_std: dict[str, float]
    mean: float
    mmd2_task: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON types (non-finite numbers as ``None``)."""
        return to_jsonable(asdict(self))


@dataclass(frozen=True)
class ComparisonReport:
    """What :func:`write_comparison_report` wrote and concluded.

    Attributes
    ----------
    markdown, html : Path
    figures : list of Path
    summaries : list of SelectorSummary
    best : dict ``"model k=K"`` -> selector with the best mean accuracy over tasks (absent
        when the grid is incomplete or when several selectors tie, see ``ties``)
    mmd_family_best : dict ``"model k=K"`` -> whether an MMD-family selector is best on average
        (on a tie: whether one of the tied selectors is)
    beats_random : dict ``"model k=K"`` -> {task: bool}
        Per task, whether the MMD family does better than ``random`` there. With paired
        comparisons for the group (``beats_random_tested[tag]`` is ``True``): whether some
        MMD-family selector is significantly better than ``random`` on that task (its paired
        per-task comparison has ``diff > 0`` and Holm p < :data:`PAIRED_ALPHA`); the tasks are
        those with such a comparison. Without them (``False``): whether the highest MMD-family
        mean accuracy on the task is above the mean of the random seeds, a comparison of point
        estimates that tests nothing (and, as a maximum over selectors, favours the family).
    spearman : dict ``"model k=K"`` -> {task: Spearman(MMD^2 to the task, accuracy) over the
        evaluated demonstration sets}
    collapsed : dict ``"model k=K"`` -> {task: (units whose predictions collapse onto one
        label, units)}; a unit collapses when every label but one has a recall below
        :data:`COLLAPSE_RECALL` (the model answers one label whatever the demonstrations, so
        its accuracy reflects the label prior rather than the demonstrations)
    paired_json : Path or None
        ``paired.json`` (the paired comparisons, one record each) when they were given.
    ties : dict ``"model k=K"`` -> the selectors that share the best mean accuracy over tasks
        (two or more, equal at the report's precision of three decimals); no winner is
        declared for these groups.
    paired_macro_f1_json : Path or None
        ``paired_macro_f1.json`` (the paired macro-F1 comparisons) when they were given.
    meets_bar : dict ``"model k=K"`` -> the MMD-family selectors (labels starting with
        ``mmd``) that beat ``knn`` on the mean over tasks (Holm p < :data:`PAIRED_ALPHA`) and are
        significantly worse than ``random`` on no task, from the paired comparisons; empty
        tuple when none does. Only groups with paired comparisons against both baselines.
    coverage : list of CoverageSummary
        Per model, ``k`` and selector: how often a test item's own label was among its
        demonstrations and the accuracy with and without it (when ``coverage`` was given).
    control : list of ControlCheck
        The paired comparisons matched with the random-init control's (when
        ``control_paired`` was given).
    posthoc_json : Path or None
        ``paired_posthoc.json`` (the post-hoc comparisons, one record each) when they were
        given.
    posthoc_control : list of ControlCheck
        The post-hoc comparisons matched with the same pairs on the random-init control (when
        ``posthoc`` and ``control_posthoc`` were given).
    precision_json : Path or None
        ``precision.json`` (the same units in two precisions, one record each) when
        ``precision`` was given.
    concordance_json : Path or None
        ``concordance.json`` (:class:`icldistill.reporting.concordance.ConcordanceRecord`
        records) when ``coverage`` carried per-item MMD (``Harness.label_coverage(...,
        item_mmd=True)``).
    coverage_json : Path or None
        ``coverage.json``: the :attr:`coverage` summaries, one record each (``vs_vote`` as
        ``{"value", "low", "high", ...}``, NaN as ``null``), when there are any.
    beats_random_tested : dict ``"model k=K"`` -> bool
        Whether :attr:`beats_random` of the group comes from paired comparisons (``True``) or
        from mean accuracies (``False``).
    """

    markdown: Path
    html: Path
    figures: list[Path]
    summaries: list[SelectorSummary]
    best: dict[str, str]
    mmd_family_best: dict[str, bool]
    beats_random: dict[str, dict[str, bool]]
    spearman: dict[str, dict[str, float]]
    collapsed: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    paired_json: Path | None = None
    ties: dict[str, tuple[str, ...]] = field(default_factory=dict)
    paired_macro_f1_json: Path | None = None
    meets_bar: dict[str, tuple[str, ...]] = field(default_factory=dict)
    coverage: list[CoverageSummary] = field(default_factory=list)
    control: list[ControlCheck] = field(default_factory=list)
    posthoc_json: Path | None = None
    posthoc_control: list[ControlCheck] = field(default_factory=list)
    precision_json: Path | None = None
    concordance_json: Path | None = None
    coverage_json: Path | None = None
    beats_random_tested: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON types (paths as strings, tuples as lists, non-finite numbers as
        ``None``)."""
        return to_jsonable(asdict(self))


#: Recall below which a label counts as never predicted (see ``ComparisonReport.collapsed``).
COLLAPSE_RECALL = 0.05
#: Holm-adjusted p-value below which a paired comparison is called a difference.
PAIRED_ALPHA = 0.05


def _collapsed(r: Any) -> bool:
    recalls = list(getattr(r, "per_label_accuracy", {}).values())
    return len(recalls) >= 2 and sum(v >= COLLAPSE_RECALL for v in recalls) <= 1


def _model_label(r: Any) -> str:
    """A unit's model with its precision when not float32 (``UnitSpec.model_label``)."""
    return str(getattr(r.spec, "model_label", r.spec.model))


def _group_results(results: Sequence[Any]) -> dict[tuple[str, int], list[Any]]:
    groups: dict[tuple[str, int], list[Any]] = {}
    for r in results:
        groups.setdefault((_model_label(r), r.spec.k), []).append(r)
    return dict(sorted(groups.items()))


def _under_report_lock(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a report writer with an ``out_dir`` argument) holding the folder's
    :func:`~icldistill.artifacts.store.report_lock`: two processes writing one folder's report
    at once wait for each other instead of interleaving their files."""
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        out_dir = kwargs["out_dir"] if "out_dir" in kwargs else args[names.index("out_dir")]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with report_lock(out_dir):
            return fn(*args, **kwargs)

    return locked


# long: 23 lines of signature and 66 of docstring (one paragraph per optional section); the
# code is 74
@_under_report_lock
def write_comparison_report(
    results: Sequence[Any],
    out_dir: str | Path,
    *,
    title: str = "Demonstration selection: few-shot accuracy",
    commands: Sequence[str] = (),
    notes: Sequence[str] = (),
    paired: Sequence[PairedComparison] | None = None,
    paired_macro_f1: Sequence[PairedComparison] | None = None,
    majority: Mapping[str, float] | None = None,
    coverage: Mapping[str, Any] | None = None,
    control_paired: Sequence[PairedComparison] | None = None,
    control_label: str = "a random-init control",
    control_coverage: Mapping[str, Any] | None = None,
    control_imported: bool = False,
    posthoc: Sequence[PairedComparison] | None = None,
    control_posthoc: Sequence[PairedComparison] | None = None,
    precision: Sequence[PrecisionComparison] | None = None,
    katt_mmd: Mapping[str, np.ndarray] | None = None,
    incomplete: Mapping[str, tuple[int, int]] | None = None,
    reference: str = "minilm",
    random_init: bool = False,
) -> ComparisonReport:
    """Markdown + HTML report of a selector comparison (harness :class:`UnitResult` objects).

    With ``paired`` (:func:`icldistill.core.stats.paired_comparisons`) the report leads with the
    paired comparisons — per model and ``k``, the mean-over-tasks difference of every selector
    to each baseline with its CI, p-value, Holm-adjusted p-value and verdict, then the per-task
    differences — and writes them to ``paired.json`` (one ``PairedComparison.to_dict()``
    record each). ``paired_macro_f1`` (the same with ``metric="macro_f1"``) adds the section
    "Paired comparisons in macro-F1" right after it and ``paired_macro_f1.json``; ``majority``
    (task -> share of its test items that carry the most frequent label, the accuracy of always
    answering that label) is shown there, and the tasks where it is at least
    :data:`MAJORITY_SHARE` are named as those where accuracy mostly counts the majority label.
    ``coverage`` (unit key -> :class:`icldistill.evaluation.LabelCoverage`, from
    :meth:`icldistill.evaluation.Harness.label_coverage`) adds the section "Do the
    demonstrations show the query's label?" after the paired sections, and ``coverage.json``
    (its per-selector summaries). ``control_paired`` (the
    paired comparisons of the same grid on a random-init twin, e.g. its ``paired.json``) adds
    "Against a random-init control" (:func:`control_checks`), named by ``control_label``;
    with ``coverage`` and ``control_coverage`` (the control's label coverage: its units have
    the same keys) it also sets the model's accuracy minus the vote of its demonstrations'
    labels beside the control's, on the units both have. ``control_imported`` says how the
    control read the same prompts: ``False``, its selectors chose from MiniLM embeddings of the
    same pool (the same demonstrations); ``True``, its units took the trained units'
    selections (:class:`icldistill.evaluation.Harness` ``selections_from``), whatever the
    representation. ``posthoc`` (:func:`icldistill.core.stats.paired_comparisons` with
    ``pairs``: comparisons chosen after seeing the results) adds "Post-hoc comparisons" after
    the bar, labelled exploratory, with their own Holm family, and ``paired_posthoc.json``;
    ``control_posthoc`` (the same pairs on the random-init control) sets the control beside
    them (:func:`control_checks`). ``precision``
    (:func:`icldistill.evaluation.compare_precisions`: units run in two precisions) adds
    "The same units in two precisions" before the table of every unit, and ``precision.json``.
    Where ``coverage`` carries each item's ``MMD^2`` to its query (``item_mmd=True``), the
    section "Within an item, do closer demonstrations answer right?"
    (:mod:`icldistill.reporting.concordance`) follows the coverage section, with the control
    beside it when ``control_coverage`` has per-item MMD too, and ``concordance.json``;
    ``katt_mmd`` (unit key -> per-item ``MMD^2`` in the trained model's ``K_att`` space,
    :meth:`icldistill.evaluation.Harness.item_mmd`) adds the same tables in that space.
    ``incomplete`` (``"model k=K"`` -> ``(units finished, units in the grid)``, for the groups
    of a grid not yet finished) withholds the bar's verdict for those groups: their tables are
    shown, marked incomplete, and they are left out of ``meets_bar``. ``reference`` names the
    encoder of the reference kernel the results' ``mmd2_task`` values are under
    (:attr:`icldistill.evaluation.Harness.reference_encoder`), as the MMD tables say.
    ``random_init`` marks the results as a random-init control's: the bar's section then says
    that a verdict there is a control, not evidence for a selector.

    Tables: accuracy (mean over seeds and orderings, 95% bootstrap CI of single runs in the
    detail table) per task and selector for every model and ``k``, the mean over tasks, the
    MMD to the task of every selector, selection and scoring times. Figures: accuracy per
    selector per task; accuracy against the demonstrations' ``MMD^2`` to the task with the
    per-task Spearman correlation. Conclusions (best selector, whether the MMD family is best)
    are computed from the numbers, not asserted; whether the MMD family does better than
    random on each task is judged by the paired per-task comparisons against ``random`` when
    ``paired`` holds them (some MMD-family selector with Holm p < :data:`PAIRED_ALPHA` and a
    positive difference), and is otherwise stated as a comparison of means, untested
    (:attr:`ComparisonReport.beats_random`).

    ``report.md`` and ``report.html`` are two renderings of one
    :class:`icldistill.reporting.Report` (user text is escaped in the HTML); their meta line
    "software" names the icldistill version (and git commit), torch and transformers.

    The folder holds the records of this call only: a record file or figure that this call does
    not write because its input was not given (``paired.json``, ``paired_macro_f1.json``,
    ``paired_posthoc.json``, ``coverage.json``, ``precision.json``, ``concordance.json``,
    ``figures/paired_*.png``, see :data:`SIDECARS`) is removed when an earlier run left it
    there, so no file beside the report holds what the report does not show. No other file
    is touched.
    """
    from icldistill.artifacts.document import Paragraph, Report, Section

    if not results:
        raise ValueError("no results to report")
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    paired = None if paired is None else list(paired)
    acc_ = _Conclusions()
    sections: list[Section] = []
    figures: list[Path] = []
    overview: list[tuple[str, list[str]]] = []
    for (model, k), rs in _group_results(results).items():
        section, figs, row = _group_section(model, k, rs, out, acc_, reference, paired)
        sections.append(section)
        figures += figs
        if row is not None:
            overview.append((f"{model} k={k}", row))
    if overview:
        sections.insert(0, Section("Overview", (_overview_table(overview, acc_),)))
    lead, paired_json, f1_json, meets_bar, checks = _lead_sections(
        out, results, paired, paired_macro_f1, majority, coverage, control_paired,
        control_label, control_coverage,
        _IMPORTED_PROMPTS if control_imported else _MINILM_PROMPTS, incomplete or {})
    if random_init:
        lead = [replace(b, blocks=(b.blocks[0], Paragraph(_RANDOM_INIT_BAR),
                                                *b.blocks[1:]))
                if isinstance(b, Section) and b.title == _BAR_TITLE else b for b in lead]
    posthoc_json = None
    posthoc_checks: list[ControlCheck] = []
    if control_posthoc is not None and posthoc is None:
        raise ValueError("control_posthoc: the control of post-hoc comparisons needs posthoc "
                         "(the trained model's)")
    if posthoc is not None:
        posthoc = list(posthoc)
        posthoc_json = write_json(out / "paired_posthoc.json", [c.to_dict() for c in posthoc])
        at = next((i + 1 for i, b in enumerate(lead)
                   if getattr(b, "title", None) == _BAR_TITLE),
                  min(1, len(lead)))
        posthoc_checks = ([] if control_posthoc is None else
                          control_checks(posthoc, list(control_posthoc)))
        lead.insert(at, _posthoc_section(posthoc, posthoc_checks, control_label))
    sections[:0] = lead
    figures[:0] = [out / f for f in _figure_paths(lead)]
    cov_summaries: list[CoverageSummary] = []
    if coverage:
        cov_section, cov_summaries = _coverage_section(results, coverage, acc_.rho,
                                                       out / "figures")
        if cov_section is not None:
            sections.insert(len(lead), cov_section)
            figures += [out / f for f in _figure_paths([cov_section])]
    coverage_json = (write_json(out / "coverage.json", [c.to_dict() for c in cov_summaries])
                     if cov_summaries else None)
    conc_section, concordance_json = _within_item(results, coverage, control_coverage,
                                                  katt_mmd, out)
    if conc_section is not None:
        at = next((i + 1 for i, s in enumerate(sections)
                   if getattr(s, "title", None) == _COVERAGE_TITLE), len(lead))
        sections.insert(at, conc_section)
    precision_json = None
    if precision is not None:
        precision = list(precision)
        precision_json = write_json(out / "precision.json", [c.to_dict() for c in precision])
        sections.append(_precision_section(precision))
    sections.append(Section("Every evaluated unit", (_detail_table(results),
                                                     Paragraph(_SECONDS_NOTE))))
    md_path, html_path = _write_report(Report(title, sections, notes=tuple(notes),
                                              commands=tuple(commands)), out)
    _remove_stale_sidecars(out, [paired_json, f1_json, posthoc_json, coverage_json,
                                 concordance_json, precision_json, *figures])
    return ComparisonReport(md_path, html_path, figures, acc_.summaries, acc_.best,
                            acc_.fam_best, acc_.beats, acc_.rho, acc_.collapsed, paired_json,
                            acc_.ties, f1_json, meets_bar, cov_summaries, checks, posthoc_json,
                            posthoc_checks, precision_json, concordance_json, coverage_json,
                            acc_.beats_tested)


#: The files :func:`write_comparison_report` writes beside the report only when given what they
#: hold (and removes when it does not write them): record files in the report folder, and
#: figures (glob patterns) in its ``figures/`` folder.
SIDECARS = ("paired.json", "paired_macro_f1.json", "paired_posthoc.json", "coverage.json",
            "precision.json", "concordance.json")
SIDECAR_FIGURES = ("paired_*.png",)


def _remove_stale_sidecars(out: Path, written: Sequence[Path | None]) -> list[Path]:
    """Remove the :data:`SIDECARS` and :data:`SIDECAR_FIGURES` of ``out`` that are not among
    ``written`` (the files this run wrote): records of an earlier run that this report does not
    show. Nothing else is touched. Returns the removed files."""
    keep = {Path(p).resolve() for p in written if p is not None}
    found = [out / name for name in SIDECARS]
    found += [p for pattern in SIDECAR_FIGURES for p in sorted((out / "figures").glob(pattern))]
    removed = []
    for p in found:
        if (p.is_file() or p.is_symlink()) and p.resolve() not in keep:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _within_item(results: Sequence[Any], coverage: Mapping[str, Any] | None,
                 control_coverage: Mapping[str, Any] | None,
                 katt_mmd: Mapping[str, Any] | None, out: Path) -> tuple[Any, Path | None]:
    """The section "Within an item, do closer demonstrations answer right?" and its
    ``concordance.json`` (both reports'), or ``(None, None)`` when ``coverage`` carries no
    per-item MMD²."""
    if not coverage or all(getattr(c, "mmd2_query", None) is None for c in coverage.values()):
        return None, None
    from icldistill.reporting.concordance import concordance_records, concordance_section

    conc = concordance_records(_group_results(results), coverage, control_coverage,
                               katt=katt_mmd)
    if not conc:
        return None, None
    path = write_json(out / "concordance.json", [c.to_dict() for c in conc])
    return concordance_section(conc), path


def _lead_sections(out: Path, results: Sequence[Any],
                   paired: Sequence[PairedComparison] | None,
                   paired_macro_f1: Sequence[PairedComparison] | None,
                   majority: Mapping[str, float] | None, coverage: Mapping[str, Any] | None,
                   control_paired: Sequence[PairedComparison] | None, control_label: str,
                   control_coverage: Mapping[str, Any] | None, control_how: str,
                   incomplete: Mapping[str, tuple[int, int]]
                   ) -> tuple[list[Any], Path | None, Path | None, dict[str, tuple[str, ...]],
                              list[ControlCheck]]:
    """The sections that lead the comparison report (paired comparisons, the MMD-family bar,
    macro-F1, the random-init control), writing ``paired.json`` / ``paired_macro_f1.json``;
    returns them with those paths, the bar's verdicts and the control checks."""
    paired_json = f1_json = None
    meets_bar: dict[str, tuple[str, ...]] = {}
    lead: list[Any] = []
    if paired is not None:
        paired = list(paired)
        paired_json = write_json(out / "paired.json", [c.to_dict() for c in paired])
        lead.append(_paired_section(paired, figures=out / "figures"))
        bar_section, meets_bar = _bar_section(paired, incomplete)
        if bar_section is not None:
            lead.append(bar_section)
    if paired_macro_f1 is not None:
        paired_macro_f1 = list(paired_macro_f1)
        if any(c.metric != "macro_f1" for c in paired_macro_f1):
            raise ValueError("paired_macro_f1: expected comparisons with metric 'macro_f1'")
        f1_json = write_json(out / "paired_macro_f1.json",
                             [c.to_dict() for c in paired_macro_f1])
        lead.append(_paired_section(paired_macro_f1, majority=majority))
    checks: list[ControlCheck] = []
    if control_paired is not None and paired is not None:
        checks = control_checks(paired, list(control_paired))
        if checks:
            lead.append(_control_section(checks, control_label, results, coverage,
                                         control_coverage, how=control_how))
    return lead, paired_json, f1_json, meets_bar, checks


#: Columns of the comparison report's overview table (one row per model and ``k``); the sixth
#: is named by :func:`_overview_table` after how the groups were compared with random.
_OVERVIEW_COLUMNS = ("model, k", "best mean (selector, accuracy)", "best MMD family", "gap",
                     "unit 95% CI half-width", "MMD family vs random",
                     "mean Spearman(MMD², acc)")
#: Index of the overview's column "MMD family vs random" (a count of tasks).
_VS_RANDOM = 5
#: How the overview's column counts tasks: from paired comparisons, or from means.
_TESTED_RANDOM = f"significantly better than random (paired, Holm p < {PAIRED_ALPHA}) on"
_UNTESTED_RANDOM = "higher mean than random (not tested) on"


def _overview_table(rows: Sequence[tuple[str, list[str]]], c: _Conclusions) -> Any:
    """The overview table of ``(tag, row)`` pairs. Its column of tasks where the MMD family does
    better than random says how that was judged: by the paired comparisons (Holm p), or by
    mean accuracies (not tested); where groups differ, each cell says it."""
    from icldistill.artifacts.document import Table

    tested = {tag: c.beats_tested.get(tag) for tag, _ in rows if tag in c.beats}
    kinds = set(tested.values())
    header = list(_OVERVIEW_COLUMNS)
    if kinds == {True}:
        header[_VS_RANDOM] = f"MMD family {_TESTED_RANDOM}"
    elif kinds == {False}:
        header[_VS_RANDOM] = f"MMD family: {_UNTESTED_RANDOM}"
    out = []
    for tag, row in rows:
        row = list(row)
        if len(kinds) > 1 and tag in tested:
            row[_VS_RANDOM] += (f" (paired, Holm p < {PAIRED_ALPHA})" if tested[tag]
                                else " (means, not tested)")
        out.append(row)
    return Table(header, out)


@dataclass
class _Conclusions:
    """What :func:`write_comparison_report` accumulates over the (model, k) groups."""

    summaries: list[SelectorSummary] = field(default_factory=list)
    best: dict[str, str] = field(default_factory=dict)
    fam_best: dict[str, bool] = field(default_factory=dict)
    beats: dict[str, dict[str, bool]] = field(default_factory=dict)
    beats_tested: dict[str, bool] = field(default_factory=dict)
    vs_random: dict[str, dict[str, list[tuple[float, Any]]]] = field(default_factory=dict)
    rho: dict[str, dict[str, float]] = field(default_factory=dict)
    collapsed: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    ties: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class CoverageSummary(Result):
    """How often one selector showed a query its own label, and what that did to accuracy.

    Pooled over the selector's units (seeds, orderings) and tasks of one model and ``k``.

    Attributes
    ----------
    model, k, selector : str, int, str
    items : int
        Test items pooled (items x units).
    shown : float
        Share of those items whose gold label is the label of at least one of their
        demonstrations.
    acc_shown, acc_not_shown : float
        Accuracy on the items whose label was shown / not shown (NaN when there are none).
    label_share : float
        Mean share of an item's demonstrations that carry its label.
    vote : float
        Accuracy of a majority vote of each item's demonstrations' labels (no model).
    vs_vote : MeanCI or None
        The model's accuracy minus that vote, paired on the same items (a randomised
        selector's units averaged per item): mean over tasks with its stratified 95% bootstrap
        CI (:func:`icldistill.core.stats.stratified_bootstrap_ci`, 2000 resamples, seed 0).
    p_holm_vote : float
        Its stratified sign-flip p-value (exact on a lattice, else 10 000 sign vectors, seed
        0), Holm-adjusted over
        the selectors of the model and ``k``.
    per_task_shown : dict
        Task -> share of its items whose label was shown.
    rho : dict
        Task -> Spearman correlation, over all units of the task (every selector), between the
        share of items whose label was shown and accuracy (NaN with fewer than 3 units or a
        constant input); the same for every selector of the group.
    """

    model: str
    k: int
    selector: str
    items: int
    shown: float
    acc_shown: float
    acc_not_shown: float
    label_share: float
    vote: float
    per_task_shown: dict[str, float]
    rho: dict[str, float] = field(default_factory=dict)
    vs_vote: Any = None
    p_holm_vote: float = float("nan")


@dataclass(frozen=True)
class ControlCheck(Result):
    """One paired comparison on the trained model and on its random-init control.

    Attributes
    ----------
    model, k, task, selector, baseline : str, int, str, str, str
        As in :class:`icldistill.core.stats.PairedComparison` (``task`` may be ``"mean"`` when
        both grids cover the same tasks).
    trained, control : PairedComparison
        The comparison on the trained model and on the architecture-identical random-init
        twin (same prompts: the selectors choose from the same pool and the same embeddings).
    differs : bool
        The difference is credited to training: the trained comparison is significant (Holm p
        < :data:`PAIRED_ALPHA`) and its whole interval lies beyond the control's interval, on
        its own side of zero (a trained difference that a control shows as strongly or more, or
        whose interval overlaps the control's, is not credited). See :attr:`verdict`.
    """

    model: str
    k: int
    task: str
    selector: str
    baseline: str
    trained: Any
    control: Any
    differs: bool

    @property
    def verdict(self) -> str:
        """The report's "differs from the control": ``"yes"`` (:attr:`differs`), ``"n/s"``
        (the trained comparison is not significant, so there is nothing to credit) or
        ``"no"`` (significant, but not beyond the control)."""
        if self.differs:
            return "yes"
        return "n/s" if not self.trained.p_holm < PAIRED_ALPHA else "no"


#: How the report reads the column "differs from the control" (:func:`_control_verdict`).
_CONTROL_RULE = (
    "\"differs from the control\": **yes** when the trained difference is significant (Holm p "
    f"< {PAIRED_ALPHA}) and its whole 95% interval lies beyond the control's 95% interval, on "
    "its own side of zero, so it is credited to training; **n/s** when the trained difference "
    "is not significant (nothing to credit); **no** when it is significant but its interval "
    "overlaps the control's, or the control shows the same difference as strongly or more.")


def _control_verdict(significant: bool, value: float, low: float, high: float,
                     c_low: float, c_high: float) -> str:
    """Whether a trained difference ``value`` (interval ``[low, high]``) differs from its
    control (interval ``[c_low, c_high]``): ``"yes"`` when it is ``significant`` and its whole
    interval lies beyond the control's on its own side of zero; ``"n/s"`` when it is not
    significant; ``"no"`` otherwise (:data:`_CONTROL_RULE`)."""
    if not significant:
        return "n/s"
    beyond = (value > 0 and low > c_high) or (value < 0 and high < c_low)
    return "yes" if beyond else "no"


def _vote_diffs(coverage: Mapping[str, Any], mine: Sequence[Any], tasks: Sequence[str]
                ) -> list[np.ndarray]:
    """Per task, the model's correctness minus the vote of its demonstrations' labels per item
    (averaged over the task's units of one selector, e.g. random's seeds)."""
    return [np.mean([coverage[r.key].correct.astype(np.float64) - coverage[r.key].vote
                     for r in mine if r.spec.task == t], axis=0) for t in tasks]


def _comparison_key(c: PairedComparison) -> tuple[str, int, str, str, str, str]:
    return (c.model, c.k, c.task, c.selector, c.baseline, c.metric)


def merge_comparisons(*families: Sequence[PairedComparison]) -> list[PairedComparison]:
    """Several families of paired comparisons in one list, each comparison once.

    Two families can hold the same comparison: an ablation's cells against kNN on MiniLM and its
    objective contrasts on MiniLM are the same differences on the same items, Holm-adjusted over
    different families. The first family's record of each ``(model, k, task, selector,
    baseline, metric)`` is kept, so its Holm p is the one reported.

    Parameters
    ----------
    *families : sequence of PairedComparison
        In order of precedence.

    Returns
    -------
    list of PairedComparison
        The first family whole, then each later family's comparisons not seen before.
    """
    seen: set[tuple[str, int, str, str, str, str]] = set()
    out: list[PairedComparison] = []
    for fam in families:
        for c in fam:
            key = _comparison_key(c)
            if key not in seen:
                seen.add(key)
                out.append(c)
    return out


def control_checks(paired: Sequence[PairedComparison], control: Sequence[PairedComparison]
                   ) -> list[ControlCheck]:
    """Match the trained grid's paired comparisons with its control grid's.

    Per-task comparisons are matched on ``(model, k, task, selector, baseline, metric)``; the
    mean over tasks only when both grids cover the same tasks for that model and ``k`` (a mean
    over other tasks is another quantity). A comparison and its mirror (``a`` vs ``b`` and
    ``b`` vs ``a``, both in a grid compared with two baselines) are one hypothesis: the first
    one in ``paired`` is checked, the mirror left out, so that no difference is counted twice.

    Parameters
    ----------
    paired, control : sequence of PairedComparison
        From the trained model's folder and from the control's (e.g. its ``paired.json``).
        Each comparison at most once in each (:func:`merge_comparisons` joins families).

    Returns
    -------
    list of ControlCheck
        In the order of ``paired``.

    Raises
    ------
    InputError
        A comparison appears twice in ``paired`` or in ``control`` (naming it): which record
        to set beside the other would be a guess.
    """
    for name, cs in (("paired", paired), ("control", control)):
        seen: set[tuple[str, int, str, str, str, str]] = set()
        for c in cs:
            key = _comparison_key(c)
            if key in seen:
                raise InputError(f"control_checks: {name} holds {c.selector} vs {c.baseline} on "
                                 f"{c.task} ({c.model}, k={c.k}, {c.metric}) twice; join "
                                 "families with merge_comparisons")
            seen.add(key)
    def tasks_of(cs: Sequence[PairedComparison]) -> dict[tuple[str, int], set[str]]:
        out: dict[tuple[str, int], set[str]] = {}
        for c in cs:
            if c.task != "mean":
                out.setdefault((c.model, c.k), set()).add(c.task)
        return out

    t_tasks, c_tasks = tasks_of(paired), tasks_of(control)
    by = {_comparison_key(c): c for c in control}
    out: list[ControlCheck] = []
    checked: set[tuple[str, int, str, str, str, str]] = set()
    for c in paired:
        if c.task == "mean" and t_tasks.get((c.model, c.k)) != c_tasks.get((c.model, c.k)):
            continue
        ctl = by.get(_comparison_key(c))
        if ctl is None:
            continue
        mirror = (c.model, c.k, c.task, c.baseline, c.selector, c.metric)
        if mirror in checked:       # the same hypothesis, read from the other side
            continue
        checked.add(_comparison_key(c))
        verdict = _control_verdict(c.p_holm < PAIRED_ALPHA, c.diff, c.ci_low, c.ci_high,
                                   ctl.ci_low, ctl.ci_high)
        out.append(ControlCheck(c.model, c.k, c.task, c.selector, c.baseline, c, ctl,
                                verdict == "yes"))
    return out


def _same_shown(a: float, b: float) -> bool:
    """Whether two mean accuracies read the same in the report (three decimals)."""
    return f"{a:.3f}" == f"{b:.3f}"


def _rho_text(rho: float) -> str:
    """A Spearman correlation for the report; NaN (a constant MMD² or accuracy over the units,
    or fewer than 3 of them) as ``n/a (constant)``."""
    return f"{rho:+.2f}" if math.isfinite(rho) else "n/a (constant)"


def _selector_name(label: str) -> str:
    """The selector of a unit label: ``"mmd-local@kv:auto,x=1"`` -> ``"mmd-local"``."""
    return label.split("@")[0].split(",")[0]


def _is_mmd_family(selector: str) -> bool:
    """Whether a unit label names an MMD-family selector: every such name starts with ``mmd``
    (``mmd``, ``mmd-query``, ``mmd-joint``, ``mmd-katt@kv:auto``, ...)."""
    return _selector_name(selector).startswith("mmd")


def _vs_random(paired: Sequence[PairedComparison] | None, model: str, k: int
               ) -> dict[str, list[tuple[float, PairedComparison]]]:
    """Per task, the paired accuracy comparisons of ``model`` and ``k`` between an MMD-family
    selector and ``random``, each with the MMD-family selector's gain over random (``diff``,
    or ``-diff`` for a comparison of random against an MMD-family baseline)."""
    out: dict[str, list[tuple[float, PairedComparison]]] = {}
    for p in paired or ():
        if (p.model, p.k) != (model, k) or p.task == "mean" or p.metric != "accuracy":
            continue
        if _is_mmd_family(p.selector) and _selector_name(p.baseline) == "random":
            out.setdefault(p.task, []).append((p.diff, p))
        elif _selector_name(p.selector) == "random" and _is_mmd_family(p.baseline):
            out.setdefault(p.task, []).append((-p.diff, p))
    return dict(sorted(out.items()))


def _judge_vs_random(c: _Conclusions, tag: str,
                     tested: dict[str, list[tuple[float, PairedComparison]]], tasks: list[str],
                     fam: list[SelectorSummary], rnd: SelectorSummary | None) -> None:
    """Fill ``c.beats[tag]`` (task -> whether the MMD family does better than random there)
    and ``c.beats_tested[tag]``: from the paired per-task comparisons ``tested``
    (:func:`_vs_random`) when there are any, some MMD-family selector with a gain and Holm p <
    :data:`PAIRED_ALPHA`; else, without a test, the best MMD-family mean above random's."""
    if tested:
        c.vs_random[tag] = tested
        c.beats_tested[tag] = True
        c.beats[tag] = {t: any(gain > 0 and p.p_holm < PAIRED_ALPHA for gain, p in ps)
                        for t, ps in tested.items()}
    elif rnd is not None and fam:
        c.beats_tested[tag] = False
        c.beats[tag] = {t: max(x.per_task[t] for x in fam if t in x.per_task) > rnd.per_task[t]
                        for t in tasks if t in rnd.per_task
                        and any(t in x.per_task for x in fam)}


def _group_section(model: str, k: int, rs: list[Any], out: Path, c: _Conclusions,
                   reference: str = "minilm", paired: Sequence[PairedComparison] | None = None
                   ) -> tuple[Any, list[Path], list[str] | None]:
    """The section of one (model, k): accuracy table, computed claims, MMD table (under the
    reference encoder ``reference``), figures; its row of the overview (``None`` without a
    winner). Fills ``c`` (against random: :func:`_judge_vs_random` of ``paired``)."""
    from icldistill.artifacts.document import (
        BulletList,
        Figure,
        Paragraph,
        Section,
        Table,
        inline_code,
        plain,
    )

    tag = f"{model} k={k}"
    tasks = sorted({r.spec.task for r in rs})
    selectors = list(dict.fromkeys(r.spec.label for r in
                                   sorted(rs, key=lambda r: _selector_rank(r.spec.label))))
    acc: dict[str, dict[str, list[float]]] = {s: {t: [] for t in tasks} for s in selectors}
    mm: dict[str, dict[str, list[float]]] = {s: {t: [] for t in tasks} for s in selectors}
    for r in rs:
        acc[r.spec.label][r.spec.task].append(r.accuracy.value)
        mm[r.spec.label][r.spec.task].append(r.mmd2_task)
    rows = []
    for s in selectors:
        per = {t: float(np.mean(v)) for t, v in acc[s].items() if v}
        std = {t: float(np.std(v)) for t, v in acc[s].items() if v}
        mmd_t = {t: float(np.mean(v)) for t, v in mm[s].items() if v}
        mean = float(np.mean(list(per.values()))) if len(per) == len(tasks) else float("nan")
        c.summaries.append(SelectorSummary(model, k, s, per, std, mean, mmd_t))
        cells = [f"{per[t]:.3f}" + (f" ±{std[t]:.3f}" if len(acc[s][t]) > 1 else "")
                 if t in per else "–" for t in tasks]
        rows.append([s, *cells, f"{mean:.3f}" if math.isfinite(mean) else "–"])
    summ = [x for x in c.summaries if x.model == model and x.k == k]
    complete = [x for x in summ if math.isfinite(x.mean)]
    leaders: set[str] = set()
    if len(complete) >= 2 and len(complete) == len(summ):
        top = max(complete, key=lambda x: x.mean)
        tied = tuple(x.selector for x in complete if _same_shown(x.mean, top.mean))
        if len(tied) > 1:              # no winner: they read the same in the report
            c.ties[tag] = tied
        else:
            c.best[tag] = top.selector
        leaders = set(tied)
        c.fam_best[tag] = any(_is_mmd_family(s) for s in tied)
    for row in rows:                   # the best mean(s) in bold
        row[0] = f"**{plain(row[0])}**" if row[0] in leaders else plain(row[0])
    rnd = next((x for x in summ if x.selector == "random"), None)
    fam = [x for x in summ if _is_mmd_family(x.selector)]
    _judge_vs_random(c, tag, _vs_random(paired, model, k), tasks, fam, rnd)
    c.rho[tag] = {}
    for t in tasks:
        pts = [(r.mmd2_task, r.accuracy.value) for r in rs if r.spec.task == t]
        if len(pts) >= 3:
            c.rho[tag][t] = spearman([p[0] for p in pts], [p[1] for p in pts])
    c.collapsed[tag] = {t: (sum(_collapsed(r) for r in rs if r.spec.task == t),
                            sum(1 for r in rs if r.spec.task == t)) for t in tasks}
    half = float(np.mean([(r.accuracy.high - r.accuracy.low) / 2 for r in rs]))
    claims, overview = _claims(tag, summ, complete, fam, rnd, half, c)
    figures = _comparison_figures(rs, tasks, selectors, acc, out / "figures",
                                  f"{_slug(model)}_k{k}", tag, c.rho[tag])
    mrows = [[plain(s), *[f"{np.mean(mm[s][t]):.4f}" if mm[s][t] else "–" for t in tasks]]
             for s in selectors]
    header = ["selector", *(plain(t) for t in tasks)]
    blocks: list[Any] = [Table([*header, "mean"], rows)]
    if claims:
        blocks.append(BulletList(claims))
    space = ("MiniLM sentence embeddings of the inputs" if reference.strip().lower() == "minilm"
             else f"the {inline_code(reference)} representations of the inputs in "
                  f"{plain(model)}")
    blocks.append(Section(f"{tag}: MMD² of the shown demonstrations to the test inputs", (
        Paragraph(f"Biased MMD² between all demonstrations shown (pooled over queries) and the "
                  f"test inputs, under one Gaussian kernel per task on {space} (median-"
                  "heuristic bandwidth of pool + test), the same kernel for every selector."),
        Table(header, mrows),
        *(Figure(f.relative_to(out).as_posix(), f.stem) for f in figures))))
    return Section(f"{tag}: accuracy", blocks), figures, overview


def _claims(tag: str, summ: list[SelectorSummary], complete: list[SelectorSummary],
            fam: list[SelectorSummary], rnd: SelectorSummary | None, half: float,
            c: _Conclusions) -> tuple[list[str], list[str] | None]:
    """The computed claims of one (model, k) (inline text) and its overview row."""
    from icldistill.artifacts.document import plain

    claims = []
    overview = None
    missing = [plain(x.selector) for x in summ if not math.isfinite(x.mean)]
    if missing:
        claims.append("Incomplete grid: no mean over tasks for " + ", ".join(missing) +
                      " (cells marked –), so no overall winner is declared.")
    fam_done = [x for x in fam if math.isfinite(x.mean)]
    top_fam = max(fam_done, key=lambda x: x.mean) if fam_done else None
    rho, beats = c.rho[tag], c.beats
    if tag in c.fam_best:
        top_all = max(complete, key=lambda x: x.mean)
        tied = c.ties.get(tag, ())
        leader = (" and ".join(plain(s) for s in tied) if tied
                  else plain(top_all.selector))
        if tied:
            has_fam = "one of them an" if c.fam_best[tag] else "none of them an"
            claims.append("No single best mean accuracy over tasks: a tie between "
                          + ", ".join(f"**{plain(s)}**" for s in tied)
                          + f" ({top_all.mean:.3f}; {has_fam} MMD-family selector).")
        else:
            claims.append(f"Best mean accuracy over tasks: **{plain(c.best[tag])}**"
                          f" ({'an' if c.fam_best[tag] else 'not an'} MMD-family selector).")
        if not c.fam_best[tag] and top_fam is not None:
            gap = top_all.mean - top_fam.mean
            claims.append(
                f"Gap: the best MMD-family selector, {plain(top_fam.selector)} "
                f"({top_fam.mean:.3f}), is {gap:.3f} below {leader} "
                f"({top_all.mean:.3f}) on the mean over tasks; a single unit's 95% "
                f"bootstrap half-width is {half:.3f} on average here"
                + (", so the two are not distinguishable at this test size." if gap < half
                   else "."))
        finite = [v for v in rho.values() if math.isfinite(v)]
        overview = [plain(tag), (f"tie: {', '.join(plain(s) for s in tied)}" if tied
                                 else plain(top_all.selector)) + f" {top_all.mean:.3f}",
                    f"{plain(top_fam.selector)} {top_fam.mean:.3f}" if top_fam else "–",
                    f"{top_all.mean - top_fam.mean:.3f}" if top_fam else "–",
                    f"{half:.3f}",
                    (f"{sum(beats[tag].values())} of {len(beats[tag])}" if tag in beats
                     else "–"),
                    f"{np.mean(finite):+.2f}" if finite else "–"]
    if tag in beats:
        claims += _random_claims(tag, fam, rnd, c)
    many = {t: cn for t, cn in c.collapsed[tag].items() if cn[0]}
    if many:
        claims.append(f"Predictions collapse onto one label (every other label's recall "
                      f"< {COLLAPSE_RECALL:.0%}) in " + ", ".join(
                          f"{plain(t)} {n_c} of {n_t} units" for t, (n_c, n_t) in many.items())
                      + ".")
    if rho:
        vals = [v for v in rho.values() if math.isfinite(v)]
        claims.append("Spearman(MMD² to the task, accuracy) per task: " + ", ".join(
            f"{plain(t)} {_rho_text(v)}" for t, v in rho.items()) +
            (f"; mean {np.mean(vals):+.2f} (negative = lower MMD, higher accuracy)."
             if vals else "."))
    return claims, overview


def _random_claims(tag: str, fam: list[SelectorSummary], rnd: SelectorSummary | None,
                   c: _Conclusions) -> list[str]:
    """The claims of one (model, k) about the MMD family against random (``c.beats[tag]``):
    from the paired per-task comparisons when the group has them, else from mean accuracies
    (said to be untested); a "Why" line for each task where the family does not do better."""
    from icldistill.artifacts.document import plain

    beats, tested = c.beats[tag], c.beats_tested.get(tag, False)
    lost = [t for t, ok in beats.items() if not ok]
    n = f"{len(beats) - len(lost)} of {len(beats)} tasks"
    if tested:
        claims = [f"An MMD-family selector is significantly better than random (paired, Holm p "
                  f"< {PAIRED_ALPHA}) on {n}" + (" (every task evaluated)." if not lost else
                                                 "; none is on: "
                                                 + ", ".join(plain(t) for t in lost) + ".")]
    else:
        claims = [f"The best MMD-family selector has a higher mean accuracy than random on {n} "
                  "(means of the units; not tested: no paired comparison against random)"
                  + ("." if not lost else
                     "; not on: " + ", ".join(plain(t) for t in lost) + ".")]
    for t in lost:
        parts = []
        mine = [x for x in fam if t in x.per_task]
        if mine and rnd is not None and t in rnd.per_task:
            top = max(mine, key=lambda x: x.per_task[t])
            parts.append(f"best MMD-family mean {plain(top.selector)} {top.per_task[t]:.3f} vs "
                         f"random {rnd.per_task[t]:.3f} ± {rnd.per_task_std.get(t, 0.0):.3f}")
        if tested:
            gain, p = max(c.vs_random[tag][t], key=lambda gp: gp[0])
            flip = not _is_mmd_family(p.selector)          # random against an MMD baseline
            low, high = (-p.ci_high, -p.ci_low) if flip else (p.ci_low, p.ci_high)
            parts.append(f"largest paired gain over random: {plain(_mmd_side(p))} "
                         f"{_interval(gain, low, high)} points, Holm p {_short_p(p.p_holm)}")
        n_c, n_t = c.collapsed[tag].get(t, (0, 0))
        if n_c:
            parts.append(f"{n_c} of {n_t} units predict (almost) only one label, so accuracy "
                         "there reflects the label prior, not the demonstrations")
        if t in c.rho[tag]:
            parts.append(f"Spearman(MMD², accuracy) {_rho_text(c.rho[tag][t])}")
        claims.append(f"Why — {plain(t)}: " + "; ".join(parts) + ".")
    return claims


def _mmd_side(p: PairedComparison) -> str:
    """The MMD-family selector of a comparison against random (either side)."""
    return p.selector if _is_mmd_family(p.selector) else p.baseline


#: Under the table of every unit: what its seconds are, and are not.
_SECONDS_NOTE = ("`select s` and `score s` are the wall-clock seconds of each unit's process, "
                 "including any time it was paused or shared the CPU with other work, summed "
                 "over resumed runs: a log of the run, not a speed measurement (speed is "
                 "measured by the benchmarks, with the load recorded).")


def _detail_table(results: Sequence[Any]) -> Any:
    """The table of every evaluated unit."""
    from icldistill.artifacts.document import Table, plain

    rows = []
    for r in sorted(results, key=lambda r: (_model_label(r), r.spec.k, r.spec.task,
                                            _selector_rank(r.spec.label), r.spec.seed,
                                            r.spec.ordering)):
        rows.append([plain(_model_label(r)), plain(r.spec.task), str(r.spec.k),
                     plain(r.spec.label), str(r.spec.seed), plain(str(r.spec.ordering)),
                     str(r.accuracy), str(r.macro_f1), f"{r.mmd2_task:.4f}",
                     f"{r.mmd2_query:.4f}", f"{r.selection_seconds:.3f}",
                     f"{r.scoring_seconds:.1f}", str(r.n)])
    header = ["model", "task", "k", "selector", "seed", "ordering", "accuracy [95% CI]",
              "macro-F1 [95% CI]", "MMD² task", "MMD² query", "select s", "score s", "n"]
    return Table(header, rows)


#: Majority-label share of a task's test items from which the comparison report reads the task in
#: macro-F1 rather than accuracy.
MAJORITY_SHARE = 0.75


def _below_alpha(p: float, text: str) -> str:
    """``text``, the p-value ``p`` as formatted, unless rounding carried a ``p`` below
    :data:`PAIRED_ALPHA` to it or above (0.0496 as ``0.050``, ``0.05``): then ``p`` in as many
    significant digits as keep it below (``0.0496``), so a shown p-value never contradicts a
    verdict drawn from it. Every other ``text`` is returned as it is."""
    if not p < PAIRED_ALPHA <= float(text):
        return text
    for digits in range(2, 18):
        text = f"{p:.{digits}g}"
        if float(text) < PAIRED_ALPHA:
            break
    return text


def _fmt_p(p: float) -> str:
    """A p-value for a table: 3 decimals, scientific below 0.001, ``<1e-307`` where an exact
    tail underflowed to 0; a p below 0.05 that would round to 0.050 keeps the digits that show
    it below (``0.0496``, :func:`_below_alpha`)."""
    return "<1e-307" if p == 0 else _below_alpha(p, f"{p:.1e}" if p < 0.001 else f"{p:.3f}")


def _short_p(p: float) -> str:
    """A p-value in two significant digits (``<1e-307`` where it underflowed to 0); a p below
    0.05 that would round to 0.05 keeps the digits that show it below (``0.0496``,
    :func:`_below_alpha`)."""
    return "<1e-307" if p == 0 else _below_alpha(p, f"{p:.2g}")


def format_p(p: float) -> str:
    """A p-value as the reports write it in sentences: two significant digits, ``<1e-307``
    where an exact tail underflowed to 0, and never rounded up to 0.05 from below
    (``0.0496``), so the text agrees with a verdict drawn at ``p < 0.05``.

    Parameters
    ----------
    p : float
        The p-value, in ``[0, 1]``.

    Returns
    -------
    str
    """
    return _short_p(p)


def _points(x: float) -> str:
    """A difference in accuracy points, signed, one decimal. A value that rounds to zero keeps
    its sign: ``-0.0`` for a negative one (with the ``-`` of every negative value), ``+0.0``
    for zero or a positive one."""
    v = round(100 * x, 1)
    if v == 0:
        return "-0.0" if x < 0 else "+0.0"
    return f"{v:+.1f}"


def _interval(value: float, low: float, high: float) -> str:
    """A difference with its interval, in points: ``+1.2 [+0.3, +2.1]`` (:func:`_points`)."""
    return f"{_points(value)} [{_points(low)}, {_points(high)}]"


def _verdict(c: PairedComparison) -> str:
    if c.p_holm < PAIRED_ALPHA:
        return "better" if c.diff > 0 else "worse"
    return "no significant difference"


def _paired_intro(f1: bool, level: float) -> str:
    """What the paired tables show and how they were tested (accuracy or macro-F1)."""
    holm_text = (
        "Holm p: Holm-Bonferroni over the family of one model and k — every per-task and every "
        "mean-over-tasks comparison against every baseline (a pair and its mirror, e.g. random "
        "vs knn and knn vs random, count once). Verdict: better / worse when Holm p < "
        f"{PAIRED_ALPHA}, else no significant difference.")
    if f1:
        return (
            "Accuracy counts the majority label; macro-F1 (the unweighted mean of per-label "
            "F1) counts every label equally, so it separates selectors where one label "
            "dominates the test items. diff = macro-F1 of the selector minus the baseline's, "
            "in points, on the same items (a randomised selector's macro-F1 is the mean of its "
            f"seeds'). {level:.0%} CI: paired percentile bootstrap (the same resampled items on "
            "both sides; within each task for the mean over tasks). p: two-sided paired "
            "randomisation test: under the null the two selectors' predictions of an item are "
            "exchangeable, so they are swapped item by item at random (within each task for "
            "the mean) and macro-F1 recomputed (macro-F1 is not a mean over items, so there is "
            "no per-item sign to flip; a bootstrap standard error understates its spread on "
            "tasks with many rare labels). " + holm_text)
    return (
        "Every selector scored the same test items as its baseline, so they are compared "
        "paired: diff = accuracy of the selector minus the baseline's, in points, on the "
        "same items (a randomised selector's correctness is averaged over its seeds per "
        f"item). {level:.0%} CI: percentile bootstrap over items (within each task for the "
        "mean over tasks). p: exact McNemar test when both are single runs, else a "
        "sign-flip test; for the mean over tasks a sign-flip test within tasks. Sign-flip "
        "p-values are exact (all sign vectors up to 20 discordant items, else the exact null "
        "distribution of differences on a lattice, as seed averages are) and Monte Carlo only "
        "off a lattice. " + holm_text)


def _majority_text(majority: Mapping[str, float]) -> str:
    """Each task's majority-label share, and the tasks to read in macro-F1."""
    from icldistill.artifacts.document import plain

    heavy = [t for t in sorted(majority) if majority[t] >= MAJORITY_SHARE]
    return ("Share of each task's test items that carry its most frequent label (the accuracy "
            "of always answering it): "
            + ", ".join(f"{plain(t)} {majority[t]:.3f}" for t in sorted(majority)) + ". "
            + (f"On {', '.join(plain(t) for t in heavy)} (share ≥ {MAJORITY_SHARE}) accuracy "
               "mostly counts the majority label; read "
               + ("it" if len(heavy) == 1 else "them") + " in macro-F1."
               if heavy else f"No task's majority share reaches {MAJORITY_SHARE}."))


def _figure_paths(blocks: Sequence[Any]) -> list[str]:
    """The paths of every figure in ``blocks`` and their sub-sections, in order."""
    out: list[str] = []
    for b in blocks:
        if getattr(b, "kind", None) == "figure":
            out.append(b.path)
        elif getattr(b, "kind", None) == "section":
            out += _figure_paths(b.blocks)
    return out


def _forest_figure(cs: Sequence[PairedComparison], baselines: Sequence[str], path: Path,
                   tag: str) -> Path | None:
    """Forest plot of one (model, k): every selector's mean-over-tasks difference to each
    baseline with its CI (one panel per baseline), coloured by verdict; ``None`` without a
    mean over tasks."""
    means = [c for c in cs if c.task == "mean"]
    if not means:
        return None
    colours = {"better": "tab:blue", "worse": "tab:red"}
    rows = max(len([c for c in means if c.baseline == b]) for b in baselines)
    fig, axes = new_figure(1, len(baselines), size=(4.2, 0.32 * rows + 1.4))
    for ax, base in zip(axes[0], baselines, strict=True):
        mine = sorted((c for c in means if c.baseline == base), key=lambda c: c.diff)
        y = np.arange(len(mine))
        for yi, c in zip(y, mine, strict=True):
            verdict = ("better" if c.diff > 0 else "worse") if c.p_holm < PAIRED_ALPHA else ""
            colour = colours.get(verdict, "0.45")
            ax.errorbar(100 * c.diff, yi, xerr=[[100 * (c.diff - c.ci_low)],
                                                 [100 * (c.ci_high - c.diff)]],
                        fmt="o", color=colour, capsize=2, markersize=4)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(y, [c.selector for c in mine], fontsize=8)
        ax.set_xlabel(f"accuracy − {base} (points), {mine[0].level:.0%} CI" if mine else "")
        ax.set_title(f"vs {base}", fontsize=9)
    fig.suptitle(f"{tag}: mean over tasks, paired (blue / red: Holm p < {PAIRED_ALPHA})",
                 fontsize=10)
    return save_figure(fig, path)


def _paired_section(paired: Sequence[PairedComparison], *,
                    majority: Mapping[str, float] | None = None,
                    figures: Path | None = None) -> Any:
    """The "Paired comparisons" section (a :class:`icldistill.reporting.Section`), or "Paired
    comparisons in macro-F1" for ``metric="macro_f1"`` records; with ``figures`` (the report's
    figures folder), a forest plot of each (model, k) is written there and shown."""
    from icldistill.artifacts.document import BulletList, Figure, Paragraph, Section, Table, plain

    f1 = bool(paired) and paired[0].metric == "macro_f1"
    title = "Paired comparisons in macro-F1" if f1 else "Paired comparisons"
    if not paired:
        return Section(title, (Paragraph("No paired comparisons: no per-item predictions were "
                                         "recorded."),))
    level = paired[0].level
    blocks: list[Any] = [Paragraph(_paired_intro(f1, level))]
    if majority:
        blocks.append(Paragraph(_majority_text(majority)))
    what = ", macro-F1" if f1 else ""
    groups: dict[tuple[str, int], list[PairedComparison]] = {}
    for c in paired:
        groups.setdefault((c.model, c.k), []).append(c)
    notes: list[str] = []
    for (model, k), cs in sorted(groups.items()):
        tag = f"{model} k={k}"
        family = len({(c.task, *sorted((c.selector, c.baseline))) for c in cs})
        baselines = list(dict.fromkeys(c.baseline for c in cs))
        means = sorted((c for c in cs if c.task == "mean"),
                       key=lambda c: (baselines.index(c.baseline), -c.diff, c.selector))
        head = ["selector", "vs", "diff (points)", f"{level:.0%} CI", "p", "Holm p", "tasks",
                "items", "verdict"]
        rows = [[plain(c.selector), plain(c.baseline), _points(c.diff),
                 f"[{_points(c.ci_low)}, {_points(c.ci_high)}]", _fmt_p(c.p), _fmt_p(c.p_holm),
                 str(c.n_tasks), str(c.n), _verdict(c)] for c in means]
        sub: list[Any] = ([Table(head, rows)] if rows else
                          [Paragraph("Fewer than 2 tasks with both selectors: no mean over "
                                     "tasks.")])
        forest = None if figures is None else _forest_figure(
            cs, baselines, figures / f"paired{'_f1' if f1 else ''}_{_slug(model)}_k{k}.png", tag)
        if forest is not None:
            sub.append(Figure(forest.relative_to(figures.parent).as_posix(),
                              f"{plain(tag)}{what}: mean over tasks against each baseline"))
        tasks = sorted({c.task for c in cs if c.task != "mean"})
        for base in baselines:
            mine = [c for c in cs if c.baseline == base]
            cell = {(c.selector, c.task): _points(c.diff)
                    + ("*" if c.p_holm < PAIRED_ALPHA else "") for c in mine}
            sels = sorted({c.selector for c in mine}, key=_selector_rank)
            cols = [*tasks, "mean"]
            prow = [[plain(s), *[cell.get((s, t), "–") for t in cols]] for s in sels]
            sub.append(Section(f"{tag}{what}: per task, diff vs {base} (points; * = Holm p < "
                               f"{PAIRED_ALPHA})",
                               (Table(["selector", *(plain(t) for t in cols)], prow),)))
        blocks.append(Section(f"{tag}{what}: mean over tasks (Holm family of {family} "
                              "comparisons)",
                              sub))
        notes += [f"{plain(tag)}, {plain(c.selector)} vs {plain(c.baseline)}, {plain(c.task)}: "
                  f"{plain(c.note)}" for c in cs if c.note]
    if notes:
        blocks.append(BulletList(notes))
    return Section(title, blocks)


def _posthoc_section(posthoc: Sequence[PairedComparison],
                     checks: Sequence[ControlCheck] = (), control_label: str = "") -> Any:
    """The section "Post-hoc comparisons": per model and ``k``, each pair's mean-over-tasks
    difference with its CI and Holm p (over these pairs only) and the tasks where it is
    significant; labelled exploratory. ``checks``: the same pairs on the random-init control,
    one table per model and ``k`` of every matched comparison."""
    from icldistill.artifacts.document import Paragraph, Section, Table, plain

    intro = Paragraph(
        "Comparisons chosen after seeing the results above, so exploratory: they are not in the "
        "pre-planned comparisons' Holm family. Each is paired on the same test items as above "
        "(same CI and p-value); Holm p here is over these comparisons only (one family per "
        f"model and k). Verdict: better / worse when Holm p < {PAIRED_ALPHA}. A claim that "
        "rests on them wants a fresh grid.")
    if not posthoc:
        return Section("Post-hoc comparisons", (intro, Paragraph(
            "None of the requested pairs was scored in this grid.")))
    groups: dict[tuple[str, int], list[PairedComparison]] = {}
    for c in posthoc:
        groups.setdefault((c.model, c.k), []).append(c)
    blocks: list[Any] = [intro]
    for (model, k), cs in sorted(groups.items()):
        family = len({(c.task, *sorted((c.selector, c.baseline))) for c in cs})
        rows = []
        for pair in dict.fromkeys((c.selector, c.baseline) for c in cs):
            mine = [c for c in cs if (c.selector, c.baseline) == pair]
            mean = next((c for c in mine if c.task == "mean"), None)
            sig = [f"{plain(c.task)} {_points(c.diff)}" for c in mine
                   if c.task != "mean" and c.p_holm < PAIRED_ALPHA]
            rows.append([plain(pair[0]), plain(pair[1]),
                         "–" if mean is None else _points(mean.diff),
                         "–" if mean is None else
                         f"[{_points(mean.ci_low)}, {_points(mean.ci_high)}]",
                         "–" if mean is None else _fmt_p(mean.p_holm),
                         "–" if mean is None else str(mean.n_tasks),
                         "–" if mean is None else _verdict(mean),
                         ", ".join(sig) or "none"])
        level = cs[0].level
        sub: list[Any] = [Table(
            ["selector", "vs", "mean diff (points)", f"{level:.0%} CI", "Holm p", "tasks",
             "verdict", "tasks where Holm p < 0.05 (diff)"], rows)]
        mine = [ch for ch in checks if (ch.model, ch.k) == (model, k)]
        if mine:
            sub.append(Paragraph(
                f"Against {plain(control_label)}: the same pairs on the twin reading the same "
                f"prompts. {_CONTROL_RULE}"))
            sub.append(Table(
                ["selector", "vs", "task", "trained: diff [CI]", "Holm p", "control: diff [CI]",
                 "Holm p", "differs from the control"],
                [[plain(ch.selector), plain(ch.baseline), plain(ch.task),
                  _diff_ci(ch.trained), _fmt_p(ch.trained.p_holm),
                  _diff_ci(ch.control), _fmt_p(ch.control.p_holm),
                  ch.verdict] for ch in mine]))
        blocks.append(Section(f"{model} k={k} (Holm family of {family} comparisons)",
                              tuple(sub)))
    return Section("Post-hoc comparisons", tuple(blocks))


#: Title of the bar section; the post-hoc section is placed right after it.
_BAR_TITLE = "Does an MMD-family selector beat kNN?"


def _bar_section(paired: Sequence[PairedComparison],
                 incomplete: Mapping[str, tuple[int, int]] | None = None
                 ) -> tuple[Any, dict[str, tuple[str, ...]]]:
    """The section "Does an MMD-family selector beat kNN?": per model and ``k``, every
    MMD-family selector against the bar (beats ``knn`` on the mean over tasks with Holm p <
    :data:`PAIRED_ALPHA`, and significantly worse than ``random`` on no task); ``(None, {})``
    without comparisons against both baselines. A group named in ``incomplete`` (``"model
    k=K"`` -> units finished, units in the grid) gets its table but no verdict, and no entry
    in the returned verdicts."""
    from icldistill.artifacts.document import BulletList, Paragraph, Section, Table, plain

    groups: dict[tuple[str, int], list[PairedComparison]] = {}
    for c in paired:
        groups.setdefault((c.model, c.k), []).append(c)
    blocks: list[Any] = []
    verdicts: list[str] = []
    meets: dict[str, tuple[str, ...]] = {}
    name = _selector_name
    for (model, k), cs in sorted(groups.items()):
        bases = list(dict.fromkeys(c.baseline for c in cs))
        knn = next((b for b in bases if name(b) == "knn"), None)
        rnd = next((b for b in bases if name(b) == "random"), None)
        if knn is None or rnd is None:
            continue
        family = sorted({c.selector for c in cs if _is_mmd_family(c.selector)},
                        key=_selector_rank)
        if not family:
            continue
        tag = f"{model} k={k}"
        pending = (incomplete or {}).get(tag)
        rows, ok = [], []
        for sel in family:
            mean = next((c for c in cs if c.selector == sel and c.baseline == knn
                         and c.task == "mean"), None)
            worse = [c.task for c in cs if c.selector == sel and c.baseline == rnd
                     and c.task != "mean" and c.p_holm < PAIRED_ALPHA and c.diff < 0]
            beats = mean is not None and mean.p_holm < PAIRED_ALPHA and mean.diff > 0
            if beats and not worse:
                ok.append(sel)
            rows.append([plain(sel),
                         "–" if mean is None else _diff_ci(mean),
                         "–" if mean is None else _fmt_p(mean.p_holm),
                         "–" if mean is None else str(mean.n_tasks),
                         ", ".join(plain(t) for t in sorted(worse)) or "none",
                         "not yet" if pending else "yes" if beats and not worse else "no"])
        if pending:
            verdicts.append(f"{plain(tag)}: incomplete ({pending[0]} of {pending[1]} units "
                            "finished), no verdict yet.")
        else:
            meets[tag] = tuple(ok)
            verdicts.append(f"{plain(tag)}: " + (", ".join(plain(s) for s in ok) if ok else
                                                  "no MMD-family selector meets the bar") + ".")
        table = Table(["selector", f"mean diff vs {plain(knn)} (points) [CI]", "Holm p",
                       "tasks", f"significantly worse than {plain(rnd)} on", "meets the bar"],
                      rows)
        blocks.append(Section(tag + (" (incomplete)" if pending else ""), (table,)))
    if not blocks:
        return None, {}
    intro = Paragraph(
        "The bar an MMD-family selector (a name starting with `mmd`) must clear: it beats "
        f"`knn` on the mean over tasks with Holm p < {PAIRED_ALPHA}, and it is significantly "
        "worse than `random` (Holm p < 0.05) on no task. Computed from the paired comparisons "
        "above; a group whose units are not all finished (see the title) gives no verdict yet.")
    return Section(_BAR_TITLE,
                   (intro, BulletList(verdicts), *blocks)), meets


_RANDOM_INIT_BAR = (
    "These models are random-init twins, which learned nothing: a difference between selectors "
    "here comes from how the prompts' surface (which label words they show, and where) moves an "
    "untrained model's output, not from in-context learning. A selector that meets the bar "
    "here is therefore a control, not evidence for it: the trained grid's report sets each "
    "comparison beside this one, and a trained result counts only where it differs from it.")


def _coverage_figure(rs: Sequence[Any], coverage: Mapping[str, Any], tasks: list[str],
                     path: Path, tag: str) -> Path:
    """Scatter of every unit of one (model, k): the share of its items whose label a
    demonstration shows against its accuracy, one colour per task."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(tasks) <= 10 else "tab20"]
    fig, axes = new_figure(1, 1, size=(6.4, 4.2))
    ax = axes[0, 0]
    for i, t in enumerate(tasks):
        pts = np.array([(float(np.mean(coverage[r.key].shown)), r.accuracy.value)
                        for r in rs if r.spec.task == t])
        ax.scatter(100 * pts[:, 0], pts[:, 1], s=18, color=cmap(i % cmap.N), label=t,
                   alpha=0.8)
    ax.set_xlabel("items whose label a demonstration shows (%)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(-2, 102)
    ax.set_ylim(0, 1)
    ax.set_title(f"{tag}: one point per unit", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="task",
              title_fontsize=8)
    return save_figure(fig, path)


def _coverage_section(results: Sequence[Any], coverage: Mapping[str, Any],
                      mmd_rho: Mapping[str, Mapping[str, float]], figures: Path | None = None
                      ) -> tuple[Any, list[CoverageSummary]]:
    """The section "Do the demonstrations show the query's label?": per model and ``k``, for
    every selector the share of test items whose gold label is among their demonstrations and
    the accuracy on items with and without it; per task the Spearman correlation of that share
    with accuracy over the units, beside the one of ``MMD^2``; with ``figures`` (the report's
    figures folder), a scatter of share shown against accuracy per unit. ``(None, [])`` when no
    result has a coverage record."""
    from icldistill.artifacts.document import (
        BulletList,
        Figure,
        Paragraph,
        Section,
        Table,
        plain,
    )

    summaries: list[CoverageSummary] = []
    blocks: list[Any] = []
    claims: list[str] = []
    for (model, k), rs in _group_results(results).items():
        n_all = len(rs)
        rs = [r for r in rs if r.key in coverage]
        if not rs:
            continue
        tag = f"{model} k={k}"
        if len(rs) < n_all:
            claims.append(f"{plain(tag)}: {len(rs)} of {n_all} units have their selection "
                          "recorded; "
                          "the others are left out of this section.")
        tasks = sorted({r.spec.task for r in rs})
        rho: dict[str, float] = {}
        for t in tasks:
            pts = [(float(np.mean(coverage[r.key].shown)), r.accuracy.value)
                   for r in rs if r.spec.task == t]
            if len(pts) >= 3:
                rho[t] = spearman([p[0] for p in pts], [p[1] for p in pts])
        group = _coverage_summaries(model, k, rs, coverage, tasks, rho)
        summaries += group
        claims += _coverage_claims(plain(tag), group, rs, coverage, rho, mmd_rho.get(tag, {}))
        rows = [[plain(x.selector), f"{x.items}", f"{100 * x.shown:.1f}%", _pct(x.acc_shown),
                 _pct(x.acc_not_shown), _pct(x.label_share), _pct(float(np.mean(
                     [np.mean(coverage[r.key].correct) for r in rs
                      if r.spec.label == x.selector]))), _pct(x.vote),
                 _interval(x.vs_vote.value, x.vs_vote.low, x.vs_vote.high),
                 _short_p(x.p_holm_vote)] for x in group]
        trows = [[plain(x.selector), *(f"{100 * x.per_task_shown[t]:.0f}%"
                                       if t in x.per_task_shown else "–" for t in tasks)]
                 for x in group]
        blocks += [
            Section(f"{tag}: label shown, and accuracy with and without it", (Table(
                ["selector", "items", "label shown", "accuracy when shown",
                 "accuracy when not shown", "demonstrations with the query's label",
                 "accuracy", "majority vote of the demonstrations' labels",
                 "model − vote (points, mean over tasks) [95% CI]", "Holm p"], rows),)),
            Section(f"{tag}: share of items whose label is shown, per task", (Table(
                ["selector", *(plain(t) for t in tasks)], trows),
                Paragraph("Spearman(share shown, accuracy) per task: " + ", ".join(
                    f"{plain(t)} {_rho_text(rho[t])}" for t in tasks if t in rho) + "."
                    if rho else "Fewer than 3 units per task: no correlation."),
                *([] if figures is None else [Figure(
                    _coverage_figure(rs, coverage, tasks, figures / f"label_shown_{_slug(model)}"
                                     f"_k{k}.png", tag).relative_to(figures.parent).as_posix(),
                    f"{plain(tag)}: share of items whose label is shown against accuracy, "
                    "per unit")]))),
        ]
    if not blocks:
        return None, []
    intro = Paragraph(
        "The theory bounds the bias of the distilled weights by the MMD between the "
        "demonstrations' inputs and the task's; it says nothing about which labels the "
        "demonstrations show. A query whose label no demonstration carries can only be answered "
        "from the model's prior. Here, for every unit, whether each test item's gold label is "
        "the label of at least one of its demonstrations (for multiple-choice tasks the labels "
        "are the option letters), the share of its demonstrations that carry its label, and "
        "the accuracy of a majority vote of its demonstrations' labels with no model at all "
        "(ties split evenly), beside the model's. Descriptive: items are not assigned to "
        "\"shown\" at random, so this shows where accuracy comes from, not a causal effect.")
    return Section(_COVERAGE_TITLE, (intro, BulletList(claims), *blocks)), summaries


_COVERAGE_TITLE = "Do the demonstrations show the query's label?"


def _coverage_summaries(model: str, k: int, rs: Sequence[Any], coverage: Mapping[str, Any],
                        tasks: list[str], rho: dict[str, float]) -> list[CoverageSummary]:
    """One :class:`CoverageSummary` per selector label of a (model, k) group, in report order;
    the model-minus-vote p-values Holm-adjusted over the group."""
    from dataclasses import replace

    from icldistill.core.stats import holm, stratified_bootstrap_ci, stratified_sign_flip_test

    group: list[CoverageSummary] = []
    pvals: list[float] = []
    for lab in dict.fromkeys(r.spec.label for r in
                             sorted(rs, key=lambda r: _selector_rank(r.spec.label))):
        mine = [r for r in rs if r.spec.label == lab]
        shown = np.concatenate([coverage[r.key].shown for r in mine])
        correct = np.concatenate([coverage[r.key].correct for r in mine])
        per_task = {t: float(np.mean(np.concatenate(
            [coverage[r.key].shown for r in mine if r.spec.task == t])))
            for t in tasks if any(r.spec.task == t for r in mine)}
        # model minus vote, per item (averaged over a selector's units of a task)
        diffs = _vote_diffs(coverage, mine, list(per_task))
        pvals.append(stratified_sign_flip_test(diffs, n_perm=10_000, seed=0))
        group.append(CoverageSummary(
            model, k, lab, int(shown.size), float(shown.mean()),
            float(correct[shown].mean()) if shown.any() else float("nan"),
            float(correct[~shown].mean()) if (~shown).any() else float("nan"),
            float(np.mean(np.concatenate([coverage[r.key].share for r in mine]))),
            float(np.mean(np.concatenate([coverage[r.key].vote for r in mine]))),
            per_task, dict(rho), stratified_bootstrap_ci(diffs, n_boot=2000, seed=0)))
    adj = holm(pvals) if pvals else []
    return [replace(x, p_holm_vote=float(p)) for x, p in zip(group, adj, strict=True)]


def _coverage_claims(tag: str, group: list[CoverageSummary], rs: Sequence[Any],
                     coverage: Mapping[str, Any], rho: dict[str, float],
                     mmd_rho: Mapping[str, float]) -> list[str]:
    """The computed sentences of one (model, k) group of the label-coverage section (``tag``:
    its inline text, escaped)."""
    from icldistill.artifacts.document import plain

    below = [plain(x.selector) for x in group
             if x.p_holm_vote < PAIRED_ALPHA and x.vs_vote.value < 0]
    above = [plain(x.selector) for x in group
             if x.p_holm_vote < PAIRED_ALPHA and x.vs_vote.value > 0]
    claims = [f"{tag}: the model is significantly less accurate than a majority vote of its own "
              "demonstrations' labels (Holm p < 0.05) with: " + (", ".join(below) or "none")
              + "; significantly more accurate with: " + (", ".join(above) or "none") + "."]
    shown = np.concatenate([coverage[r.key].shown for r in rs])
    correct = np.concatenate([coverage[r.key].correct for r in rs])
    if shown.any() and (~shown).any():
        claims.append(
            f"{tag}: over every unit, accuracy is {_pct(correct[shown].mean())} on the "
            f"{int(shown.sum())} items whose label a demonstration shows and "
            f"{_pct(correct[~shown].mean())} on the {int((~shown).sum())} items whose label "
            "none shows.")
    fin = [v for v in rho.values() if math.isfinite(v)]
    fin_m = [v for t, v in mmd_rho.items() if t in rho and math.isfinite(v)]
    if fin:
        claims.append(
            f"{tag}: Spearman(share of items whose label is shown, accuracy) over the "
            f"units of each task: mean {np.mean(fin):+.2f} over {len(fin)} tasks"
            + (f"; Spearman(MMD² to the task, accuracy): mean {np.mean(fin_m):+.2f} "
               "(negative = lower MMD, higher accuracy)" if fin_m else "") + ".")
    return claims


_MINILM_PROMPTS = ("selectors that choose from MiniLM embeddings pick the same demonstrations "
                   "from the same pool; a selector in the model's own representation "
                   "(`mmd-katt`) takes the trained unit's selection instead")
_IMPORTED_PROMPTS = ("every unit's demonstrations are the trained model's own selection, read "
                     "back from its `selections/`, so representations of the trained model "
                     "chose them for the twin too")


def _control_section(checks: Sequence[ControlCheck], label: str,
                     results: Sequence[Any] = (), coverage: Mapping[str, Any] | None = None,
                     control_coverage: Mapping[str, Any] | None = None,
                     how: str = _MINILM_PROMPTS) -> Any:
    """The section "Against a random-init control": per model and ``k``, every paired
    comparison beside the same comparison on the control, and whether the trained difference
    lies outside the control's interval on its own side (:class:`ControlCheck`). ``how`` says
    why the control read the same prompts."""
    from icldistill.artifacts.document import BulletList, Paragraph, Section, Table, plain

    intro = Paragraph(
        f"The same grid on {plain(label)}: an architecture-identical model with random weights, "
        f"reading the same prompts ({how}). {_CONTROL_RULE}")
    blocks: list[Any] = []
    claims: list[str] = []
    groups: dict[tuple[str, int], list[ControlCheck]] = {}
    for c in checks:
        groups.setdefault((c.model, c.k), []).append(c)
    for (model, k), cs in sorted(groups.items()):
        tag = f"{model} k={k}"
        rows = [[plain(c.selector), plain(c.baseline), plain(c.task),
                 _diff_ci(c.trained), _short_p(c.trained.p_holm), _diff_ci(c.control),
                 _short_p(c.control.p_holm), c.verdict]
                for c in sorted(cs, key=lambda c: (c.task == "mean", c.task,
                                                   _selector_rank(c.selector), c.baseline))]
        sig = [c for c in cs if c.trained.p_holm < PAIRED_ALPHA]
        same = [c for c in sig if not c.differs]
        claims.append(
            f"{plain(tag)}: {len(sig)} of the {len(cs)} comparisons matched with the control are "
            f"significant on the trained model (Holm p < {PAIRED_ALPHA}); "
            + (f"{len(sig) - len(same)} of them differ from the control"
               + (f", {len(same)} {'does' if len(same) == 1 else 'do'} not: "
                  + ", ".join(f"{plain(c.selector)} vs {plain(c.baseline)} on "
                              f"{plain(c.task)}" for c in same) if same else "")
               if sig else "none to check") + ".")
        blocks.append(Section(f"{tag}: trained vs control", (Table(
            ["selector", "vs", "task", "trained: diff (points) [95% CI]", "Holm p",
             "control: diff [95% CI]", "Holm p", "differs from the control"], rows),)))
        if coverage and control_coverage:
            vote = _vote_vs_control(model, k, results, coverage, control_coverage)
            if vote is not None:
                blocks.append(vote)
    return Section("Against a random-init control", (intro, BulletList(claims), *blocks))


def _vote_vs_control(model: str, k: int, results: Sequence[Any], coverage: Mapping[str, Any],
                     control_coverage: Mapping[str, Any]) -> Any:
    """Per selector, the model's accuracy minus the majority vote of its demonstrations'
    labels, paired per item, on the trained model and on the control (the units both have;
    mean over their tasks, stratified 95% bootstrap CI, 2000 resamples, seed 0)."""
    from icldistill.artifacts.document import Paragraph, Section, Table, plain
    from icldistill.core.stats import stratified_bootstrap_ci

    rs = [r for r in results if _model_label(r) == model and r.spec.k == k
          and r.key in coverage and r.key in control_coverage]
    if not rs:
        return None
    rows = []
    for lab in dict.fromkeys(r.spec.label for r in sorted(
            rs, key=lambda r: _selector_rank(r.spec.label))):
        mine = [r for r in rs if r.spec.label == lab]
        tasks = sorted({r.spec.task for r in mine})
        t, c = (stratified_bootstrap_ci(_vote_diffs(cov, mine, tasks), n_boot=2000, seed=0)
                for cov in (coverage, control_coverage))
        verdict = _control_verdict(t.low > 0 or t.high < 0, t.value, t.low, t.high, c.low,
                                   c.high)
        rows.append([plain(lab), ", ".join(plain(x) for x in tasks),
                     _interval(t.value, t.low, t.high), _interval(c.value, c.low, c.high),
                     verdict])
    return Section(f"{model} k={k}: the model against the vote of its demonstrations' labels", (
        Paragraph("Accuracy minus a majority vote of each item's demonstrations' labels (no "
                  "model), paired per item, mean over the tasks both grids ran (points, 95% "
                  "CI). A model that reads its demonstrations' labels approaches the vote; one "
                  "that does not falls below it. \"differs from the control\": **yes** when the "
                  "trained interval excludes 0 and lies wholly beyond the control's interval on "
                  "its own side of zero; **n/s** when the trained interval includes 0; **no** "
                  "otherwise (intervals only, no multiplicity adjustment)."),
        Table(["selector", "tasks", "trained: model − vote [95% CI]",
               "control: model − vote [95% CI]", "differs from the control"], rows)))


def _precision_section(rows: Sequence[PrecisionComparison]) -> Any:
    """The section "The same units in two precisions": per (model, precision, k) the share of
    test items whose predictions agree and how many accuracy differences are significant, then
    every unit's paired difference."""
    from icldistill.artifacts.document import Paragraph, Section, Table, plain

    title = "The same units in two precisions"
    intro = (Paragraph(
        "Units that differ only in the model's precision, paired on the same test items: the "
        "share of items with the same prediction, and the accuracy difference (half precision "
        "minus the reference) with its paired bootstrap CI and exact McNemar p, Holm-adjusted "
        "over every row. \"same demos\" says whether both showed every query the same "
        "demonstrations (a selector in the model's own representation may choose others in "
        "another precision)."),)
    if not rows:
        return Section(title, (*intro, Paragraph(
            "No unit of this folder was run in two precisions.")))
    groups: dict[tuple[str, str, str, int], list[PrecisionComparison]] = {}
    for c in rows:
        groups.setdefault((c.model, c.dtype, c.reference, c.k), []).append(c)
    summary = []
    for (model, dtype, ref, k), cs in sorted(groups.items()):
        n = sum(c.n for c in cs)
        agree = sum(round(c.agreement * c.n) for c in cs)
        sig = [c for c in cs if c.p_holm < PAIRED_ALPHA]
        summary.append([plain(model), f"{plain(dtype)} vs {plain(ref)}", str(k), str(len(cs)),
                        ", ".join(sorted({plain(c.task) for c in cs})),
                        f"{agree} of {n} ({_pct(agree / n)})",
                        f"{min(c.agreement for c in cs):.1%}",
                        f"{_points(min(c.diff for c in cs))} to {_points(max(c.diff for c in cs))}",
                        str(len(sig))])
    detail = [[plain(c.model), plain(c.dtype), plain(c.task), plain(c.selector), str(c.k),
               str(c.seed), str(c.n), f"{c.agreement:.1%}", f"{c.accuracy:.3f}",
               f"{c.reference_accuracy:.3f}", _diff_ci(c), _fmt_p(c.p_holm),
               "–" if c.same_demonstrations is None else
               ("yes" if c.same_demonstrations else "no")] for c in rows]
    return Section(title, (*intro, Table(
        ["model", "precisions", "k", "units", "tasks", "same prediction", "lowest unit",
         "accuracy differences (points)", f"Holm p < {PAIRED_ALPHA}"], summary),
        Table(["model", "precision", "task", "selector", "k", "seed", "n", "same prediction",
               "accuracy", "reference", f"diff [{rows[0].level:.0%} CI] (points)", "Holm p",
               "same demos"],
              detail)))


def _diff_ci(c: Any) -> str:
    """A paired difference with its interval, in points: ``+1.2 [+0.3, +2.1]``."""
    return _interval(c.diff, c.ci_low, c.ci_high)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "–"


_ORDER = ("random", "knn", "bm25", "mmr", "dpp", "vote-k", "mmd", "mmd-balanced", "mmd-query")


def _selector_rank(label: str) -> tuple[int, str]:
    base = _selector_name(label)
    return (_ORDER.index(base) if base in _ORDER else len(_ORDER), label)


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def _comparison_figures(rs: Sequence[Any], tasks: list[str], selectors: list[str],
                        acc: dict[str, dict[str, list[float]]], folder: Path, stem: str,
                        tag: str, rho: dict[str, float]) -> list[Path]:
    fig, axes = new_figure(1, 1, size=(max(6.0, 1.3 * len(tasks) + 2), 4.0))
    ax = axes[0, 0]
    width = 0.8 / max(1, len(selectors))
    cmap = _selector_colors(selectors)
    for j, s in enumerate(selectors):
        means = [np.mean(acc[s][t]) if acc[s][t] else np.nan for t in tasks]
        errs = [np.std(acc[s][t]) if len(acc[s][t]) > 1 else 0.0 for t in tasks]
        ax.bar(np.arange(len(tasks)) + (j - (len(selectors) - 1) / 2) * width, means, width,
               yerr=errs, label=s, color=cmap[s], capsize=2)
    ax.set_xticks(np.arange(len(tasks)))
    ax.set_xticklabels(tasks, rotation=20)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{tag}: accuracy per selector")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    p1 = save_figure(fig, folder / f"accuracy_{stem}.png")
    n = len(tasks)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = new_figure(nrows, ncols, size=(4.0, 3.3))
    markers = _selector_markers(selectors)
    handles: dict[str, Any] = {}
    for i, t in enumerate(tasks):
        ax = axes[i // ncols, i % ncols]
        for j, s in enumerate(selectors):
            pts = [(r.mmd2_task, r.accuracy.value) for r in rs
                   if r.spec.task == t and r.spec.label == s]
            if pts:
                # hollow markers of distinct shapes and decreasing sizes: selectors whose
                # points coincide (deterministic ones, equal accuracies) stay visible
                handles[s] = ax.scatter(*zip(*pts, strict=True), label=s,
                                        marker=markers[s], facecolors="none",
                                        edgecolors=[cmap[s]], linewidths=1.3,
                                        s=max(16.0, 60.0 - 8.0 * j), zorder=3 + j)
        ax.set_title(f"{t}: Spearman " + (_rho_text(rho[t]) if t in rho
                                          else "n/a (< 3 units)"), fontsize=9)
        ax.set_xlabel("MMD² (demos, test inputs)")
        ax.set_ylabel("accuracy")
    for j in range(n, nrows * ncols):
        axes[j // ncols, j % ncols].axis("off")
    fig.suptitle(f"{tag}: accuracy vs MMD² to the task")
    fig.set_layout_engine("constrained")     # keep x labels clear of the next row's titles
    if handles:                              # one legend for every panel, beside them
        fig.legend(list(handles.values()), list(handles), loc="outside right upper",
                   fontsize=7, title="selector", title_fontsize=7)
    p2 = save_figure(fig, folder / f"acc_vs_mmd_{stem}.png")
    return [p1, p2]


def _selector_colors(selectors: Sequence[str]) -> dict[str, Any]:
    """A distinct colour per selector (tab10; tab20 beyond ten selectors)."""
    from matplotlib import colormaps

    n = 10 if len(selectors) <= 10 else 20
    cm = colormaps[f"tab{n}"]
    return {s: cm(i % n) for i, s in enumerate(selectors)}


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def _selector_markers(selectors: Sequence[str]) -> dict[str, str]:
    """A distinct marker shape per selector (cycling after twelve)."""
    return {s: _MARKERS[i % len(_MARKERS)] for i, s in enumerate(selectors)}


def _unit_label(sel: str, enc: str, params: Sequence[tuple[str, Any]]) -> str:
    """The harness unit label of a selector on a representation (``minilm`` is not written)."""
    e = "" if enc == "minilm" else f"@{enc}"
    return sel + e + "".join(f",{k}={v}" for k, v in sorted(params))


def ablation_pairs(objectives: Sequence[tuple[str, str, tuple[tuple[str, Any], ...]]],
                   encoders: Sequence[str], *, knn: str = "knn", reference: str = "minilm"
                   ) -> list[tuple[str, str]]:
    """The factor contrasts of a representation x objective ablation, as ``(selector,
    baseline)`` unit-label pairs for :func:`icldistill.core.stats.paired_comparisons`.

    - *representation*: every objective on every representation other than ``reference``,
      against the same objective on ``reference`` (what the representation adds);
    - *objective*: every objective other than ``knn`` on every representation, against ``knn``
      on the same representation (what the objective adds over nearest neighbours there).

    Parameters
    ----------
    objectives : sequence of (display name, selector, params)
    encoders : sequence of str
        The representations (encoder specs), ``reference`` among them.
    knn : str
        The selector of the objective baseline.
    reference : str
        The representation baseline.

    Returns
    -------
    list of (str, str)
        Representation contrasts first, then objective contrasts; no duplicates.
    """
    pairs: list[tuple[str, str]] = []
    for _, sel, params in objectives:
        for enc in encoders:
            if enc != reference:
                pairs.append((_unit_label(sel, enc, params), _unit_label(sel, reference, params)))
    for _, sel, params in objectives:
        for enc in encoders:
            if sel != knn or params:
                pairs.append((_unit_label(sel, enc, params), _unit_label(knn, enc, ())))
    return list(dict.fromkeys(pairs))


@_under_report_lock
def write_ablation_report(
    results: Sequence[Any],
    paired: Sequence[Any],
    out_dir: str | Path,
    *,
    objectives: Sequence[tuple[str, str, tuple[tuple[str, Any], ...]]],
    encoders: Sequence[str],
    baseline: str = "knn",
    contrasts: Sequence[Any] = (),
    commands: Sequence[str] = (),
    notes: Sequence[str] = (),
    title: str = "Ablation: representation x objective, paired against kNN",
    coverage: Mapping[str, Any] | None = None,
    control: Sequence[ControlCheck] = (),
    control_label: str = "the random-init control",
    control_coverage: Mapping[str, Any] | None = None,
    katt_mmd: Mapping[str, Any] | None = None,
) -> Path:
    """Report (``ablation.md``, its HTML twin ``ablation.html``) and ``ablation.json`` of a
    representation x objective ablation (issue 12, item 4); returns the Markdown path.

    ``objectives`` are ``(display name, selector, params)``; every ``(objective, encoder)`` cell
    is the unit label ``selector[@encoder][,param=value...]`` of the harness (the default
    encoder ``minilm`` is not written). A cell shows the mean-over-tasks paired difference to
    ``baseline`` (percentage points) with its CI and Holm-adjusted p-value, taken from
    ``paired`` (:class:`icldistill.core.stats.PairedComparison` records); the conclusions (cells
    significantly better / worse, the best row and column) are computed from them.

    ``contrasts`` (the comparisons of :func:`ablation_pairs`, from ``paired_comparisons(...,
    pairs=ablation_pairs(objectives, encoders))``) add the factor tables that say which part
    carries a difference: each representation against MiniLM at a fixed objective, and each
    objective against kNN on the same representation. Their records go into ``ablation.json``
    too, with ``contrast`` ``"representation"`` or ``"objective"`` (the cells against
    ``baseline`` have ``"baseline"``).

    ``coverage`` (unit key -> :class:`icldistill.evaluation.LabelCoverage`) adds the section
    "Do the demonstrations show the query's label?" of :func:`write_comparison_report`, one
    row per cell; where it carries each item's ``MMD^2`` to its query
    (``Harness.label_coverage(..., item_mmd=True)``), the section "Within an item, do closer
    demonstrations answer right?" follows, over every cell's prompts for the same item, and its
    records go into ``concordance.json``: with ``control_coverage`` (the random-init twin's,
    reading the same prompts) the twin's rows beside them, with ``katt_mmd`` (unit key ->
    per-item ``MMD^2`` in the model's ``K_att`` space) the same tables in that space.

    ``control`` (:func:`control_checks` of these comparisons and contrasts against the same
    ones computed on a random-init twin that read exactly these prompts, e.g. a harness with
    ``selections_from``) adds the section "Against a random-init control", named after
    ``control_label``.
    """
    from icldistill.artifacts.document import CodeBlock, Report, Section

    out = Path(out_dir)
    ab = _Ablation.of(results, paired, objectives, encoders, baseline)
    sections: list[Section] = []
    record: list[dict[str, Any]] = []
    for model, k in sorted({(m, kk) for m, kk, _ in ab.by_label}):
        section, cells = _ablation_section(ab, model, k,
                                           _ablation_figure(ab, model, k, out, control))
        sections.append(section)
        record += cells
        if contrasts:
            section, cells = _ablation_factor_section(ab, contrasts, model, k)
            sections.append(section)
            record += cells
    if coverage:
        cov_section, _ = _coverage_section(results, coverage, {}, out / "figures")
        if cov_section is not None:
            sections.append(cov_section)
    conc_section, _ = _within_item(results, coverage, control_coverage, katt_mmd, out)
    if conc_section is not None:
        sections.append(conc_section)
    if control:
        sections.append(_control_section(control, control_label, how=_IMPORTED_PROMPTS))
    if commands:
        sections.append(Section("Reproduce", (CodeBlock("\n".join(commands), "bash"),)))
    write_json(out / "ablation.json", record)
    md_path, _ = _write_report(Report(title, sections, notes=tuple(notes)), out, stem="ablation")
    return md_path


@dataclass(frozen=True)
class _Ablation:
    """The inputs of :func:`write_ablation_report`, indexed."""

    objectives: Sequence[tuple[str, str, tuple[tuple[str, Any], ...]]]
    encoders: Sequence[str]
    baseline: str
    by_label: dict[tuple[str, int, str], list[Any]]      # (model, k, unit label) -> results
    mean_rows: dict[tuple[str, int, str], Any]           # mean-over-tasks paired comparisons
    task_rows: dict[tuple[str, int, str, str], Any]      # per-task paired comparisons

    @classmethod
    def of(cls, results: Sequence[Any], paired: Sequence[Any], objectives: Any,
           encoders: Sequence[str], baseline: str) -> _Ablation:
        by_label: dict[tuple[str, int, str], list[Any]] = {}
        for r in results:
            by_label.setdefault((_model_label(r), r.spec.k, r.spec.label), []).append(r)
        mean_rows = {(p.model, p.k, p.selector): p for p in paired
                     if p.task == "mean" and p.baseline == baseline}
        task_rows = {(p.model, p.k, p.selector, p.task): p for p in paired
                     if p.task != "mean" and p.baseline == baseline}
        return cls(objectives, encoders, baseline, by_label, mean_rows, task_rows)

    @staticmethod
    def label(sel: str, enc: str, params: tuple[tuple[str, Any], ...]) -> str:
        """The harness unit label of a cell."""
        return _unit_label(sel, enc, params)

    def tasks(self, model: str, k: int) -> list[str]:
        """The tasks of any finished unit of ``model`` and ``k``, sorted."""
        return sorted({r.spec.task for (m, kk, _), rs in self.by_label.items()
                       if (m, kk) == (model, k) for r in rs})


def _ablation_section(ab: _Ablation, model: str, k: int, figure: Any = None
                      ) -> tuple[Any, list[dict[str, Any]]]:
    """The report section of one model and ``k`` (``figure`` after its table) and the
    ``ablation.json`` records of its cells."""
    from icldistill.artifacts.document import (
        BulletList,
        Paragraph,
        Section,
        Table,
        inline_code,
        plain,
    )

    tasks = ab.tasks(model, k)
    blocks: list[Any] = [Paragraph(
        f"Mean over {len(tasks)} tasks ({', '.join(plain(t) for t in tasks)}) of the paired "
        f"accuracy difference to {inline_code(ab.baseline)} (points), 95% CI, Holm-adjusted "
        "p. **Bold**: Holm p < 0.05.")]
    rows, record, sig_better, sig_worse = _ablation_cells(ab, model, k)
    blocks.append(Table(["objective", *(plain(e) for e in ab.encoders)], rows))
    if figure is not None:
        blocks.append(figure)
    blocks += [Paragraph("Accuracy per task:"),
               Table(["objective", "representation", *(plain(t) for t in tasks)],
                     _ablation_accuracy_rows(ab, model, k, tasks))]
    per_task = [[plain(lab), plain(t), _points(p.diff), _short_p(p.p_holm)]
                for (m, kk, lab, t), p in sorted(ab.task_rows.items())
                if (m, kk) == (model, k) and p.p_holm < 0.05]
    conclusions = [
        "significantly better than kNN on the mean over tasks: "
        + (", ".join(sig_better) if sig_better else "none") + ".",
        "significantly worse: " + (", ".join(sig_worse) if sig_worse else "none") + "."]
    for enc in ab.encoders:
        ds = [p.diff for (m, kk, lab), p in ab.mean_rows.items() if (m, kk) == (model, k)
              and (lab.split(",")[0].partition("@")[2] or "minilm") == enc]
        if ds:
            conclusions.append(f"mean difference over the objectives on {inline_code(enc)}: "
                               f"{_points(float(np.mean(ds)))} points ({len(ds)} cells).")
    blocks += [Paragraph("**Conclusions (computed):**"), BulletList(conclusions)]
    if per_task:
        blocks += [Paragraph("Per-task differences with Holm p < 0.05:"),
                   Table(["selector", "task", "diff (points)", "Holm p"], per_task)]
    return Section(f"{model}, k = {k}", blocks), record


def _ablation_grid(ab: _Ablation, rows: Mapping[tuple[str, int, str], Any], model: str, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean-over-tasks differences to the baseline (points) ``[objectives, encoders]`` (NaN
    where none) and where they are significant (Holm p < 0.05), from ``rows`` keyed like
    ``ab.mean_rows``."""
    diff = np.full((len(ab.objectives), len(ab.encoders)), np.nan)
    sig = np.zeros(diff.shape, dtype=bool)
    for i, (_, sel, params) in enumerate(ab.objectives):
        for j, enc in enumerate(ab.encoders):
            p = rows.get((model, k, ab.label(sel, enc, params)))
            if p is not None:
                diff[i, j], sig[i, j] = 100 * p.diff, p.p_holm < 0.05
    return diff, sig


def _ablation_figure(ab: _Ablation, model: str, k: int, out: Path,
                     control: Sequence[ControlCheck]) -> Any:
    """A heat map of the objective x representation cells of one model and ``k`` (difference
    to the baseline, points, * where Holm p < 0.05), beside the same cells on the random-init
    twin when ``control`` holds them; the report :class:`Figure`, or ``None`` with no cell."""
    from icldistill.artifacts.document import Figure, plain

    panels = [("trained", *_ablation_grid(ab, ab.mean_rows, model, k))]
    twin = {(c.model, c.k, c.selector): c.control for c in control
            if c.task == "mean" and c.baseline == ab.baseline}
    if twin:
        panels.append(("random-init twin", *_ablation_grid(ab, twin, model, k)))
    if np.isnan(panels[0][1]).all():
        return None
    lim = max(1.0, *(float(np.nanmax(np.abs(d))) for _, d, _ in panels if not np.isnan(d).all()))
    names = [name for name, _, _ in ab.objectives]
    fig, axes = new_figure(1, len(panels), size=(1.6 * len(ab.encoders) + 3.2,
                                                 0.45 * len(names) + 1.6))
    im = None
    for ax, (who, diff, sig) in zip(axes[0], panels, strict=True):
        im = ax.imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for i, (_, sel, params) in enumerate(ab.objectives):
            for j, enc in enumerate(ab.encoders):
                text = ("baseline" if ab.label(sel, enc, params) == ab.baseline
                        else "–" if np.isnan(diff[i, j])
                        else f"{diff[i, j]:+.1f}" + ("*" if sig[i, j] else ""))
                dark = not np.isnan(diff[i, j]) and abs(diff[i, j]) > 0.6 * lim
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(ab.encoders)), list(ab.encoders))
        ax.set_yticks(range(len(names)), names if who == "trained" else [""] * len(names))
        ax.set_title(f"{who}: accuracy − {ab.baseline} (points)", fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), label="points (* Holm p < 0.05)")
    fig.suptitle(f"{model}, k = {k}: mean over tasks, paired against {ab.baseline}")
    path = save_figure(fig, out / "figures" / f"ablation_{_slug(model)}_k{k}.png")
    return Figure(path.relative_to(out).as_posix(),
                  "objective x representation against " + plain(ab.baseline)
                  + (" (left), and on the random-init twin reading the same prompts (right)"
                     if len(panels) > 1 else ""))


def _ablation_cells(ab: _Ablation, model: str, k: int
                    ) -> tuple[list[list[str]], list[dict[str, Any]], list[str], list[str]]:
    """The objective x representation table of one model and ``k``: its rows, the JSON
    records of its cells, and the cells significantly better / worse than the baseline."""
    from icldistill.artifacts.document import plain

    rows: list[list[str]] = []
    record: list[dict[str, Any]] = []
    sig_better: list[str] = []
    sig_worse: list[str] = []
    for name, sel, params in ab.objectives:
        row = [plain(name)]
        for enc in ab.encoders:
            lab = ab.label(sel, enc, params)
            if lab == ab.baseline:
                row.append("baseline")
                continue
            p = ab.mean_rows.get((model, k, lab))
            if p is None:
                row.append("not run" if (model, k, lab) not in ab.by_label else "1 task")
                continue
            row.append(_ablation_cell_text(p, len(ab.tasks(model, k))))
            if p.p_holm < 0.05:
                (sig_better if p.diff > 0 else sig_worse).append(
                    f"{plain(name)} on {plain(enc)}")
            record.append({"model": model, "k": k, "contrast": "baseline", "objective": name,
                           "encoder": enc, "selector": lab, **p.to_dict()})
        rows.append(row)
    return rows, record, sig_better, sig_worse


def _ablation_cell_text(p: Any, n_tasks: int) -> str:
    """A paired mean difference as an ablation cell: points, CI, Holm p; bold when Holm p <
    0.05; a mean over fewer than the table's ``n_tasks`` tasks says over how many."""
    text = f"{_diff_ci(p)} p={_short_p(p.p_holm)}"
    if p.n_tasks < n_tasks:
        text += f" ({p.n_tasks} of {n_tasks} tasks)"
    return f"**{text}**" if p.p_holm < 0.05 else text


def _ablation_factor_section(ab: _Ablation, contrasts: Sequence[Any], model: str, k: int
                             ) -> tuple[Any, list[dict[str, Any]]]:
    """The factor tables of one model and ``k``: representation vs MiniLM at a fixed
    objective, objective vs kNN on a fixed representation; and their ``ablation.json``
    records."""
    from icldistill.artifacts.document import BulletList, Paragraph, Section, Table, plain

    means = {(p.selector, p.baseline): p for p in contrasts
             if p.model == model and p.k == k and p.task == "mean"}
    reference = ab.encoders[0] if "minilm" not in ab.encoders else "minilm"
    others = [e for e in ab.encoders if e != reference]
    record: list[dict[str, Any]] = []
    found: dict[str, list[str]] = {"better": [], "worse": []}
    n_tasks = len(ab.tasks(model, k))

    def cell(kind: str, name: str, enc: str, sel: str, base: str) -> str:
        p = means.get((sel, base))
        if p is None:
            return "–"
        record.append({"model": model, "k": k, "contrast": kind, "objective": name,
                       "encoder": enc, "selector": sel, **p.to_dict()})
        if p.p_holm < 0.05:
            found["better" if p.diff > 0 else "worse"].append(
                f"{plain(sel)} vs {plain(base)} ({_points(p.diff)})")
        return _ablation_cell_text(p, n_tasks)

    rep_rows = [[plain(name), *(cell("representation", name, enc, ab.label(sel, enc, params),
                                     ab.label(sel, reference, params)) for enc in others)]
                for name, sel, params in ab.objectives]
    knn_sel = _selector_name(ab.baseline)
    obj_rows = [[plain(name), *(cell("objective", name, enc, ab.label(sel, enc, params),
                                     ab.label(knn_sel, enc, ())) for enc in ab.encoders)]
                for name, sel, params in ab.objectives if sel != knn_sel or params]
    n = len({(p.selector, p.baseline, p.task) for p in contrasts
             if p.model == model and p.k == k})
    blocks: list[Any] = [
        Paragraph("Which part carries a difference. Each cell is a paired mean-over-tasks "
                  "difference (points) on the same test items, 95% CI, Holm p over the "
                  f"{n} factor comparisons (per task and mean) of this model and k. "
                  "**Bold**: Holm p < 0.05."),
        Paragraph(f"**Representation** (the same objective on another representation, minus "
                  f"it on {plain(reference)}):"),
        Table(["objective", *(f"{plain(e)} − {plain(reference)}" for e in others)], rep_rows),
        Paragraph(f"**Objective** (the objective minus {plain(knn_sel)} on the same "
                  "representation):"),
        Table(["objective", *(f"on {plain(e)}" for e in ab.encoders)], obj_rows),
        Paragraph("**Factor conclusions (computed):**"),
        BulletList([
            "significant gains: " + ("; ".join(found["better"]) or "none") + ".",
            "significant losses: " + ("; ".join(found["worse"]) or "none") + "."]),
    ]
    return Section(f"{model}, k = {k}: representation and objective separately", blocks), record


def _ablation_accuracy_rows(ab: _Ablation, model: str, k: int,
                            tasks: Sequence[str]) -> list[list[str]]:
    """Mean accuracy per task of every evaluated (objective, representation) cell."""
    from icldistill.artifacts.document import plain

    acc_rows = []
    for name, sel, params in ab.objectives:
        for enc in ab.encoders:
            rs = ab.by_label.get((model, k, ab.label(sel, enc, params)), [])
            if not rs:
                continue
            cells = []
            for t in tasks:
                vals = [r.accuracy.value for r in rs if r.spec.task == t]
                cells.append(f"{np.mean(vals):.3f}" if vals else "")
            acc_rows.append([plain(name), plain(enc), *cells])
    return acc_rows
