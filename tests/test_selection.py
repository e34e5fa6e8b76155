"""SPEC §5: MMD-greedy selection on representation matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
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
    assert isinstance(a, np.ndarray) and a.dtype == np.int64 and a.shape == (8,)
    np.testing.assert_array_equal(a, b)
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
