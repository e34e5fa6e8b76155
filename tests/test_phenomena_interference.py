"""The interference section on a tiny random model and two toy tasks: the section builds, the
demonstration mixes keep k and the label balance, random labels keep the inputs, the OLS fit is
the definition, the all-layer K_att helper equals the per-layer encoder, determinism, bad
input."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.util import single_thread
from icldistill.core.validation import InputError
from icldistill.data.datasets import Dataset, DatasetSplit, TaskFormat
from icldistill.data.prompts import Template
from icldistill.encoders.representations import AttentionKVEncoder, make_encoder
from icldistill.lab.experiments import interference as itf
from icldistill.lab.experiments import phenomena as ph

from .lab_helpers import tiny_group
from .tiny_models import WORDS, tiny_model, tiny_tokenizer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


def _task(name, labels, words, vocab, n_pool=40, n_test=12, seed=0):
    """A toy labelled task: inputs are word salads from ``vocab[label]``."""
    assert all(w in WORDS for v in vocab.values() for w in v)
    assert all(w in WORDS for w in words.values())
    rng = np.random.default_rng(seed)
    texts, labs = [], []
    for i in range(n_pool + n_test):
        lab = labels[i % len(labels)]
        texts.append(" ".join(rng.choice(vocab[lab], 4).tolist()))
        labs.append(lab)
    fmt = TaskFormat("Classify", Template("Input: {input}\nLabel: {label}\n\n",
                                          "Input: {input}\nLabel:"), words)

    def part(sl):
        return Dataset(name=name, texts=tuple(texts[sl]), labels=np.asarray(labs[sl]),
                       label_names=tuple(labels), format=fmt)

    split = DatasetSplit(train=part(slice(0, n_pool)), test=part(slice(n_pool, None)))
    return ph.task_items(split, n_test=n_test, seed=seed, name=name)


@pytest.fixture(scope="module")
def tasks():
    a = _task("toy-sentiment", ("pos", "neg"), {"pos": "positive", "neg": "negative"},
              {"pos": ["good", "great", "loved", "fun", "movie"],
               "neg": ["bad", "awful", "hated", "boring", "film"]})
    b = _task("toy-topic", ("act", "story"), {"act": "acting", "story": "plot"},
              {"act": ["acting", "this", "very", "it"], "story": ["story", "that", "not", "of"]},
              seed=1)
    c = _task("toy-three", ("x", "y", "z"), {"x": "good", "y": "bad", "z": "neutral"},
              {"x": ["the", "a", "was"], "y": ["is", "to", "and"], "z": ["!", "?", ","]},
              seed=2)
    return [a, b, c]


def _loaded():
    return SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(True),
                           name="tiny")


def _groups():
    return [tiny_group()]


def _run(tasks, tmp_path, **kw):
    groups = _groups()
    enc = make_encoder("hidden:-1", groups[0][0].loaded.model, groups[0][0].loaded.tokenizer)
    return itf.run(out_dir=tmp_path, quick=True, tasks=tasks[:2], under_test=groups, k=4,
                   text_encoder=enc, **kw)


def _dejson(x):
    return json.loads(json.dumps(x))


@pytest.fixture(scope="module")
def section(tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("interference")
    return _run(tasks, out), out


def test_section_builds(section, tasks):
    sec, out = section
    assert sec.name == "interference"
    assert sec.tables and all(t.rows for t in sec.tables)
    assert len(sec.figures) == 3
    for f in sec.figures:
        assert (out / f).read_bytes()[:8] == PNG
    assert len(sec.checks) == 4 and sec.findings
    assert all("Holm-adjusted over the section's 4 claim checks" in c.detail
               for c in sec.checks)
    assert all(isinstance(c.testable, bool) for c in sec.checks)      # every test has a floor
    assert all(not c.holds for c in sec.checks if c.testable is False)
    assert all(isinstance(c.holds, bool) for c in sec.checks)
    json.dumps(sec.data, allow_nan=False)
    assert sec.seconds > 0
    d = sec.data
    assert d["rhos"] == list(itf.RHOS_QUICK) and d["k"] == 4
    assert [t["foreign"] for t in d["tasks"]] == ["toy-topic", "toy-sentiment"]
    g = d["groups"][0]
    assert set(g["comparisons"]) == {"drop_foreign", "r2_kv", "r2_text", "drop_random"}
    assert [m["role"] for m in g["models"]] == ["trained", "control"]
    for m in g["models"]:
        for t in m["tasks"]:
            V, R, S, N = np.asarray(t["correct"]).shape
            assert (V, R, S) == (2, 3, 1) and N == 12         # the TaskItems' own test items
            L = np.asarray(t["mmd_kv"]).shape[0]
            assert L == 2 and np.all(np.asarray(t["mmd_kv"]) >= -1e-9)
            # rho = 0 is the same prompt in both variants
            assert t["correct"][0][0] == t["correct"][1][0]
            # 3 distinct prompts per variant with a shared rho=0 prompt
            assert t["n_prompts"] == 5
        assert len(m["r2_layers"]["foreign"]) == 2
        assert len(m["signed_r2_layers"]["random-label"]) == 2
        assert -1.0 <= m["r2_best"]["value"] <= 1.0
        # one set per rho level: no contrast within a level, and the finding says so
        assert m["beyond_rho"]["kv"]["r"] is None and m["beyond_rho"]["text"]["p"] is None
    assert sum("not measurable with 1 demonstration set per level" in f
               for f in sec.findings) == 2
    # input-only MMD is exactly unchanged by random labels; the label-aware one is not
    assert g["input_mmd_max_change_random_label"] == 0.0
    # regression: the drops were resampled and sign-flip tested per test item (the 12 items
    # of a task share its one demonstration set); one value per (task, set) now
    for key, v in (("drop_foreign", 0), ("drop_random", 1)):
        drops = [np.mean(np.asarray(t["correct"], dtype=float)[v, 0, s]
                         - np.asarray(t["correct"], dtype=float)[v, -1, s])
                 for t in g["models"][0]["tasks"] for s in range(1)]
        cmp = g["comparisons"][key]
        assert cmp["trained"]["n"] == 2                          # 2 tasks x 1 set
        assert cmp["trained"]["value"] == pytest.approx(np.mean(drops))
    for t in d["tasks"]:
        mt = np.asarray(t["mmd_text"])
        assert mt[1, -1, 0] > mt[1, 0, 0]
        assert mt[0, 0, 0] == mt[1, 0, 0]


def test_deterministic(section, tasks, tmp_path):
    sec, _ = section
    again = _run(tasks, tmp_path)
    a, b = _dejson(sec.data), _dejson(again.data)
    a.pop("seconds"), b.pop("seconds")
    for d in (a, b):
        for g in d["groups"]:
            for m in g["models"]:
                for t in m["tasks"]:
                    t.pop("seconds")
    assert a == b
    assert [c.holds for c in sec.checks] == [c.holds for c in again.checks]


@settings(max_examples=40, deadline=None)
@given(rho_i=st.integers(0, 8), seed=st.integers(0, 10_000), pair=st.sampled_from([(0, 1),
                                                                                  (1, 2), (2, 0)]))
def test_mix_keeps_k_balance_and_foreign_count(tasks, rho_i, seed, pair):
    target, foreign = tasks[pair[0]], tasks[pair[1]]
    k = 8
    rho = rho_i / k
    rng = np.random.default_rng(seed)
    t_idx = ph.balanced_indices(target.pool_labels, k, rng)
    f_idx = ph.balanced_indices(foreign.pool_labels, k, rng)
    ds = itf.mix(target, foreign, t_idx, f_idx, rho, np.random.default_rng(seed))
    assert ds.k == k
    assert ds.n_foreign == round(rho * k) == rho_i
    assert ds.n_wrong == 0
    tl = Counter(lab for lab, s in zip(ds.labels, ds.source, strict=True) if s == "target")
    fl = Counter(lab for lab, s in zip(ds.labels, ds.source, strict=True) if s == "foreign")
    for cnt, task, n in ((tl, target, k - rho_i), (fl, foreign, rho_i)):
        counts = [cnt.get(lab, 0) for lab in task.label_names]
        assert sum(counts) == n
        assert max(counts) - min(counts) <= 1             # label-balanced
    for x, lab, w, s, i in zip(ds.inputs, ds.labels, ds.words, ds.source, ds.index,
                               strict=True):
        task = target if s == "target" else foreign
        assert task.pool_texts[i] == x and str(task.pool_labels[i]) == lab
        assert w == task.format.word(lab)                 # each task's own label words
    # nested in rho: the target items left sit where they sat at rho = 0
    base = itf.mix(target, foreign, t_idx, f_idx, 0.0, np.random.default_rng(seed))
    for p in range(k):
        if ds.source[p] == "target":
            assert ds.inputs[p] == base.inputs[p]


@settings(max_examples=40, deadline=None)
@given(rho_i=st.integers(0, 8), seed=st.integers(0, 10_000), ti=st.integers(0, 2))
def test_relabel_keeps_inputs(tasks, rho_i, seed, ti):
    target, foreign = tasks[ti], tasks[(ti + 1) % 3]
    k, rho = 8, rho_i / 8
    rng = np.random.default_rng(seed)
    t_idx = ph.balanced_indices(target.pool_labels, k, rng)
    f_idx = ph.balanced_indices(foreign.pool_labels, k, rng)
    ds = itf.relabel(target, t_idx, rho, np.random.default_rng(seed))
    base = itf.mix(target, foreign, t_idx, f_idx, 0.0, np.random.default_rng(seed))
    assert ds.inputs == base.inputs and ds.index == base.index   # inputs and positions kept
    assert ds.true_labels == base.labels
    assert ds.n_wrong == rho_i and ds.n_foreign == 0
    assert set(ds.labels) <= set(target.label_names)
    assert all(w == target.format.word(lab) for lab, w in zip(ds.labels, ds.words, strict=True))
    if rho_i == 0:
        assert ds.key() == base.key()
    if rho_i % len(target.label_names) == 0:
        # a derangement of balanced labels keeps the label counts
        assert Counter(ds.labels) == Counter(base.labels)


@settings(max_examples=60, deadline=None)
@given(xs=st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=20),
       noise=st.lists(st.floats(-10, 10, allow_nan=False), min_size=20, max_size=20),
       a=st.floats(-5, 5), b=st.floats(-5, 5))
def test_fit_line_is_ols(xs, noise, a, b):
    x = np.asarray(xs)
    y = a + b * x + np.asarray(noise[: len(xs)])
    f = itf.fit_line(x, y)
    assert f.n == len(xs)
    if np.ptp(x) < 1e-6 * max(1.0, np.abs(x).max()):
        return
    A = np.stack([np.ones_like(x), x], 1)
    (i0, s0), *_ = np.linalg.lstsq(A, y, rcond=None)
    assert f.slope == pytest.approx(s0, rel=1e-6, abs=1e-6)
    assert f.intercept == pytest.approx(i0, rel=1e-6, abs=1e-6)
    ss_tot = ((y - y.mean()) ** 2).sum()
    if ss_tot > 1e-9:
        ss_res = ((y - (f.intercept + f.slope * x)) ** 2).sum()
        assert f.r2 == pytest.approx(1 - ss_res / ss_tot, abs=1e-6)
        assert f.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, abs=1e-6)


def test_falling_r2():
    assert itf.falling_r2(-1.0) == 1.0 and itf.falling_r2(1.0) == -1.0
    np.testing.assert_allclose(itf.falling_r2([-0.5, 0.0, 0.5]), [0.25, 0.0, -0.25])
    x = np.arange(5.0)
    y = 3.0 - 0.5 * x + np.array([0.1, -0.1, 0.0, 0.1, -0.1])
    f = itf.fit_line(x, y)
    assert itf.signed_r2(f) == pytest.approx(f.r2) and f.slope < 0
    assert itf.signed_r2(f) == pytest.approx(itf.falling_r2(np.corrcoef(x, y)[0, 1]))
    assert itf.signed_r2(itf.fit_line(x, -y)) == pytest.approx(-f.r2)
    assert itf.signed_r2(itf.fit_line(x, np.ones(5))) == 0.0


def test_fit_line_degenerate():
    f = itf.fit_line([1.0, 1.0, 1.0], [0.0, 1.0, 2.0])
    assert np.isnan(f.slope) and f.intercept == 1.0 and np.isnan(f.r2)
    f = itf.fit_line([0.0, 1.0, 2.0], [3.0, 3.0, 3.0])
    assert f.slope == 0.0 and np.isnan(f.r2)
    with pytest.raises(InputError, match="2 points"):
        itf.fit_line([1.0], [1.0])
    with pytest.raises(InputError, match="same length"):
        itf.fit_line([1.0, 2.0], [1.0])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_all_layer_kv_equals_the_encoder(arch):
    model, tok = tiny_model(arch), tiny_tokenizer(True)
    texts = ["Input: good movie\nLabel: positive", "the plot was not fun !", "a",
             "Input: this acting is very boring\nLabel: negative"]
    got = itf.encode_kv_all_layers(model, tok, texts, batch_size=3)
    assert len(got) == model.config.num_hidden_layers
    for layer, arr in enumerate(got):
        want = AttentionKVEncoder(model, tok, layer).encode(texts, batch_size=2)
        np.testing.assert_allclose(arr, want, rtol=1e-5, atol=1e-6)
    assert all(a.shape == (0, got[0].shape[1])
               for a in itf.encode_kv_all_layers(model, tok, []))


def test_predict_shown_matches_predict_on_target_demos(tasks):
    lo = _loaded()
    t = tasks[0]
    idx = ph.balanced_indices(t.pool_labels, 4, np.random.default_rng(0))
    ds = itf.mix(t, tasks[1], idx, idx[:0], 0.0, np.random.default_rng(0))
    p1, l1 = itf.predict_shown(lo, t, t.test_texts[:4], ds)
    pairs = list(zip(ds.inputs, ds.labels, strict=True))
    p2, l2 = ph.predict(lo, t, t.test_texts[:4], pairs)
    assert list(p1) == list(p2)
    np.testing.assert_allclose(l1, l2, rtol=1e-6, atol=1e-6)
    # foreign label words are shown, not refused
    f_idx = ph.balanced_indices(tasks[1].pool_labels, 4, np.random.default_rng(0))
    mixed = itf.mix(t, tasks[1], idx, f_idx, 1.0, np.random.default_rng(0))
    assert set(mixed.words) <= set(tasks[1].format.label_words.values())
    p3, l3 = itf.predict_shown(lo, t, t.test_texts[:4], mixed)
    assert l3.shape == (4, 2) and set(p3) <= set(t.label_names)


def test_bad_input(tasks, tmp_path):
    t, f = tasks[0], tasks[1]
    idx = list(range(4))
    for rho in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(InputError, match="rho"):
            itf.mix(t, f, idx, idx, rho, np.random.default_rng(0))
        with pytest.raises(InputError, match="rho"):
            itf.relabel(t, idx, rho, np.random.default_rng(0))
    with pytest.raises(InputError, match="k"):
        itf.mix(t, f, [], idx, 0.5, np.random.default_rng(0))
    with pytest.raises(InputError, match="foreign_idx"):
        itf.mix(t, f, idx, idx[:1], 0.5, np.random.default_rng(0))
    with pytest.raises(InputError, match="repeated"):
        itf.mix(t, f, [0, 0, 1, 2], idx, 0.5, np.random.default_rng(0))
    with pytest.raises(InputError, match="outside"):
        itf.relabel(t, [0, 1, 2, 10_000], 0.5, np.random.default_rng(0))
    with pytest.raises(InputError, match="k must be"):
        itf.run(out_dir=tmp_path, quick=True, tasks=tasks[:2], under_test=[], k=1)
    with pytest.raises(InputError, match="whole number"):
        itf.run(out_dir=tmp_path, quick=True, tasks=tasks[:2], under_test=[], k=4,
                rhos=(0.0, 0.125, 1.0))
    with pytest.raises(InputError, match="rhos must"):
        itf.run(out_dir=tmp_path, quick=True, tasks=tasks[:2], under_test=[], k=4,
                rhos=(0.0, 1.0))
    with pytest.raises(InputError, match="rho must"):
        itf.run(out_dir=tmp_path, quick=True, tasks=tasks[:2], under_test=[], k=4,
                rhos=(0.0, 0.5, 2.0))
    with pytest.raises(InputError, match="two tasks"):
        itf.run(out_dir=tmp_path, quick=True, tasks=tasks[:1], under_test=_groups(), k=4)


def test_more_sets_give_more_units(tasks, tmp_path):
    """``n_sets``: demonstration sets per task and rho; the drops take one unit per
    (task, set)."""
    sec = _run(tasks, tmp_path, n_sets=2)
    g = sec.data["groups"][0]
    assert np.asarray(g["models"][0]["tasks"][0]["correct"]).shape[2] == 2
    assert g["comparisons"]["drop_random"]["trained"]["n"] == 4       # 2 tasks x 2 sets
    assert g["comparisons"]["drop_random"]["paired"][0]["n"] == 4
    # two sets per level: the MMD² beyond rho is tested, on the stored accuracies and MMD²s
    from icldistill.lab.experiments._stats import within_level_test

    for m in g["models"]:
        acc = [np.asarray(t["accuracy"])[0] for t in m["tasks"]]            # foreign [R, S]
        kv = [np.asarray(t["mmd_kv"])[:, 0] for t in m["tasks"]]            # [L, R, S]
        again = within_level_test(acc, [[k[la] for k in kv] for la in range(kv[0].shape[0])],
                                  n_perm=itf.N_PERM, seed=0)
        stored = m["beyond_rho"]["kv"]
        assert stored["best"] == again.best
        for key in ("r", "p"):       # NaN (stored as None): the tiny model's sets all agree
            want = getattr(again, key)
            assert (stored[key] is None) if math.isnan(want) else \
                stored[key] == pytest.approx(want)
    assert all("--sets 2" not in f for f in sec.findings)
    for m in g["models"]:
        tested = m["beyond_rho"]["kv"]["r"] is not None or m["beyond_rho"]["text"]["r"] \
            is not None
        finding = next(f for f in sec.findings if f.startswith(f"{m['name']} ({m['role']}), "
                                                                "the MMD² beyond"))
        assert ("one-sided permutation p" in finding) is tested
        assert ("does not vary between the sets" in finding) is not tested
    with pytest.raises(InputError, match="n_sets"):
        _run(tasks, tmp_path / "bad", n_sets=0)


def test_beyond_rho_finding_states_both_tests():
    from icldistill.lab.experiments._stats import WithinLevelTest

    s = {"model": SimpleNamespace(name="m", role="trained"),
         "beyond_text": WithinLevelTest(math.nan, -1, math.nan, 0),
         "beyond_kv": WithinLevelTest(-0.357, 3, 0.5, 8, True, 0.125)}
    setup = SimpleNamespace(enc_name="MiniLM", n_sets=2)
    text = itf._beyond_rho_finding(s, setup)
    assert "MiniLM: no contrast within a level" in text
    assert ("K_att at its most negative layer (3, re-chosen in every relabelling) -0.357, "
            "one-sided permutation p 0.5") in text
    assert "all 8 relabellings enumerated; no p below 0.125 with these sets; untestable at " \
        "this size)." in text
    s["beyond_kv"] = WithinLevelTest(-0.357, 3, 0.01, 2000, False, 1 / 2001)
    text = itf._beyond_rho_finding(s, setup)
    assert "2000 relabellings drawn; no p below 0.0005 with these sets)." in text
