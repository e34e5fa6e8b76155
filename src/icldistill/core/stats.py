"""Paired statistics for comparing demonstration selectors on the same test items.

Every selector of an evaluation grid scores the same test items of a task in the same order, so
two selectors are compared *paired*: per item, the difference of their correctness
``d_i = c_sel,i - c_base,i`` (in ``{-1, 0, 1}``, or fractional when a randomised selector's
correctness is averaged over its seeds). Paired comparisons remove the item difficulty shared by
both selectors, which dominates the variance of two independent accuracies.

- :func:`mcnemar_exact` — exact two-sided McNemar test on the discordant counts ``b, c``;
- :func:`sign_flip_test` — paired randomization test of ``mean(d) = 0`` (exact McNemar when
  ``d`` is in ``{-1, 0, 1}``; otherwise exact enumeration of few differences, the exact null
  distribution when the differences lie on a small lattice — seed averages do — or Monte
  Carlo);
- :func:`paired_bootstrap_ci` — percentile bootstrap interval of ``mean(d)`` over items;
- :func:`stratified_mean`, :func:`stratified_bootstrap_ci`, :func:`stratified_sign_flip_test` —
  the same for the unweighted mean over tasks of the per-task mean differences (items resampled
  or sign-flipped within their task; the sign-flip p-value is exact on a lattice, as above);
- :func:`holm` — Holm-Bonferroni adjusted p-values;
- :func:`within_item_concordance` — whether, within each test item, the conditions that got
  it right had a lower score (e.g. the demonstrations' MMD to the query) than those that got
  it wrong, with an item-bootstrap interval and the item-bootstrap test of 0.5 that goes
  with it;
- :func:`paired_comparisons` — all of it on harness results: every selector against baselines
  (kNN and random by default), per task and averaged over tasks, Holm-corrected per
  ``(model, k)``; on accuracy (the tests above) or on macro-F1 (paired bootstrap interval,
  paired randomisation test that swaps the two selectors' predictions item by item).

Only numpy is used (no scipy): binomial tails are summed exactly with integer arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from icldistill.core.metrics import bootstrap_values
from icldistill.core.results import Result
from icldistill.core.validation import InputError, check_int

__all__ = [
    "PAIRED_METRICS",
    "Concordance",
    "MeanCI",
    "PairedComparison",
    "check_pairs",
    "holm",
    "majority_shares",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "paired_comparisons",
    "sign_flip_test",
    "spearman",
    "stratified_bootstrap_ci",
    "stratified_mean",
    "stratified_sign_flip_test",
    "within_item_concordance",
]

#: Largest number of nonzero differences for which :func:`sign_flip_test` enumerates all
#: ``2^m`` sign vectors (above it, Monte Carlo).
EXACT_MAX = 20
#: Largest common denominator, and largest support ``sum_i v_i`` of the integer statistic,
#: for which the sign-flip null distribution is computed exactly on a lattice (above, Monte
#: Carlo); see :func:`_lattice`.
LATTICE_DENOMINATOR_MAX = 10_000
LATTICE_SUPPORT_MAX = 200_000
#: Largest number of array entries the exact lattice convolution may add (about a second);
#: above it, Monte Carlo.
LATTICE_COST_MAX = 300_000_000
#: Entries of one random block (rows x items) drawn at a time; bounds the memory of the
#: vectorised bootstrap and sign-flip draws (~32 MB of float64).
_BLOCK = 4_000_000
#: Above this many discordant pairs McNemar's binomial tail is summed in log space.
_EXACT_INT_MAX = 5000


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def check_pairs(pairs: Any) -> list[tuple[str, str]]:
    """Validate ``(selector, baseline)`` label pairs for :func:`paired_comparisons`.

    Parameters
    ----------
    pairs : sequence of 2-sequences of str
        The pairs, e.g. ``[("vote-k", "mmd"), ("mmd-joint", "mmd")]``.

    Returns
    -------
    list of (str, str)
        The pairs as tuples, in order.

    Raises
    ------
    InputError
        An item that is not a pair of two strings, a selector paired with itself, or a pair
        given twice (a pair and its mirror are one comparison), naming it.
    """
    out: list[tuple[str, str]] = []
    if isinstance(pairs, str) or not isinstance(pairs, Sequence):
        raise InputError(f"pairs must be a sequence of (selector, baseline) label pairs, got "
                         f"{pairs!r}")
    for p in pairs:
        if (isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2
                or not all(isinstance(x, str) for x in p)):
            raise InputError(f"pairs must be (selector, baseline) label pairs, got {p!r}")
        a, b = p
        if a == b:
            raise InputError(f"pairs: {a!r} is paired with itself")
        if (a, b) in out or (b, a) in out:
            raise InputError(f"pairs: {a!r} vs {b!r} is given twice (a pair and its mirror "
                             "are one comparison)")
        out.append((a, b))
    return out


def _diffs(d: Any, name: str = "d") -> np.ndarray:
    """``d`` as a finite, non-empty 1-D float64 array."""
    try:
        a = np.asarray(d, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: expected numbers ({exc})") from exc
    if a.ndim != 1:
        raise InputError(f"{name}: expected a 1-D array of per-item differences, got shape "
                         f"{a.shape}")
    if a.size == 0:
        raise InputError(f"{name}: no items")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: contains NaN or infinite values")
    return a


def _numbers(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 array (any shape), or :class:`InputError` naming ``name``."""
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: expected numbers ({exc})") from exc


def _check_level(level: float) -> float:
    level = float(level)
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    return level


def _check_seed(seed: Any) -> int:
    """``seed`` as a non-negative int (numpy's generators refuse anything else)."""
    return check_int(seed, "seed", 0)


