"""Kernel edge cases: overflow in greedy MMD, half precision, parameter and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import icldistill as ic
from icldistill.core.kernels import (
    attention_kernel,
    gaussian_kernel,
    inverse_multiquadric_kernel,
    laplace_kernel,
    linear_kernel,
    make_kernel,
    median_bandwidth,
    polynomial_kernel,
    softmax_kernel,
)
from icldistill.core.mmd import kernel_row_means, permutation_splits, self_kernel_mean
from icldistill.core.validation import InputError
from icldistill.selection import Pool, make_selector
from icldistill.selection.greedy import greedy_mmd_batch

from .conftest import matrices


def _raises(fn, *words):
    """Call ``fn``; it must raise a one-line InputError whose message holds every word."""
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# ----------------------------------------------------------------------------- greedy overflow
def _overflowing_tokens(positive_values: bool = False, zero_value: bool = False):
    """Tokens ``[k | v]`` (``key_dim=2``) whose keys are large along axis 1, targets whose keys
    lie along axis 0: ``K(c, t)`` is finite but ``K(c, c) = |v|^2 exp(|k|^2)`` overflows."""
    rng = np.random.default_rng(0)
    c = np.zeros((6, 4))
    c[:, 1] = 30.0 + rng.normal(size=6)
    c[:, 0] = rng.normal(size=6)
    c[:, 2:] = rng.normal(size=(6, 2))
    t = np.zeros((4, 4))
    t[:, 0] = rng.normal(size=4)
    t[:, 2:] = rng.normal(size=(4, 2))
    if positive_values:
        c[:, 2:] = np.abs(c[:, 2:]) + 0.1
    if zero_value:
        c[0, 2:] = 0.0        # K(c, c) = 0 * inf = NaN
    return c, t


KW = {"key_dim": 2, "scale": 1.0}


@pytest.mark.parametrize("variant", [{}, {"positive_values": True}, {"zero_value": True}])
def test_greedy_mmd_attention_self_kernel_overflow_raises(variant):
    """Regression: greedy_mmd / select_mmd with the attention kernel returned duplicate indices
    with mmd2 inf, or NaN trajectories, when K(c, c) overflowed but K(c, t) did not; now the
    InputError that mmd() raises on those sets (overflow named)."""
    c, t = _overflowing_tokens(**variant)
    _raises(lambda: ic.mmd(c[:3], t, "attention", "biased", **KW), "overflow")
    _raises(lambda: ic.greedy_mmd(c, t, 3, "attention", **KW), "attention", "overflow")
    _raises(lambda: ic.select_mmd(c, t, 2, "attention", **KW), "overflow")
    _raises(lambda: ic.greedy_mmd(c, t, 1, "attention", **KW), "overflow")


@pytest.mark.parametrize("name,params", [
    ("mmd", {}), ("mmd-query", {"candidates": None}), ("mmd-query", {"candidates": 3}),
])
def test_mmd_selectors_attention_self_kernel_overflow_raise(name, params):
    """Regression: the mmd and mmd-query selectors with the attention kernel returned garbage
    picks (duplicates, mmd2 inf / NaN) when K(c, c) overflowed; now an InputError."""
    for variant in ({}, {"positive_values": True}, {"zero_value": True}):
        c, t = _overflowing_tokens(**variant)
        sel = make_selector(name, kernel="attention", **params, **KW).fit(c)
        _raises(lambda sel=sel, t=t: sel.select(t, 3), "attention", "overflow")


def test_greedy_mmd_softmax_self_kernel_overflow_raises():
    """Regression: greedy_mmd with the softmax kernel returned [0, 0, 0] with mmd2 inf when
    exp(s <c, c>) overflowed but exp(s <c, t>) did not."""
    rng = np.random.default_rng(1)
    e = np.zeros((5, 3))
    e[:, 1] = 40.0 + rng.normal(size=5)
    e[:, 2] = rng.normal(size=5)
    q = np.zeros((3, 3))
    q[:, 0] = rng.normal(size=3)
    _raises(lambda: ic.greedy_mmd(e, q, 3, "softmax", scale=1.0), "softmax", "overflow")
    _raises(lambda: make_selector("mmd", kernel="softmax", scale=1.0).fit(e).select(q, 3),
            "overflow")


def test_greedy_batch_never_returns_duplicates_or_nan_silently():
    """Regression: greedy_mmd_batch trusted its kernel columns and its argmin; a non-finite
    column or objective gave repeated indices or NaN trajectories without error."""
    r = torch.tensor([[0.5, 0.4, 0.3]], dtype=torch.float64)
    diag = torch.ones(3, dtype=torch.float64)
    const = torch.tensor([1.0], dtype=torch.float64)

    def inf_column(best):
        return torch.full((1, 3), math.inf, dtype=torch.float64)

    _raises(lambda: greedy_mmd_batch(r, diag, const, inf_column, 3, kernel_name="x"),
            "kernel 'x'", "overflow")

    def nan_column(best):
        return torch.full((1, 3), math.nan, dtype=torch.float64)

    _raises(lambda: greedy_mmd_batch(r, diag, const, nan_column, 2), "overflow")
    # finite but huge values: the objective itself overflows float64
    huge = torch.full((1, 3), 1e308, dtype=torch.float64)
    _raises(lambda: greedy_mmd_batch(huge, diag, const, lambda b: huge, 3), "overflow")
    for bad in (torch.tensor([1.0, math.inf, 1.0]), torch.tensor([1.0, math.nan, 1.0])):
        _raises(lambda bad=bad: greedy_mmd_batch(r, bad, const, lambda b: r, 2), "K(c, c)")
    _raises(lambda: greedy_mmd_batch(r, diag, torch.tensor([math.inf]), lambda b: r, 2),
            "targets")


@settings(max_examples=30, deadline=None)
@given(matrices(st.integers(2, 12), 3), matrices(st.integers(1, 6), 3), st.integers(1, 12))
def test_greedy_indices_are_distinct_and_trajectory_matches_mmd(c, t, k):
    """Regression: greedy MMD never repeats an index; each step's mmd2 is the biased MMD^2 of
    the chosen prefix (identity with mmd())."""
    k = min(k, len(c))
    res = ic.greedy_mmd(c, t, k, bandwidth=1.0)
    assert len(set(res.indices.tolist())) == k
    assert np.isfinite(res.mmd2).all()
    for j in (0, k - 1):
        ref = ic.mmd(c[res.indices[: j + 1]], t, "gaussian", "biased", bandwidth=1.0)
        assert res.mmd2[j] == pytest.approx(ref, rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- half precision
def _half_pair():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64) * 3
    y = torch.randn(3, 8, generator=g, dtype=torch.float64) * 3
    return x, y


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,fn", [
    ("softmax", lambda a, b: softmax_kernel(a, b)),
    ("attention", lambda a, b: attention_kernel(a, b, key_dim=4)),
    ("gaussian", lambda a, b: gaussian_kernel(a, b, 2.0)),
    ("laplace", lambda a, b: laplace_kernel(a, b, 2.0)),
    ("imq", lambda a, b: inverse_multiquadric_kernel(a, b, 2.0)),
    ("linear", lambda a, b: linear_kernel(a, b)),
    ("polynomial", lambda a, b: polynomial_kernel(a, b)),
])
def test_raw_kernels_upcast_half_precision(dtype, name, fn):
    """Regression: the raw kernels exponentiated in float16 / bfloat16 (softmax gave inf, the
    Gaussian underflowed); half inputs are now upcast to float32 first."""
    x, y = _half_pair()
    xh, yh = x.to(dtype), y.to(dtype)
    out = fn(xh, yh)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    ref = fn(xh.double(), yh.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_object_and_sums_upcast_half_precision(dtype):
    """Regression: Kernel.__call__, kernel_row_means and self_kernel_mean kept half precision
    and exponentiated in it; they now compute in float32."""
    x, y = _half_pair()
    xh, yh = x.to(dtype), y.to(dtype)
    for kern in (make_kernel("gaussian", bandwidth=2.0), make_kernel("softmax"),
                 make_kernel("attention", key_dim=4)):
        x32, y32 = xh.float(), yh.float()
        assert kern(xh, yh).dtype == torch.float32
        assert torch.equal(kern(xh, yh), kern(x32, y32))
        assert torch.equal(kern.paired(xh, xh), kern.paired(x32, x32))
        assert torch.equal(kern.diag(xh), kern.diag(x32))
        assert kern.diag(xh).dtype == torch.float32
        assert torch.equal(kern.against(yh)(xh), kern.against(y32)(x32))
        assert torch.equal(kernel_row_means(xh, yh, kern), kernel_row_means(x32, y32, kern))
        assert self_kernel_mean(xh, kern) == self_kernel_mean(x32, kern)
    # softmax in float16 overflowed (inf) before the upcast
    big = torch.full((2, 4), 3.0, dtype=torch.float16)
    assert bool(torch.isfinite(softmax_kernel(big, big, scale=1.0)).all())


@settings(max_examples=25, deadline=None)
@given(matrices(st.integers(1, 6), 4), matrices(st.integers(1, 6), 4), st.floats(0.5, 4.0))
def test_half_gram_equals_float32_gram_of_upcast_rows(x, y, h):
    """Regression: a half-precision Gram matrix is the float32 Gram matrix of the same rows
    upcast (identity), for every kernel of the table."""
    xh, yh = torch.from_numpy(x).half(), torch.from_numpy(y).half()
    for kern in (make_kernel("gaussian", bandwidth=h), make_kernel("imq", bandwidth=h),
                 make_kernel("attention-norm", key_dim=2)):
        assert torch.equal(kern(xh, yh), kern(xh.float(), yh.float()))


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("kernel,params,word", [
    ("attention", {"key_dim": 2.7}, "key_dim"),
    ("attention", {"key_dim": True}, "key_dim"),
    ("attention", {"key_dim": 0}, "key_dim"),
    ("attention-norm", {"key_dim": "2"}, "key_dim"),
    ("softmax", {"scale": -1}, "scale"),
    ("softmax", {"scale": 0}, "scale"),
    ("softmax", {"scale": math.nan}, "scale"),
    ("attention", {"key_dim": 2, "scale": 0.0}, "scale"),
    ("attention", {"key_dim": 2, "scale": -1.0}, "scale"),
    ("polynomial", {"gamma": math.nan}, "gamma"),
    ("polynomial", {"gamma": 0.0}, "gamma"),
    ("polynomial", {"gamma": -1.0}, "gamma"),
    ("polynomial", {"coef0": math.inf}, "coef0"),
    ("polynomial", {"degree": True}, "degree"),
    ("polynomial", {"degree": 2.5}, "degree"),
    ("gaussian", {"bandwidth": True}, "bandwidth"),
    ("gaussian", {"bandwidth": "1"}, "bandwidth"),
    ("gaussian", {"bandwidth": math.nan}, "bandwidth"),
    ("laplace", {"bandwidth": 0}, "bandwidth"),
])
def test_make_kernel_rejects_bad_parameters(kernel, params, word):
    """Regression: make_kernel truncated key_dim=2.7, accepted scale -1 or 0 (mmd then returned
    0.0) and gamma=nan (later misreported as an overflow); each now raises naming it."""
    _raises(lambda: make_kernel(kernel, **params), word)


def test_mmd_with_zero_scale_or_nan_gamma_raises():
    """Regression: mmd(..., 'softmax', scale=0) returned 0.0 and gamma=nan was reported as a
    kernel overflow."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 1
    _raises(lambda: ic.mmd(x, y, "softmax", scale=0), "scale")
    _raises(lambda: ic.mmd(x, y, "polynomial", gamma=math.nan), "gamma")
    assert make_kernel("polynomial", degree=2.0).params["degree"] == 2
    assert make_kernel("attention", key_dim=np.int64(2)).params["key_dim"] == 2


