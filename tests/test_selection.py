"""SPEC §5: MMD-greedy selection on representation matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import icldistill as ic

from .conftest import matrices


def _mmd2(c, t, h):
    return ic.mmd(c, t, estimator="biased", bandwidth=h)


def _brute_greedy(cands, targets, k, h):
    chosen: list[int] = []
    for _ in range(k):
        best, best_val = None, np.inf
        for i in range(len(cands)):
            if i in chosen:
                continue
            val = _mmd2(cands[[*chosen, i]], targets, h)
            if val < best_val - 1e-12:
                best, best_val = i, val
        chosen.append(best)
    return chosen


@given(matrices(st.integers(3, 10), 2), matrices(st.integers(1, 6), 2), st.data())
def test_greedy_equals_brute_force_greedy_and_trajectory_is_the_mmd(cands, targets, data):
    # break exact ties between duplicated rows, which make "the" greedy choice ambiguous
    cands = cands + np.arange(len(cands))[:, None] * 1e-3
    k = data.draw(st.integers(1, len(cands)))
    res = ic.greedy_mmd(cands, targets, k, bandwidth=1.0)
    assert res.indices.tolist() == _brute_greedy(cands, targets, k, 1.0)
    for j in range(k):
        assert res.mmd2[j] == pytest.approx(_mmd2(cands[res.indices[: j + 1]], targets, 1.0),
                                            rel=1e-9, abs=1e-12)
    assert len(set(res.indices.tolist())) == k


def test_greedy_beats_random_subsets_and_objective_decreases_early():
    rng = np.random.default_rng(0)
    pool = np.concatenate([rng.normal(size=(300, 5)), rng.normal(size=(300, 5)) + 3])
    targets = rng.normal(size=(100, 5)) + 3
    res = ic.greedy_mmd(pool, targets, 16)
    h = res.kernel.bandwidth
    rand = [_mmd2(pool[rng.choice(600, 16, replace=False)], targets, h) for _ in range(20)]
    assert res.mmd2[-1] < min(rand)
    assert res.mmd2[3] < res.mmd2[0]
    assert np.all(res.indices >= 300)  # it only picks from the target's component


def test_label_balance_and_quotas():
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(90, 3))
    labels = np.array(["neg"] * 60 + ["pos"] * 25 + ["neutral"] * 5)
    res = ic.greedy_mmd(pool, rng.normal(size=(10, 3)), 16, labels=labels, balance=True)
    picked = labels[res.indices]
    assert res.quotas == {"neg": 6, "neutral": 5, "pos": 5}
    for lab, q in res.quotas.items():
        assert (picked == lab).sum() == q
    assert ic.selection.label_quotas(np.array([0, 0, 1, 1, 1]), 5) == {0: 2, 1: 3}


def test_selection_is_deterministic_and_select_mmd_returns_indices():
    rng = np.random.default_rng(2)
    pool, targets = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(50, 8))
    a = ic.select_mmd(pool, targets, 8)
    b = ic.select_mmd(torch.from_numpy(pool), targets, 8)
    # the same result type as greedy_mmd, which also behaves as the index array
    assert isinstance(a, ic.GreedySelection)
    assert a.indices.dtype == np.int64 and a.dtype == np.int64 and a.shape == (8,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a.indices, ic.greedy_mmd(pool, targets, 8).indices)
    assert np.asarray(a).tolist() == a.tolist() == list(map(int, a)) == a.indices.tolist()
    assert len(a) == 8 and a[0] == a.indices[0] and bool((a == b).all())
    np.testing.assert_array_equal(pool[a], pool[a.indices])
    assert torch.equal(torch.from_numpy(pool)[a], torch.from_numpy(pool)[a.indices])
    c = ic.select_mmd(pool, targets, 8, kernel="laplace")
    assert c.shape == (8,)


def test_selection_with_attention_kernel():
    rng = np.random.default_rng(3)
    tokens = ic.stack_kv(rng.normal(size=(40, 4)) * 0.5, rng.normal(size=(40, 2)))
    targets = ic.stack_kv(rng.normal(size=(10, 4)) * 0.5, rng.normal(size=(10, 2)))
    res = ic.greedy_mmd(tokens, targets, 5, kernel="attention", key_dim=4)
    assert res.mmd2[-1] == pytest.approx(
        ic.mmd(tokens[res.indices], targets, "attention", "biased", key_dim=4), rel=1e-9)


@pytest.mark.parametrize("cands,k,kwargs,match", [
    (np.zeros((0, 2)), 1, {}, "empty"),
    (np.ones((3, 2)), 4, {}, "larger than the candidate pool"),
    (np.ones((3, 2)), 0, {}, "positive integer"),
    (np.ones((3, 3)), 1, {}, "dimension mismatch"),
    (np.ones((3, 2)), 2, {"balance": True}, "needs candidate labels"),
    (np.ones((3, 2)), 2, {"labels": [0, 1]}, "labels must have shape"),
    (np.ones((3, 2)), 2, {"kernel": "cosine"}, "unknown kernel"),
])
def test_selection_bad_input(cands, k, kwargs, match):
    with pytest.raises(ic.InputError, match=match):
        ic.select_mmd(cands, np.ones((4, 2)), k, **kwargs)


# ============================================================================ diversity term
def _penalised(c, t, h, lam):
    k = len(c)
    g = np.exp(-((c[:, None] - c[None]) ** 2).sum(-1) / (2 * h * h))
    return _mmd2(c, t, h) + lam * (g.sum() - np.trace(g)) / k**2


@given(matrices(st.integers(3, 8), 2), matrices(st.integers(1, 5), 2), st.data())
def test_diversity_term_equals_brute_force_greedy_on_the_penalised_objective(cands, targets,
                                                                            data):
    cands = cands + np.arange(len(cands))[:, None] * 1e-3
    k = data.draw(st.integers(1, len(cands)))
    lam = data.draw(st.sampled_from([0.5, 2.0]))
    res = ic.greedy_mmd(cands, targets, k, bandwidth=1.0, diversity=lam)
    chosen: list[int] = []
    for _ in range(k):
        vals = {i: _penalised(cands[[*chosen, i]], targets, 1.0, lam)
                for i in range(len(cands)) if i not in chosen}
        best = min(vals.values())
        chosen.append(min(i for i, v in vals.items() if v <= best + 1e-12))
    assert res.indices.tolist() == chosen
    # the trajectory is still the plain MMD^2
    for j in range(k):
        assert res.mmd2[j] == pytest.approx(_mmd2(cands[res.indices[: j + 1]], targets, 1.0),
                                            rel=1e-9, abs=1e-12)


def test_diversity_spreads_the_chosen_set_and_zero_is_the_plain_objective():
    rng = np.random.default_rng(4)
    pool = rng.normal(size=(200, 3))
    targets = rng.normal(size=(40, 3))
    plain = ic.greedy_mmd(pool, targets, 10, bandwidth=1.0)
    zero = ic.greedy_mmd(pool, targets, 10, bandwidth=1.0, diversity=0.0)
    spread = ic.greedy_mmd(pool, targets, 10, bandwidth=1.0, diversity=5.0)
    np.testing.assert_array_equal(plain.indices, zero.indices)

    def within(idx):
        g = np.exp(-((pool[idx][:, None] - pool[idx][None]) ** 2).sum(-1) / 2)
        return (g.sum() - np.trace(g)) / (len(idx) * (len(idx) - 1))

    assert within(spread.indices) < within(plain.indices)
    assert spread.mmd2[-1] >= plain.mmd2[-1] - 1e-12 or spread.mmd2[-1] > 0
    np.testing.assert_allclose(plain.row_means,
                               [np.exp(-((pool[i] - targets) ** 2).sum(-1) / 2).mean()
                                for i in plain.indices], rtol=1e-12)
    with pytest.raises(ic.InputError, match="diversity"):
        ic.greedy_mmd(pool, targets, 3, diversity=-1.0)


# ============================================================================ selector interface
from icldistill.selection import SELECTORS, Pool, Selection, make_selector  # noqa: E402


def _clustered(n_per=12, n_clusters=4, dim=6, seed=0, n_targets=7):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 3
    lab = np.repeat(np.arange(n_clusters), n_per)
    emb = centres[lab] + rng.normal(size=(len(lab), dim))
    words = [f"topic{c} word{w}" for c, w in zip(lab, rng.integers(0, 9, len(lab)), strict=True)]
    texts = [f"{w} common filler{i % 5}" for i, w in enumerate(words)]
    names = np.array(["neg", "pos", "neutral", "other"])[lab % 4]
    tl = rng.integers(0, n_clusters, n_targets)
    temb = centres[tl] + rng.normal(size=(n_targets, dim))
    ttexts = [f"topic{c} word{w}" for c, w in zip(tl, rng.integers(0, 9, n_targets), strict=True)]
    return Pool(emb, names, texts), Pool(temb, None, ttexts)


@pytest.mark.parametrize("name", list(SELECTORS))
def test_every_selector_returns_valid_demonstration_sets(name):
    pool, targets = _clustered()
    sel = make_selector(name)
    assert sel.fit(pool) is sel and sel.n_pool == 48
    out = sel.select(targets, 5)
    assert isinstance(out, Selection) and out.selector == name and len(out) == 7
    assert out.indices.shape == (7, 5) and out.indices.dtype == np.int64
    assert out.indices.min() >= 0 and out.indices.max() < 48
    for row in out.indices:
        assert len(set(row.tolist())) == 5
    assert out.shared == SELECTORS[name].shared
    if out.shared:
        assert (out.indices == out.indices[0]).all()
    np.testing.assert_array_equal(out.demo_set(3), out.indices[3])
    assert out.seconds >= 0 and out.k == 5
    # determinism: a fresh selector with the same seed gives the same result
    again = make_selector(name).fit(pool).select(targets, 5)
    np.testing.assert_array_equal(out.indices, again.indices)
    # every prompt order is a permutation of the same sets
    for order in ("selection", "reverse", "random", "similarity"):
        other = make_selector(name, order=order).fit(pool).select(targets, 5)
        np.testing.assert_array_equal(np.sort(other.indices, 1), np.sort(out.indices, 1))
    assert "order" in sel.get_params() and "seed" in sel.get_params()


def test_k_equal_to_pool_and_tiny_pools():
    pool, targets = _clustered(n_per=2, n_clusters=2)
    for name in SELECTORS:
        out = make_selector(name).fit(pool).select(targets, 4)
        assert sorted(out.indices[0].tolist()) == [0, 1, 2, 3], name
        one = make_selector(name).fit(Pool(pool.embeddings[:1], pool.labels[:1],
                                           pool.texts[:1])).select(targets, 1)
        assert (one.indices == 0).all(), name


def test_random_selector_seed_and_balance():
    pool, targets = _clustered()
    a = make_selector("random", seed=1).fit(pool).select(targets, 6)
    b = make_selector("random", seed=1).fit(pool).select(targets, 6)
    c = make_selector("random", seed=2).fit(pool).select(targets, 6)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    texts_only = make_selector("random").fit(pool.texts).select(["q1", "q2"], 3)
    assert texts_only.indices.shape == (2, 3)
    labels = np.array(["a"] * 40 + ["b"] * 5 + ["c"] * 3)
    bal = make_selector("random", balance=True).fit(Pool(labels=labels)).select(
        Pool(labels=np.zeros(4)), 9)
    picked = labels[bal.demo_set()]
    assert [(picked == v).sum() for v in "abc"] == [3, 3, 3]
    with pytest.raises(ic.InputError, match="needs pool labels"):
        make_selector("random", balance=True).fit(pool.embeddings)
    with pytest.raises(ic.InputError, match="similarity"):
        make_selector("random", order="similarity").fit(pool.texts).select(["q"], 2)


def test_mmd_balanced_meets_label_quotas():
    pool, targets = _clustered(seed=3)
    out = make_selector("mmd-balanced").fit(pool).select(targets, 7)
    picked = pool.labels[out.demo_set()]
    quotas = ic.selection.label_quotas(pool.labels, 7)
    assert {v: int((picked == v).sum()) for v in quotas} == quotas
    with pytest.raises(ic.InputError, match="needs pool labels"):
        make_selector("mmd-balanced").fit(pool.embeddings)


@given(matrices(st.integers(2, 30), 4), matrices(st.integers(1, 6), 4), st.data())
def test_knn_equals_brute_force_cosine_ranking(pool, targets, data):
    pool = pool + np.sin(np.arange(pool.size).reshape(pool.shape)) * 1e-3  # no zero rows
    targets = targets + np.cos(np.arange(targets.size).reshape(targets.shape)) * 1e-3
    cos = (targets / np.linalg.norm(targets, axis=1, keepdims=True)) @ \
        (pool / np.linalg.norm(pool, axis=1, keepdims=True)).T
    assume(np.diff(np.sort(cos, axis=1), axis=1).min(initial=1.0) > 1e-9)  # no ties
    k = data.draw(st.integers(1, len(pool)))
    out = make_selector("knn", order="selection").fit(pool).select(targets, k)
    for i in range(len(targets)):
        expect = np.argsort(-cos[i], kind="stable")[:k]
        np.testing.assert_allclose(cos[i, out.indices[i]], cos[i, expect], rtol=0, atol=1e-12)
    # default order: most similar last, next to the query
    sim = make_selector("knn").fit(pool).select(targets, k)
    np.testing.assert_array_equal(sim.indices, out.indices[:, ::-1])
    rev = make_selector("knn", order="reverse").fit(pool).select(targets, k)
    np.testing.assert_array_equal(rev.indices, sim.indices)


def test_bm25_matches_hand_computed_scores():
    docs = ["the cat sat", "the dog sat down", "a cat and a dog", "birds fly"]
    sel = make_selector("bm25").fit(docs)
    n, avgdl, k1, b = 4, (3 + 4 + 5 + 2) / 4, 1.5, 0.75

    def term(tf, df, dl, idf):
        w = {"lucene": np.log(1 + (n - df + 0.5) / (df + 0.5)),
             "okapi": np.log((n - df + 0.5) / (df + 0.5))}[idf]
        return w * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    # query "cat dog dog": cat in docs 0, 2 (df 2); dog in docs 1, 2 (df 2), counted twice
    expect = [term(1, 2, 3, "lucene"), 2 * term(1, 2, 4, "lucene"),
              term(1, 2, 5, "lucene") + 2 * term(1, 2, 5, "lucene"), 0.0]
    np.testing.assert_allclose(sel.score(["cat dog dog"])[0], expect, rtol=1e-12)
    out = make_selector("bm25", order="selection").fit(docs).select(["Cat, DOG dog!"], 3)
    assert out.indices[0].tolist() == [2, 1, 0]
    # okapi idf (rank_bm25's BM25Okapi): idf(2 of 4) = log(1) = 0, negative idfs floored at
    # 0.25 * mean idf; "a" occurs in 1 doc: log(3.5/1.5)
    okapi = make_selector("bm25", idf="okapi").fit(docs)
    idf_a = np.log(3.5 / 1.5)
    assert okapi.score(["cat"])[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    a_tf2 = idf_a * 2 * (k1 + 1) / (2 + k1 * (1 - b + b * 5 / avgdl))
    np.testing.assert_allclose(okapi.score(["a"])[0], [0, 0, a_tf2, 0], rtol=1e-12)
    # ties (no overlap) go to the lowest index
    assert make_selector("bm25", order="selection").fit(docs).select(
        ["zebra"], 2).indices[0].tolist() == [0, 1]
    with pytest.raises(ic.InputError, match="needs pool texts"):
        make_selector("bm25").fit(np.ones((3, 2)))
    with pytest.raises(ic.InputError, match="needs targets texts"):
        make_selector("bm25").fit(docs).select(np.ones((2, 2)), 1)


def test_bm25_sparse_and_postings_paths_agree():
    rng = np.random.default_rng(5)
    vocab = [f"w{i}" for i in range(30)]
    docs = [" ".join(rng.choice(vocab, 8, p=np.r_[[0.5], np.full(29, 0.5 / 29)]))
            for _ in range(200)]
    queries = [" ".join(rng.choice(vocab, 3)) for _ in range(20)] + ["w1", "w0 w0"]
    sel = make_selector("bm25").fit(docs)
    dense = sel.score(queries)
    # rebuild the scores term by term from the hand formula
    toks = [d.split() for d in docs]
    n, avgdl = len(docs), np.mean([len(t) for t in toks])
    expect = np.zeros_like(dense)
    for qi, q in enumerate(queries):
        for w in q.split():
            df = sum(w in t for t in toks)
            if df == 0:
                continue
            idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
            for di, t in enumerate(toks):
                tf = t.count(w)
                expect[qi, di] += idf * tf * 2.5 / (tf + 1.5 * (0.25 + 0.75 * len(t) / avgdl))
    np.testing.assert_allclose(dense, expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sel.score(queries[-2:]), expect[-2:], rtol=1e-10, atol=1e-12)


def _openicl_dpp(emb, query, cand_num, k, scale=0.1):
    """A plain numpy port of OpenICL 0.1.8's DPPRetriever.get_kernel + fast_map_dpp."""
    emb_n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    q = query / np.linalg.norm(query)
    near = np.argsort(-(emb_n @ q), kind="stable")[:cand_num]
    reps = emb_n[near]
    rel = (reps @ q + 1) / 2
    rel = np.exp((rel - rel.max()) / (2 * scale))
    kernel = rel[None] * ((reps @ reps.T + 1) / 2) * rel[:, None]
    cis = np.zeros((k, len(near)))
    di2s = np.diag(kernel).copy()
    sel = [int(np.argmax(di2s))]
    while len(sel) < k:
        j = len(sel) - 1
        e = (kernel[sel[-1]] - cis[:j, sel[-1]] @ cis[:j]) / np.sqrt(di2s[sel[-1]])
        cis[j] = e
        di2s -= e**2
        di2s[sel] = -np.inf
        sel.append(int(np.argmax(di2s)))
    return near[sel]


