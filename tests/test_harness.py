"""The evaluation harness end to end on a tiny random model: grid, results, resume."""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from icldistill.core.validation import InputError
from icldistill.data.datasets import TaskFormat, load_file
from icldistill.data.prompts import Template
from icldistill.evaluation import scoring as evaluation
from icldistill.evaluation.harness import Harness, Task, UnitSpec, load_results, unit_grid

from .tiny_models import WORDS, tiny_model, tiny_tokenizer

POS = ["good", "great", "loved", "fun"]
NEG = ["bad", "awful", "hated", "boring"]
NOUNS = ["movie", "film", "plot", "story", "acting"]


def _write_task(path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    with path.open("w") as fh:
        for i in range(n):
            lab = "pos" if i % 2 == 0 else "neg"
            words = rng.choice(POS if lab == "pos" else NEG, 2).tolist()
            text = f"the {rng.choice(NOUNS)} was {words[0]} and {words[1]}"
            fh.write(json.dumps({"sentence": text, "y": lab}) + "\n")
    assert all(w in WORDS for w in POS + NEG + NOUNS)
    fmt = TaskFormat("Classify sentiment", Template("Input: {input}\nLabel: {label}\n\n",
                                                    "Input: {input}\nLabel:"),
                     {"neg": "negative", "pos": "positive"})
    ds = load_file(path, text_field="sentence", label_field="y", name="toy", format=fmt)
    return Task("toy", ds.split(20, seed=0))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _write_task(tmp_path_factory.mktemp("data") / "toy.jsonl")


def _loader(name):
    return SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(True))


def _harness(tmp_path, toy, **kw):
    return Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=_loader, progress=False,
                   embedding_cache=tmp_path / "emb", reference_encoder="hidden:-1",
                   n_boot=50, batch_size=4, **kw)


def test_grid_runs_and_records_every_unit(tmp_path, toy):
    units = unit_grid(models=["tiny"], tasks=["toy"], selectors=["random", "knn", "mmd"],
                      ks=[2, 4], seeds=2, encoder="hidden:-1", n_test=12)
    # random runs with 2 seeds; deterministic selectors once
    assert len(units) == 2 * (2 + 1 + 1)
    h = _harness(tmp_path, toy)
    results = h.run(units)
    assert len(results) == len(units) == len(load_results(h.out_dir))
    for r in results:
        assert r.n == 12
        assert 0.0 <= r.accuracy.low <= r.accuracy.value <= r.accuracy.high <= 1.0
        assert np.isfinite(r.mmd2_task) and r.mmd2_task >= -1e-12
        assert np.isfinite(r.mmd2_query)
        assert r.shared == (r.spec.selector != "knn")
        sel = json.loads((h.out_dir / "selections" / f"{r.key}.json").read_text())
        rows = np.asarray(sel["indices"])
        assert rows.shape[1] == r.spec.k
    # the MMD selector's demonstrations are closer (reference kernel = its own here) than
    # random ones on average
    mmd = [r for r in results if r.spec.selector == "mmd"]
    rnd = [r for r in results if r.spec.selector == "random"]
    assert min(r.mmd2_task for r in mmd) <= np.mean([r.mmd2_task for r in rnd])
    # each item's MMD² to its query: its mean is the unit's recorded mmd2_query
    cov = h.label_coverage(results, item_mmd=True)
    for r in results:
        assert cov[r.key].mmd2_query.shape == (r.n,)
        assert cov[r.key].mmd2_query.mean() == pytest.approx(r.mmd2_query, rel=1e-9)
    assert h.label_coverage(results)[results[0].key].mmd2_query is None
    off = dataclasses.replace(results[0], mmd2_query=results[0].mmd2_query + 1.0)
    with pytest.raises(InputError, match="another reference encoder or kernel"):
        h.label_coverage([off], item_mmd=True)
    # rerunning reads everything back and computes nothing
    again = _harness(tmp_path, toy).run(units)
    assert sorted(r.key for r in again) == sorted(r.key for r in results)
    assert len(load_results(h.out_dir)) == len(units)


class _Interrupt(KeyboardInterrupt):
    pass


def test_an_interrupted_unit_resumes_without_recomputing(tmp_path, toy, monkeypatch):
    spec = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=16)
    scored: list[int] = []
    real = evaluation.FewShotScorer.score

    def flaky(self, queries, *a, on_batch=None, **kw):
        calls = {"n": 0}

        def hook(idx, lp):
            on_batch(idx, lp)
            scored.extend(idx.tolist())
            calls["n"] += 1
            if calls["n"] == 2:
                raise _Interrupt
        return real(self, queries, *a, on_batch=hook, **kw)

    monkeypatch.setattr(evaluation.FewShotScorer, "score", flaky)
    h = _harness(tmp_path, toy)
    with pytest.raises(_Interrupt):
        h.run_unit(spec)
    assert len(scored) == 8 and load_results(h.out_dir) == []
    partial = h.out_dir / "partial" / f"{spec.key(toy.fingerprint)}.jsonl"
    first_tokens = sum(json.loads(line)["tokens"] for line in partial.read_text().splitlines())
    assert first_tokens > 0          # each batch's tokens are recorded with its scores
    monkeypatch.setattr(evaluation.FewShotScorer, "score", real)
    counted: list[int] = []
    second_tokens: list[int] = []

    def counting(self, queries, *a, **kw):
        counted.append(len(queries))
        res = real(self, queries, *a, **kw)
        second_tokens.append(res.n_tokens)
        return res

    monkeypatch.setattr(evaluation.FewShotScorer, "score", counting)
    recorded = (h.out_dir / "selections" / f"{spec.key(toy.fingerprint)}.json").read_text()

    def no_selection(*a, **kw):
        raise AssertionError("the interrupted unit's demonstrations were chosen again")

    monkeypatch.setattr(Harness, "select", no_selection)
    r = _harness(tmp_path, toy).run_unit(spec)
    monkeypatch.undo()
    # the recorded selection (its demonstrations and its selection time) is read, not redone
    assert (h.out_dir / "selections" / f"{r.key}.json").read_text() == recorded
    assert r.selection_seconds == json.loads(recorded)["seconds"]
    # only the 8 queries not yet scored (less any whose prompt repeats one already scored)
    assert counted == [8 - r.n_reused]
    # the unit's tokens count both sessions' batches (the resumed one used to count only its own)
    assert r.n_tokens == first_tokens + second_tokens[0]
    # same result as an uninterrupted run
    monkeypatch.setattr(evaluation.FewShotScorer, "score", real)
    fresh = _harness(tmp_path / "b", toy).run_unit(spec)
    assert r.accuracy.value == fresh.accuracy.value
    assert not (tmp_path / "run" / "partial" / f"{r.key}.jsonl").exists()


