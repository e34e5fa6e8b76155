"""Maximum mean discrepancy: estimators and the permutation test (SPEC §3).

This is the package's one MMD routine; everything that needs an MMD (bias of the distilled
weights, demonstration selection, evaluation) calls it.

Estimators of ``MMD^2(P, Q)`` from samples ``X ~ P`` (``n`` rows) and ``Y ~ Q`` (``m`` rows):

- ``"biased"``: the V-statistic ``mean K_XX + mean K_YY - 2 mean K_XY`` (diagonals included);
- ``"unbiased"``: the U-statistic, diagonals of ``K_XX`` and ``K_YY`` removed (can be < 0);
- ``"linear"``: Gretton et al.'s linear-time estimator over ``floor(min(n, m) / 2)`` disjoint
  pairs, ``O(n)`` kernel evaluations.

The quadratic estimators are computed tile by tile, so no ``n x m`` matrix is ever held:
``n = m = 50,000`` rows of dimension 384 in float32 need a few hundred MB. Sums are accumulated in
float64 whatever the input precision.

The permutation test (:func:`mmd_test`) writes the biased statistic of every permutation as the
quadratic form ``w^T K w`` of the pooled Gram matrix ``K`` with a signed weight vector ``w``
(``1/n`` on the rows labelled X, ``-1/m`` on those labelled Y). All ``B`` permutations are one
matrix product ``K @ W`` with ``W = [w_0, w_1, ..., w_B]`` (``[n + m, B + 1]``): one Gram matrix,
no Python loop per permutation. When the pooled Gram matrix does not fit in ``max_memory`` bytes
it is streamed in row blocks, each block computed once and used for all permutations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from icldistill.core.kernels import Kernel, _upcast, make_kernel
from icldistill.core.results import Result
from icldistill.core.validation import InputError, check_pair, check_seed

__all__ = [
    "KernelSums",
    "MMDTestResult",
    "kernel_row_means",
    "kernel_sums",
    "mmd",
    "mmd2_from_sums",
    "mmd_test",
    "permutation_splits",
    "self_kernel_mean",
]

Estimator = Literal["biased", "unbiased", "linear"]
_ESTIMATORS = ("biased", "unbiased", "linear")

#: Largest number of Gram entries computed at once by the tiled routines (64 MB in float32).
DEFAULT_TILE_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class KernelSums(Result):
    """Sufficient statistics of the quadratic MMD estimators.

    Attributes
    ----------
    sum_xx, sum_yy, sum_xy : float
        Sums of all entries of ``K_XX`` ``[n, n]``, ``K_YY`` ``[m, m]`` and ``K_XY`` ``[n, m]``.
    trace_xx, trace_yy : float
        Sums of the diagonals of ``K_XX`` and ``K_YY``.
    n, m : int
        Sample sizes.
    """

    sum_xx: float
    sum_yy: float
    sum_xy: float
    trace_xx: float
    trace_yy: float
    n: int
    m: int


def _positive_int(value: Any, name: str) -> int:
    """``value`` as an int ``>= 1``; bools, fractions, NaN and text raise InputError."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _tile(n: int, tile_elements: int) -> int:
    """Side of a square tile holding at most ``tile_elements`` entries (an int ``>= 1``)."""
    tile_elements = _positive_int(tile_elements, "tile_elements")
    return max(1, min(n, math.isqrt(tile_elements)))


def _sym_sum(x: torch.Tensor, kernel: Kernel, tile_elements: int) -> tuple[float, float]:
    """Sum of all entries and of the diagonal of ``k(x, x)``, upper tiles only."""
    n = x.shape[0]
    b = _tile(n, tile_elements)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    trace = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, n, b):
        xi = x[i : i + b]
        kii = kernel(xi, xi)
        total += kii.sum(dtype=torch.float64)
        trace += torch.diagonal(kii).sum(dtype=torch.float64)
        for j in range(i + b, n, b):
            total += 2.0 * kernel(xi, x[j : j + b]).sum(dtype=torch.float64)
    return float(total), float(trace)


