"""Demonstration selection (SPEC §5): MMD-greedy selection and the usual baselines.

Two layers:

* :func:`greedy_mmd` — the math: greedy minimisation of the biased ``MMD^2`` between a chosen
  set and a target sample, with cached row sums, optional label quotas and a diversity term;
* :class:`Selector` — one scikit-learn style interface (``fit(pool)``, ``select(targets, k)``)
  over every selection method: ``random``, ``knn`` (KATE), ``bm25``, ``mmr``, ``dpp``,
  ``vote-k`` and the MMD family ``mmd``, ``mmd-query``, ``mmd-balanced``, ``mmd-joint`` (joint
  input-label kernel), ``mmd-local`` (per query, the query's neighbourhood as the target) and
  ``mmd-katt`` (``mmd-local`` in the model's attention space). Build one by name
  with :func:`make_selector`; :data:`SELECTORS` lists them.

Greedy MMD
----------
Greedy selection picks, one at a time, the candidate that most lowers the biased
``MMD^2(S + {c}, T)`` between the chosen set ``S`` and the targets ``T``:

``MMD^2(S, T) = (1/|S|^2) sum_{i,j in S} K(c_i, c_j) - (2/|S|) sum_{i in S} r_i + mean K_TT``

with ``r_c = mean_t K(c, t)``. One tiled pass computes all ``r_c`` (``O(|C| |T|)`` kernel
evaluations); afterwards each step needs only the kernel column ``K(C, c_new)`` (``O(|C|)``) to
update the cached sums ``s_c = sum_{j in S} K(c, c_j)``. The objective is never recomputed.
The same routine (:func:`_greedy_mmd_batch`) runs one target set (``greedy_mmd``, ``mmd``) or
a batch of single-query target sets side by side (``mmd-query``).

Diversity term: with ``diversity = lambda >= 0`` the greedy step minimises

``J_lambda(S) = MMD^2(S, T) + lambda (1/|S|^2) sum_{i != j in S} K(c_i, c_j)``,

i.e. the within-set similarity is weighted ``1 + lambda`` instead of 1; ``lambda = 0`` is the
plain objective. The reported trajectory is always the plain ``MMD^2``.

Prompt order
------------
``Selection.indices[i]`` lists the demonstrations for target ``i`` in prompt order: index 0 is
the first demonstration, the last one sits next to the query. Every selector takes
``order=`` one of

* ``"similarity"``: ascending relevance to the target (the query, or for set-level selectors
  the target set as a whole), so the most relevant demonstration is last, next to the query;
* ``"selection"``: the order the algorithm picked them (greedy order; rank order for
  retrievers, most relevant first);
* ``"reverse"``: the selection order reversed;
* ``"random"``: a random permutation (seeded by the selector's ``seed``).

No module here imports ``transformers``: selectors work on representation matrices and texts.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import time
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch

from icldistill.core.kernels import Kernel, canonical_kernel_name, kernel_parameters, make_kernel
from icldistill.core.mmd import kernel_row_means, self_kernel_mean
from icldistill.core.validation import InputError, check_matrix, check_pair

if TYPE_CHECKING:  # Python 3.10 has no typing.Self
    from typing_extensions import Self

__all__ = [
    "ORDERS",
    "SELECTORS",
    "BM25Selector",
    "DPPSelector",
    "GreedySelection",
    "KNNSelector",
    "MMDBalancedSelector",
    "MMDJointSelector",
    "MMDKattSelector",
    "MMDLocalSelector",
    "MMDQuerySelector",
    "MMDSelector",
    "MMRSelector",
    "Pool",
    "RandomSelector",
    "Selection",
    "Selector",
    "VoteKSelector",
    "greedy_mmd",
    "label_quotas",
    "make_selector",
    "select_mmd",
    "soft_labels",
    "tokenize",
]

#: Largest number of matrix entries a selector materialises at once (64 MB in float32).
_CHUNK_ELEMENTS = 1 << 24

ORDERS: tuple[str, ...] = ("similarity", "selection", "reverse", "random")
"""Prompt orders every selector accepts (see the module docstring)."""


# ============================================================================= greedy MMD
@dataclass(frozen=True)
class GreedySelection:
    """Result of :func:`greedy_mmd`.

    Attributes
    ----------
    indices : numpy.ndarray ``[k]`` (int64)
        Chosen candidate rows, in the order they were picked.
    mmd2 : numpy.ndarray ``[k]``
        Biased ``MMD^2(S_j, T)`` after each step ``j = 1..k`` (the plain objective, also when a
        diversity term steered the choice).
    kernel : Kernel
        The kernel with resolved parameters.
    quotas : dict or None
        Per-label quotas when label balance was requested.
    row_means : numpy.ndarray ``[k]`` or None
        ``r_c = mean_t K(c, t)`` of each chosen candidate (selection order): how representative
        of the targets it is. Always exact.
    approx_error : float or None
        With ``landmarks``: ``eps = ||mu_T - P mu_T||``, the distance in feature space between
        the targets' kernel mean embedding and its projection on the landmarks. Every
        approximated row mean obeys ``|r_hat_c - r_c| <= sqrt(K(c, c)) eps`` (up to float
        rounding). ``None`` when the row means are exact.
    """

    indices: np.ndarray
    mmd2: np.ndarray
    kernel: Kernel
    quotas: dict[Any, int] | None = None
    row_means: np.ndarray | None = None
    approx_error: float | None = None


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


def _check_diversity(diversity: float) -> float:
    try:
        lam = float(diversity)
    except (TypeError, ValueError) as exc:
        raise InputError(f"diversity must be a number >= 0, got {diversity!r}") from exc
    if not math.isfinite(lam) or lam < 0:
        raise InputError(f"diversity must be a finite number >= 0, got {diversity!r}")
    return lam


def _greedy_mmd_batch(
    r: torch.Tensor,
    diag: torch.Tensor,
    const: torch.Tensor,
    column: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    diversity: float = 0.0,
    lab_idx: torch.Tensor | None = None,
    remaining: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy MMD for ``R`` independent problems at once (the one greedy-MMD routine).

    Row ``i`` chooses ``k`` of its ``M`` candidates to minimise ``J_lambda`` against its own
    targets. ``r`` ``[R, M]`` holds the mean kernel of each candidate to the targets, ``diag``
    ``[R, M]`` (or ``[M]``) the candidates' ``K(c, c)``, ``const`` ``[R]`` the targets' mean
    ``K_TT``; ``column(best)`` returns ``K(candidates_i, candidate_i[best_i])`` ``[R, M]``.
    ``lab_idx`` ``[M]`` with ``remaining`` ``[R, L]`` enforces per-label quotas.

    Returns the chosen local indices ``[R, k]`` (ties go to the lowest index) and the plain
    biased ``MMD^2`` after each step ``[R, k]`` (float64).
    """
    f64 = torch.float64
    n_rows, n_cand = r.shape
    dev = r.device
    r = r.to(f64)
    diag = diag.to(f64).expand(n_rows, n_cand)
    s = torch.zeros(n_rows, n_cand, dtype=f64, device=dev)
    available = torch.ones(n_rows, n_cand, dtype=torch.bool, device=dev)
    a_off = torch.zeros(n_rows, 1, dtype=f64, device=dev)   # sum_{i != j in S} K
    a_diag = torch.zeros(n_rows, 1, dtype=f64, device=dev)  # sum_{i in S} K(c_i, c_i)
    r_sum = torch.zeros(n_rows, 1, dtype=f64, device=dev)
    rows = torch.arange(n_rows, device=dev)
    chosen = torch.empty(n_rows, k, dtype=torch.long, device=dev)
    traj = torch.empty(n_rows, k, dtype=f64, device=dev)
    for j in range(k):
        m = j + 1
        obj = ((1.0 + diversity) * (a_off + 2.0 * s) + a_diag + diag) / m**2 \
            - 2.0 * (r_sum + r) / m
        ok = available
        if lab_idx is not None and remaining is not None:
            ok = ok & (remaining[:, lab_idx] > 0)
        best = torch.argmin(obj.masked_fill(~ok, math.inf), dim=1)
        chosen[:, j] = best
        a_off += 2.0 * s[rows, best][:, None]
        a_diag += diag[rows, best][:, None]
        r_sum += r[rows, best][:, None]
        traj[:, j] = ((a_off + a_diag) / m**2 - 2.0 * r_sum / m)[:, 0] + const
        available[rows, best] = False
        if remaining is not None and lab_idx is not None:
            remaining[rows, lab_idx[best]] -= 1
        if j + 1 < k:
            s += column(best).to(f64)   # O(M) kernel evaluations per row
    return chosen, traj


