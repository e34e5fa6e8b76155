"""Input checking shared by every public function.

All user-facing entry points convert their inputs through these helpers so that bad input is
rejected with one clear message (an :class:`InputError`, a ``ValueError``) instead of producing a
silent wrong answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["InputError", "as_float_tensor", "check_matrix", "check_pair", "check_positive"]


class InputError(ValueError):
    """Raised when an argument is malformed (shape, dtype, NaN/inf, size, unknown name...)."""


def as_float_tensor(
    x: Any,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert ``x`` (array-like or tensor) to a floating-point tensor.

    Floating tensors keep their dtype unless ``dtype`` is given; integers and numpy float64 arrays
    become float64 (numpy's default precision), other numpy floats keep their precision. Half
    precision inputs are promoted to float32 so nothing is exponentiated in low precision.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - numpy raises many types
            raise InputError(f"{name}: cannot be converted to an array ({exc})") from exc
        if arr.dtype == object:
            raise InputError(f"{name}: contains non-numeric values")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype is None:
        if not t.is_floating_point():
            dtype = torch.float64
        elif t.dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        else:
            dtype = t.dtype
    t = t.to(dtype=dtype, device=device)
    return t


def check_matrix(
    x: Any,
    name: str,
    *,
    min_rows: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return ``x`` as a finite 2-D float tensor ``[n, d]`` with at least ``min_rows`` rows.

    A 1-D input of length ``n`` is read as ``n`` one-dimensional points ``[n, 1]``.
    """
    t = as_float_tensor(x, name, dtype=dtype, device=device)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array of row vectors [n, d], got shape "
                         f"{tuple(t.shape)}")
    if t.shape[0] < min_rows:
        what = "empty" if t.shape[0] == 0 else f"has {t.shape[0]} row(s)"
        raise InputError(f"{name}: sample is {what}; at least {min_rows} row(s) are needed")
    if t.shape[1] == 0:
        raise InputError(f"{name}: rows have dimension 0")
    check_finite(t, name)
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise :class:`InputError` if ``t`` contains NaN or infinite values."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"{name}: contains {bad} NaN or infinite value(s)")


def check_pair(
    x: Any, y: Any, names: Sequence[str] = ("x", "y"), *, min_rows: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two samples of row vectors: same dimension, common dtype and device."""
    xt = check_matrix(x, names[0], min_rows=min_rows)
    yt = check_matrix(y, names[1], min_rows=min_rows)
    if xt.shape[1] != yt.shape[1]:
        raise InputError(f"dimension mismatch: {names[0]} has rows of dimension {xt.shape[1]}, "
                         f"{names[1]} has {yt.shape[1]}")
    dtype = torch.promote_types(xt.dtype, yt.dtype)
    if yt.device != xt.device:
        raise InputError(f"{names[0]} is on {xt.device} but {names[1]} is on {yt.device}")
    return xt.to(dtype), yt.to(dtype)


def check_positive(value: float, name: str) -> float:
    """Return ``value`` as float if it is finite and > 0, else raise :class:`InputError`."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    if not np.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a finite positive number, got {value!r}")
    return v
