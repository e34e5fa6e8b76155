"""The order-sensitivity section on a tiny random model and a toy task: orders, the
most-similar-last baseline, W_0 geometry, paired statistics, the section end to end."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.decomposition import DualWeights
from icldistill.core.stats import mcnemar_exact
from icldistill.core.validation import InputError
from icldistill.encoders.representations import make_encoder
from icldistill.lab.experiments import phenomena as ph
from icldistill.lab.experiments._stats import pick_randomisation_test
from icldistill.lab.experiments.ordering import (
    QUICK,
    OrderingSizes,
    SetResult,
    hs_cosine,
    log_hs_inner,
    medoid_order,
    most_similar_last,
    orderings,
    paired_result,
    relative_w0_distance,
    run,
    trace_order,
)

from .lab_helpers import PNG, one_thread, tiny_group  # noqa: F401 - autouse fixture
from .test_harness import _write_task

SIZES = OrderingSizes(ks=(3,), n_orders=(6,), n_sets=1, n_test=6, n_trace=2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    task = _write_task(tmp_path_factory.mktemp("data") / "toy.jsonl")
    return ph.task_items(task.split, n_test=12, seed=0, name="toy")


@pytest.fixture(scope="module")
def group():
    return tiny_group()


@pytest.fixture(scope="module")
def encoder(group):
    loaded = group[0].loaded
    return make_encoder("hidden:-1", loaded.model, loaded.tokenizer)


@pytest.fixture(scope="module")
def section(tmp_path_factory, toy, group, encoder):
    out = tmp_path_factory.mktemp("ordering")
    return out, run(under_test=[group], tasks=[toy], out_dir=out, sizes=SIZES, encoder=encoder,
                    seed=3)


# ---------------------------------------------------------------------------- orders
def test_orderings_complete_for_k4():
    o = orderings(4, 24, np.random.default_rng(0))
    assert o.shape == (24, 4)
    assert {tuple(r) for r in o} == set(itertools.permutations(range(4)))
    # more allowed than exist: still all of them, once each
    assert np.array_equal(orderings(4, 1000, np.random.default_rng(1)), o)


def test_orderings_sampled_for_k8():
    o = orderings(8, 50, np.random.default_rng(0))
    assert o.shape == (50, 8)
    assert len({tuple(r) for r in o}) == 50
    assert all(sorted(r) == list(range(8)) for r in o.tolist())
    assert np.array_equal(o, orderings(8, 50, np.random.default_rng(0)))      # seeded
    big = orderings(10, 7, np.random.default_rng(0))                           # rejection path
    assert big.shape == (7, 10) and len({tuple(r) for r in big}) == 7


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 6), n=st.integers(1, 800), seed=st.integers(0, 2**16))
def test_orderings_property(k, n, seed):
    o = orderings(k, n, np.random.default_rng(seed))
    total = math.factorial(k)
    assert o.shape == (min(total, n), k)
    rows = {tuple(r) for r in o.tolist()}
    assert len(rows) == o.shape[0]                                             # distinct
    assert all(sorted(r) == list(range(k)) for r in rows)                      # permutations
    assert o.tolist() == sorted(o.tolist())                                    # lexicographic
    if total <= n:
        assert rows == set(itertools.permutations(range(k)))                   # complete


def test_most_similar_last_puts_most_similar_last():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(5, 7))
    q = rng.normal(size=(9, 7))
    order = most_similar_last(d, q)
    sim = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ \
        (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    assert order.shape == (9, 5)
    for i in range(9):
        assert sorted(order[i]) == list(range(5))
        assert order[i, -1] == np.argmax(sim[i])
        assert np.all(np.diff(sim[i, order[i]]) >= 0)
    # a query equal to a demonstration puts that demonstration last
    assert most_similar_last(d, d[[3]] * 2.0)[0, -1] == 3


# ---------------------------------------------------------------------------- W_0 geometry
def _dual(n, d, dv, seed, scale=0.5, log_mult=0.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return DualWeights(keys=torch.randn(n, d, generator=g, dtype=dtype),
                       coefficients=torch.randn(n, dv, generator=g, dtype=dtype),
                       log_multiplier=log_mult, scale=scale)


def _features(w, terms=40):
    """Explicit (truncated Taylor) features of exp(scale k q) for 1-d keys: the matrix of W."""
    n = torch.arange(terms, dtype=torch.float64)
    coef = torch.exp(0.5 * (n * math.log(w.scale) - torch.lgamma(n + 1)))
    phi = coef * w.keys.to(torch.float64) ** n                                 # [N, terms]
    return math.exp(w.log_multiplier) * w.coefficients.to(torch.float64).T @ phi


def test_hs_inner_matches_explicit_features():
    a = _dual(4, 1, 3, 0, scale=0.7, log_mult=-0.3)
    b = _dual(6, 1, 3, 1, scale=0.7, log_mult=0.4)
    ma, mb = _features(a), _features(b)
    sign, log_abs = log_hs_inner(a, b)
    exact = float((ma * mb).sum())
    assert sign == math.copysign(1.0, exact)
    assert math.exp(log_abs) == pytest.approx(abs(exact), rel=1e-10)
    na, nb = float(torch.linalg.norm(ma)), float(torch.linalg.norm(mb))
    rel = float(torch.linalg.norm(ma - mb)) / (0.5 * (na + nb))
    assert relative_w0_distance(a, b) == pytest.approx(rel, rel=1e-9)
    assert relative_w0_distance(b, a) == pytest.approx(rel, rel=1e-9)          # symmetric
    assert hs_cosine(a, b) == pytest.approx(exact / (na * nb), rel=1e-9)


def test_hs_inner_agrees_with_hs_norm_and_distance():
    a = _dual(7, 5, 4, 2, scale=0.3, log_mult=2.0)
    b = _dual(9, 5, 4, 3, scale=0.3, log_mult=1.5)
    sign, log_aa = log_hs_inner(a, a)
    assert sign == 1.0
    assert 0.5 * log_aa == pytest.approx(a.log_hs_norm(), rel=1e-12)
    assert relative_w0_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert hs_cosine(a, a) == pytest.approx(1.0, abs=1e-12)
    mean_norm = 0.5 * (a.hs_norm() + b.hs_norm())
    assert relative_w0_distance(a, b) == pytest.approx(a.distance(b) / mean_norm, rel=1e-9)
    # scale alone: B = 3 A is at distance 2 / ((1 + 3) / 2) = 1 with cosine 1
    c = DualWeights(a.keys, a.coefficients, a.log_multiplier + math.log(3.0), a.scale)
    assert relative_w0_distance(a, c) == pytest.approx(1.0, rel=1e-9)
    assert hs_cosine(a, c) == pytest.approx(1.0, rel=1e-12)
    neg = DualWeights(a.keys, -a.coefficients, a.log_multiplier, a.scale)
    assert relative_w0_distance(a, neg) == pytest.approx(2.0, rel=1e-9)
    assert hs_cosine(a, neg) == pytest.approx(-1.0, rel=1e-12)
    # finite where the norms overflow float64
    big = DualWeights(a.keys * 40, a.coefficients, 0.0, a.scale)
    big2 = DualWeights(a.keys * 40, a.coefficients * 1.01, 0.0, a.scale)
    assert big.hs_norm() == math.inf
    assert relative_w0_distance(big, big2) == pytest.approx(0.01 / 1.005, rel=1e-6)


def test_trace_order_matches_label_position(toy, group):
    m = group[0].loaded
    demos = toy.demos([0, 1, 2])
    prompt = toy.format.prompt(demos, toy.test_texts[0])
    ref = trace_order(m, prompt)
    lp = ph.label_position(m, prompt)
    np.testing.assert_allclose(ref.eta, lp.eta, rtol=1e-6)
    np.testing.assert_allclose(ref.demo_share, lp.demo_share, rtol=1e-6)
    np.testing.assert_allclose(ref.log_w0_norm, lp.log_w0_norm, rtol=1e-9, atol=1e-9)
    assert np.all(np.isnan(ref.rel_distance))                     # no reference given
    same = trace_order(m, prompt, ref)
    np.testing.assert_allclose(same.rel_distance, 0.0, atol=1e-6)
    np.testing.assert_allclose(same.cosine, 1.0, atol=1e-9)
    other = trace_order(m, toy.format.prompt(demos[::-1], toy.test_texts[0]), ref)
    assert np.all(other.rel_distance > 1e-3)                      # positions moved the keys
    assert other.n_demo_tokens == ref.n_demo_tokens
    # per head, the grouped computation equals relative_w0_distance of the heads' W_0
    from icldistill.models.tracing import trace

    ra = trace(m.model, m.tokenizer, prompt, positions="last", keep_w0=True)
    rb = trace(m.model, m.tokenizer, toy.format.prompt(demos[::-1], toy.test_texts[0]),
               positions="last", keep_w0=True)
    H = ra.num_heads
    per_head = [relative_w0_distance(ra.w0(1, h), rb.w0(1, h)) for h in range(H)]
    assert other.rel_distance[1] == pytest.approx(np.mean(per_head), rel=1e-6)
    cos_head = [hs_cosine(ra.w0(1, h), rb.w0(1, h)) for h in range(H)]
    assert other.cosine[1] == pytest.approx(np.mean(cos_head), rel=1e-6)


def test_medoid_order():
    rng = np.random.default_rng(0)
    lw = rng.normal(size=(5, 2, 3))
    le = rng.normal(size=(5, 2, 3))
    lw[2] = lw[[0, 1, 3, 4]].mean(0)
    le[2] = le[[0, 1, 3, 4]].mean(0)
    assert medoid_order(lw, le) == 2
    lw[:, :, 1] = np.nan                     # a layer without kernel-form heads is left out
    assert medoid_order(lw, le) == 2


def test_paired_statistics_consistent():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 40).astype(float)
    b = rng.integers(0, 2, 40).astype(float)
    r = paired_result("x", a, b)
    assert r.diff == pytest.approx(np.mean(a - b))
    assert r.low <= r.diff <= r.high
    assert r.p == mcnemar_exact(int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1))))
    frac = rng.random(40)
    f = paired_result("y", a, frac)
    assert f.diff == pytest.approx(np.mean(a - frac))
    assert 0 < f.p <= 1
    json.dumps(r.to_dict(), allow_nan=True)


# ---------------------------------------------------------------------------- the section
def test_section_builds(section):
    out, sec = section
    assert sec.name == "ordering"
    assert len(sec.tables) == 4 and all(t.rows for t in sec.tables)
    assert len(sec.figures) == 3
    for f in sec.figures:
        assert (out / f).read_bytes()[:8] == PNG
    assert sec.checks and sec.findings
    assert all(isinstance(c.holds, bool) for c in sec.checks)
    assert len(sec.checks) == 5
    json.dumps(sec.data, allow_nan=False)
    assert sec.seconds > 0
    g = sec.data["groups"][0]
    assert g["roles"] == ["trained", "control"]
    assert len(g["comparisons"]) == 5
    res = g["results"][0][0]
    assert len(res["orders"]) == 6                     # all 3! orders
    assert len(res["held"]) == SIZES.n_test - SIZES.n_trace
    # the paired table's differences are the means of the per-item differences
    for per_model in g["paired"]:
        for p in per_model:
            assert p["diff"] == pytest.approx(np.mean(p["diffs"]))
            assert p["p"] <= p["p_holm"] <= 1
            # the design's floors bound what the data can give
            assert 0 <= p["floor"] <= p["p"] and p["floor_holm"] <= p["p_holm"]
    # every check is paired against the twin, so its testability is assessed
    assert all(c.testable is not None for c in sec.checks)
    assert all(not c.holds for c in sec.checks if c.testable is False)
    # only held-back items are scored; the rule's correctness is its order's on them
    corr = np.asarray(res["correct"])
    assert corr.shape == (6, len(res["held"]))
    np.testing.assert_allclose(res["accuracy"], corr.mean(1))
    # one unit per demonstration set: the set's held-back accuracy of the picked order minus
    # the baseline's
    rs = g["results"][0]
    sets = [np.asarray(r["correct"], dtype=float) for r in rs]
    medoid_vs_random = g["paired"][0][0]
    assert medoid_vs_random["name"] == "medoid order vs random order"
    np.testing.assert_allclose(medoid_vs_random["diffs"],
                               [c[r["medoid"]].mean() - c.mean()
                                for c, r in zip(sets, rs, strict=True)])
    # its p: every pick vector enumerated (the rule's pick against a uniform one per set)
    counts = [c.sum(1) for c in sets]
    expected = sum(c.mean() for c in counts)
    observed = sum(c[r["medoid"]] for c, r in zip(counts, rs, strict=True))
    totals = [sum(v) for v in itertools.product(*counts)]
    assert medoid_vs_random["p"] == pytest.approx(
        np.mean([abs(t - expected) >= abs(observed - expected) - 1e-9 for t in totals]))
    medoid_vs_msl = g["paired"][0][1]
    np.testing.assert_allclose(medoid_vs_msl["diffs"],
                               [c[r["medoid"]].mean() - np.mean(r["msl_correct"])
                                for c, r in zip(sets, rs, strict=True)])
    plan = sec.data["plans"][0]
    assert not set(plan["trace_items"]) & set(plan["held"])   # calibration never scored
    # controls see the same prompts: same orders, same held-back items
    ctl = g["results"][1][0]
    assert ctl["orders"] == res["orders"] and ctl["held"] == res["held"]


def test_section_deterministic(tmp_path, section, toy, group, encoder):
    _, sec = section
    again = run(under_test=[group], tasks=[toy], out_dir=tmp_path, sizes=SIZES, encoder=encoder,
                seed=3)
    assert json.dumps(again.data, sort_keys=True) == json.dumps(sec.data, sort_keys=True)
    assert again.findings == sec.findings


def test_quick_sizes_run(tmp_path, toy, group, encoder):
    sec = run(under_test=[group], tasks=[toy], out_dir=tmp_path, quick=True, encoder=encoder)
    res = sec.data["groups"][0]["results"][0][0]
    assert len(res["orders"]) == QUICK.n_orders[0] and len(res["orders"][0]) == QUICK.ks[0]
    assert len({tuple(o) for o in res["orders"]}) == QUICK.n_orders[0]


def test_bad_input(tmp_path, toy, group, encoder):
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="k must"):
        orderings(0, 3, rng)
    with pytest.raises(InputError, match="n must"):
        orderings(3, 0, rng)
    with pytest.raises(InputError, match="rng"):
        orderings(3, 2, 0)
    with pytest.raises(InputError, match="demo_embeddings"):
        most_similar_last(np.ones((3, 4)), np.ones((2, 5)))
    with pytest.raises(InputError, match="n_trace"):
        OrderingSizes(n_test=3, n_trace=3)
    with pytest.raises(InputError, match="ks"):
        OrderingSizes(ks=(4, 8), n_orders=(24,))
    with pytest.raises(InputError, match="n_sets"):
        OrderingSizes(n_sets=0)
    with pytest.raises(InputError, match="a and b"):
        paired_result("x", [1, 0], [1])
    with pytest.raises(InputError, match="log_w0"):
        medoid_order(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="scales"):
        log_hs_inner(_dual(2, 3, 2, 0, scale=0.1), _dual(2, 3, 2, 0, scale=0.2))
    with pytest.raises(InputError, match="sizes"):
        run(under_test=[group], tasks=[toy], out_dir=tmp_path, sizes=(4,), encoder=encoder)
    with pytest.raises(InputError, match="encoder"):
        run(under_test=[group], tasks=[toy], out_dir=tmp_path, sizes=SIZES, encoder=3)
    with pytest.raises(InputError, match="control"):
        run(under_test=[[group[0]]], tasks=[toy], out_dir=tmp_path, sizes=SIZES,
            encoder=encoder)
    with pytest.raises(InputError, match="n_trace"):
        run(under_test=[group], tasks=[toy], out_dir=tmp_path, encoder=encoder,
            sizes=OrderingSizes(ks=(2,), n_orders=(2,), n_test=20, n_trace=19))
    with pytest.raises(InputError, match="demonstration"):
        trace_order(group[0].loaded, toy.format.prompt([], toy.test_texts[0]))


def test_resume_keeps_encoder_objects_of_one_class_apart(tmp_path, toy, group, encoder):
    """Regression: the resume settings named an Encoder object by its class only, so a run with
    hidden:0 resumed a hidden:-1 run's most-similar-last results (whose order differs)."""
    loaded = group[0].loaded
    other = make_encoder("hidden:0", loaded.model, loaded.tokenizer)
    sizes = OrderingSizes(ks=(3,), n_orders=(4,), n_sets=2, n_test=8, n_trace=2)
    parts = tmp_path / "parts"

    def go(enc, out, resume):
        run(under_test=[group], tasks=[toy], out_dir=tmp_path / out, sizes=sizes,
            encoder=enc, seed=3, resume_dir=resume)
        return sorted(p.name for p in parts.rglob("*") if p.is_file())

    first = go(encoder, "a", parts)
    assert first
    assert go(encoder, "b", parts) == first                  # the same encoder: all reused
    again = go(other, "c", parts)                             # another one: computed anew
    assert set(first) < set(again)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=4), min_size=1, max_size=4),
       st.data())
