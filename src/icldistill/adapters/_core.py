"""The machinery shared by the framework adapters: a growing pool of examples behind a selector.

:class:`DemoIndex` keeps the examples' texts, labels and embeddings (each example is encoded
once, when it is first needed), fits the icldistill selector lazily (adding examples only marks
it stale) and answers ``k`` pool rows per query text. It imports neither LangChain nor DSPy.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from icldistill.core.validation import InputError
from icldistill.encoders.representations import EmbeddingCache, Encoder, encode_cached, make_encoder
from icldistill.selection import Pool, Selector, make_selector

__all__ = ["DemoIndex", "check_k", "resolve_encoder", "resolve_selector"]

#: Query encodings kept in memory (least recently used dropped first).
_QUERY_CACHE = 4096


def check_k(k: Any) -> int:
    """``k`` as a positive int, or :class:`InputError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def resolve_selector(selector: str | Selector, params: Mapping[str, Any]) -> Selector:
    """A fresh selector from a name and parameters, or a copy of the given instance.

    The copy is the caller's own: two adapters built from one instance each fit theirs on
    their own pool (sharing it, one adapter's indices pointed into the other's pool).
    """
    if isinstance(selector, Selector):
        if params:
            raise InputError(f"selector parameters {sorted(params)} given with a Selector "
                             "instance; set them on the instance, or pass the selector by name")
        return copy.deepcopy(selector)
    if not isinstance(selector, str):
        raise InputError(f"selector must be a selector name (e.g. 'mmd-query', 'knn') or a "
                         f"Selector, got {type(selector).__name__}")
    return make_selector(selector, **params)


def resolve_encoder(encoder: str | Encoder) -> Encoder:
    """An :class:`Encoder` from a spec string (``"minilm"``) or the given instance."""
    if isinstance(encoder, Encoder):
        return encoder
    if isinstance(encoder, str):
        return make_encoder(encoder)
    raise InputError(f"encoder must be an encoder spec (e.g. 'minilm') or an icldistill "
                     f"Encoder, got {type(encoder).__name__}")


def _needs_embeddings(sel: Selector) -> bool:
    """Whether the selector (with its prompt order) uses embeddings of the pool or queries."""
    if "embeddings" in (sel._pool_needs() | sel.target_needs):
        return True
    # the "similarity" order falls back to cosine relevance unless the selector scores texts
    order = sel.order or sel.default_order
    return order == "similarity" and "texts" not in sel.target_needs


class DemoIndex:
    """A pool of example texts (and labels) behind an icldistill selector.

    Parameters
    ----------
    selector : str or Selector
        Selector name for :func:`~icldistill.selection.make_selector` (with ``params``) or an
        unfitted :class:`~icldistill.selection.Selector` (the index fits it).
    params : mapping
        Selector parameters (only with a name).
    encoder : str or Encoder
        Encoder spec for :func:`~icldistill.encoders.representations.make_encoder` or an instance;
        only used when the selector needs embeddings (not for ``bm25``, ``random``).
    labelled : bool
        Whether every example comes with a label (required by label-aware selectors).
    cache_dir : path or EmbeddingCache, optional
        Also keep the examples' encodings on disk
        (:func:`~icldistill.encoders.representations.encode_cached`); default: in memory only.
    what : str
        How error messages name the label source (e.g. ``"label_key="``).
    """

    def __init__(self, selector: str | Selector, params: Mapping[str, Any],
                 encoder: str | Encoder, *, labelled: bool,
                 cache_dir: str | os.PathLike[str] | EmbeddingCache | None = None,
                 what: str = "label_key=") -> None:
        self.selector = resolve_selector(selector, params)
        self.encoder = resolve_encoder(encoder)
        self.needs_embeddings = _needs_embeddings(self.selector)
        needs_labels = "labels" in self.selector._pool_needs()
        if needs_labels and not labelled:
            raise InputError(f"selector {self.selector.name!r} needs the examples' labels: pass "
                             f"{what} (the example field holding the label)")
        self.labelled = labelled
        self.cache_dir = cache_dir
        self.texts: list[str] = []
        self.labels: list[str] = []
        self._emb = np.zeros((0, self.encoder.dim), dtype=np.float32)
        self._fitted_n = -1                      # pool size the selector was fitted on
        self._shared: dict[tuple[int, int], np.ndarray] = {}
        self._targets: list[str] | None = None
        self._target_emb: np.ndarray | None = None
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ pool
    @property
    def shared(self) -> bool:
        """True for set-level selectors: one demonstration set for every query."""
        return bool(self.selector.shared)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: Sequence[str], labels: Sequence[Any] | None = None) -> None:
        """Append examples (encoded lazily, at the next :meth:`select`)."""
        texts = list(texts)
        if self.labelled:
            if labels is None or len(labels) != len(texts):
                raise InputError("every example needs a label")
            labels = [str(v) for v in labels]
        with self._lock:
            self.texts.extend(texts)
            if self.labelled:
                self.labels.extend(labels)

    def set_targets(self, texts: Sequence[str] | None) -> None:
        """Target texts of set-level selectors (``None``: the pool's own texts)."""
        with self._lock:
            self._targets = None if texts is None else list(texts)
            self._target_emb = None
            self._shared.clear()
            if self._targets is not None and not self._targets:
                raise InputError("targets is empty; give the texts the prompts will be used "
                                 "for, or None to match the pool itself")

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.cache_dir is not None:
            return encode_cached(self.encoder, texts, self.cache_dir)
        return self.encoder.encode(texts)

    def _refresh(self) -> None:
        """Encode new examples and refit the selector if the pool grew."""
        n = len(self.texts)
        if n == self._fitted_n:
            return
        if n == 0:
            raise InputError("no examples to select from; add examples first")
        if self.needs_embeddings and self._emb.shape[0] < n:
            new = self._encode(self.texts[self._emb.shape[0]:])
            self._emb = np.concatenate([self._emb, new]) if len(self._emb) else new
        pool = Pool(embeddings=self._emb if self.needs_embeddings else None,
                    labels=np.asarray(self.labels) if self.labelled else None,
                    texts=self.texts)
        self.selector.fit(pool)
        self._fitted_n = n
        self._shared.clear()

    def _query_embeddings(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._queries))
        if missing:
            for t, e in zip(missing, self.encoder.encode(missing), strict=True):
                self._queries[t] = e
            while len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        for t in texts:
            self._queries.move_to_end(t)
        return np.stack([self._queries[t] for t in texts])

    def _check_k(self, k: int) -> int:
        k = check_k(k)
        if k > len(self.texts):
            raise InputError(f"k={k} is larger than the pool ({len(self.texts)} examples); add "
                             "examples or lower k")
        return k

    # ------------------------------------------------------------------ selection
    def select(self, queries: Sequence[str], k: int) -> np.ndarray:
        """Pool rows ``[len(queries), k]`` in prompt order (last = next to the query).

        Per-query selectors choose for each query; set-level selectors choose one set against
        the targets (:meth:`set_targets`, default the pool itself), cached until the pool grows.
        """
        queries = list(queries)
        with self._lock:
            self._refresh()
            k = self._check_k(k)
            if self.shared:
                row = self.shared_set(k)
                return np.tile(row, (len(queries), 1))
            if not queries:
                return np.zeros((0, k), dtype=np.int64)
            emb = self._query_embeddings(queries) if self.needs_embeddings else None
            return self.selector.select(Pool(embeddings=emb, texts=queries), k).indices

    def shared_set(self, k: int) -> np.ndarray:
        """The set-level selector's ``k`` pool rows (prompt order), ``[k]``."""
        with self._lock:
            self._refresh()
            k = self._check_k(k)
            key = (k, self._fitted_n)
            if key not in self._shared:
                if self._targets is None:
                    targets = Pool(embeddings=self._emb if self.needs_embeddings else None,
                                   texts=self.texts)
                else:
                    if self.needs_embeddings and self._target_emb is None:
                        self._target_emb = self._encode(self._targets)
                    targets = Pool(embeddings=self._target_emb, texts=self._targets)
                self._shared[key] = self.selector.select(targets, k).indices[0]
            return self._shared[key]
