"""The LangChain and DSPy adapters, against the real langchain-core and dspy packages.

A tiny deterministic encoder (hashed bag of words) keeps these tests fast and independent of
model weights; one test runs the default MiniLM encoder when its weights are available.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from icldistill import InputError, Pool, make_selector
from icldistill.encoders.representations import Encoder, MiniLMEncoder, fetch_minilm
from icldistill.selection import tokenize

pytest.importorskip("langchain_core")
dspy = pytest.importorskip("dspy")

from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate  # noqa: E402

from icldistill.adapters.dspy import ICLDistillFewShot  # noqa: E402
from icldistill.adapters.langchain import ICLDistillExampleSelector  # noqa: E402

EXAMPLES = [
    {"text": "a delightful film with a charming cast", "label": "positive"},
    {"text": "tedious, long and badly acted", "label": "negative"},
    {"text": "the best movie of the year, moving and funny", "label": "positive"},
    {"text": "a boring plot and a dull script", "label": "negative"},
    {"text": "charming story, lovely music", "label": "positive"},
    {"text": "i walked out after an hour, awful", "label": "negative"},
    {"text": "great performances and a clever script", "label": "positive"},
    {"text": "the jokes fall flat and the pacing drags", "label": "negative"},
    {"text": "a warm and funny family film", "label": "positive"},
    {"text": "predictable, loud and far too long", "label": "negative"},
    {"text": "beautifully shot and deeply moving", "label": "positive"},
    {"text": "the worst script i have seen in years", "label": "negative"},
]
TEXTS = [e["text"] for e in EXAMPLES]
LABELS = [e["label"] for e in EXAMPLES]
QUERIES = ["a charming and funny film", "dull, long and boring", "the script is clever"]


class HashBOW(Encoder):
    """Hashed bag of words, L2-normalised; counts the texts it encodes."""

    name = "hash-bow"
    dim = 32

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def _identity(self) -> str:
        return "hash-bow-32-md5"

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        self.encoded.extend(texts)
        out = torch.zeros(len(texts), self.dim, dtype=torch.float64)
        for i, text in enumerate(texts):
            for tok in tokenize(text):
                h = int.from_bytes(hashlib.md5(tok.encode()).digest()[:4], "little")
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        return torch.nn.functional.normalize(out, dim=1)


def direct(name: str, enc: Encoder, queries: list[str], k: int, **params) -> np.ndarray:
    """What the icldistill selector picks when called directly, ``[len(queries), k]``."""
    pool = Pool(embeddings=enc.encode(TEXTS), labels=np.asarray(LABELS), texts=TEXTS)
    sel = make_selector(name, **params).fit(pool)
    return np.stack([sel.select(Pool(embeddings=enc.encode([q]), texts=[q]), k).indices[0]
                     for q in queries])


# ============================================================================ LangChain
EXAMPLE_PROMPT = PromptTemplate.from_template("Review: {text}\nSentiment: {label}")


def few_shot(**kw) -> FewShotPromptTemplate:
    return FewShotPromptTemplate(example_prompt=EXAMPLE_PROMPT, prefix="Classify the sentiment.",
                                 suffix="Review: {text}\nSentiment:", input_variables=["text"],
                                 **kw)


@pytest.mark.parametrize(("name", "params"), [("knn", {}), ("mmd-query", {}),
                                              ("mmd-query", {"diversity": 0.5}),
                                              ("mmd-local", {"neighbors": 4}), ("bm25", {})])
def test_langchain_prompt_has_the_selectors_examples(name, params):
    enc = HashBOW()
    sel = ICLDistillExampleSelector.from_examples(EXAMPLES, selector=name, encoder=enc, k=3,
                                                  input_keys=["text"], label_key="label",
                                                  **params)
    prompt = few_shot(example_selector=sel)
    expected = direct(name, HashBOW(), QUERIES, 3, **params)
    for q, idx in zip(QUERIES, expected, strict=True):
        assert sel.select_indices({"text": q}) == idx.tolist()
        assert sel.select_examples({"text": q}) == [EXAMPLES[i] for i in idx]
        reference = few_shot(examples=[EXAMPLES[i] for i in idx])
        assert prompt.format(text=q) == reference.format(text=q)
    if name == "bm25":
        assert enc.encoded == []              # lexical: nothing encoded


def test_langchain_set_level_mmd_one_set():
    enc = HashBOW()
    sel = ICLDistillExampleSelector.from_examples(EXAMPLES, selector="mmd", encoder=enc, k=4,
                                                  input_keys=["text"])
    emb = HashBOW().encode(TEXTS)
    ref = make_selector("mmd").fit(Pool(embeddings=emb, texts=TEXTS))
    expected = ref.select(Pool(embeddings=emb, texts=TEXTS), 4).indices[0].tolist()
    assert [sel.select_indices({"text": q}) for q in QUERIES] == [expected] * len(QUERIES)
    assert len(enc.encoded) == len(EXAMPLES)  # set computed once: no query is encoded

    # explicit targets: the set that matches them
    targets = ["funny and charming", "a warm film"]
    sel_t = ICLDistillExampleSelector.from_examples(EXAMPLES, selector="mmd-balanced",
                                                    encoder=HashBOW(), k=4, input_keys=["text"],
                                                    label_key="label",
                                                    targets=[{"text": t} for t in targets])
    ref = make_selector("mmd-balanced").fit(Pool(embeddings=emb, labels=np.asarray(LABELS)))
    expected = ref.select(HashBOW().encode(targets), 4).indices[0].tolist()
    assert sel_t.select_indices({"text": QUERIES[0]}) == expected
    assert sorted(LABELS[i] for i in expected) == ["negative"] * 2 + ["positive"] * 2


def test_langchain_add_example_encodes_once_and_refits():
    enc = HashBOW()
    sel = ICLDistillExampleSelector(EXAMPLES[:6], selector="knn", encoder=enc, k=2,
                                    input_keys=["text"])
    q = {"text": "clever script, great performances"}
    before = sel.select_examples(q)
    assert len(enc.encoded) == 6 + 1
    new = {"text": "great performances, clever script", "label": "positive"}
    assert sel.add_example(new) == 6
    assert len(enc.encoded) == 7              # lazily: nothing encoded yet
    after = sel.select_examples(q)
    assert after[-1] == new and after != before   # most similar last, next to the query
    assert enc.encoded[7:] == [new["text"]]   # only the new example; the query was cached
    assert sel.select_examples(q) == after and len(enc.encoded) == 8
    assert len(sel) == 7 and sel.examples[6] == new


def test_langchain_one_selector_instance_configures_two_example_selectors():
    """Regression: an instance given to two example selectors was shared, so after the second
    fitted it on its pool the first one's indices pointed into the second's examples."""
    shared = make_selector("bm25")
    fruit = [{"q": t} for t in ("apple pie recipe", "banana bread", "cherry tart", "grape jam")]
    cars = [{"q": t} for t in ("car engine oil", "truck tyre pressure", "bus brake pads",
                               "van battery")]
    a = ICLDistillExampleSelector(fruit, selector=shared, k=1)
    b = ICLDistillExampleSelector(cars, selector=shared, k=1)
    assert a.select_examples({"q": "banana bread"}) == [{"q": "banana bread"}]
    assert b.select_examples({"q": "van battery"}) == [{"q": "van battery"}]
    assert a.select_examples({"q": "banana bread"}) == [{"q": "banana bread"}]


def test_langchain_defaults_keys_and_async():
    # without input_keys: every key but the label; example_keys filters the output
    sel = ICLDistillExampleSelector.from_examples(EXAMPLES, selector="knn", encoder=HashBOW(),
                                                  k=2, label_key="label",
                                                  example_keys=["text"])
    out = sel.select_examples({"text": QUERIES[0]})
    idx = direct("knn", HashBOW(), QUERIES[:1], 2)[0]
    assert out == [{"text": TEXTS[i]} for i in idx]
    assert asyncio.run(sel.aselect_examples({"text": QUERIES[0]})) == out
    assert "KNNSelector" in repr(sel) and "k=2" in repr(sel)


def test_langchain_errors():
    enc = HashBOW()
    with pytest.raises(InputError, match=r"unknown selector 'mmd-qeury'.*did you mean"):
        ICLDistillExampleSelector.from_examples(EXAMPLES, selector="mmd-qeury", encoder=enc)
    with pytest.raises(InputError, match="unknown parameter"):
        ICLDistillExampleSelector.from_examples(EXAMPLES, selector="knn", encoder=enc, foo=1)
    with pytest.raises(InputError, match="needs the examples' labels: pass label_key="):
        ICLDistillExampleSelector.from_examples(EXAMPLES, selector="mmd-balanced", encoder=enc)
    with pytest.raises(InputError, match=r"example 1 has no key\(s\) \['review'\]"):
        ICLDistillExampleSelector.from_examples(
            [{"review": "x"}, {"text": "y"}], encoder=enc, input_keys=["review"])
    with pytest.raises(InputError, match="no label key 'label'"):
        ICLDistillExampleSelector.from_examples([{"text": "x"}], encoder=enc,
                                                input_keys=["text"], label_key="label")
    with pytest.raises(InputError, match="not a single string"):
        ICLDistillExampleSelector.from_examples(EXAMPLES, encoder=enc, input_keys="text")
    with pytest.raises(InputError, match="also one of input_keys"):
        ICLDistillExampleSelector.from_examples(EXAMPLES, encoder=enc, input_keys=["label"],
                                                label_key="label")
    with pytest.raises(InputError, match="k must be a positive integer"):
        ICLDistillExampleSelector.from_examples(EXAMPLES, encoder=enc, k=0)
    with pytest.raises(InputError, match="unknown encoder"):
        ICLDistillExampleSelector.from_examples(EXAMPLES, encoder="word2vec")
    sel = ICLDistillExampleSelector.from_examples(EXAMPLES[:3], selector="knn", encoder=enc,
                                                  k=4, input_keys=["text"])
    with pytest.raises(InputError, match=r"k=4 is larger than the pool \(3 examples\)"):
        sel.select_examples({"text": "x"})
    with pytest.raises(InputError, match=r"input_variables has no key\(s\) \['text'\]"):
        sel.select_examples({"review": "x"})
    with pytest.raises(InputError, match="add examples first"):
        ICLDistillExampleSelector(selector="knn", encoder=enc).select_examples({"text": "x"})
    with pytest.raises(InputError, match="list of dicts"):
        sel.add_examples({"text": "x"})
    assert len(sel) == 3


def test_langchain_minilm_default_encoder():
    try:
        fetch_minilm(progress=False)
    except OSError as exc:  # no network and nothing cached
        pytest.skip(f"all-MiniLM-L6-v2 not available: {exc}")
    sel = ICLDistillExampleSelector.from_examples(EXAMPLES, selector="knn", k=3,
                                                  input_keys=["text"])
    assert isinstance(sel.encoder, MiniLMEncoder)
    q = "dull, long and boring"
    emb = sel.encoder.encode(TEXTS)
    ref = make_selector("knn").fit(emb).select(sel.encoder.encode([q]), 3).indices[0]
    out = sel.select_examples({"text": q})
    assert out == [EXAMPLES[i] for i in ref]
    assert all(e["label"] == "negative" for e in out)


# ============================================================================ DSPy
TRAINSET = [dspy.Example(**e).with_inputs("text") for e in EXAMPLES]


def recording_lm(n: int = 64):
    """DSPy's own stub LM: answers "positive", keeps every prompt in ``.history``."""
    return dspy.utils.DummyLM([{"label": "positive"}] * n)


