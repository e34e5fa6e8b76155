"""MMD estimators and the permutation test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import icldistill as ic
from icldistill.core.mmd import kernel_row_means, permutation_splits, self_kernel_mean

from .conftest import matrices


def _gram(x, y, h):
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * h * h))


def _brute_mmd2(x, y, h, unbiased):
    kxx, kyy, kxy = _gram(x, x, h), _gram(y, y, h), _gram(x, y, h)
    n, m = len(x), len(y)
    if not unbiased:
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


@given(matrices(st.integers(2, 9), 3), matrices(st.integers(2, 9), 3), st.floats(0.5, 3.0),
       st.integers(1, 30))
def test_quadratic_estimators_match_definition_for_any_tiling(x, y, h, tile):
    for est, unbiased in (("biased", False), ("unbiased", True)):
        expected = _brute_mmd2(x, y, h, unbiased)
        got = ic.mmd(x, y, estimator=est, bandwidth=h, tile_elements=tile)
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


@given(matrices(st.integers(2, 9), 2), matrices(st.integers(2, 9), 2))
def test_linear_estimator_matches_definition(x, y):
    h = 1.0
    p = min(len(x), len(y)) // 2
    k = lambda a, b: float(_gram(a[None], b[None], h)[0, 0])  # noqa: E731
    vals = [k(x[2 * i], x[2 * i + 1]) + k(y[2 * i], y[2 * i + 1]) - k(x[2 * i], y[2 * i + 1])
            - k(x[2 * i + 1], y[2 * i]) for i in range(p)]
    assert ic.mmd(x, y, estimator="linear", bandwidth=h) == pytest.approx(np.mean(vals), rel=1e-10)


def test_sqrt_mode_and_biased_nonnegative():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(25, 3)) + 1
    b = ic.mmd(x, y, estimator="biased", bandwidth=1.0)
    assert b > 0
    assert ic.mmd(x, y, estimator="biased", squared=False, bandwidth=1.0) == pytest.approx(b**0.5)


def test_unbiased_estimator_is_unbiased_exhaustively():
    """E[MMD_u^2] over every possible sample equals the population MMD^2 (discrete P, Q)."""
    support = np.array([[0.0, 0.0], [1.0, 0.5], [-0.5, 2.0]])
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.1, 0.3, 0.6])
    h = 0.9
    kss = _gram(support, support, h)
    population = p @ kss @ p + q @ kss @ q - 2 * p @ kss @ q
    n, m = 2, 3
    expected_u = expected_v = 0.0
    for ix in itertools.product(range(3), repeat=n):
        for iy in itertools.product(range(3), repeat=m):
            w = np.prod(p[list(ix)]) * np.prod(q[list(iy)])
            x, y = support[list(ix)], support[list(iy)]
            expected_u += w * ic.mmd(x, y, estimator="unbiased", bandwidth=h)
            expected_v += w * ic.mmd(x, y, estimator="biased", bandwidth=h)
    assert expected_u == pytest.approx(population, rel=1e-10)
    assert abs(expected_v - population) > 1e-3  # the V-statistic is biased


def test_blockwise_matches_single_tile_float32():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    y = (rng.normal(size=(500, 16)) + 0.1).astype(np.float32)
    a = ic.mmd(x, y, bandwidth=4.0, tile_elements=64 * 64)
    b = ic.mmd(x, y, bandwidth=4.0, tile_elements=1 << 24)
    assert a == pytest.approx(b, rel=1e-4)
    assert a == pytest.approx(_brute_mmd2(x.astype(np.float64), y.astype(np.float64), 4.0, True),
                              rel=1e-3)


@pytest.mark.parametrize("presum", [1, 8, 16])
def test_kernel_row_means_float32_presums_agree_with_float64(presum):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(203, 16))  # 203: a remainder run
    k = ic.make_kernel("gaussian", bandwidth=4.0)
    exact = _gram(x, y, 4.0).mean(1)
    x64, y64 = torch.from_numpy(x), torch.from_numpy(y)
    ref = kernel_row_means(x64, y64, k)
    np.testing.assert_allclose(ref.numpy(), exact, rtol=1e-12)
    # float64 Gram entries: presum does not apply, every entry is accumulated in float64
    assert torch.equal(kernel_row_means(x64, y64, k, presum=presum), ref)
    for tile in (64 * 64, 1 << 24):
        got = kernel_row_means(x64.float(), y64.float(), k, presum=presum, tile_elements=tile)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), exact, rtol=1e-6)


@given(matrices(st.integers(1, 12), 3), st.integers(1, 200))
def test_self_kernel_mean_matches_definition_for_any_tiling(x, tile):
    k = ic.make_kernel("gaussian", bandwidth=1.5)
    got = self_kernel_mean(torch.from_numpy(x), k, tile_elements=tile)
    assert got == pytest.approx(_gram(x, x, 1.5).mean(), rel=1e-12)


# ----------------------------------------------------------------------------- permutation test
def test_permutation_null_equals_loop_over_permutations():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(9, 2)), rng.normal(size=(7, 2)) + 0.5
    res = ic.mmd_test(x, y, permutations=50, seed=3, bandwidth=1.1)
    splits = permutation_splits(9, 7, 50, seed=3)
    assert splits.shape == (50, 16) and (splits.sum(1) == 9).all()
    z = np.concatenate([x, y])
    for b in range(50):
        in_x = splits[b]
        stat = _brute_mmd2(z[in_x], z[~in_x], 1.1, False)
        assert res.null_distribution[b] == pytest.approx(stat, rel=1e-10)
    assert res.statistic == pytest.approx(_brute_mmd2(x, y, 1.1, False), rel=1e-10)
    expected_p = (1 + np.sum(res.null_distribution >= res.statistic - 1e-15)) / 51
    assert res.p_value == pytest.approx(expected_p)
    assert res.unbiased_statistic == pytest.approx(_brute_mmd2(x, y, 1.1, True), rel=1e-10)


def test_permutation_test_streamed_equals_in_memory_and_is_deterministic():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=(40, 3)) + 0.3
    a = ic.mmd_test(x, y, permutations=200, seed=7)
    b = ic.mmd_test(x, y, permutations=200, seed=7, max_memory=4096)
    c = ic.mmd_test(x, y, permutations=200, seed=7)
    assert a.p_value == b.p_value == c.p_value
    np.testing.assert_allclose(a.null_distribution, b.null_distribution, rtol=1e-10)
    np.testing.assert_array_equal(a.null_distribution, c.null_distribution)
    assert a.statistic == pytest.approx(b.statistic, rel=1e-12)
    assert a.bandwidth == pytest.approx(ic.median_bandwidth(x, y))
    d = ic.mmd_test(x, y, permutations=200, seed=8)
    assert not np.array_equal(a.null_distribution, d.null_distribution)


def test_p_values_uniform_under_null_and_small_under_shift():
    rng = np.random.default_rng(5)
    pvals = []
    for i in range(200):
        x, y = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
        pvals.append(ic.mmd_test(x, y, permutations=99, seed=i, bandwidth=1.5).p_value)
    pvals = np.array(pvals)
    # roughly uniform: each quarter holds 50 +- ~4 sd of the 200 p-values
    counts = np.histogram(pvals, bins=[0, 0.25, 0.5, 0.75, 1.0])[0]
    assert np.all(np.abs(counts - 50) < 25), counts
    assert 0.01 <= np.mean(pvals <= 0.05) <= 0.11
    shifted = [ic.mmd_test(rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + 1.0,
                           permutations=199, seed=i).p_value for i in range(10)]
    assert max(shifted) <= 0.01


@pytest.mark.parametrize("kernel,params", [("laplace", {}), ("imq", {}), ("linear", {}),
                                           ("polynomial", {"degree": 3}), ("softmax", {}),
                                           ("attention", {"key_dim": 2})])
def test_every_kernel_runs_through_estimators_and_test(kernel, params):
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 4)) * 0.5, rng.normal(size=(25, 4)) * 0.5 + 0.4
    res = ic.mmd_test(x, y, kernel=kernel, permutations=99, **params)
    assert res.statistic == pytest.approx(ic.mmd(x, y, kernel, "biased", **params), rel=1e-10)
    assert 0 < res.p_value <= 1
    assert np.isfinite(ic.mmd(x, y, kernel, "linear", **params))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("x,y,kwargs,match", [
    (np.zeros((0, 3)), np.ones((4, 3)), {}, "empty"),
    (np.ones((1, 3)), np.ones((4, 3)), {"estimator": "unbiased", "bandwidth": 1.0},
     "at least 2 row"),
    (np.ones((1, 3)), np.ones((4, 3)), {"estimator": "linear", "bandwidth": 1.0},
     "at least 2 row"),
    (np.ones((4, 3)), np.ones((4, 2)), {}, "dimension mismatch"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones((4, 2)), {}, "NaN or infinite"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), np.ones((4, 2)), {}, "NaN or infinite"),
    (np.ones((4, 3)), np.zeros((4, 3)), {"kernel": "nope"}, "unknown kernel"),
    (np.ones((4, 3)), np.zeros((4, 3)), {"bandwidth": -2.0}, "positive"),
    (np.ones((4, 3)), np.zeros((4, 3)), {"estimator": "quadratic"}, "unknown estimator"),
    (np.ones((4, 3)) * 30, np.ones((4, 3)) * 30, {"kernel": "softmax", "scale": 10.0},
     "overflow"),
])
def test_bad_input_is_rejected_with_a_clear_message(x, y, kwargs, match):
    with pytest.raises(ic.InputError, match=match):
        ic.mmd(x, y, **kwargs)


def test_mmd_test_bad_input():
    x = np.random.default_rng(0).normal(size=(5, 2))
    with pytest.raises(ic.InputError, match="permutations"):
        ic.mmd_test(x, x + 1, permutations=0)
    with pytest.raises(ic.InputError, match="empty"):
        ic.mmd_test(x, np.zeros((0, 2)))
    with pytest.raises(ic.InputError, match=r"2-D array"):
        ic.mmd_test(np.zeros((2, 2, 2)), x)


def test_biased_allows_single_rows():
    assert ic.mmd(np.zeros((1, 2)), np.ones((1, 2)), estimator="biased", bandwidth=1.0) > 0


@pytest.mark.parametrize("max_memory", [4096, 2 * 100 * 8 * 7, 10**9])
def test_streamed_kernel_sums_equal_the_in_memory_ones(max_memory):
    """Every field of the streamed sums (traces included: row blocks not aligned with the
    X / Y boundary, so a block's diagonal starts at its row offset) equals the in-memory one."""
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(53, 3)), rng.normal(size=(47, 3)) + 0.2
    full = ic.mmd_test(x, y, permutations=20, seed=1)
    part = ic.mmd_test(x, y, permutations=20, seed=1, max_memory=max_memory)
    for f in ("sum_xx", "sum_yy", "sum_xy", "trace_xx", "trace_yy"):
        assert getattr(part.sums, f) == pytest.approx(getattr(full.sums, f), rel=1e-12)
    assert part.unbiased_statistic == pytest.approx(full.unbiased_statistic, rel=1e-10)
    assert part.unbiased_statistic == pytest.approx(_brute_mmd2(x, y, full.bandwidth, True),
                                                    rel=1e-9)


def test_permutation_splits_bad_input():
    for bad in ({"n": 0}, {"m": 1.5}, {"permutations": True}):
        args = {"n": 3, "m": 2, "permutations": 4, **bad}
        with pytest.raises(ic.InputError, match="positive integer"):
            permutation_splits(**args)
    np.testing.assert_array_equal(permutation_splits(3, 2, 4, seed=1),
                                  permutation_splits(3, 2, 4, seed=1))