def _fake_scores(stop_after: dict):
    """A stand-in for ``FewShotScorer.score``: label log-probabilities that are a fixed
    function of each prompt's full text (so the same prompt always gets the same scores,
    whichever path - scored, read from the score store, read from partial/ - they come by),
    reported batch by batch like the real scorer; raises :class:`_Interrupt` after
    ``stop_after["n"]`` batches when that is set."""
    import hashlib

    def score(self, queries, demonstrations=None, *, per_query=None, on_batch=None, **kw):
        texts = [self.prompt(per_query[i] if per_query is not None else demonstrations,
                             q).render().text for i, q in enumerate(queries)]
        lp = np.array([[-(b % 97) / 10.0 for b in hashlib.sha256(t.encode()).digest()[:2]]
                       for t in texts], dtype=np.float64)
        calls = 0
        for s in range(0, len(queries), self.batch_size):
            idx = np.arange(s, min(s + self.batch_size, len(queries)))
            if on_batch is not None:
                on_batch(idx, lp[idx])
            calls += 1
            if stop_after.get("n") is not None and calls >= stop_after["n"]:
                raise _Interrupt
        return evaluation.ScoreResult(lp, self.labels, None, 0, 0, 0.0)

    return score


def test_resume_with_reused_prompts_records_unit_level_row_indices(tmp_path, toy, monkeypatch):
    """Issue 14, item 9 (seeded bug): after a resume, and with some of the unit's prompts
    already in the score store, partial/ must record unit-level row indices. A unit
    interrupted twice must give the predictions of an uninterrupted run."""
    from icldistill.evaluation.harness import load_predictions

    stop: dict = {"n": None}
    monkeypatch.setattr(evaluation.FewShotScorer, "score", _fake_scores(stop))

    def harness(folder):
        return Harness(folder, tasks={"toy": toy}, model_loader=_loader, progress=False,
                       embedding_cache=tmp_path / "emb", reference_encoder="hidden:-1",
                       n_boot=20, batch_size=2)

    unit = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=12)
    fresh = harness(tmp_path / "fresh").run_unit(unit)
    want = load_predictions(tmp_path / "fresh")[fresh.key][0]
    # a unit with the same first 4 prompts fills the score store: rows 0-3 will be reused
    run = tmp_path / "run"
    harness(run).run_unit(UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=4))
    stop["n"] = 2                        # rows 4-7 scored, then interrupted
    with pytest.raises(_Interrupt):
        harness(run).run_unit(unit)
    stop["n"] = 1                        # rows 0-3 reused, 4-7 from partial/, 8-9 scored
    with pytest.raises(_Interrupt):
        harness(run).run_unit(unit)
    stop["n"] = None
    got = harness(run).run_unit(unit)
    assert got.key == fresh.key and got.n_reused >= 4
    # the scenario can tell: batch-local indices would have put rows 4-7 / 8-9's scores on
    # rows 0-3, whose predictions differ
    assert [want[i] for i in (8, 9, 6, 7)] != want[:4]
    assert load_predictions(run)[got.key][0] == want
    assert got.accuracy == fresh.accuracy


def test_a_torn_results_line_is_ignored(tmp_path, toy):
    h = _harness(tmp_path, toy)
    r = h.run_unit(UnitSpec("tiny", "toy", "random", k=2, encoder="hidden:-1", n_test=8))
    with h.results_path.open("a") as fh:
        fh.write('{"spec": {"model": "tin')
    assert [x.key for x in load_results(h.out_dir)] == [r.key]


def test_bad_units(tmp_path, toy):
    h = _harness(tmp_path, toy)
    with pytest.raises(InputError, match="larger than the pool"):
        h.run_unit(UnitSpec("tiny", "toy", "random", k=500, encoder="hidden:-1"))
    with pytest.raises(InputError, match="unknown selector"):
        h.run_unit(UnitSpec("tiny", "toy", "nearest", k=2, encoder="hidden:-1"))
    with pytest.raises(InputError, match="seeds and orderings"):
        unit_grid(models=["m"], tasks=["t"], selectors=["knn"], ks=[2], seeds=0)


@pytest.mark.parametrize(("kw", "message"), [
    ({"selectors": ["knn", "mmd", "knn"]}, "selector 'knn' is listed twice"),
    ({"selectors": ["KNN", "topk"]}, "selectors 'KNN' and 'topk' are the same ('knn')"),
    ({"selectors": ["vote-k", "vote_k"]}, "selectors 'vote-k' and 'vote_k' are the same"),
    ({"ks": [4, 8, 4]}, "k 4 is listed twice"),
    ({"tasks": ["t", "t"]}, "task 't' is listed twice"),
    ({"models": ["m", "m"]}, "model 'm' is listed twice"),
    ({"selectors": ["nearest"]}, "unknown selector 'nearest'"),
])
def test_unit_grid_refuses_repeated_names(kw, message):
    """Regression: a name listed twice ran its units twice and doubled their records."""
    args = {"models": ["m"], "tasks": ["t"], "selectors": ["knn"], "ks": [2], **kw}
    with pytest.raises(InputError, match=re.escape(message)):
        unit_grid(**args)


def test_selector_key_names_the_registry_entry():
    from icldistill.selection import SELECTORS, selector_key

    assert all(selector_key(n) == n for n in SELECTORS)
    assert [selector_key(n) for n in ("kate", "TopK", " fast_votek ", "mmd-set")] == [
        "knn", "knn", "vote-k", "mmd"]
    with pytest.raises(InputError, match="did you mean 'mmd-katt'"):
        selector_key("mmd-kat")


def test_orderings_shuffle_the_same_demonstrations(tmp_path, toy):
    h = _harness(tmp_path, toy)
    base = UnitSpec("tiny", "toy", "mmd", k=4, encoder="hidden:-1", n_test=8)
    shuffled = UnitSpec("tiny", "toy", "mmd", k=4, encoder="hidden:-1", n_test=8, ordering=1)
    a, b = h.run_unit(base), h.run_unit(shuffled)
    ia = json.loads((h.out_dir / "selections" / f"{a.key}.json").read_text())["indices"][0]
    ib = json.loads((h.out_dir / "selections" / f"{b.key}.json").read_text())["indices"][0]
    assert sorted(ia) == sorted(ib)
    assert a.mmd2_task == pytest.approx(b.mmd2_task)
    assert torch.get_default_dtype() == torch.float64  # conftest default untouched