def demo_texts(lm, call: int = -1) -> list[str]:
    """The demonstrations' review texts in one recorded prompt (ChatAdapter format)."""
    messages = lm.history[call]["messages"]
    users = [m["content"] for m in messages if m["role"] == "user"][:-1]   # last: the query
    return [u.split("[[ ## text ## ]]\n", 1)[1].strip() for u in users]


def query_text(lm, call: int = -1) -> str:
    last = lm.history[call]["messages"][-1]["content"]
    return last.split("[[ ## text ## ]]\n", 1)[1].split("\n\n", 1)[0]


@pytest.mark.parametrize(("name", "params"), [("mmd-query", {}), ("knn", {}),
                                              ("mmd-local", {"neighbors": 4})])
def test_dspy_prompts_hold_the_selectors_demos(name, params):
    tp = ICLDistillFewShot(k=3, selector=name, encoder=HashBOW(), label_key="label", **params)
    program = tp.compile(dspy.Predict("text -> label"), trainset=TRAINSET)
    expected = direct(name, HashBOW(), QUERIES, 3, **params)
    lm = recording_lm()
    with dspy.context(lm=lm):
        for q in QUERIES:
            assert program(text=q).label == "positive"
        again = tp.compile(dspy.Predict("text -> label"), trainset=TRAINSET)(text=QUERIES[0])
    assert again.label == "positive"
    assert len(lm.history) == len(QUERIES) + 1
    for call, (q, idx) in enumerate(zip(QUERIES, expected, strict=True)):
        assert query_text(lm, call) == q
        assert demo_texts(lm, call) == [TEXTS[i] for i in idx]
    assert demo_texts(lm, -1) == demo_texts(lm, 0)        # deterministic across compiles
    assert program.predictors()[0].demos == []            # demos are chosen per call


