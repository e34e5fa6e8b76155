"""Memory-bounded scoring (issue 14, item 5): token-budget batches, sdpa attention, multi-token
labels in one trie-masked row, and the prompt-size guard.

Every path must give the label scores of the reference path (eager attention, fixed batches, a
cache copy per label) up to float rounding: |Δ log p| <= 1e-5 in float32 on tiny llama, qwen2,
gemma3 (sliding window) and gpt2 models, with shared and per-query demonstrations, with and
without prefix reuse, calibration on and off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icldistill.core.validation import InputError
from icldistill.data.prompts import Template
from icldistill.evaluation import scoring as evaluation
from icldistill.evaluation.scoring import FewShotScorer, LabelTrie, MemoryModel

from .tiny_models import tiny_model, tiny_tokenizer

DEMOS = [("good movie", "pos"), ("bad plot", "neg"), ("great acting", "pos"),
         ("boring story", "neg"), ("it was a film", "neu")]
QUERIES = ["loved the film", "hated it", "very good", "awful acting and boring plot", "fun",
           "not very good", "this was a great movie", "bad", "the plot was not very good and the "
           "acting was awful", "it"]
PER_QUERY = [DEMOS[: 1 + i % 5] for i in range(len(QUERIES))]
TEMPLATE = Template("Input: {input}\nLabel: {label}\n\n", "Input: {input}\nLabel:")
# multi-token labels sharing leading tokens ("very ..."), one a prefix of another
LABELS = {"pos": "very good fun", "neg": "bad", "neu": "not good or bad", "vb": "very bad",
          "vg": "very good"}
SINGLE = {"pos": "positive", "neg": "negative", "neu": "neutral"}
REFERENCE = {"attn": "eager", "max_batch_tokens": None, "label_tree": False}
ARCHS = ["llama", "qwen2", "gemma3", "gpt2"]


def _lm(arch: str, dtype: torch.dtype = torch.float32):
    return tiny_model(arch, dtype=dtype), tiny_tokenizer(add_bos=arch != "gpt2")


def _scorer(model, tok, words=LABELS, **kw) -> FewShotScorer:
    return FewShotScorer(model, tok, words, template=TEMPLATE, instruction="Classify sentiment",
                         batch_size=kw.pop("batch_size", 3), **kw)


def _score(sc: FewShotScorer, setting: str, calibrate: bool):
    if setting == "shared":
        return sc.score(QUERIES, DEMOS, calibrate=calibrate)
    if setting == "shared-no-reuse":
        return sc.score(QUERIES, DEMOS, reuse_prefix=False, calibrate=calibrate)
    return sc.score(QUERIES, per_query=PER_QUERY, calibrate=calibrate)


def _spy(sc: FewShotScorer) -> list[tuple[int, int, int]]:
    """Record (rows, padded width, prefix length) of every batch: the scorer's ``on_context``
    reports each batch's context pass, whose input a forward pre-hook on the model has seen."""
    shapes: list[tuple[int, int, int]] = []
    seen: dict[str, torch.Tensor] = {}
    score = sc.score

    def pre(_mod, _args, kwargs):
        seen.update(ids=kwargs["input_ids"], pos=kwargs.get("position_ids"))

    def on_context(queries, last):
        ids, pos = seen["ids"], seen["pos"]
        assert ids.shape[0] == len(queries) and ids.shape[1] == max(last) + 1
        shapes.append((len(queries), ids.shape[1], int(pos[0, 0])))

    def spied(*args, **kwargs):
        handle = sc.model.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            return score(*args, on_context=on_context, **kwargs)
        finally:
            handle.remove()

    sc.score = spied
    return shapes


# --------------------------------------------------------------------------------------------
# Multi-token labels in one trie-masked row
# --------------------------------------------------------------------------------------------


def test_label_trie_shares_leading_tokens():
    trie = LabelTrie([[1, 2, 3], [1, 2], [4], [1, 5], [6, 7]])
    # inputs: t[:-1] of every label, shared where the path is the same
    assert trie.tokens == [1, 2, 6] and trie.depth == [0, 1, 0]
    assert trie.targets == [[(0, 2), (1, 3)], [(0, 2)], [], [(0, 5)], [(2, 7)]]
    assert trie.ancestors.tolist() == [[True, False, False], [True, True, False],
                                       [False, False, True]]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("setting", ["shared", "shared-no-reuse", "per-query"])
