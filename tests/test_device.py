"""Devices: ``resolve_device`` refuses what this machine lacks; on a machine with CUDA, a tiny
model scores and traces on the GPU as it does on the CPU (skipped elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icldistill.core.validation import InputError
from icldistill.data.prompts import Demonstration, Prompt
from icldistill.evaluation.scoring import FewShotScorer
from icldistill.models.registry import resolve_device
from icldistill.models.tracing import trace

from .tiny_models import tiny_model, tiny_tokenizer


def test_resolve_device_names_what_it_cannot_use():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device 'gpu9'"):
        resolve_device("gpu9")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
    else:
        with pytest.raises(InputError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scoring_and_tracing_on_cuda_match_the_cpu(float32_default):
    tok = tiny_tokenizer(True)
    cpu = tiny_model("llama")
    gpu = tiny_model("llama").to("cuda")
    demos = [("the movie was good", "pos"), ("the plot was bad", "neg")] * 2
    queries = ["the story was fun", "the acting was boring", "the film was great"]
    words = {"pos": "positive", "neg": "negative"}
    a = FewShotScorer(cpu, tok, words).score(queries, demos)
    b = FewShotScorer(gpu, tok, words).score(queries, demos)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert np.array_equal(a.predictions, b.predictions)
    prompt = Prompt([Demonstration(x, words[y]) for x, y in demos], queries[0])
    ta, tb = trace(cpu, tok, prompt), trace(gpu, tok, prompt)
    np.testing.assert_allclose(ta.eta.numpy(), tb.eta.numpy(), rtol=1e-3)
    assert tb.max_decomposition_error < 1e-4