def test_dspy_async_call_and_bootstrap():
    lm = recording_lm()
    tp = ICLDistillFewShot(k=3, selector="knn", encoder=HashBOW())
    program = tp.compile(dspy.Predict("text -> label"), trainset=TRAINSET)
    expected = [TEXTS[i] for i in direct("knn", HashBOW(), QUERIES[1:2], 3)[0]]
    with dspy.context(lm=lm):
        out = asyncio.run(program.acall(text=QUERIES[1]))
    assert out.label == "positive" and demo_texts(lm) == expected
    # KNNFewShot's path: BootstrapFewShot on the chosen examples (no bootstrapped demos here,
    # so no extra LM call; it keeps the labeled demos in its own order)
    tp = ICLDistillFewShot(k=3, selector="knn", encoder=HashBOW(),
                           bootstrap={"max_bootstrapped_demos": 0, "max_labeled_demos": 3})
    program = tp.compile(dspy.Predict("text -> label"), trainset=TRAINSET)
    with dspy.context(lm=lm):
        program(text=QUERIES[1])
    assert sorted(demo_texts(lm)) == sorted(expected)


def test_dspy_set_level_selector_picks_once():
    emb = HashBOW().encode(TEXTS)
    enc = HashBOW()
    tp = ICLDistillFewShot(k=4, selector="mmd-balanced", encoder=enc, label_key="label")
    program = tp.compile(dspy.Predict("text -> label"), trainset=TRAINSET)
    ref = make_selector("mmd-balanced").fit(Pool(embeddings=emb, labels=np.asarray(LABELS)))
    expected = [TEXTS[i] for i in ref.select(emb, 4).indices[0]]
    assert [d.text for d in program.predictors()[0].demos] == expected
    lm = recording_lm()
    with dspy.context(lm=lm):
        for q in QUERIES:
            program(text=q)
    assert all(demo_texts(lm, c) == expected for c in range(len(QUERIES)))
    assert len(enc.encoded) == len(TEXTS)       # queries are never encoded

    # the valset's inputs are the target when no targets are given
    valset = [dspy.Example(text=q, label="?").with_inputs("text") for q in QUERIES]
    program = tp.compile(dspy.Predict("text -> label"), trainset=TRAINSET, valset=valset)
    expected = [TEXTS[i] for i in ref.select(HashBOW().encode(QUERIES), 4).indices[0]]
    assert [d.text for d in program.predictors()[0].demos] == expected


