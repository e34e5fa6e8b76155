"""Few-shot scoring (prefix reuse, multi-token labels, calibration) and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.validation import InputError
from icldistill.data.prompts import Template
from icldistill.evaluation import scoring as evaluation
from icldistill.evaluation.scoring import (
    FewShotScorer,
    accuracy,
    bootstrap_ci,
    classification_metrics,
    macro_f1,
)

from .tiny_models import tiny_model, tiny_tokenizer

DEMOS = [("good movie", "pos"), ("bad plot", "neg"), ("great acting", "pos"),
         ("boring story", "neg")]
QUERIES = ["loved the film", "hated it", "very good", "awful acting and boring plot", "fun",
           "not very good", "this was a great movie", "bad"]
TEMPLATE = Template("Input: {input}\nLabel: {label}\n\n", "Input: {input}\nLabel:")
SINGLE = {"pos": "positive", "neg": "negative"}
MULTI = {"pos": "very good fun", "neg": "bad", "neu": "not good or bad"}


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma3"])
def lm(request):
    arch = request.param
    return tiny_model(arch, dtype=torch.float64), tiny_tokenizer(add_bos=arch != "gpt2")


def _reference(model, tok, scorer, demos, query, words):
    """Score every label with one plain forward pass of the whole prompt + label."""
    ctx = scorer.prompt(demos, query).render().text
    ids_c = tok(ctx)["input_ids"]
    out = []
    for lab in scorer.labels:
        ids_l = tok(" " + words[lab], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids_c + ids_l])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].double(), -1)
        out.append(sum(float(lp[len(ids_c) - 1 + j, t]) for j, t in enumerate(ids_l)))
    return out


@pytest.mark.parametrize("words", [SINGLE, MULTI], ids=["single-token", "multi-token"])
def test_scores_equal_plain_forward_with_and_without_prefix_reuse(lm, words):
    model, tok = lm
    sc = FewShotScorer(model, tok, words, template=TEMPLATE, instruction="Classify sentiment",
                       batch_size=3)
    reuse = sc.score(QUERIES, DEMOS)
    fresh = sc.score(QUERIES, DEMOS, reuse_prefix=False)
    per_q = sc.score(QUERIES, per_query=[DEMOS[: 1 + i % 4] for i in range(len(QUERIES))])
    ref = np.array([_reference(model, tok, sc, DEMOS, q, words) for q in QUERIES])
    ref_pq = np.array([_reference(model, tok, sc, DEMOS[: 1 + i % 4], q, words)
                       for i, q in enumerate(QUERIES)])
    assert reuse.logprobs.shape == (len(QUERIES), len(words))
    np.testing.assert_allclose(reuse.logprobs, ref, atol=1e-9)
    np.testing.assert_allclose(fresh.logprobs, ref, atol=1e-9)
    np.testing.assert_allclose(per_q.logprobs, ref_pq, atol=1e-9)
    # the shared prefix is encoded once: far fewer tokens than the prompts hold
    assert reuse.n_tokens < fresh.n_tokens == fresh.n_prompt_tokens
    assert reuse.n_prompt_tokens == fresh.n_prompt_tokens
    # the scorer's running count is every call's tokens, and is current at each on_batch
    assert sc.tokens_run == reuse.n_tokens + fresh.n_tokens + per_q.n_tokens
    seen: list[int] = []
    start = sc.tokens_run
    again = sc.score(QUERIES, DEMOS, on_batch=lambda i, lp: seen.append(sc.tokens_run))
    assert len(seen) == 3 and seen == sorted(seen) and seen[-1] - start == again.n_tokens


def test_batch_size_does_not_change_scores(lm):
    model, tok = lm
    a = FewShotScorer(model, tok, MULTI, template=TEMPLATE, batch_size=1).score(QUERIES, DEMOS)
    b = FewShotScorer(model, tok, MULTI, template=TEMPLATE, batch_size=8).score(QUERIES, DEMOS)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-10)


def test_calibration_divides_by_content_free_probabilities():
    model, tok = tiny_model("llama", dtype=torch.float64), tiny_tokenizer(True)
    sc = FewShotScorer(model, tok, SINGLE, template=TEMPLATE)
    raw = sc.score(QUERIES, DEMOS)
    cal = sc.score(QUERIES, DEMOS, calibrate=True)
    np.testing.assert_allclose(cal.logprobs, raw.logprobs, atol=1e-10)
    assert cal.calibration.shape == (len(QUERIES), 2)
    np.testing.assert_allclose(cal.calibration.sum(1), 1.0)
    cf = sc.score(["N/A", "", "[MASK]"], DEMOS).probabilities().mean(0)
    np.testing.assert_allclose(cal.calibration[0], cf, atol=1e-10)
    p = raw.probabilities() / cf
    expect = np.asarray(sc.labels)[(p / p.sum(1, keepdims=True)).argmax(1)]
    assert list(cal.predictions) == list(expect)


def test_on_batch_reports_every_query_once():
    model, tok = tiny_model("llama"), tiny_tokenizer(True)
    seen = []
    FewShotScorer(model, tok, SINGLE, template=TEMPLATE, batch_size=3).score(
        QUERIES, DEMOS, on_batch=lambda i, lp: seen.extend(i.tolist()))
    assert sorted(seen) == list(range(len(QUERIES)))


def test_bad_inputs():
    model, tok = tiny_model("llama"), tiny_tokenizer(True)
    with pytest.raises(InputError, match="unknown label"):
        FewShotScorer(model, tok, SINGLE).score(["good"], [("bad", "nonsense")])
    with pytest.raises(InputError, match="longer than the model's context"):
        FewShotScorer(model, tok, SINGLE, max_length=20).score(["good"], DEMOS)
    long_demos = [("good movie " * 30, "pos")] * 4    # 256-position tiny model
    with pytest.raises(InputError, match="context of 256"):
        FewShotScorer(model, tok, SINGLE).score(["good"], long_demos)
    with pytest.raises(InputError, match="empty"):
        FewShotScorer(model, tok, {})
    with pytest.raises(InputError, match="share a verbaliser"):
        FewShotScorer(model, tok, {"a": "good", "b": "good"})
    with pytest.raises(InputError, match="per_query has"):
        FewShotScorer(model, tok, SINGLE).score(["good", "bad"], per_query=[DEMOS])
    with pytest.raises(InputError, match="either"):
        FewShotScorer(model, tok, SINGLE).score(["good"], DEMOS, per_query=[DEMOS])


# ---- metrics --------------------------------------------------------------------------------

def test_metrics_on_a_hand_example():
    t = ["a", "a", "b", "b", "c"]
    p = ["a", "b", "b", "b", "a"]
    assert accuracy(t, p) == pytest.approx(3 / 5)
    # F1: a: tp1 fp1 fn1 -> 0.5; b: tp2 fp1 fn0 -> 0.8; c: 0
    assert macro_f1(t, p) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    m = classification_metrics(t, p, n_boot=200)
    assert m.n == 5 and m.per_label_accuracy == {"a": 0.5, "b": 1.0, "c": 0.0}


@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("abc")), min_size=1,
                max_size=40), st.integers(0, 100))
def test_bootstrap_interval_brackets_the_value_and_is_seeded(pairs, seed):
    t, p = zip(*pairs, strict=True)
    r = bootstrap_ci(t, p, n_boot=200, seed=seed)
    assert 0.0 <= r.low <= r.high <= 1.0
    assert r.value == pytest.approx(accuracy(t, p))
    assert bootstrap_ci(t, p, n_boot=200, seed=seed) == r
    f = macro_f1(t, p)
    assert 0.0 <= f <= 1.0
    if all(a == b for a, b in pairs):
        assert f == 1.0 and r.low == 1.0


def test_metric_bad_inputs():
    with pytest.raises(InputError, match="no predictions"):
        accuracy([], [])
    with pytest.raises(InputError, match="equal length"):
        accuracy(["a"], ["a", "b"])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_bfloat16_model_with_float32_head_scores_close_to_float32(arch):
    """A bf16 model (weights and activations) keeps its output head in float32: the logits are
    float32, the head equals the float32 head exactly, and label scores (multi-token labels
    with prefix reuse and per-query sets) stay close to the float32 model's."""
    from icldistill.models import float32_head

    ref = tiny_model(arch, dtype=torch.float32)
    tok = tiny_tokenizer(add_bos=True)
    half = float32_head(tiny_model(arch, dtype=torch.bfloat16))
    head = half.get_output_embeddings()
    assert head.weight.dtype == torch.float32
    # the float32 copy is the bf16 weight, exactly, and no longer tied to the bf16 embedding
    assert torch.equal(head.weight, ref.get_output_embeddings().weight.bfloat16().float())
    assert half.get_input_embeddings().weight.dtype == torch.bfloat16
    assert float32_head(half) is half                      # idempotent
    ids = torch.tensor([tok("Input: good movie\nLabel:")["input_ids"]])
    with torch.no_grad():
        assert half(ids).logits.dtype == torch.float32
    a = FewShotScorer(ref, tok, MULTI, template=TEMPLATE, batch_size=3)
    b = FewShotScorer(half, tok, MULTI, template=TEMPLATE, batch_size=3)
    sets = [DEMOS[: 1 + i % 4] for i in range(len(QUERIES))]
    for kw in ({"demonstrations": DEMOS}, {"per_query": sets}):
        la, lb = a.score(QUERIES, **kw).logprobs, b.score(QUERIES, **kw).logprobs
        assert np.isfinite(lb).all()
        np.testing.assert_allclose(lb, la, atol=0.15 * np.abs(la).max())
        assert np.corrcoef(la.ravel(), lb.ravel())[0, 1] > 0.99


