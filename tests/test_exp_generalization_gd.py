"""The generalization-bound and ICL-vs-GD experiments on a tiny untrained in-context learner,
and the linear baselines of the GD comparison on synthetic data."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch

from icldistill.core.bounds import generalization_bound
from icldistill.lab.experiments import demo_key_values, gd, generalization
from icldistill.lab.synthetic import icl_batch

from .lab_helpers import (
    N,
    check_section,
    one_thread,  # noqa: F401 (autouse fixture)
    tiny_cached,
)


@functools.lru_cache(maxsize=1)
def _gen_result() -> generalization.GeneralizationResult:
    return generalization.generalization(tiny_cached(), n_prompts=3, heldout_prompts=4,
                                         rademacher_samples=64, seed=5)




# ------------------------------------------------------------------------- generalization
def test_generalization_run_quick(tmp_path):
    sec = generalization.run(tiny_cached(), out_dir=tmp_path, quick=True, seed=0)
    check_section(sec, "generalization", tmp_path)
    d = sec.data
    assert d["n_tokens"] == sorted(d["n_tokens"]) and d["n_tokens"][0] >= 1
    assert len(sec.tables[0].rows) == len(d["n_tokens"])
    # the reported violation count is the number of (prompt, head, N) with bound < held-out
    bound, held = np.array(d["bound"], dtype=float), np.array(d["heldout_loss"], dtype=float)
    assert d["violations"] == int((bound < held).sum())
    first = sec.checks[0]
    assert first.holds == (d["violations"] == 0)


def test_generalization_sample_size_is_demo_tokens():
    res = _gen_result()
    model = copy.deepcopy(tiny_cached().model).double()
    batch = icl_batch("regression", 1, N, 3, 0, dtype=torch.float64)
    with torch.no_grad():
        trace = model.trace(batch.xs, batch.ys)
    expected = [demo_key_values(trace, 0, 0, 0, int(i))[0].shape[0] for i in res.pairs]
    assert list(res.n_tokens) == expected
    assert list(res.pairs) == list(generalization.pair_grid(N))
    assert generalization.pair_grid(N) == (1, 2, 4, 7)


def test_generalization_bound_arithmetic():
    res = _gen_result()
    L, H = res.shape
    assert res.skipped == 0 and res.evaluated == res.bound.size
    for b in range(res.n_prompts):
        for la in range(L):
            for h in range(H):
                M = float(res.loss_bound[la, h])
                for g, n in enumerate(res.n_tokens):
                    emp = float(res.empirical[b, la, h, g])
                    r = float(res.rademacher_closed[b, la, h, g])
                    assert 0.0 <= emp <= M and 0.0 <= res.heldout[b, la, h, g] <= M
                    gb = generalization_bound(emp, r, int(n), lipschitz=1.0, loss_bound=M,
                                              delta=res.delta / res.value_dim)
                    assert math.isclose(gb.bound, res.bound[b, la, h, g], rel_tol=1e-12)
                    by_hand = (emp + 2.0 * r + 3.0 * M * math.sqrt(
                        math.log(2.0 * res.value_dim / res.delta) / (2.0 * n)))
                    assert math.isclose(by_hand, res.bound[b, la, h, g], rel_tol=1e-12)
                    assert math.isclose(res.complexity[b, la, h, g], 2.0 * r, rel_tol=1e-12)
    # Monte Carlo never exceeds the closed form when enumerated (Jensen); N = 1 is exact
    assert np.allclose(res.rademacher_mc[..., 0], res.rademacher_closed[..., 0], rtol=1e-12)
    assert (res.rademacher_mc <= res.rademacher_closed * (1 + 1e-12)).all()
    assert res.violations == int((res.bound < res.heldout).sum())


def test_generalization_deterministic():
    a = _gen_result()
    b = generalization.generalization(tiny_cached(), n_prompts=3, heldout_prompts=4,
                                      rademacher_samples=64, seed=5)
    c = generalization.generalization(tiny_cached(), n_prompts=3, heldout_prompts=4,
                                      rademacher_samples=64, seed=6)
    for name in ("radius", "rademacher_mc", "empirical", "heldout", "bound", "loss_bound"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.heldout, c.heldout)


def test_clipped_loss_range_and_lipschitz():
    g = torch.Generator().manual_seed(0)
    p, q, t = (torch.randn(50, 4, generator=g, dtype=torch.float64) * 3 for _ in range(3))
    M = 1.5
    lp = generalization.clipped_abs_loss(p, t, M)
    lq = generalization.clipped_abs_loss(q, t, M)
    assert ((lp >= 0) & (lp <= M)).all()
    # 1-Lipschitz in every coordinate -> |l(p) - l(q)| <= mean_c |p_c - q_c|
    assert ((lp - lq).abs() <= (p - q).abs().mean(-1) + 1e-12).all()


# ------------------------------------------------------------------------------------- gd
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_gd_run_quick(tmp_path, task):
    sec = gd.run(tiny_cached(task), out_dir=tmp_path, quick=True, seed=0)
    check_section(sec, "gd", tmp_path)
    d = sec.data
    assert d["task"] == task
    assert d["n"] == list(range(1, N))
    assert set(d["error"]) == {"transformer", "zero", "gd1", "gd5", "gd50", "least_squares"}
    assert set(d["distance"]) == set(d["error"]) - {"transformer"}
    if task == "classification":
        acc = d["accuracy"]
        assert all(0.0 <= a <= 1.0 for m in acc for a in acc[m])
        assert all(0.0 <= x <= 1.0 for m in d["distance"] for x in d["distance"][m])
    else:
        assert d["accuracy"] is None
        ls = np.array(d["error"]["least_squares"])
        assert ls[2:].max() < 1e-12      # n >= d = 3: noiseless least squares is exact


def test_gd_deterministic():
    kw = dict(n_prompts=64, validation_prompts=64)
    a = gd.gd_comparison(tiny_cached(), seed=2, **kw)
    b = gd.gd_comparison(tiny_cached(), seed=2, **kw)
    c = gd.gd_comparison(tiny_cached(), seed=3, **kw)
    for m in a.methods:
        np.testing.assert_array_equal(a.predictions[m], b.predictions[m])
        np.testing.assert_array_equal(a.error[m], b.error[m])
    for m in a.eta:
        np.testing.assert_array_equal(a.eta[m], b.eta[m])
    assert not np.array_equal(a.targets, c.targets)


def test_least_squares_recovers_w():
    d, n = 4, 9
    batch = icl_batch("regression", 16, n + 1, d, 11, dtype=torch.float64)
    xs, ys, q = batch.xs[:, :n], batch.ys[:, :n], batch.xs[:, n]
    pred = gd.least_squares_predictions(xs, ys, q)
    truth = (batch.ws * q).sum(-1)
    assert float((pred - truth).abs().max()) < 1e-10
    # n < d: the minimum-norm solution X^+ y
    small = 2
    pred = gd.least_squares_predictions(xs[:, :small], ys[:, :small], q)
    w = (torch.linalg.pinv(xs[:, :small]) @ ys[:, :small, None])[..., 0]
    assert float((pred - (w * q).sum(-1)).abs().max()) < 1e-10


def test_gd_closed_form_matches_iteration():
    d, n, P = 4, 6, 5
    batch = icl_batch("regression", P, n + 1, d, 1, dtype=torch.float64)
    X, y, q = batch.xs[:, :n], batch.ys[:, :n], batch.xs[:, n]
    etas = [0.01, 0.3, 1.2]
    for steps in (1, 5, 50):
        got = gd.gd_predictions(X, y, q, etas, steps)
        assert got.shape == (len(etas), P)
        for e, eta in enumerate(etas):
            w = torch.zeros(P, d, dtype=torch.float64)
            for _ in range(steps):
                resid = y - (X @ w[..., None])[..., 0]
                w = w + eta / n * (X.transpose(1, 2) @ resid[..., None])[..., 0]
            ref = (w * q).sum(-1)
            assert float(((got[e] - ref).abs() / ref.abs().clamp_min(1.0)).max()) < 1e-9
    # one step: (eta / n) sum_i y_i <x_i, x_q>
    one = gd.gd_predictions(X, y, q, [0.7], 1)[0]
    direct = 0.7 / n * (y * (X @ q[..., None])[..., 0]).sum(-1)
    assert torch.allclose(one, direct, rtol=1e-12, atol=1e-12)


def test_tuned_one_step_gd_beats_zero_predictor():
    d, n = 5, 10
    val = icl_batch("regression", 512, n + 1, d, 21, dtype=torch.float64)
    ev = icl_batch("regression", 512, n + 1, d, 22, dtype=torch.float64)
    eta, val_mse = gd.tune_eta(val.xs[:, :n], val.ys[:, :n], val.xs[:, n], val.ys[:, n], 1)
    assert gd.ETA_GRID[0] < eta < gd.ETA_GRID[-1]
    assert val_mse < float((val.ys[:, n] ** 2).mean())
    pred = gd.gd_predictions(ev.xs[:, :n], ev.ys[:, :n], ev.xs[:, n], [eta], 1)[0]
    gd_err = float(((pred - ev.ys[:, n]) ** 2).mean()) / d
    zero_err = float((ev.ys[:, n] ** 2).mean()) / d
    assert gd_err < 0.8 * zero_err


def test_tune_eta_respects_cap():
    d, n = 5, 3
    val = icl_batch("regression", 128, n + 1, d, 31, dtype=torch.float64)
    args = (val.xs[:, :n], val.ys[:, :n], val.xs[:, n], val.ys[:, n], 50)
    free, _ = gd.tune_eta(*args)
    capped, _ = gd.tune_eta(*args, max_eta=free / 3)
    assert capped <= free / 3 and capped in gd.ETA_GRID
    assert gd.tune_eta(*args, max_eta=0.0)[0] == gd.ETA_GRID[0]
