"""Paired statistics against brute-force references, and the paired comparison report."""

from __future__ import annotations

import dataclasses
import itertools
import json
from fractions import Fraction
from math import comb

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from icldistill.core.stats import (
    MeanCI,
    PairedComparison,
    holm,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_comparisons,
    sign_flip_test,
    spearman,
    stratified_bootstrap_ci,
    stratified_mean,
    stratified_sign_flip_test,
)
from icldistill.core.validation import InputError
from icldistill.evaluation.harness import UnitResult, UnitSpec, load_predictions
from icldistill.evaluation.scoring import MetricResult
from icldistill.reporting.reports import write_comparison_report

# ------------------------------------------------------------------------------ references


def _mcnemar_by_binomial(b: int, c: int) -> float:
    """Two-sided binomial test by summing the pmf (exact fractions) over every outcome at least
    as far from n/2 as the observed one."""
    n = b + c
    return float(sum((Fraction(comb(n, x), 2**n) for x in range(n + 1)
                      if abs(2 * x - n) >= abs(b - c)), Fraction(0)))


def _signflip_by_enumeration(num: list[int]) -> float:
    """Share of all 2^n sign vectors with |sum(s * num)| >= |sum(num)| (exact integers)."""
    obs = abs(sum(num))
    hits = sum(abs(sum(s * v for s, v in zip(signs, num, strict=True))) >= obs
               for signs in itertools.product((-1, 1), repeat=len(num)))
    return hits / 2 ** len(num)


def _signflip_distribution(num: list[int]) -> dict[int, Fraction]:
    """Exact null distribution of sum(s * num) by convolution (for sizes too big to list)."""
    dist = {0: Fraction(1)}
    for v in num:
        nxt: dict[int, Fraction] = {}
        for total, pr in dist.items():
            for s in (-1, 1):
                nxt[total + s * v] = nxt.get(total + s * v, Fraction(0)) + pr / 2
        dist = nxt
    return dist