def test_float32_head_needs_a_linear_head():
    from icldistill.models import float32_head

    with pytest.raises(InputError, match="linear output head"):
        float32_head(torch.nn.Module())


# ---- vectorised bootstrap -------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 80), n_lab=st.integers(1, 12), seed=st.integers(0, 10_000),
       extra=st.booleans())
def test_bootstrap_values_equal_the_metric_of_every_resample(n, n_lab, seed, extra):
    rng = np.random.default_rng(seed)
    labs = [f"l{i}" for i in range(n_lab)]
    t = np.array(rng.choice(labs, n), dtype=object)
    p = np.where(rng.random(n) < 0.5, t, rng.choice([*labs, "other"] if extra else labs, n))
    p = p.astype(object)
    idx = rng.integers(0, n, size=(50, n))
    acc = evaluation.bootstrap_values(t, p, idx, "accuracy")
    f1 = evaluation.bootstrap_values(t, p, idx, "macro_f1", labs)
    for r in range(50):        # bit for bit, not approximately
        assert acc[r] == evaluation.accuracy(t[idx[r]], p[idx[r]])
        assert f1[r] == evaluation.macro_f1(t[idx[r]], p[idx[r]], labs)


def test_classification_metrics_intervals_equal_the_per_resample_loop():
    rng = np.random.default_rng(3)
    labs = [f"l{i}" for i in range(52)]
    t = np.array(rng.choice(labs, 200), dtype=object)
    p = np.where(rng.random(200) < 0.6, t, rng.choice(labs, 200)).astype(object)
    m = evaluation.classification_metrics(t, p, labels=labs, n_boot=400, seed=5)
    loop = evaluation.bootstrap_ci(t, p, lambda a, b: evaluation.macro_f1(a, b, labs),
                                   n_boot=400, seed=5)      # generic path: one call per resample
    assert (m.macro_f1.low, m.macro_f1.high) == (loop.low, loop.high)
    acc = evaluation.bootstrap_ci(t, p, evaluation.accuracy, n_boot=400, seed=5)
    assert (m.accuracy.low, m.accuracy.high) == (acc.low, acc.high)
    with pytest.raises(InputError, match="metric"):
        evaluation.bootstrap_values(t, p, np.zeros((2, 200), dtype=int), "f2")


