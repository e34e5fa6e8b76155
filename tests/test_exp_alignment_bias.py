"""The alignment and bias experiments on a tiny untrained in-context learner."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from icldistill.lab.experiments import alignment, bias
from icldistill.lab.synthetic import icl_batch

from .lab_helpers import (
    N,
    check_section,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny,
    tiny_cached,
)


@functools.lru_cache(maxsize=1)
def _alignment_result() -> alignment.AlignmentResult:
    return alignment.alignment(tiny_cached(), n_prompts=2, seed=3)


@functools.lru_cache(maxsize=1)
def _reference_trace():
    """The same prompts as :func:`_alignment_result`, traced by an independent float64 copy."""
    model = copy.deepcopy(tiny_cached().model).double()
    batch = icl_batch("regression", 2, N, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        return model.trace(batch.xs, batch.ys)




# ------------------------------------------------------------------------------- alignment
def test_alignment_run_quick(tmp_path):
    sec = alignment.run(tiny(), out_dir=tmp_path, quick=True, seed=0)
    check_section(sec, "alignment", tmp_path)
    d = sec.data
    assert np.max(d["decomposition_error"]) < 1e-10
    assert np.max(d["alignment_distance"]) < 1e-10
    assert min(np.min(v) for v in d["contrast_distance"].values()) > 0.1
    assert d["jensen_violations"] == 0
    assert d["trace_prediction_error"] == 0
    checks = {c.claim: c.holds for c in sec.checks}
    assert sum(checks.values()) >= 5  # all exactness checks hold; stationarity is reported
    eta = np.asarray(d["eta"])
    assert eta.shape == (4, 2, 2, N - 1) and np.all(eta > 0)


def test_alignment_deterministic():
    a = alignment.alignment(tiny_cached(), n_prompts=2, seed=3)
    b = _alignment_result()
    for name in ("eta", "log_normalizer", "mean_demo_logit", "demo_share",
                 "stationarity_spearman"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = alignment.alignment(tiny_cached(), n_prompts=2, seed=4)
    assert not np.array_equal(a.eta, c.eta)


@given(b=st.integers(0, 1), layer=st.integers(0, 1), head=st.integers(0, 1),
       i=st.integers(1, N - 1))
def test_eta_is_n_over_2_exp_logsumexp(b, layer, head, i):
    """eta*_t = N_t / (2 exp(logsumexp(logits))) with N_t = i, from the raw q, k."""
    res = _alignment_result()
    la = _reference_trace().layers[layer]
    t = N + i                      # query token i sees demonstration tokens 0..i-1 and itself
    keys = torch.cat([la.keys[b, head, :i], la.keys[b, head, t:t + 1]])
    logits = la.scale * (keys @ la.queries[b, head, t])
    lse = float(torch.logsumexp(logits, 0))
    expected = i / (2 * math.exp(lse))
    assert res.eta[b, layer, head, i - 1] == pytest.approx(expected, rel=1e-12)
    assert res.log_normalizer[b, layer, head, i - 1] == pytest.approx(lse, rel=1e-12, abs=1e-12)
    # Jensen: log(D'/n) >= mean logit
    assert lse - math.log(i + 1) >= float(logits.mean()) - 1e-12


# ------------------------------------------------------------------------------------ bias
def test_bias_run_quick(tmp_path):
    sec = bias.run(tiny(), out_dir=tmp_path, quick=True, seed=0)
    check_section(sec, "bias", tmp_path)
    d = sec.data
    assert d["identity_max_rel_error"] < 1e-8
    c = np.asarray(d["c"])
    for kind in d["hs_norm"]:
        hs = np.asarray(d["hs_norm"][kind])
        att = np.asarray(d["mmd_att"][kind])
        np.testing.assert_allclose(hs, c * att, rtol=1e-8, atol=0)
        assert np.all(hs > 0)
        assert np.asarray(d["mmd_gauss"][kind]).shape == hs.shape[:2]
    assert sec.checks[0].holds and sec.checks[1].holds
    layer, _ = d["representative"]
    assert layer == 1  # the last layer


def test_bias_deterministic_and_classification():
    levels = {"mean_shift": (0.0, 2.0), "label_noise": (0.0, 0.4)}
    tr = tiny("classification")
    a = bias.bias_vs_mmd(tr, n_prompts=2, n_seeds=1, levels=levels, seed=5)
    b = bias.bias_vs_mmd(tr, n_prompts=2, n_seeds=1, levels=levels, seed=5)
    for kind in levels:
        np.testing.assert_array_equal(a.hs_norm[kind], b.hs_norm[kind])
        np.testing.assert_array_equal(a.mmd_gauss[kind], b.mmd_gauss[kind])
        np.testing.assert_array_equal(a.icl_error[kind], b.icl_error[kind])
        err = a.icl_error[kind]
        assert np.all((err >= 0) & (err <= 1))  # error rates
    assert a.bandwidth == b.bandwidth
    assert a.identity_max_rel_error < 1e-8
    # larger mean shift, larger Gaussian MMD of the demonstrations
    assert a.mmd_gauss["mean_shift"][1, 0] > a.mmd_gauss["mean_shift"][0, 0]


def test_bias_rejects_unknown_kind():
    from icldistill.core.validation import InputError

    with pytest.raises(InputError):
        bias.bias_vs_mmd(tiny(), n_prompts=2, n_seeds=1, levels={"rotation": (0.0,)})