def test_dspy_errors():
    enc = HashBOW()
    with pytest.raises(InputError, match="unknown selector 'knm'"):
        ICLDistillFewShot(k=2, selector="knm", encoder=enc)
    with pytest.raises(InputError, match="unknown parameter"):
        ICLDistillFewShot(k=2, selector="knn", encoder=enc, lambda_=0.5)
    with pytest.raises(InputError, match="needs the examples' labels: pass label_key="):
        ICLDistillFewShot(k=2, selector="mmd-joint", encoder=enc)
    with pytest.raises(InputError, match="k must be a positive integer"):
        ICLDistillFewShot(k=0, encoder=enc)
    tp = ICLDistillFewShot(k=2, selector="knn", encoder=enc)
    student = dspy.Predict("text -> label")
    with pytest.raises(InputError, match="non-empty trainset"):
        tp.compile(student)
    with pytest.raises(InputError, match=r"with_inputs\('question'\), or pass input_keys="):
        tp.compile(student, trainset=[dspy.Example(**e) for e in EXAMPLES])
    with pytest.raises(InputError, match=r"k=2 is larger than the pool \(1 examples\)"):
        tp.compile(student, trainset=TRAINSET[:1])
    with pytest.raises(InputError, match="no label field 'label'"):
        ICLDistillFewShot(k=2, encoder=enc, label_key="label").compile(
            student, trainset=[dspy.Example(text="x").with_inputs("text")] * 3)
    program = ICLDistillFewShot(k=2, selector="knn", encoder=enc, input_keys=["text"]).compile(
        student, trainset=[dict(e) for e in EXAMPLES])            # dicts + explicit input_keys
    with pytest.raises(InputError, match=r"the call's inputs has no field\(s\) \['text'\]"):
        program(review="a film")


