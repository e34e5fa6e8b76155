"""Regressions of the encoders' identity (the embedding cache key) and text checks: writes
through ``p.data``, the tokenizer's truncation state, lone surrogates."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from icldistill import InputError
from icldistill.encoders import representations as rep
from icldistill.encoders.representations import (
    EmbeddingCache,
    Encoder,
    HiddenStateEncoder,
    encode_cached,
)

from .tiny_models import tiny_model, tiny_tokenizer

TEXTS = ["the movie was good", "the plot was boring and the acting was awful"]


def test_identity_follows_writes_through_p_data(tmp_path):
    """Regression: ``p.data.mul_()`` does not bump the version counter, so the identity
    stayed and the cache returned the old weights' encodings."""
    model, tok = tiny_model("llama", seed=1), tiny_tokenizer(False)
    enc = HiddenStateEncoder(model, tok, 1)
    before, ident = encode_cached(enc, TEXTS, tmp_path), enc.identity
    with torch.no_grad():
        for p in model.parameters():
            p.data.mul_(1.5)
    assert enc.identity != ident
    assert enc.identity == HiddenStateEncoder(model, tok, 1).identity
    after = encode_cached(enc, TEXTS, tmp_path)
    np.testing.assert_allclose(after, enc.encode(TEXTS), rtol=1e-5, atol=1e-6)
    assert np.abs(after - before).max() > 1e-3


def test_identity_is_stable_while_nothing_changes():
    model, tok = tiny_model("llama"), tiny_tokenizer(True)
    enc = HiddenStateEncoder(model, tok, 1)
    ident = enc.identity
    enc.encode(TEXTS)
    assert enc.identity == ident is not None


def _old_tokenizer_fingerprint(tokenizer) -> str:
    """The fingerprint as it was (serialisation hashed as it is, truncation state included)."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True,
                        default=str).encode())
    for attr in ("add_bos_token", "add_eos_token"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)}".encode())
    probe = tokenizer(["Probe: the quick brown fox, 42 times!"])["input_ids"]
    h.update(json.dumps(probe).encode())
    return h.hexdigest()


@pytest.mark.parametrize("add_bos", [False, True])
def test_a_truncating_call_does_not_change_the_identity(add_bos):
    """Regression: the fingerprint hashed ``backend.to_str()``, which holds the last call's
    truncation (and padding) state, so any truncating call changed the identity (cache
    misses). A freshly loaded tokenizer keeps exactly the identity it had."""
    model, tok = tiny_model("llama"), tiny_tokenizer(add_bos)
    fresh = rep._tokenizer_fingerprint(tok)
    assert fresh == _old_tokenizer_fingerprint(tiny_tokenizer(add_bos))   # unchanged key
    ident = HiddenStateEncoder(model, tok, 1).identity
    truncating = HiddenStateEncoder(model, tok, 1, max_length=3)
    t_ident = truncating.identity
    truncating.encode(TEXTS)
    assert tok.backend_tokenizer.truncation is not None       # the state the call left
    assert rep._tokenizer_fingerprint(tok) == fresh
    assert truncating.identity == t_ident
    assert HiddenStateEncoder(model, tok, 1, max_length=3).identity == t_ident
    tok(TEXTS, padding=True)
    assert tok.backend_tokenizer.padding is not None
    assert rep._tokenizer_fingerprint(tok) == fresh
    assert HiddenStateEncoder(model, tok, 1).identity == ident


class _Len(Encoder):
    name, dim = "len", 1

    def _identity(self) -> str:
        return "len"

    def _encode_batch(self, texts):
        return torch.tensor([[float(len(t))] for t in texts])


@pytest.mark.parametrize("text", ["good \ud800 movie", "\udfff", "é\udc80"])
def test_lone_surrogates_are_input_errors_naming_the_text(tmp_path, text):
    """Regression: a lone surrogate passed the checks and failed later with a raw TypeError
    (tokenizer) or UnicodeEncodeError (cache key)."""
    texts = ["fine", text]
    with pytest.raises(InputError, match=r"texts\[1\] holds a lone surrogate"):
        _Len().encode(texts)
    with pytest.raises(InputError, match=r"texts\[1\] holds a lone surrogate"):
        encode_cached(_Len(), texts, EmbeddingCache(tmp_path))
    with pytest.raises(InputError, match=r"texts\[1\] holds a lone surrogate"):
        HiddenStateEncoder(tiny_model("llama"), tiny_tokenizer(True), 1).encode(texts)
    assert _Len().encode(["fine", "é ü 😀"]).tolist() == [[4.0], [5.0]]