def greedy_mmd(
    candidates: Any,
    targets: Any,
    k: int,
    kernel: str | Kernel = "gaussian",
    *,
    labels: Any | None = None,
    balance: bool = False,
    diversity: float = 0.0,
    seed: int = 0,
    landmarks: int | None = None,
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
    diversity : float
        Weight ``lambda >= 0`` of the extra within-set kernel sum (module docstring); 0 gives
        the plain MMD objective.
    seed : int
        Seed of the median-heuristic subsample and of the landmark draw.
    landmarks : int, optional
        Approximate the row means ``r_c = mean_t K(c, t)`` through ``m = landmarks`` targets
        drawn at random (Nyström): ``r_hat_c = <phi(c), P mu_T>`` with ``P`` the projection on
        the landmarks' features, at ``O((C + T) m d + m^3)`` instead of ``O(C T d)``. The
        error is certified (``GreedySelection.approx_error``); the reported trajectory and row
        means stay exact. ``None`` (default) or ``m >= T``: exact row means.
    **kernel_params
        Kernel parameters, e.g. ``bandwidth``.

    Returns
    -------
    GreedySelection
        Indices in selection order and the ``MMD^2`` trajectory. Ties go to the lowest index.

    Notes
    -----
    Cost: ``O(C T d)`` for the row means (``O((C + T) m d)`` with landmarks), ``O(T^2 d)`` for
    the constant ``mean K_TT`` of the trajectory, ``O(k C d)`` for the greedy steps.
    """
    c, t = check_pair(candidates, targets, ("candidates", "targets"))
    n_c = c.shape[0]
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    if k > n_c:
        raise InputError(f"k={k} is larger than the candidate pool ({n_c})")
    lab = None
    if balance and labels is None:
        raise InputError("balance=True needs candidate labels")
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (n_c,):
            raise InputError(f"labels must have shape [{n_c}], got {lab.shape}")
    if landmarks is not None:
        landmarks = _check_int(landmarks, "landmarks", 1)
    return _greedy_mmd(c, t, k, kernel, lab, balance, _check_diversity(diversity), seed,
                       kernel_params, landmarks=landmarks)


def _greedy_mmd(
    c: torch.Tensor,
    t: torch.Tensor,
    k: int,
    kernel: str | Kernel,
    labels: np.ndarray | None,
    balance: bool,
    diversity: float,
    seed: int,
    kernel_params: dict[str, Any],
    median_samples: int = 2000,
    landmarks: int | None = None,
) -> GreedySelection:
    """:func:`greedy_mmd` on validated tensors of one dtype and device."""
    quotas = None
    lab_idx = remaining = None
    if balance and labels is not None:
        quotas = label_quotas(labels, k)
        keys = list(quotas)
        lab_idx = torch.as_tensor(np.searchsorted(np.array(keys), labels), device=c.device)
        remaining = torch.tensor([[quotas[v] for v in keys]], device=c.device)
    kern = make_kernel(kernel, c, t, max_samples=median_samples, seed=seed, **kernel_params)
    kern.check_input_dim(c.shape[1])
    const = self_kernel_mean(t, kern)                    # mean K_TT
    approx = landmarks is not None and landmarks < t.shape[0]
    eps = None
    if approx:
        assert landmarks is not None
        r, eps = _nystrom_row_means(c, t, kern, landmarks, seed, const)
    else:
        # [C], O(|C||T|); float64 sums of runs of 16 entries (the objective needs no more)
        r = kernel_row_means(c, t, kern, presum=16)
    diag = kern.diag(c)                                  # [C]
    gram_c = kern.against(c)

    def column(best: torch.Tensor) -> torch.Tensor:
        return gram_c(c[best])                           # [1, C], O(|C| d)

    chosen, traj = _greedy_mmd_batch(
        r[None], diag, torch.tensor([const], dtype=torch.float64, device=c.device), column, k,
        diversity, lab_idx, remaining)
    idx = chosen[0].cpu().numpy().astype(np.int64)
    if not approx:
        return GreedySelection(idx, traj[0].cpu().numpy(), kern, quotas,
                               r[chosen[0]].cpu().numpy())
    # exact row means of the chosen items, O(k |T| d); the trajectory's within-set sums are
    # exact already, so only its -2/m sum_{i<=m} r_i term is corrected
    r_sel = kernel_row_means(c[chosen[0]], t, kern)                       # [k]
    m = torch.arange(1, k + 1, dtype=torch.float64, device=c.device)
    exact = traj[0] - 2.0 * torch.cumsum(r_sel - r[chosen[0]], 0) / m
    return GreedySelection(idx, exact.cpu().numpy(), kern, quotas, r_sel.cpu().numpy(), eps)


#: Relative eigenvalue cut of the landmark Gram matrix in :func:`_nystrom_row_means`.
_NYSTROM_RTOL = 1e-10


def _nystrom_row_means(c: torch.Tensor, t: torch.Tensor, kern: Kernel, m: int, seed: int,
                       const: float) -> tuple[torch.Tensor, float]:
    """Row means ``r_hat_c = <phi(c), P mu_T>`` ``[C]`` (float64) through ``m`` landmarks
    drawn from the targets, and ``eps = ||mu_T - P mu_T||``.

    With ``K_LL = V diag(lambda) V^T`` (eigenvalues above ``_NYSTROM_RTOL * max`` kept) and
    ``b = mean_t K(L, t)``: ``P mu_T = sum_l w_l phi(l)`` with ``w = V diag(1/lambda) V^T b``,
    so ``r_hat_c = K(c, L) w`` and ``eps^2 = mean K_TT - b^T w`` (Pythagoras). Cauchy-Schwarz
    gives ``|r_hat_c - r_c| = |<phi(c), (I - P) mu_T>| <= sqrt(K(c, c)) eps``.
    """
    f64 = torch.float64
    g = torch.Generator().manual_seed(int(seed))
    pick = torch.randperm(t.shape[0], generator=g)[:m].to(t.device)
    lm = t[pick]                                                          # [m, d]
    b = kernel_row_means(lm, t, kern)                                     # [m], O(m T d)
    evals, evecs = torch.linalg.eigh(kern(lm, lm).to(f64))
    keep = evals > _NYSTROM_RTOL * float(evals.max())
    proj = evecs[:, keep].T @ b
    coef = proj / evals[keep]
    w = evecs[:, keep] @ coef                                             # [m]
    eps2 = max(const - float(proj @ coef), 0.0)
    r = torch.empty(c.shape[0], dtype=f64, device=c.device)
    for sl in _row_chunks(c.shape[0], m):                                 # O(C m d)
        r[sl] = kern(c[sl], lm).to(f64) @ w
    return r, math.sqrt(eps2)


def select_mmd(
    candidates: Any,
    targets: Any,
    k: int,
    kernel: str | Kernel = "gaussian",
    **kernel_params: Any,
) -> np.ndarray:
    """Indices ``[k]`` of the candidates chosen by :func:`greedy_mmd` (selection order).

    Accepts the same keyword arguments as :func:`greedy_mmd` (``labels``, ``balance``,
    ``diversity``, ``seed``, kernel parameters).
    """
    return greedy_mmd(candidates, targets, k, kernel, **kernel_params).indices


# ============================================================================= interface
@dataclass(frozen=True, eq=False)
class Pool:
    """Items a selector is fitted on (the candidate pool), or the targets it selects for.

    Attributes
    ----------
    embeddings : array-like or Tensor ``[n, d]``, optional
        Representations (sentence embeddings, hidden states, ``[k | v]`` attention tokens).
    labels : array-like ``[n]``, optional
        Labels (str or int), for label-balanced selection.
    texts : sequence of str ``[n]``, optional
        Input texts, for lexical retrieval (BM25).
    """

    embeddings: np.ndarray | torch.Tensor | None = None
    labels: np.ndarray | None = None
    texts: Sequence[str] | None = None

    @classmethod
    def from_table(cls, table: Any, *, embedding: str | Sequence[str] | None = None,
                   label: str | None = None, text: str | None = None,
                   name: str | None = None) -> Pool:
        """A pool (or targets) from the columns of a table.

        Parameters
        ----------
        table : table
            Anything :meth:`icldistill.data.Dataset.from_table` reads: a pandas DataFrame, a
            pyarrow Table, a ``datasets.Dataset``, a dict of columns, a list of row dicts.
        embedding : str or sequence of str, optional
            One column whose cells are vectors (lists or arrays of one length), or several
            numeric columns, one per dimension.
        label : str, optional
            Label column; values become label names as in a :class:`~icldistill.data.Dataset`
            (``1`` -> ``"1"``); a missing label is an error.
        text : str, optional
            Text column (whitespace-normalised as in a Dataset; a missing text becomes ``""``).
        name : str, optional
            Names the table in messages.

        Every row is kept, in table order. Column errors (missing, duplicated, a list where text
        is expected, an empty table) are worded as for :func:`icldistill.data.load_file`.
        """
        from icldistill.data import datasets as _data

        if embedding is None and label is None and text is None:
            raise InputError("Pool.from_table: give at least one of embedding=, label=, text=")
        if isinstance(embedding, str):
            emb_cols, vectors = [embedding], True
        else:
            emb_cols, vectors = list(embedding or ()), False
            if embedding is not None and not emb_cols:
                raise InputError("embedding= must be a column name or a non-empty list of them")
        named = [c for c in (*emb_cols, label, text) if c is not None]
        bad = next((c for c in named if not isinstance(c, str) or not c), None)
        if bad is not None:
            raise InputError(f"Pool.from_table: column names must be non-empty strings, got "
                             f"{bad!r}")
        tab, _ = _data._as_table(table, name)
        rows = list(_data._table_rows(tab, named))
        texts = labels = emb = None
        if text is not None:
            texts = [_data._clean(_data._scalar(rec.get(text), where, text))
                     for where, rec in rows]
        if label is not None:
            labels = []
            for where, rec in rows:
                y = _data._clean(_data._scalar(rec.get(label), where, label))
                if not y:
                    raise InputError(f"{where}: empty label in column {label!r}")
                labels.append(y)
            labels = np.array(labels, dtype=str)
        if emb_cols:
            emb = (_vector_column(rows, emb_cols[0]) if vectors
                   else np.array([[_number(rec.get(c), where, c) for c in emb_cols]
                                  for where, rec in rows], dtype=np.float64))
        return cls(embeddings=emb, labels=labels, texts=texts)


def _number(value: Any, where: str, column: str) -> float:
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        raise InputError(f"{where}: column {column!r} is empty (no number)")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"{where}: column {column!r} holds {type(value).__name__} "
                         f"{str(value)[:40]!r}, not a number")
    return float(value)


def _vector_column(rows: Sequence[tuple[str, Any]], column: str) -> np.ndarray:
    """``[n, d]``: the vectors of one column (numbers give ``d = 1``), in their common dtype."""
    out: list[np.ndarray] = []
    for where, rec in rows:
        cell = rec.get(column)
        if cell is None:
            raise InputError(f"{where}: column {column!r} is empty (no vector)")
        if isinstance(cell, (int, float, np.number)) and not isinstance(cell, (bool, np.bool_)):
            vec = np.array([cell], dtype=np.float64)
        else:
            try:
                vec = np.asarray(cell.numpy() if isinstance(cell, torch.Tensor) else cell)
            except (TypeError, ValueError):
                vec = np.asarray(None)
            if vec.ndim != 1 or vec.dtype.kind not in "iuf":
                raise InputError(f"{where}: column {column!r} holds {str(cell)[:40]!r}, not a "
                                 "vector of numbers")
        if out and vec.shape != out[0].shape:
            raise InputError(f"{where}: column {column!r} holds a vector of length {len(vec)} "
                             f"where earlier rows have {len(out[0])}")
        out.append(vec)
    return np.stack(out)


@dataclass(frozen=True, eq=False)
class Selection:
    """Demonstrations chosen for every target.

    Attributes
    ----------
    indices : numpy.ndarray ``[n_targets, k]`` (int64)
        Pool rows per target, in prompt order: index 0 is the first demonstration, the last
        one sits next to the query.
    shared : bool
        True for set-level selectors: one set for all targets (all rows identical).
    selector : str
        Name of the selector that made it.
    seconds : float
        Wall time of ``select()``.
    mmd2 : numpy.ndarray or None
        The greedy ``MMD^2`` trajectory in selection order, for the MMD family: ``[k]`` for the
        set-level selectors, ``[n_targets, k]`` for ``mmd-query``; ``None`` otherwise.
    """

    indices: np.ndarray
    shared: bool
    selector: str
    seconds: float
    mmd2: np.ndarray | None = None

    def demo_set(self, i: int = 0) -> np.ndarray:
        """The ``k`` pool rows chosen for target ``i`` (prompt order), ``[k]``."""
        return self.indices[i]

    @property
    def k(self) -> int:
        """Number of demonstrations per target."""
        return int(self.indices.shape[1])

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class _Data:
    """A validated :class:`Pool`."""

    n: int
    emb: torch.Tensor | None
    labels: np.ndarray | None
    texts: list[str] | None


class _Run(NamedTuple):
    indices: np.ndarray            # [R, k] selection order (R = 1 for set-level selectors)
    relevance: np.ndarray | None   # [R, k] relevance of each chosen item to its target(s)
    mmd2: np.ndarray | None = None


def _as_pool(x: Any, what: str) -> Pool:
    if isinstance(x, Pool):
        return x
    if x is None:
        raise InputError(f"{what} is missing")
    if isinstance(x, str):
        raise InputError(f"{what}: give a sequence of texts, not a single string")
    if isinstance(x, (list, tuple)) and x and all(isinstance(s, str) for s in x):
        return Pool(texts=list(x))
    return Pool(embeddings=x)


def _check_data(pool: Pool, needs: frozenset[str], what: str, selector: str) -> _Data:
    present = {f for f in ("embeddings", "labels", "texts") if getattr(pool, f) is not None}
    missing = needs - present
    if missing:
        raise InputError(f"selector {selector!r} needs {what} {' and '.join(sorted(missing))}")
    if not present:
        raise InputError(f"{what}: no embeddings, labels or texts given")
    sizes: dict[str, int] = {}
    emb = labels = texts = None
    if pool.embeddings is not None:
        emb = check_matrix(pool.embeddings, f"{what} embeddings")
        sizes["embeddings"] = emb.shape[0]
    if pool.labels is not None:
        labels = np.asarray(pool.labels)
        if labels.ndim != 1:
            raise InputError(f"{what} labels must be 1-D, got shape {labels.shape}")
        sizes["labels"] = labels.shape[0]
    if pool.texts is not None:
        if isinstance(pool.texts, str):
            raise InputError(f"{what} texts: give a sequence of texts, not a single string")
        texts = list(pool.texts)
        bad = [type(s).__name__ for s in texts if not isinstance(s, str)]
        if bad:
            raise InputError(f"{what} texts must be strings, got {bad[0]}")
        sizes["texts"] = len(texts)
    if len(set(sizes.values())) > 1:
        raise InputError(f"{what}: fields have different lengths: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise InputError(f"{what} is empty")
    return _Data(n, emb, labels, texts)


def _check_int(value: Any, name: str, low: int = 1) -> int:
    try:
        ok = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError):
        ok = False
    if not ok or int(value) < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_float(value: Any, name: str, low: float, high: float = math.inf,
                 low_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    bad_low = v <= low if low_open else v < low
    if not math.isfinite(v) or bad_low or v > high:
        lo = "(" if low_open else "["
        raise InputError(f"{name} must lie in {lo}{low}, {high}], got {value!r}")
    return v


def _promote(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated pool and target tensors in their common dtype."""
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit Euclidean norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _row_chunks(rows: int, per_row: int) -> Iterator[slice]:
    """Slices of ``rows`` so that a chunk holds at most ``_CHUNK_ELEMENTS`` entries."""
    step = max(1, _CHUNK_ELEMENTS // max(1, per_row))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of every row, descending; ties go to the lowest column index."""
    top = torch.topk(torch.from_numpy(scores), k, dim=1)
    part, vals = top.indices.numpy(), top.values.numpy()
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    # rows where the k-th value ties with values left out: redo them with a stable sort
    ambiguous = np.flatnonzero((scores >= vals[:, -1:]).sum(1) > k)
    for i in ambiguous:
        idx[i] = np.argsort(-scores[i], kind="stable")[:k]
        vals[i] = scores[i, idx[i]]
    return idx, vals


def _batched_gram(emb: torch.Tensor, kern: Kernel | None) -> torch.Tensor:
    """``[R, N, N]`` Gram matrices of ``R`` candidate sets ``[R, N, d]``.

    Dot products (``kern=None``) or a :class:`Kernel`: one batched matrix product (every
    kernel accepts batches of row sets).
    """
    return torch.bmm(emb, emb.mT) if kern is None else kern(emb, emb)


class _Candidates:
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
        self.gram = None if idx is None else _batched_gram(pool[idx], kern)
        self.gram_pool = gram_pool

    def column(self, best: torch.Tensor) -> torch.Tensor:
        if self.gram is None:
            new = self.pool[best]
            return new @ self.pool.T if self.gram_pool is None else self.gram_pool(new)
        return self.gram[torch.arange(best.shape[0], device=best.device), :, best]

    def to_global(self, local: torch.Tensor) -> torch.Tensor:
        return local if self.idx is None else self.idx.gather(1, local)


class Selector(ABC):
    """Base class of every demonstration selector (scikit-learn style).

    ``fit(pool)`` validates and indexes the candidate pool and returns ``self``;
    ``select(targets, k)`` returns a :class:`Selection` with ``k`` demonstrations per target.
    Subclasses declare ``name``, ``needs`` (the :class:`Pool` fields they use: a subset of
    ``{"embeddings", "texts", "labels"}``), whether they are set-level (``shared``) and their
    default prompt order.

    Common parameters: ``order`` (one of :data:`ORDERS`, default per selector) and ``seed``
    (every random choice, including the ``"random"`` order, depends only on it).
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    target_needs: ClassVar[frozenset[str]] = frozenset({"embeddings"})
    shared: ClassVar[bool] = False
    default_order: ClassVar[str] = "similarity"
    #: Representation the evaluation harness encodes the texts with for this selector when the
    #: unit asks for the default one (``None``: the unit's encoder).
    preferred_encoder: ClassVar[str | None] = None
    _param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, order: str | None = None, seed: int = 0) -> None:
        if order is not None and order not in ORDERS:
            raise InputError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
        self.order = order
        self.seed = _check_int(seed, "seed", 0)
        self._data: _Data | None = None

    # -- scikit-learn style plumbing
    def get_params(self) -> dict[str, Any]:
        """The constructor parameters of this selector."""
        return {p: getattr(self, p) for p in (*self._param_names, "order", "seed")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def n_pool(self) -> int:
        """Size of the fitted pool."""
        return self._fitted().n

    def _fitted(self) -> _Data:
        if self._data is None:
            raise InputError(f"selector {self.name!r} is not fitted; call fit(pool) first")
        return self._data

    def _pool_needs(self) -> frozenset[str]:
        return self.needs

    # -- public API
    def fit(self, pool: Pool | Any) -> Self:
        """Validate and index the candidate pool; returns ``self``.

        ``pool`` is a :class:`Pool`, an array/tensor of embeddings ``[n, d]``, or a list of
        texts. Raises :class:`InputError` for an empty pool, NaN/inf, missing fields.
        """
        data = _check_data(_as_pool(pool, "pool"), self._pool_needs(), "pool", self.name)
        self._data = None
        self._fit(data)
        self._data = data
        return self

    def select(self, targets: Pool | Any, k: int) -> Selection:
        """Choose ``k`` demonstrations for every target.

        ``targets`` is a :class:`Pool` (or embeddings, or a list of texts) of the test
        inputs. Set-level selectors return one set, repeated for every target.
        """
        start = time.perf_counter()
        data = self._fitted()
        try:
            ok = not isinstance(k, bool) and int(k) == k
        except (TypeError, ValueError):
            ok = False
        if not ok or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if k > data.n:
            raise InputError(f"k={k} is larger than the pool ({data.n} items)")
        tdata = _check_data(_as_pool(targets, "targets"), self.target_needs, "targets",
                            self.name)
        if tdata.emb is not None and data.emb is not None:
            if tdata.emb.shape[1] != data.emb.shape[1]:
                raise InputError(f"dimension mismatch: pool embeddings have dimension "
                                 f"{data.emb.shape[1]}, targets have {tdata.emb.shape[1]}")
            if tdata.emb.device != data.emb.device:
                raise InputError(f"pool embeddings are on {data.emb.device} but targets on "
                                 f"{tdata.emb.device}")
        run = self._select(tdata, k)
        idx = self._ordered(run, tdata)
        if self.shared:
            idx = np.tile(idx[:1], (tdata.n, 1))
        mmd2 = run.mmd2
        if mmd2 is not None and self.shared:
            mmd2 = mmd2[0]
        return Selection(np.ascontiguousarray(idx, dtype=np.int64), self.shared, self.name,
                         time.perf_counter() - start, mmd2)

    # -- to implement
    def _fit(self, data: _Data) -> None:  # noqa: B027 - optional hook
        """Index the pool (default: nothing beyond validation)."""

    @abstractmethod
    def _select(self, targets: _Data, k: int) -> _Run:
        """Indices ``[R, k]`` in selection order, their relevance and an optional trajectory."""

    # -- ordering
    def _ordered(self, run: _Run, targets: _Data) -> np.ndarray:
        order = self.order or self.default_order
        idx = run.indices
        if order == "selection":
            return idx
        if order == "reverse":
            return idx[:, ::-1]
        if order == "random":
            rng = np.random.default_rng(self.seed)
            perm = np.argsort(rng.random(idx.shape), axis=1)
            return np.take_along_axis(idx, perm, axis=1)
        rel = run.relevance if run.relevance is not None else self._cosine_relevance(idx,
                                                                                    targets)
        perm = np.argsort(rel, axis=1, kind="stable")   # ascending: most relevant last
        return np.take_along_axis(idx, perm, axis=1)

    def _cosine_relevance(self, idx: np.ndarray, targets: _Data) -> np.ndarray:
        """Cosine of each chosen item to its query (or to the mean target direction)."""
        data = self._fitted()
        if data.emb is None or targets.emb is None:
            raise InputError(f"order='similarity' for selector {self.name!r} needs embeddings "
                             "of the pool and of the targets")
        pool = _unit(data.emb)
        tgt = _unit(targets.emb.to(pool.dtype))
        rows = torch.as_tensor(idx, device=pool.device)
        if self.shared:
            direction = tgt.mean(0)
            return (pool[rows] @ direction).cpu().numpy().astype(np.float64)
        return torch.einsum("tkd,td->tk", pool[rows], tgt).cpu().numpy().astype(np.float64)


# ============================================================================= baselines
class RandomSelector(Selector):
    """Uniformly random demonstrations, one set shared by all targets.

    Draws ``k`` distinct pool items with ``numpy.random.default_rng(seed)``; with
    ``balance=True`` it draws :func:`label_quotas` items per label (pool labels needed) and
    shuffles them. Same seed, same set. Default order ``"selection"`` (the random draw order).

    Reference: the random baseline of Brown et al. (2020), few-shot prompting.

    Cost: ``O(k)`` (``O(n)`` with ``balance``).
    """

    name = "random"
    needs = frozenset()
    target_needs = frozenset()
    shared = True
    default_order = "selection"
    _param_names = ("balance",)

    def __init__(self, *, balance: bool = False, order: str | None = None, seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.balance = bool(balance)

    def _pool_needs(self) -> frozenset[str]:
        return frozenset({"labels"}) if self.balance else self.needs

    def _select(self, targets: _Data, k: int) -> _Run:
        data = self._fitted()
        rng = np.random.default_rng(self.seed)
        if self.balance:
            assert data.labels is not None
            quotas = label_quotas(data.labels, k)
            parts = [rng.choice(np.flatnonzero(data.labels == lab), q, replace=False)
                     for lab, q in quotas.items() if q]
            idx = rng.permutation(np.concatenate(parts))
        else:
            idx = rng.choice(data.n, k, replace=False)
        return _Run(idx[None].astype(np.int64), None)


class KNNSelector(Selector):
    """Nearest neighbours by cosine similarity, per query (KATE).

    For every target, the ``k`` pool items with the highest cosine similarity of their
    embeddings. Default order ``"similarity"``: the most similar item last, next to the query
    (KATE's "reversed" order). Ties go to the lowest index up to float rounding.

    Reference: Liu et al. (2022), "What Makes Good In-Context Examples for GPT-3?" (KATE).

    Cost: ``O(T n d)`` for the similarities (one matrix product per chunk of targets) plus
    ``O(T n)`` for the top-k; memory ``O(chunk n)``.
    """

    name = "knn"
    needs = frozenset({"embeddings"})

    def _fit(self, data: _Data) -> None:
        assert data.emb is not None
        self._unit_pool = _unit(data.emb)

    def _select(self, targets: _Data, k: int) -> _Run:
        pool = self._unit_pool
        tgt = _unit(targets.emb.to(pool.dtype))
        idx = torch.empty(targets.n, k, dtype=torch.long, device=pool.device)
        rel = torch.empty(targets.n, k, dtype=pool.dtype, device=pool.device)
        for sl in _row_chunks(targets.n, pool.shape[0]):
            rel[sl], idx[sl] = torch.topk(tgt[sl] @ pool.T, k, dim=1)
        return _Run(idx.cpu().numpy(), rel.cpu().numpy().astype(np.float64))


_TOKEN = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Default BM25 tokenizer: lower-cased runs of word characters (``\\w+``)."""
    return _TOKEN.findall(text.lower())


class BM25Selector(Selector):
    """Okapi BM25 lexical retrieval over the texts, per query.

    ``score(q, D) = sum_{t in q} idf(t) * tf(t, D) (k1 + 1) / (tf(t, D) + k1 (1 - b + b |D| /
    avgdl))`` (a query term counted as often as it occurs). ``idf="lucene"`` (default) is
    ``log(1 + (N - df + 0.5) / (df + 0.5))`` (never negative); ``idf="okapi"`` is rank_bm25's
    ``BM25Okapi``: ``log((N - df + 0.5) / (df + 0.5))`` with negative values replaced by
    ``epsilon * mean idf``. Tokens come from ``tokenizer`` (default :func:`tokenize`).
    Top-k per query by score, ties to the lowest index. Default order ``"similarity"``.

    Reference: Robertson & Zaragoza (2009), "The Probabilistic Relevance Framework: BM25 and
    Beyond"; used for demonstration retrieval by Rubin et al. (2022) and OpenICL.

    Cost: fit ``O(total tokens)`` (postings lists and a sparse ``[n, V]`` weight matrix);
    select ``O(min(sum_q sum_{t in q} df(t), T nnz))`` for the scores (term-at-a-time over the
    postings, or a sparse-times-dense product when query terms are frequent) plus ``O(T n)``
    for the top-k; memory ``O(chunk (n + V))``.
    """

    name = "bm25"
    needs = frozenset({"texts"})
    target_needs = frozenset({"texts"})
    _param_names = ("k1", "b", "idf", "epsilon", "tokenizer")

    def __init__(self, *, k1: float = 1.5, b: float = 0.75, idf: str = "lucene",
                 epsilon: float = 0.25, tokenizer: Callable[[str], list[str]] | None = None,
                 order: str | None = None, seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.k1 = _check_float(k1, "k1", 0.0)
        self.b = _check_float(b, "b", 0.0, 1.0)
        if idf not in ("lucene", "okapi"):
            raise InputError(f"idf must be 'lucene' or 'okapi', got {idf!r}")
        self.idf = idf
        self.epsilon = _check_float(epsilon, "epsilon", 0.0)
        self.tokenizer = tokenizer

    def _tokens(self, text: str) -> list[str]:
        return (self.tokenizer or tokenize)(text)

    def _fit(self, data: _Data) -> None:
        assert data.texts is not None
        vocab: dict[str, int] = {}
        terms: list[int] = []
        docs: list[int] = []
        tfs: list[int] = []
        doc_len = np.zeros(data.n)
        for d, text in enumerate(data.texts):
            toks = self._tokens(text)
            doc_len[d] = len(toks)
            for tok, count in Counter(toks).items():
                terms.append(vocab.setdefault(tok, len(vocab)))
                docs.append(d)
                tfs.append(count)
        term_arr = np.asarray(terms, dtype=np.int64)
        order = np.argsort(term_arr, kind="stable")
        df = np.bincount(term_arr, minlength=len(vocab)).astype(np.float64)
        n = float(data.n)
        if self.idf == "lucene":
            idf = np.log1p((n - df + 0.5) / (df + 0.5))
        else:
            idf = np.log(n - df + 0.5) - np.log(df + 0.5)
            if idf.size:
                idf[idf < 0] = self.epsilon * idf.mean()
        avgdl = doc_len.mean() if doc_len.sum() > 0 else 1.0
        doc_arr = np.asarray(docs, dtype=np.int64)[order]
        tf = np.asarray(tfs, dtype=np.float64)[order]
        norm = self.k1 * (1.0 - self.b + self.b * doc_len[doc_arr] / avgdl)
        self._vocab = vocab
        self._ptr = np.concatenate([[0], np.cumsum(df.astype(np.int64))])
        self._post_doc = doc_arr
        self._post_w = idf[term_arr[order]] * tf * (self.k1 + 1.0) / (tf + norm)
        # the same weights as a sparse CSR matrix W [n, V], for queries with frequent terms
        with warnings.catch_warnings():   # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self._matrix = torch.sparse_coo_tensor(
                torch.from_numpy(np.vstack([doc_arr, term_arr[order]])),
                torch.from_numpy(self._post_w), (data.n, max(1, len(vocab))),
                check_invariants=True).coalesce().to_sparse_csr()

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """BM25 scores ``[len(texts), n]`` of every pool text for every query text."""
        data = self._fitted()
        tdata = _check_data(Pool(texts=texts), frozenset({"texts"}), "queries", self.name)
        assert tdata.texts is not None
        return np.concatenate([self._scores(tdata.texts[sl])
                               for sl in _row_chunks(tdata.n, data.n + len(self._vocab))])

    def _scores(self, texts: Sequence[str]) -> np.ndarray:
        """Dense scores ``[len(texts), n]``: term-at-a-time over the postings of the query
        terms when they are short, else one sparse-times-dense product ``W @ Q^T``."""
        n = self._fitted().n
        qid: list[int] = []
        term: list[int] = []
        qtf: list[int] = []
        for i, text in enumerate(texts):
            for tok, count in Counter(self._tokens(text)).items():
                t = self._vocab.get(tok)
                if t is not None:
                    qid.append(i)
                    term.append(t)
                    qtf.append(count)
        term_arr = np.asarray(term, dtype=np.int64)
        qid_arr = np.asarray(qid, dtype=np.int64)
        qtf_arr = np.asarray(qtf, dtype=np.float64)
        starts = self._ptr[term_arr]
        lens = self._ptr[term_arr + 1] - starts
        # a posting costs ~30x a multiply-add of the sparse product (measured)
        if 32 * int(lens.sum()) > self._post_w.size * len(texts):
            q = np.zeros((len(self._vocab), len(texts)))
            np.add.at(q, (term_arr, qid_arr), qtf_arr)
            return torch.sparse.mm(self._matrix, torch.from_numpy(q)).T.numpy()
        pair = np.repeat(np.arange(len(term_arr)), lens)
        offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        pos = starts[pair] + offs
        flat = qid_arr[pair] * n + self._post_doc[pos]
        weights = self._post_w[pos] * qtf_arr[pair]
        return np.bincount(flat, weights=weights, minlength=len(texts) * n).reshape(-1, n)

    def _select(self, targets: _Data, k: int) -> _Run:
        assert targets.texts is not None
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        for sl in _row_chunks(targets.n, self._fitted().n + len(self._vocab)):
            idx[sl], rel[sl] = _topk_rows(self._scores(targets.texts[sl]), k)
        return _Run(idx, rel)


class _ShortlistSelector(Selector):
    """Per-query selectors that work on a top-``candidates`` shortlist by cosine similarity."""

    needs = frozenset({"embeddings"})

    def __init__(self, *, candidates: int | None = 50, order: str | None = None,
                 seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.candidates = None if candidates is None else _check_int(candidates, "candidates")

    def _fit(self, data: _Data) -> None:
        assert data.emb is not None
        self._unit_pool = _unit(data.emb)

    def _shortlists(self, targets: _Data, k: int) -> Iterator[tuple[slice, torch.Tensor,
                                                                    _Candidates]]:
        """Per chunk of targets: cosine similarities ``[R, N]`` and the candidate sets."""
        pool = self._unit_pool
        n, dim = pool.shape
        n_short = n if self.candidates is None else max(k, min(self.candidates, n))
        full = n_short >= n
        tgt = _unit(targets.emb.to(pool.dtype))
        for sl in _row_chunks(targets.n, n if full else n + n_short * (dim + n_short)):
            sims = tgt[sl] @ pool.T
            if full:
                yield sl, sims, _Candidates(pool, None)
            else:
                vals, idx = torch.topk(sims, n_short, dim=1)
                yield sl, vals, _Candidates(pool, idx)


class MMRSelector(_ShortlistSelector):
    """Maximal marginal relevance, per query.

    Greedily picks ``argmax_c lambda sim(c, q) - (1 - lambda) max_{s in S} sim(c, s)``
    (cosine similarities; the first pick is the most similar item) among the ``candidates``
    most similar pool items (``None``: the whole pool). ``lambda_=0.7`` by default. Default
    order ``"similarity"`` (most similar to the query last).

    Reference: Carbonell & Goldstein (1998), "The Use of MMR, Diversity-Based Reranking for
    Reordering Documents and Producing Summaries"; for demonstrations e.g. Ye et al. (2023).

    Cost: ``O(T n d)`` for the shortlist plus ``O(T k N d)`` for the greedy steps (``N`` the
    shortlist size); with ``candidates=None`` ``O(T k n d)``.
    """

    name = "mmr"
    _param_names = ("lambda_", "candidates")

    def __init__(self, *, lambda_: float = 0.7, candidates: int | None = 50,
                 order: str | None = None, seed: int = 0) -> None:
        super().__init__(candidates=candidates, order=order, seed=seed)
        self.lambda_ = _check_float(lambda_, "lambda_", 0.0, 1.0)

    def _select(self, targets: _Data, k: int) -> _Run:
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        lam = self.lambda_
        for sl, sims, cand in self._shortlists(targets, k):
            rows = torch.arange(sims.shape[0], device=sims.device)
            available = torch.ones_like(sims, dtype=torch.bool)
            max_sim = torch.zeros_like(sims)
            chosen = torch.empty(sims.shape[0], k, dtype=torch.long, device=sims.device)
            for j in range(k):
                score = sims if j == 0 else lam * sims - (1.0 - lam) * max_sim
                best = torch.argmax(score.masked_fill(~available, -math.inf), dim=1)
                chosen[:, j] = best
                available[rows, best] = False
                if j + 1 < k:
                    col = cand.column(best)
                    max_sim = col if j == 0 else torch.maximum(max_sim, col)
            idx[sl] = cand.to_global(chosen).cpu().numpy()
            rel[sl] = sims.gather(1, chosen).cpu().numpy()
        return _Run(idx, rel)


class DPPSelector(_ShortlistSelector):
    """Two-stage determinantal point process, per query (OpenICL's ``DPPRetriever``).

    Stage 1: the ``candidates`` pool items most similar to the query (cosine). Stage 2: greedy
    MAP inference (Chen et al. 2018, fast greedy with incremental Cholesky factors) of a
    ``k``-item set under the kernel ``L = diag(q) S diag(q)``, exactly OpenICL's formulation:
    on unit-normalised embeddings, ``S_ij = (1 + cos(c_i, c_j)) / 2``, relevance
    ``rel_i = (1 + cos(c_i, query)) / 2``, shifted so its maximum is 0, and quality
    ``q_i = exp(rel_i / (2 scale))`` (``scale`` is OpenICL's ``scale_factor``, 0.1). Selected
    items are masked (OpenICL's loop is not); if the factorisation runs out (all remaining
    gains <= 1e-12) the rest are filled by relevance. Default order ``"similarity"`` (most
    relevant last; OpenICL returns most relevant first, i.e. our ``"reverse"`` of that).
    ``candidates=50`` (OpenICL's default ``candidate_num=1`` only works for ``k=1``).

    References: Ye et al. (2023), "Compositional Exemplars for In-context Learning" (CEIL);
    Chen et al. (2018), "Fast Greedy MAP Inference for Determinantal Point Process to Improve
    Recommendation Diversity"; Wu et al. (2023), OpenICL.

    Cost: ``O(T n d)`` for the shortlist, ``O(T k N d)`` for the kernel columns and
    ``O(T k^2 N)`` for the factor updates.
    """

    name = "dpp"
    _param_names = ("candidates", "scale")

    def __init__(self, *, candidates: int | None = 50, scale: float = 0.1,
                 order: str | None = None, seed: int = 0) -> None:
        super().__init__(candidates=candidates, order=order, seed=seed)
        self.scale = _check_float(scale, "scale", 0.0, low_open=True)

    def _select(self, targets: _Data, k: int) -> _Run:
        f64 = torch.float64
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel_out = np.empty((targets.n, k))
        for sl, sims, cand in self._shortlists(targets, k):
            n_rows, n_cand = sims.shape
            dev = sims.device
            rows = torch.arange(n_rows, device=dev)
            rel = (sims.to(f64) + 1.0) / 2.0
            rel = torch.exp((rel - rel.max(1, keepdim=True).values) / (2.0 * self.scale))
            sq_norm = cand.pool.pow(2).sum(-1)
            sq_norm = sq_norm[cand.idx] if cand.idx is not None else sq_norm.expand(n_rows, -1)
            di2 = rel**2 * (1.0 + sq_norm.to(f64)) / 2.0          # diag(L)
            cis = torch.zeros(n_rows, k, n_cand, dtype=f64, device=dev)
            available = torch.ones(n_rows, n_cand, dtype=torch.bool, device=dev)
            chosen = torch.empty(n_rows, k, dtype=torch.long, device=dev)
            for j in range(k):
                best = torch.argmax(di2.masked_fill(~available, -math.inf), dim=1)
                d_best = di2[rows, best]
                stuck = d_best <= 1e-12
                if bool(stuck.any()):
                    by_rel = torch.argmax(rel.masked_fill(~available, -math.inf), dim=1)
                    best = torch.where(stuck, by_rel, best)
                chosen[:, j] = best
                available[rows, best] = False
                if j + 1 == k:
                    break
                s_col = (1.0 + cand.column(best).to(f64)) / 2.0
                elements = rel[rows, best][:, None] * s_col * rel       # L[best, :]
                c_best = cis[rows, :j, best]                             # [R, j]
                eis = (elements - torch.einsum("rj,rjn->rn", c_best, cis[:, :j])) \
                    / d_best.clamp_min(1e-300).sqrt()[:, None]
                eis = eis.masked_fill(stuck[:, None], 0.0)
                cis[:, j] = eis
                di2 = di2 - eis**2
            idx[sl] = cand.to_global(chosen).cpu().numpy()
            rel_out[sl] = sims.gather(1, chosen).cpu().numpy()
        return _Run(idx, rel_out)


class VoteKSelector(Selector):
    """Vote-k selective annotation, graph stage (fast vote-k); one set shared by all targets.

    Every pool item votes for its ``neighbors`` nearest other items (cosine similarity), a
    directed kNN graph. Greedily pick the unselected ``u`` maximising
    ``score(u) = sum_{v votes for u, v not selected} rho^(-|{l selected : v votes for l}|)``:
    items with many voters (representative) whose voters are not already covered (diverse).
    ``neighbors=150`` and ``rho=10`` are the paper's values (capped at ``n - 1``). Ties go to
    the lowest index. The paper's second stage (re-selecting by the language model's
    confidence on the remaining budget) is not used: this selector needs no model. The graph
    depends on the pool only and is built in :meth:`fit`. Default order ``"similarity"``
    (by cosine to the mean target direction, most similar last).

    Reference: Su et al. (2022/ICLR 2023), "Selective Annotation Makes Language Models Better
    Few-Shot Learners" (Algorithm 1; the official ``fast_votek``).

    Cost: fit ``O(n^2 d)`` for the graph (chunked matrix products and top-k, memory
    ``O(chunk n)``); select ``O(k (n + indeg(u) neighbors))``.
    """

    name = "vote-k"
    needs = frozenset({"embeddings"})
    target_needs = frozenset()
    shared = True
    _param_names = ("neighbors", "rho")

    def __init__(self, *, neighbors: int = 150, rho: float = 10.0, order: str | None = None,
                 seed: int = 0) -> None:
        super().__init__(order=order, seed=seed)
        self.neighbors = _check_int(neighbors, "neighbors")
        self.rho = _check_float(rho, "rho", 1.0, low_open=True)

    def _fit(self, data: _Data) -> None:
        assert data.emb is not None
        pool = _unit(data.emb)
        n = data.n
        kv = min(self.neighbors, n - 1)
        nbr = np.empty((n, kv), dtype=np.int64)
        if kv > 0:
            for sl in _row_chunks(n, n):
                sims = pool[sl] @ pool.T
                rows = torch.arange(sl.stop - sl.start, device=sims.device)
                sims[rows, rows + sl.start] = -math.inf              # no self-votes
                nbr[sl] = torch.topk(sims, kv, dim=1).indices.cpu().numpy()
        flat = nbr.ravel()
        order = np.argsort(flat, kind="stable")
        self._nbr = nbr
        self._voters = order // max(kv, 1)                            # grouped by candidate
        self._voter_ptr = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=n))])

    def _select(self, targets: _Data, k: int) -> _Run:
        n = self._fitted().n
        nbr, kv = self._nbr, self._nbr.shape[1]
        weight = np.ones(n)                                           # rho^-(covered votes)
        score = np.bincount(nbr.ravel(), minlength=n).astype(np.float64)
        selected = np.zeros(n, dtype=bool)
        chosen = []
        for _ in range(k):
            u = int(np.argmax(np.where(selected, -np.inf, score)))
            chosen.append(u)
            selected[u] = True
            score[nbr[u]] -= weight[u]                                # u stops voting
            weight[u] = 0.0
            voters = self._voters[self._voter_ptr[u]:self._voter_ptr[u + 1]]
            delta = weight[voters] * (1.0 / self.rho - 1.0)
            weight[voters] /= self.rho
            np.add.at(score, nbr[voters].ravel(), np.repeat(delta, kv))
        return _Run(np.asarray(chosen, dtype=np.int64)[None], None)


