"""Reports: figures, tables and files written from results (Markdown + matplotlib).

Everything here writes atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .models.tracing import TraceResult
    from .stats import PairedComparison

__all__ = [
    "ComparisonReport",
    "SelectorSummary",
    "atomic_write",
    "heatmap",
    "layer_colorbar",
    "layer_colors",
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


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through a temporary file in the same folder, then ``os.replace`` it.

    ``write`` receives the open binary file. The data is flushed and fsync'ed before the
    rename; on any exception (``KeyboardInterrupt`` included) the temporary file is removed and
    an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch/path values to JSON types; non-finite floats become ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach"):  # torch.Tensor
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as JSON atomically (tensors/arrays become lists, NaN/inf become null)."""
    return write_text(path, json.dumps(to_jsonable(payload), indent=1, allow_nan=False) + "\n")


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (6.0, 4.0)):
    """A matplotlib figure on the Agg canvas (no global backend change) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi,
                                                     bbox_inches="tight"))


# ============================================================================ trace report
def heatmap(ax: Any, data: np.ndarray, title: str, cbar_label: str, fig: Any,
            log: bool = False) -> None:
    """Draw ``data`` ``[layers, heads]`` on ``ax`` (layer up, head across) with a colour bar;
    ``log=True`` uses a log colour scale over the positive entries."""
    from matplotlib.colors import LogNorm

    norm = None
    if log:
        positive = data[data > 0]
        if positive.size:
            norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
    im = ax.imshow(data, aspect="auto", origin="lower", cmap="viridis", norm=norm,
                   interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar_label)


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
    ``summary.md``.

    Returns
    -------
    dict[str, Path]
        The written files by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    eta = result.eta.double().numpy()                      # [L, H, P]
    share = result.demo_share.double().numpy()
    mass_d = result.attention_mass["demos"].double().numpy()
    L, H, P = eta.shape
    pos = result.positions.numpy()
    kernel = result.has_kernel_form.numpy()
    files: dict[str, Path] = {}

    # ---- figures
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

    # ---- numbers
    last = {
        "eta_mean": float(eta[:, :, -1].mean()),
        "eta_min": float(eta[:, :, -1].min()),
        "eta_max": float(eta[:, :, -1].max()),
        "demo_mass_mean": float(mass_d[:, :, -1].mean()),
        "demo_share_mean": float(share[:, :, -1].mean()),
    }
    top = np.dstack(np.unravel_index(np.argsort(-share[:, :, -1], axis=None)[:5], (L, H)))[0]
    summary = {
        "title": title,
        **meta,
        "num_tokens": len(result.tokens),
        "num_layers": L,
        "num_heads": H,
        "positions": pos,
        "num_demo_keys_last": result.num_demo_keys[:, -1],
        "heads_without_kernel_form": int((~kernel).sum()),
        "max_decomposition_error": result.max_decomposition_error,
        "last_position": last,
        "top_demo_share_heads": [{"layer": int(a), "head": int(b),
                                  "demo_share": float(share[a, b, -1])} for a, b in top],
        "eta_last": eta[:, :, -1],
        "demo_share_last": share[:, :, -1],
        "demo_mass_last": mass_d[:, :, -1],
        "log_normalizer_last": result.log_normalizer[:, :, -1],
        "has_kernel_form": kernel,
        "files": {k: v.name for k, v in files.items()},
    }
    files["json"] = write_json(out / "trace.json", summary)
    try:
        frame = result.to_frame()
        files["parquet"] = atomic_write(out / "trace.parquet",
                                        lambda fh: frame.to_parquet(fh, index=False))
    except ImportError as exc:  # pragma: no cover - pandas/pyarrow are in the models extra
        raise ImportError("writing Parquet needs pandas and pyarrow: pip install "
                          "'icldistill[models]'") from exc

    lines = [
        f"# {title}", "",
        *(f"- **{k}**: {v}" for k, v in meta.items()),
        f"- tokens: {len(result.tokens)}; layers × heads: {L} × {H}; traced positions: "
        f"{pos.tolist() if P <= 12 else f'{P} (from {pos[0]} to {pos[-1]})'}",
        f"- decomposition check: max ‖Σ_S c_S − o‖ / ‖o‖ = {result.max_decomposition_error:.2e}"
        " (against the attention output the model used)",
        f"- heads without a kernel form (soft-capped or biased logits): {int((~kernel).sum())}"
        f" of {L * H}",
        "", f"## At the last position (t = {pos[-1]}, token {result.tokens[pos[-1]]!r})", "",
        "| quantity | mean over heads | min | max |", "|---|---|---|---|",
        f"| η* = N/(2D′) | {last['eta_mean']:.4g} | {last['eta_min']:.4g} | "
        f"{last['eta_max']:.4g} |",
        f"| attention mass on demos | {last['demo_mass_mean']:.3f} | "
        f"{mass_d[:, :, -1].min():.3f} | {mass_d[:, :, -1].max():.3f} |",
        f"| demo share of output | {last['demo_share_mean']:.3f} | {share[:, :, -1].min():.3f}"
        f" | {share[:, :, -1].max():.3f} |",
        "", "Heads with the largest demonstration share:", "",
        "| layer | head | demo share | η* |", "|---|---|---|---|",
        *(f"| {int(a)} | {int(b)} | {share[a, b, -1]:.3f} | {eta[a, b, -1]:.4g} |"
          for a, b in top),
        "", "![η* and demo share](eta_heatmap.png)", "", "![per position](positions.png)", "",
    ]
    files["markdown"] = write_text(out / "summary.md", "\n".join(lines))
    return files


def layer_colors(n: int) -> list[Any]:
    """``n`` colours along viridis, one per layer (first layer dark, last layer yellow)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def layer_colorbar(fig: Any, ax: Any, n: int) -> None:
    """A colour bar labelled "layer" for ``n`` layers coloured by :func:`layer_colors`."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(0, n - 1), cmap=colormaps["viridis"])
    fig.colorbar(sm, ax=ax, label="layer")


# ============================================================================ comparison report
MMD_FAMILY = ("mmd", "mmd-query", "mmd-balanced")


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 points or a
    constant input."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("spearman needs two 1-D arrays of equal length")
    if a.size < 3:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        for val in np.unique(v):              # average ranks of ties
            tie = v == val
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


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


@dataclass(frozen=True)
class ComparisonReport:
    """What :func:`write_comparison_report` wrote and concluded.

    Attributes
    ----------
    markdown, html : Path
    figures : list of Path
    summaries : list of SelectorSummary
    best : dict ``"model k=K"`` -> selector with the best mean accuracy over tasks
    mmd_family_best : dict ``"model k=K"`` -> whether an MMD-family selector is best on average
    beats_random : dict ``"model k=K"`` -> {task: whether the best MMD-family selector beats
        the mean of the random seeds}
    spearman : dict ``"model k=K"`` -> {task: Spearman(MMD^2 to the task, accuracy) over the
        evaluated demonstration sets}
    collapsed : dict ``"model k=K"`` -> {task: (units whose predictions collapse onto one
        label, units)}; a unit collapses when every label but one has a recall below
        :data:`COLLAPSE_RECALL` (the model answers one label whatever the demonstrations, so
        its accuracy reflects the label prior rather than the demonstrations)
    paired_json : Path or None
        ``paired.json`` (the paired comparisons, one record each) when they were given.
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


