"""Small helpers shared by the demo and the laboratory experiments (no transformers here)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from icldistill.core.validation import InputError

__all__ = ["LineFit", "fit_line", "linear_fit", "single_thread", "sub_seeds"]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread (restored on exit).

    The experiments' tensors are small; with several threads on a busy 2-core machine, OpenMP
    synchronisation makes small ops (e.g. the 16x16 QR factorisations of random features) up
    to 30 times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class LineFit:
    """Ordinary least squares ``y = intercept + slope x`` (:func:`fit_line`).

    Attributes
    ----------
    slope, intercept : float
        NaN slope when ``x`` is constant (the intercept is then ``mean(y)``).
    r2 : float
        ``1 - SS_res / SS_tot`` (= Pearson's ``r²``); NaN when ``x`` or ``y`` is constant.
    n : int
        Number of points.
    """

    slope: float
    intercept: float
    r2: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, NaN as None."""
        return {"slope": _finite_or_none(self.slope),
                "intercept": _finite_or_none(self.intercept),
                "r2": _finite_or_none(self.r2), "n": self.n}


def _finite_or_none(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def fit_line(x: Any, y: Any) -> LineFit:
    """OLS fit of ``y`` on ``x`` with an intercept, in float64 (the one line fit).

    Closed form on centred data: ``slope = <x - x̄, y - ȳ> / ||x - x̄||²``.

    Parameters
    ----------
    x, y : array-like ``[n]``, ``n >= 2``, finite

    Returns
    -------
    LineFit

    Raises
    ------
    InputError
        Lengths differ, fewer than 2 points, or a value is not finite.
    """
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise InputError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    if xa.size < 2:
        raise InputError(f"a line needs at least 2 points, got {xa.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise InputError("x and y must be finite")
    xc, yc = xa - xa.mean(), ya - ya.mean()
    sxx, syy = float(xc @ xc), float(yc @ yc)
    if sxx <= 0.0:
        return LineFit(math.nan, float(ya.mean()), math.nan, int(xa.size))
    slope = float(xc @ yc) / sxx
    intercept = float(ya.mean() - slope * xa.mean())
    if syy <= 0.0:
        return LineFit(slope, intercept, math.nan, int(xa.size))
    resid = ya - (intercept + slope * xa)
    r2 = 1.0 - float(resid @ resid) / syy
    return LineFit(slope, intercept, r2, int(xa.size))


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """:func:`fit_line` as a tuple: ``y ≈ a x + b`` for ``x``, ``y`` of shape ``[n]``; returns
    ``(a, b, R^2)`` (``R^2`` is NaN when ``y`` is constant)."""
    f = fit_line(x, y)
    return f.slope, f.intercept, f.r2


def sub_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent sub-seeds derived from ``seed`` (a seeded PCG64 stream)."""
    return [int(s) for s in np.random.default_rng(int(seed)).integers(0, 2**31 - 1, size=n)]
