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

from icldistill.core.validation import InputError, warn_caller
from icldistill.data.dataset import clean_text
from icldistill.data.readers import (
    cell_text,
    close_spellings,
    comparable_text,
    is_missing,
    warn_close_spellings,
)
from icldistill.encoders.representations import EmbeddingCache, Encoder, encode_cached, make_encoder
from icldistill.selection import Pool, Selector, make_selector

__all__ = ["DemoIndex", "check_k", "field_text", "resolve_encoder", "resolve_selector"]

#: Query encodings kept in memory (least recently used dropped first).
_QUERY_CACHE = 4096


def check_k(k: Any) -> int:
    """``k`` as a positive int, or :class:`InputError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return int(k)


def field_text(value: Any, where: str, key: str, *, noun: str = "key",
               label: bool = False) -> str:
    """An example's value as text, by the package's cell rule
    (:func:`~icldistill.data.readers.cell_text`): strings as they are, numbers and booleans
    written out (``1`` and ``1.0`` -> ``"1"``, ``True`` -> ``"true"``).

    Parameters
    ----------
    value : object
        The value of ``key`` in the example.
    where : str
        Names the example in messages (``"example 3"``, ``"trainset[3]"``).
    key : str
        The key (or field) read.
    noun : str
        What messages call ``key`` (``"key"``, ``"field"``).
    label : bool
        A label: whitespace-normalised (as labels read from a file are), and it must not be
        empty.

    Returns
    -------
    str

    Raises
    ------
    InputError
        A missing value (``None``, NaN, pandas ``NA``), a value that is not text (a list, a
        dict, bytes...), an empty label.
    """
    if is_missing(value):
        raise InputError(f"{where}: {noun} {key!r} is missing (it holds {value!r}); give every "
                         "example a value")
    text = cell_text(value, where, key, noun=noun)
    if label:
        text = clean_text(text)
        if not text:
            raise InputError(f"{where}: empty label in {noun} {key!r}")
    return text


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

    Attributes
    ----------
    lock : threading.RLock
        Held by every method while it reads or changes the pool; an adapter that keeps its
        own per-example records holds it too, so that they and the pool change together.

    Notes
    -----
    Examples whose texts repeat an earlier one (compared under
    :func:`~icldistill.data.readers.comparable_text`) are kept, as rows of a file are, with a
    warning (a selector may pick both copies), and so is the same text with another label
    (noisy labels are data, but a selector may then show one input with both answers).
    Labels that differ only in spelling (``"pos"`` and ``"Pos"``) are warned about once.
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
        self._seen: dict[str, tuple[str, str | None]] = {}   # compared text -> (name, label)
        self._label_set: set[str] = set()
        self._warned_spellings: set[tuple[str, ...]] = set()
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ pool
    @property
    def shared(self) -> bool:
        """True for set-level selectors: one demonstration set for every query."""
        return bool(self.selector.shared)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, texts: Sequence[str], labels: Sequence[str] | None = None, *,
            names: Sequence[str] | None = None) -> None:
        """Append examples (encoded lazily, at the next :meth:`select`).

        Parameters
        ----------
        texts : sequence of str
            The examples' compared texts.
        labels : sequence of str, optional
            Their labels (required by a ``labelled`` index), as text (:func:`field_text`).
        names : sequence of str, optional
            How messages name the examples (default ``"example <row>"``).

        Raises
        ------
        InputError
            A text or label that is not a string, a missing label. Nothing is added then.
        """
        texts = list(texts)
        if self.labelled:
            if labels is None or len(labels) != len(texts):
                raise InputError("every example needs a label")
            labels = list(labels)
        with self.lock:
            start = len(self.texts)
            names = (list(names) if names is not None
                     else [f"example {start + i}" for i in range(len(texts))])
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise InputError(f"{names[i]}: the text must be a string, got "
                                     f"{type(t).__name__}")
                if self.labelled and not isinstance(labels[i], str):
                    raise InputError(f"{names[i]}: the label must be a string, got "
                                     f"{type(labels[i]).__name__}")
            new: dict[str, tuple[str, str | None]] = {}    # merged only if all pass
            repeats: list[tuple[str, str]] = []
            conflicts: list[str] = []
            for i, t in enumerate(texts):
                key = comparable_text(t)
                label = labels[i] if self.labelled else None
                earlier = self._seen.get(key) or new.get(key)
                if earlier is not None:
                    first, first_label = earlier
                    if label != first_label:
                        conflicts.append(f"{names[i]} ({label!r}) and {first} "
                                         f"({first_label!r})")
                    else:
                        repeats.append((names[i], first))
                else:
                    new[key] = (names[i], label)
            self._seen.update(new)
            self.texts.extend(texts)
            if self.labelled:
                self.labels.extend(labels)
                if not self._label_set.issuperset(labels):   # a new label: check spellings
                    self._label_set.update(labels)
                    self._warn_spellings()
        if repeats:
            shown = ", ".join(f"{a} repeats {b}" for a, b in repeats[:3])
            warn_caller(f"{len(repeats)} example(s) repeat an earlier one ({shown}"
                        f"{', ...' if len(repeats) > 3 else ''}); both copies stay in the "
                        "pool and a selector may pick both (knn then shows the same "
                        "demonstration twice): remove the duplicates")
        if conflicts:
            warn_caller(f"{len(conflicts)} example(s) have the text of an earlier one with "
                        f"another label ({'; '.join(conflicts[:3])}"
                        f"{'; ...' if len(conflicts) > 3 else ''}); both stay in the pool, "
                        "and a selector may show the same input with both answers")

    def _warn_spellings(self) -> None:
        """Warn about label groups that differ only in spelling, each group once."""
        fresh = [g for g in close_spellings(sorted(self._label_set))
                 if tuple(g) not in self._warned_spellings]
        if fresh:
            warn_close_spellings([v for g in fresh for v in g], "the example pool")
            self._warned_spellings.update(tuple(g) for g in fresh)

    def set_targets(self, texts: Sequence[str] | None) -> None:
        """Target texts of set-level selectors (``None``: the pool's own texts)."""
        with self.lock:
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
        for t in texts:
            self._queries.move_to_end(t)
        out = np.stack([self._queries[t] for t in texts])
        # evict only once the batch is read: its own entries may be the oldest ones
        while len(self._queries) > _QUERY_CACHE:
            self._queries.popitem(last=False)
        return out

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
        with self.lock:
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
        with self.lock:
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