def test_dpp_reproduces_openicl_formulation():
    rng = np.random.default_rng(6)
    pool = rng.normal(size=(80, 5))
    queries = rng.normal(size=(6, 5))
    for cand in (20, None):
        out = make_selector("dpp", candidates=cand, order="selection").fit(pool).select(
            queries, 6)
        for i, q in enumerate(queries):
            assert out.indices[i].tolist() == _openicl_dpp(pool, q, cand or 80, 6).tolist()


def _brute_mmr(emb, q, k, lam):
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = e @ (q / np.linalg.norm(q))
    chosen = [int(np.argmax(sim))]
    while len(chosen) < k:
        score = lam * sim - (1 - lam) * (e @ e[chosen].T).max(1)
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return chosen


def test_mmr_equals_brute_force():
    rng = np.random.default_rng(7)
    pool, queries = rng.normal(size=(60, 4)), rng.normal(size=(5, 4))
    out = make_selector("mmr", candidates=None, order="selection").fit(pool).select(queries, 5)
    short = make_selector("mmr", candidates=60, order="selection").fit(pool).select(queries, 5)
    for i, q in enumerate(queries):
        assert out.indices[i].tolist() == _brute_mmr(pool, q, 5, 0.7)
    np.testing.assert_array_equal(short.indices, out.indices)