# ----------------------------------------------------------------------------- raw exceptions
_X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
_Y = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("call,word", [
    (lambda: gaussian_kernel(_X, _Y, 0.0), "bandwidth"),
    (lambda: gaussian_kernel(_X, _Y, -1.0), "bandwidth"),
    (lambda: laplace_kernel(_X, _Y, 0.0), "bandwidth"),
    (lambda: inverse_multiquadric_kernel(_X, _Y, math.nan), "bandwidth"),
    (lambda: gaussian_kernel(_X.numpy(), _Y.numpy(), 1.0), "x"),
    (lambda: gaussian_kernel(_X, _Y.numpy(), 1.0), "y"),
    (lambda: gaussian_kernel(_X[0], _Y[0], 1.0), "shape"),
    (lambda: linear_kernel(_X.long(), _Y.long()), "floating-point"),
    (lambda: gaussian_kernel(_X, _Y[:, :2], 1.0), "dimension"),
    (lambda: softmax_kernel(_X, _Y, scale=0.0), "scale"),
    (lambda: attention_kernel(_X, _Y, key_dim=0), "key_dim"),
    (lambda: attention_kernel(_X, _Y, key_dim=3), "key_dim"),
    (lambda: polynomial_kernel(_X, _Y, degree=-1), "degree"),
    (lambda: make_kernel("gaussian", bandwidth=1.0)(_X.numpy(), _Y), "x"),
])
def test_raw_kernels_raise_input_errors(call, word):
    """Regression: the raw kernels raised ZeroDivisionError (bandwidth 0), TypeError (numpy
    arrays) or IndexError (1-D tensors); each is now a one-line InputError naming it."""
    _raises(call, word)