def _cross_sum(x: torch.Tensor, y: torch.Tensor, kernel: Kernel, tile_elements: int) -> float:
    b = _tile(max(x.shape[0], y.shape[0]), tile_elements)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], b):
        xi = x[i : i + b]
        for j in range(0, y.shape[0], b):
            total += kernel(xi, y[j : j + b]).sum(dtype=torch.float64)
    return float(total)


def kernel_row_means(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Kernel,
    *,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
    presum: int = 1,
) -> torch.Tensor:
    """``mean_j k(x_i, y_j)`` for every row of ``x``, float64 ``[n]``, computed tile by tile.

    Every Gram entry is accumulated in float64 (``presum=1``, the default). With ``presum=p >
    1``, runs of ``p`` consecutive entries of a row are first summed in the Gram's own dtype
    (adding at most ``(p - 1) eps`` relative error to these sums of non-negative entries;
    ``eps = 6e-8`` for float32) and only the run sums are accumulated in float64, which
    roughly halves the cost of the row sums on CPU (converting every entry to float64 is the
    slow part). The greedy selectors use ``presum=16``; the MMD estimators always accumulate
    every entry in float64. Half-precision rows (float16, bfloat16) are upcast to float32
    before the kernel is evaluated (no exponential in half precision).

    Raises
    ------
    InputError
        If ``y`` has no rows, ``tile_elements`` is not an integer ``>= 1``, or the kernel
        overflowed (a non-finite mean).
    """
    x, y = _upcast(x), _upcast(y)
    if y.shape[0] == 0:
        raise InputError("kernel_row_means: y is empty; at least 1 row is needed")
    b = _tile(max(x.shape[0], y.shape[0]), tile_elements)
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for j in range(0, y.shape[0], b):
        yj = y[j : j + b]
        for i in range(0, x.shape[0], b):
            out[i : i + b] += _row_sums(kernel(x[i : i + b], yj), presum)
    out /= y.shape[0]
    if not bool(torch.isfinite(out).all()):
        raise InputError(f"kernel {kernel.name!r} overflowed (infinite Gram entries)")
    return out


def _row_sums(gram: torch.Tensor, presum: int) -> torch.Tensor:
    """Row sums of ``gram`` in float64, after summing runs of ``presum`` entries in its dtype."""
    f64 = torch.float64
    width = gram.shape[1] - gram.shape[1] % presum
    if presum <= 1 or gram.dtype == f64 or width == 0:
        return gram.sum(1, dtype=f64)
    out = gram[:, :width].reshape(gram.shape[0], -1, presum).sum(-1).sum(1, dtype=f64)
    if width < gram.shape[1]:
        out += gram[:, width:].sum(1, dtype=f64)
    return out


def self_kernel_mean(
    x: torch.Tensor, kernel: Kernel, *, tile_elements: int = DEFAULT_TILE_ELEMENTS
) -> float:
    """``mean_{i,j} k(x_i, x_j)`` (diagonal included), tile by tile, upper tiles only.

    Half-precision rows (float16, bfloat16) are upcast to float32 before the kernel is
    evaluated (no exponential in half precision).

    Raises
    ------
    InputError
        If ``x`` has no rows, ``tile_elements`` is not an integer ``>= 1``, or the kernel
        overflowed.
    """
    x = _upcast(x)
    if x.shape[0] == 0:
        raise InputError("self_kernel_mean: x is empty; at least 1 row is needed")
    total, _ = _sym_sum(x, kernel, tile_elements)
    if not math.isfinite(total):
        raise InputError(f"kernel {kernel.name!r} overflowed (infinite Gram entries)")
    return total / x.shape[0] ** 2