def _brute_votek(emb, k, neighbors, rho=10.0):
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    votes = np.argsort(-sim, axis=1, kind="stable")[:, :neighbors]   # v votes for votes[v]
    chosen: list[int] = []
    for _ in range(k):
        score = np.zeros(len(e))
        for v in range(len(e)):
            if v in chosen:
                continue
            weight = rho ** -len(set(votes[v]) & set(chosen))
            score[votes[v]] += weight
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return chosen


def test_votek_equals_the_papers_greedy():
    rng = np.random.default_rng(8)
    pool = rng.normal(size=(70, 5))
    for nb in (3, 10):
        out = make_selector("vote-k", neighbors=nb, order="selection").fit(pool).select(
            pool[:2], 8)
        assert out.demo_set().tolist() == _brute_votek(pool, 8, nb)


def test_diverse_selectors_skip_the_near_duplicates_knn_takes():
    rng = np.random.default_rng(9)
    query = np.r_[1.0, np.zeros(7)]
    dups = query + 0.3 * np.r_[0, 1, np.zeros(6)] + rng.normal(scale=1e-3, size=(6, 8))
    # cos(dup, q) = 0.958 > cos(other, q) = 0.941, but a second duplicate adds nothing new:
    # MMR (lambda 0.7) scores it 0.7 * 0.958 - 0.3 * 1 = 0.370 < 0.7 * 0.941 - 0.3 * 0.901
    others = query + 0.36 * np.eye(8)[2:8] + rng.normal(scale=1e-3, size=(6, 8))
    far = rng.normal(size=(40, 8))
    pool = np.vstack([dups, others, far])
    dup_ids = set(range(6))
    knn = make_selector("knn").fit(pool).select(query[None], 4).demo_set()
    assert set(knn.tolist()) <= dup_ids
    for name in ("mmr", "dpp"):
        got = make_selector(name).fit(pool).select(query[None], 4).demo_set()
        assert len(set(got.tolist()) & dup_ids) <= 1, name
    strong = make_selector("mmd-query", diversity=20.0).fit(pool).select(query[None], 4)
    assert len(set(strong.demo_set().tolist()) & dup_ids) <= 2
    # vote-k: tight groups of near-duplicates each get at most one pick
    groups = rng.normal(size=(10, 8)) * 5
    grouped = np.repeat(groups, 6, axis=0) + rng.normal(scale=1e-3, size=(60, 8))
    picks = make_selector("vote-k", neighbors=5).fit(grouped).select(grouped[:1], 8).demo_set()
    assert len({int(i) // 6 for i in picks}) == 8


def test_set_level_mmd_matches_greedy_mmd_and_beats_random_sets():
    rng = np.random.default_rng(10)
    pool = np.concatenate([rng.normal(size=(150, 4)), rng.normal(size=(150, 4)) + 3])
    targets = rng.normal(size=(60, 4)) + 3
    ref = ic.greedy_mmd(pool, targets, 8)
    sel = make_selector("mmd", order="selection").fit(pool).select(targets, 8)
    np.testing.assert_array_equal(sel.demo_set(), ref.indices)
    np.testing.assert_allclose(sel.mmd2, ref.mmd2)
    assert np.all(np.diff(sel.mmd2[:4]) < 0)
    rand = [_mmd2(pool[rng.choice(300, 8, replace=False)], targets, ref.kernel.bandwidth)
            for _ in range(20)]
    assert sel.mmd2[-1] < min(rand)
    # default order: ascending mean kernel to the targets, most representative last
    dflt = make_selector("mmd").fit(pool).select(targets, 8)
    np.testing.assert_array_equal(dflt.demo_set(), ref.indices[np.argsort(ref.row_means,
                                                                          kind="stable")])
    # torch float32 input, an explicit Kernel object
    kern = ic.make_kernel("gaussian", bandwidth=ref.kernel.bandwidth)
    t32 = make_selector("mmd", kernel=kern, order="selection").fit(
        torch.tensor(pool, dtype=torch.float32)).select(torch.tensor(targets,
                                                                     dtype=torch.float32), 8)
    assert len(set(t32.demo_set().tolist()) & set(ref.indices.tolist())) >= 6


def test_float32_greedy_selects_as_float64_for_every_mmd_selector():
    # float32 kernels with float64 run sums (row means), cached pool columns, batched Grams
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(6, 24))
    pool = centres[rng.integers(0, 6, 600)] + 0.7 * rng.normal(size=(600, 24))
    targets = centres[rng.integers(0, 3, 80)] + 0.7 * rng.normal(size=(80, 24))
    labels = rng.integers(0, 3, 600)
    for name, params in [("mmd", {}), ("mmd-balanced", {}), ("mmd", {"diversity": 0.5}),
                         ("mmd-query", {}), ("mmd-query", {"candidates": None}),
                         ("mmd", {"kernel": "laplace"}), ("mmd-query", {"kernel": "imq"})]:
        out = {}
        for dtype in (np.float64, np.float32):
            sel = make_selector(name, order="selection", **params)
            out[dtype] = sel.fit(Pool(pool.astype(dtype), labels)).select(
                targets.astype(dtype), 6)
        np.testing.assert_array_equal(out[np.float32].indices, out[np.float64].indices)
        np.testing.assert_allclose(out[np.float32].mmd2, out[np.float64].mmd2, atol=1e-5)


@given(matrices(st.integers(4, 14), 3), matrices(st.integers(1, 3), 3), st.data())
def test_mmd_query_exact_equals_greedy_mmd_per_query(pool, targets, data):
    pool = pool + np.arange(len(pool))[:, None] * 1e-3
    k = data.draw(st.integers(1, min(5, len(pool))))
    exact = make_selector("mmd-query", candidates=None, bandwidth=1.0, order="selection")
    out = exact.fit(pool).select(targets, k)
    short = make_selector("mmd-query", candidates=len(pool), bandwidth=1.0,
                          order="selection").fit(pool).select(targets, k)
    np.testing.assert_array_equal(short.indices, out.indices)
    for i, q in enumerate(targets):
        ref = ic.greedy_mmd(pool, q[None], k, bandwidth=1.0)
        assert out.indices[i].tolist() == ref.indices.tolist()
        np.testing.assert_allclose(out.mmd2[i], ref.mmd2, rtol=1e-9, atol=1e-12)


def test_mmd_query_shortlist_is_close_to_exact_and_attention_kernel_works():
    rng = np.random.default_rng(11)
    pool, queries = rng.normal(size=(300, 6)), rng.normal(size=(20, 6))
    exact = make_selector("mmd-query", candidates=None).fit(pool).select(queries, 5)
    short = make_selector("mmd-query", candidates=50).fit(pool).select(queries, 5)
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact.indices, short.indices,
                                                               strict=True)])
    assert overlap > 0.8
    # greedy is not monotone in the candidate set: compare on average only
    assert short.mmd2[:, -1].mean() <= 1.05 * exact.mmd2[:, -1].mean()
    tokens = ic.stack_kv(rng.normal(size=(40, 4)) * 0.5, rng.normal(size=(40, 2)))
    tq = ic.stack_kv(rng.normal(size=(3, 4)) * 0.5, rng.normal(size=(3, 2)))
    for name in ("mmd", "mmd-query"):
        out = make_selector(name, kernel="attention", key_dim=4).fit(tokens).select(tq, 4)
        assert out.indices.shape == (3, 4)


