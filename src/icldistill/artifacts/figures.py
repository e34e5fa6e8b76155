"""Figure helpers shared by every report: a matplotlib figure on the Agg canvas, atomic PNG
saving, a layer x head heat map and per-layer colours.

matplotlib is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from icldistill.artifacts.store import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["heatmap", "layer_colorbar", "layer_colors", "new_figure", "save_figure"]


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (6.0, 4.0)):
    """A matplotlib figure on the Agg canvas (no global backend change) and its axes.

    The figure uses matplotlib's constrained layout, so rows of panels, colour bars and a
    ``suptitle`` never overlap (a panel's x label used to run into the title of the panel
    below)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi,
                                                     bbox_inches="tight"))


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
