"""The same unit in two precisions: do bfloat16 and float32 give the same predictions?

A grid may hold units that differ only in the language model's precision (``UnitSpec.dtype``):
a block run in float32 on a CPU without bf16 matrix instructions and again in bfloat16 on one
with them. :func:`compare_precisions` pairs every such unit with its reference-precision twin
(the same model, task, selector, k, seed, ordering, encoder, settings and test items) and
measures, on the same test items, how often the two predictions agree and the paired accuracy
difference with its bootstrap CI and exact McNemar p-value.

A selector that chooses in the model's own representation (``kv:``, ``hidden:``) may choose
other demonstrations in another precision; with the two units' ``selections/`` files at hand
:class:`PrecisionComparison` says whether the demonstrations were the same, so that a
disagreement can be told apart from a different prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from icldistill.core.results import Result
from icldistill.core.stats import holm, mcnemar_exact, paired_bootstrap_ci
from icldistill.core.validation import InputError

__all__ = ["PrecisionComparison", "compare_precisions"]


@dataclass(frozen=True)
class PrecisionComparison(Result):
    """One unit in a half precision against the same unit in the reference precision.

    Attributes
    ----------
    model, task, selector : str
        The unit (``selector`` is :attr:`UnitSpec.label`, with its encoder and settings).
    k, seed : int
    dtype : str
        The unit's precision (e.g. ``"bfloat16"``).
    reference : str
        The twin's precision (``"float32"``).
    n : int
        Test items both units scored (the same items, in the same order).
    agreement : float
        Share of the ``n`` items whose two predictions are the same label.
    accuracy, reference_accuracy : float
        Accuracy of each unit on those items.
    diff, ci_low, ci_high : float
        ``accuracy - reference_accuracy`` and its paired percentile-bootstrap CI over items.
    level : float
        Confidence level of the CI.
    p : float
        Exact McNemar p-value of the difference (items only one of the two got right).
    p_holm : float
        ``p`` Holm-adjusted over every comparison returned together.
    same_demonstrations : bool or None
        Whether both units showed every query the same demonstrations in the same order
        (from their ``selections/`` files); ``None`` when either file is missing.
    """

    model: str
    task: str
    selector: str
    k: int
    seed: int
    dtype: str
    reference: str
    n: int
    agreement: float
    accuracy: float
    reference_accuracy: float
    diff: float
    ci_low: float
    ci_high: float
    level: float
    p: float
    p_holm: float
    same_demonstrations: bool | None


def _indices(selections_dir: Path | None, key: str) -> np.ndarray | None:
    if selections_dir is None:
        return None
    path = selections_dir / f"{key}.json"
    if not path.exists():
        return None
    try:
        return np.asarray(json.loads(path.read_text())["indices"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: not a selection record ({e})") from None


# long: 40 lines of docstring; the code is 42
def compare_precisions(
    results: Sequence[Any],
    predictions: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    *,
    reference: str = "float32",
    selections_dir: str | os.PathLike[str] | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[PrecisionComparison]:
    """Pair every unit not in ``reference`` precision with its ``reference`` twin.

    Parameters
    ----------
    results : sequence of UnitResult
        Finished units of one results folder
        (:func:`~icldistill.evaluation.harness.load_results`).
    predictions : mapping
        Unit key -> ``(pred, truth)`` label lists
        (:func:`~icldistill.evaluation.harness.load_predictions`).
    reference : str
        The precision to compare against.
    selections_dir : path, optional
        The folder's ``selections/``: each comparison then says whether both units showed the
        same demonstrations.
    n_boot, level, seed
        Paired bootstrap resamples, confidence level and seed of each CI.

    Returns
    -------
    list of PrecisionComparison
        One per unit that has a twin, ordered by model, precision, task, k, selector and seed;
        Holm's correction runs over all of them. Units without a twin, or without predictions
        on either side, are left out.

    Raises
    ------
    InputError
        When a unit's twins all recorded other test items (their ``truth`` lists differ):
        they were computed on other data and cannot be paired.
    """
    sel_dir = None if selections_dir is None else Path(selections_dir)
    by_spec: dict[Any, list[Any]] = {}
    for r in results:       # one spec may have run on other data (another pool size)
        if r.key in predictions:
            by_spec.setdefault(r.spec, []).append(r)
    rows: list[dict[str, Any]] = []
    for r in results:
        if r.spec.dtype == reference or r.key not in predictions:
            continue
        pred, truth = predictions[r.key]
        twins = by_spec.get(replace(r.spec, dtype=reference), [])
        twin = next((t for t in twins if list(predictions[t.key][1]) == list(truth)), None)
        if twin is None:
            if twins:
                raise InputError(f"unit {r.spec.label} on {r.spec.task} (k={r.spec.k}): its "
                                 f"{r.spec.dtype} and {reference} runs recorded different "
                                 "test items; they cannot be paired")
            continue
        mine = np.asarray(pred, dtype=object)
        theirs = np.asarray(predictions[twin.key][0], dtype=object)
        y = np.asarray(truth, dtype=object)
        a, b = mine == y, theirs == y
        ci = paired_bootstrap_ci(a.astype(float) - b.astype(float), n_boot=n_boot,
                                 level=level, seed=seed)
        ia, ib = _indices(sel_dir, r.key), _indices(sel_dir, twin.key)
        same = (None if ia is None or ib is None else
                bool(ia.shape == ib.shape and np.array_equal(ia, ib)))
        rows.append(dict(
            model=r.spec.model, task=r.spec.task, selector=r.spec.label, k=r.spec.k,
            seed=r.spec.seed, dtype=r.spec.dtype, reference=reference, n=len(y),
            agreement=float(np.mean(mine == theirs)),
            accuracy=float(a.mean()), reference_accuracy=float(b.mean()), diff=ci.value,
            ci_low=ci.low, ci_high=ci.high, level=ci.level,
            p=mcnemar_exact(int(np.sum(a & ~b)), int(np.sum(~a & b))),
            same_demonstrations=same))
    rows.sort(key=lambda d: (d["model"], d["dtype"], d["task"], d["k"], d["selector"],
                             d["seed"]))
    adjusted = holm([d["p"] for d in rows])
    return [PrecisionComparison(**d, p_holm=float(q)) for d, q in zip(rows, adjusted,
                                                                     strict=True)]