@pytest.mark.parametrize("call,match", [
    (lambda: make_selector("knn").fit(np.zeros((0, 3))), "empty"),
    (lambda: make_selector("bm25").fit(Pool(texts=[])), "empty"),
    (lambda: make_selector("knn").fit(np.ones((3, 2))).select(np.ones((2, 2)), 4),
     "larger than the pool"),
    (lambda: make_selector("mmd").fit(np.ones((3, 2))).select(np.ones((2, 2)), 0),
     "positive integer"),
    (lambda: make_selector("knn").fit(np.ones((3, 2))).select(np.ones((2, 2)), 1.5),
     "positive integer"),
    (lambda: make_selector("knn").fit(np.array([[1.0, np.nan]])), "NaN"),
    (lambda: make_selector("dpp").fit(np.ones((3, 2))).select(np.array([[np.inf, 1.0]]), 1),
     "NaN or infinite"),
    (lambda: make_selector("mmr").fit(np.ones((3, 2))).select(np.ones((2, 3)), 1),
     "dimension mismatch"),
    (lambda: make_selector("bm25").fit(np.ones((3, 2))), "needs pool texts"),
    (lambda: make_selector("mdd"), "unknown selector 'mdd'; did you mean 'mmd'"),
    (lambda: make_selector("knn").select(np.ones((2, 2)), 1), "not fitted"),
    (lambda: make_selector("knn", order="best"), "unknown order"),
    (lambda: make_selector("knn", lambda_=0.5), "unknown parameter"),
    (lambda: make_selector("mmr", lambda_=1.5), "lambda_"),
    (lambda: make_selector("mmd", kernel="cosine"), "unknown kernel"),
    (lambda: make_selector("mmd", width=2.0), "unknown parameter"),
    (lambda: make_selector("mmd", diversity=-1), "diversity"),
    (lambda: make_selector("knn").fit(Pool(np.ones((3, 2)), labels=[0, 1])),
     "different lengths"),
    (lambda: make_selector("knn").fit("a text"), "single string"),
    (lambda: make_selector("vote-k", rho=1.0), "rho"),
    (lambda: make_selector("dpp", candidates=0), "candidates"),
])
def test_selector_bad_input(call, match):
    with pytest.raises(ic.InputError, match=match):
        call()