#: Recall below which a label counts as never predicted (see ``ComparisonReport.collapsed``).
COLLAPSE_RECALL = 0.05


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


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    import html as _html

    head = "".join(f"<th>{_html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_comparison_report(
    results: Sequence[Any],
    out_dir: str | Path,
    *,
    title: str = "Demonstration selection: few-shot accuracy",
    commands: Sequence[str] = (),
    notes: Sequence[str] = (),
    paired: Sequence[PairedComparison] | None = None,
) -> ComparisonReport:
    """Markdown + HTML report of a selector comparison (harness :class:`UnitResult` objects).

    With ``paired`` (:func:`icldistill.stats.paired_comparisons`) the report leads with the
    paired comparisons — per model and ``k``, the mean-over-tasks difference of every selector
    to each baseline with its CI, p-value, Holm-adjusted p-value and verdict, then the per-task
    differences — and writes them to ``paired.json`` (one ``PairedComparison.to_dict()``
    record each).

    Tables: accuracy (mean over seeds and orderings, 95% bootstrap CI of single runs in the
    detail table) per task and selector for every model and ``k``, the mean over tasks, the
    MMD to the task of every selector, selection and scoring times. Figures: accuracy per
    selector per task; accuracy against the demonstrations' ``MMD^2`` to the task with the
    per-task Spearman correlation. Conclusions (best selector, whether the MMD family is best
    and beats random on every task) are computed from the numbers, not asserted.
    """
    import html as _html

    if not results:
        raise ValueError("no results to report")
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    summaries: list[SelectorSummary] = []
    best: dict[str, str] = {}
    fam_best: dict[str, bool] = {}
    beats: dict[str, dict[str, bool]] = {}
    rho: dict[str, dict[str, float]] = {}
    collapsed: dict[str, dict[str, tuple[int, int]]] = {}
    md: list[str] = [f"# {title}", ""]
    html_parts: list[str] = [f"<h1>{_html.escape(title)}</h1>"]
    figures: list[Path] = []
    groups = _group_results(results)
    overview: list[list[str]] = []
    for (model, k), rs in groups.items():
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
            summaries.append(SelectorSummary(model, k, s, per, std, mean, mmd_t))
            cells = [f"{per[t]:.3f}" + (f" ±{std[t]:.3f}" if len(acc[s][t]) > 1 else "")
                     if t in per else "–" for t in tasks]
            rows.append([s, *cells, f"{mean:.3f}" if math.isfinite(mean) else "–"])
        summ = [x for x in summaries if x.model == model and x.k == k]
        complete = [x for x in summ if math.isfinite(x.mean)]
        if len(complete) >= 2 and len(complete) == len(summ):
            top = max(complete, key=lambda x: x.mean)
            best[tag] = top.selector
            fam_best[tag] = top.selector.split("@")[0].split(",")[0] in MMD_FAMILY
        # bold the best mean
        for row in rows:
            if row[0] == best.get(tag):
                row[0] = f"**{row[0]}**"
        rnd = next((x for x in summ if x.selector == "random"), None)
        fam = [x for x in summ if x.selector.split("@")[0].split(",")[0] in MMD_FAMILY]
        if rnd is not None and fam:
            beats[tag] = {t: max(x.per_task[t] for x in fam if t in x.per_task)
                          > rnd.per_task[t]
                          for t in tasks if t in rnd.per_task
                          and any(t in x.per_task for x in fam)}
        rho[tag] = {}
        for t in tasks:
            pts = [(r.mmd2_task, r.accuracy.value) for r in rs if r.spec.task == t]
            if len(pts) >= 3:
                rho[tag][t] = spearman([p[0] for p in pts], [p[1] for p in pts])
        header = ["selector", *tasks, "mean"]
        md += [f"## {tag}: accuracy", "", _md_table(header, rows), ""]
        html_parts += [f"<h2>{_html.escape(tag)}: accuracy</h2>",
                       _html_table(header, [[_html.escape(c).replace("**", "") for c in r]
                                            for r in rows])]
        claims = []
        missing = [x.selector for x in summ if not math.isfinite(x.mean)]
        if missing:
            claims.append("Incomplete grid: no mean over tasks for " + ", ".join(missing) +
                          " (cells marked –), so no overall winner is declared.")
        half = float(np.mean([(r.accuracy.high - r.accuracy.low) / 2 for r in rs]))
        fam_done = [x for x in fam if math.isfinite(x.mean)]
        top_fam = max(fam_done, key=lambda x: x.mean) if fam_done else None
        if tag in best:
            claims.append(f"Best mean accuracy over tasks: **{best[tag]}**"
                          f" ({'an' if fam_best[tag] else 'not an'} MMD-family selector).")
            top_all = max(complete, key=lambda x: x.mean)
            if not fam_best[tag] and top_fam is not None:
                gap = top_all.mean - top_fam.mean
                claims.append(
                    f"Gap: the best MMD-family selector, {top_fam.selector} "
                    f"({top_fam.mean:.3f}), is {gap:.3f} below {top_all.selector} "
                    f"({top_all.mean:.3f}) on the mean over tasks; a single unit's 95% "
                    f"bootstrap half-width is {half:.3f} on average here"
                    + (", so the two are not distinguishable at this test size." if gap < half
                       else "."))
            overview.append([tag, f"{top_all.selector} {top_all.mean:.3f}",
                             f"{top_fam.selector} {top_fam.mean:.3f}" if top_fam else "–",
                             f"{top_all.mean - top_fam.mean:.3f}" if top_fam else "–",
                             f"{half:.3f}",
                             (f"{sum(beats.get(tag, {}).values())} of {len(beats[tag])}"
                              if tag in beats else "–"),
                             f"{np.mean([v for v in rho[tag].values() if math.isfinite(v)]):+.2f}"
                             if any(math.isfinite(v) for v in rho[tag].values()) else "–"])
        collapsed[tag] = {t: (sum(_collapsed(r) for r in rs if r.spec.task == t),
                              sum(1 for r in rs if r.spec.task == t)) for t in tasks}
        if tag in beats:
            lost = [t for t, ok in beats[tag].items() if not ok]
            claims.append("The best MMD-family selector beats random on every task evaluated."
                          if not lost else
                          "The MMD family does **not** beat random on: " + ", ".join(lost) + ".")
            assert rnd is not None
            for t in lost:
                top = max((x for x in fam if t in x.per_task), key=lambda x: x.per_task[t])
                c, n_t = collapsed[tag][t]
                why = (f"{t}: best MMD-family {top.selector} {top.per_task[t]:.3f} vs random "
                       f"{rnd.per_task[t]:.3f} ± {rnd.per_task_std.get(t, 0.0):.3f}")
                if c:
                    why += (f"; {c} of {n_t} units predict (almost) only one label, so "
                            "accuracy there reflects the label prior, not the demonstrations")
                if math.isfinite(rho[tag].get(t, math.nan)):
                    why += f"; Spearman(MMD², accuracy) {rho[tag][t]:+.2f}"
                claims.append("Why — " + why + ".")
        many = {t: cn for t, cn in collapsed[tag].items() if cn[0]}
        if many:
            claims.append(f"Predictions collapse onto one label (every other label's recall "
                          f"< {COLLAPSE_RECALL:.0%}) in " + ", ".join(
                              f"{t} {c} of {n_t} units" for t, (c, n_t) in many.items()) + ".")
        if rho[tag]:
            vals = [v for v in rho[tag].values() if math.isfinite(v)]
            claims.append("Spearman(MMD² to the task, accuracy) per task: " + ", ".join(
                f"{t} {v:+.2f}" for t, v in rho[tag].items()) +
                (f"; mean {np.mean(vals):+.2f} (negative = lower MMD, higher accuracy)."
                 if vals else "."))
        md += [f"- {c}" for c in claims] + [""]
        html_parts += ["<ul>" + "".join(f"<li>{_html.escape(c).replace('**', '')}</li>"
                                        for c in claims) + "</ul>"]
        # MMD table
        mrows = [[s, *[f"{np.mean(mm[s][t]):.4f}" if mm[s][t] else "–" for t in tasks]]
                 for s in selectors]
        md += [f"### {tag}: MMD² of the shown demonstrations to the test inputs", "",
               _md_table(["selector", *tasks], mrows), ""]
        html_parts += [f"<h3>{_html.escape(tag)}: MMD² to the task</h3>",
                       _html_table(["selector", *tasks], mrows)]
        figures += _comparison_figures(rs, tasks, selectors, acc, out / "figures",
                                       f"{_slug(model)}_k{k}", tag, rho[tag])
        for f in figures[-2:]:
            rel = f.relative_to(out).as_posix()
            md += [f"![{f.stem}]({rel})", ""]
            html_parts += [f'<p><img src="{rel}" alt="{f.stem}" style="max-width:100%"></p>']
    if overview:
        head = ["model, k", "best mean (selector, accuracy)", "best MMD family", "gap",
                "unit 95% CI half-width", "MMD family beats random on",
                "mean Spearman(MMD², acc)"]
        md[2:2] = ["## Overview", "", _md_table(head, overview), ""]
        html_parts[1:1] = ["<h2>Overview</h2>", _html_table(head, overview)]
    paired_json = None
    if paired is not None:
        paired = list(paired)
        paired_json = write_json(out / "paired.json", [c.to_dict() for c in paired])
        pmd, phtml = _paired_section(paired)
        md[2:2] = pmd
        html_parts[1:1] = phtml
    # detail table
    drows = []
    for r in sorted(results, key=lambda r: (_model_label(r), r.spec.k, r.spec.task,
                                            _selector_rank(r.spec.label), r.spec.seed,
                                            r.spec.ordering)):
        drows.append([_model_label(r), r.spec.task, str(r.spec.k), r.spec.label, str(r.spec.seed),
                      str(r.spec.ordering), str(r.accuracy), str(r.macro_f1),
                      f"{r.mmd2_task:.4f}", f"{r.mmd2_query:.4f}",
                      f"{r.selection_seconds:.3f}", f"{r.scoring_seconds:.1f}",
                      str(r.n)])
    dh = ["model", "task", "k", "selector", "seed", "ordering", "accuracy [95% CI]",
          "macro-F1 [95% CI]", "MMD² task", "MMD² query", "select s", "score s", "n"]
    md += ["## Every evaluated unit", "", _md_table(dh, drows), ""]
    html_parts += ["<h2>Every evaluated unit</h2>", _html_table(dh, drows)]
    if commands:
        md += ["## Commands", "", "```", *commands, "```", ""]
        html_parts += ["<h2>Commands</h2><pre>" + _html.escape("\n".join(commands)) + "</pre>"]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
        html_parts += ["<h2>Notes</h2><ul>" + "".join(f"<li>{_html.escape(n)}</li>"
                                                       for n in notes) + "</ul>"]
    md_path = write_text(out / "report.md", "\n".join(md))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
             "table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}")
    html_path = write_text(out / "report.html",
                           f"<!doctype html><html><head><meta charset='utf-8'><title>"
                           f"{_html.escape(title)}</title><style>{style}</style></head><body>"
                           + "\n".join(html_parts) + "</body></html>")
    return ComparisonReport(md_path, html_path, figures, summaries, best, fam_best, beats, rho,
                            collapsed, paired_json)