def test_identical_prompts_are_scored_once_across_units(tmp_path, toy, monkeypatch):
    """MMR with lambda = 1 picks kNN's sets in kNN's order: its prompts are all read back."""
    knn = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=12)
    mmr = UnitSpec("tiny", "toy", "mmr", k=2, encoder="hidden:-1", n_test=12,
                   params=(("lambda_", 1.0),))
    real = evaluation.FewShotScorer.score
    counted: list[int] = []

    def counting(self, queries, *a, **kw):
        counted.append(len(queries))
        return real(self, queries, *a, **kw)

    monkeypatch.setattr(evaluation.FewShotScorer, "score", counting)
    h = _harness(tmp_path, toy)
    a = h.run_unit(knn)
    assert a.n_reused == 0 and counted == [12]
    b = _harness(tmp_path, toy).run_unit(mmr)          # a new harness reads the store back

    def shown(r):
        return json.loads((h.out_dir / "selections" / f"{r.key}.json").read_text())["indices"]

    assert shown(b) == shown(a)
    assert b.n_reused == 12 and counted == [12]         # nothing scored for the second unit
    assert b.n_tokens == 0
    # same numbers as scoring the prompts afresh
    fresh = _harness(tmp_path / "fresh", toy).run_unit(mmr)
    assert fresh.n_reused == 0
    assert b.accuracy == fresh.accuracy and b.macro_f1 == fresh.macro_f1
    store = list((h.out_dir / "scores").glob("*.jsonl"))
    assert len(store) == 1 and store[0].name.startswith("tiny-")
    # a torn store line is ignored; calibrated units neither read nor write the store
    with store[0].open("a") as fh:
        fh.write('{"h": ["abc')
    cal = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=12, calibrate=True)
    lines = len(store[0].read_text().splitlines())
    c = _harness(tmp_path, toy).run_unit(cal)
    assert c.n_reused == 0 and counted[-1] == 12
    assert len(store[0].read_text().splitlines()) == lines


def test_units_in_bfloat16_load_the_model_in_that_precision(tmp_path, toy):
    from icldistill.models import float32_head

    asked: list = []

    def loader(name, dtype=torch.float32):
        asked.append(dtype)
        model = tiny_model("llama", dtype=dtype)
        if dtype != torch.float32:
            float32_head(model)
        return SimpleNamespace(model=model, tokenizer=tiny_tokenizer(True))

    units = unit_grid(models=["tiny"], tasks=["toy"], selectors=["mmd", "knn"], ks=[2],
                      encoder="hidden:-1", n_test=8, dtype="bfloat16")
    fp32 = unit_grid(models=["tiny"], tasks=["toy"], selectors=["mmd", "knn"], ks=[2],
                     encoder="hidden:-1", n_test=8)
    assert all(u.dtype == "bfloat16" for u in units)
    assert {u.key("f") for u in units}.isdisjoint(u.key("f") for u in fp32)
    h = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=loader, progress=False,
                embedding_cache=tmp_path / "emb", reference_encoder="hidden:-1", n_boot=20)
    res = h.run(units + fp32)
    assert set(asked) == {torch.float32, torch.bfloat16}
    assert {r.spec.model_label for r in res} == {"tiny", "tiny (bfloat16)"}
    # the two precisions keep separate score stores (a prompt's scores depend on precision)
    stores = sorted(p.name for p in (h.out_dir / "scores").glob("*.jsonl"))
    assert len(stores) == 2
    from icldistill.reporting.reports import write_comparison_report

    rep = write_comparison_report(res, tmp_path / "rep")
    assert "tiny (bfloat16) k=2" in rep.markdown.read_text()


def test_float32_unit_keys_are_unchanged_by_the_dtype_field():
    # literal keys computed before UnitSpec had a dtype: recorded results must stay valid
    assert UnitSpec("qwen2.5-0.5b", "amazon", "mmd", 4, 0, 0, "minilm", False, 200,
                    ()).key("abc") == "56692b7526a1e204b1e1"
    assert UnitSpec("m", "t", "random", 8, 2, 1, "minilm", True, None,
                    (("landmarks", 4),)).key("") == "c20491a16df2e1d2f059"
    with pytest.raises(InputError, match="unknown dtype"):
        UnitSpec("m", "t", "mmd", 4, dtype="int8")


def test_pool_size_caps_the_pool_stratified_and_keeps_the_test_items():
    full = Task.from_registry("amazon", progress=False)
    cap = Task.from_registry("amazon", pool_size=100, progress=False)
    assert len(cap.split.train) == 100
    assert list(cap.split.test.texts) == list(full.split.test.texts)
    assert set(cap.split.train.texts) <= set(full.split.train.texts)
    counts = cap.split.train.label_counts()
    assert abs(counts["negative"] - counts["positive"]) <= 2
    assert cap.fingerprint != full.fingerprint
    again = Task.from_registry("amazon", pool_size=100, progress=False)
    assert again.fingerprint == cap.fingerprint
    big = Task.from_registry("amazon", pool_size=10**6, progress=False)
    assert big.fingerprint == full.fingerprint
    with pytest.raises(InputError, match="pool_size"):
        Task.from_registry("amazon", pool_size=0, progress=False)


def test_mmd2_query_is_the_mean_of_per_query_mmd2_brute_force(tmp_path, toy):
    """mmd2_query = mean_q MMD^2(S_q, {q}) with the biased estimator, checked against an
    explicit per-query computation (catches a lost factor 2 in the cross term)."""
    from icldistill.core.mmd import mmd

    h = _harness(tmp_path, toy)
    rng = np.random.default_rng(0)
    n_pool = len(toy.split.train)
    test_idx = np.arange(6)
    idx = np.stack([rng.choice(n_pool, 3, replace=False) for _ in test_idx])
    got = h.mmd_to_task(toy, "tiny", idx, test_idx, shared=False)
    got_task, got_query = got.mmd2_task, got.mmd2_query
    kern = h.reference_kernel(toy, "tiny")
    pool = torch.as_tensor(h.embeddings(toy, "train", "hidden:-1", "tiny"), dtype=torch.float64)
    test = torch.as_tensor(h.embeddings(toy, "test", "hidden:-1", "tiny"), dtype=torch.float64)
    per = []
    for i, row in zip(test_idx, idx, strict=True):
        s, q = pool[row], test[i : i + 1]
        brute = (kern(s, s).mean() - 2 * kern(s, q).mean() + kern(q, q).mean()).item()
        assert brute == pytest.approx(float(mmd(s, q, kern, "biased")), rel=1e-9, abs=1e-12)
        per.append(brute)
    assert got_query == pytest.approx(float(np.mean(per)), rel=1e-9, abs=1e-12)
    shown = pool[torch.as_tensor(idx.reshape(-1))]
    assert got_task == pytest.approx(float(mmd(shown, test[:6], kern, "biased")), rel=1e-9)
    # shared set: the per-query term uses the one set for every query
    shared_q = h.mmd_to_task(toy, "tiny", idx[:1], test_idx, shared=True).mmd2_query
    s = pool[torch.as_tensor(idx[0])]
    per = [(kern(s, s).mean() - 2 * kern(s, test[i : i + 1]).mean() + 1.0).item()
           for i in test_idx]
    assert shared_q == pytest.approx(float(np.mean(per)), rel=1e-9)


