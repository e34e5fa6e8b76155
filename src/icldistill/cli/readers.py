"""Readers of the CLI's own input files: row vectors for ``icldistill mmd`` (:func:`load_matrix`)
and demonstrations for ``icldistill trace`` (:func:`load_demonstrations`).

Both refuse a bad file with an :class:`~icldistill.core.validation.InputError` that names the file
and the fault (the CLI prints it as one line, exit status 2). Dataset files (CSV, JSONL, Parquet)
are read by :func:`icldistill.data.datasets.load_file`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from icldistill.core.validation import InputError, check_user_file, read_user_text

__all__ = ["load_demonstrations", "load_matrix"]


def load_matrix(path: str | Path) -> np.ndarray:
    """Read a matrix of row vectors ``[n, d]`` from ``.npy`` or delimited text (``.csv``/``.tsv``).

    Text files (UTF-8) may start with one header row (detected when the first row is not
    numeric). ``.npy`` files must hold a real numeric array (no pickles, no complex values).
    Files larger than the user-file limit (1 GiB, ``$ICLDISTILL_MAX_FILE_BYTES``) are refused.

    Raises
    ------
    InputError
        Missing file or a folder, a file over the size limit, an unsupported extension, a file
        named ``.npy`` that is not one, an object / complex / non-numeric array, text that is
        not UTF-8 or not numbers, no data rows, or more than two dimensions.
    """
    p = check_user_file(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _load_npy(p)
    elif suffix in (".csv", ".tsv", ".txt"):
        arr = _load_delimited(p, "\t" if suffix == ".tsv" else ",")
    else:
        raise InputError(f"{p}: unsupported file type {suffix or '(no extension)'!r}; use .npy, "
                         ".csv or .tsv")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{p}: expected a 2-D array of row vectors, got shape {arr.shape}")
    return arr


_NPY_MAGIC = b"\x93NUMPY"


def _npy_damaged(p: Path, detail: Any) -> InputError:
    return InputError(f"{p}: damaged or truncated .npy file ({detail}); write it again with "
                      "numpy.save")


def _load_npy(p: Path) -> np.ndarray:
    """A real numeric array from a ``.npy`` file whose size :func:`check_user_file` bounded.

    The header is read first: no pickles, no complex or non-numeric dtypes, and data of the
    announced size (a small file announcing a huge shape is refused before any allocation).
    """
    from numpy.lib import format as npy

    with open(p, "rb") as fh:
        head = fh.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            what = "it is empty" if not head else f"it starts with {head!r}"
            raise InputError(f"{p} is not a NumPy .npy file ({what}); write arrays with "
                             "numpy.save, or give a text file a .csv/.tsv name")
        fh.seek(0)
        try:
            version = npy.read_magic(fh)
            reader = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
            if version in reader:
                shape, _, dtype = reader[version](fh)
                if dtype.hasobject:
                    raise InputError(f"{p}: the array holds Python objects (pickled data), which "
                                     "are not loaded for safety; save a numeric array")
                if np.issubdtype(dtype, np.complexfloating):
                    raise InputError(f"{p}: the array holds complex numbers ({dtype}); the MMD "
                                     "needs real row vectors: save the real part, the modulus, "
                                     "or real and imaginary parts as separate columns")
                need = math.prod(shape) * dtype.itemsize
                have = p.stat().st_size - fh.tell()
                if have < need:
                    raise _npy_damaged(p, f"{have} bytes of data where its header announces "
                                          f"{need} for shape {shape} of {dtype}")
            fh.seek(0)
            arr = np.load(fh, allow_pickle=False)
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            if "pickle" in str(exc):
                raise InputError(f"{p}: the array holds Python objects (pickled data), which are "
                                 "not loaded for safety; save a numeric array") from None
            raise _npy_damaged(p, exc) from None
        except (OSError, EOFError) as exc:
            raise _npy_damaged(p, exc) from None
    if np.iscomplexobj(arr):
        raise InputError(f"{p}: the array holds complex numbers ({arr.dtype}); the MMD needs real "
                         "row vectors: save the real part, the modulus, or real and imaginary "
                         "parts as separate columns")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{p}: the array holds {arr.dtype} values, not numbers; save a numeric "
                         "array")
    return arr


def _is_complex(token: str) -> bool:
    """Whether ``token`` is a complex literal such as ``1+2j`` (and not a real number)."""
    try:
        float(token)
    except ValueError:
        try:
            complex(token.strip().replace(" ", ""))
        except ValueError:
            return False
        return True
    return False


def _load_delimited(p: Path, delim: str) -> np.ndarray:
    numbered = [(i, ln) for i, ln in enumerate(read_user_text(p).splitlines(), start=1)
                if ln.strip()]
    skip = 0
    if numbered:
        tokens = [tok for tok in numbered[0][1].strip().split(delim) if tok.strip()]
        try:
            [float(tok) for tok in tokens]
        except ValueError:
            skip = 1
            if any(_is_complex(tok) for tok in tokens):
                raise InputError(f"{p}:{numbered[0][0]}: complex numbers; the MMD needs real row "
                                 "vectors: write the real part, the modulus, or real and "
                                 "imaginary parts as separate columns") from None
    if len(numbered) <= skip:
        raise InputError(f"{p}: no data rows; give one row of numbers per line"
                         + (" after the header" if skip else ""))
    try:
        return np.loadtxt([ln for _, ln in numbered[skip:]], delimiter=delim, ndmin=2,
                          dtype=np.float64)
    except ValueError as exc:
        where, detail = _first_bad_row(numbered[skip:], delim)
        sep = "tabs" if delim == "\t" else "commas"
        raise InputError(f"{p}{where}: cannot parse numbers ({detail or exc}); give one row of "
                         f"numbers per line, separated by {sep}") from None


def _first_bad_row(numbered: list[tuple[int, str]], delim: str) -> tuple[str, str]:
    """``(":LINE", what is wrong)`` for the first row that is not numbers like the first."""
    width = None
    for lineno, line in numbered:
        tokens = line.split("#", 1)[0].split(delim)
        if not line.split("#", 1)[0].strip():
            continue
        for tok in tokens:
            try:
                float(tok)
            except ValueError:
                kind = "a complex number" if _is_complex(tok) else "not a number"
                return f":{lineno}", f"{tok.strip()!r} is {kind}"
        if width is None:
            width = len(tokens)
        elif len(tokens) != width:
            return f":{lineno}", f"{len(tokens)} column(s) where earlier rows have {width}"
    return "", ""


def _demo_cell(value: Any, path: Path, line: int, field: str) -> str:
    """A demonstration's text or label: a non-empty string, or a number or boolean (written as
    JSON writes it); null, NaN, lists, objects and blank text are :class:`InputError`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not (isinstance(value, float)
                                                and not math.isfinite(value)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    what = ("null" if value is None else "blank text" if isinstance(value, str)
            else f"a {type(value).__name__}" if not isinstance(value, float) else str(value))
    raise InputError(f"{path}:{line}: field {field!r} is {what}; give text (or a number)")


def load_demonstrations(path: str | Path, text_field: str = "input",
                        label_field: str = "label") -> list[tuple[str, str]]:
    """Read ``(input, label)`` pairs from a JSONL file (one JSON object per line, UTF-8).

    Raises
    ------
    InputError
        Missing file or a folder, a file over the size limit, text that is not UTF-8, a line that
        is not a JSON object, a missing or duplicated field, or no demonstration at all (a trace
        of a few-shot prompt needs at least one).
    """
    from icldistill.core.validation import json_object, json_problem

    p = check_user_file(path, what="JSONL file")
    demos = []
    for n, line in enumerate(read_user_text(p, what="JSONL file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=json_object)
        except (ValueError, RecursionError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else json_problem(exc)
            raise InputError(f"{p}:{n}: not valid JSON ({msg}); write one JSON object per "
                             "line") from None
        if not isinstance(rec, dict):
            raise InputError(f"{p}:{n}: expected a JSON object such as "
                             f'{{"{text_field}": "...", "{label_field}": "..."}}, got '
                             f"{type(rec).__name__}")
        missing = [f for f in (text_field, label_field) if f not in rec]
        if missing:
            raise InputError(f"{p}:{n}: missing field(s) {missing}; fields present: "
                             f"{sorted(rec)} (see --text-field/--label-field)")
        twice = [f for f in (text_field, label_field) if f in getattr(rec, "duplicates", ())]
        if twice:
            raise InputError(f"{p}:{n}: field {twice[0]!r} appears twice in one object; keep one")
        demos.append((_demo_cell(rec[text_field], p, n, text_field),
                      _demo_cell(rec[label_field], p, n, label_field)))
    if not demos:
        raise InputError(f"{p} holds no demonstrations (it is empty or blank); give --demos a "
                         f'JSONL file with at least one line such as {{"{text_field}": "...", '
                         f'"{label_field}": "..."}}')
    return demos

