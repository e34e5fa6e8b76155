"""Input checking shared by every public function.

All user-facing entry points convert their inputs through these helpers so that bad input is
rejected with one clear message (an :class:`InputError`, a ``ValueError``) instead of producing a
silent wrong answer.
"""

from __future__ import annotations

import codecs
import io
import math
import os
import stat
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = ["MAX_FILE_BYTES_ENV", "InputError", "JSONObject", "as_float_tensor", "check_float",
           "check_int", "check_matrix", "check_pair", "check_positive", "check_seed",
           "check_user_file",
           "json_object", "json_problem", "max_file_bytes", "open_user_file", "read_user_text",
           "too_large", "utf8_error", "warn_caller", "work_dtype"]


class InputError(ValueError):
    """Raised when an argument is malformed (shape, dtype, NaN/inf, size, unknown name...)."""


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype exponentials are computed in: ``dtype``, with half precision (float16,
    bfloat16) upcast to float32 (no exponential is ever taken in half precision)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def as_float_tensor(
    x: Any,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert ``x`` (array-like or tensor) to a floating-point tensor.

    Floating tensors keep their dtype unless ``dtype`` is given; integers and numpy float64 arrays
    become float64 (numpy's default precision), other numpy floats keep their precision. Half
    precision inputs are promoted to float32 so nothing is exponentiated in low precision.
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # pragma: no cover - numpy raises many types
            raise InputError(f"{name}: cannot be converted to an array ({exc})") from exc
        if arr.dtype == object:
            raise InputError(f"{name}: contains non-numeric values")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InputError(f"{name}: expected numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if dtype is None:
        dtype = work_dtype(t.dtype) if t.is_floating_point() else torch.float64
    t = t.to(dtype=dtype, device=device)
    return t


def check_matrix(
    x: Any,
    name: str,
    *,
    min_rows: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return ``x`` as a finite 2-D float tensor ``[n, d]`` with at least ``min_rows`` rows.

    A 1-D input of length ``n`` is read as ``n`` one-dimensional points ``[n, 1]``.
    """
    t = as_float_tensor(x, name, dtype=dtype, device=device)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array of row vectors [n, d], got shape "
                         f"{tuple(t.shape)}")
    if t.shape[0] < min_rows:
        what = ("is empty" if t.shape[0] == 0
                else f"has {t.shape[0]} row{'' if t.shape[0] == 1 else 's'}")
        need = "1 row is" if min_rows == 1 else f"{min_rows} rows are"
        raise InputError(f"{name}: sample {what}; at least {need} needed")
    if t.shape[1] == 0:
        raise InputError(f"{name}: rows have dimension 0")
    check_finite(t, name)
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise :class:`InputError` if ``t`` contains NaN or infinite values."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise InputError(f"{name}: contains {bad} NaN or infinite value(s)")


def check_pair(
    x: Any, y: Any, names: Sequence[str] = ("x", "y"), *, min_rows: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two samples of row vectors: same dimension, common dtype and device."""
    xt = check_matrix(x, names[0], min_rows=min_rows)
    yt = check_matrix(y, names[1], min_rows=min_rows)
    if xt.shape[1] != yt.shape[1]:
        raise InputError(f"dimension mismatch: {names[0]} has rows of dimension {xt.shape[1]}, "
                         f"{names[1]} has {yt.shape[1]}")
    dtype = torch.promote_types(xt.dtype, yt.dtype)
    if yt.device != xt.device:
        raise InputError(f"{names[0]} is on {xt.device} but {names[1]} is on {yt.device}")
    return xt.to(dtype), yt.to(dtype)


def check_positive(value: float, name: str) -> float:
    """Return ``value`` as float if it is a finite number > 0, else raise :class:`InputError`.

    Bools (Python or NumPy) and text are refused, not read as 1 or parsed (``True`` and
    ``"0.5"`` used to pass as 1.0 and 0.5).
    """
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise InputError(f"{name} must be a finite positive number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    if not np.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a finite positive number, got {value!r}")
    return v


# ------------------------------------------------------------------------------- user files
#: Environment variable overriding :data:`DEFAULT_MAX_FILE_BYTES` (a number of bytes).
MAX_FILE_BYTES_ENV = "ICLDISTILL_MAX_FILE_BYTES"
#: Largest user file read (and largest decompressed stream): 1 GiB.
DEFAULT_MAX_FILE_BYTES = 1 << 30


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def max_file_bytes() -> int:
    """The size limit of user files: ``$ICLDISTILL_MAX_FILE_BYTES`` or 1 GiB."""
    raw = os.environ.get(MAX_FILE_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FILE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"${MAX_FILE_BYTES_ENV} must be a positive number of bytes, got {raw!r}")
    return value


def too_large(path: Path, phrase: str, limit: int) -> InputError:
    """The error for an input file above the size limit (``phrase`` says how it is above)."""
    return InputError(f"{path}: {phrase} the {_size(limit)} limit on input files; use a smaller "
                      f"file or raise the limit with {MAX_FILE_BYTES_ENV}=<bytes>")


def check_user_file(path: str | os.PathLike[str], *, what: str = "data file") -> Path:
    """Return ``path`` (``~`` expanded) if it is a readable regular file within the size limit.

    Raises :class:`InputError` naming the file and the fix: missing, a folder, not a regular
    file, unreadable, or larger than :func:`max_file_bytes`. Every reader of user files calls
    this before reading (and reads through :func:`open_user_file`, which enforces the limit on
    the bytes actually read, including decompressed streams).
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"no such file: {p}; check the path") from None
    except PermissionError:
        raise InputError(f"{p}: permission denied; make the file readable") from None
    except OSError as exc:  # name too long, a file used as a folder, a loop of links...
        raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p} is a folder, not a {what}; give the path of a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p} is not a regular file; give the path of a {what}")
    limit = max_file_bytes()
    if st.st_size > limit:
        raise too_large(p, f"the file is {_size(st.st_size)}, above", limit)
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: permission denied; make the file readable")
    return p


class _LimitedReader(io.RawIOBase):
    """A raw binary stream over ``fh`` that raises :class:`InputError` past ``limit`` bytes."""

    def __init__(self, fh: BinaryIO, limit: int, path: Path, phrase: str) -> None:
        super().__init__()
        self._fh, self._limit, self._path, self._phrase = fh, limit, path, phrase
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._fh.readinto(b) or 0
        self._count += n
        if self._count > self._limit:
            raise too_large(self._path, self._phrase, self._limit)
        return n

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            super().close()


def open_user_file(path: str | os.PathLike[str], *, what: str = "data file",
                   decompress: Any = None) -> io.BufferedReader:
    """Open a user file for binary reading, bounded by :func:`max_file_bytes`.

    ``decompress`` (e.g. ``gzip.open``) opens the file through a decompressor; the limit then
    also applies to the decompressed bytes. Reading past the limit raises :class:`InputError`.
    """
    p = check_user_file(path, what=what)
    limit = max_file_bytes()
    fh = decompress(p, "rb") if decompress is not None else open(p, "rb")
    phrase = "decompresses to more than" if decompress is not None else "grew while read past"
    return io.BufferedReader(_LimitedReader(fh, limit, p, phrase))


def _first_bad_utf8(chunks: Iterable[bytes]) -> tuple[int, int] | None:
    """``(offset, byte)`` of the first byte that is not valid UTF-8 in ``chunks``, or None."""
    dec = codecs.getincrementaldecoder("utf-8")()
    consumed = 0
    for chunk in [*chunks, b""]:
        pending = dec.getstate()[0]
        try:
            dec.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            data = pending + chunk
            return consumed - len(pending) + exc.start, data[exc.start]
        consumed += len(chunk)
    return None


def utf8_error(path: str | os.PathLike[str], source: bytes | BinaryIO | None = None,
               exc: UnicodeDecodeError | None = None, *,
               decompressed: bool = False) -> InputError:
    """The :class:`InputError` for a file that is not UTF-8: the first bad byte and its offset.

    ``source`` is the file's content (bytes) or a binary stream to scan; by default the file is
    read again (bounded). ``exc`` is the original error, used when the scan finds nothing.
    """
    p = Path(path)
    found = None
    try:
        if isinstance(source, (bytes, bytearray)):
            found = _first_bad_utf8([bytes(source)])
        else:
            stream = source if source is not None else open_user_file(p)
            with stream:
                found = _first_bad_utf8(iter(lambda: stream.read(1 << 16), b""))
    except Exception:  # only locates the byte for the message; the error stands either way
        found = None
    if found is None and exc is not None and isinstance(exc.object, (bytes, bytearray)):
        found = (exc.start, exc.object[exc.start])
    where = ""
    if found is not None:
        where = f" (byte 0x{found[1]:02x} at offset {found[0]}"
        where += " of the decompressed text" if decompressed else ""
        where += "; it looks like UTF-16)" if found[0] < 2 and found[1] in (0xFE, 0xFF) else ")"
    return InputError(f"{p} is not UTF-8 text{where}; re-save it as UTF-8")


def read_user_text(path: str | os.PathLike[str], *, what: str = "data file") -> str:
    """The text of a UTF-8 user file (a leading BOM dropped), bounded by :func:`max_file_bytes`.

    Raises :class:`InputError` for a missing, oversized or unreadable file and for bytes that are
    not UTF-8 (naming the first bad byte and its offset).
    """
    p = Path(path).expanduser()
    with open_user_file(p, what=what) as fh:
        try:
            data = fh.read()
        except OSError as exc:
            raise InputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise utf8_error(p, data, exc) from None


class JSONObject(dict):
    """A JSON object that remembers the keys that appeared more than once in it."""

    duplicates: tuple[str, ...] = ()


def json_problem(exc: BaseException) -> str:
    """What is wrong with a JSON text, from the error ``json.loads`` raised."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads`: a plain dict, or a :class:`JSONObject`
    naming the keys that appeared more than once (so a reader can refuse them)."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = JSONObject(pairs)
    marked.duplicates = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))
    return marked


def check_int(value: Any, name: str, low: int = 1) -> int:
    """``value`` as an int ``>= low``; anything else (bools, Python or NumPy, fractions, text)
    is an error."""
    try:
        ok = not isinstance(value, (bool, np.bool_)) and int(value) == value
    except (TypeError, ValueError, OverflowError):     # OverflowError: int(inf)
        ok = False
    if not ok or int(value) < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_float(value: Any, name: str, low: float, high: float = math.inf,
                low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``).

    Bools (Python or NumPy) and text are refused, as by :func:`check_positive`.
    """
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise InputError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a number, got {value!r}") from exc
    bad_low = v <= low if low_open else v < low
    if not math.isfinite(v) or bad_low or v > high:
        lo = "(" if low_open else "["
        raise InputError(f"{name} must lie in {lo}{low}, {high}], got {value!r}")
    return v


#: Largest seed :func:`check_seed` accepts (the largest int64; torch and numpy take it).
_MAX_SEED = 2**63 - 1


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as a random seed: an integer in ``[0, 2**63 - 1]``.

    Parameters
    ----------
    value : int
        The seed (a Python or NumPy integer; an integral float such as ``3.0`` is read as 3).
    name : str
        The argument's name, for the error message.

    Returns
    -------
    int

    Raises
    ------
    InputError
        For bools, fractions (``1.7`` is not read as ``1``), text, ``None``, NaN, infinity and
        values below 0 or above ``2**63 - 1``.
    """
    seed = check_int(value, name, 0)
    if seed > _MAX_SEED:
        raise InputError(f"{name} must be at most 2**63-1, got {value!r}")
    return seed


#: This package's source folder: frames there are not the caller a warning should name.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: Frameworks the adapters plug into: a warning raised while one of them calls the package on
#: the user's behalf names the user's line that asked the framework, not the framework's.
FRAMEWORKS = ("langchain_core", "langchain", "langchain_community", "dspy")


def _package_prefixes() -> tuple[str, ...]:
    """Folder prefixes of this package and of the :data:`FRAMEWORKS` already imported."""
    dirs = {_PACKAGE_DIR, os.path.realpath(_PACKAGE_DIR)}
    for name in FRAMEWORKS:
        mod = sys.modules.get(name)
        for d in getattr(mod, "__path__", None) or ():
            dirs.update((os.path.abspath(d), os.path.realpath(d)))
    return tuple(d.rstrip(os.sep) + os.sep for d in dirs)


def _import_machinery(filename: str) -> bool:
    """Frames the ``warnings`` module skips when it counts ``stacklevel`` (the import
    system's, e.g. ``<frozen importlib._bootstrap>``)."""
    return "importlib" in filename and "_bootstrap" in filename


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Issue a warning attributed to the first frame outside this package: the user's line
    that called into it, however deep inside the package the problem was found.

    A fixed ``stacklevel`` names the right line for one call path only; the package's
    warnings are reached through several (a reader called by a loader called by the user, or
    by the CLI), so this walks the stack instead (as Python 3.12's ``skip_file_prefixes``
    does). Frames of the frameworks the adapters plug into (:data:`FRAMEWORKS`: LangChain,
    DSPy) are skipped too.

    Parameters
    ----------
    message : str
        The warning's text.
    category : Warning subclass
        ``UserWarning`` (default), ``RuntimeWarning``, ``DeprecationWarning``...
    """
    prefixes = _package_prefixes()
    frame = sys._getframe(1)          # stacklevel 2: the function that called this one
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(prefixes):
        nxt = frame.f_back
        while nxt is not None and _import_machinery(nxt.f_code.co_filename):
            nxt = nxt.f_back          # not counted by warnings.warn
        if nxt is None:
            break
        frame, level = nxt, level + 1
    warnings.warn(message, category, stacklevel=level)
