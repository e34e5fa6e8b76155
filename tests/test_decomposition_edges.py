"""Edge cases of :mod:`icldistill.core.decomposition`: log-space distillation, overflow,
unknown segment names, segment-id validation and half-precision inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.decomposition import (
    DualWeights,
    PositiveRandomFeatures,
    attention_probs,
    attention_probs_,
    decompose_head,
    distillation_loss,
    distillation_step,
    random_feature_error,
    segment_components,
    segment_decomposition,
    segment_mass,
)
from icldistill.core.validation import InputError

SEGS = ["prefix", "demos", "demos", "demos", "query", "query"]


def _head(seed: int = 0, T: int = 4, n: int = 6, d: int = 8, dv: int = 3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, d, generator=g, dtype=torch.float64)
    k = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = torch.randn(n, dv, generator=g, dtype=torch.float64)
    return q, k, v


def _reference_step(keys, values, scale, log_mult, eta, steps):
    """Independent float64 gradient descent on L(W) with explicit kernel matrices."""
    n = keys.shape[0]
    K = torch.exp(scale * keys @ keys.T)                  # kappa(k_i, k_j)
    alpha = torch.zeros_like(values)                      # W = sum_i alpha_i phi(k_i)^T
    for _ in range(steps):
        alpha = alpha + (2.0 * eta / n) * (values - K @ alpha)
    w0 = math.exp(log_mult) * values
    diff = alpha - w0
    dist = math.sqrt(max(0.0, float((diff @ diff.T * K).sum())))
    loss = float(((values - K @ alpha) ** 2).sum(-1).mean())
    loss_w0 = float(((values - K @ w0) ** 2).sum(-1).mean())
    return alpha, dist, loss, loss_w0


# ============================================================================ 1. log space
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.2, 3.0), st.integers(1, 4))
def test_distillation_step_matches_an_independent_float64_computation(seed, factor, steps):
    """Regression: distillation_step works in log space; on moderate inputs it equals plain
    float64 gradient descent with explicit kernel matrices."""
    q, k, v = _head(seed)
    w0 = decompose_head(q, 0.5 * k, v, SEGS).w0(1)
    eta_star = 3 / 2 * math.exp(w0.log_multiplier)
    eta = factor * eta_star
    res = distillation_step(w0, eta, steps=steps)
    alpha, dist, loss, loss_w0 = _reference_step(w0.keys, w0.coefficients, w0.scale,
                                                 w0.log_multiplier, eta, steps)
    got = res.weights.coefficients * math.exp(res.weights.log_multiplier)
    assert torch.allclose(got, alpha, rtol=1e-9, atol=1e-12)
    assert res.eta_star == pytest.approx(eta_star, rel=1e-12)
    assert res.distance == pytest.approx(dist, rel=1e-6, abs=1e-9)
    assert res.loss_final == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert res.loss_w0 == pytest.approx(loss_w0, rel=1e-9, abs=1e-12)


def test_distillation_step_with_large_logits_stays_in_log_space():
    """Regression: log eta* ~ -7500 made math.exp underflow and math.log(0) raise a raw
    ValueError; now the step is taken in log space and reproduces W_0 exactly."""
    q, k, v = _head()
    dec = decompose_head(20000 * q, 0.3 * k, v, SEGS)     # log D' in the thousands
    w0 = dec.w0(1)
    assert w0.log_multiplier < -1000
    res = distillation_step(w0)
    assert res.eta_star == 0.0                             # exp(log eta*) underflows float64
    assert res.weights.log_multiplier == w0.log_multiplier
    assert res.distance == 0.0 and res.relative_distance == 0.0
    assert math.isfinite(res.loss_final) and res.loss_final == res.loss_w0
    # W_0 phi(k) ~ exp(-1000): the losses equal the initial one (mean ||v||^2)
    assert res.loss_w0 == pytest.approx(res.loss_initial, rel=1e-12)
    # the same with an explicit tiny step size
    res2 = distillation_step(w0, 1e-300)
    assert math.isfinite(res2.distance) and math.isfinite(res2.loss_final)


@pytest.mark.parametrize("log_mult", [1000.0, -1000.0])
def test_distillation_step_large_log_multiplier_is_an_input_error_or_works(log_mult):
    """Regression: log_multiplier = +1000 raised OverflowError (math range error) and -1000
    raised ValueError (math domain error)."""
    g = torch.Generator().manual_seed(1)
    k = torch.randn(4, 3, generator=g, dtype=torch.float64)
    c = torch.randn(4, 2, generator=g, dtype=torch.float64)
    w0 = DualWeights(k, c, log_mult, 1.0)
    if log_mult > 0:   # W_0 phi(k_i) >= e^1000 |v|: the losses are genuinely unrepresentable
        with pytest.raises(InputError, match="not representable in float64"):
            distillation_step(w0)
    else:
        res = distillation_step(w0)
        assert res.eta_star == 0.0 and res.distance == 0.0
        assert res.loss_w0 == pytest.approx(float((c**2).sum(-1).mean()), rel=1e-12)


# ============================================================================ 2. apply overflow
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(-5000.0, 5000.0))
def test_dual_apply_is_exact_for_huge_exponents_with_a_representable_result(seed, b):
    """Regression: DualWeights.apply exponentiated scale <k, q> + log_multiplier directly (inf or
    0 for large exponents). Identity: keys [k, 1], queries [q, b] and multiplier -b give the
    exponents <k, q> + b - b, so the result equals the plain float64 exp(q k^T) @ c."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(5, 3, generator=g, dtype=torch.float64)
    c = torch.randn(5, 2, generator=g, dtype=torch.float64)
    q = torch.randn(4, 3, generator=g, dtype=torch.float64)
    ref = torch.exp(q @ k.T) @ c
    k1 = torch.cat([k, torch.ones(5, 1, dtype=torch.float64)], 1)
    q1 = torch.cat([q, torch.full((4, 1), b, dtype=torch.float64)], 1)
    out = DualWeights(k1, c, -b, 1.0).apply(q1)
    # the exponent b - b carries the rounding of b (|b| * 2^-52 absolute), so each term
    # exp(<k, q>) c carries that relative error: the bound scales with the sum of the terms'
    # sizes, not with the sum (which may cancel: seed 6942, b = 4098 gave -0.0102 from terms
    # near 1, off by 1.1e-10 relative, within this bound but not within a relative one)
    size = torch.exp(q @ k.T) @ c.abs()
    assert ((out - ref).abs() <= (1e-12 + 4 * abs(b) * 2.0**-52) * size + 1e-12).all()