def test_pick_randomisation_test_by_enumeration(counts, data):
    """The exact test's p is the share of all pick vectors (one option per unit) whose total is
    at least as far from its mean as the picked total."""
    picked = [data.draw(st.integers(0, len(c) - 1)) for c in counts]
    p = pick_randomisation_test([np.asarray(c) for c in counts], picked)
    expected = sum(np.mean(c) for c in counts)
    observed = sum(c[o] for c, o in zip(counts, picked, strict=True))
    totals = [sum(v) for v in itertools.product(*counts)]
    want = np.mean([abs(t - expected) >= abs(observed - expected) - 1e-9 for t in totals])
    assert p == pytest.approx(want)
    assert p >= 1 / math.prod(len(c) for c in counts) - 1e-12


def test_pick_randomisation_test_bad_input():
    with pytest.raises(InputError, match="equal length"):
        pick_randomisation_test([np.array([1, 2])], [0, 1])
    with pytest.raises(InputError, match="non-negative integers"):
        pick_randomisation_test([np.array([1.5, 2.0])], [0])
    with pytest.raises(InputError, match="out of range"):
        pick_randomisation_test([np.array([1, 2])], [2])


def _set_result(correct, msl, medoid):
    """A SetResult with the given held-back correctness ``[O, h]`` (other fields minimal)."""
    n_orders, h = correct.shape
    z = np.zeros((n_orders, 1, 1))
    return SetResult(task="t", k=3, set_index=0, orders=np.zeros((n_orders, 3), dtype=int),
                     predictions=np.where(correct > 0, "a", "b"), correct=correct, eta=z + 1,
                     log_w0_norm=z, demo_share=z, rel_distance=z, cosine=z + 1,
                     held=np.arange(h), msl_correct=msl, medoid=medoid, max_share=medoid,
                     n_demo_tokens=np.full(n_orders, 10))