def test_make_selector_names_and_params():
    assert type(make_selector("KATE")).__name__ == "KNNSelector"
    assert make_selector("vote_k").name == "vote-k"
    sel = make_selector("mmd-query", candidates=10, bandwidth=2.0)
    assert sel.get_params()["candidates"] == 10 and sel.get_params()["bandwidth"] == 2.0
    assert "MMDQuerySelector(" in repr(sel)
    for cls in SELECTORS.values():
        doc = cls.__doc__ or ""
        assert "Cost" in doc, cls.name


@pytest.mark.parametrize("kernel,params", [
    ("gaussian", {}), ("laplace", {}), ("imq", {}), ("linear", {}), ("polynomial", {}),
    ("softmax", {}), ("attention", {"key_dim": 3}),
])
def test_mmd_query_shortlist_gram_matches_the_whole_pool_path_for_every_kernel(kernel, params):
    rng = np.random.default_rng(12)
    pool, queries = rng.normal(size=(25, 5)) * 0.5, rng.normal(size=(4, 5)) * 0.5
    full = make_selector("mmd-query", kernel=kernel, candidates=None, order="selection",
                         **params).fit(pool).select(queries, 4)
    short = make_selector("mmd-query", kernel=kernel, candidates=25, order="selection",
                          **params).fit(pool).select(queries, 4)
    np.testing.assert_array_equal(short.indices, full.indices)
    np.testing.assert_allclose(short.mmd2, full.mmd2, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------- Nyström landmarks
def _two_samples(n, t, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d)) * 2.0
    pool = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, d))
    tgt = centres[rng.integers(0, 3, t)] + rng.normal(size=(t, d))   # 3 of the 6 clusters
    return pool, tgt


