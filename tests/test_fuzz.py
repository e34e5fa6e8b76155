"""Fuzzing the user-file readers and the command line: an answer or a clear error, never a
traceback.

(a) ``load_file``, ``load_matrix`` and ``load_demonstrations`` on random bytes and on random
CSV / JSONL / ``.npy``-like content: they return data or raise :class:`InputError`, nothing else.
(b) ``main`` on random argument lists built from the parser's real commands and flags with random
values: it returns (or exits with) 0 or 2, and on 2 prints exactly one error line. Everything
that would load a model, download, train or run a grid is replaced by a stub raising
``InputError``, so the fuzz is fast and offline.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icldistill.cli import build_parser, main
from icldistill.cli.readers import load_demonstrations, load_matrix
from icldistill.core.validation import InputError
from icldistill.data.datasets import Dataset, load_file

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------------------ (a) the readers
_NAMES = st.sampled_from(["text", "label", "input", "note", "", " text", "Label", "label"])
_CELL = st.one_of(st.text(max_size=12), st.sampled_from(['"', '""', "a,b", "x\ny", "\t", "\r",
                                                        "1e400", "nan", "é", "\x00", "\ufeff"]))


@st.composite
def _delimited(draw) -> str:
    delim = draw(st.sampled_from([",", "\t", ";"]))
    header = draw(st.one_of(st.just(["text", "label"]), st.just(["label", "note", "text"]),
                            st.lists(_NAMES, min_size=0, max_size=4)))
    width = len(header)
    rows = draw(st.lists(st.one_of(st.lists(_CELL, min_size=width, max_size=width),
                                   st.lists(_CELL, max_size=5)), max_size=6))
    return "\n".join(delim.join(r) for r in [header, *rows])


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=3),
    max_leaves=8)


@st.composite
def _jsonl(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
        if kind == 0:  # an object, often with the fields read, sometimes with repeated keys
            pairs = draw(st.lists(st.tuples(_NAMES, _JSON_VALUES), max_size=4))
            if draw(st.booleans()):
                pairs = [("text", draw(_CELL)), ("label", draw(_CELL)), *pairs]
            lines.append("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
                         + "}")
        elif kind == 1:
            lines.append(json.dumps(draw(_JSON_VALUES)))
        elif kind == 2:
            lines.append(draw(st.text(max_size=20)))
        else:
            lines.append("[" * draw(st.integers(1, 3000)))
    return "\n".join(lines)


@st.composite
def _encoded(draw, text: st.SearchStrategy[str]) -> bytes:
    s = draw(text)
    enc = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cut"]))
    if enc == "cut":  # UTF-8 cut inside a character
        b = s.encode("utf-8")
        return b[: draw(st.integers(0, len(b)))] + "é".encode()[:1]
    return s.encode(enc, errors="replace")


@st.composite
def _npy_like(draw) -> bytes:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return b"\x93NUMPY" + draw(st.binary(max_size=64))
    descr = draw(st.sampled_from(["<f8", "<f4", "<i8", "|b1", "<c16", "|O", "<U3", "|V4", "<M8[s]",
                                  "[('a', '<f8')]", "<f2", "bogus"]))
    shape = draw(st.lists(st.integers(-2, 10**13), max_size=3))
    fortran = draw(st.booleans())
    descr_text = descr if descr.startswith("[") else repr(descr)
    dims = "".join(f"{n}," for n in shape)
    header = f"{{'descr': {descr_text}, 'fortran_order': {fortran}, 'shape': ({dims}), }}"
    header = header.encode("latin-1")
    pad = 64 - (10 + len(header) + 1) % 64
    head = b"\x93NUMPY\x01\x00" + (len(header) + pad + 1).to_bytes(2, "little") + header \
        + b" " * pad + b"\n"
    if kind == 2 and draw(st.booleans()):
        head = head[: draw(st.integers(0, len(head)))]
    return head + draw(st.binary(max_size=256))


_SUFFIXES = st.sampled_from([".csv", ".tsv", ".tab", ".jsonl", ".json", ".csv.gz", ".jsonl.bz2",
                             ".txt", ".ndjson"])


def _reader_calls(path: Path):
    yield lambda: load_file(path, text_field="text", label_field="label")
    yield lambda: load_file(path, text_field="text", label_field="label", pair_fields=["note"])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _write(folder: Path, suffix: str, content: bytes) -> Path:
    p = folder / f"f{suffix}"
    if suffix.endswith(".gz") and content[:2] != b"\x1f\x8b":
        content = gzip.compress(content) if len(content) % 3 else content  # some are not gzip
    p.write_bytes(content)
    return p


@FUZZ
@given(suffix=_SUFFIXES, content=st.one_of(st.binary(max_size=300),
                                          _encoded(_delimited()), _encoded(_jsonl())))
def test_load_file_returns_a_dataset_or_raises_input_error(scratch, suffix, content):
    p = _write(scratch, suffix, content)
    for call in _reader_calls(p):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = call()
            except InputError:
                continue
        assert isinstance(ds, Dataset) and len(ds) >= 1


@FUZZ
@given(suffix=st.sampled_from([".npy", ".csv", ".tsv", ".txt"]),
       content=st.one_of(st.binary(max_size=300), _npy_like(), _encoded(_delimited())))
def test_load_matrix_returns_a_matrix_or_raises_input_error(scratch, suffix, content):
    p = _write(scratch, suffix, content)
    try:
        arr = load_matrix(p)
    except InputError:
        return
    assert isinstance(arr, np.ndarray) and arr.ndim == 2
    assert not np.iscomplexobj(arr)


@FUZZ
@given(content=st.one_of(st.binary(max_size=300), _encoded(_jsonl())))
def test_load_demonstrations_returns_pairs_or_raises_input_error(scratch, content):
    p = _write(scratch, ".jsonl", content)
    try:
        demos = load_demonstrations(p, text_field="text", label_field="label")
    except InputError:
        return
    assert demos and all(isinstance(a, str) and isinstance(b, str) for a, b in demos)


# ------------------------------------------------------------------ (b) the command line
def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(command path, positional names, option strings)`` of every leaf command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subs:
        for name, sub in subs[0].choices.items():
            yield from _commands(sub, (*path, name))
        return
    flags = sorted(o for a in parser._actions for o in a.option_strings
                   if o.startswith("--") and o not in ("--help",))
    positionals = [a.dest for a in parser._actions if not a.option_strings]
    yield path, positionals, flags


COMMANDS = list(_commands(build_parser()))
ALL_FLAGS = sorted({f for _, _, flags in COMMANDS for f in flags})

_FILES = ["data/x.npy", "data/y.csv", "data/toy.csv", "data/demos.jsonl", "data/latin1.csv",
          "data/complex.npy", "data/text.npy", "data/empty.jsonl", "data/dup.csv", "data",
          "data/missing.csv"]
_VALUES = ["0", "1", "2", "-1", "-2", "abc", "", " ", "4,8", "4,,8", "2,", "1.5", "0.3", "1e309",
           "nan", "inf", "-inf", str(2**64), "3", "mmd", "knn", "random", "gaussian", "float32",
           "query", "last", "-1,2", "lam=0.5", "=", "x=", "hidden:-1", "kv:auto", "minilm",
           "smollm2-135m", "amazon", "tiny", "regression", "out", "text", "label", *_FILES]
# no "/" (nothing is written outside the scratch folder), no NUL (impossible in a real argv)
_SAFE_TEXT = st.text(st.characters(blacklist_characters="/\\~\x00",
                                   blacklist_categories=("Cs",)), max_size=10)
_VALUE = st.one_of(st.sampled_from(_VALUES), _SAFE_TEXT).filter(lambda v: v not in (".", ".."))


_PLAUSIBLE = st.sampled_from(["1", "2", "3", "0.3", "4,8", "2", "gaussian", "laplace", "knn",
                              "random", "query", "last", "out", *_FILES[:4]])


# a valid core per command, used in half the runs so that they reach the command's code
_CORE = {("mmd",): ["data/x.npy", "data/y.csv"],
         ("trace",): ["--demos", "data/demos.jsonl", "--query", "q", "--out", "out"],
         ("select",): ["--file", "data/toy.csv", "--out", "out"],
         ("evaluate",): ["--file", "data/toy.csv", "--out", "out"],
         ("compare",): ["--file", "data/toy.csv", "--out", "out"]}
_BY_TOP: dict[str, list] = {}
for _cmd in COMMANDS:
    _BY_TOP.setdefault(_cmd[0][0], []).append(_cmd)


@st.composite
def _argv(draw) -> list[str]:
    top = draw(st.sampled_from(sorted(_BY_TOP)))
    path, positionals, flags = draw(st.sampled_from(_BY_TOP[top]))
    if draw(st.integers(0, 9)) == 0:
        path = path[: draw(st.integers(0, len(path)))]  # a command cut short
    argv = list(path)
    if path in _CORE and draw(st.booleans()):
        argv += _CORE[path]
    else:
        argv += [draw(st.one_of(st.sampled_from(_FILES), _VALUE)) for _ in positionals
                 if draw(st.integers(0, 5))]
    value = _PLAUSIBLE if draw(st.booleans()) else _VALUE  # half the runs get past parsing
    for _ in range(draw(st.integers(0, 6 if value is _VALUE else 2))):
        flag = draw(st.sampled_from(flags if flags and draw(st.integers(0, 7)) else ALL_FLAGS))
        form = draw(st.integers(0, 3))
        if form == 0:
            argv.append(flag)
        elif form == 1:
            argv.append(f"{flag}={draw(value)}")
        else:
            argv += [flag, draw(value)]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(_VALUE))
    return argv


def _stub(*args, **kwargs):
    raise InputError("stub: not run in the fuzz test")


@pytest.fixture(scope="module")
def cli_sandbox(tmp_path_factory):
    """A scratch folder with data files, as the working folder, and stubs for the heavy parts."""
    import importlib

    import torch

    def mod(name: str):  # the module, even where the package exports a function of its name
        return importlib.import_module(f"icldistill.{name}")

    models_mod, mmd_mod, harness_mod = (mod("models.registry"), mod("core.mmd"),
                                         mod("evaluation.harness"))

    root = tmp_path_factory.mktemp("fuzz_cli")
    d = root / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    np.save(d / "x.npy", rng.normal(size=(8, 2)))
    np.savetxt(d / "y.csv", rng.normal(size=(6, 2)), delimiter=",")
    (d / "toy.csv").write_text("text,label\n" + "".join(f"item {i},{'ab'[i % 2]}\n"
                                                        for i in range(20)))
    (d / "demos.jsonl").write_text('{"input": "a", "label": "b"}\n{"input": "c", "label": "d"}\n')
    (d / "latin1.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    np.save(d / "complex.npy", np.ones((3, 2)) + 1j)
    (d / "text.npy").write_text("1,2\n")
    (d / "empty.jsonl").write_text("")
    (d / "dup.csv").write_text("text,label,label\nhi,a,b\n")

    real_mmd_test = mmd_mod.mmd_test

    def small_mmd_test(x, y, *args, permutations=100, **kwargs):
        return real_mmd_test(x, y, *args, permutations=min(permutations, 20), **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.chdir(root)
        m.setenv("ICLDISTILL_CACHE", str(root / "cache"))
        m.setattr(torch, "set_num_threads", lambda n: None)
        m.setattr(mmd_mod, "mmd_test", small_mmd_test)
        for module, names in ((models_mod, ("load_model", "fetch")),
                              (mod("encoders.representations"), ("verify_all",)),
                              (mod("encoders.representations"), ("fetch_minilm",)),
                              (mod("data.load"), ("load_split", "fetch_dataset")),
                              (mod("lab.training"), ("load_or_train",)),
                              (mod("lab.experiments.reproduce"), ("reproduce", "run_experiment")),
                              (mod("lab.experiments.real"), ("run",))):
            for name in names:
                m.setattr(module, name, _stub, raising=False)
        m.setattr(mod("lab.demo"), "run_demo", lambda *a, **k: None)
        m.setattr(harness_mod.Task, "from_registry", classmethod(_stub))
        m.setattr(harness_mod.Harness, "select", _stub)
        m.setattr(harness_mod.Harness, "run", _stub)
        yield root


@FUZZ
@given(argv=_argv())
def test_main_never_raises(cli_sandbox, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # main returns its status; tolerate an exit all the same
            code = exc.code
    assert code in (0, 2), (argv, code, err.getvalue())
    lines = err.getvalue().splitlines()
    assert not any(line.startswith("Traceback") for line in lines), (argv, lines)
    if code == 2:
        errors = [line for line in lines if ": error: " in line]
        assert len(errors) == 1 and errors[0] == lines[-1], (argv, lines)
        assert errors[0].startswith("icldistill"), (argv, lines)