@pytest.mark.parametrize("calibrate", [False, True], ids=["raw", "calibrated"])
def test_trie_labels_equal_the_per_label_cache_copies(arch, setting, calibrate):
    model, tok = _lm(arch)
    ref = _score(_scorer(model, tok, **REFERENCE), setting, calibrate)
    for kw in ({"attn": "eager"}, {}):          # trie with eager attention; the defaults
        sc = _scorer(model, tok, **kw)
        assert sc.label_mode == ("inline" if arch == "gemma3" else "trie")
        got = _score(sc, setting, calibrate)
        np.testing.assert_allclose(got.logprobs, ref.logprobs, rtol=0, atol=1e-5)
        if calibrate:
            np.testing.assert_allclose(got.calibration, ref.calibration, rtol=0, atol=1e-5)
        assert list(got.predictions) == list(ref.predictions)
        assert got.n_tokens == ref.n_tokens and got.n_prompt_tokens == ref.n_prompt_tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_trie_labels_equal_a_plain_forward_pass(arch):
    """float64 model: the trie row gives what one forward pass of prompt + label gives (the
    scorer's log-softmax is float32, hence 1e-6)."""
    model, tok = _lm(arch, torch.float64)
    sc = _scorer(model, tok)
    res = sc.score(QUERIES[:4], per_query=PER_QUERY[:4])
    for i, q in enumerate(QUERIES[:4]):
        ids_c = tok(sc.prompt(PER_QUERY[i], q).render().text)["input_ids"]
        for j, lab in enumerate(sc.labels):
            ids_l = tok(" " + LABELS[lab], add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids_c + ids_l])).logits[0], -1)
            ref = sum(float(lp[len(ids_c) - 1 + k, t]) for k, t in enumerate(ids_l))
            assert abs(res.logprobs[i, j] - ref) < 1e-6


def test_label_modes():
    llama, tok = _lm("llama")
    assert _scorer(llama, tok, SINGLE).label_mode == "single"
    assert _scorer(llama, tok).label_mode == "trie"
    assert _scorer(llama, tok, label_tree=False).label_mode == "copy"
    gemma, tok_g = _lm("gemma3")
    assert _scorer(gemma, tok_g).label_mode == "inline"       # sliding window: inline rows


# --------------------------------------------------------------------------------------------
# sdpa attention
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("words", [SINGLE, LABELS], ids=["single-token", "multi-token"])
def test_sdpa_scores_equal_eager_scores(arch, words):
    model, tok = _lm(arch)
    eager = _scorer(model, tok, words, attn="eager")
    sdpa = _scorer(model, tok, words, attn="sdpa")
    assert eager.attn_implementation == "eager" and sdpa.attn_implementation == "sdpa"
    for setting in ("shared", "per-query"):
        a, b = _score(eager, setting, False), _score(sdpa, setting, False)
        np.testing.assert_allclose(b.logprobs, a.logprobs, rtol=0, atol=1e-5)


def test_attention_implementation_is_restored():
    model, tok = _lm("llama")
    assert model.config._attn_implementation == "eager"
    sc = _scorer(model, tok)
    assert sc.attn_implementation == "sdpa" and model.config._attn_implementation == "eager"
    seen = []
    model.register_forward_pre_hook(
        lambda *_: seen.append(model.config._attn_implementation))
    sc.score(QUERIES[:3], DEMOS)
    assert set(seen) == {"sdpa"} and model.config._attn_implementation == "eager"

    def boom(idx, lp):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        sc.score(QUERIES[:3], DEMOS, on_batch=boom)
    assert model.config._attn_implementation == "eager"
    # None leaves the model as it is
    assert _scorer(model, tok, attn=None).attn_implementation == "eager"


def test_auto_attention_falls_back_where_sdpa_is_not_supported():
    model, tok = _lm("gemma2")                   # attention soft-capping: no sdpa
    assert _scorer(model, tok).attn_implementation == "eager"
    with pytest.raises(InputError, match="cannot use 'sdpa' attention"):
        _scorer(model, tok, attn="sdpa")
    with pytest.raises(InputError, match="attn must be"):
        _scorer(model, tok, attn="flash")
    assert model.config._attn_implementation == "eager"


