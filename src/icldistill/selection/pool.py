"""The items a selector works on: :class:`Pool` (candidates or targets) and its validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from icldistill.core.validation import InputError, check_matrix

__all__ = ["Pool", "PoolData", "as_pool", "check_pool"]


@dataclass(frozen=True, eq=False)
class Pool:
    """Items a selector is fitted on (the candidate pool), or the targets it selects for.

    Attributes
    ----------
    embeddings : array-like or Tensor ``[n, d]``, optional
        Representations (sentence embeddings, hidden states, ``[k | v]`` attention tokens).
    labels : array-like ``[n]``, optional
        Labels (str or int), for label-balanced selection.
    texts : sequence of str ``[n]``, optional
        Input texts, for lexical retrieval (BM25).
    """

    embeddings: np.ndarray | torch.Tensor | None = None
    labels: np.ndarray | None = None
    texts: Sequence[str] | None = None

    @classmethod
    def from_table(cls, table: Any, *, embedding: str | Sequence[str] | None = None,
                   label: str | None = None, text: str | None = None,
                   name: str | None = None) -> Pool:
        """A pool (or targets) from the columns of a table.

        Parameters
        ----------
        table : table
            Anything :meth:`icldistill.data.Dataset.from_table` reads: a pandas DataFrame, a
            pyarrow Table, a ``datasets.Dataset``, a dict of columns, a list of row dicts.
        embedding : str or sequence of str, optional
            One column whose cells are vectors (lists or arrays of one length), or several
            numeric columns, one per dimension.
        label : str, optional
            Label column; values become label names as in a :class:`~icldistill.data.Dataset`
            (``1`` -> ``"1"``); a missing label is an error.
        text : str, optional
            Text column (whitespace-normalised as in a Dataset; a missing text becomes ``""``).
        name : str, optional
            Names the table in messages.

        Every row is kept, in table order. Column errors (missing, duplicated, a list where text
        is expected, an empty table) are worded as for :func:`icldistill.data.load_file`.
        """
        from icldistill.data.dataset import clean_text
        from icldistill.data.readers import as_table, cell_text, table_rows

        if embedding is None and label is None and text is None:
            raise InputError("Pool.from_table: give at least one of embedding=, label=, text=")
        if isinstance(embedding, str):
            emb_cols, vectors = [embedding], True
        else:
            emb_cols, vectors = list(embedding or ()), False
            if embedding is not None and not emb_cols:
                raise InputError("embedding= must be a column name or a non-empty list of them")
        named = [c for c in (*emb_cols, label, text) if c is not None]
        bad = next((c for c in named if not isinstance(c, str) or not c), None)
        if bad is not None:
            raise InputError(f"Pool.from_table: column names must be non-empty strings, got "
                             f"{bad!r}")
        tab, _ = as_table(table, name)
        rows = list(table_rows(tab, named))
        texts = labels = emb = None
        if text is not None:
            texts = [clean_text(cell_text(rec.get(text), where, text))
                     for where, rec in rows]
        if label is not None:
            labels = []
            for where, rec in rows:
                y = clean_text(cell_text(rec.get(label), where, label))
                if not y:
                    raise InputError(f"{where}: empty label in column {label!r}")
                labels.append(y)
            labels = np.array(labels, dtype=str)
        if emb_cols:
            emb = (_vector_column(rows, emb_cols[0]) if vectors
                   else np.array([[_number(rec.get(c), where, c) for c in emb_cols]
                                  for where, rec in rows], dtype=np.float64))
        return cls(embeddings=emb, labels=labels, texts=texts)


def _number(value: Any, where: str, column: str) -> float:
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        raise InputError(f"{where}: column {column!r} is empty (no number)")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise InputError(f"{where}: column {column!r} holds {type(value).__name__} "
                         f"{str(value)[:40]!r}, not a number")
    return float(value)


def _vector_column(rows: Sequence[tuple[str, Any]], column: str) -> np.ndarray:
    """``[n, d]``: the vectors of one column (numbers give ``d = 1``), in their common dtype."""
    out: list[np.ndarray] = []
    for where, rec in rows:
        cell = rec.get(column)
        if cell is None:
            raise InputError(f"{where}: column {column!r} is empty (no vector)")
        if isinstance(cell, (int, float, np.number)) and not isinstance(cell, (bool, np.bool_)):
            vec = np.array([cell], dtype=np.float64)
        else:
            try:
                vec = np.asarray(cell.numpy() if isinstance(cell, torch.Tensor) else cell)
            except (TypeError, ValueError):
                vec = np.asarray(None)
            if vec.ndim != 1 or vec.dtype.kind not in "iuf":
                raise InputError(f"{where}: column {column!r} holds {str(cell)[:40]!r}, not a "
                                 "vector of numbers")
        if out and vec.shape != out[0].shape:
            raise InputError(f"{where}: column {column!r} holds a vector of length {len(vec)} "
                             f"where earlier rows have {len(out[0])}")
        out.append(vec)
    return np.stack(out)


@dataclass(frozen=True)
class PoolData:
    """A validated :class:`Pool` (what :meth:`Selector.fit` keeps and ``_select`` receives).

    Attributes
    ----------
    n : int
        Number of items (``>= 1``; every present field has this length).
    emb : torch.Tensor ``[n, d]`` or None
        Finite embeddings.
    labels : numpy.ndarray ``[n]`` or None
        Labels.
    texts : list of str ``[n]`` or None
        Texts.
    """

    n: int
    emb: torch.Tensor | None
    labels: np.ndarray | None
    texts: list[str] | None


def as_pool(x: Any, what: str) -> Pool:
    """``x`` as a :class:`Pool`: a Pool, a list of texts, or embeddings ``[n, d]``."""
    if isinstance(x, Pool):
        return x
    if x is None:
        raise InputError(f"{what} is missing")
    if isinstance(x, str):
        raise InputError(f"{what}: give a sequence of texts, not a single string")
    if isinstance(x, (list, tuple)) and x and all(isinstance(s, str) for s in x):
        return Pool(texts=list(x))
    return Pool(embeddings=x)


def _shares_memory(t: torch.Tensor, source: Any) -> bool:
    """Whether tensor ``t`` may share memory with the caller's ``source`` (conservative: True
    when it cannot tell)."""
    if isinstance(source, torch.Tensor):
        return (source.device == t.device
                and source.untyped_storage().data_ptr() == t.untyped_storage().data_ptr())
    if t.device.type != "cpu":
        return False
    if isinstance(source, (list, tuple)):
        return False                     # numbers converted into a new array
    try:
        return bool(np.may_share_memory(np.asarray(source), t.numpy()))
    except Exception:                    # an unknown array type: copy to be safe
        return True


def check_pool(pool: Pool, needs: frozenset[str], what: str, selector: str, *,
               copy: bool = False) -> PoolData:
    """Validate ``pool`` for ``selector``.

    Parameters
    ----------
    pool : Pool
        The items.
    needs : frozenset of str
        The fields ``selector`` needs (``"embeddings"``, ``"labels"``, ``"texts"``).
    what : str
        Names the items in messages (``"pool"``, ``"targets"``, ``"queries"``).
    selector : str
        Names the selector in messages.
    copy : bool
        Whether the result must own its data: embeddings and labels that share memory with
        the caller's arrays are copied, so that changing those arrays later (as a fitted
        selector keeps the pool) cannot change the selector's results.

    Returns
    -------
    PoolData
        Embeddings ``[n, d]`` as a finite float tensor, labels ``[n]``, texts ``[n]``.

    Raises
    ------
    InputError
        For missing, empty, non-finite or mismatched fields.
    """
    present = {f for f in ("embeddings", "labels", "texts") if getattr(pool, f) is not None}
    missing = needs - present
    if missing:
        raise InputError(f"selector {selector!r} needs {what} {' and '.join(sorted(missing))}")
    if not present:
        raise InputError(f"{what}: no embeddings, labels or texts given")
    sizes: dict[str, int] = {}
    emb = labels = texts = None
    if pool.embeddings is not None:
        emb = check_matrix(pool.embeddings, f"{what} embeddings")
        if copy and _shares_memory(emb, pool.embeddings):
            emb = emb.clone()
        sizes["embeddings"] = emb.shape[0]
    if pool.labels is not None:
        labels = np.array(pool.labels) if copy else np.asarray(pool.labels)
        if labels.ndim != 1:
            raise InputError(f"{what} labels must be 1-D, got shape {labels.shape}")
        sizes["labels"] = labels.shape[0]
    if pool.texts is not None:
        if isinstance(pool.texts, str):
            raise InputError(f"{what} texts: give a sequence of texts, not a single string")
        texts = list(pool.texts)
        bad = [type(s).__name__ for s in texts if not isinstance(s, str)]
        if bad:
            raise InputError(f"{what} texts must be strings, got {bad[0]}")
        sizes["texts"] = len(texts)
    if len(set(sizes.values())) > 1:
        raise InputError(f"{what}: fields have different lengths: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise InputError(f"{what} is empty")
    return PoolData(n, emb, labels, texts)

