"""Small helpers shared by the demo and the laboratory experiments (no transformers here)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["linear_fit", "single_thread", "sub_seeds"]


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


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``y ≈ a x + b`` for ``x``, ``y`` of shape ``[n]``; returns ``(a, b, R^2)``
    (``R^2`` is NaN when ``y`` is constant)."""
    a, b = np.polyfit(x, y, 1)
    resid = y - (a * x + b)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return float(a), float(b), r2


def sub_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent sub-seeds derived from ``seed`` (a seeded PCG64 stream)."""
    return [int(s) for s in np.random.default_rng(int(seed)).integers(0, 2**31 - 1, size=n)]
