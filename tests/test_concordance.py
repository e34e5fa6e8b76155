"""within_item_concordance against a brute-force double loop and an exact permutation
enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.stats import within_item_concordance
from icldistill.core.validation import InputError


def _brute(correct, x, strata=None):
    """Score and number of the discordant pairs, one pair at a time."""
    n, c = x.shape
    g = np.zeros((n, c), dtype=int) if strata is None else strata
    score = pairs = 0.0
    for i in range(n):
        for a in range(c):
            for b in range(c):
                if np.isnan(x[i, a]) or np.isnan(x[i, b]) or g[i, a] != g[i, b]:
                    continue
                if correct[i, a] and not correct[i, b]:
                    pairs += 1
                    score += 1.0 if x[i, a] < x[i, b] else 0.5 if x[i, a] == x[i, b] else 0.0
    return score, pairs


@st.composite
def _tables(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, 5))
    # few distinct values: ties are common
    x = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, np.nan]),
                               min_size=n * c, max_size=n * c))).reshape(n, c)
    correct = np.array(draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c))
                       ).reshape(n, c)
    strata = np.array(draw(st.lists(st.integers(0, 2), min_size=n * c, max_size=n * c))
                      ).reshape(n, c)
    return correct, x, strata


@settings(max_examples=150, deadline=None)
@given(_tables(), st.booleans())
def test_equals_the_pairwise_definition(table, stratified):
    correct, x, strata = table
    s = strata if stratified else None
    score, pairs = _brute(correct, x, s)
    r = within_item_concordance(correct, x, strata=s, n_boot=50, n_perm=50)
    assert r.n_pairs == pairs
    if pairs == 0:
        assert np.isnan(r.value) and np.isnan(r.p) and r.n_items == 0
    else:
        assert r.value == pytest.approx(score / pairs, abs=1e-12)
        assert r.low <= r.value + 1e-12 and r.value <= r.high + 1e-12
        assert 0 < r.p <= 1


def test_perfect_reversed_and_invariances():
    rng = np.random.default_rng(1)
    x = rng.random((40, 6))
    right = x < np.median(x, axis=1, keepdims=True)         # the lower half of each item
    assert within_item_concordance(right, x, n_perm=200).value == 1.0
    assert within_item_concordance(~right, x, n_perm=200).value == 0.0
    r = within_item_concordance(right, x, n_perm=200)
    assert r.p == pytest.approx(1 / 201)                   # nothing as extreme in 200
    # a monotone transform of x and a reordering of the conditions change nothing
    cols = rng.permutation(6)
    same = within_item_concordance(right[:, cols], np.exp(3 * x[:, cols]), n_perm=200)
    assert same.value == r.value and same.n_pairs == r.n_pairs


def test_permutation_p_matches_exact_enumeration():
    """Two items of three conditions: the 3! x 3! within-item permutations are equally likely
    under the null; the Monte Carlo p converges to their exact tail."""
    x = np.array([[0.1, 0.4, 0.9], [0.3, 0.2, 0.8]])
    correct = np.array([[True, False, False], [True, True, False]])
    obs = within_item_concordance(correct, x, n_perm=10).value
    stats = []
    for p0 in itertools.permutations(range(3)):
        for p1 in itertools.permutations(range(3)):
            xp = np.stack([x[0, list(p0)], x[1, list(p1)]])
            s, m = _brute(correct, xp)
            stats.append(s / m)
    exact = np.mean(np.abs(np.array(stats) - 0.5) >= abs(obs - 0.5) - 1e-12)
    mc = within_item_concordance(correct, x, n_perm=20_000, seed=3).p
    assert mc == pytest.approx(exact, abs=0.015)


def test_strata_keep_pairs_and_permutations_inside():
    """Where the score only separates the strata (right answers all in stratum 1, which has
    lower x), the unstratified concordance is high but the stratified one is 0.5."""
    rng = np.random.default_rng(2)
    n, c = 200, 8
    strata = rng.integers(0, 2, (n, c))
    x = np.where(strata == 1, 0.0, 1.0) + 0.0            # x is the stratum only
    correct = (strata == 1) & (rng.random((n, c)) < 0.7) | (rng.random((n, c)) < 0.1)
    plain = within_item_concordance(correct, x, n_perm=300)
    strat = within_item_concordance(correct, x, strata=strata, n_perm=300)
    assert plain.value > 0.7 and plain.p < 0.01
    assert strat.value == 0.5 and strat.p == 1.0


def test_null_is_not_rejected_too_often():
    rng = np.random.default_rng(4)
    ps = [within_item_concordance(rng.random((60, 5)) < 0.5, rng.random((60, 5)),
                                  n_boot=20, n_perm=200, seed=s).p for s in range(40)]
    assert np.mean(np.array(ps) < 0.05) <= 0.15


def test_seeded_and_bad_input():
    rng = np.random.default_rng(5)
    c, x = rng.random((30, 4)) < 0.5, rng.random((30, 4))
    assert within_item_concordance(c, x, seed=7) == within_item_concordance(c, x, seed=7)
    with pytest.raises(InputError, match="same shape"):
        within_item_concordance(c, x[:, :3])
    with pytest.raises(InputError, match="infinite"):
        within_item_concordance(c, np.where(c, np.inf, x))
    with pytest.raises(InputError, match="boolean"):
        within_item_concordance(np.full((30, 4), 2), x)
    with pytest.raises(InputError, match="strata"):
        within_item_concordance(c, x, strata=np.zeros((30, 3), dtype=int))