def test_bfloat16_sdpa_scores_close_to_eager_with_float32_logits():
    from icldistill.models.registry import float32_head

    model = float32_head(tiny_model("llama", dtype=torch.bfloat16))
    tok = tiny_tokenizer(True)
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    old = _scorer(model, tok, **REFERENCE).score(QUERIES, per_query=PER_QUERY)
    new = _scorer(model, tok).score(QUERIES, per_query=PER_QUERY)
    assert set(seen) == {torch.float32}
    assert np.abs(new.logprobs - old.logprobs).max() < 0.1


# --------------------------------------------------------------------------------------------
# Token budget
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [1, 40, 90, 200, 10_000])
@pytest.mark.parametrize("words", [SINGLE, LABELS], ids=["single-token", "multi-token"])
def test_token_budget_batches_and_scores(budget, words):
    model, tok = _lm("llama")
    ref = _scorer(model, tok, words, **REFERENCE)
    sc = _scorer(model, tok, words, max_batch_tokens=budget, batch_size=4)
    shapes = _spy(sc)
    for setting in ("shared", "per-query"):
        shapes.clear()
        got = _score(sc, setting, False)
        np.testing.assert_allclose(got.logprobs, _score(ref, setting, False).logprobs,
                                   rtol=0, atol=1e-5)
        assert sum(r for r, _, _ in shapes) == len(QUERIES)
        for rows, width, p_len in shapes:
            assert rows <= 4
            # within the budget, or a single prompt that alone exceeds it
            assert rows == 1 or rows * sc.row_tokens(width, p_len) <= budget
        widths = [w for _, w, _ in shapes]
        assert widths == sorted(widths, reverse=True)      # longest first, length-sorted
    if budget == 1:
        assert all(r == 1 for r, _, _ in shapes)
    if budget == 10_000:
        assert max(r for r, _, _ in shapes) == 4


def test_eager_attention_weights_shrink_batches():
    """With eager attention the estimated attention weights count against the budget."""
    model, tok = _lm("llama")
    budget = 300
    eager = _scorer(model, tok, attn="eager", max_batch_tokens=budget, batch_size=8)
    sdpa = _scorer(model, tok, attn="sdpa", max_batch_tokens=budget, batch_size=8)
    assert eager.memory.eager and not sdpa.memory.eager
    w, p = 60, 0
    rows_e = max(r for r in range(1, 9) if eager.fits(r, w, p) or r == 1)
    rows_s = max(r for r in range(1, 9) if sdpa.fits(r, w, p) or r == 1)
    assert rows_e < rows_s
    assert eager.batch_bytes(2, w, p) > sdpa.batch_bytes(2, w, p)