def test_dual_apply_overflow_is_an_input_error_not_inf():
    """Regression: keys 30x normal gave W phi(q) = inf/-inf, random_feature_error a NaN mean and
    distillation_step a NaN loss with distance 0.0 (from NaN coefficients)."""
    g = torch.Generator().manual_seed(0)
    k1 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    c1 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    dw = DualWeights(k1 * 30, c1, -900.0, 1.0)
    assert float(((k1 * 30) @ (k1 * 30).T).max()) - 900 > 710
    with pytest.raises(InputError, match="overflows"):
        dw.apply(k1 * 30)
    with pytest.raises(InputError, match="overflows"):
        random_feature_error(dw, k1 * 30, (16,), seeds=2)
    q, k, v = _head()
    w0 = decompose_head(0.01 * q, 20 * k, v, SEGS).w0(1)
    with pytest.raises(InputError, match="not representable"):
        distillation_step(w0)
    with pytest.raises(InputError, match="overflows"):
        distillation_step(w0, steps=3)


def test_dual_apply_large_exponents_but_representable_result():
    """Regression: exp(1000) * exp(-995) was inf * small before; factoring out the row maximum
    gives the finite result."""
    k = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    c = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    dw = DualWeights(k, c, -995.0, 1.0)
    out = dw.apply(torch.tensor([[1000.0]], dtype=torch.float64))
    expected = math.exp(5.0) + 2.0 * math.exp(500.0 - 995.0)
    assert float(out[0, 0]) == pytest.approx(expected, rel=1e-12)
    assert distillation_loss(DualWeights(k, c, -3.0, 1.0), k, c) >= 0.0