# ============================================================================ shared pool
def test_query_cache_eviction_keeps_the_batch_being_read():
    """Regression: the query cache evicted before reading the batch back, so a batch of more
    distinct queries than the cache holds (or an old query next to a new one in a full cache)
    raised KeyError."""
    from icldistill.adapters import _core
    from icldistill.adapters._core import DemoIndex

    big = DemoIndex("knn", {}, HashBOW(), labelled=False)
    big.add(TEXTS)
    queries = [f"query number {i}" for i in range(_core._QUERY_CACHE + 4)]
    assert big.select(queries, 2).shape == (len(queries), 2)
    assert len(big._queries) == _core._QUERY_CACHE

    idx = DemoIndex("knn", {}, HashBOW(), labelled=False)
    idx.add(TEXTS)
    for i in range(_core._QUERY_CACHE):                # one query at a time, as adapters do
        idx.select([f"query {i}"], 2)
    got = idx.select(["query 0", "a brand new query"], 2)
    ref = DemoIndex("knn", {}, HashBOW(), labelled=False)
    ref.add(TEXTS)
    assert got.tolist() == ref.select(["query 0", "a brand new query"], 2).tolist()


def test_langchain_concurrent_adds_keep_examples_and_pool_in_step(monkeypatch):
    """Regression: add_examples extended its example list after releasing the pool's lock, so
    two threads adding at once left the pool and the examples in different orders and a
    query got another example (and label) than the selector chose."""
    import threading

    from icldistill.adapters._core import DemoIndex

    sel = ICLDistillExampleSelector([{"text": "seed example one", "label": "neg"}],
                                    selector="knn", encoder=HashBOW(), k=1, label_key="label")
    first_in, release = threading.Event(), threading.Event()
    real_add = DemoIndex.add

    def slow_add(self, texts, labels=None, **kw):
        real_add(self, texts, labels, **kw)
        if texts[0].startswith("apple"):       # hold the first adder between its two steps
            first_in.set()
            release.wait(2)

    monkeypatch.setattr(DemoIndex, "add", slow_add)
    apple = {"text": "apple apple apple", "label": "FRUIT"}
    car = {"text": "car car car", "label": "VEHICLE"}
    t1 = threading.Thread(target=sel.add_example, args=(apple,))
    t1.start()
    assert first_in.wait(5)
    t2 = threading.Thread(target=sel.add_example, args=(car,))
    t2.start()
    t2.join(0.3)                               # with the fix, t2 waits for t1's lock
    release.set()
    t1.join(5)
    t2.join(5)
    pool = sel._index.texts
    assert [e["text"] for e in sel.examples] == pool
    assert sel.select_examples({"text": "apple apple apple"}) == [apple]
    assert sel.select_examples({"text": "car car car"}) == [car]


