"""A user's own labeled data: :func:`load_file` (CSV / TSV / JSONL / JSON / Parquet, optionally
.gz / .bz2) and in-memory tables (pandas, pyarrow, Hugging Face ``datasets``, dicts, lists of
rows), all through one reading of rows."""

from __future__ import annotations

import bz2
import contextlib
import csv
import difflib
import gzip
import io
import json
import math
import os
import sys
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from icldistill.core.validation import (
    InputError,
    check_user_file,
    json_object,
    json_problem,
    max_file_bytes,
    open_user_file,
    too_large,
    utf8_error,
    warn_caller,
)
from icldistill.data.dataset import Dataset, TaskFormat, clean_text
from icldistill.data.rows import _build, _field_renderer, _pair_renderer, _Row

# --------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------

_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open}

__all__ = [
    "Table",
    "as_table",
    "cell_text",
    "close_spellings",
    "comparable_text",
    "is_missing",
    "load_file",
    "table_rows",
    "warn_close_spellings",
    "warn_test_copies",
]


@contextlib.contextmanager
def _open_text(path: Path) -> Iterator[io.TextIOBase]:
    """The file as UTF-8 text (BOM dropped), bounded by the user-file size limit (decompressed
    size included)."""
    binary = open_user_file(path, decompress=_COMPRESSION.get(path.suffix.lower()))
    with io.TextIOWrapper(binary, encoding="utf-8-sig", newline="") as fh:
        yield fh


def _extension(path: Path) -> tuple[str, bool]:
    """``(extension, compressed)``: the lower-case extension before a ``.gz`` / ``.bz2`` one
    (``""`` for none), and whether there is such a compression extension."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in _COMPRESSION
    if compressed:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compressed


def _file_kind(path: Path, delimiter: str | None) -> str:
    ext, compressed = _extension(path)
    kind = _EXTENSIONS.get(ext)
    if kind in ("json", "jsonl", "parquet"):
        if delimiter is not None:
            raise InputError(f"{path}: delimiter= applies to CSV/TSV files, not {ext}")
        if kind == "parquet" and compressed:
            raise InputError(f"{path}: a Parquet file is compressed inside already; give the "
                             f"{ext} file itself, not a {path.suffix} of it")
        return kind
    if delimiter is not None:
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise InputError(f"delimiter must be a single character, got {delimiter!r}")
        return delimiter
    if kind is None:
        raise InputError(f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; "
                         "supported: .csv, .tsv/.tab, .jsonl/.ndjson, .json (optionally .gz or "
                         ".bz2), .parquet/.pq, or pass delimiter= for another delimited text "
                         "file")
    return kind


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_missing(value: Any) -> bool:
    """Whether a cell holds no value: ``None``, NaN or infinity, pandas' ``NA`` / ``NaT``, a
    non-finite ``Decimal`` (what :func:`cell_text` reads as ``""``; an empty string is a value,
    not a missing one)."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return not math.isfinite(float(value))
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return True
    return type(value).__name__ == "Decimal" and not value.is_finite()


def cell_text(value: Any, where: str, column: str, *, noun: str = "column") -> str:
    """A cell as text: strings as they are; missing values (:func:`is_missing`: None, NaN,
    pandas NA) as ``""``; numbers and booleans written out (``1`` and ``1.0`` -> ``"1"``,
    ``True`` -> ``"true"``, as JSON's ``true``); anything else (a list, a dict, bytes, a date)
    is an :class:`InputError` saying ``"<where>: <noun> '<column>' holds a list, not text"``.
    """
    if isinstance(value, str):
        return value
    if is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    if type(value).__name__ == "Decimal":  # Parquet / Arrow decimal columns
        return str(int(value)) if value == value.to_integral_value() else format(
            value.normalize(), "f")
    if isinstance(value, dict):
        kind = "dict"
    elif isinstance(value, (list, tuple, np.ndarray)):
        kind = "list"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        kind = "bytes value"
    else:
        kind = type(value).__name__
    raise InputError(f"{where}: {noun} {column!r} holds a {kind}, not text")


