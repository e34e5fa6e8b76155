"""The candidate stage of per-query selectors: exact search is the reference, faiss indexes
(IVF, IVF-SQ8, HNSW) give the same selections on clustered data, bad settings are errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.validation import InputError
from icldistill.selection import make_selector
from icldistill.selection.index import INDEX_KINDS, CandidateIndex, indexed_shortlist

pytest.importorskip("faiss", reason="the faiss extra is part of the test install")

PER_QUERY = ("knn", "mmr", "dpp", "mmd-query")


def _clustered(n=3000, t=40, d=24, clusters=15, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d))
    pool = centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))
    tgt = centers[rng.integers(0, clusters, t)] + 0.3 * rng.normal(size=(t, d))
    return pool.astype(np.float32), tgt.astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(20, 200), st.integers(1, 6),
       st.sampled_from(PER_QUERY))
def test_the_exact_index_changes_nothing(seed, n, k, name):
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(n, 5)).astype(np.float32)
    tgt = rng.normal(size=(7, 5)).astype(np.float32)
    a = make_selector(name).fit(pool).select(tgt, k)
    b = make_selector(name, index="exact").fit(pool).select(tgt, k)
    assert np.array_equal(a.indices, b.indices)


@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8", "hnsw"])
@pytest.mark.parametrize("name", PER_QUERY)
def test_approximate_indexes_recall_the_exact_selection(kind, name):
    pool, tgt = _clustered()
    exact = np.asarray(make_selector(name).fit(pool).select(tgt, 8).indices)
    approx = np.asarray(make_selector(name, index=kind).fit(pool).select(tgt, 8).indices)
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.9, (name, kind, recall)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_matches_brute_force(metric):
    pool, tgt = _clustered(n=500, t=20)
    vals, idx = CandidateIndex("exact", metric=metric).fit(pool).search(tgt, 10)
    if metric == "cosine":
        p = pool / np.linalg.norm(pool, axis=1, keepdims=True)
        q = tgt / np.linalg.norm(tgt, axis=1, keepdims=True)
        s = q @ p.T
    else:
        s = -((tgt[:, None, :] - pool[None]) ** 2).sum(-1)
    ref = np.argsort(-s, axis=1, kind="stable")[:, :10]
    assert np.array_equal(np.sort(idx, 1), np.sort(ref, 1))
    np.testing.assert_allclose(vals, np.take_along_axis(s, idx, 1), rtol=1e-4, atol=1e-3)


def test_queries_an_index_underfills_are_searched_exactly():
    import torch

    pool, tgt = _clustered(n=400, t=30)
    ivf = CandidateIndex("ivf", metric="cosine", nlist=10, nprobe=1).fit(pool)
    _, raw = ivf.search(tgt, 150)                  # one cell of ~40 rows: many -1 entries
    assert (raw < 0).any()
    scores, ids = indexed_shortlist(ivf, torch.as_tensor(pool), torch.as_tensor(tgt), 150)
    assert (ids >= 0).all() and ids.shape == (30, 150)
    assert torch.isfinite(scores).all()
    assert all(len(set(r.tolist())) == 150 for r in ids)


def test_bad_settings_are_errors_that_name_them(monkeypatch):
    with pytest.raises(InputError, match="unknown index 'annoy'"):
        make_selector("knn", index="annoy")
    with pytest.raises(InputError, match="unknown metric"):
        CandidateIndex("ivf", metric="dot")
    with pytest.raises(InputError, match="kernel 'linear' needs index=None"):
        make_selector("mmd-query", kernel="linear", index="ivf")
    with pytest.raises(InputError, match="set candidates"):
        make_selector("mmr", index="ivf", candidates=None)
    with pytest.raises(InputError, match="uses 'l2'"):
        make_selector("knn", index=CandidateIndex("ivf", metric="l2"))
    with pytest.raises(InputError, match="before fit"):
        CandidateIndex("exact").search(np.ones((2, 3)), 1)
    pool, tgt = _clustered(n=100, t=3)
    with pytest.raises(InputError, match="dimension"):
        CandidateIndex("exact").fit(pool).search(tgt[:, :5], 2)
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(InputError, match=r"pip install 'icldistill\[faiss\]'"):
        make_selector("knn", index="ivf").fit(pool)
    assert "exact" in INDEX_KINDS