def _holm_stepdown(p: list[float], alpha: float) -> set[int]:
    """Holm's procedure as published: reject p_(1), p_(2), ... while p_(i) <= alpha/(m-i+1)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for rank, i in enumerate(order):
        if p[i] <= alpha / (len(p) - rank):
            rejected.add(i)
        else:
            break
    return rejected


def _holm_reference(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for pos, i in enumerate(order):
        out[i] = min(1.0, max((m - r) * p[order[r]] for r in range(pos + 1)))
    return out


# ------------------------------------------------------------------------------ McNemar


@given(st.integers(0, 25), st.integers(0, 25))
def test_mcnemar_equals_the_enumerated_binomial(b, c):
    p = mcnemar_exact(b, c)
    assert p == pytest.approx(_mcnemar_by_binomial(b, c), rel=1e-12, abs=0)
    assert p == mcnemar_exact(c, b)
    assert 0 < p <= 1


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 3), (0, 1), (2, 7), (5, 0), (6, 4)])
def test_mcnemar_equals_enumerating_every_discordant_outcome(b, c):
    # each discordant item favours either side with probability 1/2: list all 2^(b+c) outcomes
    assert mcnemar_exact(b, c) == pytest.approx(_signflip_by_enumeration([1] * b + [-1] * c)
                                                if b + c else 1.0)


def test_mcnemar_known_values_and_large_tables():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(4, 0) == 2 / 16
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    # the log-space branch (n > 5000) agrees with the exact branch near its threshold
    big = mcnemar_exact(2400, 2600)
    logspace = mcnemar_exact(2880, 3120)
    assert 0 < logspace < big < 1
    with pytest.raises(InputError, match="b must be"):
        mcnemar_exact(-1, 3)
    with pytest.raises(InputError, match="c must be"):
        mcnemar_exact(1, 2.5)


def test_mcnemar_log_space_matches_integer_arithmetic(monkeypatch):
    import icldistill.core.stats as stats

    exact = [mcnemar_exact(b, c) for b, c in [(1450, 1550), (30, 70), (2, 40)]]
    monkeypatch.setattr(stats, "_EXACT_INT_MAX", 10)
    logspace = [mcnemar_exact(b, c) for b, c in [(1450, 1550), (30, 70), (2, 40)]]
    np.testing.assert_allclose(logspace, exact, rtol=1e-9)


# ------------------------------------------------------------------------------ sign flip

thirds = st.lists(st.integers(-3, 3), min_size=1, max_size=11)


@given(thirds)
def test_sign_flip_exact_equals_enumeration_over_all_sign_vectors(num):
    d = np.asarray(num, dtype=np.float64) / 3      # correctness averaged over three seeds
    assert sign_flip_test(d) == pytest.approx(_signflip_by_enumeration(num), rel=1e-12)


@given(st.lists(st.sampled_from([-1, 0, 1]), min_size=1, max_size=40))
def test_sign_flip_on_single_runs_is_mcnemar(d):
    b, c = d.count(1), d.count(-1)
    assert sign_flip_test(d) == mcnemar_exact(b, c)


@given(st.lists(st.integers(-3, 3), min_size=21, max_size=60))
def test_sign_flip_on_a_lattice_is_the_exact_distribution(num):
    # more than 20 nonzero thirds: past enumeration, on the lattice of thirds
    d = np.asarray(num, dtype=np.float64) / 3
    dist = _signflip_distribution(num)
    exact = float(sum((pr for t, pr in dist.items() if abs(t) >= abs(sum(num))), Fraction(0)))
    assert sign_flip_test(d) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_sign_flip_on_a_lattice_has_no_monte_carlo_floor():
    # 30 items all 2/3: only the two constant sign vectors reach the statistic
    assert sign_flip_test(np.full(30, 2 / 3), n_perm=999) == pytest.approx(2.0 ** -29, rel=1e-12)
    # fifths of 7 (denominator 35) and halves: the common denominator is found
    num = [1, -3, 2, 5, 4, -1, 6, 2, 3] * 3
    d = np.asarray(num, dtype=np.float64) / 35
    exact = float(sum((pr for t, pr in _signflip_distribution(num).items()
                       if abs(t) >= abs(sum(num))), Fraction(0)))
    assert sign_flip_test(d) == pytest.approx(exact, rel=1e-9)


def test_sign_flip_lattice_falls_back_to_monte_carlo_past_its_cost(monkeypatch):
    import icldistill.core.stats as stats_mod

    num = [1, 2, -1, 3, 2, 1, 1, -2, 3, 3, 1, 2, 2, 1, -3, 1, 2, 3, 1, 1, 2, 2]   # thirds
    d = np.asarray(num, dtype=np.float64) / 3
    exact = sign_flip_test(d)
    assert (exact * 2 ** len(num)) == pytest.approx(round(exact * 2 ** len(num)))
    monkeypatch.setattr(stats_mod, "LATTICE_COST_MAX", 10)
    p = sign_flip_test(d, n_perm=999, seed=0)
    assert round(p * 1000) == pytest.approx(p * 1000)         # a Monte Carlo p: k / 1000
    assert abs(p - exact) < 0.05


def test_sign_flip_monte_carlo_is_close_to_the_exact_distribution_and_seeded(monkeypatch):
    import icldistill.core.stats as stats_mod

    rng = np.random.default_rng(3)
    num = rng.choice([-3, -2, -1, 0, 1, 2, 3, 3], size=40).tolist()   # net positive
    assert sum(v != 0 for v in num) > 20            # past enumeration
    dist = _signflip_distribution(num)
    exact = float(sum(pr for t, pr in dist.items() if abs(t) >= abs(sum(num))))
    d = np.asarray(num) / np.pi                     # a scaled lattice: exact, whatever the scale
    assert sign_flip_test(d) == pytest.approx(exact, rel=1e-9)
    monkeypatch.setattr(stats_mod, "_lattice", lambda *a: None)    # force the Monte Carlo branch
    p = sign_flip_test(d, n_perm=20_000, seed=1)
    assert abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / 20_000) + 1e-4
    assert p == sign_flip_test(d, n_perm=20_000, seed=1)
    assert p >= 1 / 20_001
    assert p != sign_flip_test(d, n_perm=20_000, seed=2)
    # a large effect: the +1 correction keeps p at 1/(n_perm + 1), never 0 (distinct sizes,
    # so not McNemar)
    big = 1 / np.pi + np.arange(30) * 1e-3
    assert sign_flip_test(big, n_perm=999, seed=0) == pytest.approx(1 / 1000)


def test_sign_flip_rejects_bad_input():
    for bad, msg in [([], "no items"), ([0.5, np.nan], "NaN"), ([[1.0]], "1-D")]:
        with pytest.raises(InputError, match=msg):
            sign_flip_test(bad)
    with pytest.raises(InputError, match="n_perm"):
        sign_flip_test([0.5] * 30, n_perm=0)


# ------------------------------------------------------------------------------ Holm

pvals = st.lists(st.floats(0, 1, allow_nan=False), min_size=0, max_size=25)


@given(pvals)
def test_holm_equals_the_reference_and_its_properties(p):
    adj = holm(p)
    assert adj.shape == (len(p),)
    np.testing.assert_allclose(adj, _holm_reference(p), rtol=1e-12, atol=0)
    if p:
        raw = np.asarray(p)
        assert np.all(adj >= raw - 1e-15) and np.all(adj <= 1.0)
        srt = adj[np.argsort(raw, kind="stable")]
        assert np.all(np.diff(srt) >= 0)
        for alpha in (0.01, 0.05, 0.2):
            assert set(np.flatnonzero(adj <= alpha).tolist()) == _holm_stepdown(p, alpha)


def test_holm_small_example_and_errors():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        holm([np.nan])


# ------------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci_covers_the_true_difference():
    # per-item differences in {-1, 0, 1} with P = (0.15, 0.65, 0.20): true mean 0.05
    rng = np.random.default_rng(0)
    true = 0.05
    hits, widths = 0, []
    for rep in range(300):
        d = rng.choice([-1.0, 0.0, 1.0], size=300, p=[0.15, 0.65, 0.20])
        ci = paired_bootstrap_ci(d, n_boot=1000, seed=rep)
        hits += ci.low <= true <= ci.high
        widths.append(ci.high - ci.low)
    assert 0.90 <= hits / 300 <= 0.99
    sd = np.sqrt(0.35 - true**2)
    assert np.mean(widths) == pytest.approx(2 * 1.96 * sd / np.sqrt(300), rel=0.1)


def test_bootstrap_ci_is_seeded_and_non_degenerate():
    d = np.random.default_rng(1).choice([-1.0, 0.0, 1.0, 1 / 3], size=200)
    ci = paired_bootstrap_ci(d, n_boot=2000, seed=5)
    assert isinstance(ci, MeanCI) and ci.n == 200 and ci.level == 0.95
    assert ci.value == pytest.approx(d.mean())
    assert ci.low < ci.value < ci.high
    assert ci == paired_bootstrap_ci(d, n_boot=2000, seed=5)
    wide = paired_bootstrap_ci(d, n_boot=2000, seed=5, level=0.99)
    assert wide.low <= ci.low and wide.high >= ci.high
    const = paired_bootstrap_ci(np.zeros(10))
    assert const.low == const.high == 0.0
    with pytest.raises(InputError, match="level"):
        paired_bootstrap_ci(d, level=1.0)


# ------------------------------------------------------------------------------ stratified


def test_stratified_mean_is_the_mean_of_task_means():
    rng = np.random.default_rng(2)
    parts = [rng.choice([-1.0, 0.0, 1.0], size=n) for n in (10, 50, 200)]
    want = np.mean([p.mean() for p in parts])
    assert stratified_mean(parts) == pytest.approx(want)
    ci = stratified_bootstrap_ci(parts, n_boot=500, seed=0)
    assert ci.value == pytest.approx(want) and ci.n == 260
    assert ci.low < ci.value < ci.high
    # one task: the same resamples as the unstratified bootstrap
    assert stratified_bootstrap_ci(parts[2:], n_boot=500, seed=4) == paired_bootstrap_ci(
        parts[2], n_boot=500, seed=4)
    with pytest.raises(InputError, match="no tasks"):
        stratified_mean([])
    with pytest.raises(InputError, match="list of per-task"):
        stratified_mean(np.zeros(5))


def test_stratified_bootstrap_covers_the_mean_over_tasks():
    rng = np.random.default_rng(7)
    probs = [(0.1, 0.7, 0.2), (0.3, 0.5, 0.2)]       # task means 0.10 and -0.10
    hits = 0
    for rep in range(200):
        parts = [rng.choice([-1.0, 0.0, 1.0], size=n, p=p)
                 for n, p in zip((150, 250), probs, strict=True)]
        ci = stratified_bootstrap_ci(parts, n_boot=800, seed=rep)
        hits += ci.low <= 0.0 <= ci.high
    assert 0.90 <= hits / 200 <= 0.99


def test_stratified_sign_flip_matches_exact_enumeration():
    parts_num = [[3, -1, 2, 0, 3], [1, 3, -2, 3, 3, 1, 0]]
    parts = [np.asarray(p) / 3 for p in parts_num]
    w = [Fraction(1, len(p)) for p in parts_num]
    flat = [(v, wt) for p, wt in zip(parts_num, w, strict=True) for v in p]
    obs = abs(sum(v * wt for v, wt in flat))
    hits = sum(abs(sum(s * v * wt for s, (v, wt) in zip(signs, flat, strict=True))) >= obs
               for signs in itertools.product((-1, 1), repeat=len(flat)))
    exact = hits / 2 ** len(flat)
    # thirds over tasks of 5 and 7 items lie on a lattice: the p-value is exact
    assert stratified_sign_flip_test(parts) == pytest.approx(exact, rel=1e-12)
    # off the lattice: Monte Carlo, close to the exact value and seeded
    parts_mc = [p / np.pi for p in parts]
    p = stratified_sign_flip_test(parts_mc, n_perm=20_000, seed=0)
    assert abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / 20_000) + 1e-4
    assert p == stratified_sign_flip_test(parts_mc, n_perm=20_000, seed=0)
    assert stratified_sign_flip_test([np.zeros(4), np.zeros(6)]) == 1.0


@given(st.lists(st.lists(st.sampled_from([-1, 0, 1]), min_size=8, max_size=8), min_size=1,
                max_size=12))
def test_stratified_sign_flip_on_equal_tasks_is_pooled_mcnemar(tasks):
    # tasks of equal size weigh every item alike: the test is McNemar's on the pooled items
    b = sum(t.count(1) for t in tasks)
    c = sum(t.count(-1) for t in tasks)
    p = stratified_sign_flip_test([np.asarray(t, dtype=np.float64) for t in tasks])
    assert p == pytest.approx(mcnemar_exact(b, c), rel=1e-9)


def test_stratified_sign_flip_exact_at_grid_scale():
    # ten tasks of 300 single-run items: pooled McNemar, far below a Monte Carlo floor
    rng = np.random.default_rng(0)
    parts = [rng.choice([-1.0, 0.0, 0.0, 1.0, 1.0], size=300) for _ in range(10)]
    b = sum(int(np.sum(p == 1)) for p in parts)
    c = sum(int(np.sum(p == -1)) for p in parts)
    p = stratified_sign_flip_test(parts, n_perm=10)
    assert 0 < p < 1e-6
    assert p == pytest.approx(mcnemar_exact(b, c), rel=1e-9)
    # a seed-averaged baseline (thirds) on ten tasks of 40 items: the exact distribution
    parts = [rng.choice([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1],
                        p=[.05, .05, .1, .5, .1, .1, .1], size=40) for _ in range(10)]
    num = [round(3 * v) for part in parts for v in part if v != 0]
    dist = _signflip_distribution(num)
    exact = float(sum((pr for t, pr in dist.items() if abs(t) >= abs(sum(num))), Fraction(0)))
    assert stratified_sign_flip_test(parts, n_perm=10) == pytest.approx(exact, rel=1e-9)
    # beyond float64 (3000 items all one way: 2^-2999) the exact tail underflows to 0, as
    # McNemar's does
    all_one_way = [np.ones(300)] * 10
    assert stratified_sign_flip_test(all_one_way) == mcnemar_exact(3000, 0) == 0.0


# ------------------------------------------------------------------------------ comparisons

TRUTH = ["x", "y"] * 5          # 10 items per task


def _flip(truth, wrong):
    return [("y" if t == "x" else "x") if i in wrong else t for i, t in enumerate(truth)]


def _unit(task, selector, wrong, seed=0, truth=TRUTH, k=4):
    spec = UnitSpec("m", task, selector, k, seed)
    pred = _flip(truth, set(wrong))
    acc = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))
    metric = MetricResult(acc, acc - 0.1, acc + 0.1, 0.95)
    res = UnitResult(spec, f"{task}-{selector}-{seed}-{k}", metric, metric, len(truth), 0.1,
                     0.1, True, 0.01, 1.0, 10, 100, {"x": 0.8, "y": 0.8})
    return res, (pred, list(truth))


def _fake_grid():
    units = [
        _unit("a", "knn", {0, 1, 2, 3, 4}),          # 5 right
        _unit("a", "mmd", {4}),                       # 9 right: b = 4, c = 0 against knn
        _unit("a", "random", {0, 1, 2, 3, 4, 5}, 0),  # 4 right
        _unit("a", "random", {0, 1, 2, 3}, 1),        # 6 right
        _unit("b", "knn", {0, 1}),                    # 8 right
        _unit("b", "mmd", {2, 3, 4}),                 # 7 right: b = 2, c = 3 against knn
        _unit("b", "random", {5, 6, 7, 8, 9}, 0),
        _unit("b", "random", {5, 6, 7, 8, 9}, 1),
    ]
    return [u for u, _ in units], {u.key: p for u, p in units}


def test_paired_comparisons_on_a_hand_made_grid():
    results, preds = _fake_grid()
    cs = paired_comparisons(results, preds, n_boot=500, n_perm=2000, seed=0)
    by = {(c.task, c.selector, c.baseline): c for c in cs}
    # selectors knn, mmd, random; baselines knn and random; a selector is never its baseline
    assert set(by) == {(t, s, b) for t in ("a", "b", "mean")
                       for s, b in [("mmd", "knn"), ("random", "knn"), ("knn", "random"),
                                    ("mmd", "random")]}
    c = by[("a", "mmd", "knn")]
    assert (c.diff, c.n, c.n_tasks, c.model, c.k) == (pytest.approx(0.4), 10, 1, "m", 4)
    assert c.p == mcnemar_exact(4, 0) == 0.125
    assert c.ci_low <= c.diff <= c.ci_high
    assert by[("b", "mmd", "knn")].p == mcnemar_exact(2, 3) == 1.0
    assert by[("b", "mmd", "knn")].diff == pytest.approx(-0.1)
    mean = by[("mean", "mmd", "knn")]
    assert mean.diff == pytest.approx((0.4 - 0.1) / 2) and (mean.n, mean.n_tasks) == (20, 2)
    # random averaged over its two seeds: items 4 and 5 are right in seed 1 only
    rnd_a = np.array([0, 0, 0, 0, 0.5, 0.5, 1, 1, 1, 1])
    mmd_a = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1])
    c = by[("a", "mmd", "random")]
    assert c.diff == pytest.approx(np.mean(mmd_a - rnd_a))
    assert c.p == sign_flip_test(mmd_a - rnd_a, n_perm=2000, seed=0)
    # mirrored comparisons are one hypothesis
    for t in ("a", "b", "mean"):
        x, y = by[(t, "knn", "random")], by[(t, "random", "knn")]
        assert x.diff == pytest.approx(-y.diff) and (x.p, x.p_holm) == (y.p, y.p_holm)
        assert (x.ci_low, x.ci_high) == pytest.approx((-y.ci_high, -y.ci_low))
    # Holm over the 3 distinct pairs x (2 tasks + mean) of (m, k=4)
    hyps = {(c.task, *sorted((c.selector, c.baseline))): c for c in cs}
    assert len(hyps) == 9
    adj = holm([c.p for c in hyps.values()])
    for c, a in zip(hyps.values(), adj, strict=True):
        assert c.p_holm == pytest.approx(a)
    assert cs == paired_comparisons(results, preds, n_boot=500, n_perm=2000, seed=0)
    rec = cs[0].to_dict()
    assert set(rec) >= {"model", "k", "task", "selector", "baseline", "diff", "ci_low",
                        "ci_high", "p", "p_holm", "n", "n_tasks"}


def test_paired_comparisons_checks_the_items():
    results, preds = _fake_grid()
    bad = dict(preds)
    key = next(r.key for r in results if r.spec.task == "b" and r.spec.selector == "mmd")
    pred, truth = bad[key]
    bad[key] = (pred, ["y", *truth[1:]])
    with pytest.raises(InputError, match="task 'b'"):
        paired_comparisons(results, bad, n_boot=50, n_perm=50)
    # fewer items on one side: compared on the common leading items, and said so
    short = dict(preds)
    key = next(r.key for r in results if r.spec.task == "a" and r.spec.selector == "mmd")
    short[key] = (preds[key][0][:8], preds[key][1][:8])
    cs = paired_comparisons(results, short, n_boot=50, n_perm=50)
    c = next(c for c in cs if (c.task, c.selector, c.baseline) == ("a", "mmd", "knn"))
    assert c.n == 8 and "first 8 items" in c.note
    assert c.diff == pytest.approx((7 - 3) / 8)
    # one task only: no mean row
    only_a = [r for r in results if r.spec.task == "a"]
    assert all(c.task != "mean" for c in paired_comparisons(only_a, preds, n_boot=50,
                                                            n_perm=50))


def test_load_predictions_last_record_wins_and_torn_lines_are_skipped(tmp_path):
    lines = [json.dumps({"key": "u1", "pred": ["a"], "truth": ["b"]}),
             json.dumps({"key": "u2", "pred": ["a", "b"], "truth": ["a", "b"]}),
             json.dumps({"key": "u1", "pred": ["b"], "truth": ["b"]}),
             '{"key": "u3", "pred": ["a"']
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    assert load_predictions(tmp_path) == {"u1": (["b"], ["b"]),
                                          "u2": (["a", "b"], ["a", "b"])}
    assert load_predictions(tmp_path / "missing") == {}


def test_report_leads_with_the_paired_section_and_writes_paired_json(tmp_path):
    results, preds = _fake_grid()
    # a second task pair where mmd is much better, so a verdict is reached
    truth = ["x", "y"] * 30
    extra = [_unit(t, s, wrong, seed, truth) for t in ("c", "d") for s, wrong, seed in
             [("knn", set(range(30)), 0), ("mmd", {0}, 0), ("random", set(range(40)), 0)]]
    results += [u for u, _ in extra]
    preds.update({u.key: p for u, p in extra})
    cs = paired_comparisons(results, preds, n_boot=300, n_perm=2000, seed=0)
    rep = write_comparison_report(results, tmp_path, paired=cs)
    md = rep.markdown.read_text()
    heads = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert heads[:3] == ["## Paired comparisons", "## Does an MMD-family selector beat kNN?",
                         "## Overview"]
    lead = md.split("## Paired comparisons")[0].splitlines()   # the title and its meta lines
    assert lead[0].startswith("# ") and all(not ln or ln.startswith("- **") for ln in lead[1:])
    assert "### m k=4: mean over tasks (Holm family of 15 comparisons)" in md
    assert "| selector | vs | diff (points) | 95% CI | p | Holm p | tasks | items | verdict |" in md
    assert "| mmd | knn | +" in md and "| better |" in md
    assert "#### m k=4: per task, diff vs knn" in md
    assert "#### m k=4: per task, diff vs random" in md
    assert "+48.3*" in md                        # task c: mmd 59/60 vs knn 30/60
    # the forest plot of the means, shown in the section and listed among the figures
    forest = tmp_path / "figures" / "paired_m_k4.png"
    assert "](figures/paired_m_k4.png)" in md and forest in rep.figures
    assert forest.stat().st_size > 1000
    html = rep.html.read_text()
    assert html.index("<h2>Paired comparisons</h2>") < html.index("<h2>Overview</h2>")
    assert rep.paired_json == tmp_path / "paired.json"
    recs = json.loads(rep.paired_json.read_text())
    assert len(recs) == len(cs)
    for r in recs:
        assert {"model", "k", "task", "selector", "baseline", "diff", "ci_low", "ci_high", "p",
                "p_holm", "n"} <= set(r)
    assert {r["task"] for r in recs} == {"a", "b", "c", "d", "mean"}
    assert PairedComparison(**recs[0]) == cs[0]
    # without paired comparisons the report is as before
    plain = write_comparison_report(results, tmp_path / "plain")
    assert "Paired comparisons" not in plain.markdown.read_text()
    assert plain.paired_json is None


def test_the_bar_section_judges_each_mmd_selector_by_both_conditions(tmp_path):
    truth = ["x", "y"] * 30
    spec = [  # (task, selector, wrong items): knn 30/60 right on every task
        *[(t, "knn", set(range(30))) for t in "abcd"],
        # mmd-good: far better than knn everywhere, never below random
        *[(t, "mmd-good", {0}) for t in "abcd"],
        # mmd-mixed: far better than knn on a-c, but 0/60 on d where random has 60/60
        *[(t, "mmd-mixed", {0}) for t in "abc"], ("d", "mmd-mixed", set(range(60))),
        # mmd-tie: as knn
        *[(t, "mmd-tie", set(range(30))) for t in "abcd"],
        *[(t, "random", set(range(30, 60)) if t != "d" else set()) for t in "abcd"],
    ]
    units = [_unit(t, sel, wrong, 0, truth) for t, sel, wrong in spec]
    results = [u for u, _ in units]
    preds = {u.key: p for u, p in units}
    cs = paired_comparisons(results, preds, n_boot=300, n_perm=2000, seed=0)
    rep = write_comparison_report(results, tmp_path, paired=cs)
    assert rep.meets_bar == {"m k=4": ("mmd-good",)}
    md = rep.markdown.read_text()
    section = md.split("## Does an MMD-family selector beat kNN?")[1].split("\n## ")[0]
    assert "- m k=4: mmd-good." in section
    row = {ln.split(" | ")[0].strip("| "): ln for ln in section.splitlines()
           if ln.startswith("| mmd")}
    assert row["mmd-good"].endswith("| none | yes |")
    assert row["mmd-mixed"].endswith("| d | no |")          # beats knn on the mean, fails d
    assert row["mmd-tie"].endswith("| d | no |")             # ties knn; random wins d
    by = {(c.task, c.selector, c.baseline): c for c in cs}
    assert by[("mean", "mmd-mixed", "knn")].p_holm < 0.05
    assert by[("mean", "mmd-mixed", "knn")].diff > 0
    # no MMD-family selector meets it: said so
    rest = [r for r in results if r.spec.selector != "mmd-good"]
    cs2 = paired_comparisons(rest, preds, n_boot=300, n_perm=2000, seed=0)
    rep2 = write_comparison_report(rest, tmp_path / "none", paired=cs2)
    assert rep2.meets_bar == {"m k=4": ()}
    assert "m k=4: no MMD-family selector meets the bar." in rep2.markdown.read_text()
    # a group not yet finished gets its table but no verdict (a regression: the bar section
    # gave verdicts on blocks of the selection grid that were still running)
    rep3 = write_comparison_report(results, tmp_path / "running", paired=cs,
                                   incomplete={"m k=4": (20, 24)})
    assert rep3.meets_bar == {}
    md3 = rep3.markdown.read_text()
    section3 = md3.split("## Does an MMD-family selector beat kNN?")[1].split("\n## ")[0]
    assert "- m k=4: incomplete (20 of 24 units finished), no verdict yet." in section3
    assert "### m k=4 (incomplete)" in section3
    assert "mmd-good." not in section3 and "| yes |" not in section3
    assert all(ln.endswith("| not yet |") for ln in section3.splitlines()
               if ln.startswith("| mmd"))


# ------------------------------------------------------------------------------ macro-F1


def _f1_by_loops(truth, pred):
    """Macro-F1 by counting, label by label, over the labels that are true or predicted."""
    f1s = []
    for lab in sorted(set(truth) | set(pred)):
        tp = sum(t == lab and p == lab for t, p in zip(truth, pred, strict=True))
        fp = sum(t != lab and p == lab for t, p in zip(truth, pred, strict=True))
        fn = sum(t == lab and p != lab for t, p in zip(truth, pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s)


def _f1_grid(rng, n=24, labels=("x", "y", "z")):
    """Two tasks; knn and mmd single runs, random with two seeds; predictions drawn at random."""
    units = []
    for task in ("a", "b"):
        truth = [str(v) for v in rng.choice(labels, n, p=[0.7, 0.2, 0.1])]
        for sel, seeds in (("knn", (0,)), ("mmd", (0,)), ("random", (0, 1))):
            for seed in seeds:
                pred = [t if rng.random() < 0.6 else str(rng.choice(labels)) for t in truth]
                spec = UnitSpec("m", task, sel, 4, seed)
                m = MetricResult(0.5, 0.4, 0.6, 0.95)
                res = UnitResult(spec, f"{task}-{sel}-{seed}", m, m, n, 0.1, 0.1, True, 0.01,
                                 1.0, 10, 100, {})
                units.append((res, (pred, truth)))
    return [u for u, _ in units], {u.key: p for u, p in units}


def _swap_p_by_loops(tasks, d, seed, n_perm):
    """The macro-F1 swap test one swap vector at a time. ``tasks``: per task the two sides'
    units ``[(pred, truth), ...]``, tiled to the least common multiple of their counts; each
    swapped item trades its predictions between virtual units ``j`` of the two sides. Every
    swap vector of the moving items when ``2^M <= n_perm``, else ``n_perm`` vectors from
    ``default_rng(seed)``, task after task."""
    tiled, moving = [], []
    for ua, ub in tasks:
        width = np.lcm(len(ua), len(ub))
        va, vb = [ua[j % len(ua)] for j in range(width)], [ub[j % len(ub)] for j in range(width)]
        tiled.append((va, vb))
        moving.append([i for i in range(len(ua[0][1]))
                       if any(a[0][i] != b[0][i] for a, b in zip(va, vb, strict=True))])

    def stat(swaps):                       # one bool vector per task
        out = []
        for (va, vb), s in zip(tiled, swaps, strict=True):
            fa, fb = [], []
            for (pa, t), (pb, _) in zip(va, vb, strict=True):
                trio = list(zip(pa, pb, s, strict=True))
                fa.append(_f1_by_loops(t, [y if w else x for x, y, w in trio]))
                fb.append(_f1_by_loops(t, [x if w else y for x, y, w in trio]))
            out.append(np.mean(fa) - np.mean(fb))
        return abs(np.mean(out))

    sizes = [len(va[0][1]) for va, _ in tiled]
    total = sum(len(m) for m in moving)
    if 2 ** total <= n_perm:
        hits = 0
        for bits in itertools.product((False, True), repeat=total):
            swaps, pos = [], 0
            for m, size in zip(moving, sizes, strict=True):
                s = np.zeros(size, dtype=bool)
                s[m] = bits[pos:pos + len(m)]
                pos += len(m)
                swaps.append(s)
            hits += stat(swaps) >= abs(d) - 1e-12
        return hits / 2 ** total
    g = np.random.default_rng(seed)
    draws = [g.integers(0, 2, size=(n_perm, size)).astype(bool) for size in sizes]
    hits = sum(stat([x[r] for x in draws]) >= abs(d) - 1e-12 for r in range(n_perm))
    return (1 + hits) / (1 + n_perm)


@given(st.integers(0, 2**31 - 1))
def test_paired_macro_f1_equals_a_brute_force_bootstrap(seed):
    """The interval is the paired bootstrap of the difference, ``p`` the swap test (each
    item's predictions change sides with probability 1/2), both rebuilt here item by item."""
    rng = np.random.default_rng(seed)
    results, preds = _f1_grid(rng)
    n_boot, n_perm = 60, 40
    cs = paired_comparisons(results, preds, baselines=("knn",), n_boot=n_boot, seed=3,
                            n_perm=n_perm, metric="macro_f1")
    by = {(c.task, c.selector): c for c in cs}
    units = {}
    for r in results:
        units.setdefault((r.spec.task, r.spec.selector), []).append(preds[r.key])

    def value(task, sel, idx):
        return np.mean([_f1_by_loops([t[i] for i in idx], [p[i] for i in idx])
                        for p, t in units[(task, sel)]])

    n = 24
    for sel in ("mmd", "random"):
        draws_by_task = {}
        for task in ("a", "b"):
            c = by[(task, sel)]
            assert c.metric == "macro_f1" and c.n == n
            whole = range(n)
            assert c.diff == pytest.approx(value(task, sel, whole) - value(task, "knn", whole),
                                           abs=1e-12)
            idx = np.random.default_rng(3).integers(0, n, size=(n_boot, n))
            draws = np.array([value(task, sel, r) - value(task, "knn", r) for r in idx])
            low, high = np.quantile(draws, [0.025, 0.975])
            assert (c.ci_low, c.ci_high) == pytest.approx((low, high), abs=1e-12)
            assert c.p == pytest.approx(_swap_p_by_loops(
                [(units[(task, sel)], units[(task, "knn")])], c.diff, 3, n_perm), abs=1e-12)
        # the mean over tasks: the two tasks resampled one after the other from one generator
        g = np.random.default_rng(3)
        for task in ("a", "b"):
            idx = g.integers(0, n, size=(n_boot, n))
            draws_by_task[task] = np.array([value(task, sel, r) - value(task, "knn", r)
                                            for r in idx])
        mean = by[("mean", sel)]
        draws = (draws_by_task["a"] + draws_by_task["b"]) / 2
        assert mean.diff == pytest.approx((by[("a", sel)].diff + by[("b", sel)].diff) / 2)
        assert (mean.ci_low, mean.ci_high) == pytest.approx(
            tuple(np.quantile(draws, [0.025, 0.975])), abs=1e-12)
        assert (mean.n, mean.n_tasks) == (2 * n, 2)
        assert mean.p == pytest.approx(_swap_p_by_loops(
            [(units[(t, sel)], units[(t, "knn")]) for t in ("a", "b")], mean.diff, 3, n_perm),
            abs=1e-12)


def test_paired_macro_f1_is_the_units_recorded_macro_f1_and_mirrors():
    from icldistill.evaluation.scoring import classification_metrics

    results, preds = _f1_grid(np.random.default_rng(7))
    cs = paired_comparisons(results, preds, n_boot=100, seed=0, metric="macro_f1")
    rec = {}
    for r in results:      # what the harness records per unit (labels = the task's names)
        pred, truth = preds[r.key]
        m = classification_metrics(truth, pred, labels=["x", "y", "z"], n_boot=10)
        rec.setdefault((r.spec.task, r.spec.selector), []).append(m.macro_f1.value)
    by = {(c.task, c.selector, c.baseline): c for c in cs}
    for task in ("a", "b"):
        c = by[(task, "mmd", "knn")]
        assert c.diff == pytest.approx(rec[(task, "mmd")][0] - rec[(task, "knn")][0], abs=1e-15)
        c = by[(task, "random", "knn")]
        assert c.diff == pytest.approx(np.mean(rec[(task, "random")]) - rec[(task, "knn")][0],
                                       abs=1e-15)
        x, y = by[(task, "knn", "random")], by[(task, "random", "knn")]
        assert x.diff == -y.diff and (x.p, x.p_holm) == (y.p, y.p_holm)
        assert (x.ci_low, x.ci_high) == (-y.ci_high, -y.ci_low)
    hyps = {(c.task, *sorted((c.selector, c.baseline))): c for c in cs}
    for c, a in zip(hyps.values(), holm([c.p for c in hyps.values()]), strict=True):
        assert c.p_holm == pytest.approx(a)
    # the accuracy comparisons are unchanged by the option, and say what they compare
    acc = paired_comparisons(results, preds, n_boot=100, n_perm=100, seed=0)
    assert {c.metric for c in acc} == {"accuracy"}
    with pytest.raises(InputError, match="unknown metric 'f2'"):
        paired_comparisons(results, preds, metric="f2")


def test_paired_macro_f1_identical_selectors_and_null_calibration():
    # a selector against a copy of itself: no difference, p = 1
    results, preds = _f1_grid(np.random.default_rng(1))
    twin = []
    for r in results:
        if r.spec.selector == "knn":
            twin.append(dataclasses.replace(r, spec=UnitSpec("m", r.spec.task, "copy", 4, 0),
                                            key=r.key + "-copy"))
            preds[r.key + "-copy"] = preds[r.key]
    cs = paired_comparisons(results + twin, preds, baselines=("knn",), n_boot=50,
                            metric="macro_f1")
    for c in cs:
        if c.selector == "copy":
            assert (c.diff, c.ci_low, c.ci_high, c.p) == (0.0, 0.0, 0.0, 1.0)
    # under exchangeable selectors the test rejects at about its level
    rng = np.random.default_rng(11)
    labels = np.array(["x", "y", "z"])
    rejected, trials = 0, 300
    for _ in range(trials):
        truth = rng.choice(labels, 80, p=[0.6, 0.3, 0.1])
        units = []
        for sel in ("knn", "mmd"):
            keep = rng.random(80) < 0.55
            pred = np.where(keep, truth, rng.choice(labels, 80))
            spec = UnitSpec("m", "t", sel, 4, 0)
            m = MetricResult(0.5, 0.4, 0.6, 0.95)
            units.append((UnitResult(spec, sel, m, m, 80, 0.1, 0.1, True, 0.01, 1.0, 10, 100,
                                     {}), (list(pred), list(truth))))
        # 199 swap vectors: the +1 randomisation p-value is valid at any number of them
        (c,) = paired_comparisons([u for u, _ in units], {u.key: p for u, p in units},
                                  baselines=("knn",), n_boot=200, n_perm=199,
                                  metric="macro_f1")
        rejected += c.p < 0.05
    assert 0.02 <= rejected / trials <= 0.09


def test_report_adds_the_macro_f1_section_and_the_majority_shares(tmp_path):
    results, preds = _f1_grid(np.random.default_rng(5))
    acc = paired_comparisons(results, preds, n_boot=100, n_perm=100)
    f1 = paired_comparisons(results, preds, n_boot=100, metric="macro_f1")
    rep = write_comparison_report(results, tmp_path, paired=acc, paired_macro_f1=f1,
                                  majority={"a": 0.8, "b": 0.5})
    md = rep.markdown.read_text()
    heads = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert heads[:4] == ["## Paired comparisons", "## Does an MMD-family selector beat kNN?",
                         "## Paired comparisons in macro-F1", "## Overview"]
    assert "### m k=4, macro-F1: mean over tasks" in md
    assert "#### m k=4, macro-F1: per task, diff vs knn" in md
    assert "a 0.800, b 0.500. On a (share ≥ 0.75) accuracy mostly counts the majority label; " \
           "read it in macro-F1." in md
    recs = json.loads(rep.paired_macro_f1_json.read_text())
    assert [PairedComparison(**r) for r in recs] == f1
    assert {r["metric"] for r in json.loads(rep.paired_json.read_text())} == {"accuracy"}
    with pytest.raises(ValueError, match="metric 'macro_f1'"):
        write_comparison_report(results, tmp_path / "x", paired_macro_f1=acc)


def test_majority_shares_use_each_tasks_longest_truth():
    from icldistill.core.stats import majority_shares

    results, preds = _fake_grid()
    assert majority_shares(results, preds) == {"a": 0.5, "b": 0.5}
    key = next(r.key for r in results if r.spec.task == "a")
    longer = dict(preds)
    longer[key] = (["x"] * 12, ["x"] * 11 + ["y"])         # 12 items: 11 of them "x"
    assert majority_shares(results, longer)["a"] == pytest.approx(11 / 12)
    assert majority_shares(results, {}) == {}
    assert majority_shares(results, {key: {"pred": ["y"], "truth": ["y"]}}) == {"a": 1.0}


def _brute_ranks(v: list[float]) -> list[float]:
    """Average ranks from their definition: items below, plus half the other ties."""
    return [sum(w < x for w in v) + (sum(w == x for w in v) - 1) / 2 for x in v]


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=3, max_size=25))
def test_spearman_is_pearson_of_average_ranks(pairs):
    x = [float(a) for a, _ in pairs]
    y = [float(b) for _, b in pairs]
    rx, ry = np.array(_brute_ranks(x)), np.array(_brute_ranks(y))
    got = spearman(x, y)
    if rx.std() == 0 or ry.std() == 0:
        assert np.isnan(got)
    else:
        want = float(((rx - rx.mean()) * (ry - ry.mean())).sum()
                     / np.sqrt(((rx - rx.mean()) ** 2).sum() * ((ry - ry.mean()) ** 2).sum()))
        assert got == pytest.approx(want, abs=1e-12)