def comparable_text(text: str) -> str:
    """The form under which two texts count as the same for the copy and spelling warnings:
    Unicode NFKC (``"é"`` written as one code point or as ``e`` plus a combining accent are
    one text), runs of whitespace collapsed, ends stripped.

    Only compared, never stored: the data keep the texts as they were read.
    """
    return " ".join(unicodedata.normalize("NFKC", text).split())


# ---- tables: one reading of rows for every source --------------------------------------------

#: ``where`` of every row and its record (a mapping column -> value) of the columns asked for.
_Rows = Iterator[tuple[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class Table:
    """A source of rows: a user file or an in-memory table, before any column is interpreted.

    Attributes
    ----------
    origin : str
        Names the source at the start of every message (a path, ``"DataFrame"``...).
    noun : str
        ``"file"`` or ``"table"`` (``"the file has no data rows"``).
    columns : tuple of str
        Column names in order (for a file of JSON objects, the union of their keys).
    duplicates : dict of str to str
        A column name that occurs twice -> where it does (``"<origin>: columns 2 and 3"``).
    n_rows : int
    read : callable
        ``read(columns)``: the rows, each as ``(where, record)``; records hold at least the
        columns asked for (which are known columns without duplicates).
    """

    origin: str
    noun: str
    columns: tuple[str, ...]
    duplicates: Mapping[str, str]
    n_rows: int
    read: Callable[[Sequence[str]], _Rows]


def _positions_table(origin: str, names: Sequence[Any], n_rows: int,
                     values: Callable[[Sequence[int]], Sequence[Sequence[Any]]],
                     noun: str = "table") -> Table:
    """A :class:`Table` of a column-wise source: ``values(positions)`` gives the cells of the
    columns at those positions (one sequence each, in row order)."""
    columns = tuple(c if isinstance(c, str) else str(c) for c in names)
    duplicates: dict[str, str] = {}
    for i, c in enumerate(columns):
        if c in columns[:i] and c not in duplicates:
            duplicates[c] = f"{origin}: columns {columns.index(c) + 1} and {i + 1}"

    def read(wanted: Sequence[str]) -> _Rows:
        cells = values([columns.index(c) for c in wanted])
        for c, v in zip(wanted, cells, strict=True):
            if len(v) != n_rows:
                raise InputError(f"{origin}: column {c!r} has {len(v)} values where the table "
                                 f"has {n_rows} rows")
        for i in range(n_rows):
            yield f"{origin} row {i}", {c: v[i] for c, v in zip(wanted, cells, strict=True)}

    return Table(origin, noun, columns, duplicates, n_rows, read)


def _file_table(path: Path, kind: str) -> Table:
    if kind == "parquet":
        return _parquet_table(path)
    records, columns, duplicates = _read_records(path, kind)
    return Table(str(path), "file", tuple(columns), duplicates, len(records),
                  lambda wanted: iter(records))


def _pyarrow(what: str) -> tuple[Any, Any]:
    """``(pyarrow, pyarrow.parquet)``, or an :class:`InputError` saying how to install them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise InputError(f"{what} needs pyarrow, which is not installed; install it with "
                         "pip install 'icldistill[models]' (or pip install pyarrow)") from None
    return pyarrow, pyarrow.parquet


def _parquet_table(path: Path) -> Table:
    """A Parquet file as a :class:`Table`, read within the user-file size limit: the file's
    bytes, then the decoded columns read (the limit applies to their size in memory too)."""
    pa, pq = _pyarrow(f"reading the Parquet file {path}")
    with open_user_file(path) as fh:
        try:
            data = fh.read()
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise InputError(f"{path}: the file is empty")
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path} is not a readable Parquet file ({_one_line(exc)}); check "
                         "that the file is what its extension says and is whole") from None
    limit = max_file_bytes()

    def values(positions: Sequence[int]) -> list[list[Any]]:
        wanted = [names[i] for i in positions]
        parts, size = [], 0
        try:
            for r in range(pf.num_row_groups):
                # before decoding a row group: its size as recorded (all its columns); column
                # chunk metadata is not read (pyarrow aborts the process on some damaged ones)
                if pf.metadata.row_group(r).total_byte_size > limit:
                    raise too_large(path, "decompresses to more than", limit)
                # one thread: torch and arrow's thread pools can abort the process at exit
                part = pf.read_row_group(r, columns=wanted, use_threads=False)
                size += part.nbytes
                if size > limit:
                    raise too_large(path, "decompresses to more than", limit)
                parts.append(part)
            table = (pa.concat_tables(parts) if parts
                     else pf.schema_arrow.empty_table().select(wanted))
            return [table.column(i).to_pylist() for i in range(len(wanted))]
        except InputError:
            raise
        except (pa.ArrowException, OSError, ValueError, EOFError) as exc:
            raise InputError(f"{path}: damaged Parquet file ({_one_line(exc)})") from None

    return _positions_table(str(path), names, pf.metadata.num_rows, values, noun="file")


def _frame_table(frame: Any, origin: str) -> Table:
    return _positions_table(origin, list(frame.columns), len(frame), lambda pos: [
        frame.iloc[:, i].tolist() for i in pos])


def _describe(obj: Any) -> str:
    return f"{type(obj).__module__.split('.')[0]}.{type(obj).__name__}"


def as_table(obj: Any, name: str | None) -> tuple[Table, str]:
    """``(table, kind)`` of an in-memory table: a pandas DataFrame, a pyarrow Table, a Hugging
    Face ``datasets.Dataset``, a dict of columns or a list of row dicts (see
    :meth:`~icldistill.data.Dataset.from_table`); ``name`` names it in messages, ``kind`` is the
    type as :attr:`~icldistill.data.Dataset.source` shows it (``"pandas.DataFrame"``). Shared
    with :meth:`icldistill.selection.Pool.from_table`, so both read tables the same way."""

    # The order of the checks decides what a table is read as: it stays here, in one place;
    # the longer branches are the _*_table helpers below.
    def origin(kind: str) -> str:
        return kind if name is None else f"{kind} {name!r}"

    pd = sys.modules.get("pandas")
    pa = sys.modules.get("pyarrow")
    if pd is not None and isinstance(obj, pd.DataFrame):
        return _frame_table(obj, origin("DataFrame")), "pandas.DataFrame"
    if pa is not None and isinstance(obj, (pa.Table, pa.RecordBatch)):
        o = origin(f"pyarrow {type(obj).__name__}")
        return _positions_table(o, obj.schema.names, obj.num_rows, lambda pos: [
            obj.column(i).to_pylist() for i in pos]), f"pyarrow.{type(obj).__name__}"
    if hasattr(obj, "column_names") and hasattr(obj, "__getitem__"):  # datasets.Dataset & co
        kind = _describe(obj)
        return _dataset_table(obj, origin(kind)), kind
    if callable(getattr(obj, "to_pandas", None)) and not isinstance(obj, (Mapping, list, tuple)):
        frame = obj.to_pandas()  # polars and other frames
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(frame, pd.DataFrame):
            return _frame_table(frame, origin(_describe(obj))), _describe(obj)
    if isinstance(obj, Mapping):
        if obj and all(hasattr(v, "column_names") for v in obj.values()):
            raise InputError(f"{origin(_describe(obj))} holds several splits "
                             f"({', '.join(map(str, obj))}); give one of them, e.g. "
                             "table['train']")
        return _columns_table(obj, origin("dict of columns")), "dict of columns"
    if isinstance(obj, (list, tuple)):
        return _rows_table(obj, origin("list of rows")), "list of rows"
    if isinstance(obj, (str, os.PathLike)):  # pragma: no cover - callers route paths to files
        raise InputError(f"{obj}: a path, not a table; read files with load_file")
    raise InputError(f"cannot read a {_describe(obj)} as a table; give a pandas DataFrame, a "
                     "pyarrow Table, a datasets.Dataset, a dict column -> list of values, a "
                     "list of row dicts, or the path of a CSV / TSV / JSONL / JSON / Parquet "
                     "file")


def _dataset_table(obj: Any, o: str) -> Table:
    """A Hugging Face ``datasets.Dataset`` (or anything with ``column_names`` and column
    indexing) as a table named ``o``; a ``DatasetDict`` or a streamed dataset is refused."""
    names = obj.column_names
    if isinstance(names, Mapping):
        raise InputError(f"{o} holds several splits ({', '.join(map(str, names))}"
                         "); give one of them, e.g. table['train']")
    try:
        n = len(obj)
    except TypeError:
        n = None
    if names is None or n is None:
        raise InputError(f"{o} has no known columns or length (a streamed "
                         "dataset?); materialise it first, e.g. datasets.Dataset.from_list"
                         "(list(stream)) or a pandas DataFrame")
    names = list(names)

    def hf_values(pos: Sequence[int]) -> list[list[Any]]:
        out = []
        for i in pos:
            col = obj[names[i]]
            out.append(col.tolist() if hasattr(col, "tolist") else list(col))
        return out

    return _positions_table(o, names, n, hf_values)


def _columns_table(obj: Mapping[Any, Any], o: str) -> Table:
    """A dict column name -> list (or array) of values, all of one length, as a table."""
    cols = {}
    for k, v in obj.items():
        if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray)):
            raise InputError(f"{o}: column {k!r} is a {type(v).__name__}, not a list of "
                             "values (give a dict column name -> list of values)")
        cols[k] = v.tolist() if isinstance(v, np.ndarray) else v
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise InputError(f"{o}: columns have different lengths: "
                         f"{ {str(k): len(v) for k, v in cols.items()} }")
    keys = list(cols)
    return _positions_table(o, keys, lengths.pop() if lengths else 0, lambda pos: [
        cols[keys[i]] for i in pos])


def _rows_table(obj: Sequence[Any], o: str) -> Table:
    """A list of row dicts (string column names; a column missing from a row is empty)."""
    columns: dict[str, None] = {}
    for i, rec in enumerate(obj):
        if not isinstance(rec, Mapping):
            raise InputError(f"{o} row {i} is a {type(rec).__name__}, not a mapping "
                             "column -> value")
        columns.update(dict.fromkeys(rec))
    bad = next((c for c in columns if not isinstance(c, str)), None)
    if bad is not None:
        raise InputError(f"{o}: column names must be strings, got {bad!r}")
    return Table(o, "table", tuple(columns), {}, len(obj), lambda wanted: (
        (f"{o} row {i}", rec) for i, rec in enumerate(obj)))


#: ``(where, record)`` pairs as the user-file readers collect them.
_Records = list[tuple[str, dict[str, Any]]]


def _read_records(path: Path, kind: str) -> tuple[_Records, list[str], dict[str, str]]:
    """``([(where, record)], columns, duplicates)`` of a delimited or JSON user file;
    ``duplicates`` maps a column name that appears twice (in the header, or in one JSON object)
    to where it does."""
    records: _Records = []
    columns: dict[str, None] = {}
    duplicates: dict[str, str] = {}
    try:
        with _open_text(path) as fh:
            if kind == "jsonl":
                _jsonl_records(fh, path, records, columns, duplicates)
            elif kind == "json":
                _json_records(fh, path, records, columns, duplicates)
            else:
                _delimited_records(fh, path, kind, records, columns, duplicates)
    except UnicodeDecodeError as exc:
        opener = _COMPRESSION.get(path.suffix.lower())
        raise utf8_error(path, open_user_file(path, decompress=opener), exc,
                         decompressed=opener is not None) from None
    except csv.Error as exc:
        raise InputError(f"{path}: malformed delimited file ({exc})") from None
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise InputError(f"no such file: {path}") from None
        raise InputError(f"{path}: cannot read ({exc}); check that the file is what its "
                         "extension says") from None
    if kind == "\t" and _is_orange_header(path, records):  # Orange .tab: type and flag rows
        warn_caller(f"{path}: read as an Orange .tab file: its first two data rows "
                    f"(lines {records[0][0].rpartition(':')[2]} and "
                    f"{records[1][0].rpartition(':')[2]}: variable types and flags) are "
                    "skipped; rename the file to .tsv to keep them as data")
        records = records[2:]
    return records, list(columns), duplicates


def _jsonl_records(fh: io.TextIOBase, path: Path, records: _Records, columns: dict[str, None],
                   duplicates: dict[str, str]) -> None:
    """Append the objects of a JSON Lines file (one object per non-blank line)."""
    for lineno, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=json_object)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{path}:{lineno}: invalid JSON ({json_problem(exc)})"
                             ) from None
        if not isinstance(rec, dict):
            raise InputError(f"{path}:{lineno}: expected a JSON object per line, got "
                             f"{type(rec).__name__}")
        for key in getattr(rec, "duplicates", ()):
            duplicates.setdefault(key, f"{path}:{lineno}")
        records.append((f"{path}:{lineno}", rec))
        columns.update(dict.fromkeys(rec))


def _json_records(fh: io.TextIOBase, path: Path, records: _Records, columns: dict[str, None],
                  duplicates: dict[str, str]) -> None:
    """Append the objects of a JSON list (or of the one list inside a JSON object)."""
    text = fh.read()
    if not text.strip():
        raise InputError(f"{path}: the file is empty")
    try:
        data = json.loads(text, object_pairs_hook=json_object)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{path}: invalid JSON ({json_problem(exc)})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise InputError(f"{path}: expected a JSON list of objects (or an object "
                             "holding exactly one such list)")
        data = lists[0]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of objects")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise InputError(f"{path}: item {i} is a {type(rec).__name__}, not an "
                             "object")
        for key in getattr(rec, "duplicates", ()):
            duplicates.setdefault(key, f"{path}[{i}]")
        records.append((f"{path}[{i}]", rec))
        columns.update(dict.fromkeys(rec))


def _delimited_records(fh: io.TextIOBase, path: Path, delimiter: str, records: _Records,
                       columns: dict[str, None], duplicates: dict[str, str]) -> None:
    """Append the rows of a delimited file with a header row (fields up to 1 GiB each)."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, 1 << 30))
    try:
        reader = csv.DictReader(fh, delimiter=delimiter)
        header = reader.fieldnames
        if not header:
            raise InputError(f"{path}: the file is empty (no header row)")
        for i, h in enumerate(header):
            if h and h in header[:i] and h not in duplicates:
                duplicates[h] = (f"{path}: header columns {header.index(h) + 1} "
                                 f"and {i + 1}")
        columns.update(dict.fromkeys(h for h in header if h is not None))
        for rec in reader:
            extra = rec.get(None)
            if extra or any(v is None for k, v in rec.items() if k is not None):
                n = sum(v is not None for k, v in rec.items() if k is not None) + len(extra or ())
                raise InputError(f"{path}:{reader.line_num}: the row has {n} fields, the header "
                                 f"{len(header)}; quote a field that holds the delimiter "
                                 f"{delimiter!r}")
            records.append((f"{path}:{reader.line_num}", rec))
    finally:
        csv.field_size_limit(old)


_ORANGE_TYPES = {"d", "c", "s", "t", "discrete", "continuous", "string", "time", "text"}
_ORANGE_FLAGS = {"c", "m", "i", "w", "class", "meta", "ignore", "weight"}


def _is_orange_header(path: Path, records: list[tuple[str, dict[str, Any]]]) -> bool:
    """Whether the first two data rows of a ``.tab`` file are an Orange header: a row of
    variable types (``d``, ``string``...), then a row of flags (``class``, ``meta``, ``i``...,
    ``key=value`` attributes, or empty cells).

    Only ``.tab`` files (optionally compressed) have one: a ``.tsv`` (or a file read with
    ``delimiter=``) whose first rows hold such words keeps them as data.
    """
    if _extension(path)[0] != ".tab" or len(records) < 2:
        return False
    types = [v for k, v in records[0][1].items() if k is not None]
    flags = [v for k, v in records[1][1].items() if k is not None]
    if not types or not all(isinstance(v, str) for v in types + flags):
        return False
    if not all(v.strip().lower() in _ORANGE_TYPES | {""} for v in types) \
            or not any(v.strip() for v in types):
        return False
    return all(word.lower() in _ORANGE_FLAGS or "=" in word
               for v in flags for word in v.split())


def _check_columns(origin: str, wanted: Sequence[str], columns: Sequence[str]) -> None:
    for col in wanted:
        if col not in columns:
            msg = (f"{origin}: no column {col!r}; available columns: "
                   f"{', '.join(repr(c) for c in columns) or '(none)'}")
            close = difflib.get_close_matches(col, list(columns), n=1, cutoff=0.6)
            if not close:
                close = [c for c in columns if c.strip().lower() == col.strip().lower()]
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            raise InputError(msg)


def table_rows(table: Table, wanted: Sequence[str]) -> _Rows:
    """The rows of ``table`` after the checks every source shares: it has rows, and every
    ``wanted`` column exists (else the available ones are listed) and occurs once."""
    if table.n_rows == 0:
        raise InputError(f"{table.origin}: the {table.noun} has no data rows")
    _check_columns(table.origin, wanted, table.columns)
    for col in wanted:
        if col in table.duplicates:
            raise InputError(f"{table.duplicates[col]}: column {col!r} appears twice, so it is "
                             "ambiguous which one to read; rename or drop one of them")
    return table.read(list(dict.fromkeys(wanted)))


def _check_options(text_field: Any, label_field: Any, pair_fields: Any,
                   max_words: Any) -> list[str]:
    """Validate the column options of :func:`load_file` / :meth:`Dataset.from_table`; returns
    the pair fields (deduplicated, in order)."""
    for arg, value in (("text_field", text_field), ("label_field", label_field)):
        if not isinstance(value, str) or not value:
            raise InputError(f"{arg} must be a non-empty column name, got {value!r}")
    if pair_fields is not None and (isinstance(pair_fields, str)
                                    or not all(isinstance(x, str) and x for x in pair_fields)):
        raise InputError("pair_fields must be a sequence of column names")
    if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int)
                                  or max_words < 1):
        raise InputError(f"max_words must be a positive integer or None, got {max_words!r}")
    pairs = list(dict.fromkeys(pair_fields or ()))
    if label_field == text_field or label_field in pairs:
        raise InputError(f"label_field {label_field!r} is also an input field")
    return pairs