# ============================================================================= MMD family
class _KernelSelector(Selector):
    needs = frozenset({"embeddings"})

    def __init__(self, *, kernel: str | Kernel = "gaussian", diversity: float = 0.0,
                 median_samples: int = 2000, order: str | None = None, seed: int = 0,
                 **kernel_params: Any) -> None:
        super().__init__(order=order, seed=seed)
        self.median_samples = _check_int(median_samples, "median_samples", 2)
        name = kernel.name if isinstance(kernel, Kernel) else canonical_kernel_name(kernel)
        unknown = set(kernel_params) - set(kernel_parameters(name))
        if unknown:
            allowed = ", ".join(kernel_parameters(name)) or "none"
            raise InputError(f"kernel {name!r} got unknown parameter(s) {sorted(unknown)}; "
                             f"allowed: {allowed}")
        self.kernel = kernel
        self.kernel_params = dict(kernel_params)
        self.diversity = _check_diversity(diversity)

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), **self.kernel_params}


class MMDSelector(_KernelSelector):
    """Greedy MMD against the whole target distribution; one set shared by all targets.

    Chooses ``S`` to minimise the biased ``MMD^2(S, T)`` between the chosen demonstrations and
    all targets at once (:func:`greedy_mmd`, SPEC §5), optionally with the diversity term.
    Kernel: ``kernel`` (a name or a :class:`~icldistill.Kernel`, e.g.
    ``make_kernel("attention", key_dim=64)`` for ``[k | v]`` attention tokens) with
    ``**kernel_params``; default Gaussian with the median-heuristic bandwidth of the pooled
    pool and targets. Default order ``"similarity"``: ascending ``r_c = mean_t K(c, t)``, so
    the most representative demonstration sits next to the query.

    References: SPEC §5; Gretton et al. (2012), "A Kernel Two-Sample Test" (MMD); greedy MMD
    minimisation as in MMD-critic prototypes (Kim, Khanna & Koyejo 2016) and kernel herding
    (Chen, Welling & Smola 2010).

    ``landmarks=m`` approximates the row means through ``m`` random targets (Nyström, see
    :func:`greedy_mmd`; certified error, exact reported MMD², seeded by ``seed``).

    Cost: ``O(n T d)`` for the row means ``r_c`` (the same matrix product as kNN retrieval;
    ``O((n + T) m d)`` with landmarks), ``O(T^2 d)`` for the trajectory constant, ``O(k n d)``
    for the greedy steps and ``O(2000^2 d)`` for the median heuristic.
    """

    name = "mmd"
    shared = True
    _param_names = ("kernel", "diversity", "median_samples", "landmarks")
    balance: ClassVar[bool] = False

    def __init__(self, *, kernel: str | Kernel = "gaussian", diversity: float = 0.0,
                 median_samples: int = 2000, landmarks: int | None = None,
                 order: str | None = None, seed: int = 0, **kernel_params: Any) -> None:
        super().__init__(kernel=kernel, diversity=diversity, median_samples=median_samples,
                         order=order, seed=seed, **kernel_params)
        self.landmarks = None if landmarks is None else _check_int(landmarks, "landmarks", 1)

    def _select(self, targets: _Data, k: int) -> _Run:
        data = self._fitted()
        pool, tgt = _promote(data.emb, targets.emb)
        res = _greedy_mmd(pool, tgt, k, self.kernel, data.labels, self.balance, self.diversity,
                          self.seed, self.kernel_params, self.median_samples, self.landmarks)
        return _Run(res.indices[None], res.row_means[None], res.mmd2[None])


