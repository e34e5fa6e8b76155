"""Greedy MMD selection, the math (SPEC §5): :func:`greedy_mmd`, :func:`select_mmd`, label
quotas and the Nyström landmark approximation of the row means.

Greedy MMD
----------
Greedy selection picks, one at a time, the candidate that most lowers the biased
``MMD^2(S + {c}, T)`` between the chosen set ``S`` and the targets ``T``:

``MMD^2(S, T) = (1/|S|^2) sum_{i,j in S} K(c_i, c_j) - (2/|S|) sum_{i in S} r_i + mean K_TT``

with ``r_c = mean_t K(c, t)``. One tiled pass computes all ``r_c`` (``O(|C| |T|)`` kernel
evaluations); afterwards each step needs only the kernel column ``K(C, c_new)`` (``O(|C|)``) to
update the cached sums ``s_c = sum_{j in S} K(c, c_j)``. The objective is never recomputed.
The same routine (:func:`greedy_mmd_batch`) runs one target set (``greedy_mmd``, the ``mmd``
selector) or a batch of target sets side by side (``mmd-query``, ``mmd-local``).

Diversity term: with ``diversity = lambda >= 0`` the greedy step minimises

``J_lambda(S) = MMD^2(S, T) + lambda (1/|S|^2) sum_{i != j in S} K(c_i, c_j)``,

i.e. the within-set similarity is weighted ``1 + lambda`` instead of 1; ``lambda = 0`` is the
plain objective. The reported trajectory is always the plain ``MMD^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.store import to_jsonable
from icldistill.core.kernels import Kernel, make_kernel
from icldistill.core.mmd import kernel_row_means, self_kernel_mean
from icldistill.core.validation import InputError, check_int, check_pair
from icldistill.selection._common import check_diversity, check_k, check_labels, row_chunks

__all__ = ["GreedySelection", "LandmarkRowMeans", "greedy_mmd", "label_quotas",
           "landmark_row_means", "select_mmd"]


def _kernel_dict(kern: Kernel) -> dict[str, Any]:
    """A kernel as its name and resolved parameters (for ``to_dict``)."""
    return {"name": kern.name, "params": dict(kern.params)}


@dataclass(frozen=True, eq=False)
class GreedySelection:
    """Result of :func:`greedy_mmd` and :func:`select_mmd`.

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

    Notes
    -----
    The result also behaves as its index array ``indices`` ``[k]``, which is what
    :func:`select_mmd` returned in 0.1: ``np.asarray(res)``, ``pool[res]`` (NumPy and torch
    indexing), ``res[i]``, ``len(res)``, iteration, ``res.shape``, ``res.dtype``,
    ``res.tolist()`` and ``res == other`` (element-wise) all act on ``indices``. It is not an
    ``ndarray`` subclass: code that needs one writes ``res.indices``.
    """

    indices: np.ndarray
    mmd2: np.ndarray
    kernel: Kernel
    quotas: dict[Any, int] | None = None
    row_means: np.ndarray | None = None
    approx_error: float | None = None

    # -- the index array's behaviour
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self.indices if dtype is None else self.indices.astype(dtype, copy=False)
        return out.copy() if copy else out

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __iter__(self) -> Iterator[np.int64]:
        return iter(self.indices)

    def __getitem__(self, item: Any) -> Any:
        return self.indices[item]

    def __eq__(self, other: object) -> Any:  # element-wise, as for the index array
        return self.indices == np.asarray(other)

    def __ne__(self, other: object) -> Any:
        return self.indices != np.asarray(other)

    __hash__ = None  # type: ignore[assignment]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`indices`, ``(k,)``."""
        return tuple(self.indices.shape)

    @property
    def dtype(self) -> np.dtype:
        """Dtype of :attr:`indices` (int64)."""
        return self.indices.dtype

    def tolist(self) -> list[int]:
        """:attr:`indices` as a list of ints."""
        return self.indices.tolist()

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-ready dict (the kernel as its name and parameters)."""
        return to_jsonable({
            "indices": self.indices, "mmd2": self.mmd2,
            "kernel": _kernel_dict(self.kernel), "quotas": self.quotas, "row_means": self.row_means,
            "approx_error": self.approx_error})


@dataclass(frozen=True, eq=False)
class LandmarkRowMeans:
    """Result of :func:`landmark_row_means`.

    Attributes
    ----------
    row_means : numpy.ndarray ``[C]`` (float64)
        ``r_hat_c = <phi(c), P mu_T>``, the approximate ``mean_t K(c, t)`` of every candidate.
    approx_error : float
        ``eps = ||mu_T - P mu_T||``; ``|r_hat_c - r_c| <= sqrt(K(c, c)) eps`` for every
        candidate (up to float rounding).
    landmarks : numpy.ndarray ``[m]`` (int64)
        Target rows used as landmarks, in draw order (a larger ``m`` with the same seed extends
        the same draw).
    kernel : Kernel
        The kernel with resolved parameters.
    """

    row_means: np.ndarray
    approx_error: float
    landmarks: np.ndarray
    kernel: Kernel

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-ready dict (the kernel as its name and parameters)."""
        return to_jsonable({
            "row_means": self.row_means, "approx_error": self.approx_error,
            "landmarks": self.landmarks, "kernel": _kernel_dict(self.kernel)})