def test_spearman_edge_cases():
    assert np.isnan(spearman([1.0, 2.0], [2.0, 1.0]))           # fewer than 3 points
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="1-D"):
        spearman([1, 2, 3], [1, 2])


def test_report_p_values_that_underflowed_read_as_a_bound(tmp_path):
    # every item of two big tasks one way: the exact p underflows to 0; tables say "<1e-307"
    truth = ["x", "y"] * 600
    units = [_unit(t, s, wrong, 0, truth) for t in ("a", "b") for s, wrong in
             [("knn", set(range(1200))), ("mmd", set())]]
    results = [u for u, _ in units]
    cs = paired_comparisons(results, {u.key: p for u, p in units}, baselines=("knn",),
                            n_boot=100, seed=0)
    assert min(c.p_holm for c in cs) == 0.0
    md = write_comparison_report(results, tmp_path, paired=cs).markdown.read_text()
    assert "<1e-307" in md and "0.0e+00" not in md



def test_check_pairs_refuses_self_pairs_mirrors_and_non_pairs():
    from icldistill.core.stats import check_pairs

    assert check_pairs([["a", "b"], ("c", "a")]) == [("a", "b"), ("c", "a")]
    for bad, msg in [([("a", "a")], "paired with itself"),
                     ([("a", "b"), ("b", "a")], "given twice"),
                     ([("a", "b"), ("a", "b")], "given twice"),
                     (["ab"], "label pairs"), ([("a", "b", "c")], "label pairs"),
                     ([("a", 1)], "label pairs"), ("ab", "sequence of")]:
        with pytest.raises(InputError, match=msg):
            check_pairs(bad)
