"""The result store: JSON-lines files that survive a kill, and per-unit locks.

One implementation, used by the evaluation harness (``results.jsonl``, ``predictions.jsonl``,
``partial/<key>.jsonl``, the score store ``scores/*.jsonl``, ``heads/*.json``) and by the
benchmarks that share an output folder between several worker processes
(``benchmarks/bench_fewshot.py``, ``benchmarks/bench_ablation.py``).

Appending (:func:`append_record`)
    One record is one line of JSON, written with a single ``write`` on a file opened
    ``O_APPEND``, then flushed and fsynced (and the folder fsynced when the file was new), so a
    crash or ``SIGKILL`` tears at most the line being written. Before appending, the file's
    last byte is checked: a file that does not end with a newline holds a torn fragment (a
    writer killed mid-line); the fragment is terminated with a newline, so the new record is on
    a line of its own (previously it was glued onto the fragment and lost), and one warning
    line is printed to stderr. The fragment itself is kept (and skipped by readers): if it is
    in fact a complete record that only lacked its newline, it is read back. Appends to one
    file are serialised between processes with an advisory ``flock`` on the file itself.

    A failing write (``ENOSPC``, ``EDQUOT``, ``EIO``, ...) truncates the file back to its length
    before the write, so no fragment is left, and raises :class:`StoreWriteError`, an
    ``OSError`` whose message names the file and the cause and says that the records already
    in it are intact (the CLI prints it as one line and exits 2).

Reading (:func:`iter_records`, :func:`read_records`)
    Yields the JSON objects of a file in order; a line that is not a JSON object (a torn
    fragment, garbage) is skipped and counted in :class:`ReadStats`.

Locks (:func:`unit_lock`, :func:`lock_held`, :func:`held_locks`)
    ``<folder>/locks/<key>.lock``, an exclusive lock of the ``filelock`` package (``flock`` on
    Unix). The holder of a unit's lock is the only process that computes and records that
    unit: the harness takes it before computing a unit and re-reads ``results.jsonl`` once it
    has it, so two runs on one folder compute and record each unit once. The operating system
    releases the lock when its holder dies (``SIGKILL`` included), so there is no stale claim
    and no takeover race. Locks are re-entrant within a process (the same lock object is
    reused per path). The lock files stay in ``locks/`` (removing them would race with a
    process waiting on them); they are empty and cost nothing.

Checkpoints (:class:`Checkpoints`)
    Finished pieces of one long computation (a laboratory section's parts: one model on one
    task), one pickle per key, each written atomically (:func:`atomic_write`), so a killed run
    loses at most the piece in flight. The caller's key must hash everything a piece depends
    on; a file that cannot be read back is recomputed (with a warning), never trusted. Pickles
    execute code when loaded: a checkpoint folder is the run's own scratch space, not a format
    to exchange.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import pickle
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from icldistill.core.results import to_jsonable

__all__ = [
    "Checkpoints",
    "ReadStats",
    "StoreWriteError",
    "append_record",
    "atomic_write",
    "fsync_dir",
    "held_locks",
    "iter_records",
    "json_default",
    "lock_held",
    "lock_path",
    "read_records",
    "report_lock",
    "to_jsonable",
    "unit_lock",
    "write_all",
    "write_atomic",
    "write_json",
    "write_text",
]

try:  # POSIX: serialise appends to one file between processes
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]


class StoreWriteError(OSError):
    """A record could not be written (no space left, quota, I/O error ...).

    The file was truncated back to its length before the write: the records already in it are
    intact. ``errno`` is the cause's error number; ``path`` the file.
    """

    def __init__(self, path: Path, cause: OSError) -> None:
        code = cause.errno if cause.errno is not None else _errno.EIO
        reason = cause.strerror or str(cause) or type(cause).__name__
        name = _errno.errorcode.get(code, str(code))
        self.path = Path(path)
        self.message = (f"cannot write to {path}: {reason} ({name}); the records already in it "
                        "are intact - free some space (or fix the folder) and rerun the same "
                        "command to resume")
        super().__init__(code, self.message)

    def __str__(self) -> str:
        return self.message


@dataclass
class ReadStats:
    """What :func:`iter_records` saw: ``records`` read, ``torn`` lines skipped."""

    records: int = 0
    torn: int = 0


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | Path, payload: Any, *, exclusive: bool = False) -> Path:
    """Write ``payload`` as JSON atomically (tensors/arrays become lists, NaN/inf become null);
    ``exclusive``: only if ``path`` does not exist yet, else :class:`FileExistsError`
    (:func:`atomic_write`)."""
    text = json.dumps(to_jsonable(payload), indent=1, allow_nan=False) + "\n"
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), exclusive=exclusive)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def iter_records(path: str | os.PathLike[str],
                 stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, in order (nothing when the file is absent).

    A non-empty line that is not a JSON object (a torn last line of a killed writer, or one
    terminated by a later append) is skipped and counted in ``stats.torn``.
    """
    p = Path(path)
    try:
        fh = p.open("rb")
    except FileNotFoundError:
        return
    with fh:
        for raw in fh:
            line = raw.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict):
                if stats is not None:
                    stats.torn += 1
                continue
            if stats is not None:
                stats.records += 1
            yield rec


