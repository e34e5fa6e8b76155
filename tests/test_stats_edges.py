"""Edge cases of the paired statistics, the label metrics and the Rademacher bound: inputs that
used to give a number (or a raw numpy error) and now raise an :class:`InputError` naming them,
and the scale invariance of the sign-flip test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.bounds import rademacher_complexity
from icldistill.core.metrics import bootstrap_values, macro_f1
from icldistill.core.stats import (
    _signs_exact,
    paired_bootstrap_ci,
    paired_comparisons,
    sign_flip_test,
    spearman,
    stratified_bootstrap_ci,
    stratified_sign_flip_test,
    within_item_concordance,
)
from icldistill.core.validation import InputError

# ------------------------------------------------------------------------------- spearman


@pytest.mark.parametrize(("x", "y", "name"), [
    ([1, 2, np.nan, 4, 5], [1, 2, 3, 4, 5], "x"),
    ([np.nan, 2, 3, 4, 5], [5, 4, 3, 2, 1], "x"),
    ([1, 2, np.inf, 4], [1, 2, 3, 4], "x"),
    ([1, 2, 3, 4], [1, -np.inf, 3, 4], "y"),
])
def test_spearman_refuses_nan_and_inf(x, y, name):
    """Regression: a NaN or infinite value gave a correlation (0.7, 0.0, 0.8) instead of an
    error; a NaN has no rank."""
    with pytest.raises(InputError, match=f"{name} contains 1 NaN or infinite"):
        spearman(x, y)


def test_spearman_bad_shapes_and_text_are_input_errors():
    """Regression: mismatched lengths and text raised a plain ValueError, not an InputError."""
    with pytest.raises(InputError, match="1-D arrays of equal length"):
        spearman([1, 2, 3], [1, 2])
    with pytest.raises(InputError, match="x: expected numbers"):
        spearman(["a", "b", "c"], [1, 2, 3])
    # the documented NaN conventions are kept
    assert np.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    assert np.isnan(spearman([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]))
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


# ------------------------------------------------------------------------------- macro-F1
_T = np.array(["a", "b", "a", "c"], dtype=object)
_P = np.array(["a", "a", "a", "c"], dtype=object)


def test_macro_f1_refuses_a_repeated_label():
    """Regression: ``labels=['a', 'a', 'b', 'c']`` counted 'a' twice (0.65 instead of 0.6) while
    :func:`bootstrap_values`, documented as equal bit for bit, gave 0.6."""
    assert macro_f1(_T, _P, labels=["a", "b", "c"]) == pytest.approx(0.6)
    with pytest.raises(InputError, match="'a' is given twice"):
        macro_f1(_T, _P, labels=["a", "a", "b", "c"])
    with pytest.raises(InputError, match="'a' is given twice"):
        bootstrap_values(_T, _P, np.arange(4)[None], "macro_f1", labels=["a", "a", "b", "c"])
    with pytest.raises(InputError, match="given twice"):      # equal labels are one label
        macro_f1([1, 2], [1, 2], labels=[1, 1.0, 2])


@pytest.mark.parametrize("labels", ["abc", b"abc", 5, [["a"]]])
def test_macro_f1_refuses_a_bare_string_and_non_labels(labels):
    """Regression: ``labels='abc'`` was split into the characters 'a', 'b', 'c'."""
    with pytest.raises(InputError, match="labels"):
        macro_f1(_T, _P, labels=labels)
    with pytest.raises(InputError, match="labels"):
        bootstrap_values(_T, _P, np.arange(4)[None], "macro_f1", labels=labels)


def test_macro_f1_distinct_labels_still_match_bootstrap_values():
    idx = np.array([[0, 1, 2, 3], [0, 0, 1, 3], [2, 2, 2, 2]])
    for labels in (None, ["a", "b", "c"], ("c", "b", "a", "z"), np.array(["a", "b", "c"])):
        got = bootstrap_values(_T, _P, idx, "macro_f1", labels=labels)
        for r in range(idx.shape[0]):
            assert got[r] == macro_f1(_T[idx[r]], _P[idx[r]], labels)


# ------------------------------------------------------------------------ sign-flip scale
_QUARTERS = np.array([0.5, 0.25, 0.75, 0.5, 0.25, -0.25, 0.5, 0.75, 0.25, 0.5])


def test_sign_flip_p_does_not_depend_on_the_scale_of_d():
    """Regression: ``p = 0.0098`` became 1.0 once ``d`` was multiplied by 1e-10 (an absolute
    tie tolerance of 1e-9 made every sum a tie; on the lattice path every value rounded to
    0)."""
    for d in (_QUARTERS, np.tile(_QUARTERS, 5)):         # exact enumeration, lattice
        p = sign_flip_test(d)
        assert p < 0.01
        for s in (1e-6, 1e-9, 1e-10, 1e-12, 1e6, 1e12):
            assert sign_flip_test(d * s) == p
    rng = np.random.default_rng(0)
    d = rng.normal(size=50) * 0.3 + 0.1                  # Monte Carlo
    p = sign_flip_test(d, n_perm=2000, seed=3)
    for s in (1e-8, 1e-11, 1e9):
        assert sign_flip_test(d * s, n_perm=2000, seed=3) == p
    p = stratified_sign_flip_test([_QUARTERS, np.tile(_QUARTERS, 5)])
    assert p < 1e-9
    assert stratified_sign_flip_test([_QUARTERS * 1e-10, np.tile(_QUARTERS, 5) * 1e-10]) == p


def test_sign_flip_on_a_scaled_lattice_is_still_exact():
    """Regression: the lattice is found after dividing by ``max |d|``, so thirds below 1 (and
    their multiples by any scale) keep the exact p-value of the documented lattice path."""
    num = [1, 2, -1, 2, 2, 1, 1, -2, 2, 2, 1, 2, 2, 1, -2, 1, 2, 2, 1, 1, 2]     # 21 items
    d = np.asarray(num, dtype=np.float64) / 3
    exact = _signs_exact(d)                  # all 2^21 sign vectors
    assert sign_flip_test(d) == pytest.approx(exact, rel=1e-9)
    assert sign_flip_test(d * 7e-11) == pytest.approx(exact, rel=1e-9)


_VALUES = st.sampled_from([-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0,
                           -2 / 3, -1 / 3, 1 / 3, 2 / 3])


@settings(max_examples=60, deadline=None)
@given(d=st.lists(_VALUES, min_size=1, max_size=40), exponent=st.floats(-12.0, 12.0))
def test_sign_flip_is_scale_invariant_on_lattices(d, exponent):
    """Regression: the p-value of ``c d`` equals that of ``d`` for any ``c`` in
    ``[1e-12, 1e12]`` (McNemar, exact enumeration and lattice paths)."""
    a = np.asarray(d)
    c = 10.0 ** exponent
    assert sign_flip_test(a * c) == pytest.approx(sign_flip_test(a), rel=1e-12, abs=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(21, 60), exponent=st.floats(-12.0, 12.0))
def test_sign_flip_is_scale_invariant_off_lattices(seed, n, exponent):
    """Regression: the Monte Carlo p-value of ``c d`` equals that of ``d`` (same seed)."""
    a = np.random.default_rng(seed).normal(0.1, 0.3, size=n)
    c = 10.0 ** exponent
    assert (sign_flip_test(a * c, n_perm=500, seed=1)
            == sign_flip_test(a, n_perm=500, seed=1))


@settings(max_examples=30, deadline=None)
@given(tasks=st.lists(st.lists(_VALUES, min_size=1, max_size=15), min_size=1, max_size=3),
       exponent=st.floats(-12.0, 12.0))
def test_stratified_sign_flip_is_scale_invariant(tasks, exponent):
    """Regression: the stratified p-value of ``c d`` equals that of ``d``."""
    parts = [np.asarray(t) for t in tasks]
    c = 10.0 ** exponent
    p = stratified_sign_flip_test(parts, n_perm=500)
    assert (stratified_sign_flip_test([a * c for a in parts], n_perm=500)
            == pytest.approx(p, rel=1e-12, abs=0))


# --------------------------------------------------------------------------------- seeds
_D = np.array([0.5, -0.25, 0.75, 1 / 3, 0.1] * 6)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0", None])
@pytest.mark.parametrize("call", [
    lambda s: sign_flip_test(np.random.default_rng(0).normal(size=40), seed=s),
    lambda s: sign_flip_test(_D, seed=s),
    lambda s: paired_bootstrap_ci(_D, seed=s),
    lambda s: stratified_bootstrap_ci([_D, _D[:7]], seed=s),
    lambda s: stratified_sign_flip_test([_D, _D[:7]], seed=s),
    lambda s: within_item_concordance(np.eye(3, dtype=bool), np.arange(9.0).reshape(3, 3),
                                      seed=s),
    lambda s: paired_comparisons([], {}, seed=s),
])
def test_stats_refuse_a_bad_seed(call, seed):
    """Regression: ``seed=-1`` (or 1.5) raised numpy's raw ``ValueError``/``TypeError`` from
    ``default_rng``, or went unnoticed on the paths that draw nothing."""
    with pytest.raises(InputError, match=r"seed must be an integer >= 0"):
        call(seed)


def test_stats_accept_numpy_integer_seeds():
    assert paired_bootstrap_ci(_D, seed=np.int64(4)) == paired_bootstrap_ci(_D, seed=4)


# -------------------------------------------------------------------------------- bounds
_KEYS = torch.randn(6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_rademacher_attention_key_dim_must_leave_value_columns():
    """Regression: ``kernel="attention", key_dim=d`` split off no value columns and returned
    0.0, 0.0 instead of checking the token dimension."""
    with pytest.raises(InputError, match=r"key_dim=5 must be between 1 and the token "
                                         r"dimension minus 1 \(4\)"):
        rademacher_complexity(_KEYS, 1.0, kernel="attention", key_dim=5)
    res = rademacher_complexity(_KEYS, 1.0, kernel="attention", key_dim=3)
    assert res.closed_form > 0 and res.monte_carlo > 0


@pytest.mark.parametrize("samples", ["exhaustiv", "", float("nan"), None, True, 0, 2.5, -3])
def test_rademacher_refuses_unknown_samples(samples):
    """Regression: ``samples='exhaustiv'`` raised int()'s raw ValueError."""
    with pytest.raises(InputError, match="samples must be a positive integer or 'exhaustive'"):
        rademacher_complexity(_KEYS, 1.0, samples=samples)


@pytest.mark.parametrize("radius", [None, "x", float("nan"), -1.0, True, "1"])
def test_rademacher_refuses_a_bad_radius(radius):
    """Regression: ``radius=None`` or text raised float()'s raw TypeError/ValueError; ``True``
    and ``"1"`` passed as 1.0."""
    with pytest.raises(InputError, match=r"radius must (be a number|lie in)"):
        rademacher_complexity(_KEYS, radius)


def test_rademacher_valid_samples_are_unchanged():
    assert rademacher_complexity(_KEYS, 1.0, samples="exhaustive").samples == 2 ** 6
    assert rademacher_complexity(_KEYS, 1.0, samples=5.0).samples == 5
    a = rademacher_complexity(_KEYS, 1.0, samples=50, seed=2)
    assert a == rademacher_complexity(_KEYS, 1.0, samples=50, seed=2)


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_check_int_refuses_infinity(value):
    """Regression: check_int(inf) let int()'s OverflowError through (a traceback, e.g. for
    steps=inf or seed=inf)."""
    from icldistill.core.validation import check_int

    with pytest.raises(InputError, match="must be an integer >= 1"):
        check_int(value, "steps")