def kernel_sums(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Kernel,
    *,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
) -> KernelSums:
    """Tile-wise sums of the three Gram matrices (never materialised whole).

    ``x`` ``[n, d]`` and ``y`` ``[m, d]`` must already be validated tensors of one dtype
    (half precision is upcast to float32 before the kernel is evaluated).
    """
    x, y = _upcast(x), _upcast(y)
    sxx, txx = _sym_sum(x, kernel, tile_elements)
    syy, tyy = _sym_sum(y, kernel, tile_elements)
    sxy = _cross_sum(x, y, kernel, tile_elements)
    sums = KernelSums(sxx, syy, sxy, txx, tyy, x.shape[0], y.shape[0])
    if not all(math.isfinite(v) for v in (sxx, syy, sxy)):
        raise InputError(f"kernel {kernel.name!r} overflowed (infinite Gram entries); rescale the"
                         " data, lower the kernel scale or use float64")
    return sums


def mmd2_from_sums(sums: KernelSums, estimator: Estimator = "unbiased") -> float:
    """Biased (V) or unbiased (U) ``MMD^2`` from :class:`KernelSums`."""
    n, m = sums.n, sums.m
    if estimator == "biased":
        return sums.sum_xx / n**2 + sums.sum_yy / m**2 - 2.0 * sums.sum_xy / (n * m)
    if estimator == "unbiased":
        if n < 2 or m < 2:
            raise InputError(f"the unbiased estimator needs at least 2 rows in each sample, got "
                             f"n={n}, m={m}")
        return ((sums.sum_xx - sums.trace_xx) / (n * (n - 1))
                + (sums.sum_yy - sums.trace_yy) / (m * (m - 1))
                - 2.0 * sums.sum_xy / (n * m))
    raise InputError(f"unknown estimator {estimator!r}; choose one of {', '.join(_ESTIMATORS)}")


def _linear_mmd2(x: torch.Tensor, y: torch.Tensor, kernel: Kernel) -> float:
    pairs = min(x.shape[0], y.shape[0]) // 2
    if pairs < 1:
        raise InputError("the linear-time estimator needs at least 2 rows in each sample")
    x1, x2 = x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2]
    y1, y2 = y[0 : 2 * pairs : 2], y[1 : 2 * pairs : 2]
    h = kernel.paired(x1, x2) + kernel.paired(y1, y2) - kernel.paired(x1, y2) \
        - kernel.paired(x2, y1)
    value = float(h.mean(dtype=torch.float64))
    if not math.isfinite(value):
        raise InputError(f"kernel {kernel.name!r} overflowed (infinite values)")
    return value


def _resolve(
    x: Any, y: Any, kernel: str | Kernel, min_rows: int, seed: int, kernel_params: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, Kernel]:
    xt, yt = check_pair(x, y, ("x", "y"), min_rows=min_rows)
    seed = check_seed(seed)
    k = make_kernel(kernel, xt, yt, seed=seed, **kernel_params)
    k.check_input_dim(xt.shape[1])
    return xt, yt, k