def read_records(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """``(records, n_torn)``: every JSON object of the file and the number of lines skipped."""
    stats = ReadStats()
    return list(iter_records(path, stats)), stats.torn


# --------------------------------------------------------------------------------------------
# Appending
# --------------------------------------------------------------------------------------------


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written to the file descriptor ``fd``.

    Every record :func:`append_record` appends goes through this one function, looked up here
    at call time: fault-injection tests replace it to simulate a full disk or a kill
    mid-write.
    """
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises instead
            raise OSError(_errno.EIO, "write returned 0")
        view = view[n:]


def _last_byte(fd: int, size: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, 1, size - 1)
    os.lseek(fd, size - 1, os.SEEK_SET)  # pragma: no cover - Windows
    return os.read(fd, 1)  # pragma: no cover


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a folder, so a file created or renamed in it survives a power loss (POSIX only)."""
    if os.name == "nt":  # pragma: no cover
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a folder we cannot open: nothing to do
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *,
                 exclusive: bool = False) -> Path:
    """Write ``path`` through a temporary file in the same folder, then ``os.replace`` it.

    With ``exclusive`` the finished file is linked into place only if ``path`` does not exist
    yet (``os.link``, atomic): of several processes creating one file, exactly one succeeds
    and the others get :class:`FileExistsError`, which no rename-based write can give.

    ``write`` receives the open binary file. The data is flushed and fsynced before the rename
    and the folder after it; on any exception (``KeyboardInterrupt`` included) the temporary
    file is removed and an existing ``path`` is left untouched. A kill leaves the old file or
    the new one (and at most a stray ``.<name>.*.tmp``), never a partial one. The one atomic
    file writer of the package (``reports.atomic_write`` is this function).
    """
    import tempfile

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        raise _about(exc, p) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if exclusive:
            os.link(tmp, p)         # FileExistsError when another writer was first
            os.unlink(tmp)
        else:
            os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (tmp, str(p.parent)):
            raise _about(exc, p) from exc
        raise
    fsync_dir(p.parent)
    return p


def _about(exc: OSError, path: Path) -> OSError:
    """``exc`` about ``path``, the file being written, instead of its temporary file (the
    name a user would not recognise); the same class (``PermissionError``, ...) and errno."""
    if exc.errno is None:
        return exc
    new = OSError(exc.errno, exc.strerror, str(path))
    return new if isinstance(new, type(exc)) else type(exc)(exc.errno, exc.strerror, str(path))



def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def _warn(msg: str) -> None:
    print(f"[icldistill] warning: {msg}", file=sys.stderr, flush=True)