def test_model_space_encoders_encode_only_the_scored_test_items(tmp_path, toy, monkeypatch):
    """A hidden/kv representation is a forward pass per text: a unit encodes its n_test test
    items, not the whole test split (r8: 300 of 2,172), with the same values up to rounding."""
    from icldistill.encoders import representations as reps

    seen = []
    real = reps.encode_cached

    def spy(enc, texts, *args, **kwargs):
        seen.append((enc.name, len(texts)))
        return real(enc, texts, *args, **kwargs)

    monkeypatch.setattr(reps, "encode_cached", spy)
    h = _harness(tmp_path, toy)
    n_pool, n_split = len(toy.split.train), len(toy.split.test)
    assert n_split > 6
    h.run_unit(UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=6))
    # pool, the 6 scored test items (selection); the whole split only for the task-MMD
    # reference, which is hidden:-1 in this harness
    assert sorted(n for _, n in seen) == sorted([n_pool, 6, n_split])
    seen.clear()
    h.run_unit(UnitSpec("tiny", "toy", "mmr", k=2, encoder="hidden:-1", n_test=6))
    assert seen == []                                  # everything reused
    part = h.embeddings(toy, "test", "hidden:-1", "tiny", n=6)
    full = h.embeddings(toy, "test", "hidden:-1", "tiny")
    assert part.shape == (6, full.shape[1])
    np.testing.assert_allclose(part, full[:6], rtol=1e-4, atol=1e-5)
    assert h.embeddings(toy, "test", "hidden:-1", "tiny", n=0).shape == (0, full.shape[1])


def test_finished_units_are_imported_verbatim_from_another_folder(tmp_path, toy, monkeypatch):
    a = _harness(tmp_path, toy)
    knn = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=8)
    rnd = UnitSpec("tiny", "toy", "random", k=2, encoder="hidden:-1", n_test=8)
    other = UnitSpec("tiny", "toy", "mmd", k=2, encoder="hidden:-1", n_test=8)
    first = {r.key: r for r in a.run([knn, rnd])}
    b = Harness(tmp_path / "b", tasks={"toy": toy}, model_loader=_loader, progress=False,
                embedding_cache=tmp_path / "emb", reference_encoder="hidden:-1", n_boot=50,
                batch_size=4)
    copied = b.import_finished(a.out_dir, [knn, other, rnd])
    assert copied == [knn, rnd]                 # mmd was never run in a: left to compute
    assert b.import_finished(a.out_dir, [knn, rnd]) == []     # already finished in b

    def boom(*args, **kwargs):
        raise AssertionError("an imported unit was recomputed")

    monkeypatch.setattr(Harness, "_compute_unit", boom)
    again = b.run([knn, rnd])
    for r in again:
        assert r == first[r.key]
    preds_a = {json.loads(x)["key"]: x for x in (a.out_dir / "predictions.jsonl").open()}
    preds_b = {json.loads(x)["key"]: x for x in (b.out_dir / "predictions.jsonl").open()}
    assert preds_a == preds_b
    for key in first:
        assert (json.loads((b.out_dir / "selections" / f"{key}.json").read_text())
                == json.loads((a.out_dir / "selections" / f"{key}.json").read_text()))
    with pytest.raises(InputError, match="own folder"):
        a.import_finished(a.out_dir, [knn])
    with pytest.raises(InputError, match=r"no results\.jsonl"):
        a.import_finished(tmp_path / "nowhere", [knn])


def test_selections_from_gives_another_model_exactly_the_same_prompts(tmp_path, toy,
                                                                     monkeypatch):
    # the trained model selects on its own hidden states; a twin with other weights must read
    # the very same demonstrations, not select again on its own (random) hidden states
    a = _harness(tmp_path, toy)
    units = [UnitSpec("tiny", "toy", sel, k=2, encoder="hidden:-1", n_test=8)
             for sel in ("knn", "mmd", "mmd-local")]
    a.run(units)

    def twin(name):
        return SimpleNamespace(model=tiny_model("llama", seed=7), tokenizer=tiny_tokenizer(True))

    def never(*args, **kwargs):
        raise AssertionError("a selector ran although the selections are imported")

    monkeypatch.setattr(Harness, "select", never)
    b = Harness(tmp_path / "twin", tasks={"toy": toy}, model_loader=twin, progress=False,
                embedding_cache=tmp_path / "emb-twin", reference_encoder="hidden:-1",
                n_boot=50, batch_size=4, selections_from=a.out_dir)
    for r in b.run(units):
        mine = json.loads((b.out_dir / "selections" / f"{r.key}.json").read_text())
        theirs = json.loads((a.out_dir / "selections" / f"{r.key}.json").read_text())
        assert mine["indices"] == theirs["indices"] and mine["shared"] == theirs["shared"]
    with pytest.raises(InputError, match="no selection of dpp"):
        b.run_unit(UnitSpec("tiny", "toy", "dpp", k=2, encoder="hidden:-1", n_test=8))
    with pytest.raises(InputError, match="another results folder"):
        _harness(tmp_path, toy, selections_from=tmp_path / "run")
    with pytest.raises(InputError, match="no selections/ folder"):
        _harness(tmp_path, toy, selections_from=tmp_path / "nowhere")
    # a record under the wrong name (another unit's selection) is refused
    knn_key = units[0].key(toy.fingerprint)
    mmd_key = units[1].key(toy.fingerprint)
    path = a.out_dir / "selections" / f"{knn_key}.json"
    path.write_text((a.out_dir / "selections" / f"{mmd_key}.json").read_text())
    c = Harness(tmp_path / "c", tasks={"toy": toy}, model_loader=twin, progress=False,
                embedding_cache=tmp_path / "emb-twin", reference_encoder="hidden:-1",
                n_boot=50, batch_size=4, selections_from=a.out_dir)
    with pytest.raises(InputError, match="another unit"):
        c.run_unit(units[0])