#: Holm-adjusted p-value below which a paired comparison is called a difference.
PAIRED_ALPHA = 0.05


def _fmt_p(p: float) -> str:
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _points(x: float) -> str:
    """A difference in accuracy points, signed, one decimal (no "-0.0")."""
    return f"{round(100 * x, 1) + 0.0:+.1f}"


def _verdict(c: PairedComparison) -> str:
    if c.p_holm < PAIRED_ALPHA:
        return "better" if c.diff > 0 else "worse"
    return "no significant difference"


def _paired_section(paired: Sequence[PairedComparison]) -> tuple[list[str], list[str]]:
    """Markdown lines and HTML parts of the "Paired comparisons" section."""
    import html as _html

    esc = _html.escape
    md = ["## Paired comparisons", ""]
    html_parts = ["<h2>Paired comparisons</h2>"]
    if not paired:
        text = "No paired comparisons: no per-item predictions were recorded."
        return [*md, text, ""], [*html_parts, f"<p>{esc(text)}</p>"]
    level = paired[0].level
    intro = (
        "Every selector scored the same test items as its baseline, so they are compared "
        "paired: diff = accuracy of the selector minus the baseline's, in points, on the same "
        "items (a randomised selector's correctness is averaged over its seeds per item). "
        f"{level:.0%} CI: percentile bootstrap over items (within each task for the mean over "
        "tasks). p: exact McNemar test when both are single runs, else a sign-flip test "
        "(exact up to 20 discordant items, Monte Carlo beyond); for the mean over tasks a "
        "sign-flip test within tasks. Holm p: Holm-Bonferroni over the family of one model "
        "and k — every per-task and every mean-over-tasks comparison against every baseline "
        "(a pair and its mirror, e.g. random vs knn and knn vs random, count once). Verdict: "
        f"better / worse when Holm p < {PAIRED_ALPHA}, else no significant difference.")
    md += [intro, ""]
    html_parts.append(f"<p>{esc(intro)}</p>")
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
        rows = [[c.selector, c.baseline, _points(c.diff),
                 f"[{_points(c.ci_low)}, {_points(c.ci_high)}]", _fmt_p(c.p), _fmt_p(c.p_holm),
                 str(c.n_tasks), str(c.n), _verdict(c)] for c in means]
        title = f"{tag}: mean over tasks (Holm family of {family} comparisons)"
        md += [f"### {title}", ""]
        html_parts.append(f"<h3>{esc(title)}</h3>")
        if rows:
            md += [_md_table(head, rows), ""]
            html_parts.append(_html_table(head, [[esc(x) for x in r] for r in rows]))
        else:
            text = "Fewer than 2 tasks with both selectors: no mean over tasks."
            md += [text, ""]
            html_parts.append(f"<p>{esc(text)}</p>")
        tasks = sorted({c.task for c in cs if c.task != "mean"})
        for base in baselines:
            sub = [c for c in cs if c.baseline == base]
            cell = {(c.selector, c.task): _points(c.diff)
                    + ("*" if c.p_holm < PAIRED_ALPHA else "") for c in sub}
            sels = sorted({c.selector for c in sub}, key=_selector_rank)
            cols = [*tasks, "mean"]
            prow = [[s, *[cell.get((s, t), "–") for t in cols]] for s in sels]
            title = f"{tag}: per task, diff vs {base} (points; * = Holm p < {PAIRED_ALPHA})"
            md += [f"#### {title}", "", _md_table(["selector", *cols], prow), ""]
            html_parts += [f"<h4>{esc(title)}</h4>",
                           _html_table(["selector", *cols], [[esc(x) for x in r]
                                                             for r in prow])]
        notes += [f"{tag}, {c.selector} vs {c.baseline}, {c.task}: {c.note}"
                  for c in cs if c.note]
    if notes:
        md += [*[f"- {n}" for n in notes], ""]
        html_parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    return md, html_parts