def test_bootstrap_interval_covers_the_true_accuracy_at_the_stated_rate():
    """Resampling *with* replacement: a resampler without replacement gives degenerate
    intervals (every resample has the same accuracy) and fails both checks."""
    rng = np.random.default_rng(0)
    hits, widths = 0, []
    for rep in range(300):
        correct = rng.random(200) < 0.7
        t = np.array(["a"] * 200, dtype=object)
        p = np.where(correct, "a", "b").astype(object)
        ci = evaluation.bootstrap_ci(t, p, n_boot=400, seed=rep)
        hits += ci.low <= 0.7 <= ci.high
        widths.append(ci.high - ci.low)
    assert 0.90 <= hits / 300 <= 0.99
    assert np.median(widths) > 0.08      # ~ 2 * 1.96 * sqrt(0.21 / 200) = 0.127


def test_demo_labels_shown_writes_demonstration_labels_verbatim():
    """``demo_labels="shown"``: another task's label words appear as given (interference)."""
    from icldistill.evaluation.scoring import FewShotScorer

    from .tiny_models import tiny_model, tiny_tokenizer

    sc = FewShotScorer(tiny_model("llama"), tiny_tokenizer(True),
                       {"pos": "positive", "neg": "negative"}, demo_labels="shown")
    p = sc.prompt([("the film was fun", "great"), ("the plot was bad", "awful")], "it was good")
    assert [d.label for d in p.demonstrations] == ["great", "awful"]
    names = FewShotScorer(tiny_model("llama"), tiny_tokenizer(True),
                          {"pos": "positive", "neg": "negative"})
    with pytest.raises(InputError, match="unknown label"):
        names.prompt([("the film was fun", "great")], "it was good")
    with pytest.raises(InputError, match="demo_labels"):
        FewShotScorer(tiny_model("llama"), tiny_tokenizer(True), {"pos": "positive"},
                      demo_labels="words")