def _table_dataset(table: Table, *, text_field: str, label_field: str, pairs: list[str],
                   name: str, format: TaskFormat | None, max_words: int | None, dedup: bool,
                   source: str) -> Dataset:
    """The one reading of labeled rows behind :func:`load_file` and :meth:`Dataset.from_table`,
    whatever the source: column checks, cell conversion, empty labels and texts, warnings."""
    used = list(dict.fromkeys([text_field, *pairs]))
    rows = []
    for where, rec in table_rows(table, [*used, label_field]):
        fields = {c: cell_text(rec.get(c), where, c) for c in used}
        label = clean_text(cell_text(rec.get(label_field), where, label_field))
        if not label and any(clean_text(v) for v in fields.values()):
            raise InputError(f"{where}: empty label in column {label_field!r}")
        rows.append(_Row(fields, label, None, where))
    if not any(all(clean_text(v) for v in r.fields.values()) for r in rows):
        what = "texts" if not pairs else f"values in all of {used}"
        raise InputError(f"{table.origin}: no rows with a non-empty text in column "
                         f"{text_field!r}" + ("" if not pairs else f" (rows need {what})"))
    render = _pair_renderer(text_field, pairs) if pairs else _field_renderer(text_field)
    built = _build(rows, name=name, render=render, truncate_field=text_field,
                   max_words=max_words, sentences=False, label_names=None, format=format,
                   keep_fields=used if pairs else None, dedup=dedup, source=source)
    if built.dropped_empty:
        warn_caller(f"{table.origin}: dropped {built.dropped_empty} row(s) with an empty "
                    f"{'input field' if pairs else 'text'}")
    ds = built.dataset
    if len(ds.label_names) == 1:
        warn_caller(f"{table.origin}: column {label_field!r} has a single label "
                    f"({ds.label_names[0]!r}); a classification task needs at least two")
    if dedup:
        near = _near_copies(ds.texts)
        if near:
            warn_caller(f"{table.origin}: {near} row(s) kept by dedup repeat an earlier input "
                        "that differs from it only in Unicode normal form (e.g. an accent "
                        "written as a combining character); they look identical but dedup "
                        "drops exact copies only: write the texts in one form (e.g. NFC)")
    warn_close_spellings(ds.label_names, f"{table.origin}: column {label_field!r}")
    return ds