@given(st.integers(0, 10_000), st.integers(2, 40), st.sampled_from(["gaussian", "laplace"]))
def test_landmark_row_means_obey_their_certified_error(seed, m, kernel):
    from icldistill.core.mmd import kernel_row_means
    from icldistill.selection import landmark_row_means

    pool, tgt = _two_samples(60, 50, seed=seed)
    c, t = torch.as_tensor(pool), torch.as_tensor(tgt)
    kern = ic.make_kernel(kernel, c, t)
    res = landmark_row_means(pool, tgt, m, kern, seed=seed)
    exact = kernel_row_means(c, t, kern).numpy()
    bound = np.sqrt(kern.diag(c).numpy()) * res.approx_error
    assert res.row_means.shape == (60,) and res.kernel is kern
    assert np.all(np.abs(res.row_means - exact) <= bound + 1e-9)
    # more landmarks (the same draw, extended) never enlarge the error
    more = landmark_row_means(pool, tgt, m + 5, kern, seed=seed)
    assert more.landmarks[:m].tolist() == res.landmarks.tolist()
    assert more.approx_error <= res.approx_error + 1e-9


def test_selection_results_have_json_ready_dicts():
    import json

    from icldistill.selection import landmark_row_means

    pool, tgt = _two_samples(80, 40, seed=5)
    labels = np.arange(80) % 2
    res = ic.greedy_mmd(pool, tgt, 4, labels=labels, balance=True, landmarks=10)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["indices"] == res.indices.tolist() and d["quotas"] == {"0": 2, "1": 2}
    assert d["kernel"] == {"name": "gaussian", "params": {"bandwidth": res.kernel.bandwidth}}
    assert d["approx_error"] == res.approx_error and len(d["mmd2"]) == 4
    sel = ic.make_selector("mmd-query").fit(pool).select(tgt[:3], 2)
    d = json.loads(json.dumps(sel.to_dict()))
    assert d["indices"] == sel.indices.tolist() and d["k"] == 2 and d["selector"] == "mmd-query"
    assert np.array(d["mmd2"]).shape == (3, 2)
    lm = landmark_row_means(pool, tgt, 5, seed=1)
    d = json.loads(json.dumps(lm.to_dict()))
    assert len(d["row_means"]) == 80 and len(d["landmarks"]) == 5
    for bad in (0, 1.5, "x"):
        with pytest.raises(ic.InputError, match="landmarks"):
            landmark_row_means(pool, tgt, bad)
    with pytest.raises(ic.InputError, match="dimension"):
        landmark_row_means(pool, tgt[:, :3], 5)