def test_batched_raw_kernels_still_work():
    """Regression: the input checks keep batches of row sets ``[b, n, d]``."""
    xb, yb = _X[None].repeat(2, 1, 1), _Y[None].repeat(2, 1, 1)
    out = gaussian_kernel(xb, yb, 1.0)
    assert out.shape == (2, 5, 4)
    torch.testing.assert_close(out[1], gaussian_kernel(_X, _Y, 1.0))


@pytest.mark.parametrize("call,word", [
    (lambda: median_bandwidth(_X, max_samples=1), "max_samples"),
    (lambda: median_bandwidth(_X, max_samples=0), "max_samples"),
    (lambda: median_bandwidth(_X, max_samples=2.5), "max_samples"),
    (lambda: ic.mmd(_X, _Y, tile_elements=1.5), "tile_elements"),
    (lambda: ic.mmd(_X, _Y, tile_elements=0), "tile_elements"),
    (lambda: ic.mmd_test(_X, _Y, permutations=math.nan), "permutations"),
    (lambda: ic.mmd_test(_X, _Y, permutations=None), "permutations"),
    (lambda: ic.mmd_test(_X, _Y, permutations="10"), "permutations"),
    (lambda: permutation_splits(math.nan, 3, 5), "n"),
    (lambda: self_kernel_mean(_X[:0], make_kernel("gaussian", bandwidth=1.0)), "empty"),
    (lambda: kernel_row_means(_X, _Y[:0], make_kernel("gaussian", bandwidth=1.0)), "empty"),
])
def test_estimator_arguments_raise_input_errors(call, word):
    """Regression: median_bandwidth(max_samples<=1), mmd(tile_elements=1.5) and
    mmd_test(permutations=nan) raised raw ValueError / TypeError; now InputErrors naming the
    argument."""
    _raises(call, word)


