"""SPEC §1–2: segment decomposition, eta*, W_0 (dual and primal), implicit alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import icldistill as ic

from .conftest import matrices, rel_err

SEGMENT_NAMES = st.sampled_from(["prefix", "demos", "query"])


@st.composite
def heads(draw, max_t=5, max_n=9):
    t = draw(st.integers(1, max_t))
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, 4))
    dv = draw(st.integers(1, 3))
    q = draw(matrices(st.just(t), d))
    k = draw(matrices(st.just(n), d))
    v = draw(matrices(st.just(n), dv))
    segs = draw(st.lists(SEGMENT_NAMES, min_size=n, max_size=n))
    mask = draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=t, max_size=t))
    mask = np.array(mask, dtype=bool)
    mask[np.arange(t), draw(st.lists(st.integers(0, n - 1), min_size=t, max_size=t))] = True
    scale = draw(st.one_of(st.none(), st.floats(0.1, 2.0)))
    return q, k, v, segs, mask, scale


def _reference(q, k, v, mask, scale):
    s = 1 / math.sqrt(q.shape[1]) if scale is None else scale
    logits = s * (torch.from_numpy(q) @ torch.from_numpy(k).T)
    logits = logits.masked_fill(~torch.from_numpy(mask), -math.inf)
    return torch.softmax(logits, -1) @ torch.from_numpy(v), logits, s


@given(heads())
def test_components_sum_to_softmax_attention(head):
    q, k, v, segs, mask, scale = head
    dec = ic.decompose_head(q, k, v, segs, scale=scale, mask=mask)
    ref, logits, _ = _reference(q, k, v, mask, scale)
    assert set(dec.components) == set(segs)
    assert rel_err(sum(dec.components.values()), ref) < 1e-10
    assert rel_err(dec.output, ref) < 1e-10
    assert rel_err(dec.log_normalizer, torch.logsumexp(logits, -1)) < 1e-10
    total_mass = sum(dec.attention_mass.values())
    assert rel_err(total_mass, torch.ones_like(total_mass)) < 1e-12
    # each component is the partial softmax sum over its own keys
    probs = torch.softmax(logits, -1)
    for name, comp in dec.components.items():
        cols = torch.tensor([s == name for s in segs])
        assert rel_err(comp, probs[:, cols] @ torch.from_numpy(v)[cols]) < 1e-10


@given(heads())
def test_eta_star_and_domain_stationarity(head):
    q, k, v, segs, mask, scale = head
    dec = ic.decompose_head(q, k, v, segs, scale=scale, mask=mask)
    _, logits, _ = _reference(q, k, v, mask, scale)
    demo_cols = torch.tensor([s == "demos" for s in segs])
    n_t = (torch.from_numpy(mask) & demo_cols).sum(-1)
    assert torch.equal(dec.num_demo_keys, n_t)
    d_prime = torch.exp(torch.logsumexp(logits, -1))
    assert rel_err(dec.eta, n_t / (2 * d_prime)) < 1e-10
    # Jensen: log(D'_t / n_t) >= mean attended logit
    n_keys = torch.from_numpy(mask).sum(-1)
    assert torch.all(dec.log_normalizer - torch.log(n_keys.double()) >= dec.mean_logit - 1e-12)


@given(heads())
def test_dual_w0_and_correction_reproduce_components(head):
    """o_t = c_prefix + (W_0 + dW) phi(q_t), with W_0 and dW applied through the kernel."""
    q, k, v, segs, mask, scale = head
    dec = ic.decompose_head(q, k, v, segs, scale=scale, mask=mask)
    zero = torch.zeros(v.shape[1])
    for t in range(q.shape[0]):
        qt = torch.from_numpy(q[t : t + 1])
        cd = dec.w0(t).apply(qt)[0]
        cq = dec.correction(t).apply(qt)[0]
        assert rel_err(cd, dec.components.get("demos", zero)[t] if "demos" in segs else zero) \
            < 1e-10
        assert rel_err(cq, dec.components["query"][t] if "query" in segs else zero) < 1e-10
        prefix = dec.components["prefix"][t] if "prefix" in segs else zero
        assert rel_err(prefix + cd + cq, dec.output[t]) < 1e-10


@given(heads())
def test_hs_norm_matches_gram_definition(head):
    q, k, v, segs, mask, scale = head
    dec = ic.decompose_head(q, k, v, segs, scale=scale, mask=mask)
    _, logits, s = _reference(q, k, v, mask, scale)
    t = q.shape[0] - 1
    sel = torch.from_numpy(mask[t]) & torch.tensor([x == "demos" for x in segs])
    kd, vd = torch.from_numpy(k)[sel], torch.from_numpy(v)[sel]
    d_prime = float(torch.exp(torch.logsumexp(logits[t], -1)))
    expected = math.sqrt(max(0.0, float(((vd @ vd.T) * torch.exp(s * kd @ kd.T)).sum()))) / d_prime
    assert dec.w0(t).hs_norm() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(heads(), st.floats(0.05, 5.0))
def test_implicit_alignment(head, factor):
    """One gradient step from 0 with eta* = N/(2D') gives exactly W_0; other eta do not."""
    q, k, v, segs, mask, scale = head
    dec = ic.decompose_head(q, k, v, segs, scale=scale, mask=mask)
    t = q.shape[0] - 1
    w0 = dec.w0(t)
    assume(w0.num_keys > 0 and w0.hs_norm() > 1e-6)
    step = ic.distillation_step(w0)
    assert step.eta_star == pytest.approx(float(dec.eta[t]), rel=1e-12)
    assert step.relative_distance < 1e-12
    other = ic.distillation_step(w0, eta=factor * step.eta_star)
    assert other.relative_distance == pytest.approx(abs(factor - 1.0), rel=1e-8, abs=1e-12)


def test_gradient_step_matches_autograd_on_explicit_features():
    """The closed-form step equals autograd's gradient of L(W) on an explicit feature map."""
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(7, 3, generator=g) * 0.5
    values = torch.randn(7, 2, generator=g)
    feats = ic.PositiveRandomFeatures.create(3, 64, 0.5, seed=1)
    phi = torch.exp(feats.log_features(keys))  # [N, m]
    w = torch.zeros(2, 64, requires_grad=True)
    loss = ((values - phi @ w.T) ** 2).sum(-1).mean()
    loss.backward()
    eta = 0.3
    w1 = -eta * w.grad
    assert rel_err(w1, 2 * eta / 7 * values.T @ phi) < 1e-12


def test_multi_step_gradient_descent_lowers_the_distillation_loss():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 4, generator=g), torch.randn(12, 4, generator=g), \
        torch.randn(12, 2, generator=g)
    dec = ic.decompose_head(q, k, v, ["demos"] * 12)
    w0 = dec.w0(0)
    # functional GD on L converges for eta < N / lambda_max(K); take half of that
    lam = float(torch.linalg.eigvalsh(torch.exp(k @ k.T / 2.0)).max())
    eta = 0.5 * 12 / lam
    losses = [ic.distillation_step(w0, eta=eta, steps=s).loss_final for s in (1, 5, 25)]
    assert losses[0] > losses[1] > losses[2]
    first = ic.distillation_step(w0, eta=eta, steps=1)
    assert first.loss_initial == pytest.approx(float((v**2).sum(-1).mean()))