def mmd(
    x: Any,
    y: Any,
    kernel: str | Kernel = "gaussian",
    estimator: Estimator = "unbiased",
    *,
    squared: bool = True,
    seed: int = 0,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
    **kernel_params: Any,
) -> float:
    """Estimate the (squared) maximum mean discrepancy between two samples.

    Parameters
    ----------
    x : array-like ``[n, d]``
        Sample from ``P`` (numpy array or tensor, float32/float64, any device).
    y : array-like ``[m, d]``
        Sample from ``Q``.
    kernel : str or Kernel
        Kernel name (see :mod:`icldistill.core.kernels`) or a resolved :class:`~icldistill.Kernel`.
    estimator : {"unbiased", "biased", "linear"}
        U-statistic, V-statistic, or linear-time estimator.
    squared : bool
        Return ``MMD^2`` (default). With ``False`` return ``sqrt(max(MMD^2, 0))``.
    seed : int
        Seed of the median-heuristic subsample (used only when a bandwidth must be chosen); an
        integer in ``[0, 2**63 - 1]`` (:func:`~icldistill.core.validation.check_seed`: bools,
        fractions and negative numbers raise :class:`InputError`, even when it is unused).
    tile_elements : int
        Largest Gram tile computed at once (memory knob); an integer ``>= 1``.
    **kernel_params
        Kernel parameters, e.g. ``bandwidth=2.0`` (default: median heuristic), ``scale=...``.

    Returns
    -------
    float
        The estimate of ``MMD^2`` (or ``MMD`` with ``squared=False``).

    Raises
    ------
    InputError
        Empty samples, a 1-row sample for an estimator that needs 2, a dimension mismatch,
        NaN/inf, an unknown kernel or estimator, a non-positive bandwidth, kernel overflow,
        ``tile_elements`` not an integer ``>= 1``, ``seed`` not a valid seed.
    """
    if estimator not in _ESTIMATORS:
        raise InputError(f"unknown estimator {estimator!r}; choose one of {', '.join(_ESTIMATORS)}")
    min_rows = 1 if estimator == "biased" else 2
    xt, yt, k = _resolve(x, y, kernel, min_rows, seed, kernel_params)
    _positive_int(tile_elements, "tile_elements")
    if estimator == "linear":
        value = _linear_mmd2(xt, yt, k)
    else:
        value = mmd2_from_sums(kernel_sums(xt, yt, k, tile_elements=tile_elements), estimator)
    return value if squared else math.sqrt(max(value, 0.0))


@dataclass(frozen=True)
class MMDTestResult(Result):
    """Outcome of :func:`mmd_test`.

    Attributes
    ----------
    statistic : float
        Observed biased ``MMD^2`` (V-statistic).
    p_value : float
        ``(1 + #{b : T_b >= T_obs - tol}) / (1 + B)``, ``tol`` counting statistics that tie
        the observed one up to rounding (see :func:`mmd_test`).
    null_distribution : numpy.ndarray ``[B]``
        The statistic under each of the ``B`` permutations.
    permutations : int
        ``B``.
    kernel : Kernel
        The kernel with resolved parameters (bandwidth included).
    n_x, n_y : int
        Sample sizes.
    sums : KernelSums
        Exact float64 Gram sums of the observed split (other estimators derive from them).
    """

    statistic: float
    p_value: float
    null_distribution: np.ndarray
    permutations: int
    kernel: Kernel
    n_x: int
    n_y: int
    sums: KernelSums

    @property
    def unbiased_statistic(self) -> float | None:
        """Unbiased ``MMD^2`` (U-statistic) of the observed samples; ``None`` if n or m is 1."""
        if self.n_x < 2 or self.n_y < 2:
            return None
        return mmd2_from_sums(self.sums, "unbiased")

    @property
    def bandwidth(self) -> float | None:
        """The kernel bandwidth used (``None`` for kernels without one)."""
        return self.kernel.bandwidth