def test_rule_comparisons_take_one_unit_per_set():
    """Regression: the rule comparisons were tested over the pooled held-back items (360 in
    the full run), as if the items of one set, all read with the order the rule picked for
    that set, were independent draws; the same test called 39% of random picks significant.
    The unit is now the set: 6 sets give a sign-flip p no smaller than 2/64, and the pick
    randomisation test's p no smaller than 1 over the number of pick vectors."""
    from icldistill.lab.experiments.ordering import _comparisons

    rng = np.random.default_rng(0)
    results = []
    for _ in range(6):
        correct = (rng.random((6, 60)) < 0.5).astype(float)
        correct[0] = 1.0                       # order 0 is right on every item
        results.append(_set_result(correct, np.zeros(60), medoid=0))
    m = ph.ModelUnderTest(role="trained", name="m", loaded=None, seed=0)
    out = {p.name: p for p in _comparisons(results, m, seed=0)}
    vs_msl = out["medoid order vs most similar last"]
    assert vs_msl.diffs.shape == (6,)
    np.testing.assert_allclose(vs_msl.diffs, 1.0)
    assert vs_msl.p == pytest.approx(2 / 64)   # the floor at 6 sets (items: ~1e-108)
    vs_random = out["medoid order vs random order"]
    assert vs_random.diffs.shape == (6,)
    # the best order in every set: only the pick vectors that are as extreme count
    assert vs_random.p >= 1 / 6 ** 6
    assert vs_random.p < 0.01
    # the smallest p each test allows on these units, whatever the data
    assert vs_msl.floor == pytest.approx(2 / 64) and vs_random.floor == pytest.approx(6.0 ** -6)


def test_more_sets_per_task(tmp_path, toy, group, encoder):
    """Two sets per task and k: two units per task in every comparison."""
    import dataclasses

    sizes = dataclasses.replace(SIZES, n_sets=2)
    sec = run(under_test=[group], tasks=[toy], out_dir=tmp_path, sizes=sizes, encoder=encoder,
              seed=0)
    g = sec.data["groups"][0]
    assert len(g["results"][0]) == 2
    assert all(p["n"] == 2 for p in g["paired"][0])
    assert all(c["paired"][0]["n"] == 2 for c in g["comparisons"])