def _near_copies(texts: Sequence[str]) -> int:
    """How many of ``texts`` repeat an earlier one under :func:`comparable_text` (exact copies
    included)."""
    seen: set[str] = set()
    n = 0
    for t in texts:
        key = comparable_text(t)
        n += key in seen
        seen.add(key)
    return n


def close_spellings(labels: Sequence[str]) -> list[list[str]]:
    """Groups of distinct labels that differ only in case, spaces, Unicode normal form or
    number format ("Pos" and "pos", "1" and "1.0", "True" and "true", "négatif" in NFC and in
    NFD).

    Parameters
    ----------
    labels : sequence of str
        Label names (repeats are counted once).

    Returns
    -------
    list of list of str
        Each group in first-seen order; labels without a near twin are left out.
    """
    def key(label: str) -> str:
        text = comparable_text(label).casefold()
        try:
            value = float(text)
        except ValueError:
            return text
        return repr(value) if math.isfinite(value) else text

    groups: dict[str, list[str]] = {}
    for lab in dict.fromkeys(labels):
        groups.setdefault(key(lab), []).append(lab)
    return [g for g in groups.values() if len(g) > 1]


def warn_close_spellings(labels: Sequence[str], origin: str) -> list[list[str]]:
    """Warn when labels differ only in spelling (:func:`close_spellings`): each is a class of
    its own, which is rarely meant.

    Parameters
    ----------
    labels : sequence of str
        The label names.
    origin : str
        Starts the message: ``"<origin> has labels that differ only in ..."`` (e.g.
        ``"data.csv: column 'label'"``).

    Returns
    -------
    list of list of str
        The groups warned about (empty: no warning).
    """
    close = close_spellings(labels)
    if close:
        shown = "; ".join(" and ".join(repr(v) for v in g) for g in close[:3])
        nfkc = any(len({comparable_text(v) for v in g}) < len(g) for g in close)
        warn_caller(f"{origin} has labels that differ only in case, spaces or number format"
                    f"{' (or Unicode normal form: they look identical)' if nfkc else ''} "
                    f"({shown}{'; ...' if len(close) > 3 else ''}); each is a class of its "
                    "own: write one spelling where they mean the same")
    return close