# ============================================================================ 3. segment names
def test_unknown_demo_segment_names_are_input_errors():
    """Regression: segments named 'demo' with demo_segments='demos' silently gave eta = 0, and
    unknown names in demo_segments or correction() were accepted."""
    q, k, v = _head()
    bad = ["prefix", "demo", "demo", "demo", "query", "query"]
    with pytest.raises(InputError, match=r"'demos'.*'prefix', 'demo', 'query'"):
        decompose_head(q, k, v, bad)
    with pytest.raises(InputError, match="'typo'"):
        decompose_head(q, k, v, SEGS, demo_segments=["demos", "typo"])
    dec = decompose_head(q, k, v, SEGS)
    with pytest.raises(InputError, match="'querry'"):
        dec.correction(0, "querry")
    # explicit names of a custom layout work, and so does an explicit "no demonstrations"
    dec2 = decompose_head(q, k, v, bad, demo_segments="demo")
    assert torch.equal(dec2.eta, dec.eta)
    assert float(decompose_head(q, k, v, bad, demo_segments=()).eta.abs().max()) == 0.0


def test_standard_layout_may_lack_a_standard_segment():
    """A zero-shot prompt in the standard layout (no "demos" keys) keeps eta* = 0."""
    q, k, v = _head()
    dec = decompose_head(q, k, v, ["prefix", "prefix", "query", "query", "query", "query"])
    assert float(dec.eta.abs().max()) == 0.0 and dec.w0(0).num_keys == 0


# ============================================================================ 4. segment ids
def test_segment_ids_out_of_range_or_wrong_length_are_input_errors():
    """Regression: ids >= S or an id vector of the wrong length silently dropped keys."""
    g = torch.Generator().manual_seed(0)
    P = torch.softmax(torch.randn(3, 5, generator=g), -1)
    V = torch.randn(5, 2, generator=g)
    for ids, S, match in [(torch.tensor([0, 0, 1, 1, 2]), 2, r"\[0, 2\)"),
                          (torch.tensor([0, 1, -1, 1, 0]), 2, r"\[0, 2\)"),
                          (torch.tensor([0, 1]), 2, r"shape \[5\]"),
                          (torch.tensor([0.0, 0, 1, 1, 1]), 2, "integers"),
                          (torch.tensor([0, 0, 1, 1, 1]), 0, "num_segments")]:
        with pytest.raises(InputError, match=match):
            segment_components(P, V, ids, S)
        with pytest.raises(InputError, match=match):
            segment_mass(P, ids, S)
    with pytest.raises(InputError, match="values"):
        segment_components(P, V[:4], torch.tensor([0, 0, 1, 1, 1]), 2)
    c = segment_components(P, V, torch.tensor([0, 0, 1, 1, 1]), 2)
    assert torch.allclose(c.sum(0), P @ V, atol=1e-6)


# ============================================================================ 5. steps
@pytest.mark.parametrize("steps", [0, -5, 1.5, True, "2"])
def test_distillation_step_rejects_non_positive_steps(steps):
    """Regression: steps=0 or -5 silently ran one step."""
    q, k, v = _head()
    with pytest.raises(InputError, match="steps"):
        distillation_step(decompose_head(q, k, v, SEGS).w0(1), steps=steps)