def append_record(path: str | os.PathLike[str], record: Mapping[str, Any], *,
                  default: Callable[[Any], Any] | None = json_default,
                  warn: Callable[[str], None] | None = None) -> None:
    """Append ``record`` to the JSON-lines file ``path`` as one line, flushed and fsynced.

    Non-finite floats are written as Python's ``json`` writes them (``NaN``, ``Infinity``,
    ``-Infinity``), so they read back exactly: a log-probability of ``-inf`` must not come back
    as a missing value. Those three tokens are not standard JSON; Python's ``json``, pandas
    and most JSON5 readers accept them. (Reports and summaries, :func:`write_json`, are
    standard JSON, with ``null`` for a non-finite number.) A torn last line is terminated first
    (``warn`` receives one message about it; default a line on stderr). On a write error the
    file is truncated back to its previous length and :class:`StoreWriteError` is raised.
    """
    p = Path(path)
    line = (json.dumps(record, sort_keys=True, default=default) + "\n").encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists()
    try:
        fd = os.open(p, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise StoreWriteError(p, exc) from exc
    try:
        if _fcntl is not None:
            _fcntl.flock(fd, _fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        data = line
        if size and _last_byte(fd, size) != b"\n":
            data = b"\n" + line
            (warn or _warn)(f"{p}: the last line was torn (a run killed while writing it); "
                            "it is kept as an unreadable line and skipped, the new record "
                            "starts on a line of its own")
        try:
            write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
                os.fsync(fd)
            raise StoreWriteError(p, exc) from exc
    finally:
        os.close(fd)  # releases the flock
    if new:
        fsync_dir(p.parent)


# --------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------

_LOCKS: dict[str, Any] = {}
_LOCKS_GUARD = threading.Lock()


def lock_path(folder: str | os.PathLike[str], key: str) -> Path:
    """``<folder>/locks/<key>.lock`` (characters outside ``[A-Za-z0-9._-]`` become ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)).strip(".") or "_"
    return Path(folder) / "locks" / f"{safe[:150]}.lock"


def _lock_for(path: Path) -> Any:
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    k = os.path.abspath(path)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(k)
        if lock is None:
            lock = _LOCKS[k] = FileLock(k)
        return lock


@contextlib.contextmanager
def unit_lock(folder: str | os.PathLike[str], key: str, *,
              blocking: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock of ``key`` in ``folder`` for the ``with`` block.

    Yields ``True`` when held. With ``blocking=False`` it yields ``False`` at once when
    another process holds the lock (the block then must not touch the unit). Re-entrant
    within a process. The lock dies with its holder (released by the operating system).
    """
    from filelock import Timeout

    lock = _lock_for(lock_path(folder, key))
    try:
        lock.acquire(timeout=-1 if blocking else 0)
    except Timeout:
        acquired = False
    else:
        acquired = True
    if not acquired:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextlib.contextmanager
def report_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive report lock of ``folder`` (``<folder>/.report.lock``) for the
    ``with`` block, waiting for another process that holds it.

    Writers of a folder's report hold it, so that two workers finishing at once do not
    interleave their files (one's ``report.md`` beside the other's ``paired.json``). It is not
    a unit lock: :func:`held_locks` does not list it, so a worker that waits for the units of
    other workers is not kept waiting by a report being written. Re-entrant within a process;
    released by the operating system if its holder dies.
    """
    lock = _lock_for(Path(folder) / ".report.lock")
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def lock_held(folder: str | os.PathLike[str], key: str) -> bool:
    """Whether another process holds the lock of ``key`` now (probes it for an instant)."""
    with unit_lock(folder, key, blocking=False) as got:
        return not got


def held_locks(folder: str | os.PathLike[str]) -> list[str]:
    """Keys whose lock another process holds now (``locks/*.lock`` probed one by one)."""
    out = []
    for p in sorted((Path(folder) / "locks").glob("*.lock")):
        if lock_held(folder, p.stem):
            out.append(p.stem)
    return out


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

class Checkpoints:
    """Finished pieces of a long computation, kept on disk until the whole is done.

    Parameters
    ----------
    folder : path
        Where the pieces live (``<key>.pkl``); created on the first write.

    Attributes
    ----------
    computed, reused : int
        Pieces computed by this object, and pieces read back from the folder.
    reused_seconds : float
        The compute time the read-back pieces took when they were computed (so a resumed run
        can report the time of the whole computation).

    Examples
    --------
    >>> import tempfile
    >>> cp = Checkpoints(tempfile.mkdtemp())
    >>> cp.run("a" * 16, lambda: [1, 2])
    [1, 2]
    >>> cp.run("a" * 16, lambda: 1 / 0)       # read back, not recomputed
    [1, 2]
    """

    _KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.computed = 0
        self.reused = 0
        self.reused_seconds = 0.0

    def path(self, key: str) -> Path:
        """The file of ``key`` (letters, digits, ``_`` and ``-``; a hash, typically)."""
        if not isinstance(key, str) or not self._KEY.match(key):
            raise ValueError(f"checkpoint key must be 1-128 characters of [A-Za-z0-9_-], "
                             f"got {key!r}")
        return self.folder / f"{key}.pkl"

    def run(self, key: str, compute: Callable[[], Any]) -> Any:
        """The piece ``key``: read back when stored, else ``compute()`` stored and returned."""
        path = self.path(key)
        if path.is_file():
            try:
                with open(path, "rb") as fh:
                    record = pickle.load(fh)
                value, seconds = record["value"], float(record["seconds"])
            except Exception as exc:  # a damaged or foreign file: recompute, never trust
                _warn(f"checkpoint {path} could not be read back ({type(exc).__name__}: "
                      f"{exc}); recomputing it")
            else:
                self.reused += 1
                self.reused_seconds += seconds
                return value
        t0, r0 = time.perf_counter(), self.reused_seconds
        value = compute()
        # a piece made of smaller pieces read back (a resumed part): its time includes theirs
        seconds = time.perf_counter() - t0 + (self.reused_seconds - r0)
        record = {"value": value, "seconds": seconds}
        atomic_write(path, lambda fh: pickle.dump(record, fh, protocol=pickle.HIGHEST_PROTOCOL))
        self.computed += 1
        return value

    def discard(self, key: str) -> None:
        """Remove the piece ``key`` (a step no longer needed once its whole is stored)."""
        self.path(key).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove the folder and every piece in it (once the whole result is stored)."""
        shutil.rmtree(self.folder, ignore_errors=True)