def test_label_coverage_matches_a_brute_force_reading_of_the_prompts(tmp_path, toy):
    """Whether each item's label is among its demonstrations, read back from the rendered
    prompts (an independent path: the text the model saw), and correctness from the
    predictions."""
    units = unit_grid(models=["tiny"], tasks=["toy"], selectors=["random", "knn"], ks=[2],
                      seeds=1, encoder="hidden:-1", n_test=12)
    h = _harness(tmp_path, toy)
    results = h.run(units)
    cov = h.label_coverage(results)
    assert set(cov) == {r.key for r in results}
    preds = json.loads((h.out_dir / "predictions.jsonl").read_text().splitlines()[0])
    words = toy.split.train.format.label_words          # label -> verbalised word
    by_word = {v: k for k, v in words.items()}
    for r in results:
        c = cov[r.key]
        assert c.shown.shape == c.share.shape == c.correct.shape == (12,)
        sel = h.select(r.spec, toy, np.arange(12))
        demo_rows = np.broadcast_to(sel.indices[:1], (12, 2)) if sel.shared else sel.indices
        for i in range(12):
            gold = str(toy.split.test.labels[i])
            text = "".join(f"Input: {toy.split.train.texts[j]}\nLabel: "
                           f"{words[str(toy.split.train.labels[j])]}\n\n" for j in demo_rows[i])
            shown_words = [line.split(": ", 1)[1] for line in text.splitlines()
                           if line.startswith("Label: ")]
            labels = [by_word[w] for w in shown_words]
            assert c.shown[i] == (gold in labels)
            assert c.share[i] == pytest.approx(labels.count(gold) / 2)
            counts = {lab: labels.count(lab) for lab in labels}
            top = [lab for lab, n in counts.items() if n == max(counts.values())]
            assert c.vote[i] == pytest.approx(1 / len(top) if gold in top else 0.0)
    first = next(r for r in results if r.key == preds["key"])
    assert cov[first.key].correct.tolist() == [p == t for p, t in
                                              zip(preds["pred"], preds["truth"], strict=True)]


def test_label_coverage_refuses_results_of_other_task_data(tmp_path, toy):
    spec = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=12)
    h = _harness(tmp_path, toy)
    r = h.run_unit(spec)
    other = _write_task(tmp_path / "other.jsonl", seed=5)       # same name, other items
    h2 = Harness(h.out_dir, tasks={"toy": other}, model_loader=_loader, progress=False)
    with pytest.raises(InputError, match="computed on other data than task 'toy'"):
        h2.label_coverage([r])
    # a unit without its selection record is left out, not guessed
    (h.out_dir / "selections" / f"{r.key}.json").unlink()
    assert h.label_coverage([r]) == {}


def _rate_of(results, partials, model, k, shared):
    """Brute force: the median seconds per scored item over the finished results (one rate
    each) and partial files (the median of their batches' rates) of one (model, toy, k, kind)
    group."""
    rates = [r.scoring_seconds / (r.n - r.n_reused) for r in results
             if (r.spec.model, r.spec.k, r.shared) == (model, k, shared)]
    for spec, path in partials:
        if (spec.model, spec.k) == (model, k) and not shared:
            recs = [json.loads(x) for x in path.read_text().splitlines()]
            rates.append(float(np.median([r["seconds"] / len(r["i"]) for r in recs])))
    return float(np.median(rates))


def test_status_counts_states_and_estimates_the_time_left(tmp_path, toy, monkeypatch):
    import subprocess
    import sys

    from icldistill.evaluation import GridStatus

    n = 16
    kw = {"encoder": "hidden:-1", "n_test": n}
    a_knn = UnitSpec("a", "toy", "knn", k=2, **kw)
    a_rnd = UnitSpec("a", "toy", "random", k=2, **kw)
    b_knn = UnitSpec("b", "toy", "knn", k=2, **kw)
    a_mmr = UnitSpec("a", "toy", "mmr", k=2, **kw)       # interrupted: partial
    a_bm25 = UnitSpec("a", "toy", "bm25", k=2, **kw)     # to do, group timed
    a_dpp = UnitSpec("a", "toy", "dpp", k=4, **kw)       # to do, other k scaled
    b_rnd = UnitSpec("b", "toy", "random", k=2, **kw)    # to do, another model x speed ratio
    a_held = UnitSpec("a", "toy", "knn", k=3, **kw)      # another process holds its lock
    h = _harness(tmp_path, toy)
    results = h.run([a_knn, a_rnd, b_knn])
    monkeypatch.setattr(evaluation.FewShotScorer, "score", _fake_scores({"n": 2}))
    with pytest.raises(_Interrupt):
        h.run_unit(a_mmr)
    monkeypatch.undo()
    key = {u: u.key(toy.fingerprint) for u in (a_mmr, a_held)}
    partial = h.out_dir / "partial" / f"{key[a_mmr]}.jsonl"
    # the fake scorer timed nothing: give its batches a duration, as the real one records
    recs = [json.loads(x) for x in partial.read_text().splitlines()]
    partial.write_text("".join(json.dumps({**r, "seconds": 0.5}) + "\n" for r in recs))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom icldistill.artifacts.store import unit_lock\n"
         f"with unit_lock({str(h.out_dir)!r}, {key[a_held]!r}):\n"
         "    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        st = _harness(tmp_path, toy).status(
            [a_knn, a_rnd, b_knn, a_mmr, a_bm25, a_dpp, b_rnd, a_held])
    finally:
        holder.kill()
        holder.wait()
    assert isinstance(st, GridStatus)
    by = {u.spec: u for u in st.units}
    assert [u.spec for u in st.units] == [a_knn, a_rnd, b_knn, a_mmr, a_bm25, a_dpp, b_rnd,
                                          a_held]
    assert [by[u].state for u in (a_knn, a_rnd, b_knn)] == ["done"] * 3
    assert all(by[u].seconds_left == 0.0 and by[u].n_scored == n for u in (a_knn, b_knn))
    assert by[a_mmr].state == "partial" and by[a_mmr].n_scored == 8
    assert by[a_held].state == "running" and by[a_bm25].state == by[b_rnd].state == "todo"
    assert (st.count("done"), st.count("running"), st.count("partial"), st.count("todo")) == (
        3, 1, 1, 3)
    # its own batches: 8 items in 2 x 0.5 s, 8 left
    assert by[a_mmr].seconds_left == pytest.approx(1.0 / 8 * 8)
    parts = [(a_mmr, partial)]
    pq = _rate_of(results, parts, "a", 2, False)
    assert by[a_bm25].seconds_left == pytest.approx(pq * n)
    assert by[a_held].seconds_left == pytest.approx(pq * 4 / 3 * n)     # nearest k=2, (3+1)/(2+1)
    assert by[a_dpp].seconds_left == pytest.approx(pq * 5 / 3 * n)
    # b has no shared prompt timed: a's shared rate x (b's per-query rate / a's), no shared
    # (task, k) being timed on both
    ratio = _rate_of(results, [], "b", 2, False) / pq
    assert by[b_rnd].seconds_left == pytest.approx(_rate_of(results, [], "a", 2, True) * ratio
                                                   * n)
    assert st.n_unestimated == 0
    assert st.seconds_left == pytest.approx(sum(u.seconds_left for u in st.units))
    text = st.summary(workers=2)
    assert "8 units: 3 done, 1 running, 1 partial, 3 to do" in text
    assert re.search(r"^total\s+3\s+1\s+1\s+3\s+" + str(8 + 3 * n + n) + r"\s", text, re.M)
    assert f"about {st.seconds_left / 3600 / 2:.1f} h" in text
    with pytest.raises(InputError, match="workers"):
        st.summary(workers=0)
    with pytest.raises(InputError, match="unknown unit state 'finished'"):
        st.count("finished")
    json.dumps(st.to_dict())


