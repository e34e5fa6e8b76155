"""Two one-sided tests the laboratory's checks need and :mod:`icldistill.core.stats` does not
provide (it has the two-sided paired tests, Holm and the Spearman statistic; these reuse them
where they can):

- :func:`fisher_exact_greater` — Fisher's exact test, one-sided, on a 2x2 table (does one
  group have a higher success rate than the other?); exact hypergeometric tail in integer
  arithmetic (no scipy); :func:`fisher_exact_greater_stratified`, the same over several
  2x2 tables (strata) conditional on each one's margins;
- :func:`spearman_permutation_test` — one-sided permutation test of Spearman's rank
  correlation (the statistic is :func:`icldistill.core.stats.spearman`);
- :func:`pick_randomisation_test` — exact two-sided randomisation test of a rule that picks
  one option per independent unit (an order per demonstration set) against a uniformly random
  pick;
- :func:`within_level_test` — one-sided permutation test of whether a covariate explains an
  outcome *within* the levels of a design factor (an MMD² beyond the fraction of foreign
  demonstrations), the best of several candidate covariates re-chosen in every permutation;
- :func:`pairing_permutation_test` — one-sided permutation test of whether units' own pairs of
  values agree more often than pairs drawn across units (does a distillation curve's
  saturation point predict *this* curve's accuracy saturation, beyond how both are
  distributed).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from icldistill.core.results import Result
from icldistill.core.stats import spearman
from icldistill.core.validation import InputError, check_int, check_seed

__all__ = ["PairingTest", "SpearmanTest", "WithinLevelTest", "fisher_exact_greater",
           "fisher_exact_greater_stratified", "pairing_floor", "pairing_permutation_test",
           "pick_randomisation_test", "spearman_permutation_test", "within_level_test"]


def fisher_exact_greater_stratified(tables: Any) -> float:
    """One-sided exact test that group 1 succeeds more often than group 2 within strata.

    Each stratum ``t`` is a 2x2 table ``(a_t, b_t, c_t, d_t)`` as in
    :func:`fisher_exact_greater`. Conditional on every table's margins the ``a_t`` are
    independent hypergeometric under the null hypothesis that success does not depend on the
    group in any stratum; the statistic is ``sum_t a_t`` and its null distribution the
    convolution of the strata's hypergeometric distributions (the exact conditional test of a
    common odds ratio of 1, summed exactly with integers). Pooling the tables into one would
    mix strata with different base rates (Simpson's paradox); with one stratum this is
    :func:`fisher_exact_greater`.

    Parameters
    ----------
    tables : sequence of 4-tuples of int
        Non-negative counts per stratum.

    Returns
    -------
    float
        ``P(sum_t A_t >= sum_t a_t)`` in ``(0, 1]``.

    Raises
    ------
    InputError
        No stratum, or a count that is not a non-negative integer.
    """
    rows = list(tables)
    if not rows:
        raise InputError("at least one 2x2 table is needed")
    dist = [1]                   # numerators of P(sum = s) over the product of denominators
    total = 1
    observed = 0
    for t, row in enumerate(rows):
        if len(row) != 4:
            raise InputError(f"tables[{t}] must be 4 counts (a, b, c, d), got {row!r}")
        a, b, c, d = (check_int(v, f"tables[{t}][{i}]", 0) for i, v in enumerate(row))
        n1, k, n = a + b, a + c, a + b + c + d
        lo, hi = max(0, n1 - (n - k)), min(n1, k)
        # index s of the result stands for (sum of the strata's lowest counts) + s
        dist = _convolve(dist, [math.comb(k, x) * math.comb(n - k, n1 - x)
                                for x in range(lo, hi + 1)])
        total *= math.comb(n, n1)
        observed += a - lo
    tail = sum(dist[observed:])
    return float(min(Fraction(1), Fraction(tail, total)))


def fisher_exact_greater(a: int, b: int, c: int, d: int) -> float:
    """One-sided Fisher exact p-value that group 1's success rate exceeds group 2's.

    The 2x2 table is ``[[a, b], [c, d]]``: group 1 has ``a`` successes and ``b`` failures,
    group 2 ``c`` successes and ``d`` failures. Conditional on the margins, ``a`` follows the
    hypergeometric distribution (``N = a + b + c + d`` items, ``K = a + c`` successes, ``n1 =
    a + b`` drawn into group 1) under the null hypothesis that success does not depend on the
    group; the p-value is ``P(X >= a)``, the alternative being that group 1 succeeds more
    often (odds ratio > 1). Summed exactly as a ratio of integers.

    Parameters
    ----------
    a, b, c, d : int
        Non-negative counts.

    Returns
    -------
    float
        The p-value in ``(0, 1]`` (1 when either group or either outcome is empty).

    Raises
    ------
    InputError
        A count is not a non-negative integer.
    """
    a, b, c, d = (check_int(v, name, 0) for v, name in ((a, "a"), (b, "b"), (c, "c"),
                                                          (d, "d")))
    n1, k, n = a + b, a + c, a + b + c + d
    hi = min(n1, k)
    tail = sum(math.comb(k, x) * math.comb(n - k, n1 - x) for x in range(a, hi + 1))
    total = math.comb(n, n1)
    return float(min(Fraction(1), Fraction(tail, total)))


@dataclass(frozen=True)
class SpearmanTest(Result):
    """Spearman's rank correlation with a one-sided permutation p-value.

    Attributes
    ----------
    rho : float
        The correlation (:func:`icldistill.core.stats.spearman`); NaN with fewer than 3 points
        or a constant input.
    p : float
        One-sided permutation p-value for the alternative ``alternative`` (NaN where ``rho``
        is).
    n : int
        Points.
    alternative : str
        ``"greater"`` (a positive association) or ``"less"``.
    n_perm : int
        Random permutations drawn.
    """

    rho: float
    p: float
    n: int
    alternative: str
    n_perm: int


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """0-based ranks with ties given their average rank (the ranks Spearman's rho uses)."""
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (start + (counts - 1) / 2.0)[inv]


def spearman_permutation_test(x: Any, y: Any, *, alternative: str = "greater",
                              n_perm: int = 10_000, seed: int = 0) -> SpearmanTest:
    """One-sided permutation test of Spearman's rho between ``x`` and ``y``.

    Under the null hypothesis that ``y`` is unrelated to ``x`` (exchangeable over the points),
    every permutation of ``y`` against ``x`` is equally likely. ``n_perm`` seeded random
    permutations give ``p = (1 + #{rho* >= rho}) / (n_perm + 1)`` for ``alternative =
    "greater"`` (``rho* <= rho`` for ``"less"``): the +1 correction keeps it valid at any
    ``n_perm`` and never 0. Ties get average ranks (as in :func:`~icldistill.core.stats.spearman`,
    which computes the observed value); permuting ``y`` permutes its ranks, so each
    permuted rho is the Pearson correlation of the two rank vectors.

    Parameters
    ----------
    x, y : array-like ``[n]``
        Finite numbers, paired by position.
    alternative : ``"greater"`` or ``"less"``
    n_perm : int
        Random permutations (>= 1).
    seed : int

    Returns
    -------
    SpearmanTest

    Raises
    ------
    InputError
        Bad arrays (as :func:`~icldistill.core.stats.spearman`), an unknown ``alternative``
        or a bad ``n_perm`` / ``seed``.
    """
    if alternative not in ("greater", "less"):
        raise InputError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    n_perm = check_int(n_perm, "n_perm")
    seed = check_seed(seed)
    rho = spearman(x, y)                 # validates x and y
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if not np.isfinite(rho):
        return SpearmanTest(math.nan, math.nan, int(a.size), alternative, n_perm)
    ra = _average_ranks(a)
    rb = _average_ranks(b)
    ra = ra - ra.mean()
    rb = rb - rb.mean()
    scale = math.sqrt(float(ra @ ra) * float(rb @ rb))
    rng = np.random.default_rng(seed)
    hits = 0
    step = max(1, 2_000_000 // a.size)
    tol = 1e-12
    for start in range(0, n_perm, step):
        rows = min(step, n_perm - start)
        perms = rng.permuted(np.broadcast_to(rb, (rows, rb.size)), axis=1)
        null = (perms @ ra) / scale
        hits += int(np.count_nonzero(null >= rho - tol) if alternative == "greater"
                    else np.count_nonzero(null <= rho + tol))
    return SpearmanTest(float(rho), (1 + hits) / (n_perm + 1), int(a.size), alternative,
                        n_perm)


def pick_randomisation_test(counts: Any, picked: Any) -> float:
    """Exact two-sided p-value of a rule that picked option ``picked[s]`` in each unit ``s``,
    under the null hypothesis that the pick is uniform over the unit's options, independently
    per unit.

    The statistic is the total ``sum_s counts[s][picked[s]]`` (e.g. held-back items answered
    right by the picked order of each demonstration set); its null distribution is the
    convolution of the units' histograms of ``counts[s]``, counted exactly with integers. The
    p-value is ``P(|T - E T| >= |t_obs - E T|)``. The units, not the items inside them, are
    what the pick randomises, so the p-value is never below ``1 / prod_s O_s`` however many
    items each unit holds.

    Parameters
    ----------
    counts : sequence of ``S`` integer arrays ``[O_s]``
        Per unit, the non-negative integer score of every option.
    picked : sequence of ``S`` int
        The option the rule picked in each unit.

    Returns
    -------
    float
        The p-value in ``(0, 1]``.

    Raises
    ------
    InputError
        No unit, a count that is not a non-negative integer, or a pick out of range.
    """
    units = [np.asarray(c) for c in counts]
    picks = list(picked)
    if not units or len(units) != len(picks):
        raise InputError(f"counts and picked must be non-empty and of equal length, got "
                         f"{len(units)} and {len(picks)}")
    dist = [1]                  # number of pick vectors per total score
    expected = Fraction(0)
    observed = 0
    for s, (c, o) in enumerate(zip(units, picks, strict=True)):
        if c.ndim != 1 or c.size == 0 or not np.issubdtype(c.dtype, np.integer) \
                or (c < 0).any():
            raise InputError(f"counts[{s}] must be a non-empty 1-D array of non-negative "
                             f"integers, got {c!r}")
        o = check_int(o, f"picked[{s}]", 0)
        if o >= c.size:
            raise InputError(f"picked[{s}] = {o} is out of range for {c.size} options")
        dist = _convolve(dist, np.bincount(c).tolist())
        expected += Fraction(int(c.sum()), int(c.size))
        observed += int(c[o])
    dev = abs(observed - expected)
    hits = sum(n for t, n in enumerate(dist) if abs(t - expected) >= dev)
    return float(Fraction(hits, sum(dist)))


def _convolve(a: list[int], b: list[int]) -> list[int]:
    """The exact (integer) convolution of two count sequences: ``out[i + j] += a[i] b[j]``."""
    out = [0] * (len(a) + len(b) - 1)
    for i, u in enumerate(a):
        if u:
            for j, v in enumerate(b):
                if v:
                    out[i + j] += u * v
    return out


@dataclass(frozen=True)
class WithinLevelTest(Result):
    """Result of :func:`within_level_test`.

    Attributes
    ----------
    r : float
        The statistic: the most negative, over the candidates, of the mean over strata of the
        within-level correlation (NaN when no stratum has a contrast within its levels).
    best : int
        The candidate attaining it (-1 with ``r`` NaN).
    p : float
        One-sided permutation p-value (NaN with ``r`` NaN).
    n_perm : int
        Permutations evaluated (every one when ``exact``).
    exact : bool
        Whether every permutation of the units was enumerated (``p`` exact) rather than
        sampled (``p`` with the +1 correction).
    floor : float
        The smallest p the design allows, whatever the data: one over the number of
        permutations when exact, ``1 / (n_perm + 1)`` when sampled (NaN with ``r`` NaN).
    """

    r: float
    best: int
    p: float
    n_perm: int
    exact: bool = False
    floor: float = math.nan


def _within_corr(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``y [..., R, S]`` and ``x [R, S]`` after removing each level's
    (row's) mean from both: how the units of one level differ, not the levels."""
    a = y - y.mean(-1, keepdims=True)
    b = x - x.mean(-1, keepdims=True)
    num = (a * b).sum((-2, -1))
    den = np.sqrt((a * a).sum((-2, -1)) * float((b * b).sum()))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _varies_within_levels(a: np.ndarray) -> bool:
    """Whether some level (row) of ``a [R, S]`` holds two different values (exactly: a row
    of equal values centres to rounding noise, not to 0)."""
    return bool((a.max(-1) > a.min(-1)).any())


# long: 45 lines of docstring (the null and its design); the code is 45
def within_level_test(y: Any, x: Any, *, n_perm: int = 2000, seed: int = 0) -> WithinLevelTest:
    """Does a covariate explain an outcome beyond a design factor's levels? One-sided
    (the outcome falls as the covariate rises) permutation test within levels.

    Per stratum ``t`` (a task) the design has ``R`` levels of a factor (the fraction rho of
    foreign demonstrations) and ``S`` units (demonstration sets), **the same units at every
    level** (a set is mixed with more or fewer foreign demonstrations); the outcome
    ``y[t][r, s]`` (a set's accuracy) and each candidate covariate ``x[c][t][r, s]`` (its MMD²
    at layer ``c``) are centred within every level, and the statistic is the most negative
    over candidates of the mean over strata of their correlation. Under the null hypothesis
    that which unit was drawn is unrelated to the covariate's differences, the units of a
    stratum are exchangeable **as wholes**: a permutation relabels the units of each stratum,
    the same relabelling at every level (shuffling each level on its own would treat a unit's
    repeated effect as independent replicates and reject too often), and the candidate is
    re-chosen in each (so choosing it on the data is part of the test). With at most
    ``n_perm`` relabellings in all (``prod_t S_t!``) every one is enumerated and ``p`` is
    exact (never below one over their number); otherwise ``n_perm`` are drawn and ``p = (1 +
    #{null <= observed}) / (n_perm + 1)``. A stratum whose outcome or covariate does not vary
    within any level is left out of that candidate's mean; with no stratum left the result is
    NaN.

    Parameters
    ----------
    y : sequence of ``T`` arrays ``[R_t, S_t]``
        Outcome per stratum, level and unit.
    x : sequence of ``C`` sequences of ``T`` arrays ``[R_t, S_t]``
        The candidate covariates, each on the same grid as ``y``.
    n_perm : int
    seed : int

    Returns
    -------
    WithinLevelTest

    Raises
    ------
    InputError
        No stratum or candidate, shapes that differ from the outcome's, non-finite values.
    """
    n_perm = check_int(n_perm, "n_perm")
    check_seed(seed)
    ys = [np.asarray(v, dtype=np.float64) for v in y]
    xs = [[np.asarray(v, dtype=np.float64) for v in cand] for cand in x]
    if not ys or not xs:
        raise InputError("within_level_test needs at least one stratum and one candidate")
    for c, cand in enumerate(xs):
        if len(cand) != len(ys) or any(a.shape != b.shape or a.ndim != 2
                                       for a, b in zip(cand, ys, strict=True)):
            raise InputError(f"candidate {c}: one [levels, units] array per stratum, shaped as "
                             "the outcome's, is needed")
    if not all(np.isfinite(a).all() for a in ys) or \
            not all(np.isfinite(a).all() for cand in xs for a in cand):
        raise InputError("within_level_test: values must be finite")
    # (candidate, stratum) pairs with a contrast; relabelling the units keeps every level's
    # values, so this does not change under the null
    use = np.array([[_varies_within_levels(a) and _varies_within_levels(xc[t])
                     for t, a in enumerate(ys)] for xc in xs])
    if not use.any():
        return WithinLevelTest(math.nan, -1, math.nan, 0)
    n_all = math.prod(math.factorial(a.shape[1]) for a in ys)
    exact = n_all <= n_perm
    if exact:        # every relabelling, one stratum's permutations crossed with the others'
        per = [np.array(list(itertools.permutations(range(a.shape[1])))) for a in ys]
        grids = np.meshgrid(*[np.arange(len(p)) for p in per], indexing="ij")
        orders = [p[g.ravel()] for p, g in zip(per, grids, strict=True)]      # [B, S_t]
    else:
        rng = np.random.default_rng(seed)
        orders = [rng.permuted(np.tile(np.arange(a.shape[1]), (n_perm, 1)), axis=1)
                  for a in ys]
    B = len(orders[0])
    total = np.zeros((len(xs), B))
    obs = np.zeros(len(xs))
    for t, a in enumerate(ys):
        shuffled = np.transpose(a[:, orders[t]], (1, 0, 2))                   # [B, R, S]
        for c, xc in enumerate(xs):
            if use[c, t]:
                obs[c] += float(_within_corr(a, xc[t]))
                total[c] += _within_corr(shuffled, xc[t])
    k = use.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        obs = np.where(k > 0, obs / np.maximum(k, 1), np.nan)
        null = np.where((k > 0)[:, None], total / np.maximum(k, 1)[:, None], np.inf)
    best = int(np.nanargmin(obs))
    hits = int(np.count_nonzero(null.min(0) <= obs[best] + 1e-12))
    if exact:
        return WithinLevelTest(float(obs[best]), best, hits / B, B, True, 1.0 / B)
    return WithinLevelTest(float(obs[best]), best, (1 + hits) / (n_perm + 1), n_perm, False,
                           1.0 / (n_perm + 1))


@dataclass(frozen=True)
class PairingTest(Result):
    """Result of :func:`pairing_permutation_test`.

    Attributes
    ----------
    agree : int
        The statistic: the units whose own pair agrees.
    n : int
        Units tested.
    p : float
        One-sided permutation p-value of agreeing at least as often (NaN without units).
    n_perm : int
        Pairings evaluated (every one when ``exact``).
    exact : bool
        Whether every pairing was enumerated (``p`` exact) rather than sampled (``p`` with the
        +1 correction).
    floor : float
        The smallest p this test allows on ``n`` units, whatever the data
        (:func:`pairing_floor`; NaN without units).
    """

    agree: int
    n: int
    p: float
    n_perm: int
    exact: bool
    floor: float


def _blocks(blocks: Any, n: int) -> list[np.ndarray]:
    """Unit indices of each block (in order of first appearance); every unit its own block
    when ``blocks`` is None. Raises InputError unless ``n`` labels in equal-sized blocks."""
    if blocks is None:
        return [np.array([i]) for i in range(n)]
    labels = list(blocks)
    if len(labels) != n:
        raise InputError(f"blocks must hold one label per unit: {len(labels)} for {n} units")
    seen: dict[Any, list[int]] = {}
    for i, b in enumerate(labels):
        seen.setdefault(b, []).append(i)
    sizes = {len(v) for v in seen.values()}
    if len(sizes) > 1:
        raise InputError(f"blocks must be of equal size, got sizes {sorted(sizes)}")
    return [np.array(v) for v in seen.values()]


def _n_pairings(n_blocks: int, size: int) -> int:
    return math.factorial(n_blocks) * math.factorial(size) ** n_blocks


def pairing_floor(n: int, n_perm: int = 2000, block_size: int = 1) -> float:
    """The smallest p :func:`pairing_permutation_test` can give on ``n`` units in blocks of
    ``block_size`` with ``n_perm``: one over the number of re-pairings ``B! (S!)^B`` (``B``
    blocks of ``S``) when every one is enumerated (the observed pairing is one of them), else
    ``1 / (n_perm + 1)``; NaN without units.
    """
    n = check_int(n, "n", 0)
    n_perm = check_int(n_perm, "n_perm")
    size = check_int(block_size, "block_size")
    if n == 0:
        return math.nan
    if n % size:
        raise InputError(f"{n} units do not split into blocks of {size}")
    total = _n_pairings(n // size, size)
    return 1.0 / total if total <= n_perm else 1.0 / (n_perm + 1)


def _repairings(groups: list[np.ndarray], act: np.ndarray
                ) -> tuple[list[list[int]], list[tuple[np.ndarray, np.ndarray]], int]:
    """The structure of the re-pairings that move blocks onto blocks and active units onto
    active units: the classes of blocks with the same number of active units (a block may go
    only to a block of its class), each block's (active, inactive) units, and the number of
    distinct re-pairings of the active units (inactive units contribute nothing)."""
    split = [(g[act[g]], g[~act[g]]) for g in groups]
    classes: dict[int, list[int]] = {}
    for b, (a, _) in enumerate(split):
        if a.size:                  # a block without active units changes nothing: stays
            classes.setdefault(a.size, []).append(b)
    size = math.prod(math.factorial(len(c)) for c in classes.values()) * \
        math.prod(math.factorial(a.size) for a, _ in split)
    return list(classes.values()), split, size


# long: 40 lines of docstring (the null, its blocks and active units); the code is 40
def pairing_permutation_test(match: Any, *, blocks: Any = None, active: Any = None,
                             n_perm: int = 2000, seed: int = 0) -> PairingTest:
    """Do units' own pairs agree more often than pairs drawn across units? One-sided
    permutation test of a pairing.

    Unit ``i`` has two values (the saturation points of its accuracy curve and of a
    distillation curve); ``match[i, j]`` says whether unit ``i``'s first value agrees with
    unit ``j``'s second (within one doubling). The statistic is the number of active units
    whose own pair agrees, ``sum_i match[i, i]`` over the ``active`` units (those where the
    first value means something: accuracy rises). Under the null hypothesis that the second
    values carry no information about which unit they came from (only about how they are
    distributed), re-pairings are equally likely: agreement that only reflects both values
    piling up at the same ``k`` is as frequent under re-pairing and gives no small p. Units
    come in ``blocks`` (the demonstration sets of one task, which share its test items and
    prompt format): a re-pairing moves whole blocks onto blocks and permutes the units inside
    each, so that a task-level coincidence counts once, not once per set; and it maps active
    units onto active units (the inactive ones take no part, so a second value cannot count
    for telling active from inactive units). With at most ``n_perm`` distinct re-pairings of
    the active units every one is enumerated and ``p`` is exact (never below one over their
    number, which is at most ``B! (S!)^B`` for ``B`` blocks of ``S``, so never below
    :func:`pairing_floor`); otherwise ``n_perm`` are drawn uniformly and ``p = (1 +
    #{null >= observed}) / (n_perm + 1)``.

    Parameters
    ----------
    match : array-like of bool ``[n, n]``
        Agreement of every unit's first value with every unit's second.
    blocks : sequence of ``n`` hashable labels, optional
        The block of every unit (equal-sized blocks); None: every unit is its own block.
    active : array-like of bool ``[n]``, optional
        The units that take part (default all).
    n_perm : int
    seed : int

    Returns
    -------
    PairingTest
        ``n`` is the number of active units; NaN p and floor without any.

    Raises
    ------
    InputError
        ``match`` not square or not boolean (0/1), blocks of unequal size or of the wrong
        length, ``active`` of the wrong length.
    """
    n_perm = check_int(n_perm, "n_perm")
    check_seed(seed)
    m = np.asarray(match)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise InputError(f"match must be a square [n, n] matrix, got shape {m.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise InputError("match must hold booleans (or 0/1)")
        m = m.astype(bool)
    n = m.shape[0]
    groups = _blocks(blocks, n)
    act = np.ones(n, dtype=bool) if active is None else np.asarray(active)
    if act.shape != (n,):
        raise InputError(f"active must hold one flag per unit: shape {act.shape} for {n}")
    if act.dtype != bool:
        if not np.isin(act, (0, 1)).all():
            raise InputError("active must hold booleans (or 0/1)")
        act = act.astype(bool)
    if not act.any():
        return PairingTest(0, 0, math.nan, 0, True, math.nan)
    obs = int(np.trace(m[np.ix_(act, act)]))
    classes, split, total = _repairings(groups, act)
    if total <= n_perm:
        pis = []
        for sigmas in itertools.product(*(itertools.permutations(c) for c in classes)):
            onto = {b: t for c, sg in zip(classes, sigmas, strict=True)
                    for b, t in zip(c, sg, strict=True)}
            moved = sorted(onto)
            per_block = [itertools.permutations(split[onto[b]][0]) for b in moved]
            for images in itertools.product(*per_block):
                pi = np.arange(n)
                for b, img in zip(moved, images, strict=True):
                    pi[split[b][0]] = img
                pis.append(pi)
        pis_a = np.array(pis)
        null = m[np.arange(n)[act], pis_a[:, act]].sum(1)
        return PairingTest(obs, int(act.sum()), float(Fraction(int((null >= obs).sum()),
                                                               len(pis))),
                           len(pis), True, 1.0 / len(pis))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        pi = np.arange(n)
        for c in classes:
            for b, t in zip(c, rng.permutation(c), strict=True):
                pi[split[b][0]] = rng.permutation(split[t][0])
        hits += int(m[np.arange(n)[act], pi[act]].sum() >= obs)
    return PairingTest(obs, int(act.sum()), (1 + hits) / (n_perm + 1), n_perm, False,
                       1.0 / (n_perm + 1))
