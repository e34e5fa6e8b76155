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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .models.tracing import TraceResult

__all__ = [
    "atomic_write",
    "new_figure",
    "save_figure",
    "to_jsonable",
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
def _heatmap(ax: Any, data: np.ndarray, title: str, cbar_label: str, fig: Any,
             log: bool = False) -> None:
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
    _heatmap(axes[0, 0], eta[:, :, -1], f"η* = N/(2D′) at the last position (t={pos[-1]})",
             "η*", fig, log=True)
    _heatmap(axes[0, 1], share[:, :, -1], "demonstrations' share of the head output",
             "‖c_D‖ / Σ_S ‖c_S‖", fig)
    fig.suptitle(title)
    files["eta_heatmap"] = save_figure(fig, out / "eta_heatmap.png")
    fig, axes = new_figure(1, 1, size=(6.2, 4.6))
    _heatmap(axes[0, 0], share[:, :, -1], "demonstrations' share of the head output "
             f"(t={pos[-1]})", "‖c_D‖ / Σ_S ‖c_S‖", fig)
    files["demo_share_heatmap"] = save_figure(fig, out / "demo_share_heatmap.png")

    fig, axes = new_figure(1, 3, size=(5.0, 3.8))
    cmap = _layer_colors(L)
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
        _layer_colorbar(fig, axes[0, 2], L)
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


def _layer_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def _layer_colorbar(fig: Any, ax: Any, n: int) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(0, n - 1), cmap=colormaps["viridis"])
    fig.colorbar(sm, ax=ax, label="layer")
