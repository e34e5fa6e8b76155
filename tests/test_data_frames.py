"""Data in the forms users hold (issue 16, item 4): Parquet files, pandas DataFrames, pyarrow
Tables, Hugging Face ``datasets.Dataset`` (and a duck-typed stand-in), dicts of columns and lists
of row dicts give the same :class:`~icldistill.data.Dataset` as CSV / JSONL files of the same
data, with the same errors, through ``load_file``, ``Dataset.from_table``, ``Pool.from_table``,
``Task.from_table`` and ``icldistill select|evaluate --file``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from icldistill import InputError
from icldistill.cli import build_parser, main
from icldistill.cli.tasks import load_tasks as _tasks
from icldistill.core.validation import MAX_FILE_BYTES_ENV
from icldistill.data import Dataset, TaskFormat, load_file
from icldistill.evaluation.harness import Harness, Task
from icldistill.selection import Pool, make_selector

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

COLUMNS = ["text", "label", "hypothesis", "note"]
ROWS: list[dict[str, Any]] = [
    {"text": "A  man\nsleeps.", "label": 1, "hypothesis": "He rests", "note": "x"},
    {"text": "A cat.", "label": 0, "hypothesis": "A dog", "note": "y"},
    {"text": "   ", "label": 2, "hypothesis": "blank input", "note": "z"},   # dropped: empty
    {"text": "Two birds " + "word " * 30, "label": 10, "hypothesis": "Three", "note": "w"},
    {"text": "A cat.", "label": 0, "hypothesis": "A dog", "note": "v"},     # a duplicate
    {"text": "Rain", "label": 2, "hypothesis": "Wet", "note": "u"},
]


class StandIn:
    """The duck type of a ``datasets.Dataset``: ``column_names``, ``len()``, ``ds[column]``."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        self._rows, self.column_names = rows, list(columns)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, column: str) -> list[Any]:
        return [r.get(column) for r in self._rows]


