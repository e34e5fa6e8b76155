"""The tracer is exact or refuses: additive biases clear the kernel form per head, per-head masks
are used per head, unknown keywords and attention it does not reproduce are refused, repeated
calls per layer are kept, attention sinks are a segment, hybrids and sparse attention are traced
over what the model really attends to."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.models.llama import modeling_llama

import icldistill as ic
from icldistill.data.prompts import Prompt
from icldistill.models.tracing import SINK, TRACE_ATTENTION, trace

from .test_tracing_coverage import tiny_causal_lm
from .tiny_models import VOCAB, tiny_model, tiny_tokenizer

DEMOS = [("good movie", "positive"), ("bad plot", "negative"), ("great acting", "positive"),
         ("boring story", "negative")]
PROMPT = Prompt(DEMOS, "loved the film", instruction="Classify sentiment")


pytestmark = pytest.mark.usefixtures("float32_default")


@pytest.fixture
def head_masks():
    """Install a mask function (for eager and for the tracer) that turns the causal mask into a
    per-head float mask ``[1, H, T, S]``: ``edit(mask [H, T, S]) -> [H, T, S]``."""
    saved = {k: ALL_MASK_ATTENTION_FUNCTIONS[k] for k in ("eager", TRACE_ATTENTION)}

    def install(edit, heads):
        def masked(*args, **kwargs):
            m = eager_mask(*args, **kwargs)                           # [B, 1, T, S], 0 / min
            return edit(m[:, 0:1].expand(m.shape[0], heads, *m.shape[2:]).clone())
        for k in saved:
            ALL_MASK_ATTENTION_FUNCTIONS.register(k, masked)

    yield install
    for k, fn in saved.items():
        ALL_MASK_ATTENTION_FUNCTIONS.register(k, fn)


def _eager(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[None], output_attentions=True, use_cache=False)


# ----------------------------------------------------------------- additive bias, per-head masks
def test_alibi_float_mask_clears_the_kernel_form_of_the_biased_heads_only(head_masks):
    """ALiBi-style float mask: ``slope_h * (j - i)`` on allowed keys, head 0 with slope 0. The
    biased heads lose their kernel form (no W_0), the unbiased one keeps it; the decomposition
    stays exact and its masses are the model's attention probabilities."""
    model = tiny_model("llama")
    H = model.config.num_attention_heads
    slopes = torch.tensor([0.0, 0.5, 0.25, 0.125])[:H]

    def alibi(m):
        T, S = m.shape[-2:]
        dist = (torch.arange(S)[None, :] - torch.arange(T)[:, None]).float()   # j - i <= 0
        bias = slopes[:, None, None] * dist                                     # [H, T, S]
        return torch.where(m == 0, bias.to(m.dtype), m)

    head_masks(alibi, H)
    tok = tiny_tokenizer()
    tp = PROMPT.tokenize(tok)
    ref = _eager(model, tp.input_ids)
    res = trace(model, tok, PROMPT, positions="all", keep_w0=True)
    assert float((res.logits - ref.logits[0]).abs().max()) <= 1e-5
    assert res.max_decomposition_error <= 1e-4
    assert res.has_kernel_form[:, 0].all()
    assert not res.has_kernel_form[:, 1:].any()
    for layer in range(model.config.num_hidden_layers):
        probs = ref.attentions[layer][0].double()                            # [H, T, T]
        for name in ("prefix", "demos", "query"):
            cols = torch.tensor([s == name for s in tp.grouped_segments])
            assert torch.allclose(res.attention_mass[name][layer], probs[:, :, cols].sum(-1),
                                  atol=1e-5)
    res.w0(0, 0)
    with pytest.raises(ic.InputError, match="no kernel form"):
        res.w0(0, 1)


