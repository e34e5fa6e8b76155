"""What every command group of the CLI shares: the parser class whose errors are one line, the
checked argparse ``type=`` converters, the help texts used by several commands, and small helpers
(the command line as typed, the torch thread count, comma-separated names).

A flag's value is checked while parsing: ``--k abc`` or ``--threads -2`` end with
``icldistill CMD: error: --k must be ...`` and exit status 2 before any computation starts.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "CACHE_HELP", "DTYPE_HELP", "QUIET_HELP", "SEEDS_HELP", "CommandParser", "add_device",
    "add_dtype", "add_quiet", "check_local_device", "command_line", "device_name",
    "device_spec", "encoder_spec", "finite_float", "names", "nonnegative_int", "positive_float",
    "positive_int", "positive_int_list", "resolve_dtype", "selector_param", "set_threads",
    "split_names", "split_test_size", "thread_count", "token_positions",
]

CACHE_HELP = ("cache folder (default: $ICLDISTILL_CACHE, else $XDG_CACHE_HOME/icldistill, else "
              "~/.cache/icldistill)")
QUIET_HELP = "no progress bars or status lines on stderr"
SEEDS_HELP = ("number of seeds of each randomised selector: seeds 0..N-1 (default 3); "
              "deterministic selectors run once")
DTYPE_HELP = ("precision of the model's weights (default float32); bfloat16 keeps the logits "
              "in float32 and is ~3x faster on CPUs with bf16 instructions (AVX512-BF16, AMX), "
              "several times slower on others (a warning says so); auto: bfloat16 where it is "
              "faster on this machine, else float32 (measured; the units record the choice)")


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage dump), exit status 2.

    Sub-parsers made with ``add_subparsers().add_parser`` are of this class too.
    """

    _argv: Sequence[str] = ()

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> Any:
        self._argv = list(sys.argv[1:] if args is None else args)   # for error()
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_argparse_message(message, self._argv)}; see "
                     f"'{self.prog} --help'\n")


def _argparse_message(message: str, argv: Sequence[str] = ()) -> str:
    """``argument --k: must be ...`` -> ``--k must be ...``; other ``argument X:`` -> ``X:``.

    A flag with aliases (``argument --ks/--k: ...``) is named as the user spelled it in
    ``argv`` (else by its first spelling)."""
    message = " ".join(message.split())
    m = re.match(r"argument ([^:]+): (.*)$", message)
    if not m:
        return message
    name, rest = m.groups()
    if "/" in name and name.startswith("-"):
        spellings = name.split("/")
        typed = [f for f in spellings
                 if any(a == f or a.startswith(f + "=") for a in argv)]
        name = typed[-1] if typed else spellings[0]
    return f"{name} {rest}" if rest.startswith("must ") else f"{name}: {rest}"


# ------------------------------------------------------------------------ checked value types
class _TooLarge(ValueError):
    """A number above what the flag can take (its message is the requirement)."""