def label_quotas(labels: np.ndarray, k: int) -> dict[Any, int]:
    """Split ``k`` as evenly as possible over the labels present in ``labels``.

    Water-filling: every label gets ``min(count, level)`` slots for the largest ``level`` with
    ``sum(min(count, level)) <= k``; the ``< (number of labels)`` slots left over go one each to
    the first labels, in sorted order, that still have a spare candidate (``count > level``).
    This minimises the largest quota and, among those splits, maximises the smallest one: a
    label with fewer candidates than its share keeps all of them, and the excess is spread
    evenly over the others (never given to a label that cannot use it).

    Parameters
    ----------
    labels : np.ndarray
        ``[N]`` the candidates' labels.
    k : int
        How many slots to split, ``0 <= k <= N``.

    Returns
    -------
    dict
        ``{label: quota}`` over the sorted distinct labels; the quotas sum to ``k`` and
        ``quota <= count`` for every label.

    Raises
    ------
    InputError
        If ``k`` exceeds the number of labels given, or the labels cannot be told apart and
        sorted (``None``, NaN, or a mix of numbers and strings).
    """
    values, counts = np.unique(check_labels(labels), return_counts=True)
    if k > counts.sum():
        raise InputError(f"k={k} is larger than the candidate pool ({counts.sum()})")
    quotas = {v: 0 for v in values.tolist()}
    avail = dict(zip(values.tolist(), counts.tolist(), strict=True))
    left = k
    # Every round raises all open (not yet exhausted) labels by the same share, capped at their
    # counts, so the open labels always sit at one common level; once the share would be zero,
    # the remainder goes one each to the first open labels.
    while left > 0:
        open_labels = [v for v in quotas if quotas[v] < avail[v]]
        share, extra = divmod(left, len(open_labels))
        if share == 0:
            for v in open_labels[:extra]:
                quotas[v] += 1
            break
        for v in open_labels:
            add = min(share, avail[v] - quotas[v])
            quotas[v] += add
            left -= add
    return quotas



