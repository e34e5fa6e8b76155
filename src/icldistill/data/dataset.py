"""The :class:`Dataset` of labeled texts, its :class:`TaskFormat` (instruction, template,
label words), deterministic stratified splits (:class:`DatasetSplit`) and summaries."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icldistill.core.results import Result
from icldistill.core.validation import (
    InputError,
)
from icldistill.data.prompts import Demonstration, Prompt, Template

# --------------------------------------------------------------------------------------------
# Task format
# --------------------------------------------------------------------------------------------

__all__ = [
    "Dataset",
    "DatasetSplit",
    "DatasetSummary",
    "TaskFormat",
    "clean_text",
    "summary_table",
]


def clean_text(text: str) -> str:
    """Collapse every run of whitespace (newlines included) to one space; strip the ends."""
    return " ".join(text.split())


@dataclass(frozen=True)
class TaskFormat:
    """How a dataset is prompted by default (users may override any part).

    Attributes
    ----------
    instruction : str or None
        Text before the demonstrations, e.g. ``"Classify the sentiment of each review."``.
    template : Template
        Demonstration and query formats with ``{input}`` / ``{label}`` fields, e.g. demo
        ``"Review: {input}\\nSentiment: {label}\\n\\n"`` and query
        ``"Review: {input}\\nSentiment:"``.
    label_words : dict of str to str
        Label name -> verbalizer written in demonstrations and scored after the query (the
        evaluator scores ``" " + word``). May be several tokens (``"money-fx"`` ->
        ``"money exchange"``). Words are whitespace-normalised and must be distinct.
    """

    instruction: str | None
    template: Template
    label_words: dict[str, str]

    def __post_init__(self) -> None:
        instr = self.instruction
        if instr is not None:
            if not isinstance(instr, str):
                raise InputError(f"instruction must be a string or None, got "
                                 f"{type(instr).__name__}")
            instr = instr.strip() or None
        if not isinstance(self.template, Template):
            raise InputError(f"template must be an icldistill.data.prompts.Template, got "
                             f"{type(self.template).__name__}")
        if not isinstance(self.label_words, Mapping) or not self.label_words:
            raise InputError("label_words must be a non-empty mapping label name -> word")
        words: dict[str, str] = {}
        for name, word in self.label_words.items():
            if not isinstance(name, str) or not isinstance(word, str):
                raise InputError(f"label_words must map strings to strings, got "
                                 f"{name!r} -> {word!r}")
            w = clean_text(word)
            if not w:
                raise InputError(f"label word of {name!r} is empty")
            words[name] = w
        dup = [w for w, c in _counts(words.values()).items() if c > 1]
        if dup:
            raise InputError(f"label words must be distinct; {dup[0]!r} is used by "
                             f"{[n for n, w in words.items() if w == dup[0]]}")
        object.__setattr__(self, "instruction", instr)
        object.__setattr__(self, "label_words", words)

    def __hash__(self) -> int:
        return hash((self.instruction, self.template, tuple(self.label_words.items())))

    @classmethod
    def default(cls, label_names: Iterable[str], *, instruction: str | None = None,
                template: Template | None = None) -> TaskFormat:
        """A format whose label words are the label names themselves, with the generic
        ``"Input: ...\\nLabel: ..."`` template unless ``template`` is given."""
        names = list(label_names)
        return cls(instruction=instruction, template=template or Template(),
                   label_words={n: n for n in names})

    def word(self, label: str) -> str:
        """The verbalizer of label name ``label``."""
        try:
            return self.label_words[label]
        except KeyError:
            raise InputError(f"label {label!r} has no label word; known labels: "
                             f"{', '.join(self.label_words)}") from None

    def prompt(self, demonstrations: Iterable[tuple[str, str] | Demonstration],
               query: str) -> Prompt:
        """A :class:`~icldistill.data.prompts.Prompt` of this format.

        Parameters
        ----------
        demonstrations : iterable of ``(input, label name)`` pairs or Demonstrations
            Labels are *label names*; they are written as their label words.
        query : str
            The test input.
        """
        demos = []
        for d in demonstrations:
            text, label = (d.input, d.label) if isinstance(d, Demonstration) else d
            demos.append(Demonstration(str(text), self.word(str(label))))
        return Prompt(demos, query, instruction=self.instruction, template=self.template)


def _counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class DatasetSummary(Result):
    """Size and shape of a :class:`Dataset`.

    Attributes
    ----------
    name : str
    size : int
        Number of examples.
    label_counts : dict of str to int
        Examples per label name, in ``label_names`` order (zeros included).
    mean_words, max_words : float, int
        Mean and largest number of whitespace-separated words of the inputs (as prompted,
        i.e. after truncation).
    truncated : int
        How many inputs were shortened to the dataset's ``max_words`` at load time.
    source : str
        Provenance.
    """

    name: str
    size: int
    label_counts: dict[str, int]
    mean_words: float
    max_words: int
    truncated: int
    source: str

    def to_markdown(self) -> str:
        """A short Markdown block: one line of totals and a label table."""
        lines = [f"**{self.name}**: {self.size} examples, {len(self.label_counts)} labels, "
                 f"{self.mean_words:.1f} words on average (max {self.max_words}), "
                 f"{self.truncated} truncated", ""]
        if self.source:
            lines += [f"source: {self.source}", ""]
        lines += ["| label | count | share |", "|---|---:|---:|"]
        for name, count in self.label_counts.items():
            share = count / self.size if self.size else 0.0
            lines.append(f"| {name} | {count} | {100 * share:.1f}% |")
        return "\n".join(lines) + "\n"


def summary_table(summaries: Iterable[DatasetSummary]) -> str:
    """One Markdown table row per dataset summary (size, labels, words, truncations)."""
    lines = ["| dataset | size | labels | label counts | mean words | max words | truncated |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for s in summaries:
        counts = ", ".join(f"{k} {v}" for k, v in s.label_counts.items())
        if len(s.label_counts) > 8:
            top = sorted(s.label_counts.items(), key=lambda kv: -kv[1])[:4]
            counts = ", ".join(f"{k} {v}" for k, v in top) + ", ..."
        lines.append(f"| {s.name} | {s.size} | {len(s.label_counts)} | {counts} | "
                     f"{s.mean_words:.1f} | {s.max_words} | {s.truncated} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DatasetSplit:
    """A train / test split of one dataset.

    Attributes
    ----------
    train : Dataset
        The demonstration pool.
    test : Dataset
        The evaluated queries.
    official : bool
        Whether this is the dataset's published split (else a seeded stratified split).
    seed : int
        The seed that fixed the split (and the order of both parts).
    """

    train: Dataset
    test: Dataset
    official: bool = False
    seed: int = 0

    @property
    def pool(self) -> Dataset:
        """Alias of :attr:`train`: where demonstrations come from."""
        return self.train


_UNSET: Any = object()


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labeled text classification dataset, ready for prompting.

    Attributes
    ----------
    name : str
    texts : tuple of str
        The inputs as they appear in the prompt (``{input}``); pairs are rendered, e.g.
        ``"{passage}\\nQuestion: {question}?"``.
    labels : ndarray of str, shape ``[n]``
        Label names (read-only).
    label_names : tuple of str
        The label set, in canonical order (every label occurs in it; it may list labels with no
        example, e.g. after :meth:`subset`).
    format : TaskFormat
        The default prompt format (its ``label_words`` cover ``label_names``).
    fields : dict of str to tuple of str, optional
        Raw (whitespace-normalised, untruncated) fields of pair tasks, e.g. ``passage`` and
        ``question``.
    source : str
        Provenance (``package==version member`` or a file path).
    truncated : ndarray of bool, shape ``[n]``
        Which inputs were shortened at load time (all ``False`` when not given).
    ids : ndarray of int64, shape ``[n]``
        Row numbers in the full loaded dataset (``arange(n)`` when not given): they identify an
        example across subsets and splits.
    """

    name: str
    texts: tuple[str, ...]
    labels: np.ndarray
    label_names: tuple[str, ...]
    format: TaskFormat
    fields: dict[str, tuple[str, ...]] | None = None
    source: str = ""
    truncated: np.ndarray | None = None
    ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        texts = tuple(self.texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise InputError(f"{self.name}: texts[{bad}] is a {type(texts[bad]).__name__}, "
                             "not a string")
        n = len(texts)
        raw = np.asarray(self.labels)
        if raw.ndim != 1 or raw.shape[0] != n:
            raise InputError(f"{self.name}: labels must be a 1-D array of {n} label names, got "
                             f"shape {raw.shape}")
        if n and raw.dtype.kind not in "UO":
            raise InputError(f"{self.name}: labels must be strings (label names), got dtype "
                             f"{raw.dtype}")
        if raw.dtype.kind == "O" and not all(isinstance(x, str) for x in raw.tolist()):
            raise InputError(f"{self.name}: labels must be strings (label names)")
        labels = raw.astype(str) if n else np.array([], dtype="<U1")
        names = tuple(self.label_names)
        if not names or not all(isinstance(x, str) and x for x in names):
            raise InputError(f"{self.name}: label_names must be non-empty strings")
        if len(set(names)) != len(names):
            raise InputError(f"{self.name}: label_names has duplicates: {names}")
        present = set(labels.tolist())
        if "" in present:
            raise InputError(f"{self.name}: labels must be non-empty strings")
        unknown = sorted(present - set(names))
        if unknown:
            raise InputError(f"{self.name}: labels {unknown[:5]} are not in label_names "
                             f"{names}")
        if not isinstance(self.format, TaskFormat):
            raise InputError(f"{self.name}: format must be a TaskFormat")
        missing = [x for x in names if x not in self.format.label_words]
        if missing:
            raise InputError(f"{self.name}: the format has no label word for {missing}")
        fields = None
        if self.fields is not None:
            fields = {str(k): tuple(v) for k, v in self.fields.items()}
            wrong = [k for k, v in fields.items() if len(v) != n]
            if wrong:
                raise InputError(f"{self.name}: fields {wrong} do not have {n} values")
        trunc = (np.zeros(n, dtype=bool) if self.truncated is None
                 else np.asarray(self.truncated, dtype=bool))
        ids = (np.arange(n, dtype=np.int64) if self.ids is None
               else np.asarray(self.ids, dtype=np.int64))
        if trunc.shape != (n,) or ids.shape != (n,):
            raise InputError(f"{self.name}: truncated and ids must have shape ({n},)")
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "labels", _readonly(labels))
        object.__setattr__(self, "label_names", names)
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "truncated", _readonly(trunc))
        object.__setattr__(self, "ids", _readonly(ids))

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, size={len(self)}, "
                f"label_names={self.label_names!r}, source={self.source!r})")

    @classmethod
    def from_table(cls, table: Any, *, text_field: str, label_field: str,
                   pair_fields: Sequence[str] | None = None, name: str | None = None,
                   format: TaskFormat | None = None, max_words: int | None = None,
                   dedup: bool = False) -> Dataset:
        """A dataset from a table in memory, read exactly as :func:`load_file` reads a file.

        Parameters
        ----------
        table : table
            One of: a pandas ``DataFrame``; a pyarrow ``Table`` or ``RecordBatch``; a Hugging
            Face ``datasets.Dataset`` (or any object with ``column_names``, ``len()`` and
            ``table[column]`` giving the column's values; ``datasets`` is never imported here);
            an object with ``to_pandas()`` (e.g. a polars DataFrame); a dict column name ->
            list of values; a list of row dicts. A path is read with :func:`load_file`.
        text_field, label_field, pair_fields, format, max_words, dedup
            As for :func:`load_file`.
        name : str, optional
            Dataset name (default ``"table"``); it also names the table in messages.

        Returns
        -------
        Dataset
            Rows in table order, exactly the dataset :func:`load_file` gives for the same data
            in a file (same cleaning, label names, fields, warnings), with ``source`` naming the
            kind of table (e.g. ``"pandas.DataFrame"``).

        Raises
        ------
        InputError
            The errors of :func:`load_file`, worded the same with the table's rows named
            ``"DataFrame row 3"`` (positions from 0) instead of file lines; also a column that
            appears twice in a DataFrame or pyarrow Table, a dict of columns of different
            lengths, a ``DatasetDict`` of several splits (pick one), or an object that is not a
            table.
        """
        from icldistill.data.readers import _from_table, _is_path, load_file

        if _is_path(table):
            return load_file(table, text_field=text_field, label_field=label_field,
                             pair_fields=pair_fields, name=name, format=format,
                             max_words=max_words, dedup=dedup)
        return _from_table(table, text_field=text_field, label_field=label_field,
                           pair_fields=pair_fields, name=name, format=format,
                           max_words=max_words, dedup=dedup)

    # ---- views ------------------------------------------------------------------------------

    @property
    def label_ids(self) -> np.ndarray:
        """``[n]`` int64: position of every label in :attr:`label_names`."""
        pos = {name: i for i, name in enumerate(self.label_names)}
        return np.array([pos[x] for x in self.labels.tolist()], dtype=np.int64)

    def label_counts(self) -> dict[str, int]:
        """Examples per label name, in :attr:`label_names` order (zeros included)."""
        counts = _counts(self.labels.tolist())
        return {name: counts.get(name, 0) for name in self.label_names}

    def demonstrations(self, indices: Iterable[int] | None = None) -> tuple[Demonstration, ...]:
        """``(input, label word)`` demonstrations of the given rows (all rows by default)."""
        idx = range(len(self)) if indices is None else self._indices(indices)
        return tuple(Demonstration(self.texts[i], self.format.word(str(self.labels[i])))
                     for i in idx)

    def summary(self) -> DatasetSummary:
        """Size, label counts, input lengths and truncations (:class:`DatasetSummary`)."""
        lengths = [len(t.split()) for t in self.texts]
        return DatasetSummary(
            name=self.name, size=len(self), label_counts=self.label_counts(),
            mean_words=float(np.mean(lengths)) if lengths else 0.0,
            max_words=max(lengths, default=0), truncated=int(self.truncated.sum()),
            source=self.source)

    # ---- derived datasets --------------------------------------------------------------------

    def _indices(self, indices: Any) -> list[int]:
        arr = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
        n = len(self)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise InputError(f"{self.name}: a boolean mask must have shape ({n},), got "
                                 f"{arr.shape}")
            return np.flatnonzero(arr).tolist()
        if arr.size == 0:
            return []
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"{self.name}: indices must be a 1-D sequence of integers or a "
                             "boolean mask")
        if arr.min() < 0 or arr.max() >= n:
            bad = int(arr[(arr < 0) | (arr >= n)][0])
            raise InputError(f"{self.name}: index {bad} is out of range for {n} examples")
        return arr.astype(np.int64).tolist()

    def subset(self, indices: Iterable[int] | np.ndarray) -> Dataset:
        """The examples at ``indices`` (integers, in the given order, or a boolean mask), with the
        same label set, format and source."""
        idx = self._indices(indices)
        fields = (None if self.fields is None
                  else {k: tuple(v[i] for i in idx) for k, v in self.fields.items()})
        sel = np.asarray(idx, dtype=np.int64)
        return Dataset(name=self.name, texts=tuple(self.texts[i] for i in idx),
                       labels=self.labels[sel] if idx else np.array([], dtype="<U1"),
                       label_names=self.label_names, format=self.format, fields=fields,
                       source=self.source, truncated=self.truncated[sel], ids=self.ids[sel])

    def with_format(self, format: TaskFormat | None = None, *, instruction: Any = _UNSET,
                    template: Template | None = None,
                    label_words: Mapping[str, str] | None = None) -> Dataset:
        """The same examples with another prompt format.

        Either a whole :class:`TaskFormat`, or parts replacing those of the current format:
        ``instruction`` (``None`` removes it), ``template``, ``label_words`` (a partial mapping
        updates the current words).
        """
        base = self.format if format is None else format
        words = dict(base.label_words)
        if label_words is not None:
            unknown = [k for k in label_words if k not in self.label_names]
            if unknown:
                raise InputError(f"{self.name}: label_words for unknown labels {unknown}; "
                                 f"labels: {', '.join(self.label_names)}")
            words.update(label_words)
        new = TaskFormat(instruction=base.instruction if instruction is _UNSET else instruction,
                         template=template or base.template, label_words=words)
        return Dataset(name=self.name, texts=self.texts, labels=self.labels,
                       label_names=self.label_names, format=new, fields=self.fields,
                       source=self.source, truncated=self.truncated, ids=self.ids)

    def split(self, test_size: int | float, *, seed: int = 0,
              stratify: bool = True) -> DatasetSplit:
        """A deterministic random train / test split.

        Parameters
        ----------
        test_size : int or float
            Number of test examples (``1 <= test_size < len(self)``), or a fraction in ``(0, 1)``
            (rounded to the nearest count).
        seed : int
            Same seed, same split - on every platform and NumPy version: the split uses the raw
            output stream of ``numpy.random.PCG64(seed)``.
        stratify : bool
            Keep label proportions: label ``c`` with ``n_c`` of ``n`` examples gets
            ``test_size * n_c / n`` test examples rounded by largest remainder (so within one of
            the exact share, and the counts add up).

        Returns
        -------
        DatasetSplit
            Both parts are in a seeded random order.

        Notes
        -----
        Rows are split as they are: a duplicated row can land in both parts, so a test item
        has a copy in the pool. :func:`~icldistill.data.readers.warn_test_copies` (called by
        :meth:`~icldistill.evaluation.harness.Task.from_table` and ``evaluate --file``) warns
        about such splits; read the data with ``dedup=True`` to drop the copies first.
        """
        seed = _check_seed(seed)
        n = len(self)
        k = _n_test(test_size, n, what=f"{self.name} ({n} examples)")
        bitgen = np.random.Generator(np.random.PCG64(seed)).bit_generator
        if stratify:
            lab = self.label_ids
            counts = np.bincount(lab, minlength=len(self.label_names)).astype(np.int64)
            alloc = _allocate(counts, k)
            test: list[int] = []
            for c in range(len(self.label_names)):
                members = np.flatnonzero(lab == c)
                test.extend(members[_permutation(len(members), bitgen)][: alloc[c]].tolist())
            is_test = np.zeros(n, dtype=bool)
            is_test[test] = True
            test_idx, train_idx = np.flatnonzero(is_test), np.flatnonzero(~is_test)
        else:
            perm = _permutation(n, bitgen)
            test_idx, train_idx = np.sort(perm[:k]), np.sort(perm[k:])
        test_idx = test_idx[_permutation(len(test_idx), bitgen)]
        train_idx = train_idx[_permutation(len(train_idx), bitgen)]
        return DatasetSplit(train=self.subset(train_idx), test=self.subset(test_idx),
                            official=False, seed=seed)

    def balance(self, n_per_class: int | None = None, *, seed: int = 0) -> Dataset:
        """A class-balanced random subset: ``n_per_class`` examples of every label (default: the
        size of the smallest non-empty class), in a seeded random order."""
        seed = _check_seed(seed)
        counts = self.label_counts()
        nonzero = [c for c in counts.values() if c > 0]
        if not nonzero:
            raise InputError(f"{self.name}: cannot balance an empty dataset")
        m = min(nonzero) if n_per_class is None else n_per_class
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise InputError(f"n_per_class must be a positive integer, got {n_per_class!r}")
        small = {k: c for k, c in counts.items() if 0 < c < m}
        if small:
            raise InputError(f"{self.name}: n_per_class={m} but labels {small} have fewer "
                             "examples")
        bitgen = np.random.Generator(np.random.PCG64(seed)).bit_generator
        lab = self.label_ids
        chosen: list[int] = []
        for c in range(len(self.label_names)):
            members = np.flatnonzero(lab == c)
            chosen.extend(members[_permutation(len(members), bitgen)][: int(m)].tolist())
        idx = np.sort(np.asarray(chosen, dtype=np.int64))
        return self.subset(idx[_permutation(len(idx), bitgen)])


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _n_test(test_size: Any, n: int, *, what: str, allow_all: bool = False) -> int:
    """Test-set size from an int count or a float fraction of ``n``; leaves >= 1 train example
    (unless ``allow_all``)."""
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer,
                                                                 np.floating)):
        raise InputError(f"test_size must be an int count or a float fraction, got "
                         f"{test_size!r}")
    hi = n if allow_all else n - 1
    if isinstance(test_size, (float, np.floating)):
        f = float(test_size)
        if not (0.0 < f < 1.0) and not (allow_all and f == 1.0):
            raise InputError(f"test_size={test_size!r}: a fraction must be in (0, 1)")
        k = math.floor(f * n + 0.5)
        if k < 1:
            raise InputError(f"test_size={test_size!r} gives no test examples for {what}")
        if k > hi:
            raise InputError(f"test_size={test_size!r} leaves no training examples for {what}")
        return k
    k = int(test_size)
    if k < 1:
        raise InputError(f"test_size must be at least 1, got {k}")
    if k > hi:
        raise InputError(f"test_size={k} is too large for {what}: at most {hi} "
                         + ("(the whole test set)" if allow_all
                            else "(at least one example must stay in the training pool)"))
    return k


def _allocate(counts: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` over classes proportionally to ``counts`` (largest remainder, exact integer
    arithmetic; ties go to the earlier class)."""
    total = int(counts.sum())
    prod = counts.astype(np.int64) * int(k)
    base = prod // total
    rem = prod % total
    left = int(k - base.sum())
    order = sorted(range(len(counts)), key=lambda c: (-int(rem[c]), c))
    for c in order[:left]:
        base[c] += 1
    return base


def _permutation(n: int, bitgen: np.random.BitGenerator) -> np.ndarray:
    """A permutation of ``range(n)`` from the raw 64-bit stream of ``bitgen`` (stable across
    platforms and NumPy versions, unlike ``Generator.permutation``)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.asarray(bitgen.random_raw(n), dtype=np.uint64)
    return np.argsort(keys, kind="stable").astype(np.int64)
