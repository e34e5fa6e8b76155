"""The default selector: one name, used by the CLI and the adapters, and backed by the committed
paired evidence (no selector beats it significantly on the mean over tasks)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from icldistill.cli.parser import build_parser
from icldistill.selection import DEFAULT_SELECTOR, SELECTORS

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "benchmarks" / "results" / "selection-grid"


def test_default_is_a_registered_selector():
    assert DEFAULT_SELECTOR in SELECTORS


@pytest.mark.parametrize(("argv", "dest"), [
    (["select", "--dataset", "amazon"], "selector"),
    (["evaluate", "--dataset", "amazon"], "selector"),
])
def test_cli_commands_default_to_it(argv, dest):
    args = build_parser().parse_args(argv)
    value = getattr(args, dest)
    assert value in (DEFAULT_SELECTOR, [DEFAULT_SELECTOR])


def test_adapters_default_to_it():
    pytest.importorskip("langchain_core")
    pytest.importorskip("dspy")
    from icldistill.adapters.dspy import ICLDistillFewShot
    from icldistill.adapters.langchain import ICLDistillExampleSelector

    for fn in (ICLDistillFewShot.__init__, ICLDistillExampleSelector.__init__,
               ICLDistillExampleSelector.from_examples):
        assert inspect.signature(fn).parameters["selector"].default == DEFAULT_SELECTOR, fn


def _paired_records() -> list[dict]:
    path = GRID / "paired.json"
    if not path.exists():
        pytest.skip("no committed selection grid")
    return json.loads(path.read_text())


def test_no_selector_beats_the_default_in_the_committed_grid():
    """If the grid ever shows a selector beating the default on the mean over tasks (Holm p <
    0.05), this fails: the default, the README's advice and this test must then change
    together."""
    recs = [r for r in _paired_records()
            if r["task"] == "mean" and r["baseline"] == DEFAULT_SELECTOR]
    assert recs, "the grid compares every selector with the default on the mean over tasks"
    winners = [(r["model"], r["k"], r["selector"], round(r["diff"], 4), r["p_holm"])
               for r in recs if r["diff"] > 0 and r["p_holm"] < 0.05]
    assert winners == []
    # and, on every task and the mean, it is never significantly worse than random
    vs_random = [r for r in _paired_records()
                 if r["baseline"] == "random" and r["selector"] == DEFAULT_SELECTOR]
    assert vs_random
    assert [r for r in vs_random if r["diff"] < 0 and r["p_holm"] < 0.05] == []