def test_default_budget_from_the_memory_model():
    model, tok = _lm("llama")
    sc = _scorer(model, tok)
    assert sc.max_batch_tokens == sc.memory.default_batch_tokens()
    mm = MemoryModel(kv_bytes=12_288, act_bytes=49_664, heads=14, head_dim=64, dsize=2,
                     vocab=151_936, eager=False)           # qwen2.5-0.5b in bfloat16
    assert mm.token_bytes == 12_288 + 3_584 + 49_664
    assert mm.default_batch_tokens() == evaluation.BATCH_MEMORY // mm.token_bytes
    assert MemoryModel(1, 1, 1, 1, 1, 1, False).default_batch_tokens() == 1 << 16
    assert MemoryModel(10**9, 0, 1, 1, 4, 1, False).default_batch_tokens() == 512
    # linear in rows x tokens with sdpa; the eager weights grow with new x keys
    assert mm.forward_bytes(2, 100, 100, 0) == 2 * mm.forward_bytes(1, 100, 100, 0)
    eager = MemoryModel(**{**mm.__dict__, "eager": True})
    assert eager.forward_bytes(1, 1000, 1000, 0) - mm.forward_bytes(1, 1000, 1000, 0) == \
        14 * 1000 * 1000 * 8
    # from a real configuration
    got = MemoryModel.of(model, eager=False)
    cfg = model.config
    assert got.kv_bytes == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * \
        (cfg.hidden_size // cfg.num_attention_heads) * 4
    assert got.vocab == cfg.vocab_size and got.dsize == 4


@pytest.mark.parametrize("bad", [0, -3, 2.5, "lots", True])
def test_budget_arguments_are_validated(bad):
    model, tok = _lm("llama")
    with pytest.raises(InputError, match="max_batch_tokens must be"):
        _scorer(model, tok, max_batch_tokens=bad)
    with pytest.raises(InputError, match="max_prompt_tokens must be"):
        _scorer(model, tok, max_prompt_tokens=bad)


# --------------------------------------------------------------------------------------------
# A prompt that cannot fit
# --------------------------------------------------------------------------------------------


def test_max_prompt_tokens_names_the_prompt_before_anything_runs():
    model, tok = _lm("llama")
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    per = [DEMOS[:1], DEMOS[:1], DEMOS * 3, DEMOS[:1]]
    sc = _scorer(model, tok, max_prompt_tokens=60)
    calls.clear()
    with pytest.raises(InputError, match=r"prompt of query 2 is \d+ tokens .*max_prompt_tokens=60"
                                         r".*fewer or shorter demonstrations"):
        sc.score(QUERIES[:4], per_query=per)
    assert calls == []
    # a prompt over the batch budget but within the limits runs alone
    sc = _scorer(model, tok, max_batch_tokens=10, max_prompt_tokens=None)
    shapes = _spy(sc)
    sc.score(QUERIES[:4], per_query=per)
    assert [r for r, _, _ in shapes] == [1, 1, 1, 1]


def test_auto_prompt_limit_refuses_what_memory_cannot_hold(monkeypatch):
    model, tok = _lm("llama")
    sc = _scorer(model, tok)
    monkeypatch.setattr(evaluation, "available_memory", lambda: 10_000)
    with pytest.raises(InputError, match=r"query 0 .*needs about .* GiB \(sdpa attention\), more "
                                         r"than the .* GiB of memory available"):
        sc.score(QUERIES[:2], DEMOS)
    # content-free queries are checked too ("[MASK]" is 3 tokens here, "it" one)
    n = _scorer(model, tok, max_prompt_tokens=None).score(["it"], DEMOS).n_prompt_tokens
    longest = max(len(tok(" " + w, add_special_tokens=False)["input_ids"]) for w in LABELS.values())
    limited = _scorer(model, tok, max_prompt_tokens=n + longest)
    assert limited.score(["it"], DEMOS).logprobs.shape == (1, len(LABELS))
    with pytest.raises(InputError, match="prompt of a content-free query"):
        limited.score(["it"], DEMOS, calibrate=True)
    monkeypatch.setattr(evaluation, "available_memory", lambda: None)   # unknown: no check
    assert sc.score(QUERIES[:2], DEMOS).logprobs.shape == (2, len(LABELS))
    monkeypatch.setattr(evaluation, "available_memory", lambda: 10_000)
    assert _scorer(model, tok, max_prompt_tokens=None).score(QUERIES[:2], DEMOS).logprobs.shape \
        == (2, len(LABELS))
    # the context limit still comes first
    with pytest.raises(InputError, match="longer than the model's context"):
        _scorer(model, tok, max_length=20).score(QUERIES[:1], DEMOS)


def test_available_memory_is_known_here():
    avail = evaluation.available_memory()
    assert avail is None or avail > 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])         # gemma3: labels inline
def test_on_context_reports_every_query_once_per_row(arch):
    model, tok = _lm(arch)
    sc = _scorer(model, tok, max_batch_tokens=90)
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    res = sc.score(QUERIES, DEMOS, calibrate=True, on_context=lambda q, c: calls.append((q, c)))
    q = np.concatenate([c[0] for c in calls])
    per_query = len(LABELS) if sc.label_mode == "inline" else 1
    assert sorted(q[q >= 0].tolist()) == sorted(list(range(len(QUERIES))) * per_query)
    assert (q == -1).sum() == len(evaluation.CONTENT_FREE) * per_query
    assert all(len(a) == len(b) and (b >= 0).all() for a, b in calls)
    assert res.logprobs.shape == (len(QUERIES), len(LABELS))
