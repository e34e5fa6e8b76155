"""Tracing real transformers models: parity with the untraced model on tiny architectures."""

from __future__ import annotations

import math

import pytest
import torch

import icldistill as ic
from icldistill.data.prompts import Prompt
from icldistill.models.tracing import trace

from .tiny_models import ARCHS, tiny_model, tiny_tokenizer

DEMOS = [("good movie", "positive"), ("bad plot", "negative"), ("great acting", "positive"),
         ("boring story", "negative")]
PROMPT = Prompt(DEMOS, "loved the film", instruction="Classify sentiment")


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param)


def _eager_run(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None], output_attentions=True, use_cache=False)


def test_trace_does_not_change_the_model_and_components_sum_to_the_output(arch_model):
    arch, model = arch_model
    tok = tiny_tokenizer(add_bos=arch in ("llama", "gemma3"))
    tp = PROMPT.tokenize(tok)
    ref = _eager_run(model, tp.input_ids)
    res = trace(model, tok, PROMPT, positions="all")
    assert model.config._attn_implementation == "eager"  # restored
    assert float((res.logits - ref.logits[0]).abs().max()) <= 1e-5
    assert res.max_decomposition_error <= 1e-4
    L = model.config.num_hidden_layers
    H = model.config.num_attention_heads
    T = len(tp)
    assert res.eta.shape == (L, H, T)
    # the captured attention is the model's: segment masses equal sums of eager attention probs
    segs = tp.grouped_segments
    for layer in range(L):
        probs = ref.attentions[layer][0]                      # [H, T, T]
        for name in ("prefix", "demos", "query"):
            cols = torch.tensor([s == name for s in segs])
            eager_mass = probs[:, :, cols].sum(-1).double()
            assert torch.allclose(res.attention_mass[name][layer], eager_mass, atol=1e-5)
    total = sum(res.attention_mass.values())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    assert torch.all((res.demo_share >= 0) & (res.demo_share <= 1 + 1e-6))
    # eta* = N_t / (2 D'_t)
    n = res.num_demo_keys[:, None, :].double()
    assert torch.allclose(res.eta.double(), n / (2 * torch.exp(res.log_normalizer.double())),
                          rtol=1e-5)
    expected_kernel_form = arch != "gemma2"  # gemma2 soft-caps its logits
    assert bool(res.has_kernel_form.all()) is expected_kernel_form
    assert bool(res.has_kernel_form.any()) is expected_kernel_form


def test_sliding_window_limits_visible_demonstrations():
    model = tiny_model("mistral")  # sliding window of 6 tokens
    tok = tiny_tokenizer()
    res = trace(model, tok, PROMPT, positions="last")
    assert int(res.num_demo_keys.max()) <= 6
    model = tiny_model("gemma3")  # layers 0-1 sliding (6), layer 2 global
    tok = tiny_tokenizer(add_bos=True)
    tp = PROMPT.tokenize(tok)
    res = trace(model, tok, PROMPT, positions=[-1])
    n_demo_tokens = len(tp.positions("demos"))
    assert res.num_demo_keys[:2, 0].tolist() == [0, 0]  # the window only sees the query
    assert int(res.num_demo_keys[2, 0]) == n_demo_tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_w0_from_a_real_head_reproduces_its_demo_component(arch):
    """Dual W_0 built from the captured keys/values, applied to the captured query, equals c_D."""
    model = tiny_model(arch, dtype=torch.float64)
    tok = tiny_tokenizer(add_bos=True)
    res = trace(model, tok, PROMPT, positions="query", keep_components=True, keep_w0=True,
                per_demo=True)
    # the model's own softmax runs in float32 even for float64 weights (eager upcasts to fp32),
    # so the output the model used carries float32 rounding; everything below is float64-exact
    assert res.max_decomposition_error < 1e-6
    demo_names = [n for n in res.components if n.startswith("demo:")]
    assert demo_names == [f"demo:{i}" for i in range(len(DEMOS))]
    assert set(res.demo_mass) == set(demo_names)
    total_demo_mass = sum(res.demo_mass.values())
    assert torch.allclose(total_demo_mass, res.attention_mass["demos"], atol=1e-12)
    for layer in range(model.config.num_hidden_layers):
        for head in (0, model.config.num_attention_heads - 1):
            for p in (0, -1):
                w0 = res.w0(layer, head, p)
                c_d = sum(res.components[n][layer, head, p] for n in demo_names)
                got = w0.apply(res.query(layer, head, p)[None])[0]
                assert torch.allclose(got, c_d, rtol=1e-9, atol=1e-12)
                assert w0.num_keys == int(res.num_demo_keys[layer, p])
                if w0.num_keys == 0:  # a sliding window that sees no demonstration
                    assert float(c_d.abs().max()) == 0.0
                    continue
                step = ic.distillation_step(w0)
                assert step.relative_distance < 1e-9
                assert step.eta_star == pytest.approx(float(res.eta[layer, head, p]), rel=1e-9)


def test_w0_is_refused_for_soft_capped_heads():
    model = tiny_model("gemma2")
    res = trace(model, tiny_tokenizer(), PROMPT, positions="last", keep_w0=True)
    with pytest.raises(ic.InputError, match="no kernel form"):
        res.w0(0, 0)


def test_frame_has_one_row_per_layer_head_position():
    model = tiny_model("llama")
    res = trace(model, tiny_tokenizer(), PROMPT)
    df = res.to_frame()
    L, H, P = res.eta.shape
    assert len(df) == L * H * P
    assert {"layer", "head", "position", "token", "eta", "mass_demos", "demo_share",
            "has_kernel_form"} <= set(df.columns)
    assert math.isclose(float(df["eta"].iloc[0]), float(res.eta[0, 0, 0]), rel_tol=1e-6)