def _permutation_weights(
    n: int, m: int, permutations: int, seed: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``W`` ``[n + m, B + 1]``: column 0 the observed split, then one column per permutation."""
    total = n + m
    w0 = torch.cat([torch.full((n,), 1.0 / n, dtype=torch.float64),
                    torch.full((m,), -1.0 / m, dtype=torch.float64)])
    g = torch.Generator().manual_seed(int(seed))
    w = torch.empty(total, permutations + 1, dtype=dtype)
    w[:, 0] = w0.to(dtype)
    chunk = max(1, (1 << 22) // total)
    for start in range(0, permutations, chunk):
        stop = min(permutations, start + chunk)
        # float32 draws whatever torch's default dtype (that default changed the splits; float32
        # is the default, so results made under it are unchanged)
        perms = torch.argsort(torch.rand(stop - start, total, generator=g, dtype=torch.float32),
                              dim=1)
        w[:, 1 + start : 1 + stop] = w0[perms].T.to(dtype)
    return w.to(device)


def permutation_splits(n: int, m: int, permutations: int, *, seed: int = 0) -> np.ndarray:
    """The splits behind :func:`mmd_test`'s null distribution, for inspection or reuse.

    ``mmd_test(x, y, permutations=B, seed=s)`` pools ``z = [x; y]`` and, for permutation
    ``b``, computes the biased MMD² between the rows ``z[splits[b]]`` and ``z[~splits[b]]``
    (its ``null_distribution[b]``). The draws depend only on ``n``, ``m``, ``B`` and the seed.

    Parameters
    ----------
    n, m : int
        Sizes of the X and Y samples (``>= 1``).
    permutations : int
        ``B >= 1``.
    seed : int
        An integer in ``[0, 2**63 - 1]`` (as :func:`mmd_test`'s).

    Returns
    -------
    ndarray of bool ``[B, n + m]``
        ``True`` where a pooled row goes to the permuted X sample (``n`` per row).
    """
    n, m, permutations = (_positive_int(v, name) for name, v in
                          (("n", n), ("m", m), ("permutations", permutations)))
    seed = check_seed(seed)
    w = _permutation_weights(n, m, permutations, seed, torch.float64,
                             torch.device("cpu"))
    return (w[:, 1:] > 0).T.numpy()


def _quadratic_forms(
    z: torch.Tensor, n: int, w: torch.Tensor, kernel: Kernel, max_memory: int
) -> tuple[torch.Tensor, KernelSums, float]:
    """``diag(W^T K W)`` ``[B + 1]`` (float64) for the pooled Gram ``K = k(z, z)``, the exact
    float64 :class:`KernelSums` of the observed split and ``max |K_ij|``.

    The first ``n`` rows of ``z`` are the X sample. Each row block of ``K`` is computed once and
    also contributes to the sums and to the largest absolute entry.
    """
    total = z.shape[0]
    item = z.element_size()
    rows = total if total * total * item <= max_memory else max(1, max_memory // (2 * total * item))
    out = torch.zeros(w.shape[1], dtype=torch.float64, device=z.device)
    acc = torch.zeros(5, dtype=torch.float64, device=z.device)  # xx, yy, xy, tr_x, tr_y
    top = torch.zeros((), dtype=torch.float64, device=z.device)  # max |K_ij|
    f64 = torch.float64
    for i in range(0, total, rows):
        block = kernel(z[i : i + rows], z)
        out += (w[i : i + rows] * (block @ w)).sum(0, dtype=f64)
        low, high = torch.aminmax(block)
        top = torch.maximum(top, torch.maximum(-low, high).to(f64))
        nx = max(0, min(n - i, block.shape[0]))  # rows of this block that belong to X
        diag = torch.diagonal(block, offset=i)
        acc[0] += block[:nx, :n].sum(dtype=f64)
        acc[2] += block[:nx, n:].sum(dtype=f64)
        acc[1] += block[nx:, n:].sum(dtype=f64)
        acc[3] += diag[:nx].sum(dtype=f64)
        acc[4] += diag[nx:].sum(dtype=f64)
    sxx, syy, sxy, tx, ty = (float(v) for v in acc)
    return out, KernelSums(sxx, syy, sxy, tx, ty, n, total - n), float(top)


#: Relative tolerance of the ties of :func:`mmd_test` in float64 (as ``sign_flip_test``'s).
_TIE_RTOL = 1e-9


def _tie_tolerance(max_entry: float, dtype: torch.dtype) -> float:
    """How far below the observed statistic a permuted one still counts as a tie.

    Every statistic ``w^T K w`` has ``sum |w_i| = 2``, so its terms add up in absolute value to
    at most ``4 max |K_ij|``: the scale of its rounding error, the same for every permutation.
    Equal statistics summed in another order differ by a few units of the working precision
    times that scale; the tolerance is ``max(_TIE_RTOL, 16 eps) * 4 max |K_ij|`` (``eps`` of
    the Gram's dtype: ``1e-9`` relative in float64, about ``1.9e-6`` in float32, whose matrix
    products round that much). It scales with the kernel, so ``c K`` gives the same p-value.
    """
    return max(_TIE_RTOL, 16.0 * torch.finfo(dtype).eps) * 4.0 * max_entry


def mmd_test(
    x: Any,
    y: Any,
    kernel: str | Kernel = "gaussian",
    permutations: int = 1000,
    seed: int = 0,
    *,
    max_memory: int = 2 << 30,
    **kernel_params: Any,
) -> MMDTestResult:
    """Two-sample permutation test of ``H0: P = Q`` with the biased ``MMD^2`` statistic.

    Parameters
    ----------
    x : array-like ``[n, d]``
        Sample from ``P``.
    y : array-like ``[m, d]``
        Sample from ``Q``.
    kernel : str or Kernel
        Kernel name or resolved :class:`~icldistill.Kernel`; bandwidths default to the median
        heuristic on the pooled sample.
    permutations : int
        Number ``B`` of random relabellings (an integer ``>= 1``).
    seed : int
        Seed of the permutations (and of the median-heuristic subsample). Same seed, same result.
        An integer in ``[0, 2**63 - 1]``; bools, fractions (``2.5`` is not read as 2) and
        negative numbers raise :class:`InputError`.
    max_memory : int
        Bytes the pooled Gram matrix may take; above that it is streamed in row blocks.
    **kernel_params
        Kernel parameters, e.g. ``bandwidth=1.5``.

    Returns
    -------
    MMDTestResult
        ``.statistic`` (biased ``MMD^2``), ``.p_value``, ``.null_distribution`` and more.

    Notes
    -----
    ``p = (1 + #{b : T_b >= T_obs - tol}) / (1 + B)``. A permuted statistic equal to the
    observed one (frequent on discrete data: every relabelling that moves the same kinds of
    rows) is computed in another summation order and can come out a rounding error below it;
    the tolerance ``tol`` counts it as the tie it is. ``tol`` is relative to the scale of the
    Gram entries, ``max(1e-9, 16 eps) * 4 max |K_ij|`` (``eps`` of the working dtype), so the
    p-value does not change when the kernel is multiplied by a constant, and identical samples
    (e.g. all rows zero, every statistic 0 up to rounding) give ``p = 1``. (Before, ties lost
    to rounding made p-values on discrete data too small.)

    Cost: one pooled Gram matrix (``(n+m)^2 d``) and one matrix product with the
    ``[n + m, B + 1]`` permutation-weight matrix (``(n+m)^2 B``).
    """
    permutations = _positive_int(permutations, "permutations")
    xt, yt, k = _resolve(x, y, kernel, 1, seed, kernel_params)
    n, m = xt.shape[0], yt.shape[0]
    z = torch.cat([xt, yt])
    w = _permutation_weights(n, m, permutations, seed, z.dtype, z.device)
    stats, sums, max_entry = _quadratic_forms(z, n, w, k, max_memory)
    if not bool(torch.isfinite(stats).all()) or not math.isfinite(max_entry):
        raise InputError(f"kernel {k.name!r} overflowed (infinite Gram entries); rescale the data,"
                         " lower the kernel scale or use float64")
    observed, null = stats[0], stats[1:]
    tol = _tie_tolerance(max_entry, z.dtype)
    p_value = (1.0 + float((null >= observed - tol).sum())) / (1.0 + permutations)
    statistic = mmd2_from_sums(sums, "biased")
    return MMDTestResult(
        statistic=statistic,
        p_value=p_value,
        null_distribution=null.cpu().numpy(),
        permutations=permutations,
        kernel=k,
        n_x=n,
        n_y=m,
        sums=sums,
    )
