"""The CLI speaks one set of conventions (issue 16 item 8).

- every option, argument and subcommand of every command has help text (no "see above");
- ``evaluate`` and ``compare`` share one flag vocabulary (plural, comma-separated lists) and
  accept the singular spellings as aliases; ``lab`` phenomena take ``--datasets`` (``--tasks``);
- ``icldistill --help`` and the module docstring list the exit statuses;
- progress bars go through one helper: plain lines (no ``\\r``, no escape codes) when stderr is
  not a terminal, a redrawn bar on a terminal, nothing inside ``quiet_scope`` (``--quiet``),
  transformers' own bars included;
- report text does not cite the specification users do not have (``SPEC``).
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from icldistill.cli import app as cli
from icldistill.cli import build_parser, main
from icldistill.core.progress import progress_bar, quiet, quiet_scope
from icldistill.models.progress import transformers_progress

SRC = Path(__file__).resolve().parents[1] / "src" / "icldistill"


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("icldistill",),
          summary: str = "-") -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """``(command path, parser, its summary)`` of the parser and every subcommand below it."""
    yield path, parser, summary
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name), summaries.get(name, ""))


def test_every_option_of_every_command_has_help():
    problems = []
    commands = 0
    for path, parser, summary in _walk(build_parser()):
        commands += 1
        where = " ".join(path)
        if not summary.strip():
            problems.append(f"{where}: no summary in its parent's command list")
        parser.format_help()                       # every help string formats (no stray %)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            text = action.help if action.help != argparse.SUPPRESS else ""
            if not (text or "").strip():
                problems.append(f"{where} {name}: no help")
            elif "see above" in text.lower():
                problems.append(f"{where} {name}: help refers to 'see above'")
    assert commands > 20
    assert not problems, "\n".join(problems)


def test_a_summary_that_lists_subcommands_lists_all_of_them():
    """``models`` (list, fetch, verify) and ``data`` (list, summary) name every subcommand."""
    checked = []
    for path, parser, summary in _walk(build_parser()):
        listed = re.search(r"\(([a-z-]+(?:, [a-z-]+)+)\)$", summary)
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if listed and subs:
            assert listed.group(1).split(", ") == list(subs[0].choices), (path, summary)
            checked.append(path[-1])
    assert sorted(checked) == ["data", "models"]


@pytest.mark.parametrize("command", ["select", "evaluate", "compare"])
def test_test_size_help_gives_the_default_for_a_file(command):
    """``--test-size`` defaults to the dataset's split, and to 0.3 for ``--file``."""
    parser = dict((p[-1], q) for p, q, _ in _walk(build_parser()))[command]
    (action,) = [a for a in parser._actions if "--test-size" in a.option_strings]
    assert action.default is None
    assert "0.3 for --file" in action.help


GRID = {"--models": "models", "--datasets": "datasets", "--selectors": "selectors",
        "--ks": "ks"}
ALIASES = {"--model": "--models", "--dataset": "--datasets", "--selector": "--selectors",
           "--k": "--ks"}


@pytest.mark.parametrize("command", ["evaluate", "compare"])
@pytest.mark.parametrize("spelling", ["plural", "singular"])
def test_evaluate_and_compare_share_one_flag_vocabulary(command, spelling):
    flags = list(GRID) if spelling == "plural" else list(ALIASES)
    values = ["a,b", "x,y", "mmd,knn", "4,8"]
    argv = [command]
    for flag, value in zip(flags, values, strict=True):
        argv += [flag, value]
    args = vars(build_parser().parse_args(argv))
    dests = ["model", "dataset", "selector", "k"] if command == "evaluate" else list(GRID.values())
    assert [args[d] for d in dests] == ["a,b", "x,y", "mmd,knn", (4, 8)]   # evaluate keeps
    #                                                      its historical attribute names