def test_landmarks_keep_an_exact_trajectory_and_a_set_as_close_as_exact_greedy():
    pool, tgt = _two_samples(400, 200, seed=1)
    exact = ic.greedy_mmd(pool, tgt, 8)
    assert exact.approx_error is None
    h = exact.kernel.bandwidth
    for m in (16, 64):
        res = ic.greedy_mmd(pool, tgt, 8, landmarks=m)
        assert res.approx_error is not None and res.approx_error > 0
        assert res.kernel.bandwidth == h                      # the same median heuristic
        # trajectory and row means are exact, whatever the approximation
        for j in range(1, 9):
            assert res.mmd2[j - 1] == pytest.approx(_mmd2(pool[res.indices[:j]], tgt, h),
                                                    abs=1e-10)
        r = exact.kernel(torch.as_tensor(pool[res.indices]), torch.as_tensor(tgt)).mean(1)
        np.testing.assert_allclose(res.row_means, r.numpy(), atol=1e-12)
        # the chosen set is about as close to the targets as the exact greedy set
        assert res.mmd2[-1] <= 1.25 * exact.mmd2[-1]
    # m >= T is the exact computation
    full = ic.greedy_mmd(pool, tgt, 8, landmarks=200)
    assert full.indices.tolist() == exact.indices.tolist() and full.approx_error is None