def test_per_head_masks_are_used_per_head(head_masks):
    """Head h does not see the keys ``j % (h + 2) == 0`` (except its own position): every head
    has its own visible demonstrations, its own ``N_t`` and its own ``W_0``."""
    model = tiny_model("llama", dtype=torch.float64)
    H = model.config.num_attention_heads

    def drop(m):
        T, S = m.shape[-2:]
        j, i = torch.arange(S)[None, :], torch.arange(T)[:, None]
        for h in range(H):
            m[:, h] = m[:, h].masked_fill((j % (h + 2) == 0) & (j != i),
                                          torch.finfo(m.dtype).min)
        return m

    head_masks(drop, H)
    tok = tiny_tokenizer()
    tp = PROMPT.tokenize(tok)
    ref = _eager(model, tp.input_ids)
    res = trace(model, tok, PROMPT, positions="query", keep_w0=True)
    assert float((res.logits - ref.logits[0, tp.positions("query")]).abs().max()) <= 1e-6
    assert res.max_decomposition_error <= 1e-6
    assert res.has_kernel_form.all()                  # masking is not a bias
    demo_pos = tp.positions("demos")
    for p, t in enumerate(tp.positions("query").tolist()):
        for h in range(H):
            expected = int(((demo_pos % (h + 2) != 0) & (demo_pos <= t)).sum())
            assert int(res.num_demo_keys_by_head[0, h, p]) == expected
            assert res.w0(0, h, p).num_keys == expected
    assert len(set(res.num_demo_keys_by_head[0, :, -1].tolist())) > 1
    assert torch.equal(res.num_demo_keys, res.num_demo_keys_by_head.amax(1))
    n = res.num_demo_keys_by_head.double()
    assert torch.allclose(res.eta, n / (2 * torch.exp(res.log_normalizer)), rtol=1e-9)


def test_position_bias_and_dynamic_masks_clear_the_kernel_form():
    """Inkling's relative ``position_bias=`` and Doge's dynamic per-head float masks are
    additive biases: decomposed exactly, no kernel form."""
    tok = tiny_tokenizer()
    for arch in ("inkling_text", "doge"):
        model = tiny_causal_lm(arch)
        res = trace(model, tok, PROMPT, positions="all")
        assert res.max_decomposition_error <= 1e-4
        assert not res.has_kernel_form.any(), arch
    assert int(res.num_keys_by_head.max()) <= 8       # Doge keeps its top-8 keys per head


# ----------------------------------------------------------------- refusals
def _inject(monkeypatch, **extra):
    forward = modeling_llama.LlamaAttention.forward

    @functools.wraps(forward)
    def patched(self, *args, **kwargs):
        return forward(self, *args, **kwargs, **extra)

    monkeypatch.setattr(modeling_llama.LlamaAttention, "forward", patched)


def test_an_unknown_keyword_is_refused_by_name(monkeypatch):
    model = tiny_model("llama")
    tok = tiny_tokenizer()
    _inject(monkeypatch, relative_bias=torch.ones(1))
    with pytest.raises(ic.InputError, match=r"relative_bias=.*does not understand"):
        trace(model, tok, PROMPT)
    assert model.config._attn_implementation == "eager"


def test_an_unknown_keyword_set_to_none_is_ignored(monkeypatch):
    model = tiny_model("llama")
    _inject(monkeypatch, relative_bias=None)
    res = trace(model, tiny_tokenizer(), PROMPT)
    assert res.max_decomposition_error <= 1e-4


def test_self_check_refuses_attention_it_does_not_reproduce(monkeypatch):
    """The model's own eager attention adds something the tracer cannot see (a bias on the
    first key): the components no longer sum to its output, so the trace is refused."""
    original = modeling_llama.eager_attention_forward

    def hidden_bias(module, query, key, value, attention_mask, **kwargs):
        bias = torch.zeros(query.shape[2], key.shape[2])
        bias[:, 0] = 2.0
        mask = bias if attention_mask is None else attention_mask + bias
        return original(module, query, key, value, mask, **kwargs)

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", hidden_bias)
    with pytest.raises(ic.InputError, match="differs from the model's own attention"):
        trace(tiny_model("llama"), tiny_tokenizer(), PROMPT, positions="last")


def test_training_mode_with_attention_dropout_is_refused():
    model = tiny_model("llama")
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    with pytest.raises(ic.InputError, match=r"model\.eval\(\)"):
        trace(model, tiny_tokenizer(), PROMPT)


