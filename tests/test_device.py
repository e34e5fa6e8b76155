"""Devices: ``resolve_device`` refuses what this machine lacks (so does ``make_encoder``),
``parse_device`` only names; on a machine with CUDA, a tiny model scores and traces on the GPU
as it does on the CPU, every selector chooses the same demonstrations from embeddings on the GPU
(duplicated pool items too), a harness grid records what it records on the CPU, and every
architecture of the tracer coverage traces on the GPU as on the CPU (skipped elsewhere; results
of a run on an H200 in ``benchmarks/results/device_h200.md``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from icldistill.core.validation import InputError
from icldistill.data.prompts import Demonstration, Prompt
from icldistill.encoders import MiniLMEncoder, make_encoder
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


def _missing_device() -> str:
    """A CUDA device this machine lacks: ``cuda`` without CUDA, else one past the last."""
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


@pytest.mark.parametrize("spec", ["minilm", "hidden:0", "kv:0"])
def test_make_encoder_refuses_a_device_this_machine_lacks(spec):
    """Not accepted and then failing in ``encode`` with torch's raw "Torch not compiled with
    CUDA enabled": the one-line error of ``resolve_device``, naming the device."""
    missing = _missing_device()
    with pytest.raises(InputError, match=f"device '{missing}'"):
        make_encoder(spec, device=missing)
    with pytest.raises(InputError, match="unknown device 'gpu9'"):
        make_encoder(spec, device="gpu9")


def test_the_minilm_encoder_checks_its_device_when_built():
    missing = _missing_device()
    with pytest.raises(InputError, match=f"device '{missing}'"):
        MiniLMEncoder(device=missing)
    assert MiniLMEncoder().device == torch.device("cpu")          # lazy: nothing is loaded
    assert make_encoder("minilm").device == torch.device("cpu")
    assert make_encoder("minilm", device="cpu").model is None