def test_status_without_anything_comparable_timed_says_so(tmp_path, toy):
    st = _harness(tmp_path, toy).status([UnitSpec("a", "toy", "knn", k=2, n_test=5)])
    (u,) = st.units
    assert (u.state, u.n, u.n_scored, u.seconds_left) == ("todo", 5, 0, None)
    assert st.n_unestimated == 1 and st.seconds_left == 0.0
    assert "(+1 units not estimated)" in st.summary()


def test_status_of_a_control_is_timed_by_the_folder_whose_prompts_it_reads(tmp_path, toy):
    """A random-init control reads the trained folder's prompts on the same architecture:
    before any of its own units is timed, the trained units time it (same keys); once one of
    its own is, its own rates come first."""
    from icldistill.evaluation.status import ScoringRates

    kw = {"encoder": "hidden:-1", "n_test": 8}
    knn, rnd = UnitSpec("a", "toy", "knn", k=2, **kw), UnitSpec("a", "toy", "random", k=2, **kw)
    trained = _harness(tmp_path / "t", toy)
    res = {r.spec: r for r in trained.run([knn, rnd])}
    (tmp_path / "c" / "run").mkdir(parents=True)
    assert _harness(tmp_path / "c", toy).status([knn, rnd]).n_unestimated == 2
    st = _harness(tmp_path / "c", toy, selections_from=trained.out_dir).status([knn, rnd])
    assert st.n_unestimated == 0
    for got, u in zip(st.units, (knn, rnd), strict=True):    # an independent computation
        r = res[u]
        assert got.state == "todo"
        assert got.seconds_left == pytest.approx(r.scoring_seconds / (r.n - r.n_reused) * 8)
    # its own finished unit comes first: the control's knn times its own per-query prompts
    control = _harness(tmp_path / "c", toy, selections_from=trained.out_dir)
    (mine,) = control.run([knn])
    rates = ScoringRates()
    rates.add(knn, mine.shared, mine.scoring_seconds, mine.n - mine.n_reused)
    st2 = control.status([knn, rnd, UnitSpec("a", "toy", "bm25", k=2, **kw)])
    assert st2.units[0].state == "done" and st2.n_unestimated == 0
    assert st2.units[2].seconds_left == pytest.approx(rates.of(knn) * 8)


def test_status_rates_are_medians_so_a_paused_unit_does_not_inflate_them():
    """A unit's clock runs on while its process is stopped: one such unit must not multiply
    the estimate of every unit like it."""
    from icldistill.evaluation.status import ScoringRates

    rates = ScoringRates()
    u = UnitSpec("m", "t", "knn", k=4)
    for seconds in (10.0, 11.0, 12.0, 4000.0):         # the last one was paused mid-run
        rates.add(u, False, seconds, 10)
    assert rates.of(UnitSpec("m", "t", "bm25", k=4)) == pytest.approx(1.15)
    assert rates.of(UnitSpec("m", "t", "bm25", k=9)) == pytest.approx(1.15 * 10 / 5)
    assert rates.of(UnitSpec("m", "t", "random", k=4)) is None     # shared: nothing timed
    rates.add(u, False, 0.0, 10)                        # untimed records are ignored
    rates.add(u, False, 5.0, 0)
    assert rates.of(UnitSpec("m", "t", "bm25", k=4)) == pytest.approx(1.15)


@given(st.lists(st.tuples(st.sampled_from(["m1", "m2"]), st.sampled_from([2, 4]),
                          st.sampled_from(["done", "running", "partial", "todo"]),
                          st.integers(1, 50), st.integers(0, 50),
                          st.one_of(st.none(), st.floats(0, 1e5))), max_size=30))
def test_status_summary_rows_add_up_to_the_total(rows):
    from icldistill.evaluation import GridStatus, UnitStatus

    units = []
    for i, (m, k, state, n, scored, sec) in enumerate(rows):
        scored = n if state == "done" else min(scored, n)
        units.append(UnitStatus(UnitSpec(m, "t", "knn", k=k, seed=i), str(i), state, n, scored,
                                0.0 if state == "done" else sec))
    gs = GridStatus("out", tuple(units))
    lines = gs.summary().splitlines()
    body = [ln.split() for ln in lines[2:] if ln.startswith(("m1", "m2", "total"))]
    groups, (total,) = body[:-1], body[-1:]
    assert len(groups) == len({(m, k) for m, k, *_ in rows})
    for col in range(4):              # done, running, partial, to do
        assert sum(int(g[2 + col]) for g in groups) == int(total[1 + col])
        assert int(total[1 + col]) == gs.count(("done", "running", "partial", "todo")[col])
    assert int(total[5]) == sum(u.n - u.n_scored for u in units)
    if total[6] == "?":            # no unfinished unit has an estimate
        assert gs.n_unestimated and not any(u.seconds_left is not None and u.state != "done"
                                            for u in units)
    else:
        assert float(total[6]) == pytest.approx(round(gs.seconds_left / 3600, 1), abs=0.051)
    assert gs.n_unestimated == sum(u.seconds_left is None for u in units)


