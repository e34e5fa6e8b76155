"""Regressions of the selection package: label quotas, shared index objects, vote-k ties,
batch dependence of the per-query MMD bandwidth, the BM25 tokenizer and scores, pool aliasing.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from icldistill.core.kernels import make_kernel
from icldistill.selection import SELECTORS, CandidateIndex, Pool, label_quotas, make_selector
from icldistill.selection.retrievers import tokenize


# ------------------------------------------------------------------------------ label quotas
def _most_even(counts: list[int], k: int) -> list[int]:
    """Brute force: among all splits ``q`` of ``k`` with ``0 <= q_i <= counts_i``, the most
    even ones (largest quota smallest, then the next largest, ...: the sorted quotas are
    lexicographically smallest), ties to the labels in order (the split that is
    lexicographically largest in label order, i.e. the remainder goes to the first labels)."""
    splits = [q for q in itertools.product(*(range(c + 1) for c in counts)) if sum(q) == k]
    best = min(sorted(q, reverse=True) for q in splits)
    return list(max(q for q in splits if sorted(q, reverse=True) == best))


def test_label_quotas_give_a_short_labels_excess_to_the_others_evenly():
    """Regression: the remainder was handed out before the caps, so a label with one item got
    an unusable +1 and the leftover slot went to the first open label (1, 3, 1)."""
    labels = np.array(["a"] + ["b"] * 10 + ["c"] * 10)
    assert label_quotas(labels, 5) == {"a": 1, "b": 2, "c": 2}
    labels = np.array(["a", "b"] + ["c"] * 10 + ["d"] * 10 + ["e"] * 10)
    assert label_quotas(labels, 9) == {"a": 1, "b": 1, "c": 3, "d": 2, "e": 2}


@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.data())
def test_label_quotas_equal_the_brute_force_most_even_split(counts, data):
    k = data.draw(st.integers(0, sum(counts)), label="k")
    labels = np.repeat(np.arange(len(counts)), counts)
    got = label_quotas(labels, k)
    assert list(got) == list(range(len(counts)))
    assert list(got.values()) == _most_even(counts, k)


def test_mmd_balanced_and_random_use_the_even_quotas():
    rng = np.random.default_rng(0)
    lab = np.array(["a"] + ["b"] * 10 + ["c"] * 10)
    pool, q = rng.normal(size=(21, 4)), rng.normal(size=(5, 4))
    for name, kw in (("mmd-balanced", {}), ("random", {"balance": True})):
        s = make_selector(name, **kw).fit(Pool(embeddings=pool, labels=lab)).select(q, 5)
        assert sorted(lab[s.indices[0]]) == ["a", "b", "b", "c", "c"], name


# ------------------------------------------------------------------------------ shared index
@pytest.mark.parametrize(("first", "second"), [("knn", "knn"), ("mmr", "dpp")])
def test_one_index_object_shared_by_two_selectors_is_not_refit(first, second):
    """Regression: make_index returned the caller's CandidateIndex, so fitting a second
    selector refit the first one's index on another pool (IndexError or wrong picks)."""
    rng = np.random.default_rng(0)
    p1, p2, q = rng.normal(size=(40, 8)), rng.normal(size=(60, 8)), rng.normal(size=(3, 8))
    kw = {} if first == "knn" else {"candidates": 10}
    ref = make_selector(first, **kw).fit(p1).select(q, 3).indices
    shared = CandidateIndex("exact")
    s1 = make_selector(first, index=shared, **kw).fit(p1)
    np.testing.assert_array_equal(s1.select(q, 3).indices, ref)
    kw2 = {} if second == "knn" else {"candidates": 10}
    make_selector(second, index=shared, **kw2).fit(p2)
    np.testing.assert_array_equal(s1.select(q, 3).indices, ref)
    assert shared.n == 0                       # the caller's object is a configuration only


def test_make_index_clones_the_configuration():
    from icldistill.selection.index import make_index

    ix = CandidateIndex("hnsw", metric="l2", nprobe=7, hnsw_m=12, ef_construction=40,
                        ef_search=33, nlist=5, train_size=100, seed=3)
    got = make_index(ix, "l2")
    assert got is not ix
    keys = ("kind", "metric", "nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search",
            "train_size", "seed")
    assert {a: getattr(got, a) for a in keys} == {a: getattr(ix, a) for a in keys}