def test_trace_errors():
    model = tiny_model("llama")
    tok = tiny_tokenizer()
    long_prompt = Prompt(DEMOS * 20, "good")
    with pytest.raises(ic.InputError, match="context is 256"):
        trace(model, tok, long_prompt)
    with pytest.raises(ic.InputError, match="positions"):
        trace(model, tok, PROMPT, positions="middle")
    with pytest.raises(ic.InputError, match="out of range"):
        trace(model, tok, PROMPT, positions=[10_000])
    with pytest.raises(ic.InputError, match="keep_w0"):
        trace(model, tok, PROMPT).w0(0, 0)


def test_unsupported_architecture_is_named():
    from transformers import AutoModelForCausalLM, BloomConfig

    cfg = BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(ic.InputError, match="Bloom"):
        trace(model, tiny_tokenizer(), PROMPT)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_grouped_reductions_equal_the_fine_segment_path(arch):
    """Without kept components the tracer forms only the three groups' components; every
    statistic equals the one computed from the per-demonstration components."""
    model = tiny_model(arch, dtype=torch.float64)
    tok = tiny_tokenizer(add_bos=True)
    fine = trace(model, tok, PROMPT, positions="all", keep_components=True, per_demo=True)
    grouped = trace(model, tok, PROMPT, positions="all", per_demo=True)
    assert grouped.components is None
    for name in ("eta", "log_normalizer", "demo_share", "mean_demo_logit", "mean_logit"):
        a, b = getattr(fine, name), getattr(grouped, name)
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True), name
    for g in ("prefix", "demos", "query"):
        assert torch.allclose(fine.component_norm[g], grouped.component_norm[g], rtol=1e-12,
                              atol=1e-12)
        assert torch.allclose(fine.attention_mass[g], grouped.attention_mass[g], atol=1e-14)
    for d in fine.demo_mass:
        assert torch.allclose(fine.demo_mass[d], grouped.demo_mass[d], atol=1e-14)
    assert grouped.max_decomposition_error == pytest.approx(fine.max_decomposition_error,
                                                            rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_group_masses_without_per_demo_equal_the_fine_path(arch):
    """Without ``per_demo`` the tracer keeps only the three groups' masses call by call (not
    one row per demonstration); they and every other statistic equal the fine path's."""
    model = tiny_model(arch, dtype=torch.float64)
    tok = tiny_tokenizer(add_bos=True)
    fine = trace(model, tok, PROMPT, positions="all", per_demo=True)
    grouped = trace(model, tok, PROMPT, positions="all")
    assert grouped.demo_mass is None
    for g in ("prefix", "demos", "query"):       # sums over the same keys in another order
        assert torch.allclose(fine.attention_mass[g], grouped.attention_mass[g], rtol=0,
                              atol=1e-14), g
    for name in ("eta", "log_normalizer", "demo_share", "mean_demo_logit", "mean_logit",
                 "num_demo_keys", "num_keys", "has_kernel_form"):
        torch.testing.assert_close(getattr(fine, name), getattr(grouped, name), rtol=0, atol=0,
                                   equal_nan=True, msg=name)


def test_a_trace_after_another_shape_reuses_nothing_stale():
    """The reductions reuse buffers within one trace only: tracing a long prompt, then a short
    one, then the long one again gives the first result exactly."""
    model = tiny_model("llama", dtype=torch.float64)
    tok = tiny_tokenizer(add_bos=True)
    short = Prompt(DEMOS[:1], "loved the film")
    first = trace(model, tok, PROMPT, positions="all")
    small = trace(model, tok, short, positions="all")
    again = trace(model, tok, PROMPT, positions="all")
    assert small.eta.shape[-1] < first.eta.shape[-1]
    for name in ("eta", "log_normalizer", "demo_share", "mean_demo_logit"):
        torch.testing.assert_close(getattr(first, name), getattr(again, name), rtol=0, atol=0,
                                   equal_nan=True, msg=name)


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gemma2", "gemma3"])
def test_reductions_split_over_rows_and_heads_equal_one_block(monkeypatch, arch):
    """Heads are reduced a few at a time and traced rows a block at a time, each block over
    only the keys its rows see (causal and sliding-window masks, soft-capping); the statistics
    do not depend on the split."""
    model = tiny_model(arch, dtype=torch.float64)
    tok = tiny_tokenizer(add_bos=True)
    whole = trace(model, tok, PROMPT, positions="all", per_demo=True)
    T = len(PROMPT.tokenize(tok))
    monkeypatch.setattr("icldistill.models.tracing._ROW_BLOCK", 3)
    monkeypatch.setattr("icldistill.models.tracing._CHUNK_ELEMENTS", 3 * T)  # one head
    split = trace(model, tok, PROMPT, positions="all", per_demo=True)
    few = trace(model, tok, PROMPT, positions=[0, 5, 6, -1], per_demo=True)
    for name in ("eta", "log_normalizer", "demo_share", "mean_demo_logit", "mean_logit"):
        a, b = getattr(whole, name), getattr(split, name)
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True), name
        assert torch.allclose(a[..., few.positions], getattr(few, name), rtol=1e-12,
                              atol=1e-12, equal_nan=True), name
    for d in whole.demo_mass:
        assert torch.allclose(whole.demo_mass[d], split.demo_mass[d], atol=1e-14)
    assert split.max_decomposition_error < 1e-6