def test_training_mode_with_residual_dropout_is_refused():
    """Regression: only attention dropout was refused; GPT-2's residual and embedding dropout
    made every trace of the same prompt differ (eta by 1e-3, logits by 0.2)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                     resid_pdrop=0.3, embd_pdrop=0.1, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).train()
    with pytest.raises(ic.InputError, match=r"dropout active in transformer\.drop.*model\.eval"):
        trace(model, tiny_tokenizer(add_bos=False), PROMPT)
    model.eval()
    a = trace(model, tiny_tokenizer(add_bos=False), PROMPT)
    assert torch.equal(a.eta, trace(model, tiny_tokenizer(add_bos=False), PROMPT).eta)
    lm = tiny_model("llama").train()            # training mode without dropout: traced
    assert trace(lm, tiny_tokenizer(), PROMPT).max_decomposition_error < 1e-4


def test_gpt2_reorder_and_upcast_attention_is_refused_by_name():
    """Regression: GPT-2 runs its float32-upcast attention only under the "eager" name, so the
    tracer decomposed (and self-checked against) the plain path instead, silently."""
    model = tiny_model("gpt2")
    model.config.reorder_and_upcast_attn = True
    with pytest.raises(ic.InputError, match="reorder_and_upcast_attn=True"):
        trace(model, tiny_tokenizer(add_bos=False), PROMPT)


@pytest.mark.parametrize("positions", [[1.7], [True], [2.0, 2.9], torch.tensor([[3, 4]])])
def test_positions_must_be_token_indices(positions):
    """Regression: positions 1.7 or True were truncated to 1, [2.0, 2.9] to [2, 2]."""
    with pytest.raises(ic.InputError, match="positions"):
        trace(tiny_model("llama"), tiny_tokenizer(), PROMPT, positions=positions)
    ok = trace(tiny_model("llama"), tiny_tokenizer(), PROMPT, positions=torch.tensor([3, -1]))
    assert ok.positions.tolist()[0] == 3


def test_a_hand_built_tokenized_prompt_is_checked():
    """Regression: an unknown segment name gave 'tuple.index(x): x not in tuple', segments one
    short of the ids a message about key/value caches, no query tokens 'range() arg 3 must
    not be zero'."""
    from icldistill.data.prompts import TokenizedPrompt

    tp = PROMPT.tokenize(tiny_tokenizer())
    renamed = tuple("instruction" if s == "prefix" else s for s in tp.segments)
    with pytest.raises(ic.InputError, match=r"unknown segment name\(s\) \['instruction'\]"):
        TokenizedPrompt(tp.input_ids, renamed, tp.text)
    with pytest.raises(ic.InputError, match=r"tokens but .* segment names"):
        TokenizedPrompt(tp.input_ids, tp.segments[:-1], tp.text)
    with pytest.raises(ic.InputError, match="1-D LongTensor"):
        TokenizedPrompt(tp.input_ids.float(), tp.segments, tp.text)
    no_query = TokenizedPrompt(tp.input_ids, tuple("prefix" if s == "query" else s
                                                   for s in tp.segments), tp.text)
    with pytest.raises(ic.InputError, match="no query tokens"):
        trace(tiny_model("llama"), tiny_tokenizer(), no_query)
    assert len(trace(tiny_model("llama"), tiny_tokenizer(), no_query, positions="last")
               .positions) == 1


# ----------------------------------------------------------------- calls, sinks, hybrids, sparse
def test_two_attention_calls_in_one_layer_are_both_recorded():
    """DiffLlama calls attention twice per layer (same q, k; two halves of v): two entries per
    layer, with identical attention masses and different components."""
    model = tiny_causal_lm("diffllama")
    res = trace(model, tiny_tokenizer(), PROMPT, positions="all")
    L = model.config.num_hidden_layers
    assert res.layer_index.tolist() == [i for i in range(L) for _ in range(2)]
    assert res.call_index.tolist() == [0, 1] * L
    assert res.num_layers == 2 * L
    for i in range(0, 2 * L, 2):
        for g in ("prefix", "demos", "query"):
            assert torch.allclose(res.attention_mass[g][i], res.attention_mass[g][i + 1],
                                  atol=1e-12)
        assert not torch.allclose(res.component_norm["demos"][i],
                                  res.component_norm["demos"][i + 1])
    df = res.to_frame()
    assert {"layer", "call"} <= set(df.columns)
    assert df.groupby(["layer", "call"]).ngroups == 2 * L


