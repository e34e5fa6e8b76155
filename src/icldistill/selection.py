"""Demonstration selection by MMD on representation matrices (SPEC §5).

Greedy selection picks, one at a time, the candidate that most lowers the biased
``MMD^2(S + {c}, T)`` between the chosen set ``S`` and the targets ``T``:

``MMD^2(S, T) = (1/|S|^2) sum_{i,j in S} K(c_i, c_j) - (2/|S|) sum_{i in S} r_i + mean K_TT``

with ``r_c = mean_t K(c, t)``. One tiled pass computes all ``r_c`` (``O(|C| |T|)`` kernel
evaluations); afterwards each step needs only the column ``K(C, c_new)`` (``O(|C|)``) to update
the cached sums ``s_c = sum_{j in S} K(c, c_j)``. The objective is never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._validation import InputError, check_pair
from .kernels import Kernel, make_kernel
from .mmd import kernel_row_means, self_kernel_mean

__all__ = ["GreedySelection", "greedy_mmd", "label_quotas", "select_mmd"]


@dataclass(frozen=True)
class GreedySelection:
    """Result of :func:`greedy_mmd`.

    Attributes
    ----------
    indices : numpy.ndarray ``[k]`` (int64)
        Chosen candidate rows, in the order they were picked.
    mmd2 : numpy.ndarray ``[k]``
        Biased ``MMD^2(S_j, T)`` after each step ``j = 1..k``.
    kernel : Kernel
        The kernel with resolved parameters.
    quotas : dict or None
        Per-label quotas when label balance was requested.
    """

    indices: np.ndarray
    mmd2: np.ndarray
    kernel: Kernel
    quotas: dict[Any, int] | None = None


def label_quotas(labels: np.ndarray, k: int) -> dict[Any, int]:
    """Split ``k`` as evenly as possible over the labels present in ``labels``.

    Labels are taken in sorted order; the remainder goes to the first ones. A label with fewer
    candidates than its share gives the excess to the others (still in sorted order).
    """
    values, counts = np.unique(labels, return_counts=True)
    if k > counts.sum():
        raise InputError(f"k={k} is larger than the candidate pool ({counts.sum()})")
    quotas = {v: 0 for v in values.tolist()}
    avail = dict(zip(values.tolist(), counts.tolist(), strict=True))
    left = k
    while left > 0:
        open_labels = [v for v in quotas if quotas[v] < avail[v]]
        share, extra = divmod(left, len(open_labels))
        for i, v in enumerate(open_labels):
            add = min(share + (1 if i < extra else 0), avail[v] - quotas[v])
            quotas[v] += add
            left -= add
    return quotas


def greedy_mmd(
    candidates: Any,
    targets: Any,
    k: int,
    kernel: str | Kernel = "gaussian",
    *,
    labels: Any | None = None,
    balance: bool = False,
    seed: int = 0,
    **kernel_params: Any,
) -> GreedySelection:
    """Greedily choose ``k`` candidates minimising biased ``MMD^2`` to the targets.

    Parameters
    ----------
    candidates : array-like ``[C, d]``
        Representations of the candidate pool.
    targets : array-like ``[T, d]``
        Representations of the target inputs (a whole test set, or one query).
    k : int
        Number of candidates to choose (``1 <= k <= C``).
    kernel : str or Kernel
        Kernel on representations; bandwidth defaults to the median heuristic on the pooled
        candidates and targets.
    labels : array-like ``[C]``, optional
        Candidate labels (needed for ``balance``).
    balance : bool
        Choose the same number of candidates per label (see :func:`label_quotas`).
    seed : int
        Seed of the median-heuristic subsample.
    **kernel_params
        Kernel parameters, e.g. ``bandwidth``.

    Returns
    -------
    GreedySelection
        Indices in selection order and the ``MMD^2`` trajectory. Ties go to the lowest index.
    """
    c, t = check_pair(candidates, targets, ("candidates", "targets"))
    n_c = c.shape[0]
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if k > n_c:
        raise InputError(f"k={k} is larger than the candidate pool ({n_c})")
    quotas = None
    lab_idx = None
    if balance and labels is None:
        raise InputError("balance=True needs candidate labels")
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (n_c,):
            raise InputError(f"labels must have shape [{n_c}], got {lab.shape}")
        if balance:
            quotas = label_quotas(lab, k)
            keys = list(quotas)
            lab_idx = torch.as_tensor(np.searchsorted(np.array(keys), lab), device=c.device)
            remaining = torch.tensor([quotas[v] for v in keys], device=c.device)
    kern = make_kernel(kernel, c, t, seed=seed, **kernel_params)
    kern.check_input_dim(c.shape[1])
    r = kernel_row_means(c, t, kern)                      # [C], O(|C||T|)
    const = self_kernel_mean(t, kern)                    # mean K_TT
    diag = kern.diag(c).to(torch.float64)                # [C]
    s = torch.zeros(n_c, dtype=torch.float64, device=c.device)
    available = torch.ones(n_c, dtype=torch.bool, device=c.device)
    a_sum = 0.0  # sum_{i,j in S} K
    r_sum = 0.0  # sum_{i in S} r_i
    chosen: list[int] = []
    traj: list[float] = []
    for j in range(k):
        m = j + 1
        obj = (a_sum + 2.0 * s + diag) / m**2 - 2.0 * (r_sum + r) / m
        ok = available if lab_idx is None else available & (remaining[lab_idx] > 0)
        obj = obj.masked_fill(~ok, float("inf"))
        best = int(torch.argmin(obj))
        chosen.append(best)
        traj.append(float(obj[best]) + const)
        a_sum += 2.0 * float(s[best]) + float(diag[best])
        r_sum += float(r[best])
        available[best] = False
        if lab_idx is not None:
            remaining[lab_idx[best]] -= 1
        s += kern(c, c[best : best + 1])[:, 0].to(torch.float64)   # O(|C|)
    return GreedySelection(np.array(chosen, dtype=np.int64), np.array(traj), kern, quotas)


def select_mmd(
    candidates: Any,
    targets: Any,
    k: int,
    kernel: str | Kernel = "gaussian",
    **kernel_params: Any,
) -> np.ndarray:
    """Indices ``[k]`` of the candidates chosen by :func:`greedy_mmd` (selection order).

    Accepts the same keyword arguments as :func:`greedy_mmd` (``labels``, ``balance``,
    ``seed``, kernel parameters).
    """
    return greedy_mmd(candidates, targets, k, kernel, **kernel_params).indices
