"""Tracing the real packaged models (fetched from PyPI on first use, then cached).

SmolLM2 (Llama, no BOS), Gemma3 (BOS, sliding windows, q/k norms, GQA 4:1) and Qwen2.5 (GQA 7:1,
q/k/v biases).
"""

from __future__ import annotations

import pytest
import torch

from icldistill.data.prompts import Prompt
from icldistill.models import load_model
from icldistill.models.tracing import trace

pytestmark = pytest.mark.slow

DEMOS = [("a delightful, moving film", "positive"), ("tedious and far too long", "negative"),
         ("one of the best films of the year", "positive"), ("the plot makes no sense",
                                                            "negative")]
PROMPT = Prompt(DEMOS, "a charming story with great acting",
                instruction="Classify the sentiment of each review.")


SHAPES = {"smollm2-135m": (30, 9), "gemma3-270m": (18, 4), "qwen2.5-0.5b": (24, 14)}


@pytest.mark.parametrize("name", list(SHAPES))
def test_real_model_trace_matches_the_untraced_model(name):
    loaded = load_model(name, progress=False)
    model, tok = loaded.model, loaded.tokenizer
    tp = PROMPT.tokenize(tok)
    assert tp.segments[0] == "prefix" and tp.segments[-1] == "query"
    with torch.no_grad():
        ref = model(input_ids=tp.input_ids[None]).logits[0]
    res = trace(model, tok, PROMPT, positions="query", keep_components=True, keep_w0=True)
    assert float((res.logits - ref[res.positions]).abs().max()) <= 1e-5
    assert res.max_decomposition_error <= 1e-4
    assert res.eta.shape == (*SHAPES[name], len(res.positions))
    assert bool(res.has_kernel_form.all())
    total = sum(res.attention_mass.values())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    # every demonstration token is visible (the prompt is shorter than any sliding window)
    assert int(res.num_demo_keys.min()) == len(tp.positions("demos"))
    # the model does the task: the next token after "Label:" is the right label word
    assert tok.decode([int(res.logits[-1].argmax())]).strip() == "positive"
    # W_0 built from the real keys/values reproduces the head's demonstration component
    demo_names = [n for n in res.components if n.startswith("demo:")]
    n_layers, n_heads = SHAPES[name]
    for layer, head in ((0, 0), (n_layers // 2, 1), (n_layers - 1, n_heads - 1)):
        w0 = res.w0(layer, head)
        c_d = sum(res.components[n][layer, head, -1] for n in demo_names).double()
        got = w0.apply(res.query(layer, head)[None])[0].double()
        assert torch.allclose(got, c_d, rtol=1e-4, atol=1e-5 * float(c_d.abs().max()))


def test_the_trace_benchmark_profile_wraps_the_tracers_current_pieces():
    """``bench_trace.py --profile`` times the tracer's reduction pieces by name; it failed with
    an AttributeError once a piece was renamed (``attention_probs`` -> ``attention_probs_``)."""
    from types import SimpleNamespace

    from icldistill.data.prompts import Prompt

    from .scripts import load_script
    from .tiny_models import tiny_model, tiny_tokenizer

    mod = load_script("benchmarks/bench_trace.py")
    tok = tiny_tokenizer(True)
    lm = SimpleNamespace(model=tiny_model("llama"), tokenizer=tok)
    prompt = Prompt([("good movie", "positive"), ("bad plot", "negative")], "fine film")
    out = mod._profile_trace(lm, prompt.tokenize(tok), "all")
    assert 0 < out["segment_decomposition_s"] <= out["record_s"] <= out["attention_incl_record_s"]
    assert "aten::" in out["op_table"]