def test_reference_kernel_is_per_model_in_a_model_space(tmp_path, toy):
    """Regression: the reference kernel was cached per task only, so with a model-space
    reference encoder a second model's MMD² used the first model's bandwidth."""
    models = {"a": tiny_model("llama", seed=0), "b": tiny_model("llama", seed=1)}
    with torch.no_grad():                       # a different scale of hidden states
        for p in models["b"].model.norm.parameters():
            p.mul_(5.0)

    def loader(name, **_kw):
        return SimpleNamespace(model=models[name], tokenizer=tiny_tokenizer(True))

    def harness(out):
        return Harness(tmp_path / out, tasks={"toy": toy}, model_loader=loader, progress=False,
                       embedding_cache=tmp_path / "emb", reference_encoder="hidden:-1")

    idx = np.array([[0, 1, 2, 3]])
    test_idx = np.arange(6)
    both = harness("both")
    both.mmd_to_task(toy, "a", idx, test_idx, shared=True)
    after_a = both.mmd_to_task(toy, "b", idx, test_idx, shared=True)
    alone = harness("alone").mmd_to_task(toy, "b", idx, test_idx, shared=True)
    assert after_a.mmd2_task == pytest.approx(alone.mmd2_task, rel=1e-12, abs=1e-15)
    assert after_a.mmd2_query == pytest.approx(alone.mmd2_query, rel=1e-12, abs=1e-15)


def test_a_folder_keeps_the_reference_encoder_of_its_mmd(tmp_path, toy):
    """A results folder names the reference encoder of its MMD² values; a harness (or an
    import) with another one is refused instead of mixing incomparable values."""
    from icldistill.evaluation.harness import recorded_reference

    units = unit_grid(models=["tiny"], tasks=["toy"], selectors=["random"], ks=[2], n_test=6)
    h = _harness(tmp_path, toy)
    assert recorded_reference(h.out_dir) is None
    h.run(units)
    assert recorded_reference(h.out_dir) == "hidden:-1"
    assert json.loads((h.out_dir / "reference.json").read_text()) == {
        "reference_encoder": "hidden:-1"}
    _harness(tmp_path, toy)                                 # the same reference: fine
    with pytest.raises(InputError, match=r"reference encoder 'hidden:-1'.*uses 'minilm'"):
        Harness(h.out_dir, tasks={"toy": toy}, model_loader=_loader, progress=False,
                reference_encoder="minilm")
    # a harness that names none takes the folder's (e.g. to read its status)
    assert Harness(h.out_dir, tasks={"toy": toy}, model_loader=_loader,
                   progress=False).reference_encoder == "hidden:-1"
    other = Harness(tmp_path / "other", tasks={"toy": toy}, model_loader=_loader,
                    progress=False, embedding_cache=tmp_path / "emb")
    with pytest.raises(InputError, match="reference encoder"):
        other.import_finished(h.out_dir, units)
    assert not (tmp_path / "other" / "results.jsonl").exists()


def test_a_folder_from_before_the_reference_file_is_minilm(tmp_path, toy):
    from icldistill.evaluation.harness import recorded_reference

    units = unit_grid(models=["tiny"], tasks=["toy"], selectors=["random"], ks=[2], n_test=6)
    h = _harness(tmp_path, toy)
    h.run(units)
    (h.out_dir / "reference.json").unlink()                 # as an older release wrote it
    assert recorded_reference(h.out_dir) == "minilm"
    with pytest.raises(InputError, match="'minilm'"):
        _harness(tmp_path, toy)
    (h.out_dir / "reference.json").write_text("{not json")
    with pytest.raises(InputError, match=r"reference\.json: unreadable"):
        recorded_reference(h.out_dir)


def test_import_copies_the_selection_before_marking_the_unit_finished(tmp_path, toy,
                                                                        monkeypatch):
    """Regression: the results line (finished) was written before the selection was copied,
    so a kill in between left a finished unit without its selection, never imported again."""
    from icldistill.evaluation import harness as hmod

    a = _harness(tmp_path, toy)
    knn = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=8)
    a.run([knn])
    b = Harness(tmp_path / "b", tasks={"toy": toy}, model_loader=_loader, progress=False,
                embedding_cache=tmp_path / "emb", reference_encoder="hidden:-1", n_boot=50,
                batch_size=4)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while copying the selection")

    real = hmod.write_json
    monkeypatch.setattr(hmod, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        b.import_finished(a.out_dir, [knn])
    assert b.finished() == {}                     # not finished: imported again next time
    monkeypatch.setattr(hmod, "write_json", real)
    assert b.import_finished(a.out_dir, [knn]) == [knn]
    assert (b.out_dir / "selections" / f"{knn.key(toy.fingerprint)}.json").is_file()


def test_nan_label_scores_are_an_error_not_a_result(tmp_path, toy):
    """Regression: argmax read a NaN row as its first label, so a model whose logits
    overflowed gave a normal-looking accuracy."""
    def nan_loader(name, **kw):
        m = tiny_model("llama")
        with torch.no_grad():
            m.lm_head.weight[:, 0] = float("nan")
        return SimpleNamespace(model=m, tokenizer=tiny_tokenizer(True))

    h = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=nan_loader, progress=False,
                embedding_cache=tmp_path / "emb", n_boot=20, batch_size=4)
    with pytest.raises(FloatingPointError, match=r"label scores are NaN for 8 of 8 test items"):
        h.run_unit(UnitSpec("tiny", "toy", "random", k=2, n_test=8))
    assert load_results(h.out_dir) == []


@pytest.mark.parametrize("alias", ["mmd_katt", "MMD-KATT", " mmd-katt "])
def test_selector_aliases_are_the_registry_name(alias):
    """Regression: 'mmd_katt' kept its spelling, lost mmd-katt's preferred encoder (K_att) and
    ran on MiniLM under a key of its own; 'Random' got one seed instead of three."""
    assert UnitSpec("m", "t", alias, 2) == UnitSpec("m", "t", "mmd-katt", 2)
    assert UnitSpec("m", "t", alias, 2).key("f") == UnitSpec("m", "t", "mmd-katt", 2).key("f")
    assert len(unit_grid(models=["m"], tasks=["t"], selectors=["Random"], ks=[2], seeds=3)) == 3
    assert UnitSpec("m", "t", "no-such-selector", 2).selector == "no-such-selector"


