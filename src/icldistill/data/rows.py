"""From raw rows to a :class:`~icldistill.data.Dataset`: one cleaning for every source
(whitespace, empty and duplicate inputs, label names) and :func:`truncate_words`."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from icldistill.core.validation import (
    InputError,
)
from icldistill.data.dataset import Dataset, TaskFormat, clean_text

ELLIPSIS = "…"

__all__ = [
    "ELLIPSIS",
    "ParsedDataset",
    "truncate_words",
]


# --------------------------------------------------------------------------------------------
# Truncation
# --------------------------------------------------------------------------------------------

_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[A-Z0-9])")


def truncate_words(text: str, max_words: int | None, *, sentences: bool = False) -> tuple[str,
                                                                                          bool]:
    """Shorten ``text`` to at most ``max_words`` words.

    With ``sentences``, whole leading sentences are kept while they fit (no ellipsis); if even the
    first sentence is too long - or without ``sentences`` - the text is cut at a word boundary and
    ``"…"`` is appended. Returns the (whitespace-normalised) text and whether it was shortened.
    """
    return _truncate(clean_text(text), max_words, sentences)


def _truncate(text: str, max_words: int | None, sentences: bool) -> tuple[str, bool]:
    """:func:`truncate_words` of an already whitespace-normalised text."""
    if max_words is None or text.count(" ") < max_words:
        return text, False
    words = text.split(" ", max_words)
    if len(words) <= max_words:
        return text, False
    if sentences:
        kept: list[str] = []
        count = 0
        head = " ".join(words[:max_words]) + " " + words[max_words].split(" ", 1)[0]
        for sent in _SENTENCE_BREAK.split(head):  # the last piece never fits: it is too long
            k = len(sent.split())
            if count + k > max_words:
                break
            kept.append(sent)
            count += k
        if kept:
            return " ".join(kept), True
    return " ".join(words[:max_words]).rstrip() + ELLIPSIS, True


# --------------------------------------------------------------------------------------------
# Building a dataset from rows
# --------------------------------------------------------------------------------------------


@dataclass
class _Row:
    fields: dict[str, str]
    label: str
    split: str | None = None  # "train" / "test" for official splits
    where: str = ""  # for error messages (file:line)


def _label_sort_key(names: Iterable[str]) -> list[str]:
    """Numeric labels in numeric order, others alphabetically."""
    names = list(names)
    for conv in (int, float):
        try:
            return sorted(names, key=lambda x: (conv(x), x))
        except ValueError:
            continue
    return sorted(names)


@dataclass(frozen=True)
class ParsedDataset:
    """A cleaned dataset as parsed from rows, before any split.

    Attributes
    ----------
    dataset : Dataset
        The examples in row order.
    splits : np.ndarray
        ``[n]`` object: each example's official split, ``"train"`` / ``"test"``, or ``None``.
    dropped_empty : int
        Rows dropped because their input was empty.
    """

    dataset: Dataset
    splits: np.ndarray  # [n] object: "train" / "test" / None
    dropped_empty: int


def _build(rows: Sequence[_Row], *, name: str, render: Callable[[dict[str, str]], str],
           truncate_field: str | None, max_words: int | None, sentences: bool,
           label_names: Sequence[str] | None, format: TaskFormat | None,
           keep_fields: Sequence[str] | None, dedup: bool, source: str) -> ParsedDataset:
    """Normalise, drop empty, truncate, deduplicate (test items first) and assemble.

    Duplicates are judged on the final prompt inputs (after truncation): two inputs the model
    cannot tell apart count as one, so no test query has an identical copy in the pool."""
    clean: list[_Row] = []
    dropped = 0
    for r in rows:
        f = {k: clean_text(v) for k, v in r.fields.items()}
        if not all(f.values()):
            dropped += 1
            continue
        label = clean_text(r.label)
        if not label:
            raise InputError(f"{r.where or name}: empty label")
        clean.append(_Row(f, label, r.split, r.where))
    # train (or unsplit) rows first, test rows last
    clean.sort(key=lambda r: 1 if r.split == "test" else 0)
    texts, trunc = [], []
    for r in clean:
        cut = False
        if truncate_field is not None and max_words is not None:
            short, cut = _truncate(r.fields[truncate_field], max_words, sentences)
        texts.append(render({**r.fields, truncate_field: short} if cut else r.fields))
        trunc.append(cut)
    if dedup:  # keep the first copy, test rows first
        seen: set[str] = set()
        keep = [True] * len(clean)
        for i in sorted(range(len(clean)), key=lambda i: 0 if clean[i].split == "test" else 1):
            if texts[i] in seen:
                keep[i] = False
            seen.add(texts[i])
        clean = [r for r, k in zip(clean, keep, strict=True) if k]
        texts = [t for t, k in zip(texts, keep, strict=True) if k]
        trunc = [t for t, k in zip(trunc, keep, strict=True) if k]
    labels = [r.label for r in clean]
    if label_names is None:
        label_names = _label_sort_key(set(labels))
    fmt = format or TaskFormat.default(label_names)
    fields = None
    if keep_fields:
        fields = {k: tuple(r.fields[k] for r in clean) for k in keep_fields}
    ds = Dataset(name=name, texts=tuple(texts),
                 labels=np.array(labels, dtype=str) if labels else np.array([], dtype="<U1"),
                 label_names=tuple(label_names), format=fmt, fields=fields, source=source,
                 truncated=np.array(trunc, dtype=bool))
    splits = np.array([r.split for r in clean], dtype=object)
    return ParsedDataset(ds, splits, dropped)


def _field_renderer(text_field: str) -> Callable[[dict[str, str]], str]:
    def render(f: dict[str, str]) -> str:
        return f[text_field]

    return render


def _pair_renderer(text_field: str, pairs: Sequence[str]) -> Callable[[dict[str, str]], str]:
    """``"field: value"`` lines of ``pairs``, after the plain ``text_field`` value unless it is
    one of them."""
    def render(f: dict[str, str]) -> str:
        lines = [f"{c}: {f[c]}" for c in pairs]
        return "\n".join(lines if text_field in pairs else [f[text_field], *lines])

    return render
