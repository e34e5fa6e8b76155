"""Prompts: rendering, exact segment spans from tokenizer offsets, with and without BOS."""

from __future__ import annotations

import pytest

import icldistill as ic
from icldistill.data.prompts import Prompt, Template, group_segment

from .tiny_models import tiny_tokenizer

DEMOS = [("good movie", "positive"), ("bad plot", "negative"), ("great acting", "positive")]


def test_render_spans_cover_the_text_exactly():
    p = Prompt(DEMOS, "boring story", instruction="Classify sentiment")
    r = p.render()
    assert [s[0] for s in r.spans] == ["prefix", "demo:0", "demo:1", "demo:2", "query"]
    assert r.spans[0][1] == 0 and r.spans[-1][2] == len(r.text)
    for (_, _, end), (_, start, _) in zip(r.spans, r.spans[1:], strict=False):
        assert end == start
    assert r.text.endswith("Input: boring story\nLabel:")
    assert r.text[r.spans[2][1]:r.spans[2][2]] == "Input: bad plot\nLabel: negative\n\n"


@pytest.mark.parametrize("add_bos", [False, True])
def test_tokens_are_assigned_to_their_segments(add_bos):
    tok = tiny_tokenizer(add_bos)
    p = Prompt(DEMOS, "boring story", instruction="Classify sentiment")
    tp = p.tokenize(tok)
    assert len(tp.segments) == len(tp)
    if add_bos:
        assert tp.input_ids[0] == tok.bos_token_id and tp.segments[0] == "prefix"
    toks = tok.convert_ids_to_tokens(tp.input_ids.tolist())
    words = {s: [t for t, seg in zip(toks, tp.segments, strict=True) if seg == s]
             for s in dict.fromkeys(tp.segments)}
    assert words["demo:1"] == ["Input", ":", "bad", "plot", "\n", "Label", ":", "negative",
                               "\n", "\n"]
    assert words["query"] == ["Input", ":", "boring", "story", "\n", "Label", ":"]
    assert [t for t in words["prefix"] if t != "<s>"] == ["Classify", "sentiment", "\n", "\n"]
    # segments are contiguous and in order
    order = list(dict.fromkeys(tp.segments))
    assert order == ["prefix", "demo:0", "demo:1", "demo:2", "query"]
    assert tp.num_demonstrations == 3
    assert tp.positions("demos").tolist() == [i for i, s in enumerate(tp.segments)
                                               if s.startswith("demo:")]
    assert tp.grouped_segments[-1] == "query" and group_segment("demo:7") == "demos"


def test_no_instruction_and_zero_shot():
    tok = tiny_tokenizer(False)
    tp = Prompt([], "fun film").tokenize(tok)
    assert set(tp.segments) == {"query"}


def test_prompt_bad_input():
    with pytest.raises(ic.InputError, match="input"):
        Template(demo="{label}")
    with pytest.raises(ic.InputError, match="pair"):
        Prompt([("only one",)], "q")
    with pytest.raises(ic.InputError, match="string"):
        Prompt([], 3)