def test_random_features_converge_to_the_dual_form():
    g = torch.Generator().manual_seed(2)
    k = torch.randn(40, 4, generator=g) * 0.6
    v = torch.randn(40, 3, generator=g)
    q = torch.randn(6, 4, generator=g) * 0.6
    dec = ic.decompose_head(q, k, v, ["demos"] * 40)
    w0 = dec.w0(5)
    err = ic.random_feature_error(w0, q, (16, 256, 4096), seeds=4)
    assert err.mean[0] > err.mean[1] > err.mean[2]
    assert err.mean[2] < 0.1
    # the primal matrix's HS norm converges too
    assert w0.to_primal(8192, seed=0).hs_norm() == pytest.approx(w0.hs_norm(), rel=0.1)
    # seeded
    a = w0.to_primal(64, seed=3).apply(q)
    assert torch.equal(a, w0.to_primal(64, seed=3).apply(q))


@pytest.mark.parametrize("orthogonal", [False, True])
def test_random_features_are_unbiased_estimates_of_the_softmax_kernel(orthogonal):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(5, 3, generator=g) * 0.4, torch.randn(5, 3, generator=g) * 0.4
    m = 3 * 8000  # 8000 independent orthogonal blocks of 3 features, one draw
    f = ic.PositiveRandomFeatures.create(3, m, 0.7, seed=0, orthogonal=orthogonal)
    # per-feature estimates m * phi_r(x) phi_r(y); averaged within each block of 3
    per_feature = m * torch.exp(f.log_features(x)[:, None, :] + f.log_features(y)[None, :, :])
    ratios = per_feature.reshape(5, 5, 8000, 3).mean(-1).permute(2, 0, 1) \
        / torch.exp(0.7 * x @ y.T)
    stderr = ratios.std(0) / 8000**0.5
    # every entry's mean within 4 standard errors of 1 (before the sign fix of the orthogonal
    # blocks, the orthogonal features were biased by ~10%)
    assert torch.all((ratios.mean(0) - 1).abs() < 4 * stderr)


