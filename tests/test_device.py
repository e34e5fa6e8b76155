"""Devices: ``resolve_device`` refuses what this machine lacks, ``parse_device`` only names;
on a machine with CUDA, a tiny model scores and traces on the GPU as it does on the CPU, and
every selector chooses the same demonstrations from embeddings on the GPU (skipped
elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icldistill.core.validation import InputError
from icldistill.data.prompts import Demonstration, Prompt
from icldistill.evaluation.scoring import FewShotScorer
from icldistill.models.registry import parse_device, resolve_device
from icldistill.models.tracing import trace
from icldistill.selection import SELECTORS, Pool, make_selector

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


def test_parse_device_names_without_asking_the_machine():
    assert parse_device("cuda:3") == torch.device("cuda", 3)      # whether or not it exists
    assert parse_device(None) == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device 'gpu9'"):
        parse_device("gpu9")
    with pytest.raises(InputError, match="only cpu, cuda and mps"):
        parse_device("meta")


def _selections(device: str) -> dict[str, np.ndarray]:
    """Every selector that needs only embeddings, labels and texts, on a toy pool whose
    embeddings live on ``device``."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(60, 8, generator=g, dtype=torch.float64)
    labels = np.array(["a", "b", "c"] * 20)
    texts = [f"item {i} word{i % 7} word{i % 5}" for i in range(60)]
    pool = Pool(emb[:50].to(device), labels[:50], texts[:50])
    targets = Pool(emb[50:].to(device), None, texts[50:])
    out = {}
    for name in SELECTORS:
        sel = make_selector(name, seed=0)
        needs = set(sel.needs) | set(getattr(sel, "target_needs", ()))
        if needs - {"embeddings", "labels", "texts"}:
            continue
        out[name] = sel.fit(pool).select(targets, 4).indices
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_selectors_on_cuda_embeddings_choose_what_they_choose_on_the_cpu():
    cpu, gpu = _selections("cpu"), _selections("cuda")
    assert set(cpu) == set(gpu) and len(cpu) >= 8
    for name in cpu:
        assert np.array_equal(cpu[name], gpu[name]), name


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