def test_selections_from_refuses_a_unit_recorded_on_other_demonstrations(tmp_path, toy):
    """Regression: the key does not say where the demonstrations came from, so a folder first
    run on its own selections returned that result under selections_from, and an interrupted
    unit's scored batches were mixed with rows scored on the source's prompts."""
    def twin(name):
        return SimpleNamespace(model=tiny_model("llama", seed=7), tokenizer=tiny_tokenizer(True))

    knn = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=8)
    a = _harness(tmp_path, toy)
    a.run([knn])

    def folder(**kw):
        return Harness(tmp_path / "twin", tasks={"toy": toy}, model_loader=twin, progress=False,
                       embedding_cache=tmp_path / "emb-twin", reference_encoder="hidden:-1",
                       n_boot=50, batch_size=4, **kw)

    folder().run([knn])                           # the twin selects on its own hidden states
    key = knn.key(toy.fingerprint)
    own = json.loads((tmp_path / "twin" / "selections" / f"{key}.json").read_text())
    src = json.loads((a.out_dir / "selections" / f"{key}.json").read_text())
    assert own["indices"] != src["indices"]       # the premise: other demonstrations
    with pytest.raises(InputError, match="its recorded result comes from them"):
        folder(selections_from=a.out_dir).run_unit(knn)
    (tmp_path / "twin" / "results.jsonl").unlink()    # as if killed mid-unit
    with pytest.raises(InputError, match="its partly scored batches come from them"):
        folder(selections_from=a.out_dir).run_unit(knn)
    # a folder whose units took the source's selections runs on
    b = Harness(tmp_path / "b", tasks={"toy": toy}, model_loader=twin, progress=False,
                embedding_cache=tmp_path / "emb-twin", reference_encoder="hidden:-1",
                n_boot=50, batch_size=4, selections_from=a.out_dir)
    first = b.run_unit(knn)
    assert b.run_unit(knn) == first


def test_two_harnesses_starting_a_folder_cannot_both_name_its_reference(tmp_path, toy,
                                                                          monkeypatch):
    """Regression: reference.json was overwritten, so two workers starting a fresh folder with
    different reference encoders could each read back their own and record results under both.
    Here the other worker writes it between this one's check and its write."""
    from icldistill.artifacts.store import write_json
    from icldistill.evaluation import harness as hmod

    h = _harness(tmp_path, toy)                    # reference hidden:-1, folder still empty
    real = hmod.recorded_reference

    def other_worker_first(folder):
        seen = real(folder)                        # nothing recorded yet ...
        # ... and the other worker writes its reference right after this one looked
        write_json(tmp_path / "run" / hmod.REFERENCE_FILE, {"reference_encoder": "minilm"})
        monkeypatch.setattr(hmod, "recorded_reference", real)
        return seen

    monkeypatch.setattr(hmod, "recorded_reference", other_worker_first)
    with pytest.raises(InputError, match="minilm"):
        h._mark_reference()
    assert hmod.recorded_reference(tmp_path / "run") == "minilm"


def _named_loader(weights):
    def load(name, **kw):
        return _loader(name)

    load.weights = weights
    return load


def test_a_folder_holds_one_kind_of_weights(tmp_path, toy):
    """Regression: a unit's key names its model, not its weights, so a random-init twin's
    harness pointed at the trained model's folder read the trained results back as its own
    (and import_finished copied them across). The folder now records its weights."""
    from icldistill.evaluation.harness import recorded_weights
    from icldistill.lab.experiments.phenomena import twin_loader

    assert twin_loader(3).weights == "random-init seed 3"
    knn = UnitSpec("tiny", "toy", "knn", k=2, encoder="hidden:-1", n_test=8)

    def harness(folder, weights):
        loader = _loader if weights is None else _named_loader(weights)
        return Harness(tmp_path / folder, tasks={"toy": toy}, model_loader=loader,
                       progress=False, embedding_cache=tmp_path / "emb",
                       reference_encoder="hidden:-1", n_boot=50, batch_size=4)

    trained = harness("trained", "pretrained")
    assert recorded_weights(trained.out_dir) is None          # nothing recorded yet
    trained.run([knn])
    assert recorded_weights(trained.out_dir) == "pretrained"
    # the twin is refused before it reads anything (its unit is finished there, so it would
    # have been read back without loading a model)
    with pytest.raises(InputError, match=r"ran on pretrained weights.*random-init seed 1"):
        harness("trained", "random-init seed 1").run([knn])
    # reading the folder for its coverage or status is not running its units
    results = harness("trained", "random-init seed 1").label_coverage(load_results(
        trained.out_dir))
    assert len(results) == 1
    harness("trained", None).run([knn])       # a loader that does not say: not checked
    # import_finished: neither into a twin's folder nor from one
    twin = harness("twin", "random-init seed 1")
    with pytest.raises(InputError, match="ran on pretrained weights"):
        twin.import_finished(trained.out_dir, [knn])
    twin.run([knn])
    assert recorded_weights(twin.out_dir) == "random-init seed 1"
    unnamed = harness("unnamed", None)
    unnamed.import_finished(twin.out_dir, [knn])          # the copy carries no record ...
    assert recorded_weights(unnamed.out_dir) is None
    with pytest.raises(InputError, match="random-init seed 1 weights"):
        # ... but a folder with a record refuses a source with another one
        harness("trained", "pretrained").import_finished(twin.out_dir, [knn])
    bad = _named_loader("")
    with pytest.raises(InputError, match=r"model_loader\.weights"):
        Harness(tmp_path / "bad", tasks={"toy": toy}, model_loader=bad, progress=False)


@pytest.mark.parametrize("field,value", [("k", 0), ("k", True), ("k", 2.5), ("seed", -1),
                                         ("ordering", -1), ("n_test", 0), ("n_test", 1.5)])
def test_a_unit_spec_refuses_bad_numbers(field, value):
    """Regression: k = 0 failed inside the selector, after the grid had loaded its model."""
    kw = {"model": "m", "task": "t", "selector": "knn", "k": 4, field: value}
    with pytest.raises(InputError, match=f"UnitSpec.{field} must be an integer"):
        UnitSpec(**kw)
    spec = UnitSpec("m", "t", "knn", np.int64(4), n_test=np.int64(30))
    assert type(spec.k) is int and type(spec.n_test) is int
    assert spec == UnitSpec("m", "t", "knn", 4, n_test=30)