def test_large_logits_do_not_overflow_float32():
    q = torch.full((2, 8), 30.0, dtype=torch.float32)
    k = torch.full((5, 8), 30.0, dtype=torch.float32)
    v = torch.randn(5, 2, dtype=torch.float32)
    dec = ic.decompose_head(q, k, v, ["demos"] * 3 + ["query"] * 2)
    assert torch.isfinite(dec.log_normalizer).all() and torch.isfinite(dec.output).all()
    assert float(dec.log_normalizer[0]) == pytest.approx(8 * 900 / math.sqrt(8) + math.log(5),
                                                          rel=1e-5)
    assert math.isfinite(dec.w0(0).hs_norm())


def test_logits_only_heads_are_decomposed_but_have_no_kernel_form():
    g = torch.Generator().manual_seed(4)
    logits = torch.tanh(torch.randn(3, 6, generator=g)) * 5  # soft-capped, not a dot product
    v = torch.randn(6, 2, generator=g)
    dec = ic.decompose_head(None, None, v, ["prefix", "demos", "demos", "demos", "query",
                                            "query"], logits=logits)
    assert not dec.has_kernel_form
    assert rel_err(dec.output, torch.softmax(logits, -1) @ v) < 1e-12
    with pytest.raises(ic.InputError, match="no kernel form"):
        dec.w0(0)


def test_half_precision_inputs_are_promoted():
    q = torch.randn(2, 4).half()
    dec = ic.decompose_head(q, q, q, ["demos", "query"])
    assert dec.output.dtype == torch.float32


@pytest.mark.parametrize("kwargs,match", [
    ({"segments": ["demos"] * 3}, "segments has 3 names but there are 4 keys"),
    ({"segments": "demos"}, "one name per key"),
    ({"mask": np.zeros((2, 4), dtype=bool)}, "attends to no key"),
    ({"mask": np.ones((3, 4), dtype=bool)}, "mask must have shape"),
    ({"mask": np.ones((2, 4))}, "boolean"),
    ({"k": np.ones((4, 5))}, "dimension"),
    ({"q": np.full((2, 3), np.nan)}, "NaN"),
    ({"scale": -1.0}, "scale"),
])
def test_decompose_head_bad_input(kwargs, match):
    args = {"q": np.ones((2, 3)), "k": np.ones((4, 3)), "v": np.ones((4, 2)),
            "segments": ["prefix", "demos", "demos", "query"]}
    args.update(kwargs)
    with pytest.raises(ic.InputError, match=match):
        ic.decompose_head(**args)


@given(st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_segment_pieces_equal_a_masked_reference_for_any_segment_layout(n, n_seg, seed):
    """Contiguous segments are sliced, scattered ones gathered: both equal the masked sums."""
    from icldistill.core.decomposition import (
        segment_components,
        segment_decomposition,
        segment_mass,
    )

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, n, generator=g, dtype=torch.float64) * 3
    values = torch.randn(2, n, 4, generator=g, dtype=torch.float64)
    ids = torch.randint(0, n_seg, (n,), generator=g)
    if seed % 2:                     # contiguous layout: sorted segment ids
        ids = ids.sort().values
    comps, log_norm, mass = segment_decomposition(logits, values, ids, n_seg)
    probs = torch.softmax(logits, -1)
    for s in range(n_seg):
        sel = (ids == s).to(torch.float64)
        ref = (probs * sel) @ values
        assert torch.allclose(comps[..., s, :, :], ref, atol=1e-12)
        assert torch.allclose(mass[..., s, :], (probs * sel).sum(-1), atol=1e-12)
    assert torch.allclose(log_norm, torch.logsumexp(logits, -1), atol=1e-12)
    assert torch.allclose(segment_components(probs, values, ids, n_seg), comps, atol=1e-12)
    assert torch.allclose(segment_mass(probs, ids, n_seg), mass, atol=1e-12)


@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 6), st.integers(1, 9),
       st.booleans())
def test_in_place_attention_probs_equal_the_copying_ones_to_the_bit(seed, h, t, n, masked):
    from icldistill.core.decomposition import attention_probs, attention_probs_

    g = torch.Generator().manual_seed(seed)
    logits = 10 * torch.randn(h, t, n, dtype=torch.float64, generator=g)
    mask = None
    if masked:
        mask = torch.rand(h, t, n, generator=g) < 0.7
        mask[..., 0] = True                    # every query sees a key
    p, ln = attention_probs(logits, mask)
    work = logits.clone()
    p2, ln2 = attention_probs_(work, mask)
    assert p2.data_ptr() == work.data_ptr()    # the buffer was reused
    assert torch.equal(p, p2) and torch.equal(ln, ln2)
    ref = torch.softmax(logits if mask is None else logits.masked_fill(~mask, -math.inf), -1)
    assert torch.allclose(p, ref, rtol=1e-12, atol=1e-15)