def test_classification_metrics_refuse_a_string_of_labels():
    """Regression: labels="pos" was split into the three labels 'p', 'o', 's'."""
    from icldistill.core.validation import InputError
    from icldistill.evaluation.scoring import classification_metrics

    with pytest.raises(InputError, match="not the string 'pos'"):
        classification_metrics(["pos", "neg"], ["pos", "pos"], labels="pos")


def _sentencepiece_style_tokenizer():
    """A BPE tokenizer that, like Llama 2's and Phi-3's, marks the start of every text it
    encodes with "▁" (so " positive" alone is ['▁', '▁positive'])."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    from tokenizers import pre_tokenizers

    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never")
    corpus = ["Input: the movie was good\nLabel: positive negative\n\nInput: a bad film ."] * 3
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False))
    tok.pre_tokenizer = None
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def test_labels_are_scored_as_the_model_sees_them_after_the_query():
    """Regression: with a tokenizer that marks the start of every encoded text, the label was
    scored as its lone encoding ['▁', '▁positive'], not the ['▁positive'] the model sees after
    the query: off by several nats, and argmax flips."""
    from transformers import AutoModelForCausalLM

    from .tiny_models import _config

    tok = _sentencepiece_style_tokenizer()
    assert tok.convert_ids_to_tokens(tok(" positive", add_special_tokens=False)["input_ids"]) \
        == ["\u2581", "\u2581positive"]
    torch.manual_seed(0)
    cfg = _config("llama")
    cfg.vocab_size = len(tok)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    words = {"pos": "positive", "neg": "negative"}
    demos = [("the movie was good", "pos"), ("a bad film", "neg")]
    queries = ["the film was good", "a bad movie ."]
    scorer = FewShotScorer(model, tok, words, batch_size=2)
    got = scorer.score(queries, demos).logprobs
    for i, q in enumerate(queries):
        prompt = scorer.prompt(demos, q).render().text
        ctx = tok(prompt)["input_ids"]
        for j, lab in enumerate(scorer.labels):
            full = tok(prompt + " " + words[lab])["input_ids"]
            assert full[:len(ctx)] == ctx
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
            want = sum(float(lp[t - 1, full[t]]) for t in range(len(ctx), len(full)))
            assert got[i, j] == pytest.approx(want, abs=1e-4)