class MMDBalancedSelector(MMDSelector):
    """Greedy MMD with label-balanced quotas; one set shared by all targets.

    As ``mmd``, restricted so that every label gets :func:`label_quotas` of the ``k`` slots
    (pool labels needed). Default order ``"similarity"`` (ascending ``r_c``).

    Reference: SPEC §5 (label-balanced selection).

    Cost: as ``mmd``.
    """

    name = "mmd-balanced"
    needs = frozenset({"embeddings", "labels"})
    balance = True


class MMDQuerySelector(_KernelSelector):
    """Greedy MMD against each query on its own, per query.

    For target ``q`` the greedy step minimises ``MMD^2(S, {q})`` (plus the diversity term).
    With a single target point and a kernel with constant diagonal (Gaussian, Laplace, IMQ)
    the step picks ``argmax_c K(c, q) - (1 + lambda) s_c / |S|`` (``s_c`` the kernel sum to
    the chosen items, ``lambda`` = ``diversity``): kNN in kernel space with a redundancy
    penalty. Note that MMD to a single point rewards concentrating on
    it, so near-duplicates of the query are kept unless ``diversity > 0``. Candidates: the
    ``candidates`` pool items with the largest ``K(c, q)`` (two-stage, like ``dpp``);
    ``candidates=None`` runs the exact greedy over the whole pool. All queries are processed
    as one batch of greedy problems with cached row sums (the routine behind
    :func:`greedy_mmd`); the kernel bandwidth (median heuristic) is computed once on the
    pooled pool and targets. Default order ``"similarity"`` (ascending ``K(c, q)``).
    On 10,000 clustered 384-d embeddings a shortlist of 50 kept ~92% of the exact greedy's
    picks (``benchmarks/results/selection_2cpu.md``).

    Reference: SPEC §5 (per-query targets).

    Cost: ``O(T n d)`` for ``K(pool, query)`` and the shortlist, ``O(T k N d)`` for the
    greedy steps; exact (``candidates=None``): ``O(T k n d)``.
    """

    name = "mmd-query"
    _param_names = ("kernel", "candidates", "diversity", "median_samples")

    def __init__(self, *, kernel: str | Kernel = "gaussian", candidates: int | None = 50,
                 diversity: float = 0.0, median_samples: int = 2000, order: str | None = None,
                 seed: int = 0, **kernel_params: Any) -> None:
        super().__init__(kernel=kernel, diversity=diversity, median_samples=median_samples,
                         order=order, seed=seed, **kernel_params)
        self.candidates = None if candidates is None else _check_int(candidates, "candidates")

    def _select(self, targets: _Data, k: int) -> _Run:
        data = self._fitted()
        pool, tgt = _promote(data.emb, targets.emb)
        n, dim = pool.shape
        kern = make_kernel(self.kernel, pool, tgt, max_samples=self.median_samples,
                           seed=self.seed, **self.kernel_params)
        kern.check_input_dim(dim)
        pool_diag = kern.diag(pool).to(torch.float64)
        gram_pool = kern.against(pool)                                 # x -> K(x, pool)
        n_short = n if self.candidates is None else max(k, min(self.candidates, n))
        full = n_short >= n
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        traj = np.empty((targets.n, k))
        for sl in _row_chunks(targets.n, n if full else n + 2 * n_short * (dim + n_short)):
            q = tgt[sl]
            kq = gram_pool(q)                                          # [R, n]
            if full:
                r, cand, diag = kq, _Candidates(pool, None, gram_pool=gram_pool), pool_diag
            else:
                r, short = torch.topk(kq, n_short, dim=1)
                cand, diag = _Candidates(pool, short, kern), pool_diag[short]
            if not bool(torch.isfinite(r).all()):
                raise InputError(f"kernel {kern.name!r} overflowed (infinite Gram entries)")
            chosen, tr = _greedy_mmd_batch(r, diag, kern.diag(q).to(torch.float64),
                                           cand.column, k, self.diversity)
            idx[sl] = cand.to_global(chosen).cpu().numpy()
            rel[sl] = r.gather(1, chosen).cpu().numpy()
            traj[sl] = tr.cpu().numpy()
        return _Run(idx, rel, traj)


