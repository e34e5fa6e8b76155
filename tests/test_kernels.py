"""Kernels: formulas against brute-force definitions, the median heuristic, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import icldistill as ic
from icldistill.core.kernels import (
    attention_kernel,
    gaussian_kernel,
    inverse_multiquadric_kernel,
    laplace_kernel,
    linear_kernel,
    middle_order_statistics,
    middle_sq_distances,
    polynomial_kernel,
    softmax_kernel,
)

from .conftest import matrices, rel_err


def _brute(name, x, y, **p):
    out = np.empty((len(x), len(y)))
    for i, a in enumerate(x):
        for j, b in enumerate(y):
            d = np.linalg.norm(a - b)
            if name == "gaussian":
                out[i, j] = math.exp(-d * d / (2 * p["h"] ** 2))
            elif name == "laplace":
                out[i, j] = math.exp(-d / p["h"])
            elif name == "imq":
                out[i, j] = (1 + d * d / p["h"] ** 2) ** -0.5
            elif name == "linear":
                out[i, j] = a @ b
            elif name == "polynomial":
                out[i, j] = (p["gamma"] * (a @ b) + p["coef0"]) ** p["degree"]
            elif name == "softmax":
                out[i, j] = math.exp(p["s"] * (a @ b))
            elif name == "attention":
                kd = p["kd"]
                out[i, j] = (a[kd:] @ b[kd:]) * math.exp(p["s"] * (a[:kd] @ b[:kd]))
    return out


@given(matrices(st.integers(1, 6), 3), matrices(st.integers(1, 6), 3),
       st.floats(0.3, 5.0))
def test_kernel_formulas(x, y, h):
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    s = 1 / math.sqrt(3)
    cases = {
        "gaussian": (gaussian_kernel(tx, ty, h), {"h": h}),
        "laplace": (laplace_kernel(tx, ty, h), {"h": h}),
        "imq": (inverse_multiquadric_kernel(tx, ty, h), {"h": h}),
        "linear": (linear_kernel(tx, ty), {}),
        "polynomial": (polynomial_kernel(tx, ty), {"gamma": 1.0, "coef0": 1.0, "degree": 2}),
        "softmax": (softmax_kernel(tx, ty), {"s": s}),
        "attention": (attention_kernel(tx, ty, key_dim=2), {"kd": 2, "s": 1 / math.sqrt(2)}),
    }
    for name, (got, p) in cases.items():
        assert rel_err(got, _brute(name, x, y, **p)) < 1e-10, name


@given(matrices(st.integers(1, 6), 4), matrices(st.integers(1, 6), 4))
def test_kernel_object_paired_and_diag(x, y):
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    n = min(len(x), len(y))
    for name in ic.KERNELS:
        params = {"key_dim": 2} if name.startswith("attention") else {}
        if name in ("gaussian", "laplace", "imq"):
            params["bandwidth"] = 1.3
        k = ic.make_kernel(name, **params)
        gram = k(tx, ty)
        assert gram.shape == (len(x), len(y))
        assert rel_err(k.paired(tx[:n], ty[:n]), torch.diagonal(gram[:n, :n])) < 1e-10, name
        assert rel_err(k.diag(tx), torch.diagonal(k(tx, tx))) < 1e-10, name


def test_kernels_keep_dtype_and_gaussian_self_gram_has_unit_diagonal():
    x32 = torch.randn(20, 5, dtype=torch.float32)
    k = ic.make_kernel("gaussian", bandwidth=1.0)
    g = k(x32, x32)
    assert g.dtype == torch.float32
    assert torch.equal(torch.diagonal(g), torch.ones(20, dtype=torch.float32))


@given(matrices(st.integers(2, 12), 3), matrices(st.integers(0, 12), 3))
def test_median_heuristic_matches_numpy(x, y):
    z = np.concatenate([x, y])
    d = np.array([np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))])
    if not (d > 0).any():
        # identical rows, or distinct rows whose distances underflow (subnormal differences)
        same = bool((z == z[:1]).all())
        with pytest.raises(ic.InputError, match="identical" if same else "underflow"):
            ic.median_bandwidth(x, y)
        return
    expected = np.median(d) if np.median(d) > 0 else np.median(d[d > 0])
    assert ic.median_bandwidth(x, y) == pytest.approx(expected, rel=1e-10)


def _numpy_median_distance(z):
    z = np.asarray(z, dtype=np.float64)
    d = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(len(z), 1)]
    med = np.median(d)
    return med if med > 0 else np.median(d[d > 0])


@given(st.integers(2, 250), st.integers(1, 40), st.integers(1, 5), st.floats(1e-6, 1e6),
       st.floats(0.0, 100.0), st.integers(0, 40), st.integers(0, 2**32 - 1))
def test_median_heuristic_matches_numpy_on_float32_clusters(n, dim, clusters, scale, offset,
                                                            dups, seed):
    # float32 rows (the float32 bracketing path), clustered, offset, with duplicated rows
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 5
    x = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim)) * 0.1 + offset
    x = (x * scale).astype(np.float32)
    x[rng.integers(0, n, dups)] = x[rng.integers(0, n, dups)]
    if not (x != x[0]).any():
        return
    assert ic.median_bandwidth(x) == pytest.approx(_numpy_median_distance(x), rel=1e-12)


def test_median_float32_bracketing_is_exact_used_and_falls_back():
    rng = np.random.default_rng(3)
    z = torch.from_numpy((rng.normal(size=(1500, 64)) + 3).astype(np.float32))
    fast = middle_sq_distances(z, method="bracket")
    assert fast is not None  # the bracketing path is the one that runs on typical data
    exact = middle_sq_distances(z, method="exact")
    assert fast == pytest.approx(exact, rel=1e-12)
    # and both are the middle of the float64 squared distances computed independently
    z64 = z.numpy().astype(np.float64)
    d2 = np.sort(np.concatenate([((z64[i + 1:] - z64[i]) ** 2).sum(1)
                                 for i in range(len(z64) - 1)]))
    assert exact == pytest.approx((d2[(d2.size - 1) // 2], d2[d2.size // 2]), rel=1e-12)
    assert middle_sq_distances(z) == fast
    # reduced-precision float32 products: no bracketing (its error bound would not hold)
    torch.set_float32_matmul_precision("medium")
    try:
        assert middle_sq_distances(z, method="bracket") is None
    finally:
        torch.set_float32_matmul_precision("highest")
    # heavy ties (4 distinct rows): the window is too wide, every distance is computed
    few = np.repeat(rng.normal(size=(4, 8)), 100, axis=0).astype(np.float32)
    assert middle_sq_distances(torch.from_numpy(few), method="bracket") is None
    assert middle_sq_distances(few) == middle_sq_distances(few, method="exact")
    assert ic.median_bandwidth(few) == pytest.approx(_numpy_median_distance(few), rel=1e-12)
    # more than half of the pairs are duplicates: median of the positive distances
    dup = np.repeat(rng.normal(size=(2, 8)), [300, 10], axis=0).astype(np.float32)
    expected = float(np.linalg.norm(dup[0].astype(np.float64) - dup[-1]))
    assert ic.median_bandwidth(dup) == pytest.approx(expected, rel=1e-12)


@given(st.lists(st.integers(0, 5), min_size=1, max_size=30))
def test_middle_order_statistics_with_ties(values):
    v = np.array(values, dtype=np.float64)
    s = np.sort(v)
    expected = (s[(len(s) - 1) // 2], s[len(s) // 2])
    assert middle_order_statistics(torch.from_numpy(v), method="kthvalue") == expected
    assert middle_order_statistics(v, method="select") == expected
    assert middle_order_statistics(v) == expected


@given(matrices(st.integers(1, 5), 4), matrices(st.integers(1, 5), 4), st.integers(1, 3))
def test_batched_grams_and_against_match_the_plain_gram(x, y, batch):
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    xs = torch.stack([tx * (1 + 0.5 * i) for i in range(batch)])  # [b, n, d]
    for name in ic.KERNELS:
        params = {"key_dim": 2} if name.startswith("attention") else {}
        if name in ("gaussian", "laplace", "imq"):
            params["bandwidth"] = 1.3
        k = ic.make_kernel(name, **params)
        assert rel_err(k(xs, xs), torch.stack([k(e, e) for e in xs])) < 1e-10, name
        assert rel_err(k.against(ty)(tx), k(tx, ty)) < 1e-10, name


def test_median_heuristic_subsample_is_seeded_and_close():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8))
    full = ic.median_bandwidth(x, max_samples=5000)
    a = ic.median_bandwidth(x, max_samples=500, seed=1)
    assert a == ic.median_bandwidth(x, max_samples=500, seed=1)
    assert a != ic.median_bandwidth(x, max_samples=500, seed=2)
    assert a == pytest.approx(full, rel=0.05)


def test_make_kernel_resolves_median_and_rejects_bad_parameters():
    x = torch.randn(30, 3)
    k = ic.make_kernel("rbf", x)
    assert k.name == "gaussian" and k.bandwidth == pytest.approx(ic.median_bandwidth(x))
    with pytest.raises(ic.InputError, match="unknown kernel 'cosine'"):
        ic.make_kernel("cosine")
    with pytest.raises(ic.InputError, match="bandwidth must be a finite positive"):
        ic.make_kernel("gaussian", bandwidth=0.0)
    with pytest.raises(ic.InputError, match="bandwidth must be a finite positive"):
        ic.make_kernel("laplace", bandwidth=-1.0)
    with pytest.raises(ic.InputError, match="unknown parameter"):
        ic.make_kernel("linear", bandwidth=1.0)
    with pytest.raises(ic.InputError, match="needs key_dim"):
        ic.make_kernel("attention")
    with pytest.raises(ic.InputError, match="degree"):
        ic.make_kernel("polynomial", degree=1.5)
    with pytest.raises(ic.InputError, match="needs a bandwidth or data"):
        ic.make_kernel("gaussian")


def test_stack_kv_checks_rows():
    with pytest.raises(ic.InputError, match="rows"):
        ic.stack_kv(np.ones((3, 2)), np.ones((4, 2)))
    assert ic.stack_kv(np.ones((3, 2)), np.zeros((3, 1))).shape == (3, 3)


@given(matrices(st.integers(1, 6), 5), matrices(st.integers(1, 6), 5), st.floats(0.05, 2.0))
def test_normalised_attention_kernel_is_k_att_over_its_diagonal(x, y, scale):
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    x[:, 2:] += 0.5          # keep value vectors away from zero
    y[:, 2:] -= 0.5
    # (a row of 0.5s shifted to 0 would still be a zero value vector: K_att(x, x) = 0)
    assume(bool((x[:, 2:].abs().sum(1) > 1e-3).all() and (y[:, 2:].abs().sum(1) > 1e-3).all()))
    raw = ic.make_kernel("attention", key_dim=2, scale=scale)
    norm = ic.make_kernel("attention-norm", key_dim=2, scale=scale)
    dx = raw.diag(x).sqrt()
    dy = raw.diag(y).sqrt()
    torch.testing.assert_close(norm(x, y), raw(x, y) / dx[:, None] / dy[None, :])
    torch.testing.assert_close(norm.paired(x, x), torch.ones(x.shape[0], dtype=x.dtype))
    assert float(norm(x, y).abs().max()) <= 1 + 1e-12


def test_normalised_attention_kernel_does_not_overflow_on_large_keys():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 16, generator=g) * 100.0          # scale <k, k'> ~ 1e4: exp overflows
    norm = ic.make_kernel("attention-norm", key_dim=8)
    gram = norm(x, x)
    assert torch.isfinite(gram).all()
    assert float(torch.linalg.eigvalsh(gram.double()).min()) > -1e-8   # positive semi-definite
    assert not torch.isfinite(ic.make_kernel("attention", key_dim=8)(x, x)).all()


def test_middle_statistics_bad_input():
    with pytest.raises(ic.InputError, match="method"):
        middle_sq_distances(np.zeros((3, 2)), method="fast")
    with pytest.raises(ic.InputError, match="2 rows"):
        middle_sq_distances(np.zeros((1, 2)))
    with pytest.raises(ic.InputError, match="method"):
        middle_order_statistics([1.0], method="sort")
    with pytest.raises(ic.InputError, match="one value"):
        middle_order_statistics([])