def _tol(a: np.ndarray) -> float:
    """Tolerance for ``|T*| >= |T|`` ties of sums of ``a`` (float rounding of equal sums).

    Relative to the data's scale, ``1e-9 sum |a|``, so the p-value does not change when ``a`` is
    multiplied by a positive constant (an absolute floor would make every sum of tiny
    differences a tie).
    """
    return 1e-9 * float(np.abs(a).sum())


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for the discordant counts ``b`` and ``c``.

    Under the null hypothesis (both selectors equally accurate) each of the ``n = b + c``
    discordant items favours either side with probability 1/2, so ``b ~ Binomial(n, 1/2)``
    and ``p = min(1, 2 P[X <= min(b, c)])``; ``b = c = 0`` gives 1.

    Parameters
    ----------
    b, c : int
        Items only the first / only the second selector got right (non-negative).

    Returns
    -------
    float
        The p-value in ``[0, 1]`` (0 only where the tail underflows float64). The tail is an
        exact ratio of integers, correctly rounded, for ``n <= 5000``; a log-space sum of
        ``lgamma`` terms beyond.
    """
    b = check_int(b, "b", 0)
    c = check_int(c, "c", 0)
    n = b + c
    m = min(b, c)
    if n == 0 or b == c:
        return 1.0
    if n <= _EXACT_INT_MAX:
        tail = 0
        term = 1                      # C(n, 0)
        for i in range(m + 1):
            tail += term
            term = term * (n - i) // (i + 1)
        return min(1.0, (2 * tail) / (1 << n))
    logs = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                     for i in range(m + 1)])
    top = logs.max()
    log_tail = top + math.log(float(np.exp(logs - top).sum())) - n * math.log(2.0)
    return min(1.0, 2.0 * math.exp(log_tail))


def _signs_exact(a: np.ndarray) -> float:
    """Exact sign-flip p-value over all ``2^m`` sign vectors of ``a`` ``[m]`` (chunked)."""
    m = a.size
    obs = abs(float(a.sum()))
    tol = _tol(a)
    total = 1 << m
    count = 0
    bits = np.arange(m, dtype=np.int64)
    step = max(1, _BLOCK // max(1, m))
    for start in range(0, total, step):
        codes = np.arange(start, min(total, start + step), dtype=np.int64)
        signs = 1.0 - 2.0 * ((codes[:, None] >> bits[None, :]) & 1)      # [chunk, m]
        count += int(np.count_nonzero(np.abs(signs @ a) >= obs - tol))
    return count / total


def _lattice(parts: Sequence[np.ndarray], weights: Sequence[float]
             ) -> tuple[list[tuple[int, int]], int] | None:
    """The weighted differences ``w_t a_i`` as integers ``v_i = q w_t a_i / M`` on a common
    lattice, as :func:`_lattice_p` takes them (the groups ``(|v|, count)`` of the nonzero
    ``v_i``, the largest first, and the observed ``|sum_i v_i|``); or ``None`` when no
    denominator ``q <= LATTICE_DENOMINATOR_MAX`` puts every value within ``1e-9`` of an
    integer, when ``sum |v_i|`` exceeds ``LATTICE_SUPPORT_MAX``, or when the convolution would
    add more than ``LATTICE_COST_MAX`` entries.

    ``M = max_{t,i} |w_t a_i|`` makes the lattice scale-free: the values searched are in
    ``[-1, 1]``, so ``a`` and ``c a`` (``c > 0``) give the same lattice and the same p-value.
    Differences in ``[-1, 1]`` on a lattice ``1/q`` (seed averages of correctness) keep a
    denominator ``<= q`` after the division. The sign-flip statistic
    ``|sum_t w_t sum_i s_i a_i|`` is then ``|sum_i s_i v_i| M / q``, so its null distribution is
    that of an integer sum.
    """
    top = max(float(np.abs(a).max()) * w for a, w in zip(parts, weights, strict=True)
              if a.size)
    if not top > 0:
        return None
    scaled = [a * (w / top) for a, w in zip(parts, weights, strict=True)]
    q = 1
    for x in np.unique(np.abs(np.concatenate(scaled))):
        frac = Fraction(float(x)).limit_denominator(LATTICE_DENOMINATOR_MAX)
        if abs(float(frac) - x) > 1e-9 * max(1.0, float(x)):
            return None
        q = math.lcm(q, frac.denominator)
        if q > LATTICE_DENOMINATOR_MAX:
            return None
    ints = [np.rint(x * q) for x in scaled]
    if any(np.any(np.abs(v - x * q) > 1e-6) for v, x in zip(ints, scaled, strict=True)):
        return None
    if sum(float(np.abs(v).sum()) for v in ints) > LATTICE_SUPPORT_MAX:
        return None
    v = np.concatenate(ints).astype(np.int64)
    values, counts = np.unique(np.abs(v[v != 0]), return_counts=True)
    # the largest group first: it is convolved while the support is still a point
    groups = sorted(zip(values.tolist(), counts.tolist(), strict=True), key=lambda g: -g[1])
    if _lattice_cost(groups) > LATTICE_COST_MAX:
        return None
    return groups, abs(int(v.sum()))


def _lattice_cost(groups: Sequence[tuple[int, int]]) -> int:
    """Array entries :func:`_lattice_p` adds: ``sum_g (c_g + 1) (2 reach_g + 1)``."""
    cost = reach = 0
    for val, c in groups:
        cost += (c + 1) * (2 * reach + 1)
        reach += val * c
    return cost


def _lattice_p(groups: Sequence[tuple[int, int]], obs: int) -> float:
    """Exact ``P(|sum_i s_i v_i| >= obs)`` over independent fair signs ``s_i``, for integers
    ``v_i`` given as groups ``(|v|, count)`` (the sign-flip p-value on a lattice, with ``obs =
    |sum_i v_i|``; :func:`_lattice`).

    Items of equal ``|v|`` form a group whose flipped sum is ``|v| (2 J - c)`` with
    ``J ~ Binomial(c, 1/2)``; the groups' distributions (binomial weights from ``lgamma``) are
    convolved by shifted adds over the support ``[-sum |v|, sum |v|]``. Every term is positive,
    so tails keep full relative precision.
    """
    if not groups:
        return 1.0
    total = sum(val * c for val, c in groups)
    dist = np.zeros(2 * total + 1)
    dist[total] = 1.0                                   # index = value + total
    reach = 0                                           # current support [-reach, reach]
    for val, c in groups:
        logw = (math.lgamma(c + 1) - np.array([math.lgamma(i + 1) + math.lgamma(c - i + 1)
                                                for i in range(c + 1)]) - c * math.log(2.0))
        weight = np.exp(logw)
        new = np.zeros_like(dist)
        lo, hi = total - reach, total + reach + 1
        for j, wj in enumerate(weight.tolist()):
            shift = val * (2 * j - c)
            new[lo + shift:hi + shift] += wj * dist[lo:hi]
        dist = new
        reach += val * c
    grid = np.abs(np.arange(-total, total + 1))
    return float(min(1.0, dist[grid >= obs].sum()))


def sign_flip_test(d: Any, *, n_perm: int = 10_000, seed: int = 0) -> float:
    """Paired randomization (sign-flip) test of ``mean(d) = 0``, two-sided.

    Under the null hypothesis that the two selectors are exchangeable on every item, each
    per-item difference is as likely to have either sign; the statistic is ``|sum(d)|`` and the
    p-value the share of sign vectors ``s`` with ``|sum(s * d)| >= |sum(d)|``. Items with
    ``d = 0`` do not move the statistic and are dropped. The p-value does not depend on the
    scale of ``d`` (``d`` and ``c d``, ``c > 0``, give the same p-value: ties are judged
    relative to ``sum |d|`` and lattices after dividing by ``max |d|``). How it is computed:

    - every nonzero ``d`` of one magnitude, e.g. ``d`` in ``{-1, 0, 1}`` (both selectors scored
      once): the exact McNemar p-value :func:`mcnemar_exact` of ``b = #(d > 0)``,
      ``c = #(d < 0)`` — the sign-flip distribution of ``sum(d)`` is then a multiple of
      ``2 Binomial(b + c, 1/2) - (b + c)``, so the two tests are the same test;
    - fractional ``d`` (correctness averaged over seeds) with ``m <= 20`` nonzero values: exact
      enumeration of all ``2^m`` sign vectors;
    - fractional ``d`` on a lattice (every ``d_i / max |d|`` a multiple of ``1/q`` for a common
      ``q <= LATTICE_DENOMINATOR_MAX`` — true of every ``d`` in ``[-1, 1]`` whose values are
      multiples of ``1/q``, as seed averages are — and the integer support ``q sum |d_i| /
      max |d|`` at most ``LATTICE_SUPPORT_MAX``): the exact null distribution of that integer
      sum (binomial groups convolved);
    - otherwise Monte Carlo over ``n_perm`` seeded random sign vectors with the +1 correction,
      ``p = (1 + #{|T*| >= |T|}) / (n_perm + 1)`` (never 0, valid at any ``n_perm``).

    Parameters
    ----------
    d : array-like ``[n]``
        Per-item differences (finite).
    n_perm : int
        Random sign vectors of the Monte Carlo branch.
    seed : int
        Seed of the Monte Carlo branch (a non-negative integer).

    Returns
    -------
    float
        The two-sided p-value in ``[0, 1]`` (0 only where an exact tail underflows float64,
        below ~1e-308; the Monte Carlo branch never gives 0).

    Raises
    ------
    InputError
        ``d`` is not a finite non-empty 1-D array, or ``n_perm`` or ``seed`` is not a valid
        integer.
    """
    a = _diffs(d)
    n_perm = check_int(n_perm, "n_perm")
    seed = _check_seed(seed)
    a = a[a != 0]
    if a.size == 0:
        return 1.0
    mag = np.abs(a)
    if np.all(mag == mag[0]):
        return mcnemar_exact(int(np.sum(a > 0)), int(np.sum(a < 0)))
    if a.size <= EXACT_MAX:
        return _signs_exact(a)
    lattice = _lattice([a], [1.0])
    if lattice is not None:
        return _lattice_p(*lattice)
    rng = np.random.default_rng(seed)
    return (1 + _flip_count(rng, [a], [1.0], n_perm)) / (n_perm + 1)


def _flip_count(rng: np.random.Generator, parts: Sequence[np.ndarray],
                weights: Sequence[float], n_perm: int) -> int:
    """``#{|sum_t w_t sum(s_t * a_t)| >= |sum_t w_t sum(a_t)|}`` over ``n_perm`` random sign
    vectors (independent signs per item), drawn in blocks."""
    obs = abs(sum(w * float(a.sum()) for a, w in zip(parts, weights, strict=True)))
    # relative to the data's scale (see _tol): multiplying every a by c > 0 keeps the count
    tol = 1e-9 * sum(w * float(np.abs(a).sum()) for a, w in zip(parts, weights, strict=True))
    width = max(1, sum(a.size for a in parts))
    step = max(1, _BLOCK // width)
    count = 0
    for start in range(0, n_perm, step):
        rows = min(step, n_perm - start)
        stat = np.zeros(rows)
        for a, w in zip(parts, weights, strict=True):
            if a.size:
                signs = 1.0 - 2.0 * rng.integers(0, 2, size=(rows, a.size), dtype=np.int8)
                stat += w * (signs @ a)
        count += int(np.count_nonzero(np.abs(stat) >= obs - tol))
    return count


@dataclass(frozen=True)
class MeanCI(Result):
    """A mean difference with its percentile-bootstrap confidence interval.

    Attributes
    ----------
    value : float
        The estimate (mean of ``d``, or mean over tasks of the per-task means).
    low, high : float
        Interval bounds (``low <= high``).
    level : float
        Confidence level.
    n : int
        Items the estimate is computed from (summed over tasks for a stratified estimate).
    """

    value: float
    low: float
    high: float
    level: float
    n: int


def _boot_means(rng: np.random.Generator, a: np.ndarray, n_boot: int) -> np.ndarray:
    """``[n_boot]`` means of ``a`` resampled with replacement (index arrays drawn in blocks of
    at most ``_BLOCK`` entries; one vectorised gather per block)."""
    step = max(1, _BLOCK // a.size)
    out = np.empty(n_boot)
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        idx = rng.integers(0, a.size, size=(rows, a.size))
        out[start:start + rows] = a[idx].mean(axis=1)
    return out


def _percentiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def paired_bootstrap_ci(d: Any, *, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> MeanCI:
    """Percentile bootstrap interval of ``mean(d)``, resampling items with replacement.

    Parameters
    ----------
    d : array-like ``[n]``
        Per-item paired differences.
    n_boot : int
        Bootstrap resamples; the ``[n_boot, n]`` index array is drawn and gathered in one
        vectorised operation (split into blocks only beyond 4 million entries).
    level : float
        Confidence level of the interval.
    seed : int
        Seed of the resampling.

    Returns
    -------
    MeanCI
    """
    a = _diffs(d)
    level = _check_level(level)
    n_boot = check_int(n_boot, "n_boot")
    seed = _check_seed(seed)
    low, high = _percentiles(_boot_means(np.random.default_rng(seed), a, n_boot), level)
    return MeanCI(float(a.mean()), low, high, level, int(a.size))


def _strata(diffs: Sequence[Any]) -> list[np.ndarray]:
    if isinstance(diffs, np.ndarray) and diffs.ndim == 1:
        raise InputError("diffs: expected a list of per-task difference arrays, got one array")
    parts = [_diffs(x, f"diffs[{i}]") for i, x in enumerate(diffs)]
    if not parts:
        raise InputError("diffs: no tasks")
    return parts


def stratified_mean(diffs: Sequence[Any]) -> float:
    """The unweighted mean over tasks of the per-task mean differences.

    Parameters
    ----------
    diffs : sequence of array-like ``[n_t]``
        Per-item differences of each task (tasks may have different sizes).

    Returns
    -------
    float
        ``(1/T) sum_t mean(diffs[t])`` — every task counts equally, whatever its size.
    """
    parts = _strata(diffs)
    return float(np.mean([a.mean() for a in parts]))


def stratified_bootstrap_ci(diffs: Sequence[Any], *, n_boot: int = 2000, level: float = 0.95,
                            seed: int = 0) -> MeanCI:
    """Percentile bootstrap interval of :func:`stratified_mean`, resampling items within each
    task (the tasks are fixed; each task keeps its size).

    Parameters
    ----------
    diffs : sequence of array-like ``[n_t]``
        Per-item differences of each task.
    n_boot, level, seed
        As in :func:`paired_bootstrap_ci`; one ``[n_boot, n_t]`` resample per task.

    Returns
    -------
    MeanCI
        ``n`` is the total number of items over the tasks.
    """
    parts = _strata(diffs)
    level = _check_level(level)
    n_boot = check_int(n_boot, "n_boot")
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    boot = np.mean([_boot_means(rng, a, n_boot) for a in parts], axis=0)     # [n_boot]
    low, high = _percentiles(boot, level)
    return MeanCI(stratified_mean(parts), low, high, level, int(sum(a.size for a in parts)))


def stratified_sign_flip_test(diffs: Sequence[Any], *, n_perm: int = 10_000,
                              seed: int = 0) -> float:
    """Sign-flip test of ``stratified_mean(diffs) = 0``, flipping items within their task.

    The statistic is ``|(1/T) sum_t mean(d_t)|``; under the null every item's difference is as
    likely to have either sign. The p-value is exact when the weighted differences
    ``d_ti / n_t`` lie on a lattice (a common denominator ``q <= LATTICE_DENOMINATOR_MAX`` after
    dividing by the largest weighted difference ``max |d_ti| / n_t``, and an integer support of
    at most ``LATTICE_SUPPORT_MAX``), which does not depend on the scale of the differences:
    always for 0/1 correctness, or its averages over a few seeds, on tasks of equal size, where
    it is McNemar's exact test on the pooled discordant items or its lattice generalisation.
    Otherwise it is Monte Carlo over ``n_perm`` seeded random sign vectors with the +1
    correction, ``(1 + #{|T*| >= |T|}) / (n_perm + 1)``.

    Parameters
    ----------
    diffs : sequence of array-like ``[n_t]``
        Per-item differences of each task.
    n_perm : int
        Random sign vectors of the Monte Carlo branch.
    seed : int
        Seed of the Monte Carlo branch.

    Returns
    -------
    float
        The two-sided p-value in ``[0, 1]`` (0 only where an exact tail underflows float64,
        below ~1e-308; the Monte Carlo branch never gives 0).
    """
    parts = _strata(diffs)
    n_perm = check_int(n_perm, "n_perm")
    seed = _check_seed(seed)
    weights = [1.0 / a.size for a in parts]
    nonzero = [a[a != 0] for a in parts]
    if not any(a.size for a in nonzero):
        return 1.0
    lattice = _lattice(nonzero, weights)
    if lattice is not None:
        return _lattice_p(*lattice)
    rng = np.random.default_rng(seed)
    return (1 + _flip_count(rng, nonzero, weights, n_perm)) / (n_perm + 1)


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the order given.

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    ``p_(i)`` is ``min(1, max_{j <= i} (m - j + 1) p_(j))`` (step-down; monotone in the sorted
    order). Rejecting where the adjusted value is below ``alpha`` controls the family-wise error
    rate at ``alpha`` under any dependence between the tests.

    Parameters
    ----------
    pvalues : array-like ``[m]``
        Raw p-values in ``[0, 1]``.

    Returns
    -------
    numpy.ndarray ``[m]`` float64
        Adjusted p-values, each ``>=`` its raw p-value and ``<= 1``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise InputError(f"pvalues: expected a 1-D array, got shape {p.shape}")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
        raise InputError("pvalues: every p-value must be a number in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


# --------------------------------------------------------------------------------------------
# Selector comparisons on harness results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedComparison:
    """One selector against one baseline on the same test items.

    Attributes
    ----------
    model : str
        Model label (with its precision when not float32).
    k : int
        Demonstrations per prompt.
    task : str
        Task name, or ``"mean"`` for the unweighted mean over tasks.
    selector, baseline : str
        Selector labels; ``diff > 0`` means the selector scores higher on ``metric``.
    diff : float
        ``metric`` of the selector minus the baseline's (accuracy: the mean per-item
        difference; for ``"mean"``: mean over tasks of the per-task differences).
    ci_low, ci_high : float
        Percentile-bootstrap interval of ``diff`` at ``level``.
    p : float
        Two-sided p-value (see :func:`paired_comparisons`).
    p_holm : float
        Holm-adjusted p-value within the ``(model, k)`` family.
    n : int
        Items compared (for ``"mean"``: summed over tasks).
    n_tasks : int
        Tasks (1 for a single task).
    level : float
        Confidence level of the interval.
    note : str
        Anything to know about the comparison (e.g. it was restricted to the common leading
        items because the units scored different numbers of items); empty otherwise.
    metric : str
        What is compared: ``"accuracy"`` or ``"macro_f1"`` (:data:`PAIRED_METRICS`).
    """

    model: str
    k: int
    task: str
    selector: str
    baseline: str
    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    n: int
    n_tasks: int
    level: float = 0.95
    note: str = ""
    metric: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class _Correct:
    """Per-item correctness of one selector on one task, averaged over its units, and the
    units' predictions (for metrics that are not item means, such as macro-F1)."""

    values: np.ndarray          # [n] in [0, 1]
    truth: tuple[str, ...]      # [n]
    note: str
    preds: tuple[np.ndarray, ...] = ()     # per unit [n], object


def _correctness(results: Sequence[Any], predictions: Mapping[str, Any]
                 ) -> dict[tuple[str, int], dict[str, dict[str, _Correct]]]:
    """``(model, k) -> task -> selector label -> _Correct``; units without predictions are
    skipped."""
    units: dict[tuple[str, int, str, str], list[tuple[list[str], list[str]]]] = {}
    for r in results:
        if r.key not in predictions:
            continue
        rec = predictions[r.key]
        pred, truth = (rec["pred"], rec["truth"]) if isinstance(rec, Mapping) else rec
        pred = [str(x) for x in pred]
        truth = [str(x) for x in truth]
        if len(pred) != len(truth):
            raise InputError(f"unit {r.key} (task {r.spec.task!r}, {r.spec.label}): "
                             f"{len(pred)} predictions for {len(truth)} labels")
        if not truth:
            continue
        units.setdefault((str(r.spec.model_label), int(r.spec.k), str(r.spec.task),
                          str(r.spec.label)), []).append((pred, truth))
    out: dict[tuple[str, int], dict[str, dict[str, _Correct]]] = {}
    for (model, k, task, label), rows in sorted(units.items()):
        n = min(len(t) for _, t in rows)
        truth = tuple(rows[0][1][:n])
        if any(tuple(t[:n]) != truth for _, t in rows):
            raise InputError(f"task {task!r}: the units of {label} ({model}, k={k}) scored "
                             "different test items (their truth labels differ)")
        preds = tuple(np.asarray(p[:n], dtype=object) for p, _ in rows)
        corr = np.mean([p == np.asarray(truth, dtype=object) for p in preds],
                       axis=0).astype(np.float64)
        note = ""
        if len({len(t) for _, t in rows}) > 1:
            note = f"{label}'s units scored different numbers of items; first {n} used"
        out.setdefault((model, k), {}).setdefault(task, {})[label] = _Correct(corr, truth, note,
                                                                              preds)
    return out


def _pair(task: str, a: str, ca: _Correct, b: str, cb: _Correct) -> tuple[np.ndarray, str]:
    """``d = ca - cb`` on the common leading items, and a note when lengths differ."""
    n = min(ca.values.size, cb.values.size)
    if ca.truth[:n] != cb.truth[:n]:
        raise InputError(f"task {task!r}: {a} and {b} scored different test items (their "
                         "truth labels differ), so they cannot be compared paired")
    notes = [x for x in (ca.note, cb.note) if x]
    if ca.values.size != cb.values.size:
        notes.append(f"compared on the first {n} items ({a} has {ca.values.size}, {b} has "
                     f"{cb.values.size})")
    return ca.values[:n] - cb.values[:n], "; ".join(notes)


def majority_shares(results: Sequence[Any], predictions: Mapping[str, Any]) -> dict[str, float]:
    """Per task, the share of its scored test items that carry the most frequent true label.

    This is the accuracy of always answering that label: where it is high, accuracy mostly
    counts the majority label and macro-F1 (``paired_comparisons(..., metric="macro_f1")``)
    separates selectors better.

    Parameters
    ----------
    results : sequence of harness ``UnitResult``
        Only ``key`` and ``spec.task`` are read.
    predictions : mapping unit key -> ``(pred, truth)``
        As for :func:`paired_comparisons`; per task the longest truth record is used.

    Returns
    -------
    dict
        Task -> share in ``(0, 1]``, for every task with a prediction record.
    """
    truth: dict[str, list[str]] = {}
    for r in results:
        rec = predictions.get(r.key)
        if rec is None:
            continue
        t = rec["truth"] if isinstance(rec, Mapping) else rec[1]
        if len(t) > len(truth.get(str(r.spec.task), [])):
            truth[str(r.spec.task)] = [str(x) for x in t]
    out = {}
    for task, t in sorted(truth.items()):
        _, counts = np.unique(np.asarray(t, dtype=object).astype(str), return_counts=True)
        out[task] = float(counts.max() / len(t))
    return out


#: Metrics :func:`paired_comparisons` compares selectors on.
PAIRED_METRICS = ("accuracy", "macro_f1")


def _macro_f1_rows(preds: Sequence[np.ndarray], truth: np.ndarray, labels: list[str],
                   idx: np.ndarray) -> np.ndarray:
    """``[rows]``: the mean over a selector's units of the macro-F1 of each row of ``idx``
    ``[rows, n]`` (item indices)."""
    return np.mean([bootstrap_values(truth, p, idx, "macro_f1", labels) for p in preds],
                   axis=0)


def _macro_f1_sides(ca: _Correct, cb: _Correct, n: int
                    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[str]]:
    """The truth ``[n]``, the units' predictions of each side ``[n]`` and the label list of
    a macro-F1 comparison of ``ca`` and ``cb`` on their first ``n`` items."""
    truth = np.asarray(ca.truth[:n], dtype=object)
    pa = [q[:n] for q in ca.preds]
    pb = [q[:n] for q in cb.preds]
    # labels of the truth or of any prediction; the others have no F1 (macro_f1 skips them)
    labels = sorted({*truth.tolist(), *(x for q in (*pa, *pb) for x in q.tolist())}, key=str)
    return truth, pa, pb, labels


def _macro_f1_diff(ca: _Correct, cb: _Correct, n: int, rng: np.random.Generator,
                   n_boot: int) -> tuple[float, np.ndarray]:
    """Macro-F1 of ``ca`` minus ``cb`` on their first ``n`` items, and ``[n_boot]`` paired
    bootstrap draws of it (the same resampled items on both sides)."""
    truth, pa, pb, labels = _macro_f1_sides(ca, cb, n)
    whole = np.arange(n)[None, :]
    d = float((_macro_f1_rows(pa, truth, labels, whole)
               - _macro_f1_rows(pb, truth, labels, whole))[0])
    draws = np.empty(n_boot)
    step = max(1, _BLOCK // n)
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        draws[start:start + rows] = (_macro_f1_rows(pa, truth, labels, idx)
                                     - _macro_f1_rows(pb, truth, labels, idx))
    return d, draws


@dataclass(frozen=True)
class _SwapSides:
    """One task of a macro-F1 swap test (:func:`_macro_f1_swap_p`): both sides' predictions
    side by side, ``pairs[j] = concat(a_j, b_j)`` ``[2n]`` with ``truth2 = concat(truth,
    truth)``, so that the item indices ``i + n s_i`` (``s_i = 1``: swapped) gather side A's
    predictions after a swap and ``i + n (1 - s_i)`` side B's."""

    truth2: np.ndarray          # [2n]
    pairs: list[np.ndarray]     # L virtual units, each [2n]
    labels: list[str]
    n: int
    moving: np.ndarray          # indices of the items whose swap changes a prediction

    @classmethod
    def of(cls, ca: _Correct, cb: _Correct, n: int) -> _SwapSides:
        """The sides of ``ca`` and ``cb`` on their first ``n`` items. A selector with several
        units (seeds) is tiled to ``L = lcm(U_a, U_b)`` virtual units, unit ``j mod U`` as
        virtual unit ``j`` (a side's mean over its virtual units is its mean over its units),
        and virtual unit ``j`` of one side is swapped with virtual unit ``j`` of the other: an
        item's whole set of predictions changes sides."""
        truth, pa, pb, labels = _macro_f1_sides(ca, cb, n)
        width = math.lcm(len(pa), len(pb))
        va = [pa[j % len(pa)] for j in range(width)]
        vb = [pb[j % len(pb)] for j in range(width)]
        moving = np.flatnonzero(np.any([a != b for a, b in zip(va, vb, strict=True)], axis=0))
        return cls(np.concatenate([truth, truth]),
                   [np.concatenate([a, b]) for a, b in zip(va, vb, strict=True)],
                   labels, n, moving)

    def diffs(self, swap: np.ndarray) -> np.ndarray:
        """``[rows]`` macro-F1 differences (A minus B) after swapping the items where
        ``swap [rows, n]`` (bool) is true."""
        items = np.arange(self.n)[None, :]
        s = swap.astype(np.int64)
        return (_macro_f1_rows(self.pairs, self.truth2, self.labels, items + self.n * s)
                - _macro_f1_rows(self.pairs, self.truth2, self.labels, items + self.n * (1 - s)))


def _macro_f1_swap_p(sides: Sequence[_SwapSides], d: float, rng: np.random.Generator,
                     n_perm: int) -> float:
    """Two-sided paired randomisation (swap) p-value of a macro-F1 difference ``d`` (the mean
    over ``sides``, the tasks, of each task's difference; one task: its difference).

    Null hypothesis: on every item the two selectors' predictions are exchangeable (the
    selector labels could be swapped item by item without changing the joint distribution of
    the data). Each item's predictions are swapped between the two sides with probability 1/2,
    independently over items and tasks; the statistic is ``|d*|``, the macro-F1 difference
    recomputed after the swaps. Only items whose swap changes a prediction (``M`` of them over
    all tasks) matter: when ``2^M <= n_perm`` every swap vector is enumerated and
    ``p = #{|d*| >= |d|} / 2^M`` (exact; 1 when ``M = 0``); otherwise ``n_perm`` random swap
    vectors (``rng.integers(0, 2, size=(rows, n_t))`` per block of rows and task, in task
    order) give ``p = (1 + #{|d*| >= |d|}) / (1 + n_perm)``, valid at any ``n_perm``. Ties
    within ``1e-12`` count (macro-F1 differences lie in ``[-1, 1]``; equal configurations may
    differ by float rounding of the means).
    """
    obs = abs(d) - 1e-12
    n_tasks = len(sides)
    sizes = [x.moving.size for x in sides]
    total = sum(sizes)
    if total == 0:
        return 1.0
    step = max(1, _BLOCK // max(x.n for x in sides))
    if total < 62 and (1 << total) <= n_perm:
        m = 1 << total
        count = 0
        for start in range(0, m, step):
            codes = np.arange(start, min(m, start + step), dtype=np.int64)
            bits = ((codes[:, None] >> np.arange(total, dtype=np.int64)[None, :]) & 1
                    ).astype(bool)                                        # [rows, M]
            stat = np.zeros(codes.size)
            offset = 0
            for x, size in zip(sides, sizes, strict=True):
                swap = np.zeros((codes.size, x.n), dtype=bool)
                swap[:, x.moving] = bits[:, offset:offset + size]
                offset += size
                stat += x.diffs(swap)
            count += int(np.count_nonzero(np.abs(stat / n_tasks) >= obs))
        return count / m
    count = 0
    for start in range(0, n_perm, step):
        rows = min(step, n_perm - start)
        stat = np.zeros(rows)
        for x in sides:
            stat += x.diffs(rng.integers(0, 2, size=(rows, x.n)).astype(bool))
        count += int(np.count_nonzero(np.abs(stat / n_tasks) >= obs))
    return (1 + count) / (1 + n_perm)


# long: 80 lines of NumPy docstring; the code is 75
def paired_comparisons(
    results: Sequence[Any],
    predictions: Mapping[str, Any],
    *,
    baselines: Sequence[str] = ("knn", "random"),
    n_boot: int = 2000,
    n_perm: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    metric: str = "accuracy",
    pairs: Sequence[tuple[str, str]] | None = None,
) -> list[PairedComparison]:
    """Every selector against each baseline, paired over the test items, per task and on the
    mean over tasks, with Holm-adjusted p-values.

    Per ``(model, k, task, selector)`` the correctness of each test item is averaged over all
    units of that selector (random seeds, orderings): a vector in ``[0, 1]``. A selector and a
    baseline are compared on the same items (their truth labels must match, else
    :class:`InputError`; when they scored different numbers of items, on the common leading
    items, said in ``note``):

    - per task: ``diff = mean(sel - base)``, :func:`paired_bootstrap_ci`, and the p-value of
      :func:`sign_flip_test` (exact McNemar when both are single units);
    - ``task = "mean"``: the unweighted mean over the tasks where both exist (at least 2) of
      the per-task differences, :func:`stratified_bootstrap_ci` and
      :func:`stratified_sign_flip_test`.

    ``metric="macro_f1"`` compares macro-F1 instead (the unweighted mean of per-label F1, which
    accuracy hides on a test set dominated by one label): a selector's macro-F1 is the mean over
    its units of each unit's macro-F1 (over the labels that are true or predicted, as
    :func:`icldistill.core.metrics.macro_f1` with the task's label names). Macro-F1 is not a
    mean over items, so ``diff`` has no per-item terms to sign-flip: the interval is a paired
    percentile bootstrap (the same resampled items for both sides; within each task for the
    mean over tasks) and ``p`` a paired randomisation (swap) test, :func:`_macro_f1_swap_p`.
    Its null hypothesis is that on every item the two selectors' predictions are
    exchangeable: each item's predictions (a selector with several units: the item's whole
    set of predictions) change sides with probability 1/2, independently over items (and
    tasks, for the mean over tasks), the macro-F1 difference is recomputed, and
    ``p = (1 + #{|diff*| >= |diff|}) / (1 + n_perm)`` over ``n_perm`` seeded swap vectors;
    exact enumeration, ``p = #{|diff*| >= |diff|} / 2^M``, when the ``M`` items whose swap
    changes a prediction allow ``2^M <= n_perm`` (so ``p = 1`` on a single item). The test is
    exact for two single units (and for equal numbers of units); for unequal numbers of
    units (seeds) the units are tiled to their least common multiple and swapped unit by
    unit (:class:`_SwapSides`), an approximation. (The bootstrap-standard-error z-test used
    before was anti-conservative with many rare labels, e.g. 0.10-0.12 at nominal 0.05 on
    r52's label histogram.) No p-value is below ``1 / (n_perm + 1)``, so ``n_perm`` must
    leave the Holm family room: with ``m`` hypotheses the smallest Holm-adjusted p-value is
    ``m / (n_perm + 1)`` (0.021 for 209 hypotheses at the default 10,000). At the defaults
    the swap test costs about four times the 2000 bootstrap resamples (each swap vector is
    one macro-F1 of each side, as each resample is).

    Holm family: all hypotheses of one ``(model, k)`` — every per-task and every mean row, of
    every selector and every baseline — are adjusted together with :func:`holm`. A comparison
    and its mirror (e.g. ``random`` vs ``knn`` and ``knn`` vs ``random``) are one hypothesis:
    they share ``p`` and ``p_holm`` and count once in the family.

    Parameters
    ----------
    results : sequence of harness ``UnitResult``
        Only ``key``, ``spec.model_label``, ``spec.k``, ``spec.task`` and ``spec.label`` are read.
    predictions : mapping unit key -> ``(pred, truth)``
        Per-item predicted and true labels of each unit (as
        :func:`icldistill.evaluation.harness.load_predictions` returns; ``{"pred", "truth"}``
        records are
        accepted too). Units without predictions are left out.
    baselines : sequence of str
        Selector labels to compare against; a baseline missing from a ``(model, k)`` gives no
        rows there. A selector is never compared with itself.
    n_boot : int
        Bootstrap resamples of every interval.
    n_perm : int
        Random sign vectors of the Monte Carlo sign-flip p-values (accuracy), or random swap
        vectors of the macro-F1 randomisation test.
    seed : int
        Seed of every bootstrap and Monte Carlo draw (the result is deterministic).
    level : float
        Confidence level of the intervals.
    metric : {"accuracy", "macro_f1"}
        What is compared (:data:`PAIRED_METRICS`).
    pairs : sequence of (selector, baseline) label pairs, optional
        Compare exactly these pairs instead of every selector against ``baselines`` (which is
        then ignored), e.g. the factor contrasts of an ablation (``"mmd-local@kv:auto"``
        against ``"mmd-local"``); checked by :func:`check_pairs`. Pairs absent from a
        ``(model, k)`` give no rows there; the Holm family is the hypotheses of the pairs
        present.

    Returns
    -------
    list of PairedComparison
        Ordered by model, k, baseline (as given), selector label, task (``"mean"`` last);
        with ``pairs``, in the order of ``pairs``.
    """
    if metric not in PAIRED_METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(PAIRED_METRICS)}")
    level = _check_level(level)
    n_boot = check_int(n_boot, "n_boot")
    n_perm = check_int(n_perm, "n_perm")
    seed = _check_seed(seed)
    if pairs is not None:
        pairs = check_pairs(pairs)
    out: list[PairedComparison] = []
    for (model, k), by_task in _correctness(results, predictions).items():
        tasks = sorted(by_task)
        labels = sorted({s for t in tasks for s in by_task[t]})
        # hypotheses by (task or "mean", a, b) with a < b: (diff, low, high, p, n, n_tasks, note)
        hyp: dict[tuple[str, str, str], tuple[float, float, float, float, int, int, str]] = {}
        wanted: list[tuple[str, str]] = []        # (selector, baseline)
        if pairs is not None:
            wanted = [(s, b) for s, b in pairs if s in labels and b in labels]
        else:
            for base in baselines:
                if not any(base in by_task[t] for t in tasks):
                    continue
                wanted += [(s, base) for s in labels if s != base]
        for sel, base in wanted:
            a, b = sorted((sel, base))
            both = [t for t in tasks if a in by_task[t] and b in by_task[t]]
            ds, notes = [], []
            for t in both:
                d, note = _pair(t, a, by_task[t][a], b, by_task[t][b])
                ds.append(d)
                if note:
                    notes.append(f"{t}: {note}")
                if (t, a, b) in hyp:
                    continue
                if metric == "accuracy":
                    ci = paired_bootstrap_ci(d, n_boot=n_boot, level=level, seed=seed)
                    p = sign_flip_test(d, n_perm=n_perm, seed=seed)
                    hyp[(t, a, b)] = (ci.value, ci.low, ci.high, p, ci.n, 1, note)
                else:
                    value, draws = _macro_f1_diff(by_task[t][a], by_task[t][b], d.size,
                                                  np.random.default_rng(seed), n_boot)
                    p = _macro_f1_swap_p([_SwapSides.of(by_task[t][a], by_task[t][b], d.size)],
                                         value, np.random.default_rng(seed), n_perm)
                    hyp[(t, a, b)] = (value, *_percentiles(draws, level), p, d.size, 1, note)
            if len(both) < 2 or ("mean", a, b) in hyp:
                continue
            if metric == "accuracy":
                ci = stratified_bootstrap_ci(ds, n_boot=n_boot, level=level, seed=seed)
                p = stratified_sign_flip_test(ds, n_perm=n_perm, seed=seed)
                hyp[("mean", a, b)] = (ci.value, ci.low, ci.high, p, ci.n, len(both),
                                       "; ".join(notes))
            else:
                rng = np.random.default_rng(seed)
                parts = [_macro_f1_diff(by_task[t][a], by_task[t][b], d.size, rng, n_boot)
                         for t, d in zip(both, ds, strict=True)]
                value = float(np.mean([v for v, _ in parts]))
                draws = np.mean([w for _, w in parts], axis=0)
                sides = [_SwapSides.of(by_task[t][a], by_task[t][b], d.size)
                         for t, d in zip(both, ds, strict=True)]
                p = _macro_f1_swap_p(sides, value, np.random.default_rng(seed), n_perm)
                hyp[("mean", a, b)] = (value, *_percentiles(draws, level), p,
                                       sum(d.size for d in ds), len(both), "; ".join(notes))
        keys = list(hyp)
        adjusted = dict(zip(keys, holm([hyp[h][3] for h in keys]).tolist(), strict=True))
        for sel, base in wanted:
            a, b = sorted((sel, base))
            for t in [*tasks, "mean"]:
                if (t, a, b) not in hyp:
                    continue
                diff, low, high, p, n, n_tasks, note = hyp[(t, a, b)]
                if sel != a:                     # mirrored: sel - base = -(a - b)
                    diff, low, high = -diff, -high, -low
                out.append(PairedComparison(model, k, t, sel, base, float(diff), float(low),
                                            float(high), float(p), float(adjusted[(t, a, b)]),
                                            int(n), int(n_tasks), level, note, metric))
    return out


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 points or a
    constant input.

    Parameters
    ----------
    x, y : array-like ``[n]``
        Finite numbers, paired by position.

    Returns
    -------
    float
        The correlation in ``[-1, 1]``; NaN with fewer than 3 points or when ``x`` or ``y`` is
        constant (the ranks have no spread).

    Raises
    ------
    InputError
        ``x`` or ``y`` is not numeric, the two are not 1-D of equal length, or either holds a
        NaN or an infinite value (a NaN has no rank: drop the missing pairs first).
    """
    a = _numbers(x, "x")
    b = _numbers(y, "y")
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"spearman needs two 1-D arrays of equal length, got shapes {a.shape} "
                         f"and {b.shape}")
    for v, name in ((a, "x"), (b, "y")):
        if not np.all(np.isfinite(v)):
            bad = int(np.sum(~np.isfinite(v)))
            raise InputError(f"spearman: {name} contains {bad} NaN or infinite value(s); drop "
                             "the missing pairs first")
    if a.size < 3:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        for val in np.unique(v):              # average ranks of ties
            tie = v == val
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# --------------------------------------------------------------------------------------------
# Within-item concordance of correctness with a per-condition score
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concordance(Result):
    """How often, within a test item, the condition that got it right had the lower score.

    Attributes
    ----------
    value : float
        Over every *discordant pair* (two conditions on the same item, one right and one
        wrong, in the same stratum), the share in which the right one has the lower score;
        ties count one half. 0.5: no association within items; above 0.5: lower scores go
        with right answers. NaN when there is no discordant pair.
    low, high : float
        Percentile bootstrap interval over items (items resampled with all their pairs).
    p : float
        Two-sided item-bootstrap p-value of ``value = 0.5`` (:func:`within_item_concordance`):
        from the same resamples as ``low, high``, so ``p < 1 - level`` goes with an interval
        that excludes 0.5; NaN without pairs.
    level : float
        Confidence level of ``low, high``.
    n_items : int
        Items with at least one discordant pair.
    n_pairs : int
        Discordant pairs.
    """

    value: float
    low: float
    high: float
    p: float
    level: float
    n_items: int
    n_pairs: int


def _group_ranks(x: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties averaged) of ``x [n, C]`` within each row's groups
    ``gid [n, C]``."""
    same = gid[:, :, None] == gid[:, None, :]
    below = (same & (x[:, None, :] < x[:, :, None])).sum(axis=2)
    ties = (same & (x[:, None, :] == x[:, :, None])).sum(axis=2)
    return 1.0 + below + 0.5 * (ties - 1)


def _concordance_inputs(correct: Any, x: Any, strata: Any
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``correct`` (bool), ``x`` (float64) and ``strata`` (int) ``[n, C]``, checked."""
    c = np.asarray(correct)
    v = np.asarray(x, dtype=np.float64)
    if c.ndim != 2 or v.shape != c.shape:
        raise InputError(f"correct and x must be 2-D of the same shape [items, conditions], "
                         f"got {c.shape} and {v.shape}")
    if c.dtype != bool:
        if not np.isin(c, (0, 1)).all():
            raise InputError("correct must be boolean (or 0/1)")
        c = c.astype(bool)
    if np.isinf(v).any():
        raise InputError("x has infinite values (use NaN for a missing condition)")
    g = np.zeros(c.shape, dtype=np.int64) if strata is None else np.asarray(strata)
    if g.shape != c.shape or (not np.issubdtype(g.dtype, np.integer) and g.dtype != bool):
        raise InputError(f"strata must be integer labels of shape {c.shape}, got "
                         f"{np.asarray(strata).dtype} {g.shape}")
    return c, v, g


def _ratio_bootstrap(rng: np.random.Generator, s_i: np.ndarray, m_i: np.ndarray,
                     n_boot: int) -> np.ndarray:
    """``[n_boot]`` ratios ``sum s / sum m`` over items resampled with replacement."""
    boots = np.empty(n_boot)
    step = max(1, _BLOCK // s_i.size)
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        idx = rng.integers(0, s_i.size, size=(rows, s_i.size))
        boots[start:start + rows] = s_i[idx].sum(axis=1) / m_i[idx].sum(axis=1)
    return boots


def _percentile_bootstrap_p(draws: np.ndarray, null: float) -> float:
    """Two-sided percentile-bootstrap p-value of ``theta = null`` from the bootstrap draws of
    ``theta``: ``p = 2 min(P*(draw <= null), P*(draw >= null))``, capped at 1 and floored at
    ``1 / (B + 1)`` (``B`` draws; a draw equal to ``null``, up to ``1e-12``, counts on both
    sides).

    It is the test that the percentile interval of the same draws inverts: ``p < 1 - level``
    exactly when fewer than a share ``(1 - level) / 2`` of the draws lie on one side of
    ``null``, i.e. (up to the interpolation between two order statistics of the quantiles)
    when the ``level`` percentile interval excludes ``null``.
    """
    b = draws.size
    below = int(np.count_nonzero(draws <= null + 1e-12))
    above = int(np.count_nonzero(draws >= null - 1e-12))
    return float(min(1.0, max(1.0 / (b + 1), 2.0 * min(below, above) / b)))


# long: 52 lines of NumPy docstring; the code is 32
def within_item_concordance(correct: Any, x: Any, *, strata: Any = None, n_boot: int = 2000,
                            level: float = 0.95, seed: int = 0) -> Concordance:
    """Within-item concordance of correctness with a score ``x`` (lower = predicted better).

    For every item and every pair of its conditions (e.g. the selectors of a grid) of which one
    got the item right and the other wrong, the pair is *concordant* when the right one has the
    lower ``x``. Comparing conditions on the same item removes the item's difficulty, which a
    correlation across units or items would mix in. With ``strata`` only pairs in the same
    stratum count (e.g. both conditions showed the item's label among their demonstrations,
    or both did not), so the association cannot come from the stratum variable.

    The test: ``p`` is the two-sided item-bootstrap (cluster bootstrap) p-value of
    ``value = 0.5`` (:func:`_percentile_bootstrap_p`), computed from the same ``n_boot``
    resamples of items (each with all its pairs) as the percentile interval ``low, high``:
    ``p = 2 min(P*(v* <= 0.5), P*(v* >= 0.5))``, floored at ``1 / (n_boot + 1)``. So a
    ``p < 1 - level`` and an interval that excludes 0.5 go together (up to the interpolation
    of the quantiles between two order statistics). The null hypothesis is that the
    pair-weighted concordance over the population of items, ``E[score_i] / E[pairs_i]``, is
    0.5: items are the sampling units, and the association may differ from item to item
    (some items with lower scores going with right answers, others with wrong ones) as long
    as it averages out. The test is approximate (bootstrap, asymptotic in the number of
    items), and its sign is meaningful: ``value > 0.5`` with a small ``p`` says that lower
    scores go with right answers on the items' average. (Before, ``p`` permuted ``x`` within
    each item, a test of the strict null of *no* association on *any* item: under
    item-to-item heterogeneity with mean 0.5 it rejected far beyond its level, so it could
    not support a directional claim about ``value``.)

    Parameters
    ----------
    correct : array-like of bool ``[n, C]``
        Whether condition ``c`` got item ``i`` right.
    x : array-like ``[n, C]``
        The score of condition ``c`` on item ``i``; NaN where the condition has no result for
        the item (it takes part in no pair).
    strata : array-like of int ``[n, C]``, optional
        Stratum of each (item, condition); pairs stay within a stratum.
    n_boot : int
        Bootstrap resamples of the items, for the interval and the p-value alike.
    level : float
        Confidence level of the interval.
    seed : int
        Seed of the resampling.

    Returns
    -------
    Concordance
        ``value`` 0.5 means no within-item association on the items' average.

    Raises
    ------
    InputError
        When the shapes differ or are not 2-D, ``correct`` is not boolean (0/1), or ``x`` is
        infinite.
    """
    level = _check_level(level)
    n_boot = check_int(n_boot, "n_boot")
    seed = _check_seed(seed)
    c, v, g = _concordance_inputs(correct, x, strata)
    valid = ~np.isnan(v)
    # invalid entries form a group of their own per item: they never pair
    gid = np.where(valid, g.astype(np.int64) - g.min(initial=0) + 1, 0)
    right, wrong = c & valid, ~c & valid
    # per item and stratum, the concordant score is Mann-Whitney's U of the wrong conditions'
    # scores over the right ones': sum of the wrong ones' within-stratum ranks - n_w(n_w+1)/2
    ranks = _group_ranks(np.where(valid, v, 0.0), gid)
    n_groups = int(gid.max(initial=0)) + 1
    onehot = gid[:, :, None] == np.arange(1, n_groups)[None, None, :]       # [n, C, G]
    n_w = (onehot & wrong[:, :, None]).sum(axis=1)                            # [n, G]
    n_r = (onehot & right[:, :, None]).sum(axis=1)
    count = (n_w * n_r).sum(axis=1).astype(np.float64)                        # pairs [n]
    # a stratum without a right (or without a wrong) condition has no pair: left out
    both = (n_w > 0) & (n_r > 0)                                              # [n, G]
    use = wrong & (onehot & both[:, None, :]).any(axis=2)                     # [n, C]
    offset = np.where(both, n_w * (n_w + 1) / 2, 0.0).sum(axis=1)             # [n]
    score = (ranks * use).sum(axis=1) - offset
    total = count.sum()
    n_items = int((count > 0).sum())
    if total == 0:
        nan = float("nan")
        return Concordance(nan, nan, nan, nan, level, 0, 0)
    value = float(score.sum() / total)
    keep = count > 0                     # items without pairs add nothing to either sum
    draws = _ratio_bootstrap(np.random.default_rng(seed), score[keep], count[keep], n_boot)
    low, high = _percentiles(draws, level)
    p = _percentile_bootstrap_p(draws, 0.5)
    return Concordance(value, low, high, float(p), level, n_items, int(total))