# ------------------------------------------------------------------------------ vote-k ties
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact_votek(emb: np.ndarray, k: int, neighbors: int, rho: int) -> list[int]:
    """Vote-k's greedy in exact rational arithmetic, ties to the lowest index."""
    n = len(emb)
    u = _unit(emb)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    kv = min(neighbors, n - 1)
    votes = [set(np.argsort(-sim[i], kind="stable")[:kv].tolist()) for i in range(n)]
    voters = {c: [v for v in range(n) if c in votes[v]] for c in range(n)}
    chosen: list[int] = []
    covered = [0] * n
    for _ in range(k):
        best, best_score = -1, Fraction(-1)
        for c in range(n):
            if c in chosen:
                continue
            score = sum((Fraction(1, rho**covered[v]) for v in voters[c] if v not in chosen),
                        Fraction(0))
            if score > best_score:
                best, best_score = c, score
        chosen.append(best)
        for v in voters[best]:
            covered[v] += 1
    return chosen


def test_votek_breaks_exact_ties_by_the_lowest_index():
    """Regression: incremental float updates made exactly equal scores unequal, so ties did
    not go to the lowest index (215 wrong tie-breaks over these 200 pools)."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(5, 30))
        kv, k = int(rng.integers(1, 6)), int(rng.integers(1, n + 1))
        pool = rng.normal(size=(n, 3))
        got = make_selector("vote-k", neighbors=kv, rho=10, order="selection").fit(pool)
        assert got.select(pool[:1], k).indices[0].tolist() == _exact_votek(pool, k, kv, 10)


@given(st.integers(0, 10_000), st.integers(6, 24), st.integers(1, 5),
       st.sampled_from([2, 3, 10]))
def test_votek_equals_the_exact_greedy(seed, n, kv, rho):
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(n, 3))
    k = int(rng.integers(1, n + 1))
    got = make_selector("vote-k", neighbors=kv, rho=rho, order="selection").fit(pool)
    assert got.select(pool[:1], k).indices[0].tolist() == _exact_votek(pool, k, kv, rho)


# ------------------------------------------------------------------ per-query MMD bandwidth
PER_QUERY_MMD = ("mmd-query", "mmd-local", "mmd-katt")


@pytest.mark.parametrize("name", PER_QUERY_MMD)
def test_per_query_mmd_docstrings_state_the_batch_dependence(name):
    doc = " ".join(type(make_selector(name)).__doc__.split())
    assert "all queries of one ``select()`` call" in doc
    assert "bandwidth=..." in doc and "independent of its batch" in doc


@pytest.mark.parametrize("name", PER_QUERY_MMD)
@pytest.mark.parametrize("how", ["bandwidth", "kernel"])
def test_per_query_mmd_with_a_fixed_bandwidth_is_batch_independent(name, how):
    """With the bandwidth given, a query's demonstrations are the same alone and in a batch
    (the default median heuristic pools all queries of the call, so there they differ)."""
    rng = np.random.default_rng(0)
    pool, q = rng.normal(size=(200, 8)), rng.normal(size=(60, 8))
    q[1:] *= 10                                                      # a far-away batch
    lab = rng.choice(["a", "b"], 200)
    kw = ({"bandwidth": 2.5} if how == "bandwidth"
          else {"kernel": make_kernel("gaussian", bandwidth=2.5)})
    sel = make_selector(name, diversity=1.0, **kw).fit(Pool(embeddings=pool, labels=lab))
    batch = sel.select(q, 8).indices
    for i in (0, 1, 37):
        np.testing.assert_array_equal(sel.select(q[i:i + 1], 8).indices[0], batch[i])


def test_mmd_query_docstring_rule_is_the_greedy_step():
    """Regression: the docstring said ``s_c / |S|``; the step is ``s_c / (|S| + 1)``."""
    doc = " ".join(type(make_selector("mmd-query")).__doc__.split())
    assert "(1 + lambda) s_c / (|S| + 1)" in doc
    rng = np.random.default_rng(0)
    h = 1.0

    def gk(x, y):
        return np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * h * h))

    for lam in (0.0, 0.5):
        for _ in range(50):
            pool, q = rng.normal(size=(10, 2)), rng.normal(size=(1, 2))
            got = make_selector("mmd-query", bandwidth=h, candidates=None, diversity=lam,
                                order="selection").fit(pool).select(q, 3).indices[0]
            kpp, kq = gk(pool, pool), gk(pool, q)[:, 0]
            chosen: list[int] = []
            for _step in range(3):
                s_c = kpp[:, chosen].sum(1)
                val = kq - (1 + lam) * s_c / (len(chosen) + 1)
                val[chosen] = -np.inf
                chosen.append(int(np.argmax(val)))
            assert got.tolist() == chosen


# ------------------------------------------------------------------------------ BM25
def test_tokenize_keeps_combining_marks_and_normalises():
    """Regression: ``\\w`` split Indic words at vowel signs and viramas, NFD text did not match
    NFC text, and "İstanbul" fell apart."""
    assert tokenize("हिन्दी भाषा") == ["हिन्दी", "भाषा"]
    assert tokenize("café") == tokenize(unicodedata.normalize("NFD", "café")) == ["café"]
    assert len(tokenize("İstanbul")) == 1
    assert tokenize("Straße STRASSE") == ["strasse", "strasse"]
    assert tokenize("ﬁne ＡＢＣ") == ["fine", "abc"]                    # NFKC


@given(st.text(st.characters(max_codepoint=127)))
def test_tokenize_is_unchanged_on_ascii(text):
    assert tokenize(text) == re.findall(r"\w+", text.lower())


def test_bm25_matches_decomposed_queries():
    pool = ["le café est bon", "le thé est bon"]
    sel = make_selector("bm25", order="selection").fit(pool)
    scores = sel.score([unicodedata.normalize("NFD", "café")])
    assert scores[0, 0] > 0 and scores[0, 1] == 0


def test_bm25_with_no_shared_term_returns_float_zeros_and_warns():
    """Regression: a query sharing no term with the pool got int64 zeros and, silently, the
    first pool items."""
    sel = make_selector("bm25").fit(["a b", "c", "d e"])
    with pytest.warns(UserWarning, match=r"1 of 2 queries share no term.*indices 0\)"):
        scores = sel.score(["zzz", "a"])
    assert scores.dtype == np.float64 and scores.shape == (2, 3)
    assert (scores[0] == 0).all() and scores[1, 0] > 0
    with pytest.warns(UserWarning, match=r"2 of 2 queries share no term.*indices 0, 1\)"):
        out = sel.select(["zzz", "yyy"], 2)
    np.testing.assert_array_equal(out.indices, [[0, 1], [0, 1]])      # the lowest indices
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sel.score(["a", "c e"]).dtype == np.float64
        sel.select(["a", "c e"], 2)


# ------------------------------------------------------------------------------ pool aliasing
@pytest.mark.parametrize("as_tensor", [False, True])
def test_fitted_selectors_do_not_read_the_callers_arrays(as_tensor):
    """Regression: a fitted selector kept a view of the caller's embeddings (MMD family and
    vote-k read them at select time), so changing the array after fit changed its picks."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 6))
    lab = rng.choice(["a", "b"], 30)
    texts = [f"w{i % 5} x{i % 3}" for i in range(30)]
    q = rng.normal(size=(4, 6))
    for name in SELECTORS:
        p = torch.from_numpy(emb.copy()) if as_tensor else emb.copy()
        labels = lab.copy()
        sel = make_selector(name).fit(Pool(embeddings=p, labels=labels, texts=texts))
        targets = Pool(embeddings=q, texts=texts[:4])
        before = sel.select(targets, 3).indices
        p[:] = p.flip(0) if as_tensor else p[::-1].copy()
        labels[:] = "b"
        np.testing.assert_array_equal(sel.select(targets, 3).indices, before, err_msg=name)