# ============================================================================ 6. raw exceptions
@pytest.mark.parametrize("mask, match", [
    (torch.ones(3, 5), "boolean"),
    (torch.ones(3, 5, dtype=torch.long), "boolean"),
    (torch.ones(3, 4, dtype=torch.bool), "shape"),
    (torch.tensor([True, True, False, True, True]), "shape"),
    (np.ones((3, 5), dtype=bool), "tensor"),
])
def test_attention_probs_malformed_masks_are_input_errors(mask, match):
    """Regression: float/int masks and wrong shapes raised raw errors, and a 1-D mask silently
    broadcast over the queries."""
    logits = torch.randn(3, 5)
    with pytest.raises(InputError, match=match):
        attention_probs(logits, mask)
    with pytest.raises(InputError, match=match):
        attention_probs_(logits.clone(), mask)
    with pytest.raises(InputError, match=match):
        segment_decomposition(logits, torch.randn(5, 2), torch.zeros(5, dtype=torch.long), 1,
                              mask)


def test_attention_probs_without_keys_and_bad_positions_are_input_errors():
    """Regression: n = 0 keys, w0(True) and query(100) raised raw IndexError/TypeError (or
    silently used position 1)."""
    with pytest.raises(InputError, match="no keys"):
        attention_probs(torch.zeros(3, 0))
    with pytest.raises(InputError, match="0-d"):
        attention_probs(torch.tensor(1.0))
    q, k, v = _head()
    dec = decompose_head(q, k, v, SEGS)
    for bad in (True, 1.5, "1"):
        with pytest.raises(InputError, match="t must be an integer"):
            dec.w0(bad)
    with pytest.raises(InputError, match="out of range"):
        dec.query(100)
    with pytest.raises(InputError, match="out of range"):
        dec.w0(4)
    assert torch.equal(dec.query(-1), q[-1]) and dec.w0(np.int64(1)).num_keys == 3


def test_attention_probs_never_writes_into_a_numpy_input():
    """The copying variant must not overwrite an array it converted without a copy."""
    arr = np.random.default_rng(0).normal(size=(3, 5))
    before = arr.copy()
    attention_probs(arr)
    assert np.array_equal(arr, before)


def test_other_malformed_arguments_are_input_errors():
    """Regression: raw RuntimeError/ZeroDivisionError/IndexError from mismatched shapes and
    degenerate sizes."""
    k = torch.randn(4, 3, dtype=torch.float64)
    c = torch.randn(4, 2, dtype=torch.float64)
    dw = DualWeights(k, c, 0.0, 1.0)
    with pytest.raises(InputError):
        dw.distance(DualWeights(k[:, :2], c, 0.0, 1.0))
    with pytest.raises(InputError):
        distillation_loss(dw, k, c[:3])
    with pytest.raises(InputError):
        random_feature_error(dw, k, (16,), seeds=0)
    with pytest.raises(InputError):
        PositiveRandomFeatures.create(0, 4, 1.0)


# ============================================================================ 7. half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_exponentiated_in_float32(dtype):
    """Regression: fp16/bf16 logits and keys were exponentiated in half precision."""
    g = torch.Generator().manual_seed(0)
    L = (torch.randn(3, 6, generator=g) * 20).to(dtype)
    p, logd = attention_probs(L)
    p64, logd64 = attention_probs(L.double())
    assert p.dtype == torch.float32 and logd.dtype == torch.float32
    assert torch.allclose(logd.double(), logd64, rtol=1e-6)
    assert torch.allclose(p.double(), p64, atol=1e-6)
    comps, logd2, _ = segment_decomposition(L, torch.randn(6, 2, generator=g).to(dtype),
                                               torch.tensor([0, 0, 1, 1, 1, 1]), 2)
    assert comps.dtype == torch.float32 and logd2.dtype == torch.float32
    with pytest.raises(InputError, match="half precision"):
        attention_probs_(L.clone())
    x = torch.randn(4, 8, generator=g) * 3
    c = torch.randn(4, 2, generator=g)
    dw = DualWeights(x.to(dtype), c.to(dtype), 0.0, 0.35)
    out = dw.apply(x.to(dtype))
    ref = DualWeights(x.to(dtype).double(), c.to(dtype).double(), 0.0, 0.35).apply(
        x.to(dtype).double())
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert dw.to_primal(16).matrix.dtype == torch.float32