# ============================================================================= joint / local MMD
def _label_codes(labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, int]:
    """Integer codes ``[n]`` of the labels (sorted order) and the number of labels."""
    _, inv = np.unique(labels, return_inverse=True)
    return torch.as_tensor(inv.reshape(-1), dtype=torch.long, device=device), int(inv.max()) + 1


def _check_weight(value: Any, name: str) -> float:
    return _check_float(value, name, 0.0, 1.0)


def soft_labels(kq: torch.Tensor, codes: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Kernel-weighted label distribution of neighbours, ``[R, L]`` (float64).

    ``kq`` ``[R, m]`` holds the kernel values between each target and its ``m`` neighbours,
    ``codes`` ``[R, m]`` the neighbours' label codes. Row ``i`` is
    ``p_i(y) = sum_j kq_ij [y_j = y] / sum_j kq_ij`` (uniform weights when all are zero).
    """
    w = kq.to(torch.float64).clamp_min(0.0)
    tot = w.sum(1, keepdim=True)
    w = torch.where(tot > 0, w / tot.clamp_min(torch.finfo(torch.float64).tiny),
                    torch.full_like(w, 1.0 / max(1, w.shape[1])))
    out = torch.zeros(w.shape[0], n_labels, dtype=torch.float64, device=w.device)
    return out.scatter_add_(1, codes, w)


class MMDJointSelector(_KernelSelector):
    """Greedy MMD under a joint input-label kernel; one set shared by all targets.

    The distilled weights ``W_0 = sum_i phi(v_i) phi(k_i)^T`` pair each demonstration's input
    (key side) with its label (value side), so the distribution that matters is the *joint*
    one. This selector minimises the biased ``MMD^2`` between the chosen ``(x, y)`` pairs and
    the targets' joint distribution under

    ``K((x, y), (x', y')) = K_x(x, x') ((1 - gamma) + gamma [y = y'])``

    (``gamma`` = ``label_weight``; 0 gives ``mmd``). Targets have no labels: each target ``t``
    gets the kernel-weighted label distribution ``p_t`` of its ``neighbors`` nearest pool
    items (:func:`soft_labels`; ``neighbors=0`` uses the pool's label frequencies), so the
    target embedding is ``mean_t phi(t) (x) p_t``. The within-set term only counts same-label
    pairs, so choosing many items of one label is penalised by the objective itself: label
    balance (matched to the targets' estimated label mix) follows without quotas.

    Reference: SPEC §3 (the value side of ``W_0``), §5 (MMD selection); joint kernel mean
    embeddings of conditional distributions (Song, Fukumizu & Gretton 2013).

    Cost: ``O(n T d)`` for ``K_x(pool, targets)`` (as ``mmd``) plus ``O(n T L)`` for the label
    weighting, ``O(T^2 (d + L))`` for the trajectory constant, ``O(k n d)`` greedy steps.
    """

    name = "mmd-joint"
    shared = True
    needs = frozenset({"embeddings", "labels"})
    _param_names = ("kernel", "label_weight", "neighbors", "diversity", "median_samples")

    def __init__(self, *, kernel: str | Kernel = "gaussian", label_weight: float = 1.0,
                 neighbors: int = 16, diversity: float = 0.0, median_samples: int = 2000,
                 order: str | None = None, seed: int = 0, **kernel_params: Any) -> None:
        super().__init__(kernel=kernel, diversity=diversity, median_samples=median_samples,
                         order=order, seed=seed, **kernel_params)
        self.label_weight = _check_weight(label_weight, "label_weight")
        self.neighbors = _check_int(neighbors, "neighbors", 0)

    def _select(self, targets: _Data, k: int) -> _Run:
        data = self._fitted()
        assert data.labels is not None
        pool, tgt = _promote(data.emb, targets.emb)
        n = pool.shape[0]
        kern = make_kernel(self.kernel, pool, tgt, max_samples=self.median_samples,
                           seed=self.seed, **self.kernel_params)
        kern.check_input_dim(pool.shape[1])
        codes, n_lab = _label_codes(data.labels, pool.device)
        gam = self.label_weight
        f64 = torch.float64
        m = min(self.neighbors, n)
        gram_pool = kern.against(pool)
        # p_t [T, L] and the label-weighted row sums A[c, y] = sum_t K(c, t) p_t(y)
        p_t = torch.empty(targets.n, n_lab, dtype=f64, device=pool.device)
        a = torch.zeros(n, n_lab, dtype=f64, device=pool.device)
        for sl in _row_chunks(targets.n, n):
            kt = gram_pool(tgt[sl]).to(f64)                                    # [R, n]
            if not bool(torch.isfinite(kt).all()):
                raise InputError(f"kernel {kern.name!r} overflowed (infinite Gram entries)")
            if m > 0:
                vals, nb = torch.topk(kt, m, dim=1)
                p_t[sl] = soft_labels(vals, codes[nb], n_lab)
            else:
                p_t[sl] = torch.bincount(codes, minlength=n_lab).to(f64) / n
            a += kt.T @ p_t[sl]
        a /= targets.n
        r_x = a.sum(1)                                        # mean_t K(c, t): sum_y p_t = 1
        r = (1.0 - gam) * r_x + gam * a.gather(1, codes[:, None])[:, 0]
        ktt = kern(tgt, tgt).to(f64)
        const = float(((1.0 - gam) + gam * (p_t @ p_t.T)).mul(ktt).mean())

        def column(best: torch.Tensor) -> torch.Tensor:
            kb = gram_pool(pool[best]).to(f64)                               # [1, n]
            return kb * ((1.0 - gam) + gam * (codes[None] == codes[best][:, None]))

        chosen, traj = _greedy_mmd_batch(r[None], kern.diag(pool), torch.tensor(
            [const], dtype=f64, device=pool.device), column, k, self.diversity)
        return _Run(chosen.cpu().numpy(), r[chosen].cpu().numpy(), traj.cpu().numpy())


class MMDLocalSelector(_KernelSelector):
    """Greedy MMD against each query's local joint distribution, per query.

    A single query point is a poor target: MMD to one point rewards concentrating on it
    (``mmd-query`` is kNN with a redundancy penalty). Here the target of query ``q`` is a
    mixture: weight ``query_weight`` on ``q`` itself and the rest spread evenly over its
    ``neighbors`` nearest pool items (its neighbourhood in the task's input distribution),
    each with its label. Under the joint kernel of ``mmd-joint``
    (``label_weight = gamma``; ``q``'s label distribution is the kernel-weighted vote of its
    neighbours) the chosen set matches the neighbourhood's inputs *and* its label mix. The
    greedy runs over the ``candidates`` pool items closest to ``q`` (shortlist, like
    ``mmd-query``); with ``neighbors=0`` or ``query_weight=1`` and ``label_weight=0`` it is
    ``mmd-query``. Default order ``"similarity"`` (most similar to the query last).

    Reference: SPEC §3, §5 (per-query targets; the joint input-label distribution behind
    ``W_0``).

    Cost: ``O(T n d)`` for ``K(pool, query)`` and the shortlist, ``O(T N^2 d)`` for the
    shortlist Gram matrices (``N = candidates``), ``O(T k N)`` greedy steps.
    """

    name = "mmd-local"
    needs = frozenset({"embeddings", "labels"})
    _param_names = ("kernel", "candidates", "neighbors", "query_weight", "label_weight",
                    "diversity", "median_samples")

    def __init__(self, *, kernel: str | Kernel = "gaussian", candidates: int = 50,
                 neighbors: int = 16, query_weight: float = 0.5, label_weight: float = 1.0,
                 diversity: float = 0.0, median_samples: int = 2000,
                 order: str | None = None, seed: int = 0, **kernel_params: Any) -> None:
        super().__init__(kernel=kernel, diversity=diversity, median_samples=median_samples,
                         order=order, seed=seed, **kernel_params)
        self.candidates = _check_int(candidates, "candidates")
        self.neighbors = _check_int(neighbors, "neighbors", 0)
        self.query_weight = _check_weight(query_weight, "query_weight")
        self.label_weight = _check_weight(label_weight, "label_weight")

    def _select(self, targets: _Data, k: int) -> _Run:
        data = self._fitted()
        assert data.labels is not None
        pool, tgt = _promote(data.emb, targets.emb)
        n, dim = pool.shape
        f64 = torch.float64
        kern = make_kernel(self.kernel, pool, tgt, max_samples=self.median_samples,
                           seed=self.seed, **self.kernel_params)
        kern.check_input_dim(dim)
        codes, n_lab = _label_codes(data.labels, pool.device)
        gam = self.label_weight
        n_short = max(k, min(self.candidates, n))
        m = min(self.neighbors, n_short)
        wq = 1.0 if m == 0 else self.query_weight
        wn = 0.0 if m == 0 else (1.0 - wq) / m
        pool_diag = kern.diag(pool).to(f64)
        gram_pool = kern.against(pool)
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        traj = np.empty((targets.n, k))
        for sl in _row_chunks(targets.n, n + 2 * n_short * (dim + n_short)):
            q = tgt[sl]
            kq = gram_pool(q)                                                  # [R, n]
            if not bool(torch.isfinite(kq).all()):
                raise InputError(f"kernel {kern.name!r} overflowed (infinite Gram entries)")
            vals, short = torch.topk(kq, n_short, dim=1)          # descending: neighbours first
            vals = vals.to(f64)
            lab = codes[short]                                                 # [R, N]
            same = (lab[:, :, None] == lab[:, None, :]).to(f64)                # [R, N, N]
            joint = _batched_gram(pool[short], kern).to(f64) * ((1.0 - gam) + gam * same)
            if m > 0:
                w = soft_labels(vals[:, :m], lab[:, :m], n_lab)                # [R, L]
                p_c = w.gather(1, lab)                                          # [R, N]
            else:
                w = torch.full((q.shape[0], n_lab), 1.0 / n_lab, dtype=f64, device=q.device)
                p_c = torch.full_like(vals, 1.0 / n_lab)
            lq = (1.0 - gam) + gam * p_c                                       # [R, N]
            r = wq * vals * lq + wn * joint[:, :, :m].sum(2)
            kqq = kern.diag(q).to(f64)
            const = (wq**2 * kqq * ((1.0 - gam) + gam * (w * w).sum(1))
                     + 2.0 * wq * wn * (vals[:, :m] * lq[:, :m]).sum(1)
                     + wn**2 * joint[:, :m, :m].sum((1, 2)))
            rows = torch.arange(q.shape[0], device=q.device)

            def column(best: torch.Tensor, joint: torch.Tensor = joint,
                       rows: torch.Tensor = rows) -> torch.Tensor:
                return joint[rows, :, best]

            chosen, tr = _greedy_mmd_batch(r, pool_diag[short], const, column, k,
                                           self.diversity)
            idx[sl] = short.gather(1, chosen).cpu().numpy()
            rel[sl] = vals.gather(1, chosen).cpu().numpy()
            traj[sl] = tr.cpu().numpy()
        return _Run(idx, rel, traj)


class MMDKattSelector(MMDLocalSelector):
    """``mmd-local`` in the reading model's own attention space.

    The same objective as ``mmd-local``, on the representation the theory speaks of: keys and
    values (``[k | v]``, pre-RoPE, averaged over each text's tokens) of the attention heads
    where the demonstrations carry the most attention mass, under normalised ``K_att``
    (``attention-norm``). The heads are chosen automatically by tracing a few calibration
    prompts of the task on the model that will read the prompt (encoder spec ``"kv:auto"``,
    see :func:`icldistill.encoders.representations.choose_attention_heads`); the evaluation harness
    does this by itself (``preferred_encoder``). Given other embeddings it behaves as
    ``mmd-local`` with their kernel.

    Reference: SPEC §3 (``K_att``), §5.

    Cost: as ``mmd-local``, plus encoding the pool once with the model up to the chosen layer
    (cached) and tracing the calibration prompts.
    """

    name = "mmd-katt"
    preferred_encoder: ClassVar[str | None] = "kv:auto"


# ============================================================================= registry
SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (RandomSelector, KNNSelector, BM25Selector, MMRSelector, DPPSelector,
                VoteKSelector, MMDSelector, MMDQuerySelector, MMDBalancedSelector,
                MMDJointSelector, MMDLocalSelector, MMDKattSelector)
}
"""Selector classes by name."""

_SELECTOR_ALIASES = {"kate": "knn", "topk": "knn", "votek": "vote-k", "fast-votek": "vote-k",
                     "mmd-set": "mmd"}


def make_selector(name: str, **params: Any) -> Selector:
    """Build a selector by name (see :data:`SELECTORS`) with its parameters.

    Names are case-insensitive and ``_`` equals ``-`` (``"vote_k"``); aliases: ``kate`` and
    ``topk`` for ``knn``, ``votek`` for ``vote-k``. Unknown names or parameters raise
    :class:`InputError` (with the closest names).
    """
    if not isinstance(name, str):
        raise InputError(f"selector name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _SELECTOR_ALIASES.get(key, key)
    if key not in SELECTORS:
        close = difflib.get_close_matches(key, [*SELECTORS, *_SELECTOR_ALIASES], n=3,
                                          cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise InputError(f"unknown selector {name!r}{hint} (choose one of "
                         f"{', '.join(SELECTORS)})")
    cls = SELECTORS[key]
    sig = inspect.signature(cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = set(params) - set(sig.parameters) - {"self"}
    if unknown and not takes_any:
        allowed = ", ".join(p for p in sig.parameters if p != "self")
        raise InputError(f"selector {key!r} got unknown parameter(s) {sorted(unknown)}; "
                         f"allowed: {allowed}")
    return cls(**params)