def test_one_row_message_grammar():
    """Regression: the one-row error read "sample is has 1 row(s)"."""
    msg = _raises(lambda: ic.mmd(_X[:1], _Y), "x: sample has 1 row;", "at least 2 rows")
    assert "is has" not in msg
    _raises(lambda: ic.mmd(_X, _Y[:0], estimator="biased"), "y: sample is empty")
    assert math.isfinite(ic.mmd(_X[:1], _Y, estimator="biased", bandwidth=1.0))


_P = np.random.default_rng(0).normal(size=(12, 3))
_T = np.random.default_rng(1).normal(size=(4, 3))


@pytest.mark.parametrize("labels,word", [
    (np.array([1, "a"] * 6, dtype=object), "mixes label types"),
    (np.array([None] * 12), "None"),
    (np.array([np.nan, 1.0, 2.0] * 4), "NaN"),
    (np.array([np.nan, 1.0, 2.0] * 4, dtype=object), "NaN"),
])
def test_balanced_selection_rejects_unsortable_labels(labels, word):
    """Regression: balanced selection (greedy_mmd balance=True, mmd-balanced, random with
    balance, mmd-joint) with mixed int/str, None or NaN labels raised TypeError or KeyError: nan;
    now a one-line InputError naming the labels."""
    _raises(lambda: ic.greedy_mmd(_P, _T, 3, labels=labels, balance=True), "labels", word)
    pool = Pool(embeddings=_P, labels=labels)
    for name, kw in (("mmd-balanced", {}), ("random", {"balance": True}), ("mmd-joint", {}),
                     ("mmd-local", {})):
        sel = make_selector(name, **kw).fit(pool)
        _raises(lambda sel=sel: sel.select(_T, 3), "labels", word)


def test_balanced_selection_accepts_plain_labels():
    """Regression: the label check keeps numbers, strings and tensors of labels working."""
    for labels in (np.arange(12) % 3, np.array(list("abc") * 4), torch.arange(12) % 2,
                   np.array([1, 2.5] * 6, dtype=object)):
        res = ic.greedy_mmd(_P, _T, 4, labels=labels, balance=True)
        assert len(set(res.indices.tolist())) == 4