def warn_test_copies(split: Any, origin: str) -> int:
    """Warn when test items have a copy in the demonstration pool: a retriever (``knn``...)
    then shows the query itself, with its label, as a demonstration.

    The check behind ``icldistill evaluate --file`` and
    :meth:`~icldistill.evaluation.harness.Task.from_table`. Texts are compared under
    :func:`comparable_text`, so a copy that differs only in Unicode normal form or spacing
    counts (the data are not changed).

    Parameters
    ----------
    split : DatasetSplit
        The split (``split.train`` is the pool).
    origin : str
        Starts the message (a path, a task name).

    Returns
    -------
    int
        The number of test items with a copy in the pool (0: no warning).
    """
    pool = {comparable_text(t) for t in split.train.texts}
    n = sum(comparable_text(t) in pool for t in split.test.texts)
    if n:
        warn_caller(f"{origin}: {n} of the {len(split.test)} test items have an exact copy "
                    "in the demonstration pool (a duplicated row; texts that differ only in "
                    "Unicode normal form or spacing count as copies), which a retriever such "
                    "as knn shows with its label; remove the duplicates from the data (or "
                    "read it with dedup=True)")
    return n


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _from_table(table: Any, *, text_field: str, label_field: str,
                pair_fields: Sequence[str] | None, name: str | None,
                format: TaskFormat | None, max_words: int | None, dedup: bool) -> Dataset:
    """:meth:`Dataset.from_table`."""
    pairs = _check_options(text_field, label_field, pair_fields, max_words)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise InputError(f"name must be a non-empty string, got {name!r}")
    tab, kind = as_table(table, name)
    return _table_dataset(tab, text_field=text_field, label_field=label_field, pairs=pairs,
                          name=name or "table", format=format, max_words=max_words,
                          dedup=dedup, source=kind)


