"""Helpers shared by the selection modules: argument checks, chunking, top-k, Gram blocks.

Internal to :mod:`icldistill.selection` (the module name is private; its names are the
subpackage's own vocabulary, not part of the public API).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from icldistill.core.kernels import Kernel
from icldistill.core.validation import InputError

#: Largest number of matrix entries a selector materialises at once (64 MB in float32).
CHUNK_ELEMENTS = 1 << 24


def check_diversity(diversity: float) -> float:
    """``diversity`` as a finite float ``>= 0`` (the weight of the within-set term)."""
    try:
        lam = float(diversity)
    except (TypeError, ValueError) as exc:
        raise InputError(f"diversity must be a number >= 0, got {diversity!r}") from exc
    if not math.isfinite(lam) or lam < 0:
        raise InputError(f"diversity must be a finite number >= 0, got {diversity!r}")
    return lam


def check_k(k: Any) -> int:
    """``k`` as an int ``>= 1`` (the number of demonstrations to choose)."""
    try:
        ok = not isinstance(k, bool) and int(k) == k
    except (TypeError, ValueError):
        ok = False
    if not ok or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """``labels`` as an array whose values can be sorted and told apart: one kind of value
    (all numbers or all strings), no ``None`` and no NaN; anything else is an InputError that
    says which."""
    try:
        lab = np.asarray(labels)
    except Exception as exc:  # pragma: no cover - e.g. a GPU tensor
        raise InputError(f"{name}: cannot be read as an array ({type(exc).__name__})") from exc
    if lab.dtype.kind in "fc":
        nan = int(np.isnan(lab).sum())
        if nan:
            raise InputError(f"{name}: {nan} label(s) are NaN; give every item a label")
    elif lab.dtype.kind == "O":
        kinds: set[str] = set()
        for v in lab.ravel().tolist():
            if v is None:
                raise InputError(f"{name}: contains None; give every item a label")
            if isinstance(v, str):
                kinds.add("str")
            elif isinstance(v, (int, float, np.number)):
                if v != v:
                    raise InputError(f"{name}: contains NaN; give every item a label")
                kinds.add("number")
            else:
                kinds.add(type(v).__name__)
        if len(kinds) > 1:
            raise InputError(f"{name}: mixes label types ({', '.join(sorted(kinds))}); give "
                             "labels of one type, e.g. all strings")
    elif lab.dtype.kind not in "biuUSb":
        raise InputError(f"{name}: labels must be numbers or strings, got dtype {lab.dtype}")
    try:
        np.unique(lab)
    except TypeError as exc:
        raise InputError(f"{name}: labels cannot be sorted ({exc})") from exc
    return lab


def promote(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated pool and target tensors in their common dtype."""
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit Euclidean norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def row_chunks(rows: int, per_row: int) -> Iterator[slice]:
    """Slices of ``rows`` so that a chunk holds at most ``CHUNK_ELEMENTS`` entries."""
    step = max(1, CHUNK_ELEMENTS // max(1, per_row))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def topk_low_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of every row, descending, equal values in column order, on every device.

    ``torch.topk`` leaves the order of equal values unspecified, and CUDA's differs from the
    CPU's: two pool items with the same embedding (a duplicated text) would swap places in a
    prompt, or one would replace the other at the k-th place, when the same selector runs on a
    GPU. Rows with a tie among the chosen values or at the k-th place are redone: the values
    that reach the k-th one (a top-``m``, ``m`` doubled from ``2k`` until it holds them all) are
    put in column order, then sorted stably by value. No row is sorted whole, so duplicated
    texts in a million-item pool stay cheap.

    Parameters
    ----------
    scores : Tensor ``[R, N]``
    k : int
        ``0 <= k <= N``.

    Returns
    -------
    values : Tensor ``[R, k]``
    indices : Tensor ``[R, k]`` (int64), on ``scores``' device.
    """
    n = scores.shape[1]
    vals, idx = torch.topk(scores, min(k + 1, n), dim=1)     # one more: a tie at the k-th place
    if k == 0 or scores.shape[0] == 0:
        return vals[:, :k], idx[:, :k]
    tied = (vals[:, 1:] == vals[:, :-1]).any(1)
    vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
    rows = tied.nonzero().flatten()
    if rows.numel():
        sub = scores if rows.numel() == scores.shape[0] else scores[rows]
        kth = vals[rows, -1:]
        m = min(2 * k, n)
        while True:             # a top-m that holds every value reaching the k-th
            cv, ci = torch.topk(sub, m, dim=1)
            if m == n or not bool((cv[:, -1:] >= kth).any()):
                break
            m = min(2 * m, n)
        ci, by_col = torch.sort(ci, dim=1)                  # in column order ...
        cv, order = torch.sort(cv.gather(1, by_col), dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = cv[:, :k], ci.gather(1, order)[:, :k]   # ... then by value
    return vals, idx


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of every row of a NumPy array, descending; ties go to the lowest column index
    (:func:`topk_low_index`). Returns ``(indices, values)``."""
    vals, idx = topk_low_index(torch.from_numpy(scores), k)
    return idx.numpy(), vals.numpy()


def batched_gram(emb: torch.Tensor, kern: Kernel | None) -> torch.Tensor:
    """``[R, N, N]`` Gram matrices of ``R`` candidate sets ``[R, N, d]``.

    Dot products (``kern=None``) or a :class:`Kernel`: one batched matrix product (every
    kernel accepts batches of row sets).
    """
    return torch.bmm(emb, emb.mT) if kern is None else kern(emb, emb)


class Candidates:
    """Per-query candidate sets: a shortlist ``[R, N]`` of pool rows, or the whole pool.

    ``column(best)`` returns the similarity (dot product, or the kernel) between every candidate
    of row ``i`` and its candidate ``best_i``, ``[R, N]``: for a shortlist a slice of the
    precomputed ``[R, N, N]`` Gram (``kern``), for the whole pool one ``[R, n]`` Gram per step
    (``gram_pool(x) = k(x, pool)``, from :meth:`Kernel.against`).
    """

    def __init__(self, pool: torch.Tensor, idx: torch.Tensor | None,
                 kern: Kernel | None = None,
                 gram_pool: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.pool = pool
        self.idx = idx
        self.gram = None if idx is None else batched_gram(pool[idx], kern)
        self.gram_pool = gram_pool

    def column(self, best: torch.Tensor) -> torch.Tensor:
        """``[R, N]`` similarities of every candidate of row ``i`` to its ``best_i``."""
        if self.gram is None:
            new = self.pool[best]
            return new @ self.pool.T if self.gram_pool is None else self.gram_pool(new)
        return self.gram[torch.arange(best.shape[0], device=best.device), :, best]

    def to_global(self, local: torch.Tensor) -> torch.Tensor:
        """Pool rows ``[R, k]`` of the local candidate indices ``local`` ``[R, k]``."""
        return local if self.idx is None else self.idx.gather(1, local)

