"""The few-shot evaluation harness: tasks x selectors x k x seeds, resumable.

One *unit* is one evaluated configuration (:class:`UnitSpec`): a model, a task (a
:class:`~icldistill.data.DatasetSplit`), a selector with its parameters, ``k``, a seed and a
demonstration ordering. :class:`Harness` runs units and writes, under its output folder::

    results.jsonl          one line per finished unit (:class:`UnitResult`), appended + fsynced
    partial/<key>.jsonl    label scores of the batches of an unfinished unit, appended as they
                           are produced; removed once the unit's result line is written
    selections/<key>.json  the demonstrations every query saw
    scores/<model>-<tag>.jsonl
                           label scores by prompt (a hash of the model name, the label words
                           and the full prompt text), shared by all units of that model

    locks/<key>.lock       the lock of a unit (held by the process computing it)

Every file is written through :mod:`icldistill.artifacts.store`: one record per line, fsynced,
line-safe
after a torn last line (the fragment is terminated and skipped, the next record starts a line of
its own), truncated back and reported (:class:`~icldistill.artifacts.store.StoreWriteError`) when a
write
fails, e.g. on a full disk. A unit's ``predictions.jsonl`` record is written before its
``results.jsonl`` record, which marks the unit finished. An interrupted run (Ctrl-C, a crash, a
killed job, ``SIGKILL`` at any point) therefore loses at most the batch in flight: rerunning the
same command skips finished units (by key) and resumes unfinished ones from their partial file,
on the demonstrations recorded in ``selections/`` (not chosen again: a selector reading the
model's keys/values would re-encode the pool).

Several processes may run on one output folder: a unit is computed under its lock
(:func:`icldistill.artifacts.store.unit_lock`) by one process, which re-reads ``results.jsonl``
after
taking it; :meth:`Harness.run` first does the units no other process holds, then waits for the
others and reads their results back. Each unit is computed and recorded once.
:meth:`Harness.status` says where a grid stands in a folder without computing anything
(:mod:`icldistill.evaluation.status`).

Identical prompts are scored once. Per-query selectors often give a query the same
demonstrations in the same order: on amazon and yelp at ``k = 4``, a fifth of the prompts of
kNN, BM25, MMR, DPP and per-query MMD repeat one of another selector. A prompt already in the
model's score store is read back instead of rescored (``UnitResult.n_reused`` counts them).
The scores of a prompt do not depend on which other prompts share its batch beyond float
rounding (about 1e-6 in log-probability), so this changes no prediction except at exact ties.
Calibrated units are not stored (their content-free probabilities depend on the whole
demonstration set, not on one prompt).

Seeds. ``seed`` drives every random choice of a unit (the random selector, the ``"random"``
order, the ordering shuffles); deterministic selectors give the same demonstrations for every
seed, so the harness runs them once (seed 0) unless their order is random. ``ordering = 0`` is
the selector's own prompt order; ``ordering = j > 0`` shuffles every demonstration set with a
generator seeded by ``(seed, j)``.

MMD reported beside accuracy (SPEC §3, §5): every task gets one reference kernel — Gaussian on
the default sentence embeddings with the median-heuristic bandwidth of pool + test — shared by
all selectors, so numbers are comparable across selectors:

- ``mmd2_task``: biased ``MMD^2`` between all demonstrations shown (pooled over queries, with
  multiplicity) and the test inputs, i.e. between the demonstration distribution and the task
  distribution;
- ``mmd2_query``: mean over queries of ``MMD^2(S_q, {q})``, the discrepancy between a query and
  its own demonstrations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.store import (
    append_record,
    held_locks,
    iter_records,
    to_jsonable,
    unit_lock,
    write_json,
)
from icldistill.core.kernels import Kernel, make_kernel
from icldistill.core.mmd import mmd
from icldistill.core.progress import log
from icldistill.core.results import Result
from icldistill.core.validation import InputError
from icldistill.data.datasets import Dataset, DatasetSplit, TaskFormat, load_split
from icldistill.data.readers import warn_test_copies
from icldistill.encoders.representations import (
    HeadChoice,
    check_encoder_spec,
    needs_language_model,
)
from icldistill.evaluation.scoring import FewShotScorer, MetricResult, classification_metrics
from icldistill.evaluation.status import (
    GridStatus,
    ScoringRates,
    UnitStatus,
    is_shared,
    partial_progress,
)
from icldistill.selection import SELECTORS, Pool, Selection, make_selector, selector_key

__all__ = [
    "Harness",
    "LabelCoverage",
    "SelectionMMD",
    "Task",
    "UnitResult",
    "UnitSpec",
    "load_predictions",
    "load_results",
    "recorded_reference",
    "recorded_weights",
    "unit_grid",
]

DEFAULT_ENCODER = "minilm"
REFERENCE_ENCODER = "minilm"
#: ``(n_prompts, k, seed)`` of the calibration prompts that choose a unit's attention heads.
_DEFAULT_CALIBRATION = (4, 4, 0)
#: Model precisions a unit can ask for (name -> torch dtype).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")


# --------------------------------------------------------------------------------------------
# Specs and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitSpec:
    """One evaluated configuration.

    Attributes
    ----------
    model : str
        Registry key, local folder or hub id of the language model.
    task : str
        Task name (registry dataset key or a user file's name).
    selector : str
        Selector name (see :data:`icldistill.selection.SELECTORS`).
    k : int
        Demonstrations per prompt.
    seed : int
        Seed of the selector's random choices and of the ordering shuffles.
    ordering : int
        0 = the selector's order; ``j > 0`` = seeded shuffle number ``j``.
    encoder : str
        Representation the selector works on (``"minilm"``, ``"hidden:L"``, ``"kv:L[:heads]"``).
    calibrate : bool
        Contextual calibration.
    n_test : int or None
        Number of test items evaluated (the first ``n_test`` of the seeded test order).
    params : tuple of (name, value)
        Extra selector parameters (sorted by name).
    dtype : str
        Precision of the language model's weights: ``"float32"`` (default), ``"bfloat16"`` or
        ``"float16"``. Half precisions keep the output head in float32
        (:func:`icldistill.models.float32_head`). A float32 unit's key is the same as before
        this field existed, so recorded results stay valid.
    """

    model: str
    task: str
    selector: str
    k: int
    seed: int = 0
    ordering: int = 0
    encoder: str = DEFAULT_ENCODER
    calibrate: bool = False
    n_test: int | None = None
    params: tuple[tuple[str, Any], ...] = ()
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _check_dtype(self.dtype)
        # checked here, before a grid loads a model: k = 0 used to fail in the selector,
        # after the model was loaded and other units had run
        for name, low in (("k", 1), ("seed", 0), ("ordering", 0), ("n_test", 1)):
            v = getattr(self, name)
            if v is None and name == "n_test":
                continue
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
                raise InputError(f"UnitSpec.{name} must be an integer >= {low}, got {v!r}")
            object.__setattr__(self, name, int(v))     # numpy integers too: the key is JSON
        # a registry alias or another spelling ('mmd_katt', 'Random', 'kate') is the selector's
        # registry name: otherwise it would run without the selector's preferred encoder or
        # seeds, under a key of its own (a name the registry does not know is left to fail
        # where the selector is made)
        with contextlib.suppress(InputError):
            canonical = selector_key(self.selector)
            if canonical != self.selector:
                object.__setattr__(self, "selector", canonical)
        if any(name == "seed" for name, _ in self.params):
            raise InputError("UnitSpec.params: 'seed' is the unit's own field (seed=...), not "
                             "a selector parameter")

    def key(self, fingerprint: str = "") -> str:
        """Stable identifier of the unit (and of the task data, via ``fingerprint``)."""
        d = asdict(self)
        if d["dtype"] == "float32":
            del d["dtype"]             # keys of float32 units predate the field
        payload = json.dumps({**d, "params": [list(p) for p in self.params],
                              "data": fingerprint}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (``params`` as a list of ``[name, value]`` pairs)."""
        d = asdict(self)
        d["params"] = [list(p) for p in self.params]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitSpec:
        """The spec written by :meth:`to_dict` (``params`` back to a tuple of pairs)."""
        s = dict(d)
        s["params"] = tuple((str(a), b) for a, b in s.get("params", ()))
        return cls(**s)

    @property
    def model_label(self) -> str:
        """The model with its precision when that is not float32 (``"m (bfloat16)"``)."""
        return self.model if self.dtype == "float32" else f"{self.model} ({self.dtype})"

    @property
    def label(self) -> str:
        """Short display name of the selector with its non-default settings."""
        extra = "".join(f",{k}={v}" for k, v in self.params)
        enc = "" if self.encoder == DEFAULT_ENCODER else f"@{self.encoder}"
        return f"{self.selector}{enc}{extra}"


@dataclass(frozen=True)
class UnitResult:
    """The outcome of one unit.

    Attributes
    ----------
    spec : UnitSpec
    key : str
    accuracy, macro_f1 : MetricResult
        With 95% percentile-bootstrap intervals over test items.
    n : int
        Test items evaluated.
    mmd2_task : float
        Biased ``MMD^2`` (reference kernel) between the shown demonstrations and the test inputs.
    mmd2_query : float
        Mean over queries of ``MMD^2(S_q, {q})`` (reference kernel).
    shared : bool
        One demonstration set for all queries.
    selection_seconds, scoring_seconds : float
    n_tokens, n_prompt_tokens : int
        Tokens the model processed / total prompt length.
    per_label_accuracy : dict
    n_reused : int
        Queries whose prompt (same model, same label words, same text) had already been scored
        by an earlier unit; their scores were read from the score store, not recomputed.
    """

    spec: UnitSpec
    key: str
    accuracy: MetricResult
    macro_f1: MetricResult
    n: int
    mmd2_task: float
    mmd2_query: float
    shared: bool
    selection_seconds: float
    scoring_seconds: float
    n_tokens: int
    n_prompt_tokens: int
    per_label_accuracy: dict[str, float] = field(default_factory=dict)
    n_reused: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The record of ``results.jsonl``: every field, the spec as :meth:`UnitSpec.to_dict`."""
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitResult:
        """A result from its :meth:`to_dict` record.

        Each field is converted by its declared type; fields with a default (added after the
        first results were written) may be absent. Raises ``KeyError``, ``TypeError`` or
        ``ValueError`` on a malformed record.
        """
        kwargs = {f.name: _FROM_JSON[str(f.type)](d[f.name])
                  for f in fields(cls) if f.name in d or not _has_default(f)}
        return cls(**kwargs)

    # the names of earlier releases
    to_json = to_dict
    from_json = from_dict


#: How :meth:`UnitResult.from_dict` converts a JSON value, by the field's declared type.
_FROM_JSON: dict[str, Callable[[Any], Any]] = {
    "UnitSpec": UnitSpec.from_dict,
    "MetricResult": lambda v: MetricResult(**v),
    "str": str, "int": int, "float": float, "bool": bool, "dict[str, float]": dict,
}


@dataclass(frozen=True, eq=False)
class LabelCoverage(Result):
    """Whether each test item of a unit saw its own label among its demonstrations.

    The theory's bias term measures how far the demonstrations' *inputs* are from the task's;
    it says nothing about which labels they show. A query whose label no demonstration carries
    has to be answered from the model's prior, whatever the MMD. This record lets a report
    separate the two (see :meth:`Harness.label_coverage`).

    Attributes
    ----------
    key : str
        The unit's key.
    shown : np.ndarray, shape (n,), bool
        Item ``i``'s gold label is the label of at least one of its ``k`` demonstrations.
    share : np.ndarray, shape (n,), float64
        Fraction of item ``i``'s ``k`` demonstrations that carry its gold label.
    correct : np.ndarray, shape (n,), bool
        The unit predicted item ``i`` right (from ``predictions.jsonl``).
    vote : np.ndarray, shape (n,), float64
        Whether the most frequent label among item ``i``'s demonstrations is its gold label:
        1, 0, or ``1/m`` when the gold label is one of ``m`` labels tied for the most frequent
        (the expected accuracy of a majority vote of the demonstrations' labels, ties broken
        at random) — a model-free predictor to hold the model's accuracy against.
    mmd2_query : np.ndarray, shape (n,), float64, or None
        ``MMD^2(S_i, {q_i})`` of item ``i``'s demonstrations to its input under the reference
        kernel (``Harness.label_coverage(..., item_mmd=True)``; else ``None``).
    """

    key: str
    shown: np.ndarray
    share: np.ndarray
    correct: np.ndarray
    vote: np.ndarray
    mmd2_query: np.ndarray | None = None


def _has_default(f: Any) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


@dataclass(frozen=True)
class SelectionMMD:
    """How far demonstration sets are from the task, under the task's reference kernel.

    Attributes
    ----------
    mmd2_task : float
        Biased ``MMD^2`` between all demonstrations shown (pooled over queries) and the test
        inputs.
    mmd2_query : float
        Mean over queries of ``MMD^2(S_q, {q})``.

    Unpacks as the pair ``(mmd2_task, mmd2_query)``, what :meth:`Harness.mmd_to_task` returned
    before.
    """

    mmd2_task: float
    mmd2_query: float

    def __iter__(self) -> Iterator[float]:
        return iter((self.mmd2_task, self.mmd2_query))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; torn (unparsable) lines are skipped
    (:func:`icldistill.artifacts.store.iter_records`)."""
    return iter_records(path)


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    """Append one record as one line, fsynced, line-safe after a torn last line
    (:func:`icldistill.artifacts.store.append_record`)."""
    append_record(path, record)


#: The file of a results folder that names the reference encoder its MMD² values are under.
REFERENCE_FILE = "reference.json"


def recorded_reference(out_dir: str | os.PathLike[str]) -> str | None:
    """The reference encoder the MMD² values of ``out_dir``'s results were measured under.

    Read from ``out_dir/reference.json``; a folder with results but without that file was
    written before it existed, under the only reference of those releases (``"minilm"``).
    ``None`` for a folder without results. An unreadable file is an :class:`InputError`.
    """
    path = Path(out_dir) / REFERENCE_FILE
    if path.is_file():
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            return str(rec["reference_encoder"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{path}: unreadable ({type(e).__name__}: {e}); it names the "
                             "reference encoder of the folder's MMD² values") from None
    if any(True for _ in _read_jsonl(Path(out_dir) / "results.jsonl")):
        return REFERENCE_ENCODER
    return None


#: The file of a results folder that names the weights its units ran on ("pretrained", or a
#: random-init twin's "random-init seed N").
WEIGHTS_FILE = "weights.json"
#: What the default model loader (:func:`icldistill.models.registry.load_model`) loads.
PRETRAINED = "pretrained"


def recorded_weights(out_dir: str | os.PathLike[str]) -> str | None:
    """The weights the units of ``out_dir`` ran on: ``"pretrained"`` or, for a random-init
    control, ``"random-init seed N"`` (what the harness's model loader said it loads).

    Read from ``out_dir/weights.json``, written with the folder's first result by a harness
    whose loader names its weights. ``None`` when the folder has no such record (no results
    yet, a loader that does not name its weights, or a folder written before the record
    existed). An unreadable file is an :class:`InputError`.
    """
    path = Path(out_dir) / WEIGHTS_FILE
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["weights"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable ({type(e).__name__}: {e}); it names the weights "
                         "the folder's units ran on") from None


def _check_same_weights(folder: Path, recorded: str | None, wanted: str | None,
                        what: str) -> None:
    """A unit's key names its model, not the model's weights: a trained model and its
    random-init twin share every key, so one folder must hold one kind of weights."""
    if recorded is not None and wanted is not None and recorded != wanted:
        raise InputError(f"{folder}: its units ran on {recorded} weights, but {what} "
                         f"{wanted} weights (a unit's key does not tell them apart); use "
                         "another results folder")


def _check_same_reference(folder: Path, recorded: str | None, wanted: str, what: str) -> None:
    if recorded is not None and recorded.strip().lower() != wanted.strip().lower():
        raise InputError(f"{folder}: its MMD² values were measured under reference encoder "
                         f"{recorded!r}, {what} uses {wanted!r}; use another results folder "
                         "or the same reference_encoder")


def load_results(out_dir: str | os.PathLike[str]) -> list[UnitResult]:
    """Every finished unit recorded in ``out_dir/results.jsonl`` (last record per key wins)."""
    by_key: dict[str, UnitResult] = {}
    for rec in _read_jsonl(Path(out_dir) / "results.jsonl"):
        try:
            r = UnitResult.from_dict(rec)
        except (KeyError, TypeError, ValueError):
            continue
        by_key[r.key] = r
    return list(by_key.values())


def load_predictions(out_dir: str | os.PathLike[str]) -> dict[str, tuple[list[str], list[str]]]:
    """Per-item predictions of every finished unit, from ``out_dir/predictions.jsonl``.

    Returns
    -------
    dict
        Unit key -> ``(pred, truth)``, two lists of label names of equal length (the unit's
        test items in order). The last record of a key wins; torn or malformed lines are
        skipped.
    """
    out: dict[str, tuple[list[str], list[str]]] = {}
    for rec in _read_jsonl(Path(out_dir) / "predictions.jsonl"):
        try:
            key, pred, truth = str(rec["key"]), rec["pred"], rec["truth"]
        except (KeyError, TypeError):
            continue
        if not isinstance(pred, list) or not isinstance(truth, list) or len(pred) != len(truth):
            continue
        out[key] = ([str(x) for x in pred], [str(x) for x in truth])
    return out


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Task:
    """A named task: a split (pool + test) and its prompt format (the dataset's default)."""

    name: str
    split: DatasetSplit

    def n_items(self, n_test: int | None) -> int:
        """Test items a unit with ``n_test`` evaluates: the first ``n_test`` of the test split
        (all of it for ``None``)."""
        size = len(self.split.test)
        return size if n_test is None else min(int(n_test), size)

    @property
    def fingerprint(self) -> str:
        """Hash of the pool and test data and of the prompt format."""
        h = hashlib.sha256()
        for part in (self.split.train, self.split.test):
            for t, y in zip(part.texts, part.labels, strict=True):
                h.update(t.encode())
                h.update(b"\x1f")
                h.update(str(y).encode())
                h.update(b"\x1e")
            h.update(b"\x1d")
        fmt = self.split.train.format
        h.update(repr((fmt.instruction, fmt.template, sorted(fmt.label_words.items()))).encode())
        return h.hexdigest()[:16]

    @classmethod
    def from_registry(cls, name: str, *, test_size: int | float | None = None, seed: int = 0,
                      progress: bool = True, pool_size: int | None = None) -> Task:
        """A registry dataset with its default split (see :func:`icldistill.data.load_split`).

        ``pool_size`` caps the demonstration pool: a label-stratified sample of that many pool
        items drawn with ``seed`` (the test part is unchanged). Larger pools are left whole.
        """
        split = load_split(name, test_size=test_size, seed=seed, progress=progress)
        return cls(name, _cap_pool(split, pool_size, seed))

    @classmethod
    def from_table(cls, name: str, table: Any, *, text_field: str, label_field: str,
                   pair_fields: Sequence[str] | None = None, test_size: int | float = 0.3,
                   seed: int = 0, pool_size: int | None = None,
                   format: TaskFormat | None = None, max_words: int | None = None,
                   dedup: bool = False) -> Task:
        """A user's table as a task: a seeded stratified split of it.

        ``table`` is anything :meth:`icldistill.data.Dataset.from_table` reads (a pandas
        DataFrame, a pyarrow Table, a ``datasets.Dataset``, a dict of columns, a list of row
        dicts) or the path of a file :func:`icldistill.data.load_file` reads (CSV, TSV, JSONL,
        JSON, Parquet); ``text_field``, ``label_field``, ``pair_fields``, ``format``,
        ``max_words`` and ``dedup`` are theirs. ``test_size`` (a count or a fraction, default
        0.3 as for ``icldistill evaluate --file``) and ``seed`` fix the split
        (:meth:`~icldistill.data.Dataset.split`); ``pool_size`` caps the pool as in
        :meth:`from_registry`.

        As ``evaluate --file`` does, it warns (:func:`~icldistill.data.readers.warn_test_copies`)
        when test items have a copy in the pool (a duplicated row: a retriever would show the
        query itself with its label); ``dedup=True`` drops such rows before the split.
        """
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"task name must be a non-empty string, got {name!r}")
        _check_pool_size(pool_size)
        ds = Dataset.from_table(table, text_field=text_field, label_field=label_field,
                                pair_fields=pair_fields, name=name, format=format,
                                max_words=max_words, dedup=dedup)
        split = _cap_pool(ds.split(test_size, seed=seed), pool_size, seed)
        origin = str(table) if isinstance(table, (str, os.PathLike)) else f"task {name!r}"
        warn_test_copies(split, origin)
        return cls(name, split)


def _cap_pool(split: DatasetSplit, pool_size: int | None, seed: int) -> DatasetSplit:
    """``split`` with its pool cut to a label-stratified sample of ``pool_size`` items."""
    _check_pool_size(pool_size)
    if pool_size is not None and int(pool_size) < len(split.train):
        split = replace(split, train=split.train.split(int(pool_size), seed=seed).test)
    return split


def _check_pool_size(pool_size: Any) -> None:
    if pool_size is not None and (isinstance(pool_size, bool) or int(pool_size) != pool_size
                                  or pool_size < 1):
        raise InputError(f"pool_size must be a positive integer, got {pool_size!r}")


def unit_grid(
    *,
    models: Sequence[str],
    tasks: Sequence[str],
    selectors: Sequence[str],
    ks: Sequence[int],
    seeds: int = 1,
    orderings: int = 1,
    encoder: str = DEFAULT_ENCODER,
    calibrate: bool = False,
    n_test: int | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: str = "float32",
) -> list[UnitSpec]:
    """The units of a grid, skipping seeds that would repeat a deterministic selector.

    A selector is randomised when it is ``random``, its ``order`` parameter is ``"random"`` or
    it draws ``landmarks``; the others run with seed 0 only. Every unit is evaluated under
    ``orderings`` orderings, with the model in precision ``dtype``.

    A model, task, selector (or an alias of one, such as ``kate`` for ``knn``) or ``k`` listed
    twice raises :class:`InputError` naming it: it would run the same units twice.
    """
    if seeds < 1 or orderings < 1:
        raise InputError("seeds and orderings must be >= 1")
    for what, values, key in (("model", models, str), ("task", tasks, str),
                              ("selector", selectors, selector_key), ("k", ks, int)):
        first: dict[Any, Any] = {}
        for v in values:
            c = key(v)
            if c in first:
                same = (f"{what} {v!r} is listed twice" if first[c] == v else
                        f"{what}s {first[c]!r} and {v!r} are the same ({c!r})")
                raise InputError(f"{same}: each would run the same units again")
            first[c] = v
    units = []
    for model in models:
        for task in tasks:
            for k in ks:
                for sel in selectors:
                    p = dict((params or {}).get(sel, {}))
                    stochastic = (selector_key(sel) == "random" or p.get("order") == "random"
                                  or p.get("landmarks") is not None)
                    for seed in range(seeds if stochastic else 1):
                        for o in range(orderings):
                            units.append(UnitSpec(model, task, sel, int(k), seed, o, encoder,
                                                  calibrate, n_test,
                                                  tuple(sorted(p.items())), dtype))
    return units


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------


class Harness:
    """Run units, persist results as they come, resume interrupted work.

    Parameters
    ----------
    out_dir : path
        Where ``results.jsonl``, ``partial/`` and ``selections/`` live.
    tasks : mapping name -> Task, optional
        Tasks by name; registry datasets not given here are loaded on first use.
    batch_size : int
        Scoring batch size.
    reuse_prefix : bool
        Encode a shared demonstration prefix once (default).
    progress : bool
        Progress bars and status lines on stderr.
    model_loader : callable, optional
        ``name -> LoadedModel``-like object with ``.model`` and ``.tokenizer``
        (default :func:`icldistill.models.registry.load_model`); called as
        ``model_loader(name, dtype=torch_dtype)`` for units that are not float32. A loader
        with a ``weights`` attribute (a string: ``"pretrained"``, or ``"random-init seed N"``
        for the twins of :func:`~icldistill.lab.experiments.phenomena.twin_loader`) names
        what it loads; the folder records it in ``weights.json`` with its first result, and
        a harness whose loader names other weights than the folder's refuses to run or
        import its units (:class:`InputError`; a trained model and its twin share every
        unit key). The default loader is ``"pretrained"``; a loader without the attribute is
        neither recorded nor checked.
    embedding_cache : path, optional
        Folder of the embedding cache (default ``<cache_root>/embeddings``).
    n_boot : int
        Bootstrap resamples of each unit's accuracy and macro-F1 intervals.
    reference_encoder : str, optional
        The encoder spec of the reference kernel every unit's ``mmd2_task`` / ``mmd2_query``
        is measured under: ``"minilm"``, or ``"hidden:L"`` / ``"kv:L"`` to measure it in
        each unit's model (a bandwidth fitted per model and task). A results folder records
        it in ``reference.json`` with its first result. The default (``None``) takes the
        folder's recorded one, else ``"minilm"``; another one than the folder's is an
        :class:`InputError` (the values would not compare).
    device : str or torch.device
        Where the default loader puts each model (its KV caches and the scorer follow it) and
        where the MiniLM encoder runs: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, ``"mps"``.
        A device that is not available is an :class:`InputError`. The selectors' kernels run
        there too (the embeddings are moved to it before selection; an approximate candidate
        index stays on the CPU); the reported ``mmd2_task`` / ``mmd2_query`` are computed on
        the CPU in float64, so they do not depend on the device.
    selections_from : path, optional
        A results folder whose ``selections/<key>.json`` give every unit its demonstrations:
        no selector runs, and each query gets exactly the demonstrations (in the same order)
        it got there. For a control: the same prompts on another model, e.g. the trained
        model's selections (made from *its* hidden states or keys/values) read by its
        random-init twin. A unit without a selection there is an :class:`InputError`.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        tasks: Mapping[str, Task] | None = None,
        batch_size: int = 8,
        reuse_prefix: bool = True,
        progress: bool = True,
        model_loader: Callable[[str], Any] | None = None,
        embedding_cache: str | os.PathLike[str] | None = None,
        n_boot: int = 1000,
        reference_encoder: str | None = None,
        device: str | torch.device = "cpu",
        selections_from: str | os.PathLike[str] | None = None,
    ) -> None:
        from icldistill.models.registry import resolve_device

        self.device = resolve_device(device)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tasks: dict[str, Task] = dict(tasks or {})
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.progress = progress
        self.n_boot = n_boot
        recorded = recorded_reference(self.out_dir)
        if reference_encoder is None:           # the folder's own, else the default
            reference_encoder = recorded or REFERENCE_ENCODER
        check_encoder_spec(reference_encoder)
        head, _, rest = reference_encoder.strip().partition(":")
        if head.strip().lower() == "kv" and rest.strip().lower().startswith("auto"):
            raise InputError(f"reference_encoder {reference_encoder!r}: the reference kernel is "
                             "one per task for every selector, so its representation cannot "
                             "depend on a unit's heads; give a layer (e.g. 'kv:10' or "
                             "'hidden:-1'), or measure each item in the model's K_att space "
                             "with item_mmd (compare --katt-concordance)")
        _check_same_reference(self.out_dir, recorded, reference_encoder, "this harness")
        self.reference_encoder: str = reference_encoder
        self._loader = model_loader
        self.weights: str | None = (PRETRAINED if model_loader is None
                                    else _loader_weights(model_loader))
        self._embedding_cache = embedding_cache
        self._models: dict[tuple[str, str], Any] = {}
        self._encoders: dict[tuple[str, str, str], Any] = {}   # (spec, model, dtype)
        self._emb: dict[tuple[str, str, str], np.ndarray] = {}
        self._ref_kernel: dict[tuple[str, str], Kernel] = {}   # (task, model)
        self._stores: dict[str, _ScoreStore] = {}
        self._heads: dict[tuple[str, str, str], HeadChoice] = {}
        self.selections_from = None if selections_from is None else Path(selections_from)
        if self.selections_from is not None:
            if self.selections_from.resolve() == self.out_dir.resolve():
                raise InputError("selections_from must be another results folder, not the "
                                 "harness's own")
            if not (self.selections_from / "selections").is_dir():
                raise InputError(f"{self.selections_from}: no selections/ folder to take the "
                                 "demonstrations from")

    # ---- resources ---------------------------------------------------------------------

    def task(self, name: str) -> Task:
        if name not in self.tasks:
            self.tasks[name] = Task.from_registry(name, progress=self.progress)
        return self.tasks[name]

    def model(self, name: str, dtype: str = "float32") -> Any:
        """The loaded model ``name`` in precision ``dtype`` (one model is kept in memory)."""
        _check_dtype(dtype)
        if (name, dtype) not in self._models:
            if self._loader is None:
                import functools

                from icldistill.models.registry import load_model

                self._loader = functools.partial(load_model, progress=self.progress,
                                                 device=self.device)
            if len(self._models) >= 1:      # keep one model in memory at a time
                self._models.clear()
                self._encoders = {k: v for k, v in self._encoders.items() if k[1] == ""}
            lm = (self._loader(name) if dtype == "float32"
                  else self._loader(name, dtype=DTYPES[dtype]))
            self._models[(name, dtype)] = lm
        return self._models[(name, dtype)]

    def encoder(self, spec: str, model_name: str, dtype: str = "float32") -> Any:
        from icldistill.encoders.representations import make_encoder

        needs_model = needs_language_model(spec)
        key = (spec, model_name if needs_model else "", dtype if needs_model else "")
        if key not in self._encoders:
            if needs_model:
                lm = self.model(model_name, dtype)
                self._encoders[key] = make_encoder(spec, lm.model, lm.tokenizer)
            else:
                self._encoders[key] = make_encoder(spec, device=self.device)
        return self._encoders[key]

    def embeddings(self, task: Task, part: str, spec: str, model_name: str,
                   dtype: str = "float32", *, n: int | None = None) -> np.ndarray:
        """Representations ``[n, d]`` of the pool (``part="train"``) or the test inputs.

        ``n`` asks for the first ``n`` items only (a unit's scored test items). A model-space
        encoder (``hidden:``/``kv:``, a forward pass of the reading model per text) then encodes
        just those: on r8, 300 of the 2,172 test texts. MiniLM encodes the whole part whatever
        ``n`` (it is cheap, and the task-MMD reference shares it) and returns its first rows, so
        a MiniLM representation never depends on ``n``.
        """
        from icldistill.encoders.representations import encode_cached

        ds = task.split.train if part == "train" else task.split.test
        needs_model = needs_language_model(spec)
        size = len(ds)
        m = size if n is None or not needs_model else min(max(int(n), 0), size)
        key = (task.name + ":" + task.fingerprint, part, spec + ("@" + model_name + ":" + dtype
                                                               if needs_model else ""), m)
        if key not in self._emb:
            enc = self.encoder(spec, model_name, dtype)
            self._emb[key] = encode_cached(enc, list(ds.texts)[:m], self._embedding_cache,
                                           progress=self.progress)
        return self._emb[key] if n is None else self._emb[key][:max(int(n), 0)]

    def encoder_spec(self, spec: UnitSpec, task: Task) -> str:
        """The representation a unit's selector works on.

        The unit's ``encoder``, except that a selector with a ``preferred_encoder`` (e.g.
        ``mmd-katt``: ``"kv:auto"``) gets that one when the unit asks for the default; and
        ``"kv:auto"`` resolves to the demo-carrying heads of the unit's model on the task
        (:meth:`attention_heads`).
        """
        enc = spec.encoder
        preferred = getattr(SELECTORS.get(spec.selector), "preferred_encoder", None)
        if enc == DEFAULT_ENCODER and preferred:
            enc = preferred
        kind, _, rest = enc.strip().lower().partition(":")
        if kind == "kv" and rest.strip() == "auto":
            enc = self.attention_heads(task, spec.model, spec.dtype).spec
        return enc

    def attention_heads(self, task: Task, model_name: str, dtype: str = "float32", *,
                        n_prompts: int = 4, k: int = 4, seed: int = 0) -> HeadChoice:
        """The KV heads of ``model_name`` where the task's demonstrations carry the most
        attention output (:func:`~icldistill.encoders.representations.choose_attention_heads`).

        Calibration prompts: ``n_prompts`` prompts in the task's format, each with ``k``
        demonstrations and a query drawn from the pool (never from the test items), seeded.
        The choice is stored in ``heads/`` and read back on later runs. Its file name holds
        the task, model, dtype and data, the calibration unless it is the units' default,
        and a hash of the whole task, model and dtype (which tells apart names that the
        readable part cuts or folds); the recorded task, model and dtype must match.
        """
        for what, v in (("n_prompts", n_prompts), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"attention_heads: {what} must be a positive integer, got "
                                 f"{v!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"attention_heads: seed must be a non-negative integer, got "
                             f"{seed!r}")
        calib = (int(n_prompts), int(k), int(seed))
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{task.name}-{model_name}-{dtype}")[:120]
        extra = "" if calib == _DEFAULT_CALIBRATION else "-n{}-k{}-s{}".format(*calib)
        stem = f"{safe}-{task.fingerprint}{extra}"
        # the readable part of the name may be cut or folded ("ckpt/a" and "ckpt_a"): a hash
        # of the whole identity tells two models apart, and the record is checked on reading
        tag = hashlib.sha256(json.dumps([task.name, model_name, dtype]).encode()).hexdigest()
        path = self.out_dir / "heads" / f"{stem}-{tag[:8]}.json"
        key = (task.name + ":" + task.fingerprint, model_name, dtype, *calib)
        if key in self._heads:
            return self._heads[key]
        # one process chooses (the others wait and read its file back)
        with unit_lock(self.out_dir, f"heads-{path.stem}"):
            return self._attention_heads(task, model_name, dtype, path, key, n_prompts, k,
                                         seed)

    def _attention_heads(self, task: Task, model_name: str, dtype: str, path: Path,
                         key: tuple[Any, ...], n_prompts: int, k: int,
                         seed: int) -> HeadChoice:
        from icldistill.encoders.representations import HeadChoice, choose_attention_heads

        # this choice's file, else one of a release that named it without the hash
        legacy = path.with_name(path.name.rsplit("-", 1)[0] + ".json")
        for candidate in (path, legacy):
            rec = None
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads(candidate.read_text())
            if not isinstance(rec, dict) or (rec.get("task"), rec.get("model"),
                                             rec.get("dtype")) != (task.name, model_name, dtype):
                continue                    # absent, torn, or another model's choice
            try:
                stored = (int(rec["n_prompts"]), int(rec["k"]), int(rec["seed"]))
                choice = HeadChoice(int(rec["layer"]), tuple(int(h) for h in rec["heads"]),
                                    np.asarray(rec["demo_share"], dtype=np.float64),
                                    stored[0])
            except (KeyError, TypeError, ValueError):
                continue                    # torn: chosen again and rewritten
            if stored != (n_prompts, k, seed):
                raise InputError(f"{candidate}: records heads chosen with n_prompts, k, seed "
                                 f"= {stored}, not {(n_prompts, k, seed)}")
            self._heads[key] = choice
            return choice
        pool = task.split.train
        if len(pool) < k + 1:
            raise InputError(f"task {task.name!r}: the pool is too small for calibration "
                             f"prompts ({len(pool)} items)")
        rng = np.random.default_rng([seed, 7])
        fmt = pool.format
        lm = self.model(model_name, dtype)
        scorer = FewShotScorer(lm.model, lm.tokenizer, fmt.label_words, template=fmt.template,
                               instruction=fmt.instruction)
        prompts = []
        for _ in range(n_prompts):
            pick = rng.choice(len(pool), size=k + 1, replace=False)
            demos = [(pool.texts[j], str(pool.labels[j])) for j in pick[:k]]
            prompts.append(scorer.prompt(demos, pool.texts[pick[k]]))
        log(self.progress, f"choosing demo-carrying attention heads of {model_name} on "
                           f"{task.name} ({n_prompts} calibration prompts)")
        choice = choose_attention_heads(lm.model, lm.tokenizer, prompts)
        write_json(path, {**choice.to_dict(), "task": task.name, "model": model_name,
                          "dtype": dtype, "k": k, "seed": seed})
        self._heads[key] = choice
        return choice

    def reference_kernel(self, task: Task, model_name: str) -> Kernel:
        """The task's reference kernel for reporting MMD (see the module docstring)."""
        # a model-space reference (``hidden:``/``kv:``) has one kernel per reading model: its
        # bandwidth comes from that model's representations
        key = (task.name + ":" + task.fingerprint,
               model_name if needs_language_model(self.reference_encoder) else "")
        if key not in self._ref_kernel:
            pool = self.embeddings(task, "train", self.reference_encoder, model_name)
            test = self.embeddings(task, "test", self.reference_encoder, model_name)
            self._ref_kernel[key] = make_kernel(
                "gaussian", torch.as_tensor(pool, dtype=torch.float64),
                torch.as_tensor(test, dtype=torch.float64), seed=0)
        return self._ref_kernel[key]

    def _score_store(self, model_name: str) -> _ScoreStore:
        if model_name not in self._stores:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._")[:60] or "model"
            tag = hashlib.sha256(model_name.encode()).hexdigest()[:8]
            self._stores[model_name] = _ScoreStore(self.out_dir / "scores" / f"{safe}-{tag}.jsonl")
        return self._stores[model_name]

    # ---- bookkeeping -------------------------------------------------------------------

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.jsonl"

    def finished(self) -> dict[str, UnitResult]:
        return {r.key: r for r in load_results(self.out_dir)}

    def status(self, units: Iterable[UnitSpec]) -> GridStatus:
        """Where ``units`` stand in this folder, with an estimate of the scoring time left.

        Reads ``results.jsonl``, ``partial/`` and the locks; computes nothing and loads no
        model (the tasks are loaded, for their keys and sizes).

        The estimate is the measured scoring seconds per test item times the items left. The
        rate of a unit comes from, in order: its own partial batches (their median); the
        finished and partly scored units of the same model, task, ``k`` and kind (one shared
        prompt or one per query; the median of their rates, as a unit paused or starved
        mid-run times far slower); the same at the nearest other ``k``, for per-query prompts
        scaled by ``(k + 1) / (k' + 1)`` (a prompt holds ``k`` demonstrations and the query);
        another model's rate found the same way, times the median ratio of the two models'
        rates over the (task, ``k``) both have timed (same kind of prompt where there is one).
        With ``selections_from`` (a random-init control reading another folder's prompts on
        the same architecture) and nothing of its own timed for a unit, the finished units of
        that folder time it the same way. Otherwise it is ``None``. Rates are measured under
        whatever load the units ran with.

        Parameters
        ----------
        units : iterable of UnitSpec

        Returns
        -------
        GridStatus
        """
        units = list(units)
        done = self.finished()
        running = set(held_locks(self.out_dir))
        rates = ScoringRates()
        rows: list[tuple[UnitSpec, str, int, int, float | None]] = []
        for u in units:
            task = self.task(u.task)
            key = u.key(task.fingerprint)
            n = task.n_items(u.n_test)
            if key in done:
                r = done[key]
                rates.add(u, r.shared, r.scoring_seconds, r.n - r.n_reused)
                rows.append((u, key, n, n, 0.0))
                continue
            scored, own = partial_progress(self.out_dir / "partial" / f"{key}.jsonl")
            if own is not None:
                rates.add(u, is_shared(u), own, 1)
            rows.append((u, key, n, scored, own))
        out = []
        source: ScoringRates | None = None
        for u, key, n, scored, own in rows:
            if key in done:
                out.append(UnitStatus(u, key, "done", n, n, 0.0))
                continue
            state = "running" if key in running else "partial" if scored else "todo"
            rate = own if own is not None else rates.of(u)
            if rate is None and self.selections_from is not None:
                if source is None:
                    source = self._source_rates(units)
                rate = source.of(u)
            out.append(UnitStatus(u, key, state, n, min(scored, n),
                                  None if rate is None else rate * max(n - scored, 0)))
        return GridStatus(str(self.out_dir), tuple(out))

    def _source_rates(self, units: list[UnitSpec]) -> ScoringRates:
        """The scoring rates of ``units`` finished in ``selections_from`` (same keys: the
        same model, task, selector, k and test items)."""
        assert self.selections_from is not None
        done = {r.key: r for r in load_results(self.selections_from)}
        rates = ScoringRates()
        for u in units:
            r = done.get(u.key(self.task(u.task).fingerprint))
            if r is not None:
                rates.add(u, r.shared, r.scoring_seconds, r.n - r.n_reused)
        return rates

    # ---- one unit ----------------------------------------------------------------------

    def select(self, spec: UnitSpec, task: Task, test_idx: np.ndarray) -> Selection:
        """The demonstrations of a unit (before the ordering shuffle)."""
        pool_ds = task.split.train
        test_ds = task.split.test
        sel = make_selector(spec.selector, seed=spec.seed, **dict(spec.params))
        needs = set(sel.needs) | set(getattr(sel, "target_needs", ()))
        pool_emb = test_emb = None
        if "embeddings" in needs or (sel.order or sel.default_order) == "similarity":
            enc = self.encoder_spec(spec, task)
            pool_emb = self.embeddings(task, "train", enc, spec.model, spec.dtype)
            # only the scored test items: a model-space encoder runs the model per text
            n_enc = int(np.max(test_idx)) + 1 if len(test_idx) else 0
            test_emb = self.embeddings(task, "test", enc, spec.model, spec.dtype,
                                       n=n_enc)[test_idx]
            if self.device.type != "cpu":     # the selectors' kernels run where these are
                pool_emb = torch.as_tensor(pool_emb).to(self.device)
                test_emb = torch.as_tensor(test_emb).to(self.device)
            if enc.strip().lower().startswith("kv") and "kernel" not in dict(
                    spec.params) and hasattr(sel, "kernel"):
                sel.kernel = self.encoder(enc, spec.model, spec.dtype).kernel(
                    torch.as_tensor(pool_emb), torch.as_tensor(test_emb))
        pool = Pool(pool_emb, np.asarray(pool_ds.labels), list(pool_ds.texts))
        targets = Pool(test_emb, None, [test_ds.texts[i] for i in test_idx])
        if spec.k > len(pool_ds):
            raise InputError(f"k={spec.k} is larger than the pool of task {task.name!r} "
                             f"({len(pool_ds)} items)")
        return sel.fit(pool).select(targets, spec.k)

    def run_unit(self, spec: UnitSpec) -> UnitResult:
        """Evaluate one unit (or return its recorded result); resumes a partial run.

        The unit's lock (``locks/<key>.lock``) is held while it is computed: another process
        working on the same unit in the same folder is waited for, and its recorded result
        returned.
        """
        self._check_weights()
        task = self.task(spec.task)
        key = spec.key(task.fingerprint)
        with unit_lock(self.out_dir, key):
            done = self.finished()
            if key in done:
                if self.selections_from is not None:
                    self._same_selection_as_source(spec, task, key, finished=True)
                with contextlib.suppress(FileNotFoundError):   # killed before removing it
                    (self.out_dir / "partial" / f"{key}.jsonl").unlink()
                return done[key]
            return self._compute_unit(spec, task, key)

    def _same_selection_as_source(self, spec: UnitSpec, task: Task, key: str, *,
                                  finished: bool) -> None:
        """With ``selections_from``: refuse a unit this folder recorded on other
        demonstrations (its result, or the batches scored in ``partial/``, come from them).
        The unit key does not say where the demonstrations came from, so a folder first run
        without ``selections_from`` would otherwise return that result, or mix its scored
        rows with rows scored on the source's prompts."""
        assert self.selections_from is not None
        own = self.out_dir / "selections" / f"{key}.json"
        if not own.exists():
            return
        n = task.n_items(spec.n_test)
        mine = self._recorded_selection(self.out_dir, spec, task, key, n)
        theirs = self._recorded_selection(self.selections_from, spec, task, key, n)
        if mine[1] == theirs[1] and np.array_equal(mine[0], theirs[0]):
            return
        what = "its recorded result comes" if finished else "its partly scored batches come"
        raise InputError(
            f"{own}: this folder chose other demonstrations for {spec.label} on {task.name} "
            f"(k={spec.k}) than {self.selections_from} holds, and {what} from them; use a "
            "fresh folder for a run on the source's prompts"
            + ("" if finished else f" (or remove {own} and partial/{key}.jsonl)"))

    def _compute_unit(self, spec: UnitSpec, task: Task, key: str) -> UnitResult:
        """Select, score (resuming from ``partial/`` and the score store) and record a unit."""
        test_ds = task.split.test
        n = task.n_items(spec.n_test)
        if n < 1:
            raise InputError(f"task {task.name!r} has no test items")
        test_idx = np.arange(n)
        own = self.out_dir / "selections" / f"{key}.json"
        if self.selections_from is not None:
            self._same_selection_as_source(spec, task, key, finished=False)
            idx, shared, sel_seconds = self._recorded_selection(self.selections_from, spec,
                                                                task, key, n)
            self._write_selection(key, spec, shared, sel_seconds, idx)
        elif own.exists():   # an interrupted unit: its demonstrations are already chosen
            idx, shared, sel_seconds = self._recorded_selection(self.out_dir, spec, task, key, n)
            log(self.progress, f"reusing the recorded selection of {spec.label} on {task.name}")
        else:
            selection = self.select(spec, task, test_idx)
            idx = _ordered(selection, spec)
            shared, sel_seconds = selection.shared, selection.seconds
            self._write_selection(key, spec, shared, sel_seconds, idx)
        lm = self.model(spec.model, spec.dtype)
        pool_ds = task.split.train
        fmt = pool_ds.format
        scorer = FewShotScorer(lm.model, lm.tokenizer, fmt.label_words, template=fmt.template,
                               instruction=fmt.instruction, batch_size=self.batch_size)
        queries = [test_ds.texts[i] for i in test_idx]
        demos = [[(pool_ds.texts[j], str(pool_ds.labels[j])) for j in row] for row in idx]
        texts = [scorer.prompt(demos[0] if shared else d, q).render().text
                 for d, q in zip(demos, queries, strict=True)]
        partial = self.out_dir / "partial" / f"{key}.jsonl"
        scores, tokens, seconds = _read_partial(partial, n, list(scorer.labels))
        store, hashes, reused = self._reuse_scores(spec, scorer, texts, scores)
        todo = np.flatnonzero(np.isnan(scores).any(axis=1))
        if todo.size:
            if todo.size < n:
                log(self.progress,
                    f"resuming {spec.label} on {task.name}: {n - todo.size}/{n} done"
                    + (f" ({reused} identical prompts already scored)" if reused else ""))
            res = self._score_missing(spec, scorer, shared, queries, demos, todo,
                                      scores, partial, store, hashes)
            tokens += res.n_tokens
            seconds += res.seconds
        bad = np.flatnonzero(np.isnan(scores).any(axis=1))
        if bad.size:    # argmax would read a NaN row as its first label, a normal-looking result
            raise FloatingPointError(
                f"{spec.label} on {task.name} ({spec.model_label}): the model's label scores are "
                f"NaN for {bad.size} of {n} test items (the first: "
                f"{', '.join(map(str, test_idx[bad[:5]].tolist()))}); its weights or activations "
                "overflowed (try --dtype float32); nothing is recorded for this unit")
        pred = np.asarray(scorer.labels, dtype=object)[scores.argmax(axis=1)]
        truth = np.asarray([str(test_ds.labels[i]) for i in test_idx], dtype=object)
        metrics = classification_metrics(truth, pred, labels=list(test_ds.label_names),
                                         n_boot=self.n_boot, seed=0)
        dist = self.mmd_to_task(task, spec.model, idx, test_idx, shared)
        result = UnitResult(spec, key, metrics.accuracy, metrics.macro_f1, metrics.n,
                            dist.mmd2_task, dist.mmd2_query, shared, sel_seconds,
                            seconds, tokens, _prompt_tokens(scorer, texts),
                            metrics.per_label_accuracy, reused)
        self._record(result, pred, truth, partial)
        return result

    def _write_selection(self, key: str, spec: UnitSpec, shared: bool, seconds: float,
                         idx: np.ndarray) -> None:
        """``selections/<key>.json``: the demonstrations every query saw."""
        sel_dir = self.out_dir / "selections"
        sel_dir.mkdir(exist_ok=True)
        write_json(sel_dir / f"{key}.json", {"spec": asdict(spec), "shared": shared,
                                             "indices": idx[:1] if shared else idx,
                                             "seconds": seconds})

    def _recorded_selection(self, folder: Path, spec: UnitSpec, task: Task, key: str, n: int
                            ) -> tuple[np.ndarray, bool, float]:
        """The ordered pool indices ``[n, k]`` of a unit, its ``shared`` flag and selection
        time, read from ``folder/selections/<key>.json`` (``selections_from``, or this
        folder's own record of an interrupted unit; the key must be the unit's: same spec,
        task data and test items)."""
        path = folder / "selections" / f"{key}.json"
        if not path.exists():
            raise InputError(f"{path}: no selection of {spec.label} on {task.name} (k={spec.k}) "
                             f"in {folder}; finish that unit there first")
        rec = json.loads(path.read_text())
        mine = json.loads(json.dumps(to_jsonable(asdict(spec))))
        theirs = rec.get("spec") or {}
        if not theirs or any(theirs[f] != mine[f] for f in theirs.keys() & mine.keys()):
            raise InputError(f"{path}: recorded for another unit than {spec.label} on "
                             f"{task.name} (k={spec.k})")
        idx = np.asarray(rec["indices"], dtype=np.int64)
        shared = bool(rec["shared"])
        if shared and idx.shape[:1] == (1,):
            idx = np.repeat(idx, n, axis=0)
        if idx.shape != (n, spec.k) or idx.min(initial=0) < 0 \
                or idx.max(initial=0) >= len(task.split.train):
            raise InputError(f"{path}: indices of shape {idx.shape} do not fit {n} test items, "
                             f"k={spec.k} and a pool of {len(task.split.train)}")
        return idx, shared, float(rec.get("seconds", 0.0))

    def _reuse_scores(self, spec: UnitSpec, scorer: FewShotScorer, texts: list[str],
                      scores: np.ndarray) -> tuple[_ScoreStore | None, list[str] | None, int]:
        """Fill the rows of ``scores`` still NaN from the model's score store (in place).

        Returns the store and the prompt hashes (``None`` for calibrated units, which are not
        stored) and the number of rows filled.
        """
        if spec.calibrate:
            return None, None, 0
        store = self._score_store(spec.model_label)
        labels = [[str(lab), scorer.verbalize(lab)] for lab in scorer.labels]
        hashes = [_prompt_hash(spec.model_label, labels, t) for t in texts]
        reused = 0
        for i in np.flatnonzero(np.isnan(scores).any(axis=1)):
            hit = store.get(hashes[i])
            if hit is not None and len(hit) == len(scorer.labels):
                scores[i] = hit
                reused += 1
        return store, hashes, reused

    def _score_missing(self, spec: UnitSpec, scorer: FewShotScorer, shared: bool,
                       queries: list[str], demos: list[list[tuple[str, str]]],
                       todo: np.ndarray, scores: np.ndarray, partial: Path,
                       store: _ScoreStore | None, hashes: list[str] | None) -> Any:
        """Score the queries ``todo`` into ``scores`` (in place); returns the scorer's result.

        Uncalibrated batches are appended to ``partial`` (and the score store) as they come;
        calibrated scores, which depend on the whole set, are appended once at the end, already
        divided by the content-free probabilities.
        """
        t_last = [time.perf_counter()]
        tokens_last = [scorer.tokens_run]

        def save(local: np.ndarray, lp: np.ndarray) -> None:
            now = time.perf_counter()
            # the batch's tokens go with its scores: a resumed unit's n_tokens then counts
            # every session's batches, not only the last session's
            _append_jsonl(partial, {"i": todo[local].tolist(), "lp": lp.tolist(),
                                    "labels": list(scorer.labels),
                                    "seconds": now - t_last[0],
                                    "tokens": scorer.tokens_run - tokens_last[0]})
            t_last[0] = now
            tokens_last[0] = scorer.tokens_run
            if store is not None and hashes is not None:
                store.add([hashes[i] for i in todo[local]], lp)

        q = [queries[i] for i in todo]
        on_batch = None if spec.calibrate else save
        if shared:
            res = scorer.score(q, demos[0], reuse_prefix=self.reuse_prefix,
                               calibrate=spec.calibrate, progress=self.progress,
                               on_batch=on_batch)
        else:
            res = scorer.score(q, per_query=[demos[i] for i in todo],
                               reuse_prefix=self.reuse_prefix, calibrate=spec.calibrate,
                               progress=self.progress, on_batch=on_batch)
        if spec.calibrate:
            lp = np.log(np.clip(res.probabilities(), 1e-300, None))
            _append_jsonl(partial, {"i": todo.tolist(), "lp": lp.tolist(),
                                    "labels": list(scorer.labels), "seconds": res.seconds,
                                    "tokens": res.n_tokens})
            scores[todo] = lp
        else:
            scores[todo] = res.logprobs
        return res

    def _record(self, result: UnitResult, pred: np.ndarray, truth: np.ndarray,
                partial: Path) -> None:
        """Append the unit's predictions, then its result line (which marks it finished)."""
        # predictions first: the results line marks the unit finished, so a kill between the
        # two leaves an unfinished unit (recomputed from partial/), never lost predictions
        _append_jsonl(self.out_dir / "predictions.jsonl",
                      {"key": result.key, "pred": pred.tolist(), "truth": truth.tolist()})
        self._mark_reference()
        _append_jsonl(self.results_path, result.to_dict())
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()

    def _check_weights(self) -> None:
        """Refuse to take this folder's units as the results of other weights than theirs (a
        trained model's folder for its random-init twin's, or the reverse): read back
        without loading a model, they would pass for this harness's own. Reading a folder for
        its selections, coverage or status is not checked."""
        _check_same_weights(self.out_dir, recorded_weights(self.out_dir), self.weights,
                            "this harness loads")

    def _mark_reference(self) -> None:
        """Name the reference encoder in ``reference.json`` before the folder's first result
        (and check it again: another process may have written a different one since
        ``__init__``)."""
        if not (self.out_dir / REFERENCE_FILE).is_file():
            recorded = recorded_reference(self.out_dir)      # "minilm" for an older folder
            # created once: of two workers starting a fresh folder with different references,
            # the first one's stands and the other is refused below (an overwrite let each
            # read back its own and record results under both)
            with contextlib.suppress(FileExistsError):
                write_json(self.out_dir / REFERENCE_FILE,
                           {"reference_encoder": recorded or self.reference_encoder},
                           exclusive=True)
        recorded = recorded_reference(self.out_dir)
        _check_same_reference(self.out_dir, recorded, self.reference_encoder, "this harness")
        if self.weights is not None:       # created once, as reference.json
            if not (self.out_dir / WEIGHTS_FILE).is_file():
                with contextlib.suppress(FileExistsError):
                    write_json(self.out_dir / WEIGHTS_FILE, {"weights": self.weights},
                               exclusive=True)
            _check_same_weights(self.out_dir, recorded_weights(self.out_dir), self.weights,
                                "this harness loads")

    def mmd_to_task(self, task: Task, model_name: str, idx: np.ndarray, test_idx: np.ndarray,
                    shared: bool) -> SelectionMMD:
        """``mmd2_task`` and ``mmd2_query`` of demonstration sets under the task's reference
        kernel.

        ``idx`` ``[R, k]`` holds pool indices (``R = 1`` for a shared set, else one row per
        test item of ``test_idx`` ``[n]``); see the module docstring for both quantities.
        """
        mmd_task, per = self._selection_mmd(task, model_name, idx, test_idx, shared)
        return SelectionMMD(mmd_task, float(per.mean()))

    def _selection_mmd(self, task: Task, model_name: str, idx: np.ndarray,
                       test_idx: np.ndarray, shared: bool) -> tuple[float, np.ndarray]:
        """``mmd2_task`` and the per-query ``MMD^2(S_q, {q})`` ``[n]`` (see
        :meth:`mmd_to_task`)."""
        kern = self.reference_kernel(task, model_name)
        ref = self.reference_encoder
        pool = torch.as_tensor(self.embeddings(task, "train", ref, model_name),
                               dtype=torch.float64)
        test = torch.as_tensor(self.embeddings(task, "test", ref, model_name),
                               dtype=torch.float64)[torch.as_tensor(test_idx)]
        return _set_mmd(pool, test, kern, idx, shared)

    def item_mmd(self, results: Iterable[UnitResult], *, space: str = "katt",
                 compute: bool = True) -> dict[str, np.ndarray]:
        """Each unit's per-item ``MMD^2(S_i, {q_i})`` ``[n]`` in the model's attention space.

        ``space="katt"``: the keys and values of the unit's model's demo-carrying heads
        (``kv:auto``, :meth:`attention_heads`) under their normalised ``K_att``, the space the
        theory's bias term speaks of (and ``mmd-katt``'s). The reference space is
        :meth:`label_coverage` with ``item_mmd=True``. Computing it runs the model over the
        task's pool and scored test inputs once per task (cached like every encoding); the
        values are stored in ``item_mmd.jsonl`` (one record per unit and space) and read back,
        so a later call computes only the units it has not seen.

        Parameters
        ----------
        results : iterable of UnitResult
            Finished units of this harness's ``out_dir`` (with their ``selections/``).
        space : {"katt"}
        compute : bool
            ``False``: only read what ``item_mmd.jsonl`` holds (no model is loaded).

        Returns
        -------
        dict
            Unit key -> ``[n]`` float64; units without a recorded selection (or, with
            ``compute=False``, without a stored record) are left out.
        """
        if space != "katt":
            raise InputError(f"item_mmd: unknown space {space!r} (known: 'katt')")
        path = self.out_dir / "item_mmd.jsonl"
        stored = {rec["key"]: np.asarray(rec["values"], dtype=np.float64)
                  for rec in _read_jsonl(path)
                  if rec.get("space") == space and "key" in rec and "values" in rec}
        out: dict[str, np.ndarray] = {}
        for r in results:
            sel = self.out_dir / "selections" / f"{r.key}.json"
            if r.key in stored:
                out[r.key] = stored[r.key]
                continue
            if not compute or not sel.exists():
                continue
            task = self.task(r.spec.task)
            rec = json.loads(sel.read_text())
            enc = self.attention_heads(task, r.spec.model, r.spec.dtype).spec
            pool = torch.as_tensor(self.embeddings(task, "train", enc, r.spec.model,
                                                   r.spec.dtype), dtype=torch.float64)
            test = torch.as_tensor(self.embeddings(task, "test", enc, r.spec.model,
                                                   r.spec.dtype, n=r.n), dtype=torch.float64)
            kern = self.encoder(enc, r.spec.model, r.spec.dtype).kernel(pool, test)
            _, per = _set_mmd(pool, test, kern, np.asarray(rec["indices"], dtype=np.int64),
                              bool(rec["shared"]))
            _append_jsonl(path, {"key": r.key, "space": space, "encoder": enc,
                                 "values": per.tolist()})
            out[r.key] = per
        return out

    # ---- many units --------------------------------------------------------------------

    def label_coverage(self, results: Iterable[UnitResult], *,
                       item_mmd: bool = False) -> dict[str, LabelCoverage]:
        """For every finished unit, whether each test item's label was among its demonstrations.

        Reads the unit's ``selections/<key>.json`` (the pool indices every query saw) and its
        line of ``predictions.jsonl``, and the labels of the task's pool. Units without both
        files are left out of the returned mapping.

        Parameters
        ----------
        results : iterable of UnitResult
            Finished units of this harness's ``out_dir``.
        item_mmd : bool
            Also compute each item's ``MMD^2(S_q, {q})`` under the reference kernel
            (:attr:`LabelCoverage.mmd2_query`; needs the reference encoder's embeddings of the
            task). Their mean must equal the unit's recorded ``mmd2_query``.

        Returns
        -------
        dict
            Unit key -> :class:`LabelCoverage` (arrays of the unit's ``n`` test items).

        Raises
        ------
        InputError
            When a unit's key (which hashes the task's pool and test data) or its recorded
            truth does not match the task as this harness loads it, or a selection names an
            index outside the task's pool: the results were computed on other data (another
            ``pool_size``, split or dataset version); with ``item_mmd``, also when the items'
            mean differs from the recorded ``mmd2_query`` (another reference encoder or
            kernel).
        """
        preds = load_predictions(self.out_dir)
        out: dict[str, LabelCoverage] = {}
        for r in results:
            path = self.out_dir / "selections" / f"{r.key}.json"
            if r.key not in preds or not path.exists():
                continue
            pred, truth = preds[r.key]
            task = self.task(r.spec.task)
            test_labels = [str(y) for y in task.split.test.labels[:len(truth)]]
            if r.spec.key(task.fingerprint) != r.key or test_labels != list(truth):
                raise InputError(f"unit {r.spec.label} on {r.spec.task}: it was computed on "
                                 f"other data than task {r.spec.task!r} as loaded here (another "
                                 "pool size, split or dataset version?)")
            rec = json.loads(path.read_text())
            idx = np.asarray(rec["indices"], dtype=np.int64)
            pool = np.asarray([str(y) for y in task.split.train.labels], dtype=object)
            if idx.ndim != 2 or idx.size == 0 or idx.min() < 0 or idx.max() >= len(pool):
                raise InputError(f"unit {r.spec.label} on {r.spec.task}: selection "
                                 f"{path.name} does not index the task's pool of {len(pool)} "
                                 "items (another pool size?)")
            n = len(truth)
            if not rec["shared"] and idx.shape[0] != n:
                raise InputError(f"unit {r.spec.label} on {r.spec.task}: selection "
                                 f"{path.name} has {idx.shape[0]} rows for {n} test items")
            demo_labels = pool[np.broadcast_to(idx[:1], (n, idx.shape[1]))
                               if rec["shared"] else idx]
            gold = np.asarray(truth, dtype=object)[:, None]
            hits = demo_labels == gold
            vote = np.zeros(n)
            for i, row in enumerate(demo_labels):
                names, counts = np.unique(row.astype(str), return_counts=True)
                top = names[counts == counts.max()]
                vote[i] = 1.0 / len(top) if truth[i] in top else 0.0
            per = None
            if item_mmd:
                _, per = self._selection_mmd(task, r.spec.model, idx, np.arange(n),
                                             bool(rec["shared"]))
                if not np.isclose(per.mean(), r.mmd2_query, rtol=1e-3, atol=1e-6):
                    raise InputError(f"unit {r.spec.label} on {r.spec.task}: its items' MMD² "
                                     f"to the query average {per.mean():.6g}, its record says "
                                     f"{r.mmd2_query:.6g} (another reference encoder or "
                                     "kernel?)")
            out[r.key] = LabelCoverage(
                r.key, hits.any(axis=1), hits.mean(axis=1).astype(np.float64),
                np.asarray([p == t for p, t in zip(pred, truth, strict=True)], dtype=bool),
                vote, per)
        return out

    def import_finished(self, source: str | os.PathLike[str],
                        units: Iterable[UnitSpec]) -> list[UnitSpec]:
        """Copy the units of ``units`` that another results folder finished into this one.

        A unit's key hashes its whole spec and its task's data (:meth:`UnitSpec.key`), so a
        unit with the same key in ``source`` is the same computation: its records are copied
        verbatim (predictions, then the result line that marks it finished, then its
        selection), not recomputed. Units already finished here, and units ``source`` has no
        predictions for, are left alone. Each copy holds the unit's lock in this folder.

        Parameters
        ----------
        source
            Another harness output folder (its ``results.jsonl``, ``predictions.jsonl`` and
            ``selections/``).
        units
            The units wanted here.

        Returns
        -------
        list of UnitSpec
            The units copied, in the order of ``units``.
        """
        src = Path(source)
        if src.resolve() == self.out_dir.resolve():
            raise InputError(f"import_finished: the source {str(src)!r} is this harness's "
                             "own folder")
        if not (src / "results.jsonl").is_file():
            raise InputError(f"import_finished: {str(src)!r} has no results.jsonl")
        _check_same_reference(src, recorded_reference(src), self.reference_encoder,
                              "the harness importing its units")
        _check_same_weights(src, recorded_weights(src), self.weights,
                            "the harness importing its units loads")
        _check_same_weights(self.out_dir, recorded_weights(self.out_dir), recorded_weights(src),
                            f"the source folder {str(src)!r} ran on")
        results = {}
        for rec in _read_jsonl(src / "results.jsonl"):
            if isinstance(rec, dict) and "key" in rec:
                results[str(rec["key"])] = rec
        preds = {}
        for rec in _read_jsonl(src / "predictions.jsonl"):
            if isinstance(rec, dict) and "key" in rec:
                preds[str(rec["key"])] = rec
        copied = []
        for u in units:
            key = u.key(self.task(u.task).fingerprint)
            if key not in results or key not in preds:
                continue
            if UnitSpec.from_dict(results[key]["spec"]) != u:    # a key collision, not a copy
                raise InputError(f"import_finished: {src / 'results.jsonl'} records key {key} "
                                 f"for a different unit than {u.label} on {u.task}")
            with unit_lock(self.out_dir, key):
                if key in self.finished():
                    continue
                # the selection first, then the predictions, then the results line that marks
                # the unit finished (the order of a computed unit): a kill in between leaves an
                # unfinished unit, imported again next time, never a finished one without its
                # selection
                sel = src / "selections" / f"{key}.json"
                if sel.is_file():
                    (self.out_dir / "selections").mkdir(exist_ok=True)
                    write_json(self.out_dir / "selections" / f"{key}.json",
                               json.loads(sel.read_text()))
                _append_jsonl(self.out_dir / "predictions.jsonl", preds[key])
                self._mark_reference()
                _append_jsonl(self.results_path, results[key])
            copied.append(u)
        if copied:
            log(self.progress, f"{len(copied)} finished unit(s) copied from {src}")
        return copied

    def run(self, units: Iterable[UnitSpec], *, on_result: Callable[[UnitResult], None]
            | None = None) -> list[UnitResult]:
        """Run units (finished ones are read back, not recomputed), with a progress bar and a
        time estimate over the units still to do; returns their results in the order of
        ``units``.

        Units another process on the same folder is computing (their lock is held) are left
        for last; then this run waits for each and reads its result back (or computes it, if
        that process died).
        """
        from icldistill.core.progress import progress_bar

        self._check_weights()
        units = list(units)
        done = self.finished()
        results: list[UnitResult] = []
        todo = []
        keys = [u.key(self.task(u.task).fingerprint) for u in units]
        for u, key in zip(units, keys, strict=True):
            if key in done:
                results.append(done[key])
            else:
                todo.append(u)
        if len(todo) < len(units):
            log(self.progress, f"{len(units) - len(todo)} of {len(units)} units already "
                               f"finished in {self.out_dir}")
        todo.sort(key=lambda u: u.model)      # load each model once; otherwise keep the order
        bar = progress_bar(total=len(todo), desc="units", unit="unit", enabled=self.progress,
                           leave=True)
        busy: list[UnitSpec] = []             # held by another process on this folder

        def one(u: UnitSpec) -> None:
            bar.set_postfix_str(f"{u.model} {u.task} {u.label} k={u.k} seed={u.seed}")
            r = self.run_unit(u)
            results.append(r)
            if on_result is not None:
                on_result(r)
            bar.update(1)

        try:
            for u in todo:
                with unit_lock(self.out_dir, u.key(self.task(u.task).fingerprint),
                               blocking=False) as mine:
                    if mine:
                        one(u)
                    else:
                        busy.append(u)
            if busy:
                log(self.progress, f"waiting for {len(busy)} unit(s) another process is "
                                   f"computing in {self.out_dir}")
            for u in busy:                    # wait for it, then read its result back
                one(u)
        finally:
            bar.close()
        by_key = {r.key: r for r in results}
        return [by_key[k] for k in keys if k in by_key]     # in the order of ``units``


def _ordered(selection: Selection, spec: UnitSpec) -> np.ndarray:
    """The selection's pool indices ``[R, k]`` in the unit's ordering (0: as selected; ``j > 0``:
    every set shuffled with a generator seeded by ``(seed, j)``)."""
    idx = selection.indices.copy()
    if spec.ordering > 0:
        rng = np.random.default_rng([spec.seed, spec.ordering])
        if selection.shared:
            idx[:] = idx[0, rng.permutation(idx.shape[1])]
        else:
            idx = np.take_along_axis(idx, np.argsort(rng.random(idx.shape), axis=1), 1)
    return idx


def _loader_weights(loader: Any) -> str | None:
    """A model loader's ``weights`` attribute (see :class:`Harness`), checked."""
    weights = getattr(loader, "weights", None)
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise InputError(f"model_loader.weights must be a non-empty string naming what the "
                         f"loader loads (e.g. 'pretrained'), got {weights!r}")
    return weights


def _read_partial(partial: Path, n: int, labels: list[str]) -> tuple[np.ndarray, int, float]:
    """Scores ``[n, n_labels]`` (NaN where missing), tokens and seconds of an unfinished unit's
    partial file; records made with other labels are ignored."""
    scores = np.full((n, len(labels)), np.nan)
    tokens = 0
    seconds = 0.0
    for rec in _read_jsonl(partial):
        if rec.get("labels") != labels:
            continue
        for i, row in zip(rec["i"], rec["lp"], strict=True):
            scores[int(i)] = row
        tokens += int(rec.get("tokens", 0))
        seconds += float(rec.get("seconds", 0.0))
    return scores, tokens, seconds


def _set_mmd(pool: torch.Tensor, test: torch.Tensor, kern: Kernel, idx: np.ndarray,
             shared: bool) -> tuple[float, np.ndarray]:
    """Biased ``MMD^2`` between the shown demonstrations and the test inputs, and each item's
    ``MMD^2(S_i, {q_i})`` ``[n]``; ``pool [N, d]`` and ``test [n, d]`` float64, ``idx [R, k]``
    pool indices (``R = 1`` when ``shared``)."""
    rows = torch.as_tensor(idx[:1] if shared else idx)            # [R, k]
    shown = pool[rows.reshape(-1)]
    mmd_task = mmd(shown, test, kern, "biased")
    s = pool[rows]                                                # [R, k, d]
    kss = torch.stack([kern(x, x).mean() for x in s])             # [R]
    if shared:
        ksq = kern(s[0], test).mean(0)                            # [n]
        kqq = kern.diag(test)
        per = kss[0] - 2 * ksq + kqq
    else:
        ksq = torch.stack([kern(s[i], test[i : i + 1]).mean() for i in range(len(s))])
        per = kss - 2 * ksq + kern.diag(test)
    return float(mmd_task), per.numpy()


def _prompt_tokens(scorer: FewShotScorer, texts: list[str]) -> int:
    """Total prompt length (tokens) of the unit's prompts, what encoding from scratch costs."""
    enc = scorer.tokenizer(texts, add_special_tokens=True)["input_ids"]
    return int(sum(len(e) for e in enc))


def _prompt_hash(model: str, labels: list[list[str]], text: str) -> str:
    """Key of a prompt in the score store: model name (with its precision unless float32, see
    :attr:`UnitSpec.model_label`), ``[label, label word]`` pairs, full text."""
    payload = json.dumps([model, labels, text], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class _ScoreStore:
    """Label log-probabilities by prompt hash for one model: ``scores/<model>.jsonl``.

    Read once, then appended batch by batch (fsynced, like the partial files); a torn line is
    ignored. Records: ``{"h": [hash, ...], "lp": [[...], ...]}``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._scores: dict[str, list[float]] = {}
        for rec in _read_jsonl(path):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                for h, lp in zip(rec["h"], rec["lp"], strict=True):
                    self._scores[str(h)] = [float(v) for v in lp]

    def get(self, h: str) -> list[float] | None:
        return self._scores.get(h)

    def add(self, hashes: Sequence[str], lp: np.ndarray) -> None:
        rows = np.asarray(lp, dtype=np.float64).tolist()
        _append_jsonl(self.path, {"h": list(hashes), "lp": rows})
        self._scores.update(zip(hashes, rows, strict=True))


