"""SPEC §3–4: bias of W_0 vs MMD under K_att; Rademacher complexity; generalization bound."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import icldistill as ic

from .conftest import matrices


@st.composite
def token_samples(draw):
    d = draw(st.integers(1, 3))
    dv = draw(st.integers(1, 3))
    n_p, n_q = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    return (draw(matrices(st.just(n_p), d)), draw(matrices(st.just(n_p), dv)),
            draw(matrices(st.just(n_q), d)), draw(matrices(st.just(n_q), dv)))


def _explicit_bias(kp, vp, kq, vq, c, s):
    """||W_0(P) - W_0(Q)||_HS from the definition (kernel expansion written out)."""
    coef = np.concatenate([vp / len(vp), -vq / len(vq)]) * c
    keys = np.concatenate([kp, kq])
    total = sum(coef[i] @ coef[j] * math.exp(s * keys[i] @ keys[j])
                for i in range(len(keys)) for j in range(len(keys)))
    return math.sqrt(max(total, 0.0))


@given(token_samples(), st.floats(0.1, 10.0))
# identical P and Q: the bias is 0 and sqrt() of a rounding-level difference of sums is ~1e-8
@example((np.zeros((1, 1)), np.full((1, 1), 1.75003173), np.zeros((3, 1)),
          np.full((3, 1), 1.75003173)), 1.0)
def test_bias_equals_c_times_mmd_under_k_att(samples, c):
    kp, vp, kq, vq = samples
    res = ic.w0_bias(kp, vp, kq, vq, c=c)
    s = 1 / math.sqrt(kp.shape[1])
    expected = _explicit_bias(kp, vp, kq, vq, c, s)
    # compare squares: both are differences of sums of terms up to c^2 max|K_att| (in a square
    # root, their rounding error would be amplified to sqrt(eps) near zero bias)
    tokens = torch.cat([ic.stack_kv(kp, vp), ic.stack_kv(kq, vq)])
    gram = ic.make_kernel("attention", key_dim=kp.shape[1])(tokens, tokens)
    terms = c**2 * max(float(gram.abs().max()), 1.0)
    assert res.hs_norm**2 == pytest.approx(expected**2, rel=1e-9, abs=1e-12 * terms)
    assert res.c_times_mmd**2 == pytest.approx(res.hs_norm**2, rel=1e-9, abs=1e-12 * terms)


@given(token_samples())
def test_bias_is_the_distance_between_two_dual_w0(samples):
    """W_0(P) and W_0(Q) built separately as DualWeights; their distance is c * MMD_Katt."""
    kp, vp, kq, vq = samples
    c = 2.5
    s = 1 / math.sqrt(kp.shape[1])
    wp = ic.DualWeights(torch.from_numpy(kp), torch.from_numpy(vp), math.log(c / len(kp)), s)
    wq = ic.DualWeights(torch.from_numpy(kq), torch.from_numpy(vq), math.log(c / len(kq)), s)
    mmd2_att = ic.mmd(ic.stack_kv(kp, vp), ic.stack_kv(kq, vq), "attention", "biased",
                      key_dim=kp.shape[1])
    # compare squares: both sides are sums of terms of size up to c^2 max|K_att| that cancel
    tokens = torch.cat([ic.stack_kv(kp, vp), ic.stack_kv(kq, vq)])
    gram = ic.make_kernel("attention", key_dim=kp.shape[1])(tokens, tokens)
    terms = c**2 * max(float(gram.abs().max()), 1.0)
    assert wp.distance(wq) ** 2 == pytest.approx(c**2 * mmd2_att, rel=1e-9, abs=1e-12 * terms)


def test_bias_through_explicit_features_converges():
    rng = np.random.default_rng(0)
    # moderate key norms (s ||k||^2 < 0.5): the self-terms phi(k).phi(k) have relative variance
    # exp(4 s ||k||^2) per feature, so large norms converge far more slowly (see the demo)
    kp, vp = rng.normal(size=(30, 3)) * 0.4, rng.normal(size=(30, 2))
    kq, vq = rng.normal(size=(30, 3)) * 0.4 + 0.4, rng.normal(size=(30, 2)) + 0.5
    errs = []
    for m in (32, 1024, 32768):
        r = [ic.w0_bias(kp, vp, kq, vq, c=3.0, num_features=m, seed=s) for s in range(9)]
        errs.append(np.median([abs(x.hs_norm_features - x.hs_norm) / x.hs_norm for x in r]))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.01


def test_bias_grows_linearly_with_mmd_under_mean_shift():
    """SPEC §3 bound with k = K_att (G = 1) is an equality; the ratio is c for every shift."""
    rng = np.random.default_rng(1)
    kq, vq = rng.normal(size=(40, 3)) * 0.5, rng.normal(size=(40, 2))
    for delta in (0.0, 0.5, 1.0, 2.0):
        kp = rng.normal(size=(40, 3)) * 0.5 + delta
        vp = rng.normal(size=(40, 2)) + delta
        r = ic.w0_bias(kp, vp, kq, vq, c=1.7)
        assert r.hs_norm <= 1.7 * r.mmd_att * (1 + 1e-9)
        assert r.hs_norm == pytest.approx(1.7 * r.mmd_att, rel=1e-9)


@given(matrices(st.integers(1, 8), st.integers(1, 3)), st.floats(0.1, 5.0))
def test_rademacher_closed_form_and_exhaustive_expectation(keys, radius):
    res = ic.rademacher_complexity(keys, radius, samples="exhaustive")
    s = 1 / math.sqrt(keys.shape[1])
    n = len(keys)
    diag = sum(math.exp(s * k @ k) for k in keys)
    assert res.closed_form == pytest.approx(radius / n * math.sqrt(diag), rel=1e-10)
    gram = np.exp(s * keys @ keys.T)
    signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * n)).reshape(n, -1).T
    mc = radius / n * np.mean(np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", signs, gram, signs),
                                                 0)))
    # sqrt of a cancelling quadratic form: absolute rounding ~ sqrt(eps) * closed form
    assert res.monte_carlo == pytest.approx(mc, rel=1e-10, abs=1e-6 * res.closed_form)
    # Jensen: E sqrt(sigma^T K sigma) <= sqrt(E sigma^T K sigma) = sqrt(tr K)
    assert res.monte_carlo <= res.closed_form * (1 + 1e-12)
    assert res.exhaustive and res.samples == 2**n


def test_rademacher_monte_carlo_is_seeded_and_close_to_exhaustive():
    keys = np.random.default_rng(2).normal(size=(12, 3))
    exact = ic.rademacher_complexity(keys, 1.0, samples="exhaustive").monte_carlo
    a = ic.rademacher_complexity(keys, 1.0, samples=4000, seed=1)
    assert a.monte_carlo == ic.rademacher_complexity(keys, 1.0, samples=4000, seed=1).monte_carlo
    assert abs(a.monte_carlo - exact) < 4 * a.monte_carlo_stderr + 1e-12


def test_bound_shrinks_like_inverse_sqrt_n():
    rng = np.random.default_rng(3)
    ns = [16, 64, 256, 1024]
    comps = []
    for n in ns:
        keys = rng.normal(size=(n, 4)) * 0.5
        comps.append(ic.rademacher_complexity(keys, 1.0, samples=10).closed_form)
    slope = np.polyfit(np.log(ns), np.log(comps), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.05)
    b = [ic.generalization_bound(0.1, c, n) for c, n in zip(comps, ns, strict=True)]
    assert all(x.bound > y.bound for x, y in itertools.pairwise(b))


def test_generalization_bound_terms():
    r = ic.rademacher_complexity(np.ones((4, 2)) * 0.1, 2.0)
    b = ic.generalization_bound(0.2, r, lipschitz=3.0, loss_bound=2.0, delta=0.1)
    assert b.n == 4
    assert b.complexity_term == pytest.approx(2 * 3.0 * r.closed_form)
    assert b.confidence_term == pytest.approx(3 * 2.0 * math.sqrt(math.log(20) / 8))
    assert b.bound == pytest.approx(0.2 + b.complexity_term + b.confidence_term)


@pytest.mark.parametrize("kwargs,match", [
    ({"delta": 0.0}, "delta"),
    ({"delta": 1.5}, "delta"),
    ({"n": 0}, "n must be"),
    ({"empirical_loss": 3.0}, "empirical_loss"),
    ({"loss_bound": -1.0}, "loss_bound"),
])
def test_generalization_bound_bad_input(kwargs, match):
    args = {"empirical_loss": 0.1, "rademacher": 0.5, "n": 10}
    args.update(kwargs)
    with pytest.raises(ic.InputError, match=match):
        ic.generalization_bound(**args)


def test_rademacher_and_bias_bad_input():
    with pytest.raises(ic.InputError, match="exhaustive"):
        ic.rademacher_complexity(np.zeros((21, 2)), 1.0, samples="exhaustive")
    with pytest.raises(ic.InputError, match="radius"):
        ic.rademacher_complexity(np.zeros((3, 2)), -1.0)
    with pytest.raises(ic.InputError, match="empty"):
        ic.w0_bias(np.zeros((0, 2)), np.zeros((0, 1)), np.ones((2, 2)), np.ones((2, 1)))
    with pytest.raises(ic.InputError, match="dimensions"):
        ic.w0_bias(np.zeros((2, 2)), np.zeros((2, 1)), np.ones((2, 3)), np.ones((2, 1)))
