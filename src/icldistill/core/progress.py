"""Progress on stderr: the one helper behind every progress bar of the package (and, while a
model loads, transformers' own bars).

- On a terminal a bar is an ordinary tqdm bar, redrawn in place.
- When stderr is not a terminal (a log file, a pipe, a CI job) a bar is plain lines instead: one
  when it starts, at most one every :func:`line_interval` seconds (30 s by default,
  ``$ICLDISTILL_PROGRESS_INTERVAL`` to change it) and one when it ends; no carriage returns, no
  cursor movement, no escape codes.
- Inside :func:`quiet_scope` (the CLI's ``--quiet``) every bar is off, transformers' and
  huggingface_hub's included, and transformers logs errors only (its warnings are silenced).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["line_interval", "log", "progress_bar", "quiet", "quiet_scope"]

_QUIET = False
#: Seconds between two lines of a bar when stderr is not a terminal (default).
DEFAULT_LINE_INTERVAL = 30.0
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78]")
_LINE_FORMAT = "{desc} {percentage:.0f}% ({n_fmt}/{total_fmt}) [{elapsed}<{remaining}, " \
               "{rate_fmt}{postfix}]"


def quiet() -> bool:
    """Whether progress is off (inside :func:`quiet_scope` with ``on=True``)."""
    return _QUIET


@contextlib.contextmanager
def quiet_scope(on: bool = True) -> Iterator[None]:
    """Turn every progress bar off while the block runs (when ``on``), and transformers'
    logging down to errors (``$TRANSFORMERS_VERBOSITY=error`` for an import inside the block);
    everything is restored afterwards."""
    global _QUIET
    before = _QUIET
    if not on:
        yield
        return
    _QUIET = True
    env = os.environ.get("TRANSFORMERS_VERBOSITY")
    hf = sys.modules.get("transformers.utils.logging")
    level = hf.get_verbosity() if hf is not None else None
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    if hf is not None:
        hf.set_verbosity_error()
    try:
        yield
    finally:
        _QUIET = before
        if env is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = env
        hf = sys.modules.get("transformers.utils.logging")
        if hf is not None:            # imported before the block, or inside it
            default = getattr(hf, "_get_default_logging_level", lambda: hf.WARNING)
            hf.set_verbosity(level if level is not None else default())


def line_interval() -> float:
    """Seconds between two progress lines when stderr is not a terminal:
    ``$ICLDISTILL_PROGRESS_INTERVAL`` (a number >= 0), else 30."""
    text = os.environ.get("ICLDISTILL_PROGRESS_INTERVAL", "").strip()
    try:
        value = float(text) if text else DEFAULT_LINE_INTERVAL
    except ValueError:
        return DEFAULT_LINE_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_LINE_INTERVAL


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class _LineWriter:
    """A file for tqdm that turns its redraws into whole lines: carriage returns, cursor moves
    and escape codes are dropped; blank lines, and a line that reports the same count as the
    one before (only its times differ, e.g. a bar's closing redraw), are not written."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._last: str | None = None

    def write(self, text: str) -> int:
        for piece in re.split(r"[\r\n]+", _ESCAPES.sub("", str(text))):
            line = piece.strip()
            count = line.split(" [", 1)[0]      # "desc 40% (4/10)" without times and rates
            if line and count != self._last:
                self._stream.write(line + "\n")
                self._last = count
        return len(text)

    def flush(self) -> None:
        flush = getattr(self._stream, "flush", None)
        if flush is not None:
            flush()

    def isatty(self) -> bool:
        return False


def _line_tqdm() -> type:
    """tqdm whose postfix and description changes wait for the next periodic line (a plain
    tqdm redraws at once, which would print a line per change)."""
    import tqdm.std

    class LineTqdm(tqdm.std.tqdm):  # type: ignore[misc]
        def set_postfix(self, ordered_dict: Any = None, refresh: bool = True,
                        **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            super().set_postfix_str(s, refresh=False)

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            super().set_description_str(desc or "", refresh=False)  # no ": " (see the format)

        def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
            super().set_description_str(desc, refresh=False)

    return LineTqdm


# Options that only make sense for a bar redrawn in place; ignored for plain lines.
_TERMINAL_ONLY = ("dynamic_ncols", "ncols", "nrows", "bar_format", "ascii", "colour",
                  "position", "mininterval", "maxinterval", "miniters", "delay", "leave")


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True,
                 desc: str | None = None, total: float | None = None, unit: str = "it",
                 leave: bool | None = False, **kwargs: Any) -> Any:
    """A tqdm progress bar on stderr (the object supports ``update``, ``set_postfix[_str]``,
    ``close``, iteration and ``with``).

    Off when ``enabled`` is false, when ``kwargs`` has a true ``disable``, or inside
    :func:`quiet_scope`. On a terminal: a tqdm bar (``leave`` as given, ``tqdm.auto``). Else
    plain lines (see the module docstring): a start line, at most one line every
    :func:`line_interval` seconds, and a final line.
    """
    import tqdm.std

    disable = kwargs.pop("disable", False)
    kwargs.pop("file", None)
    stream = sys.stderr
    if _QUIET or not enabled or disable or stream is None:
        return tqdm.std.tqdm(iterable, total=total, desc=desc, disable=True)
    if _is_terminal(stream):
        from tqdm.auto import tqdm as auto_tqdm

        return auto_tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=stream,
                         **kwargs)
    for key in _TERMINAL_ONLY:
        kwargs.pop(key, None)
    interval = line_interval()
    return _line_tqdm()(iterable, desc=desc or "progress", total=total, unit=unit,
                         file=_LineWriter(stream), leave=True, bar_format=_LINE_FORMAT,
                         mininterval=interval, maxinterval=max(interval, 1.0), delay=0,
                         ascii=True, dynamic_ncols=False, **kwargs)


def log(progress: bool, msg: str) -> None:
    """Print ``[icldistill] msg`` to stderr when ``progress`` is on (never inside
    :func:`quiet_scope`, i.e. under the CLI's ``--quiet``). The package's one status-line
    helper."""
    if progress and not quiet():
        print(f"[icldistill] {msg}", file=sys.stderr, flush=True)