def test_dspy_targets_must_be_a_list():
    """Regression: targets="some text" became its characters, a dspy.Example its keys."""
    enc = HashBOW()
    for bad in ("question about topic 3", dspy.Example(text="x"), {"text": "x"}):
        with pytest.raises(InputError, match="targets must be a list of the queries"):
            ICLDistillFewShot(k=2, selector="mmd", encoder=enc, targets=bad)
    with pytest.raises(InputError, match="targets must be a list"):
        ICLDistillFewShot(k=2, selector="mmd", encoder=enc, targets=3)
    with pytest.raises(InputError, match=r"targets\[1\] must be a text"):
        ICLDistillFewShot(k=2, selector="mmd", encoder=enc, targets=["ok", 3])
    tp = ICLDistillFewShot(k=2, selector="mmd", encoder=enc, targets=("a charming film",))
    index, _, _ = tp.build_index(TRAINSET)
    assert index._targets == ["a charming film"]
    with pytest.raises(InputError, match="valset must be a list"):
        ICLDistillFewShot(k=2, selector="mmd", encoder=enc).build_index(TRAINSET, "a film")


def test_example_values_follow_the_cell_rule():
    """Regression: values went through str(): 1 and "1" were one label but 0 and 0.0 two,
    None became the text "None" and a list its repr."""
    enc = HashBOW()
    ex = [{"text": "good film", "label": 1}, {"text": "great film", "label": "1"},
          {"text": "bad film", "label": 0.0}, {"text": "awful", "label": 0},
          {"text": 7.0, "label": np.int64(0)}]
    sel = ICLDistillExampleSelector(ex, selector="mmd-balanced", encoder=enc, k=4,
                                    label_key="label")
    assert sel._index.labels == ["1", "1", "0", "0", "0"]
    assert sel._index.texts[-1] == "7"
    assert sel.examples == ex                         # the examples are returned as given
    with pytest.raises(InputError, match=r"example 1: key 'label' is missing \(it holds None"):
        ICLDistillExampleSelector([ex[0], {"text": "x", "label": None}], encoder=enc,
                                  label_key="label")
    with pytest.raises(InputError, match="example 0: key 'label' is missing"):
        ICLDistillExampleSelector([{"text": "x", "label": float("nan")}], encoder=enc,
                                  label_key="label")
    with pytest.raises(InputError, match="example 0: key 'text' is missing"):
        ICLDistillExampleSelector([{"text": None, "label": "a"}], encoder=enc,
                                  label_key="label")
    with pytest.raises(InputError, match="example 0: key 'text' holds a list, not text"):
        ICLDistillExampleSelector([{"text": ["bad", "film"], "label": "a"}], encoder=enc,
                                  label_key="label")
    with pytest.raises(InputError, match="empty label in key 'label'"):
        ICLDistillExampleSelector([{"text": "x", "label": "  "}], encoder=enc,
                                  label_key="label")
    with pytest.raises(InputError, match="input_variables: key 'text' is missing"):
        sel.select_examples({"text": None})
    assert len(sel) == 5                             # nothing was added by a failed call
    # DSPy: the same rule
    train = [dspy.Example(text=t, label=lab).with_inputs("text")
             for t, lab in [("good", 1), ("fine", 1.0), ("bad", "0"), ("awful", 0.0)]]
    index, _, _ = ICLDistillFewShot(k=2, selector="mmd-balanced", encoder=enc,
                                    label_key="label").build_index(train)
    assert index.labels == ["1", "1", "0", "0"]
    bad = [*train[:2], dspy.Example(text=None, label="0").with_inputs("text")]
    with pytest.raises(InputError, match=r"trainset\[2\]: field 'text' is missing"):
        ICLDistillFewShot(k=2, encoder=enc).build_index(bad)
    bad = [*train[:2], dspy.Example(text="x", label=["a"]).with_inputs("text")]
    with pytest.raises(InputError, match=r"trainset\[2\]: field 'label' holds a list"):
        ICLDistillFewShot(k=2, encoder=enc, label_key="label").build_index(bad)