@pytest.mark.parametrize("arch", ["gpt_oss", "inkling2_text"])
def test_attention_sinks_are_a_zero_value_key_of_their_own(arch):
    """GPT-OSS (``s_aux=``, one logit per head) and Inkling2 (``sinks=``, one per head and
    query): the sink takes its share of the mass, enters ``D'`` and lowers ``eta*``."""
    model = tiny_causal_lm(arch)
    res = trace(model, tiny_tokenizer(), PROMPT, positions="all")
    assert res.max_decomposition_error <= 1e-4
    sink = res.attention_mass[SINK]
    assert float(sink.min()) > 0
    total = sum(res.attention_mass.values())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    assert float(res.component_norm[SINK].abs().max()) == 0.0
    # D' counts the sink: without it the normaliser is D' (1 - sink mass), eta* is larger
    eta_without = res.eta / (1 - sink)
    assert bool((eta_without > res.eta)[res.num_demo_keys_by_head > 0].all())
    if arch == "gpt_oss":
        for i in range(res.num_layers):
            s = model.model.layers[i].self_attn.sinks.detach().double()        # [H]
            assert torch.allclose(res.log_normalizer[i], s[:, None] - torch.log(sink[i]),
                                  atol=1e-5)


def test_sinks_keep_the_kernel_form_and_w0_reproduces_the_demo_component():
    model = tiny_causal_lm("gpt_oss")
    res = trace(model, tiny_tokenizer(), PROMPT, positions="query", keep_components=True,
                keep_w0=True)
    assert res.has_kernel_form.all()
    demo_names = [n for n in res.components if n.startswith("demo:")]
    for layer in range(res.num_layers):
        for head in (0, res.num_heads - 1):
            w0 = res.w0(layer, head)
            if w0.num_keys == 0:
                continue
            c_d = sum(res.components[n][layer, head, -1] for n in demo_names)
            got = w0.apply(res.query(layer, head)[None])[0]
            # the components come from the model's float32 logits, W_0 from float64 q . k
            assert torch.allclose(got, c_d, rtol=1e-4, atol=1e-6)
            step = ic.distillation_step(w0)
            assert step.eta_star == pytest.approx(float(res.eta[layer, head, -1]), rel=1e-9)


@pytest.mark.parametrize("arch", ["qwen3_next", "lfm2_moe", "jamba"])
def test_hybrid_models_trace_their_softmax_layers_and_list_the_others(arch):
    model = tiny_causal_lm(arch)
    tok = tiny_tokenizer()
    ids = PROMPT.tokenize(tok).input_ids
    with torch.no_grad():
        ref = model(input_ids=ids[None], use_cache=False).logits[0]
    res = trace(model, tok, PROMPT, positions="all")
    assert res.untraced_layers == (0,)
    assert res.layer_index.tolist() == [1]
    assert float((res.logits - ref).abs().max()) <= 1e-5
    assert res.max_decomposition_error <= 1e-4


@pytest.mark.parametrize("arch", ["deepseek_v32", "glm_moe_dsa"])
def test_sparse_attention_is_decomposed_over_the_selected_keys_only(arch):
    """DeepSeek-V3.2-style indexers pass the selected keys as ``indices=``: every position
    attends to ``min(t + 1, index_topk)`` keys, and the decomposition over those is exact."""
    model = tiny_causal_lm(arch)
    top_k = model.config.index_topk
    tok = tiny_tokenizer()
    T = len(PROMPT.tokenize(tok))
    assert T > top_k
    res = trace(model, tok, PROMPT, positions="all")
    assert res.max_decomposition_error <= 1e-4
    expected = torch.clamp(torch.arange(T) + 1, max=top_k)
    assert torch.equal(res.num_keys_by_head, expected.expand_as(res.num_keys_by_head))
    assert math.isclose(float(sum(res.attention_mass.values()).mean()), 1.0, abs_tol=1e-6)