# ---- writing one table in every form ---------------------------------------------------------


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    path.write_text("".join(json.dumps({c: r.get(c) for c in columns}) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def _arrow(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    return pa.table({c: [r.get(c) for r in rows] for c in columns})


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    return pd.DataFrame({c: [r.get(c) for r in rows] for c in columns}, columns=columns)


def _write_parquet(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    _frame(rows, columns).to_parquet(path, index=False)
    return path


def _hf(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    import datasets

    return datasets.Dataset.from_dict({c: [r.get(c) for r in rows] for c in columns})


#: ``datasets`` is in the test extra; without it the duck-typed stand-in covers its interface.
HAVE_DATASETS = importlib.util.find_spec("datasets") is not None
SOURCES = ["csv", "jsonl", "parquet", "frame", "arrow", "standin", "dict", "records",
           *(["hf"] if HAVE_DATASETS else [])]


def _source(kind: str, folder: Path, rows: list[dict[str, Any]],
            columns: list[str]) -> Any:
    """The table in form ``kind``: a path for files, the object otherwise."""
    if kind == "csv":
        return _write_csv(folder / "data.csv", rows, columns)
    if kind == "jsonl":
        return _write_jsonl(folder / "data.jsonl", rows, columns)
    if kind == "parquet":
        return _write_parquet(folder / "data.parquet", rows, columns)
    if kind == "frame":
        return _frame(rows, columns)
    if kind == "arrow":
        return _arrow(rows, columns)
    if kind == "standin":
        return StandIn(rows, columns)
    if kind == "hf":
        return _hf(rows, columns)
    if kind == "dict":
        return {c: [r.get(c) for r in rows] for c in columns}
    assert kind == "records"
    return [{c: r.get(c) for c in columns} for r in rows]


def _load(source: Any, **kw: Any) -> tuple[Dataset, list[str]]:
    """The dataset and the warnings (their text after the source's name)."""
    kw.setdefault("text_field", "text")
    kw.setdefault("label_field", "label")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = (load_file(source, **kw) if isinstance(source, Path)
              else Dataset.from_table(source, **kw))
    return ds, [_tail(str(w.message)) for w in caught]


def _same(a: Dataset, b: Dataset) -> None:
    assert a.texts == b.texts
    assert a.labels.tolist() == b.labels.tolist()
    assert a.label_names == b.label_names
    assert a.fields == b.fields
    assert a.truncated.tolist() == b.truncated.tolist()
    assert a.ids.tolist() == b.ids.tolist()
    assert a.format == b.format


_MESSAGE_START = re.compile(r"(no column |column '|empty label|the (file|table) has no data rows"
                            r"|no rows with|dropped \d+ row|label_field|text_field)")


def _tail(message: str) -> str:
    """A message without the part that names the source and the row (path and line, ``DataFrame
    row 3``...): what must be the same whatever the source."""
    m = _MESSAGE_START.search(message)
    assert m, message
    return message[m.start():].replace("the table has", "the file has")


def _error(source: Any, **kw: Any) -> str:
    with pytest.raises(InputError) as info:
        _load(source, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- the same data, every source -------------------------------------------------------------

OPTIONS = [
    {},
    {"pair_fields": ["hypothesis"]},
    {"pair_fields": ["text", "hypothesis"], "max_words": 4, "dedup": True},
    {"name": "mine", "max_words": 3,
     "format": TaskFormat("Classify.", TaskFormat.default(["0"]).template,
                          {"0": "zero", "1": "one", "2": "two", "10": "ten"})},
]


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "pair", "pair-trunc-dedup", "format"])
def test_every_source_gives_the_same_dataset(tmp_path, options):
    ref, ref_warnings = _load(_source("csv", tmp_path, ROWS, COLUMNS), **options)
    assert ref.label_names == ("0", "1", "2", "10")        # numeric order, as in files
    assert ref_warnings == ["dropped 1 row(s) with an empty " +
                            ("input field" if options.get("pair_fields") else "text")]
    for kind in SOURCES:
        ds, warned = _load(_source(kind, tmp_path, ROWS, COLUMNS), **options)
        _same(ds, ref)
        assert warned == ref_warnings, kind
        assert ds.name == options.get("name", "data" if kind in ("csv", "jsonl", "parquet")
                                      else "table")


def test_sources_are_named_in_dataset_source(tmp_path):
    expect = {"frame": "pandas.DataFrame", "arrow": "pyarrow.Table", "standin":
              ".StandIn", "dict": "dict of columns", "records": "list of rows"}
    for kind, source in expect.items():
        ds, _ = _load(_source(kind, tmp_path, ROWS, COLUMNS))
        assert ds.source.endswith(source), (kind, ds.source)
    p = _source("parquet", tmp_path, ROWS, COLUMNS)
    assert _load(p)[0].source == str(p)


def test_load_file_takes_tables_and_from_table_takes_paths(tmp_path):
    frame = _frame(ROWS, COLUMNS)
    p = _source("parquet", tmp_path, ROWS, COLUMNS)
    with pytest.warns(UserWarning, match="DataFrame: dropped 1 row"):
        a = load_file(frame, text_field="text", label_field="label")
    with pytest.warns(UserWarning, match="data.parquet: dropped 1 row"):
        b = Dataset.from_table(p, text_field="text", label_field="label")
    _same(a, b)
    with pytest.raises(InputError, match="delimiter= applies to delimited files"):
        load_file(frame, text_field="text", label_field="label", delimiter=",")
    with pytest.raises(InputError, match=r"delimiter= applies to CSV/TSV files, not \.parquet"):
        load_file(p, text_field="text", label_field="label", delimiter=",")
    pq_path = tmp_path / "data.pq"
    pq_path.write_bytes(p.read_bytes())
    with pytest.warns(UserWarning):
        _same(load_file(pq_path, text_field="text", label_field="label"), b)


# ---- the same faults, the same errors --------------------------------------------------------


def _faulty(fault: str) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Rows, columns and load options of a table with ``fault``."""
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"},
            {"text": "so so", "label": "neg"}]
    if fault == "missing-column":
        return rows, ["text", "label"], {"label_field": "labels"}
    if fault == "null-label":
        rows[1]["label"] = None
        return rows, ["text", "label"], {}
    if fault == "empty":
        return [], ["text", "label"], {}
    if fault == "no-text":
        return [{**r, "text": " "} for r in rows], ["text", "label"], {}
    assert fault == "single-label"
    return [{**r, "label": "pos"} for r in rows], ["text", "label"], {}


FAULTS = {
    "missing-column": "no column 'labels'; available columns: 'text', 'label' "
                      "(did you mean 'label'?)",
    "null-label": "empty label in column 'label'",
    "empty": "the file has no data rows",
    "no-text": "no rows with a non-empty text in column 'text'",
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_same_fault_same_error_in_every_source(tmp_path, fault):
    rows, columns, options = _faulty(fault)
    for kind in SOURCES:
        message = _error(_source(kind, tmp_path, rows, columns), **options)
        assert _tail(message) == FAULTS[fault], (kind, message)
    assert _error(_frame(rows, columns), name="mine", **options).startswith("DataFrame 'mine'")


def test_single_label_warns_in_every_source(tmp_path):
    rows, columns, _ = _faulty("single-label")
    for kind in SOURCES:
        _, warned = _load(_source(kind, tmp_path, rows, columns))
        assert warned == ["column 'label' has a single label ('pos'); a classification task "
                          "needs at least two"], kind


def test_null_labels_name_the_row(tmp_path):
    rows, columns, _ = _faulty("null-label")
    assert _error(_frame(rows, columns)) == "DataFrame row 1: empty label in column 'label'"
    p = _source("parquet", tmp_path, rows, columns)
    assert _error(p) == f"{p} row 1: empty label in column 'label'"
    p = _source("csv", tmp_path, rows, columns)
    assert _error(p) == f"{p}:3: empty label in column 'label'"
    frame = _frame(rows, columns)       # pandas' missing values: NaN, pd.NA, None
    for missing in (float("nan"), pd.NA):
        frame["label"] = pd.array(["pos", missing, "neg"], dtype=object)
        assert _tail(_error(frame)) == "empty label in column 'label'"
    nullable = pd.DataFrame({"text": ["a", "b"], "label": pd.array([1, None], dtype="Int64")})
    assert _tail(_error(nullable)) == "empty label in column 'label'"


def test_duplicate_columns_are_ambiguous_in_every_source(tmp_path):
    tail = "column 'label' appears twice, so it is ambiguous which one to read; rename or drop " \
           "one of them"
    p = tmp_path / "dup.csv"
    p.write_text("text,label,label\nhi,a,b\nho,b,a\n")
    assert _error(p) == f"{p}: header columns 2 and 3: {tail}"
    frame = pd.DataFrame([["hi", "a", "b"], ["ho", "b", "a"]], columns=["text", "label", "label"])
    assert _error(frame) == f"DataFrame: columns 2 and 3: {tail}"
    table = pa.table([["hi", "ho"], ["a", "b"], ["b", "a"]], names=["text", "label", "label"])
    assert _error(table) == f"pyarrow Table: columns 2 and 3: {tail}"
    pq.write_table(table, tmp_path / "dup.parquet")
    assert _error(tmp_path / "dup.parquet") == f"{tmp_path / 'dup.parquet'}: columns 2 and 3: " \
                                               f"{tail}"
    # a duplicated column that is not read is fine, as in files
    frame = pd.DataFrame([["hi", "a", 1, 2], ["ho", "b", 3, 4]],
                         columns=["text", "label", "n", "n"])
    assert Dataset.from_table(frame, text_field="text", label_field="label").texts == ("hi", "ho")
    # column names that are not strings are read by their str()
    frame = pd.DataFrame([["hi", "a"], ["ho", "b"]])
    assert Dataset.from_table(frame, text_field="0", label_field="1").labels.tolist() == \
        ["a", "b"]


def test_cells_that_are_not_text(tmp_path):
    frame = pd.DataFrame({"text": [{"a": 1}, "b"], "label": ["x", "y"]})
    assert _error(frame) == "DataFrame row 0: column 'text' holds a dict, not text"
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"text": {"a": 1}, "label": "x"}\n')
    assert _error(jl) == f"{jl}:1: column 'text' holds a dict, not text"
    table = pa.table({"text": [["a", "b"], ["c"]], "label": ["x", "y"]})
    pq.write_table(table, tmp_path / "list.parquet")
    assert _error(tmp_path / "list.parquet") == \
        f"{tmp_path / 'list.parquet'} row 0: column 'text' holds a list, not text"
    assert _tail(_error(table)) == "column 'text' holds a list, not text"
    frame = pd.DataFrame({"text": [b"raw", b"x"], "label": ["x", "y"]})
    assert _tail(_error(frame)) == "column 'text' holds a bytes value, not text"
    frame = pd.DataFrame({"text": pd.to_datetime(["2020-01-01", "2021-01-01"]),
                          "label": ["x", "y"]})
    assert _tail(_error(frame)) == "column 'text' holds a Timestamp, not text"
    # numbers, booleans, categoricals and decimals are written out as JSON values are
    frame = pd.DataFrame({"text": [1.5, 2.0], "label": pd.Categorical([True, False])})
    ds = Dataset.from_table(frame, text_field="text", label_field="label")
    assert ds.texts == ("1.5", "2") and ds.labels.tolist() == ["true", "false"]
    from decimal import Decimal

    table = pa.table({"text": ["a", "b", "c"],
                      "label": pa.array([Decimal("1.50"), Decimal("2"), Decimal("-0.25")])})
    ds = Dataset.from_table(table, text_field="text", label_field="label")
    assert ds.labels.tolist() == ["1.5", "2", "-0.25"]


def test_option_errors_are_shared(tmp_path):
    frame = _frame(ROWS, COLUMNS)
    p = _source("parquet", tmp_path, ROWS, COLUMNS)
    for source in (frame, p):
        with pytest.raises(InputError, match="also an input field"):
            _load(source, label_field="text")
        with pytest.raises(InputError, match="text_field must be a non-empty column name"):
            _load(source, text_field="")
        with pytest.raises(InputError, match="pair_fields must be a sequence of column names"):
            _load(source, pair_fields="hypothesis")
        with pytest.raises(InputError, match="max_words must be a positive integer"):
            _load(source, max_words=0)


def test_in_memory_table_errors():
    def err(obj: Any) -> str:
        with pytest.raises(InputError) as info:
            Dataset.from_table(obj, text_field="text", label_field="label")
        return str(info.value)

    assert "cannot read a builtins.int as a table; give a pandas DataFrame" in err(3)
    assert err({"text": ["a"], "label": ["x", "y"]}) == \
        "dict of columns: columns have different lengths: {'text': 1, 'label': 2}"
    assert err({"text": "abc", "label": ["x"]}).startswith(
        "dict of columns: column 'text' is a str, not a list of values")
    assert err([{"text": "a", "label": "x"}, ["b", "y"]]) == \
        "list of rows row 1 is a list, not a mapping column -> value"
    assert err(pd.DataFrame()) == "DataFrame: the table has no data rows"
    splits = {"train": StandIn(ROWS, COLUMNS), "test": StandIn(ROWS, COLUMNS)}
    assert "holds several splits (train, test); give one of them" in err(splits)

    class Stream:  # a streamed dataset: columns unknown until read
        column_names = None

        def __getitem__(self, key: str) -> list[Any]:
            raise AssertionError

    assert "materialise it first" in err(Stream())
    with pytest.raises(InputError, match="name must be a non-empty string"):
        Dataset.from_table(_frame(ROWS, COLUMNS), text_field="text", label_field="label",
                           name="")


def test_real_datasets_dataset_and_dataset_dict():
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict({"sentence": ["good", "bad", "fine"], "y": [1, 0, 1]})
    ds = Dataset.from_table(hf, text_field="sentence", label_field="y", name="sst")
    assert ds.texts == ("good", "bad", "fine") and ds.labels.tolist() == ["1", "0", "1"]
    assert ds.name == "sst" and ds.source == "datasets.Dataset"
    hf_numpy = hf.with_format("numpy")  # a formatted dataset gives arrays: read the same
    _same(Dataset.from_table(hf_numpy, text_field="sentence", label_field="y", name="sst"), ds)
    dd = datasets.DatasetDict({"train": hf, "validation": hf})
    with pytest.raises(InputError, match=r"holds several splits \(train, validation\)"):
        Dataset.from_table(dd, text_field="sentence", label_field="y")
    _same(Dataset.from_table(dd["train"], text_field="sentence", label_field="y", name="sst"), ds)


# ---- Parquet files ---------------------------------------------------------------------------


def test_parquet_file_errors(tmp_path, monkeypatch):
    good = _source("parquet", tmp_path, ROWS, COLUMNS)
    fake = tmp_path / "fake.parquet"
    fake.write_text("text,label\nhi,a\n")
    assert _error(fake) == (f"{fake} is not a readable Parquet file (Parquet magic bytes not "
                            "found in footer. Either the file is corrupted or this is not a "
                            "parquet file.); check that the file is what its extension says and "
                            "is whole")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "is not a readable Parquet file" in _error(cut)
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    assert _error(empty) == f"{empty}: the file is empty"
    assert _error(tmp_path / "missing.parquet") == \
        f"no such file: {tmp_path / 'missing.parquet'}; check the path"
    gz = tmp_path / "data.parquet.gz"
    gz.write_bytes(b"x")
    assert "a Parquet file is compressed inside already" in _error(gz)
    # the size limit: of the file, then of the columns read once decoded
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "100")
    assert "above the 100 bytes limit on input files" in _error(good)
    big = tmp_path / "big.parquet"
    pd.DataFrame({"text": ["the same long sentence " * 20] * 2000,
                  "label": ["a", "b"] * 1000}).to_parquet(big)
    assert big.stat().st_size < 20_000
    monkeypatch.setenv(MAX_FILE_BYTES_ENV, "20000")
    assert _error(big) == (f"{big}: decompresses to more than the 19.5 KiB limit on input files; "
                           f"use a smaller file or raise the limit with {MAX_FILE_BYTES_ENV}"
                           "=<bytes>")
    monkeypatch.delenv(MAX_FILE_BYTES_ENV)
    assert len(_load(big)[0]) == 2000


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    p = _source("parquet", tmp_path, ROWS, COLUMNS)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    message = _error(p)
    assert "needs pyarrow, which is not installed" in message
    assert "pip install 'icldistill[models]'" in message


def test_parquet_row_groups_and_types(tmp_path):
    n = 50
    table = pa.table({"text": [f"item {i}" for i in range(n)],
                      "label": pa.array([i % 3 for i in range(n)], pa.int8()),
                      "cat": pa.array(["u", "v"] * (n // 2)).dictionary_encode(),
                      "big": pa.array([f"s{i}" for i in range(n)], pa.large_string())})
    p = tmp_path / "groups.parquet"
    pq.write_table(table, p, row_group_size=7)
    assert pq.ParquetFile(p).num_row_groups == 8
    ds = load_file(p, text_field="big", label_field="label", pair_fields=["cat"])
    assert len(ds) == n and ds.texts[3] == "s3\ncat: v" and ds.label_names == ("0", "1", "2")
    _same(ds, Dataset.from_table(table, text_field="big", label_field="label",
                                 pair_fields=["cat"], name="groups"))


@given(data=st.data())
def test_damaged_parquet_gives_a_dataset_or_an_input_error(data):
    """Random bytes of a valid file changed or cut: never another exception, never a crash
    (pyarrow aborts the whole process on some damaged metadata that the reader never reads)."""
    base = _PARQUET_BYTES
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))] if data.draw(st.booleans()) else raw
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.parquet"
        p.write_bytes(bytes(raw))
        try:
            _load(p)
        except InputError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(str(p))


def _parquet_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "base.parquet"
        pq.write_table(_arrow(ROWS * 3, COLUMNS), p, row_group_size=5)
        return p.read_bytes()


_PARQUET_BYTES = _parquet_bytes()


# ---- the property: random tables round-trip the same through every form ----------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(" \n\t"),
                max_size=12)
_LABEL = st.one_of(st.sampled_from(["pos", "neg", "1", "10", " a ", ""]), _TEXT,
                   st.integers(-3, 12))
_ROW = st.fixed_dictionaries({"text": _TEXT, "label": _LABEL, "extra": _TEXT})


def _outcome(source: Any) -> tuple[str, Any]:
    try:
        ds, warned = _load(source, pair_fields=None)
    except InputError as exc:
        return "error", _tail(str(exc))
    return "dataset", (ds.texts, ds.labels.tolist(), ds.label_names, tuple(warned))


@given(rows=st.lists(_ROW, min_size=0, max_size=6))
def test_random_tables_round_trip_the_same(rows):
    columns = ["text", "label", "extra"]
    # a label column of numbers and strings is a column of text in a file or a DataFrame
    rows = [{**r, "label": str(r["label"])} for r in rows]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        outcomes = {kind: _outcome(_source(kind, folder, rows, columns))
                    for kind in ("frame", "parquet", "csv", "jsonl", "arrow", "records")}
    ref = outcomes["frame"]
    for kind, outcome in outcomes.items():
        assert outcome == ref, (kind, rows, outcomes)


# ---- Pool, Task, the command line ------------------------------------------------------------


def _embedded(n: int = 12, d: int = 3) -> Any:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, d)).astype(np.float32)
    return pd.DataFrame({"text": [f"item {i}" for i in range(n)], "label": [i % 2 for i in
                                                                          range(n)],
                         "emb": list(emb), "x": emb[:, 0], "y": emb[:, 1], "z": emb[:, 2]}), emb


def test_pool_from_table_fits_a_selector(tmp_path):
    frame, emb = _embedded()
    pool = Pool.from_table(frame, embedding="emb", label="label", text="text")
    assert pool.embeddings.dtype == np.float32 and np.array_equal(pool.embeddings, emb)
    assert pool.labels.tolist() == ["0", "1"] * 6 and pool.texts[3] == "item 3"
    cols = Pool.from_table(frame, embedding=["x", "y", "z"])
    assert np.array_equal(cols.embeddings, emb.astype(np.float64))
    frame.to_parquet(tmp_path / "pool.parquet")
    for other in (pa.Table.from_pandas(frame),
                  pq.read_table(tmp_path / "pool.parquet"),
                  StandIn(frame.to_dict("records"), list(frame.columns))):
        again = Pool.from_table(other, embedding="emb", label="label", text="text")
        assert np.allclose(again.embeddings, emb) and again.labels.tolist() == \
            pool.labels.tolist() and again.texts == pool.texts
    targets = Pool.from_table(frame.iloc[:3], embedding="emb")
    sel = make_selector("mmd-balanced").fit(pool).select(targets, 4)
    ref = make_selector("mmd-balanced").fit(Pool(emb, np.array(["0", "1"] * 6))).select(emb[:3],
                                                                                         4)
    assert np.array_equal(sel.indices, ref.indices)
    assert Pool.from_table(pd.DataFrame({"v": [1.0, 2.0]}), embedding="v").embeddings.shape \
        == (2, 1)


def test_pool_from_table_errors():
    frame, _ = _embedded(4)

    def err(table: Any, **kw: Any) -> str:
        with pytest.raises(InputError) as info:
            Pool.from_table(table, **kw)
        return str(info.value)

    assert err(frame) == "Pool.from_table: give at least one of embedding=, label=, text="
    assert err(frame, embedding="vec").startswith("DataFrame: no column 'vec'; available")
    ragged = frame.assign(emb=[np.ones(3), np.ones(2), np.ones(3), np.ones(3)])
    assert err(ragged, embedding="emb") == ("DataFrame row 1: column 'emb' holds a vector of "
                                            "length 2 where earlier rows have 3")
    assert err(frame.assign(emb=[None, *frame.emb[1:]]), embedding="emb") == \
        "DataFrame row 0: column 'emb' is empty (no vector)"
    assert "not a vector of numbers" in err(frame.assign(emb=["a b"] * 4), embedding="emb")
    assert err(frame.assign(x=["1", 2.0, 3.0, 4.0]), embedding=["x", "y"]) == \
        "DataFrame row 0: column 'x' holds str '1', not a number"
    assert err(frame.assign(label=["a", None, "b", "a"]), label="label") == \
        "DataFrame row 1: empty label in column 'label'"
    assert err(frame, embedding=[]) == "embedding= must be a column name or a non-empty list " \
                                       "of them"
    dup = pd.concat([frame, frame[["label"]]], axis=1)
    assert "columns 2 and 7: column 'label' appears twice" in err(dup, label="label")


def test_task_from_table_matches_a_file(tmp_path):
    frame = _frame(ROWS * 4, COLUMNS)
    p = _source("csv", tmp_path, ROWS * 4, COLUMNS)
    with pytest.warns(UserWarning, match="dropped 4 row"):
        ref = Task("mine", load_file(p, text_field="text", label_field="label",
                                     name="mine").split(5, seed=3))
    for source in (frame, p, _source("parquet", tmp_path, ROWS * 4, COLUMNS)):
        with pytest.warns(UserWarning, match="exact copy in the demonstration pool"), \
                pytest.warns(UserWarning, match="dropped 4 row"):
            task = Task.from_table("mine", source, text_field="text", label_field="label",
                                   test_size=5, seed=3)
        assert task.name == "mine" and task.fingerprint == ref.fingerprint
        _same(task.split.train, ref.split.train)
    with pytest.warns(UserWarning):
        small = Task.from_table("mine", frame, text_field="text", label_field="label",
                                test_size=0.25, pool_size=6)
    assert len(small.split.train) == 6 and len(small.split.test) == 5
    with pytest.raises(InputError, match="task name must be a non-empty string"):
        Task.from_table("", frame, text_field="text", label_field="label")
    with pytest.raises(InputError, match="pool_size must be a positive integer"):
        Task.from_table("t", frame, text_field="text", label_field="label", pool_size=0)


def test_task_from_table_warns_about_test_items_copied_in_the_pool(tmp_path):
    """Regression: Task.from_table kept test items with a copy in the pool silently, where
    ``evaluate --file`` (whose behaviour it documents) warns; both now share one check,
    which also counts copies that differ only in Unicode normal form."""
    import unicodedata

    from icldistill.data.readers import warn_test_copies

    rows = [{"text": f"review {i % 10}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    with pytest.warns(UserWarning, match=r"task 'mine': 12 of the 12 test items have an exact "
                                         r"copy in the demonstration pool"):
        task = Task.from_table("mine", rows, text_field="text", label_field="label",
                               test_size=0.3, seed=0)
    pool = set(task.split.train.texts)
    assert all(t in pool for t in task.split.test.texts)     # the data are unchanged
    p = tmp_path / "dups.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    with pytest.warns(UserWarning, match=f"{re.escape(str(p))}: 12 of the 12 test items"):
        Task.from_table("mine", p, text_field="text", label_field="label")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deduped = Task.from_table("mine", rows, text_field="text", label_field="label",
                                  test_size=0.3, dedup=True)
    assert len(deduped.split.train) + len(deduped.split.test) == 10
    words = ["café", "naïve", "résumé", "über", "façade", "élan"]
    forms = [{"text": unicodedata.normalize(form, f"{words[j % 6]} {j}"),
              "label": "pos" if j % 2 else "neg"} for j in range(12) for form in ("NFC", "NFD")]
    with pytest.warns(UserWarning, match="test items have an exact copy in the demonstration"):
        nf = Task.from_table("nf", forms, text_field="text", label_field="label", test_size=6)
    exact = set(nf.split.train.texts)
    assert not any(t in exact for t in nf.split.test.texts)  # the copies differ in form only
    assert warn_test_copies(deduped.split, "x") == 0


def _toy_rows(n: int = 40) -> list[dict[str, Any]]:
    words = ["good", "great", "fine", "bad", "poor", "awful"]
    return [{"text": f"a {words[i % 6]} thing number {i}", "label": "pos" if i % 6 < 3 else
             "neg"} for i in range(n)]


def _fake_embeddings(self, task, part, spec, model_name, dtype="float32", *, n=None):
    """Deterministic embeddings from the texts (no encoder is loaded)."""
    texts = list(getattr(task.split, part).texts)[:n]
    return np.array([[t.count(c) + 0.01 * len(t) for c in "aeiou"] for t in texts])


def test_cli_select_and_evaluate_read_parquet(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Harness, "embeddings", _fake_embeddings)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ICLDISTILL_CACHE", str(tmp_path / "cache"))
    rows = _toy_rows()
    _write_csv(tmp_path / "toy.csv", rows, ["text", "label"])
    _write_parquet(tmp_path / "toy.parquet", rows, ["text", "label"])
    payloads = []
    for name in ("toy.csv", "toy.parquet"):
        code = main(["select", "--file", name, "--selector", "mmd", "--k", "3", "--test-size",
                     "10", "--json", "--quiet", "--out", f"out-{name}"])
        out, err = capsys.readouterr()
        assert code == 0, err
        payloads.append(json.loads(out))
    assert payloads[0]["sets"] == payloads[1]["sets"] and payloads[1]["task"] == "toy"
    assert len(payloads[1]["sets"][0]["demonstrations"]) == 3
    # evaluate reads --file through the same path: the same task from both files
    tasks = [_tasks(build_parser().parse_args(
        ["evaluate", "--file", name, "--test-size", "10", "--split-seed", "2"]))["toy"]
        for name in ("toy.csv", "toy.parquet")]
    assert tasks[0].fingerprint == tasks[1].fingerprint and len(tasks[1].split.test) == 10


@pytest.mark.parametrize(("content", "expect"), [
    (b"text,label\nhi,a\n", "data/bad.parquet is not a readable Parquet file (Parquet magic "
                            "bytes not found in footer"),
    (b"", "data/bad.parquet: the file is empty"),
    (b"PAR1" + b"\x00" * 40 + b"PAR1", "data/bad.parquet is not a readable Parquet file"),
])
def test_cli_corrupt_parquet_exits_2_with_one_line(tmp_path, monkeypatch, capsys, content,
                                                   expect):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.parquet").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ICLDISTILL_CACHE", str(tmp_path / "cache"))
    for command in ("select", "evaluate"):
        code = main([command, "--file", "data/bad.parquet", "--out", "out", "--quiet"])
        lines = capsys.readouterr().err.splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"icldistill {command}: error: {expect}"), lines


def test_cli_parquet_column_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_parquet(tmp_path / "toy.parquet", _toy_rows(), ["text", "label"])
    code = main(["select", "--file", "toy.parquet", "--text-field", "sentence", "--out", "out",
                 "--quiet"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and lines == ["icldistill select: error: toy.parquet: no column "
                                   "'sentence'; available columns: 'text', 'label'"]