def _type(convert: Callable[[str], Any], requirement: str, name: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``convert`` (raising ValueError) with the message
    ``must be <requirement>, got '<value>'``."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except _TooLarge as exc:
            raise argparse.ArgumentTypeError(f"must be {exc}, got {text!r}") from None
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None

    parse.__name__ = name
    return parse


_INT64_MAX = 2**63 - 1
_MAX_THREADS = 1024


def _int(text: str, minimum: int, maximum: int = _INT64_MAX) -> int:
    value = int(text.strip())  # ValueError for "abc", "1.5", ""
    if value < minimum:
        raise ValueError(text)
    if value > maximum:
        raise _TooLarge(f"at most {maximum if maximum < 10**6 else '2**63-1'}")
    return value


positive_int = _type(lambda t: _int(t, 1), "a positive integer", "positive_int")
nonnegative_int = _type(lambda t: _int(t, 0), "a non-negative integer", "nonnegative_int")
thread_count = _type(lambda t: _int(t, 1, _MAX_THREADS), "a positive number of threads (omit it "
                     "for torch's default)", "threads")


def _device(text: str, check: Any) -> str:
    """``check(text)`` (:func:`~icldistill.models.registry.resolve_device` or
    :func:`~icldistill.models.registry.parse_device`) as an argparse type: its error, without
    the ``device 'x':`` prefix argparse adds itself."""
    from icldistill.core.validation import InputError

    try:
        return str(check(text.strip()))
    except InputError as exc:
        msg = str(exc).removeprefix(f"device {text.strip()!r}: ")
        raise argparse.ArgumentTypeError(msg) from None


def encoder_spec(text: str) -> str:
    """An argparse ``type=``: a well-formed encoder spec (``minilm``, ``hidden:L[:pooling]``,
    ``kv:L[:heads]``, ``kv:auto``), checked before any data or model is loaded."""
    from icldistill.core.validation import InputError
    from icldistill.encoders.representations import check_encoder_spec

    try:
        return check_encoder_spec(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_name(text: str) -> str:
    """An argparse ``type=``: a device that exists here (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``), checked before any data or model is loaded."""
    from icldistill.models.registry import resolve_device

    return _device(text, resolve_device)


def device_spec(text: str) -> str:
    """An argparse ``type=``: a device name torch knows (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``), without asking whether this machine has it (``--backend ray`` names the
    workers' device; the local backend checks it with :func:`check_local_device`)."""
    from icldistill.models.registry import parse_device

    return _device(text, parse_device)


def check_local_device(args: argparse.Namespace) -> None:
    """Refuse ``--device`` when the units run here (``--backend local``) and this machine
    lacks it, before any data or model is loaded."""
    if getattr(args, "backend", "local") == "local":
        from icldistill.models.registry import resolve_device

        resolve_device(args.device)


def _int_list(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    return tuple(_int(v, 1) for v in parts)


positive_int_list = _type(_int_list, "a positive integer or a comma-separated list of them "
                          "such as 4,8", "int_list")


def _finite(text: str, positive: bool) -> float:
    value = float(text)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(text)
    return value


positive_float = _type(lambda t: _finite(t, True), "a finite positive number", "positive_float")
finite_float = _type(lambda t: _finite(t, False), "a finite number", "finite_float")


def _test_size_value(text: str) -> int | float:
    value = _finite(text, True)
    if value == 1 and text.strip() != "1":      # "1.0": one item or the whole file? neither
        raise ValueError(text)
    if value >= 1:
        if not value.is_integer():
            raise ValueError(text)
        return int(value)
    return value


split_test_size = _type(_test_size_value, "a number of test items (an integer >= 1) or a "
                        "fraction between 0 and 1", "test_size")


def _positions_value(text: str) -> str | list[int]:
    if text in ("query", "last", "all"):
        return text
    return [int(v) for v in text.split(",")]


token_positions = _type(_positions_value, "query, last, all or a comma-separated list of integer "
                        "token positions (negative ones as --positions=-1)", "positions")


def _names_value(text: str) -> str:
    if not split_names(text):
        raise ValueError(text)
    return text


names = _type(_names_value, "one name or a comma-separated list of names", "names")


def _param_value(text: str) -> str:
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(text)
    return text


selector_param = _type(_param_value, "NAME=VALUE (e.g. --param lam=0.5)", "param")


# ---------------------------------------------------------------------------------- helpers
def split_names(text: str | None) -> list[str]:
    """The non-empty, stripped items of a comma-separated list (``None`` gives ``[]``)."""
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def add_device(p: argparse.ArgumentParser, *, remote: bool = False) -> None:
    """The ``--device`` flag of commands that run a model (trace, select, evaluate, compare);
    ``remote``: the command can run on other machines (``--backend ray``), where the device is
    checked instead (:func:`check_local_device` checks it for local runs)."""
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   type=device_spec if remote else device_name,
                   help="where models, their key/value caches and encoders run: cpu "
                        "(default), cuda, cuda:N or mps; an unavailable device is an error"
                        + (" (with --backend ray: on the workers)" if remote else ""))


def add_dtype(p: argparse.ArgumentParser) -> None:
    """The ``--dtype`` flag of commands that load a model (trace, evaluate, compare)."""
    p.add_argument("--dtype", default="float32",
                   choices=("float32", "bfloat16", "float16", "auto"), help=DTYPE_HELP)


def resolve_dtype(args: argparse.Namespace) -> None:
    """``--dtype auto``: the faster precision on this machine's ``--device``
    (:func:`icldistill.models.preferred_dtype`), said on stderr; refused with ``--backend ray``,
    whose workers may be other machines."""
    if args.dtype != "auto":
        return
    if getattr(args, "backend", "local") != "local":
        from icldistill.core.validation import InputError

        raise InputError("--dtype auto measures this machine; with --backend ray name the "
                         "workers' precision (float32 or bfloat16)")
    from icldistill.core.progress import log
    from icldistill.models.registry import half_precision_speed, preferred_dtype, resolve_device

    args.dtype = preferred_dtype(args.device)
    why = (f"bfloat16 matrix products run at {half_precision_speed():.2f}x float32 on this CPU"
           if resolve_device(args.device).type == "cpu" else f"on {args.device}")
    log(not args.quiet, f"--dtype auto: {args.dtype} ({why})")


def add_quiet(p: argparse.ArgumentParser) -> None:
    """The ``--quiet`` flag of commands that show progress."""
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def command_line(args: argparse.Namespace) -> str:
    """The command as the user typed it (``icldistill ...``), for reports."""
    return "icldistill " + " ".join(getattr(args, "argv", None) or [args.command])


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` to torch when it was given (torch's default otherwise)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