def test_labels_differing_only_in_spelling_are_warned_about_once():
    import unicodedata

    nfc, nfd = (unicodedata.normalize(f, "négatif") for f in ("NFC", "NFD"))
    ex = [{"text": "a", "label": nfc}, {"text": "b", "label": nfd},
          {"text": "c", "label": "positif"}]
    with pytest.warns(UserWarning, match=r"differ only in .*Unicode normal form"):
        sel = ICLDistillExampleSelector(ex, encoder=HashBOW(), label_key="label")
    with pytest.warns(UserWarning, match=r"'Pos' and 'pos'"):
        sel.add_examples([{"text": "d", "label": "Pos"}, {"text": "e", "label": "pos"}])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")           # the same groups are not warned about again
        sel.add_example({"text": "f", "label": "pos"})


def test_duplicate_examples_and_conflicting_labels_are_warned_about():
    """Regression: duplicates were accepted silently (knn showed the same demonstration k
    times) and so was one text with two labels. Both stay in the pool, as duplicated rows of
    a file do (noisy labels are data), with a warning that names them."""
    import unicodedata

    ex = [{"text": "good film", "label": "pos"}] * 3 + [{"text": "awful movie", "label": "neg"}]
    with pytest.warns(UserWarning, match=r"2 example\(s\) repeat an earlier one \(example 1 "
                                         r"repeats example 0, example 2 repeats example 0\)"):
        sel = ICLDistillExampleSelector(ex, selector="knn", encoder=HashBOW(), k=3,
                                        label_key="label")
    assert len(sel) == 4                          # kept, as duplicated rows of a file are
    with pytest.warns(UserWarning, match=r"1 example\(s\) have the text of an earlier one with "
                                         r"another label \(example 4 \('neg'\) and example 0 "
                                         r"\('pos'\)\)"):
        sel.add_example({"text": "good  film", "label": "neg"})
    nfd = unicodedata.normalize("NFD", "café noir")
    sel.add_example({"text": unicodedata.normalize("NFC", "café noir"), "label": "pos"})
    with pytest.warns(UserWarning, match=r"example 6 \('neg'\) and example 5"):
        sel.add_example({"text": nfd, "label": "neg"})
    assert len(sel) == 7 and len(sel._index) == 7
    # without labels: a warning only
    with pytest.warns(UserWarning, match="repeat an earlier one"):
        ICLDistillExampleSelector([{"q": "x"}, {"q": "y"}, {"q": "x"}], encoder=HashBOW())
    # DSPy: the trainset is checked at compile time
    train = [dspy.Example(text="same", label="a").with_inputs("text"),
             dspy.Example(text="same", label="b").with_inputs("text"),
             dspy.Example(text="other", label="a").with_inputs("text")]
    with pytest.warns(UserWarning, match=r"trainset\[1\] \('b'\) and trainset\[0\]"):
        ICLDistillFewShot(k=2, encoder=HashBOW(), label_key="label").build_index(train)
    with pytest.warns(UserWarning, match=r"trainset\[1\] repeats trainset\[0\]"):
        ICLDistillFewShot(k=2, encoder=HashBOW()).build_index(train)


# ============================================================================ packaging
def test_no_eager_framework_imports_and_clear_missing_extra():
    code = (
        "import sys\n"
        "import icldistill, icldistill.adapters, icldistill.adapters._core\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'dspy')]\n"
        "assert not bad, bad\n"
        "sys.modules['langchain_core'] = None\n"
        "sys.modules['dspy'] = None\n"
        "for mod, extra in (('langchain', 'langchain'), ('dspy', 'dspy')):\n"
        "    try:\n"
        "        __import__('icldistill.adapters.' + mod)\n"
        "    except ImportError as exc:\n"
        "        assert f'pip install icldistill[{extra}]' in str(exc), exc\n"
        "    else:\n"
        "        raise AssertionError(mod)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