_ORDER = ("random", "knn", "bm25", "mmr", "dpp", "vote-k", "mmd", "mmd-balanced", "mmd-query")


def _selector_rank(label: str) -> tuple[int, str]:
    base = label.split("@")[0].split(",")[0]
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
    for i, t in enumerate(tasks):
        ax = axes[i // ncols, i % ncols]
        for s in selectors:
            pts = [(r.mmd2_task, r.accuracy.value) for r in rs
                   if r.spec.task == t and r.spec.label == s]
            if pts:
                ax.scatter(*zip(*pts, strict=True), color=cmap[s], label=s, s=22)
        ax.set_title(f"{t}: Spearman {rho.get(t, float('nan')):+.2f}", fontsize=9)
        ax.set_xlabel("MMD² (demos, test inputs)")
        ax.set_ylabel("accuracy")
    for j in range(n, nrows * ncols):
        axes[j // ncols, j % ncols].axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"{tag}: accuracy vs MMD² to the task")
    fig.set_layout_engine("constrained")     # keep x labels clear of the next row's titles
    p2 = save_figure(fig, folder / f"acc_vs_mmd_{stem}.png")
    return [p1, p2]


def _selector_colors(selectors: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cm = colormaps["tab10"]
    return {s: cm(i % 10) for i, s in enumerate(selectors)}


def write_ablation_report(
    results: Sequence[Any],
    paired: Sequence[Any],
    out_dir: str | Path,
    *,
    objectives: Sequence[tuple[str, str, tuple[tuple[str, Any], ...]]],
    encoders: Sequence[str],
    baseline: str = "knn",
    commands: Sequence[str] = (),
    notes: Sequence[str] = (),
    title: str = "Ablation: representation x objective, paired against kNN",
) -> Path:
    """Markdown report (``ablation.md``) and ``ablation.json`` of a representation x objective
    ablation (issue 12, item 4).

    ``objectives`` are ``(display name, selector, params)``; every ``(objective, encoder)`` cell
    is the unit label ``selector[@encoder][,param=value...]`` of the harness (the default
    encoder ``minilm`` is not written). A cell shows the mean-over-tasks paired difference to
    ``baseline`` (percentage points) with its CI and Holm-adjusted p-value, taken from
    ``paired`` (:class:`icldistill.stats.PairedComparison` records); the conclusions (cells
    significantly better / worse, the best row and column) are computed from them.
    """
    out = Path(out_dir)
    by_label: dict[tuple[str, int, str], list[Any]] = {}
    for r in results:
        by_label.setdefault((_model_label(r), r.spec.k, r.spec.label), []).append(r)
    mean_rows = {(p.model, p.k, p.selector): p for p in paired
                 if p.task == "mean" and p.baseline == baseline}
    task_rows = {(p.model, p.k, p.selector, p.task): p for p in paired
                 if p.task != "mean" and p.baseline == baseline}

    def label(sel: str, enc: str, params: tuple[tuple[str, Any], ...]) -> str:
        e = "" if enc == "minilm" else f"@{enc}"
        return sel + e + "".join(f",{k}={v}" for k, v in sorted(params))

    md = [f"# {title}", ""]
    record: list[dict[str, Any]] = []
    for model, k in sorted({(m, kk) for m, kk, _ in by_label}):
        tasks = sorted({r.spec.task for (m, kk, _), rs in by_label.items()
                        if (m, kk) == (model, k) for r in rs})
        md += [f"## {model}, k = {k}", "",
               f"Mean over {len(tasks)} tasks ({', '.join(tasks)}) of the paired accuracy "
               f"difference to `{baseline}` (points), 95% CI, Holm-adjusted p. "
               "**Bold**: Holm p < 0.05.", ""]
        rows = []
        sig_better, sig_worse = [], []
        for name, sel, params in objectives:
            row = [name]
            for enc in encoders:
                lab = label(sel, enc, params)
                if lab == baseline:
                    row.append("baseline")
                    continue
                p = mean_rows.get((model, k, lab))
                if p is None:
                    row.append("not run" if (model, k, lab) not in by_label else "1 task")
                    continue
                cell = (f"{100 * p.diff:+.1f} [{100 * p.ci_low:+.1f}, {100 * p.ci_high:+.1f}] "
                        f"p={p.p_holm:.2g}")
                if p.p_holm < 0.05:
                    cell = f"**{cell}**"
                    (sig_better if p.diff > 0 else sig_worse).append(f"{name} on {enc}")
                row.append(cell)
                record.append({"model": model, "k": k, "objective": name, "encoder": enc,
                               "selector": lab, **p.to_dict()})
            rows.append(row)
        md += [_md_table(["objective", *encoders], rows), ""]
        # accuracy per task
        acc_rows = []
        for name, sel, params in objectives:
            for enc in encoders:
                rs = by_label.get((model, k, label(sel, enc, params)), [])
                if not rs:
                    continue
                cells = []
                for t in tasks:
                    vals = [r.accuracy.value for r in rs if r.spec.task == t]
                    cells.append(f"{np.mean(vals):.3f}" if vals else "")
                acc_rows.append([name, enc, *cells])
        md += ["Accuracy per task:", "", _md_table(["objective", "representation", *tasks],
                                                     acc_rows), ""]
        per_task = [[label, t, f"{100 * p.diff:+.1f}", f"{p.p_holm:.2g}"]
                    for (m, kk, label, t), p in sorted(task_rows.items())
                    if (m, kk) == (model, k) and p.p_holm < 0.05]
        md += ["**Conclusions (computed):**", ""]
        md.append("- significantly better than kNN on the mean over tasks: "
                  + (", ".join(sig_better) if sig_better else "none") + ".")
        md.append("- significantly worse: " + (", ".join(sig_worse) if sig_worse else "none")
                  + ".")
        for enc in encoders:
            ds = [p.diff for (m, kk, lab), p in mean_rows.items() if (m, kk) == (model, k)
                  and (lab.split(",")[0].partition("@")[2] or "minilm") == enc]
            if ds:
                md.append(f"- mean difference over the objectives on `{enc}`: "
                          f"{100 * float(np.mean(ds)):+.1f} points ({len(ds)} cells).")
        if per_task:
            md += ["", "Per-task differences with Holm p < 0.05:", "",
                   _md_table(["selector", "task", "diff (points)", "Holm p"], per_task)]
        md.append("")
    if commands:
        md += ["## Reproduce", "", "```bash", *commands, "```", ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    write_json(out / "ablation.json", record)
    return write_text(out / "ablation.md", "\n".join(md))