def greedy_mmd_batch(
    r: torch.Tensor,
    diag: torch.Tensor,
    const: torch.Tensor,
    column: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    diversity: float = 0.0,
    lab_idx: torch.Tensor | None = None,
    remaining: torch.Tensor | None = None,
    kernel_name: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy MMD for ``R`` independent problems at once (the one greedy-MMD routine).

    Row ``i`` chooses ``k`` of its ``M`` candidates to minimise ``J_lambda`` against its own
    targets. ``r`` ``[R, M]`` holds the mean kernel of each candidate to the targets, ``diag``
    ``[R, M]`` (or ``[M]``) the candidates' ``K(c, c)``, ``const`` ``[R]`` the targets' mean
    ``K_TT``; ``column(best)`` returns ``K(candidates_i, candidate_i[best_i])`` ``[R, M]``.
    ``lab_idx`` ``[M]`` with ``remaining`` ``[R, L]`` enforces per-label quotas.

    Returns the chosen local indices ``[R, k]`` (ties go to the lowest index) and the plain
    biased ``MMD^2`` after each step ``[R, k]`` (float64). The indices of a row are always
    distinct.

    Raises
    ------
    InputError
        If the kernel overflowed: a non-finite ``r``, ``diag`` (e.g. ``K(c, c)`` of the
        attention or softmax kernel on large keys, while ``K(c, t)`` is finite) or ``const``,
        a non-finite kernel column, or a non-finite objective (``kernel_name`` names the
        kernel in the message). Never returns a repeated index or a NaN trajectory.
    """
    f64 = torch.float64
    n_rows, n_cand = r.shape
    dev = r.device
    r = r.to(f64)
    diag = diag.to(f64)
    const = torch.as_tensor(const, dtype=f64, device=dev)
    _check_finite_inputs(r, diag, const, kernel_name)
    diag = diag.expand(n_rows, n_cand)
    s = torch.zeros(n_rows, n_cand, dtype=f64, device=dev)
    available = torch.ones(n_rows, n_cand, dtype=torch.bool, device=dev)
    a_off = torch.zeros(n_rows, 1, dtype=f64, device=dev)   # sum_{i != j in S} K
    a_diag = torch.zeros(n_rows, 1, dtype=f64, device=dev)  # sum_{i in S} K(c_i, c_i)
    r_sum = torch.zeros(n_rows, 1, dtype=f64, device=dev)
    rows = torch.arange(n_rows, device=dev)
    chosen = torch.empty(n_rows, k, dtype=torch.long, device=dev)
    traj = torch.empty(n_rows, k, dtype=f64, device=dev)
    # flags checked once after the loop (no device sync per step): a non-finite kernel
    # column, and a pick that is unavailable or has a non-finite objective (a duplicate index)
    bad_column = torch.zeros((), dtype=torch.bool, device=dev)
    bad_pick = torch.zeros((), dtype=torch.bool, device=dev)
    for j in range(k):
        m = j + 1
        obj = ((1.0 + diversity) * (a_off + 2.0 * s) + a_diag + diag) / m**2 \
            - 2.0 * (r_sum + r) / m
        ok = available
        if lab_idx is not None and remaining is not None:
            ok = ok & (remaining[:, lab_idx] > 0)
        masked = obj.masked_fill(~ok, math.inf)
        best = torch.argmin(masked, dim=1)
        bad_pick |= ~(ok[rows, best] & torch.isfinite(masked[rows, best])).all()
        chosen[:, j] = best
        a_off += 2.0 * s[rows, best][:, None]
        a_diag += diag[rows, best][:, None]
        r_sum += r[rows, best][:, None]
        traj[:, j] = ((a_off + a_diag) / m**2 - 2.0 * r_sum / m)[:, 0] + const
        available[rows, best] = False
        if remaining is not None and lab_idx is not None:
            remaining[rows, lab_idx[best]] -= 1
        if j + 1 < k:
            col = column(best).to(f64)   # O(M) kernel evaluations per row
            bad_column |= ~torch.isfinite(col).all()
            s += col
    if bool(bad_column):
        raise _overflow(kernel_name, "non-finite kernel values between candidates")
    if bool(bad_pick) or not bool(torch.isfinite(traj).all()):
        raise _overflow(kernel_name, "the greedy objective is not finite")
    return chosen, traj


def _check_finite_inputs(r: torch.Tensor, diag: torch.Tensor, const: torch.Tensor,
                         kernel_name: str | None) -> None:
    """Raise the overflow InputError if the row means, ``K(c, c)`` or ``const`` are not
    finite."""
    for what, v in (("self-similarities K(c, c) of the candidates", diag),
                    ("mean kernel values to the targets", r),
                    ("self-similarity of the targets", const)):
        if not bool(torch.isfinite(v).all()):
            raise _overflow(kernel_name, f"{int((~torch.isfinite(v)).sum())} non-finite {what}")


def _overflow(kernel_name: str | None, what: str) -> InputError:
    """The InputError of a kernel that overflowed in greedy MMD (as :func:`mmd` says it)."""
    name = "the kernel" if kernel_name is None else f"kernel {kernel_name!r}"
    return InputError(f"{name} overflowed in greedy MMD ({what}); rescale the data, lower the "
                      "kernel scale or use float64")


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
        Weight ``lambda >= 0`` of the extra within-set kernel sum: the greedy step minimises
        ``MMD^2(S, T) + lambda (1/|S|^2) sum_{i != j in S} K(c_i, c_j)``; 0 gives the plain
        MMD objective (the reported trajectory is always the plain ``MMD^2``).
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
    k = check_k(k)
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
        landmarks = check_int(landmarks, "landmarks", 1)
    return greedy_mmd_on_tensors(c, t, k, kernel, lab, balance, check_diversity(diversity),
                                 seed, kernel_params, landmarks=landmarks)


def greedy_mmd_on_tensors(
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
        quotas = label_quotas(labels, k)             # checks the labels (check_labels)
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
        r, eps, _ = _nystrom_row_means(c, t, kern, landmarks, seed, const)
    else:
        # [C], O(|C||T|); float64 sums of runs of 16 entries (the objective needs no more)
        r = kernel_row_means(c, t, kern, presum=16)
    diag = kern.diag(c)                                  # [C]
    gram_c = kern.against(c)

    def column(best: torch.Tensor) -> torch.Tensor:
        return gram_c(c[best])                           # [1, C], O(|C| d)

    chosen, traj = greedy_mmd_batch(
        r[None], diag, torch.tensor([const], dtype=torch.float64, device=c.device), column, k,
        diversity, lab_idx, remaining, kern.name)
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
                       const: float) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Row means ``r_hat_c = <phi(c), P mu_T>`` ``[C]`` (float64) through ``m`` landmarks
    drawn from the targets, ``eps = ||mu_T - P mu_T||`` and the landmark rows ``[m]``.

    ``const`` is ``mean K_TT`` (:func:`icldistill.core.mmd.self_kernel_mean`).

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
    for sl in row_chunks(c.shape[0], m):                                 # O(C m d)
        r[sl] = kern(c[sl], lm).to(f64) @ w
    return r, math.sqrt(eps2), pick


def landmark_row_means(
    candidates: Any,
    targets: Any,
    landmarks: int,
    kernel: str | Kernel = "gaussian",
    *,
    seed: int = 0,
    **kernel_params: Any,
) -> LandmarkRowMeans:
    """Approximate ``r_c = mean_t K(c, t)`` of every candidate through ``m`` landmarks, with a
    certified error (the Nyström step behind ``greedy_mmd(..., landmarks=m)``).

    ``m = landmarks`` targets drawn at random (seeded) stand in for all ``T`` of them:
    ``r_hat_c = <phi(c), P mu_T>`` with ``P`` the projection on the landmarks' features. The
    error is bounded for every candidate by ``|r_hat_c - r_c| <= sqrt(K(c, c)) eps`` with
    ``eps = ||mu_T - P mu_T||`` (``LandmarkRowMeans.approx_error``), and more landmarks with the
    same seed never give a larger ``eps``.

    Parameters
    ----------
    candidates : array-like ``[C, d]``
        Points whose row means are wanted.
    targets : array-like ``[T, d]``
        The sample ``T`` whose kernel mean embedding ``mu_T`` is approximated.
    landmarks : int
        Number of landmarks ``m >= 1`` (``m >= T`` uses every target: ``eps`` is ~0).
    kernel : str or Kernel
        Kernel; bandwidth defaults to the median heuristic on the pooled candidates and
        targets (seeded by ``seed``), as in :func:`greedy_mmd`.
    seed : int
        Seed of the landmark draw and of the median-heuristic subsample.
    **kernel_params
        Kernel parameters, e.g. ``bandwidth``.

    Returns
    -------
    LandmarkRowMeans
        ``row_means`` ``[C]``, ``approx_error``, the landmark rows ``[m]`` and the kernel.

    Notes
    -----
    Cost: ``O((C + T) m d + m^3)`` instead of ``O(C T d)`` for the exact row means
    (:func:`icldistill.core.mmd.kernel_row_means`), plus ``O(T^2 d)`` for ``mean K_TT``.
    """
    c, t = check_pair(candidates, targets, ("candidates", "targets"))
    m = check_int(landmarks, "landmarks", 1)
    kern = make_kernel(kernel, c, t, seed=seed, **kernel_params)
    kern.check_input_dim(c.shape[1])
    r, eps, pick = _nystrom_row_means(c, t, kern, m, seed, self_kernel_mean(t, kern))
    return LandmarkRowMeans(r.cpu().numpy(), eps, pick.cpu().numpy().astype(np.int64), kern)


def select_mmd(
    candidates: Any,
    targets: Any,
    k: int,
    kernel: str | Kernel = "gaussian",
    **kernel_params: Any,
) -> GreedySelection:
    """The candidates chosen by :func:`greedy_mmd`, as a result that behaves as their indices.

    Accepts the same keyword arguments as :func:`greedy_mmd` (``labels``, ``balance``,
    ``diversity``, ``seed``, ``landmarks``, kernel parameters) and returns the same
    :class:`GreedySelection`.

    Returns
    -------
    GreedySelection
        Behaves as the index array ``[k]`` (int64, selection order): ``X[select_mmd(X, Y, 8)]``
        picks the rows, ``np.asarray(res)`` is the array (see the notes of
        :class:`GreedySelection`); ``res.mmd2`` and the other fields come along.

    Notes
    -----
    In 0.1 this returned the bare ``numpy.ndarray`` of indices; use ``.indices`` where an
    ``ndarray`` itself is needed.
    """
    return greedy_mmd(candidates, targets, k, kernel, **kernel_params)