@pytest.mark.parametrize(("argv", "named"), [
    (["compare", "--ks", "abc"], "--ks must be"),
    (["compare", "--k", "abc"], "--k must be"),
    (["evaluate", "--k=0"], "--k must be"),
    (["evaluate", "--ks", "4,x"], "--ks must be"),
    (["evaluate", "--model", ""], "--model must be"),
])
def test_a_bad_value_is_named_as_the_user_spelled_the_flag(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1, err


def test_evaluate_and_compare_take_the_same_grid_flags():
    def options(command):
        parser = dict((p[-1], q) for p, q, _ in _walk(build_parser()))[command]
        return {s for a in parser._actions for s in a.option_strings}

    shared = {*GRID, *ALIASES, "--seeds", "--orderings", "--encoder", "--n-test", "--file",
              "--batch-size", "--dtype", "--out", "--quiet"}
    assert shared <= options("evaluate") and shared <= options("compare")


@pytest.mark.parametrize("flag", ["--datasets", "--tasks"])
def test_lab_phenomena_take_datasets_and_the_old_tasks_spelling(flag):
    args = build_parser().parse_args(["lab", "adaptation", flag, "amazon,r8"])
    assert args.tasks == "amazon,r8"


def test_help_lists_the_exit_statuses_and_the_quick_run_time(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "exit status:" in text
    for code, word in (("0", "success"), ("1", "internal error"), ("2", "bad input"),
                       ("130", "interrupted")):
        assert re.search(rf"^\s+{code}\s+{word}", text, re.MULTILINE), (code, text)
    assert "ICLDISTILL_CACHE" in text and "--quiet" in text
    doc = cli.__doc__ or ""
    assert "Exit status" in doc and "130" in doc and "internal error" in doc
    assert main(["reproduce", "--help"]) == 0
    assert "about 10 minutes on 2 cores" in " ".join(capsys.readouterr().out.split())


def test_every_command_runs_from_its_group_module():
    """The CLI's layout: each command group is one ``icldistill.cli.cmd_*`` module that adds its
    parsers and holds the functions that run its commands."""
    from icldistill.cli.parser import GROUPS

    runners = {}
    for path, parser, _ in _walk(build_parser()):
        func = parser._defaults.get("func")
        if func is not None:
            runners[" ".join(path[1:])] = func.__module__
    assert len(runners) >= 20 and {"mmd", "lab train", "reproduce"} <= set(runners)
    groups = {g.__name__ for g in GROUPS}
    assert set(runners.values()) == groups, runners
    assert all(name.startswith("icldistill.cli.cmd_") for name in groups)


def test_version_flag(capsys):
    from icldistill import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"icldistill {__version__}"


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_report_text_does_not_cite_the_spec():
    """Docstrings may say "SPEC §n" (docs/math.md explains the tag); text that reaches a report
    or the console cites docs/math.md instead."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in skip and re.search(r"\bSPEC\b", node.value)):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value[:60]!r}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------------- progress
class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def _stderr(monkeypatch, tty: bool) -> _Stream:
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_bars_off_a_terminal_are_plain_lines(monkeypatch):
    err = _stderr(monkeypatch, tty=False)
    monkeypatch.setenv("ICLDISTILL_PROGRESS_INTERVAL", "0")
    with progress_bar(total=4, desc="work", unit="step") as bar:
        for i in range(4):
            bar.set_postfix_str(f"item {i}", refresh=False)
            bar.update(1)
    with progress_bar(total=2, desc="outer", leave=True) as outer:
        for _ in range(2):
            for _ in progress_bar(range(3), desc="inner"):
                pass
            outer.update(1)
    text = err.getvalue()
    assert text and "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert all(line.strip() == line and line for line in lines)
    assert lines[0].startswith("work") and "0%" in lines[0]
    assert [ln for ln in lines if ln.startswith("work")][-1].startswith("work 100% (4/4)")
    assert [ln for ln in lines if ln.startswith("outer")][-1].startswith("outer 100% (2/2)")
    assert sum(ln.startswith("inner 0% (0/3)") for ln in lines) == 2  # each inner bar starts
    assert sum(ln.startswith("inner 100% (3/3)") for ln in lines) == 2    # ... and ends once


def test_bars_off_a_terminal_print_at_most_one_line_per_interval(monkeypatch):
    err = _stderr(monkeypatch, tty=False)
    monkeypatch.delenv("ICLDISTILL_PROGRESS_INTERVAL", raising=False)
    bar = progress_bar(total=5000, desc="fast", unit="item")
    for _ in range(5000):
        bar.update(1)
    bar.close()
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("fast 100% (5000/5000)")   # start, end


def test_bars_on_a_terminal_are_redrawn(monkeypatch):
    err = _stderr(monkeypatch, tty=True)
    with progress_bar(total=3, desc="tty", mininterval=0) as bar:
        bar.update(3)
    assert "\r" in err.getvalue() and "tty" in err.getvalue()


def test_quiet_scope_turns_every_bar_off(monkeypatch):
    err = _stderr(monkeypatch, tty=False)
    assert not quiet()
    with quiet_scope(True):
        assert quiet()
        for _ in progress_bar(range(3), desc="silent"):
            pass
        bar = progress_bar(total=2, desc="silent", enabled=True)
        bar.update(2)
        bar.set_postfix(x=1)
        bar.close()
    with quiet_scope(False):
        assert not quiet()
    assert not quiet()
    assert err.getvalue() == ""
    assert progress_bar(range(2), enabled=False).disable


def test_transformers_bars_go_through_the_helper_and_quiet_silences_them(monkeypatch):
    from transformers.utils import logging as hf_logging

    before = (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity())
    err = _stderr(monkeypatch, tty=False)
    with transformers_progress(True):
        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
            pass
    text = err.getvalue()
    assert "Loading weights" in text and "\r" not in text and "\x1b" not in text
    err.truncate(0)
    err.seek(0)
    with quiet_scope(True), transformers_progress(True):
        assert hf_logging.get_verbosity() == hf_logging.ERROR
        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
            pass
        hf_logging.get_logger("transformers.test").warning("a warning nobody asked for")
    with transformers_progress(False):
        for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
            pass
    assert err.getvalue() == ""
    assert (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()) == before


def test_lab_train_prints_settings_not_a_dict(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ICLDISTILL_CACHE", str(tmp_path / "cache"))
    assert main(["lab", "train", "--preset", "tiny", "--steps", "3", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "regression model: " in captured.out and "{'" not in captured.out
    assert captured.err == ""


def test_postfix_changes_off_a_terminal_wait_for_the_next_line(monkeypatch):
    err = _stderr(monkeypatch, tty=False)
    monkeypatch.delenv("ICLDISTILL_PROGRESS_INTERVAL", raising=False)
    with progress_bar(total=50, desc="units", unit="unit", leave=True) as bar:
        for i in range(50):
            bar.set_postfix_str(f"unit {i}")
            bar.set_postfix(loss=i)
            bar.set_description("units")
            bar.update(1)
    lines = err.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("units 100% (50/50)"), lines