def _selections(device: str, duplicates: bool = False) -> dict[str, np.ndarray]:
    """Every selector that needs only embeddings, labels and texts, on a toy pool whose
    embeddings live on ``device`` (with ``duplicates``, pool items 25-49 repeat items 0-24, text
    and embedding: exact ties everywhere)."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(60, 8, generator=g, dtype=torch.float64)
    labels = np.array(["a", "b", "c"] * 20)
    texts = [f"item {i} word{i % 7} word{i % 5}" for i in range(60)]
    if duplicates:
        emb[25:50] = emb[:25]
        labels[25:50] = labels[:25]
        texts[25:50] = texts[:25]
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
@pytest.mark.parametrize("duplicates", [False, True])
def test_selectors_on_cuda_embeddings_choose_what_they_choose_on_the_cpu(duplicates):
    cpu, gpu = _selections("cpu", duplicates), _selections("cuda", duplicates)
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


def _grid(tmp_path, device: str) -> dict:
    """A small harness grid of a tiny llama on ``device``: per unit, its selections, its
    predictions and its recorded figures."""
    from icldistill.evaluation import Harness, load_predictions, unit_grid

    from .test_harness import _loader, _write_task

    toy = _write_task(tmp_path / f"toy-{device}.jsonl")
    units = unit_grid(models=["tiny"], tasks=["toy"],
                      selectors=["random", "knn", "mmd", "mmd-local", "mmd-joint", "dpp",
                                 "mmd-katt"],
                      ks=[2], seeds=1, encoder="hidden:-1", n_test=12)
    h = Harness(tmp_path / device, tasks={"toy": toy}, model_loader=_loader, progress=False,
                embedding_cache=tmp_path / f"emb-{device}", reference_encoder="hidden:-1",
                n_boot=50, batch_size=4, device=device)
    results = h.run(units)
    preds = load_predictions(h.out_dir)
    return {r.key: ((h.out_dir / "selections" / f"{r.key}.json").read_text(), preds[r.key],
                    r.accuracy.value, r.mmd2_task, r.mmd2_query) for r in results}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_harness_grid_on_cuda_records_what_it_records_on_the_cpu(tmp_path):
    """The evaluation harness with ``device="cuda"`` (the model, its caches, the hidden-state
    encoder and the selectors' kernels on the GPU) chooses the same demonstrations and reaches
    the same accuracy as on the CPU, unit by unit (float64 tiny llama)."""
    import json

    cpu, gpu = _grid(tmp_path, "cpu"), _grid(tmp_path, "cuda")
    assert set(cpu) == set(gpu) and len(cpu) == 7
    for key in cpu:
        a, b = cpu[key], gpu[key]
        assert json.loads(a[0])["indices"] == json.loads(b[0])["indices"], key
        assert a[1] == b[1] and a[2] == b[2], key           # per-item predictions, accuracy
        np.testing.assert_allclose(a[3:], b[3:], rtol=1e-9, err_msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bfloat16_trace_on_cuda_against_float64_on_the_cpu():
    """A bfloat16 model on the GPU is traced with its attention normalisers in log space: every
    eta finite and positive, within bfloat16's precision of the float64 trace on the CPU, and the
    decomposition check (the distilled output against the layer's own) still small."""
    tok = tiny_tokenizer(True)
    ref = tiny_model("llama", dtype=torch.float64)
    gpu = tiny_model("llama", dtype=torch.bfloat16).to("cuda")
    words = {"pos": "positive", "neg": "negative"}
    demos = [("the movie was good", "pos"), ("the plot was bad", "neg")] * 2
    prompt = Prompt([Demonstration(x, words[y]) for x, y in demos], "the story was fun")
    ta, tb = trace(ref, tok, prompt), trace(gpu, tok, prompt)
    eta = tb.eta.double().cpu()
    assert torch.isfinite(eta).all() and (eta > 0).all()
    np.testing.assert_allclose(eta.numpy(), ta.eta.double().numpy(), rtol=0.1)
    assert ta.max_decomposition_error < 1e-5
    assert tb.max_decomposition_error < 0.05


def _calls_topk(model, ids) -> bool:
    """Whether ``model``'s forward on ``ids`` calls ``torch.topk`` or ``Tensor.topk``."""
    calls = []
    real_fn, real_method = torch.topk, torch.Tensor.topk

    def fn(*a, **kw):
        calls.append(1)
        return real_fn(*a, **kw)

    def method(self, *a, **kw):
        calls.append(1)
        return real_method(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(torch, "topk", fn)
        mp.setattr(torch.Tensor, "topk", method)
        model(input_ids=ids[None], use_cache=False)
    return bool(calls)


def _coverage():
    from . import test_tracing_coverage as cov
    return cov


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", _coverage().ARCHS)
def test_every_architecture_traces_on_cuda_as_on_the_cpu(arch, float32_default):
    """The tracer coverage on the GPU: every tiny architecture the CPU traces exactly is traced
    exactly on CUDA too (logits equal the eager forward's on CUDA, segments sum to the attention
    output) with the CPU's eta, and every one the CPU refuses is refused with the same error."""
    cov = _coverage()
    if arch in cov.NOT_BUILDABLE:
        pytest.skip(f"{arch} cannot be built tiny: {cov.NOT_BUILDABLE[arch]}")
    tok = tiny_tokenizer()
    ids = cov.PROMPT.tokenize(tok).input_ids
    cpu = cov.tiny_causal_lm(arch)
    gpu = cov.tiny_causal_lm(arch).to("cuda")
    with torch.no_grad():
        ref_cpu = cpu(input_ids=ids[None], use_cache=False).logits[0].float()
        ref = gpu(input_ids=ids[None].cuda(), use_cache=False).logits[0].float().cpu()
    try:
        on_cpu = trace(cpu, tok, cov.PROMPT, positions="all")
    except InputError as exc:
        with pytest.raises(InputError) as on_gpu:
            trace(gpu, tok, cov.PROMPT, positions="all")
        assert str(on_gpu.value) == str(exc)
        return
    res = trace(gpu, tok, cov.PROMPT, positions="all")
    scale = max(1.0, float(ref.abs().max()))
    assert float((res.logits.float().cpu() - ref).abs().max()) <= 1e-4 * scale, arch
    assert res.max_decomposition_error <= 1e-3, arch
    if not torch.allclose(ref, ref_cpu, rtol=1e-3, atol=1e-4 * scale):
        # the model itself computes another function on CUDA. Only a forward with a top-k of its
        # own may do that (a sparse-attention indexer, an expert router, a dynamic mask: CUDA
        # breaks ties among near-equal scores its own way); the trace is exact there (above)
        assert _calls_topk(cpu, ids), f"{arch}: eager logits differ between CPU and CUDA"
        warnings.warn(f"{arch}: the model's own top-k chooses differently on CUDA; eta not "
                      "compared with the CPU's", stacklevel=1)
        return
    np.testing.assert_allclose(res.eta.double().cpu().numpy(), on_cpu.eta.double().numpy(),
                               rtol=1e-3, atol=1e-7, err_msg=arch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cli_trace_with_device_cuda_writes_what_it_writes_on_the_cpu(tmp_path, capsys):
    """``icldistill trace --device cuda`` on a tiny saved llama (loaded without hub kernels):
    the trace figures of ``--device cpu``. (``select`` and ``evaluate`` also report MMD² under
    the packaged MiniLM, which a machine without the package registry cannot fetch; the harness
    test above runs their path on the GPU.)"""
    import json

    from icldistill.cli.app import main

    model_dir = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer(True).save_pretrained(model_dir)
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"input": "good movie", "label": "positive"}\n'
                     '{"input": "bad plot", "label": "negative"}\n')
    got = {}
    for dev in ("cpu", "cuda"):
        assert main(["trace", "--model", str(model_dir), "--demos", str(demos), "--query",
                     "fun film", "--out", str(tmp_path / f"trace-{dev}"), "--device", dev,
                     "--quiet"]) == 0
        capsys.readouterr()
        got[dev] = json.loads((tmp_path / f"trace-{dev}" / "trace.json").read_text())
    tc, tg = got["cpu"], got["cuda"]
    assert tg["max_decomposition_error"] < 1e-4 and tg["next_token"] == tc["next_token"]
    for key in ("eta_last", "demo_share_last", "log_normalizer_last"):
        np.testing.assert_allclose(np.asarray(tg[key], float), np.asarray(tc[key], float),
                                   rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("arch", "mode", "kw"), [("llama", "trie", {}),
                                                  ("llama", "copy", {"label_tree": False}),
                                                  ("gemma3", "inline", {})])
@pytest.mark.parametrize("setting", ["shared", "shared-no-reuse", "per-query"])
def test_multi_token_label_scoring_on_cuda_matches_the_cpu(arch, mode, kw, setting,
                                                          float32_default):
    """Labels of several tokens, in each way the scorer reads them (a trie-masked row, the
    context's cache copied per label, or inline rows for a sliding-window model), with a shared
    prefix, without prefix reuse and per query: the same log-probabilities on CUDA as on the
    CPU."""
    from .test_scoring_memory import _score, _scorer

    tok = tiny_tokenizer(True)
    cpu = _scorer(tiny_model(arch), tok, **kw)
    gpu = _scorer(tiny_model(arch).to("cuda"), tok, **kw)
    assert cpu.label_mode == gpu.label_mode == mode
    a, b = _score(cpu, setting, False), _score(gpu, setting, False)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
    assert np.array_equal(a.predictions, b.predictions)
