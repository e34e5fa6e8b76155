"""Regressions of the core audit: macro-F1 p-values without bootstrap variation, ties of the
MMD permutation test, checks of directly built kernels, validation of bools / text / fractions,
and the softmax kernel's diagonal on batches."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import icldistill as ic
from icldistill.core.bounds import generalization_bound, rademacher_complexity, w0_bias
from icldistill.core.decomposition import PositiveRandomFeatures, decompose_head
from icldistill.core.kernels import KERNELS, Kernel, make_kernel, median_bandwidth
from icldistill.core.mmd import mmd, mmd_test, permutation_splits
from icldistill.core.stats import paired_comparisons
from icldistill.core.validation import InputError, check_int, check_positive


# ------------------------------------------------------------- 1. macro-F1 p without variation
def _unit(key: str, label: str) -> SimpleNamespace:
    return SimpleNamespace(key=key, spec=SimpleNamespace(model_label="m", k=4, task="t",
                                                         label=label))


@pytest.mark.parametrize(("truth", "p"), [(["pos"], 1.0), (["pos", "neg", "pos"], 0.25)])
def test_macro_f1_p_is_one_when_the_bootstrap_does_not_vary(truth, p):
    """Regression: with 1 test item (or 3 items all won by one side) every bootstrap draw of
    the macro-F1 difference is 1.0, the bootstrap standard error 0, and the p-value was 0.0
    (Holm 0: "significant" on a single item). Failed before the fix (p = 0.0). The p-value is
    now the swap test's, exact on so few items: one item swapped or not gives |diff| = 1
    either way (p = 1); of the 2^3 swap vectors of three items only "none" and "all" reach
    |diff| = 1 (p = 2/8)."""
    wrong = {"pos": "neg", "neg": "pos"}
    results = [_unit("a", "sel"), _unit("b", "knn")]
    preds = {"a": (list(truth), list(truth)), "b": ([wrong[t] for t in truth], list(truth))}
    (c,) = paired_comparisons(results, preds, baselines=("knn",), metric="macro_f1",
                              n_boot=200)
    assert c.n == len(truth)
    assert c.diff == 1.0 and (c.ci_low, c.ci_high) == (1.0, 1.0)
    assert (c.p, c.p_holm) == (p, p)


# ------------------------------------------------------------- 2. ties of the permutation test
def _exact_p(z: np.ndarray, n: int, splits: np.ndarray, gram: np.ndarray
             ) -> tuple[float, bool]:
    """The permutation p-value with every statistic exact (Fractions): rows of ``z`` are
    integer type codes, ``gram[s, t]`` the (float) kernel between types, turned into exact
    rationals, so equal statistics are equal and no tie is lost to rounding. Also whether no
    statistic lies just below the observed one (within 1e-6: a tolerance could merge it)."""
    types = sorted(set(z.tolist()))
    g = {(s, t): Fraction(float(gram[s, t])) for s in types for t in types}
    total = z.size

    def stat(mask: np.ndarray) -> Fraction:
        cx, cy = Counter(z[mask].tolist()), Counter(z[~mask].tolist())
        a = {s: Fraction(cx[s], n) - Fraction(cy[s], total - n) for s in types}
        return sum((a[s] * a[t] * g[(s, t)] for s in types for t in types), Fraction(0))

    obs = stat(np.arange(total) < n)
    null = [stat(mask) for mask in splits]
    separated = all(v >= obs or obs - v > Fraction(1, 10**6) for v in null)
    return (1 + sum(v >= obs for v in null)) / (1 + len(splits)), separated


def _codes(rows: np.ndarray) -> np.ndarray:
    return (rows * (1 << np.arange(rows.shape[1]))).sum(1)


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.integers(1, 3), st.integers(0, 2**31 - 1),
       st.sampled_from([torch.float64, torch.float32]), st.sampled_from(["linear", "gaussian"]))
def test_mmd_test_counts_ties_on_discrete_data_exactly(n, m, d, seed, dtype, kernel):
    """Regression: ``null >= observed`` lost permutations whose statistic equals the observed
    one but was summed in another order (a rounding error below it), so p-values on discrete
    data were too small (0.066 instead of the exact 0.082 in the audit's example). Identity:
    on binary rows the p-value equals the one computed with exact rational statistics."""
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 2, size=(n, d)), rng.integers(0, 2, size=(m, d))
    B = 150
    params = {"bandwidth": 1.0} if kernel == "gaussian" else {}
    res = mmd_test(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype), kernel,
                   permutations=B, seed=seed, **params)
    codes = _codes(np.concatenate([x, y]))
    bits = (np.arange(1 << d)[:, None] >> np.arange(d)) & 1          # [types, d]
    if kernel == "linear":
        gram = bits @ bits.T
    else:
        gram = np.exp(-((bits[:, None, :] - bits[None, :, :]) ** 2).sum(-1) / 2.0)
    expected, separated = _exact_p(codes, n, permutation_splits(n, m, B, seed=seed), gram)
    assume(separated)      # the tolerance must not merge distinct statistics
    assert res.p_value == pytest.approx(expected, abs=1e-15)


def test_mmd_test_ties_in_the_audit_example():
    """Regression: the audit's binary examples (linear kernel): p 0.016 (float32) and 0.066
    (float64) before, the exact 0.0185 and 0.082 now."""
    # (the permutations drawn depend on torch's default dtype, float64 in this test suite, so
    # the counts differ from the audit's; the exact p-value is recomputed for these splits)
    rng = np.random.default_rng(0)
    splits = permutation_splits(10, 12, 2000, seed=0)
    for dtype in (torch.float32, torch.float64):
        x = rng.integers(0, 2, size=(10, 1))
        y = rng.integers(0, 2, size=(12, 1))
        res = mmd_test(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype), "linear",
                       permutations=2000, seed=0)
        expected, _ = _exact_p(np.concatenate([x, y])[:, 0], 10, splits,
                               np.array([[0, 0], [0, 1]]))
        ties = int(np.sum(np.abs(res.null_distribution - res.statistic)
                          <= 1e-6 * abs(res.statistic)))
        assert ties > 10                                  # many exact ties to lose
        assert res.p_value == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel,params", [("gaussian", {"bandwidth": 1.0}), ("linear", {}),
                                           ("laplace", {"bandwidth": 0.5})])
def test_mmd_test_of_identical_samples_gives_p_one(dtype, kernel, params):
    """Regression: all-zero samples (every statistic 0 up to rounding) gave p = 0.975 with
    the Gaussian kernel; every permutation ties the observed statistic, so p = 1."""
    for x, y in ((torch.zeros(6, 2, dtype=dtype), torch.zeros(9, 2, dtype=dtype)),
                 (torch.full((8, 2), 3.3, dtype=dtype), torch.full((7, 2), 3.3, dtype=dtype))):
        assert mmd_test(x, y, kernel, permutations=200, seed=1, **params).p_value == 1.0


def test_mmd_test_p_value_does_not_depend_on_the_kernel_scale():
    """The tie tolerance is relative to the Gram entries: scaling the data by 2^10 scales the
    linear kernel by 2^20 (exactly) and keeps the p-value."""
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 3, size=(9, 2)), rng.integers(0, 3, size=(11, 2)) + 0.5
    a = mmd_test(torch.tensor(x, dtype=torch.float64), torch.tensor(y), "linear",
                 permutations=300, seed=2)
    b = mmd_test(torch.tensor(x * 1024.0), torch.tensor(y * 1024.0), "linear",
                 permutations=300, seed=2)
    assert a.p_value == b.p_value


# ------------------------------------------------------------- 3. Kernel built directly
@pytest.mark.parametrize("name,params,match", [
    ("gaussian", {"bandwidth": -1.0}, "bandwidth must be a finite positive number"),
    ("gaussian", {"bandwidth": 0.0}, "bandwidth must be a finite positive number"),
    ("gaussian", {"bandwidth": math.nan}, "bandwidth must be a finite positive number"),
    ("laplace", {"bandwidth": True}, "bandwidth must be a finite positive number, got True"),
    ("imq", {"bandwidth": "1.0"}, "bandwidth must be a finite positive number"),
    ("gaussian", {}, "needs a bandwidth"),
    ("gaussian", {"bandwidth": None}, "needs a bandwidth"),
    ("gaussian", {"bandwidth": 1.0, "scale": 2.0}, "unknown parameter"),
    ("polynomial", {"degree": 2.5}, "degree"),
    ("softmax", {"scale": -1.0}, "scale"),
    ("attention", {}, "key_dim"),
    ("attention", {"key_dim": 1.5}, "key_dim"),
    ("nope", {}, "unknown kernel"),
])
def test_a_kernel_built_directly_is_checked(name, params, match):
    """Regression: ``Kernel(name, params)`` skipped every check of ``make_kernel``; ``mmd``
    then returned wrong values (a negative bandwidth) or raised KeyError / ZeroDivisionError.
    Failed before the fix (no error at construction)."""
    with pytest.raises(InputError, match=match):
        Kernel(name, params)


def test_a_kernel_built_directly_resolves_aliases_and_defaults():
    """Regression: ``Kernel("rbf", ...)`` raised KeyError 'rbf' when used; ``Kernel("poly")``
    lacked its default parameters."""
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    y = x[:5] + 0.3
    k = Kernel("rbf", {"bandwidth": 1.5})
    assert k.name == "gaussian" and k == make_kernel("gaussian", bandwidth=1.5)
    assert mmd(x, y, k) == mmd(x, y, "gaussian", bandwidth=1.5)
    assert dict(Kernel("poly").params) == {"gamma": 1.0, "coef0": 1.0, "degree": 2}
    assert Kernel("laplace", {"bandwidth": 2}).bandwidth == 2.0
    assert make_kernel(k) is k                       # a checked Kernel passes through
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.name = "laplace"                           # type: ignore[misc]
    with pytest.raises(InputError, match="bandwidth"):
        dataclasses.replace(k, params={"bandwidth": -2.0})
    with pytest.raises(InputError, match="mapping"):
        Kernel("gaussian", [("bandwidth", 1.0)])     # type: ignore[arg-type]


# ------------------------------------------------------------- 4. bools, text and fractions
_KP = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
_Q = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
_SEGS = ["prefix", "demos", "demos", "query", "query"]


@pytest.mark.parametrize("call,match", [
    (lambda: check_positive(True, "c"), "c must be a finite positive number, got True"),
    (lambda: check_positive(np.True_, "c"), "got"),
    (lambda: check_positive("0.5", "c"), "c must be a finite positive number, got '0.5'"),
    (lambda: check_int(np.True_, "n"), "n must be an integer >= 1"),
    (lambda: decompose_head(_Q, _KP, _KP, _SEGS, scale=True), "scale"),
    (lambda: decompose_head(_Q, _KP, _KP, _SEGS, scale="0.5"), "scale"),
    (lambda: w0_bias(_KP, _KP, _Q, _Q, c=True), "c must be"),
    (lambda: w0_bias(_KP, _KP, _Q, _Q, num_features=2.9), "num_features .* got 2.9"),
    (lambda: w0_bias(_KP, _KP, _Q, _Q, num_features=True), "num_features"),
    (lambda: w0_bias(_KP, _KP, _Q, _Q, num_features=8, seed=-1), "seed"),
    (lambda: PositiveRandomFeatures.create(4, 2.9, 0.5), "num_features .* got 2.9"),
    (lambda: PositiveRandomFeatures.create(4, 8, 0.5, seed=1.5), "seed .* got 1.5"),
    (lambda: PositiveRandomFeatures.create(4, 8, True), "scale"),
    (lambda: generalization_bound(0.1, 0.2, n=2.7), "n must be an integer >= 1, got 2.7"),
    (lambda: generalization_bound(0.1, 0.2, n=True), "n must be an integer >= 1, got True"),
    (lambda: generalization_bound(0.1, 0.2), "n must be"),
])
def test_bools_text_and_fractions_are_refused(call, match):
    """Regression: each of these was accepted (True read as 1, '0.5' parsed, 2.9 truncated
    to 2). Failed before the fix (no error)."""
    with pytest.raises(InputError, match=match):
        call()


@pytest.mark.parametrize("seed", [2.5, True, -3, "1", None])
@pytest.mark.parametrize("call", [
    lambda s: mmd(_KP, _Q, seed=s),
    lambda s: mmd(_KP, _Q, bandwidth=1.0, seed=s),
    lambda s: mmd_test(_KP, _Q, permutations=20, seed=s),
    lambda s: rademacher_complexity(_KP, 1.0, samples=10, seed=s),
    lambda s: rademacher_complexity(_KP, 1.0, samples="exhaustive", seed=s),
    lambda s: median_bandwidth(_KP, _Q, seed=s),
    lambda s: permutation_splits(3, 2, 4, seed=s),
], ids=["mmd", "mmd-bandwidth", "mmd_test", "rademacher", "rademacher-exhaustive",
        "median_bandwidth", "permutation_splits"])
def test_seeds_are_checked_by_check_seed(call, seed):
    """Regression: these seeds were read with ``int(seed)``: 2.5 ran as 2, True as 1, and
    negative seeds were accepted. Failed before the fix (no error)."""
    with pytest.raises(InputError, match="seed"):
        call(seed)


def test_valid_values_still_pass():
    assert check_positive(np.float32(0.5), "c") == 0.5 and check_positive(3, "c") == 3.0
    assert mmd_test(_KP, _Q, permutations=20, seed=np.int64(3)).p_value == \
        mmd_test(_KP, _Q, permutations=20, seed=3.0).p_value
    rc = rademacher_complexity(_KP, 1.0, samples=10, seed=np.int64(1))
    assert generalization_bound(0.1, rc).n == rc.n == 5
    assert generalization_bound(0.1, rc, n=5).n == 5
    assert generalization_bound(0.1, 0.2, n=np.int64(7)).n == 7
    assert w0_bias(_KP, _KP, _Q, _Q, num_features=np.int64(8)).num_features == 8
    assert PositiveRandomFeatures.create(4, 8.0, 0.5).num_features == 8


def test_an_n_that_contradicts_the_rademacher_sample_size_is_refused():
    """Regression: ``generalization_bound(rc, n=999)`` with ``rc.n = 5`` silently used 999
    (a much smaller confidence term). Failed before the fix (no error)."""
    rc = rademacher_complexity(_KP, 1.0, samples=10)
    with pytest.raises(InputError, match=r"n=999 contradicts .*rademacher.n=5"):
        generalization_bound(0.1, rc, n=999)
    with pytest.raises(InputError, match="n must be an integer"):
        generalization_bound(0.1, rc, n=5.5)


# ------------------------------------------------------------- 5. diag / paired on batches
def _kernel(name: str) -> Kernel:
    params = {"bandwidth": 1.3} if name in ("gaussian", "laplace", "imq") else {}
    if name.startswith("attention"):
        params = {"key_dim": 1}
    return make_kernel(name, **params)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(KERNELS), st.integers(1, 3), st.integers(1, 5), st.integers(2, 5),
       st.integers(0, 2**31 - 1), st.booleans())
def test_diag_and_paired_are_the_diagonal_of_the_gram_matrix(name, b, n, d, seed, batched):
    """Regression: the softmax kernel's ``paired`` and ``diag`` took the default scale
    ``1/sqrt(d)`` from ``x.shape[1]``, which is ``n`` (not ``d``) for a batch ``[b, n, d]``, and
    ``diag`` of the unit-diagonal kernels returned ``[n]`` instead of ``[b, n]``. Identity: both
    equal the diagonal of each Gram matrix, for rows ``[n, d]`` and batches ``[b, n, d]``.
    Failed before the fix (softmax, batched, n != d)."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, n, d) if batched else (n, d)
    x = 0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)
    k = _kernel(name)
    want = torch.diagonal(k(x, x), dim1=-2, dim2=-1)
    assert k.diag(x).shape == want.shape == shape[:-1]
    torch.testing.assert_close(k.diag(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.paired(x, x), want, rtol=1e-12, atol=1e-12)
    y = x + 0.1
    torch.testing.assert_close(k.paired(x, y), torch.diagonal(k(x, y), dim1=-2, dim2=-1),
                               rtol=1e-12, atol=1e-12)


def test_softmax_diag_in_the_audit_example():
    """Regression: the audit's batch ``[2, 5, 3]``: ``diag`` used scale 1/sqrt(5)."""
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = ic.make_kernel("softmax")
    expected = torch.exp((x * x).sum(-1) / math.sqrt(3))
    torch.testing.assert_close(k.diag(x), expected, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(k.paired(x, x), expected, rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.5", b"1"])
def test_check_float_refuses_bools_and_text(value):
    """Regression: check_float read True as 1.0 and "0.5" as 0.5 (bm25's b, mmr's lambda_...)."""
    from icldistill.core.validation import check_float

    with pytest.raises(InputError, match="must be a number"):
        check_float(value, "b", 0.0, 1.0)
    with pytest.raises(InputError, match="lambda_ must be a number"):
        ic.make_selector("mmr", lambda_=value)
    assert check_float(np.float32(0.5), "b", 0.0, 1.0) == 0.5


def test_decompose_head_refuses_a_scale_beside_given_logits():
    """Regression: with logits given, scale was silently ignored."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3))
    segs = ["prefix", "demos", "query"]
    with pytest.raises(InputError, match="give scale or logits, not both"):
        decompose_head(q, k, v, segs, scale=0.5, logits=q @ k.T)
    by_logits = decompose_head(q, k, v, segs, logits=0.5 * q @ k.T)
    assert torch.allclose(by_logits.eta, decompose_head(q, k, v, segs, scale=0.5).eta,
                          rtol=1e-12, atol=0)


def test_permutation_splits_do_not_depend_on_torchs_default_dtype():
    """Regression: the permutations were drawn in torch's default dtype, so the same seed gave
    other splits (and another p-value) under torch.set_default_dtype(torch.float64)."""
    before = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float32)
        a = permutation_splits(7, 5, 50, seed=3)
        torch.set_default_dtype(torch.float64)
        b = permutation_splits(7, 5, 50, seed=3)
    finally:
        torch.set_default_dtype(before)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("field,value", [("delta", True), ("delta", "0.05"), ("delta", 1.0),
                                         ("delta", 0.0), ("empirical_loss", "0.1"),
                                         ("empirical_loss", True), ("rademacher", "0.2"),
                                         ("rademacher", False), ("rademacher", -0.1)])
def test_generalization_bound_refuses_bools_and_text(field, value):
    """Regression: delta, empirical_loss and a float rademacher took bools as numbers and
    raised a plain TypeError on text."""
    kw = {"empirical_loss": 0.1, "rademacher": 0.2, "n": 50, "delta": 0.05, field: value}
    with pytest.raises(InputError):
        generalization_bound(kw.pop("empirical_loss"), kw.pop("rademacher"), **kw)
    assert generalization_bound(0.1, 0.2, n=50).bound > 0.3
