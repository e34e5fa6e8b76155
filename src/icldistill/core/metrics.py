"""Classification metrics on label arrays: accuracy, macro-F1, and both on bootstrap resamples.

Pure numpy (the math core never imports transformers). :mod:`icldistill.evaluation` builds its
confidence intervals on these, and :func:`icldistill.core.stats.paired_comparisons` its paired
macro-F1 comparisons; both re-use the one implementation here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from icldistill.core.validation import InputError

__all__ = ["accuracy", "bootstrap_values", "label_pair", "macro_f1"]


def label_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """``y_true`` and ``y_pred`` as 1-D object arrays of equal, nonzero length ``[n]`` (else
    :class:`InputError`)."""
    t = np.asarray(y_true, dtype=object)
    p = np.asarray(y_pred, dtype=object)
    if t.ndim != 1 or t.shape != p.shape:
        raise InputError(f"y_true and y_pred must be 1-D of equal length, got {t.shape} and "
                         f"{p.shape}")
    if t.size == 0:
        raise InputError("no predictions to score")
    return t, p


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of exact matches."""
    t, p = label_pair(y_true, y_pred)
    return float(np.mean(t == p))


def _label_list(labels: Sequence[Any] | None, y_true: np.ndarray) -> list[Any]:
    """The labels to average F1 over: ``labels`` as a list, or (``None``) the sorted labels of
    ``y_true``.

    Raises
    ------
    InputError
        ``labels`` is a bare string or bytes (it would be split into characters), is not a
        sequence, holds an unhashable label, or names a label twice (it would be counted twice
        in the mean), naming it.
    """
    if labels is None:
        return sorted(set(y_true.tolist()), key=str)
    if isinstance(labels, (str, bytes)):
        raise InputError(f"labels must be a sequence of labels, got the string {labels!r} "
                         f"(write [{labels!r}] for a single label)")
    try:
        labs = list(labels)
    except TypeError:
        raise InputError(f"labels must be a sequence of labels, got {labels!r}") from None
    seen: set[Any] = set()
    for lab in labs:
        try:
            again = lab in seen
        except TypeError:
            raise InputError(f"labels: {lab!r} is not a usable label (unhashable)") from None
        if again:
            raise InputError(f"labels: {lab!r} is given twice (each label counts once in "
                             "macro-F1)")
        seen.add(lab)
    return labs


def macro_f1(y_true: Any, y_pred: Any, labels: Sequence[Any] | None = None) -> float:
    """Unweighted mean of per-label F1 over ``labels`` (default: labels present in
    ``y_true``); a label never predicted and never true is skipped, F1 = 0 where undefined.

    ``labels`` must be a sequence of distinct labels (labels that compare equal, such as ``1``
    and ``1.0``, are the same label); a bare string, an unhashable label or a repeated label
    raises :class:`InputError`.
    """
    t, p = label_pair(y_true, y_pred)
    labs = _label_list(labels, t)
    f1s = []
    for lab in labs:
        tp = float(np.sum((t == lab) & (p == lab)))
        fp = float(np.sum((t != lab) & (p == lab)))
        fn = float(np.sum((t == lab) & (p != lab)))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def bootstrap_values(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, metric: str,
                     labels: Sequence[Any] | None = None) -> np.ndarray:
    """Accuracy or macro-F1 of every bootstrap resample at once, ``[n_boot]``.

    ``idx`` ``[n_boot, n]`` holds the resampled item indices. The values equal
    ``metric(y_true[r], y_pred[r])`` of :func:`accuracy` / :func:`macro_f1` row by row
    (bit for bit: per-label counts are integers, and the per-row mean of the F1 values adds
    them in the same order as :func:`macro_f1`), at the cost of one gather per label instead
    of a Python call per resample (about 1000x faster at 200 items and 52 labels).
    ``labels`` is checked as by :func:`macro_f1` (a bare string, an unhashable or a repeated
    label raises :class:`InputError`).
    """
    t, p = label_pair(y_true, y_pred)
    if metric == "accuracy":
        return (t == p)[idx].mean(axis=1)
    if metric != "macro_f1":
        raise InputError(f"unknown metric {metric!r}; choose 'accuracy' or 'macro_f1'")
    labs = _label_list(labels, t)
    n_boot, n_lab = idx.shape[0], len(labs)
    if not labs:
        return np.zeros(n_boot)
    # label codes (n_lab = "not one of labs"); per-resample counts by one bincount each
    code = {lab: j for j, lab in enumerate(labs)}
    tc = np.fromiter((code.get(x, n_lab) for x in t.tolist()), np.int64, t.size)
    pc = np.fromiter((code.get(x, n_lab) for x in p.tolist()), np.int64, p.size)
    width = n_lab + 1
    rows = np.arange(n_boot, dtype=np.int64)[:, None] * width
    ti, pi = tc[idx], pc[idx]                                            # [n_boot, n]
    size = n_boot * width
    true_n = np.bincount((rows + ti).ravel(), minlength=size).reshape(n_boot, width)
    pred_n = np.bincount((rows + pi).ravel(), minlength=size).reshape(n_boot, width)
    hit = ti == pi
    tp = np.bincount((rows + ti)[hit], minlength=size).reshape(n_boot, width)
    tp, fp, fn = (a[:, :n_lab].astype(np.float64)
                  for a in (tp, pred_n - tp, true_n - tp))
    den = 2 * tp + fp + fn
    valid = (tp + fp + fn) > 0
    f1 = np.divide(2 * tp, den, out=np.zeros((n_boot, n_lab)), where=den > 0)
    out = np.zeros(n_boot)
    full = valid.all(axis=1)
    if full.any():
        out[full] = f1[full].mean(axis=1)
    for r in np.flatnonzero(~full & valid.any(axis=1)):   # labels absent from a resample
        out[r] = float(np.mean(f1[r, valid[r]]))
    return out