def load_file(path: str | os.PathLike[str] | Any, *, text_field: str, label_field: str,
              pair_fields: Sequence[str] | None = None, name: str | None = None,
              format: TaskFormat | None = None, delimiter: str | None = None,
              max_words: int | None = None, dedup: bool = False) -> Dataset:
    """Read a labeled text dataset from a CSV, TSV, JSONL, JSON or Parquet file (or a table).

    Parameters
    ----------
    path : path, or an in-memory table
        ``.csv`` (comma), ``.tsv`` / ``.tab`` (tab), ``.jsonl`` / ``.ndjson`` (one object per
        line), ``.json`` (a list of objects) - UTF-8, ``.gz`` / ``.bz2`` compressed files too -
        or ``.parquet`` / ``.pq`` (needs pyarrow: ``pip install 'icldistill[models]'``). Other
        delimited files need ``delimiter``. Delimited files need a header row. A pandas
        DataFrame, pyarrow Table, ``datasets.Dataset``, dict of columns or list of row dicts
        is read as by :meth:`Dataset.from_table`. A ``.tab`` file whose first two data rows
        are an Orange header (variable types, then flags) has them skipped, with a warning.
    text_field : str
        Column holding the input text.
    label_field : str
        Column holding the label; values become label names (strings, stripped; numbers and
        booleans are written out, e.g. ``1`` and ``1.0`` -> ``"1"``, ``true`` -> ``"true"``).
    pair_fields : sequence of str, optional
        For pair tasks (e.g. premise / hypothesis, passage / question): more columns written
        into the input as ``"field: value"`` lines after the ``text_field``; if ``text_field`` is
        itself listed, every listed field is written as ``"field: value"`` in the listed order.
        The raw values are kept in :attr:`Dataset.fields`.
    name : str, optional
        Dataset name (default: the file name without extensions).
    format : TaskFormat, optional
        Prompt format; by default the generic ``"Input: ...\\nLabel: ..."`` template with the
        label names as label words.
    delimiter : str, optional
        Field delimiter of a delimited file (overrides the extension's).
    max_words : int, optional
        Shorten longer ``text_field`` values at a word boundary (appending ``"…"``).
    dedup : bool
        Drop rows whose rendered input repeats an earlier one exactly (inputs that differ only
        in Unicode normal form are kept, with a warning).

    Returns
    -------
    Dataset
        Rows in file order; rows with an empty text are dropped (with a warning). Label names are
        sorted (numerically when they are all numbers).

    Raises
    ------
    InputError
        Missing file or a folder, unknown format, empty file, bytes that are not UTF-8 (the
        first bad byte and its offset are named), a file named ``.parquet`` that is not one or
        is damaged,
        a file larger than the user-file limit (1 GiB, ``$ICLDISTILL_MAX_FILE_BYTES``;
        compressed files also by their decompressed size, Parquet files by the size of the
        columns read), missing column (the available ones are listed), a used column that
        appears twice (in the header, in one JSON object or in a Parquet schema), a cell that
        is not text (a list, a dict, bytes...), an empty label, or no usable rows. A label
        column with a single class, or with labels that differ only in spelling
        (:func:`warn_close_spellings`), only warns.
    """
    if not _is_path(path):
        if delimiter is not None:
            raise InputError("delimiter= applies to delimited files, not to an in-memory table")
        return _from_table(path, text_field=text_field, label_field=label_field,
                           pair_fields=pair_fields, name=name, format=format,
                           max_words=max_words, dedup=dedup)
    p = check_user_file(path)
    pairs = _check_options(text_field, label_field, pair_fields, max_words)
    table = _file_table(p, _file_kind(p, delimiter))
    return _table_dataset(table, text_field=text_field, label_field=label_field, pairs=pairs,
                          name=name or p.name.split(".")[0] or p.name, format=format,
                          max_words=max_words, dedup=dedup, source=str(p))