def test_mmd_selector_with_landmarks_is_seeded_and_validated():
    from icldistill.evaluation.harness import unit_grid

    pool, tgt = _two_samples(300, 100, seed=2)
    a = ic.make_selector("mmd", landmarks=20, seed=3).fit(pool).select(tgt, 5)
    b = ic.make_selector("mmd", landmarks=20, seed=3).fit(pool).select(tgt, 5)
    assert a.indices.tolist() == b.indices.tolist()
    assert ic.make_selector("mmd", landmarks=20).get_params()["landmarks"] == 20
    bal = ic.make_selector("mmd-balanced", landmarks=20).fit(
        ic.Pool(pool, np.arange(300) % 3)).select(tgt, 6)
    assert len(set(bal.demo_set().tolist())) == 6
    for bad in (0, -3, 2.5, "many"):
        with pytest.raises(ic.InputError, match="landmarks"):
            ic.make_selector("mmd", landmarks=bad)
        with pytest.raises(ic.InputError, match="landmarks"):
            ic.greedy_mmd(pool, tgt, 3, landmarks=bad)
    # a landmark draw depends on the seed: the grid runs every seed
    units = unit_grid(models=["m"], tasks=["t"], selectors=["mmd"], ks=[4], seeds=3,
                      params={"mmd": {"landmarks": 64}})
    assert [u.seed for u in units] == [0, 1, 2]


@given(st.integers(1, 6), st.integers(1, 12), st.data())
def test_topk_low_index_is_a_stable_sort_on_ties(rows, cols, data):
    """Top-k with many exact ties (small integer scores) equals a stable descending sort: equal
    values in column order, whichever columns torch.topk happened to return. Fixed bug: on CUDA
    `knn` put two pool items with the same embedding in the other order than on the CPU."""
    from icldistill.selection._common import topk_low_index, topk_rows

    k = data.draw(st.integers(0, cols))
    scores = np.array(data.draw(st.lists(st.lists(st.integers(-2, 2), min_size=cols,
                                                  max_size=cols), min_size=rows,
                                         max_size=rows)), dtype=np.float64)
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    vals, idx = topk_low_index(torch.from_numpy(scores), k)
    assert np.array_equal(idx.numpy(), want)
    assert np.array_equal(vals.numpy(), np.take_along_axis(scores, want, axis=1))
    idx2, vals2 = topk_rows(scores, k)
    assert np.array_equal(idx2, want) and np.array_equal(vals2, vals.numpy())


def test_knn_orders_duplicated_pool_items_by_index():
    """Two pool items with the same embedding: knn shows them in index order (the lower index
    further from the query, under the default "similarity" order), on any device."""
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8], [0.8, 0.6]],
                       dtype=torch.float64)
    pool = ic.Pool(emb, np.array(["a", "b", "a", "b", "a"]))
    run = ic.make_selector("knn").fit(pool).select(ic.Pool(emb[2:3].clone()), 3)
    # similarities to [0.6, 0.8]: items 2 and 3 tie at 1.0, then item 4 (0.96)
    assert run.indices.tolist() == [[4, 2, 3]]
