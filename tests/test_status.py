"""GridStatus.summary: the hours left per (model, k) and the wall time on several processes."""

from __future__ import annotations

import re

import pytest

from icldistill.evaluation import GridStatus, UnitStatus
from icldistill.evaluation.harness import UnitSpec


def _unit(model, k, state, n, scored, seconds, seed=0):
    return UnitStatus(UnitSpec(model, "t", "knn", k=k, seed=seed), f"{model}{k}{seed}", state, n,
                      scored, seconds)


def _grid():
    return GridStatus("/x", (
        _unit("a", 4, "done", 100, 100, 0.0),
        _unit("a", 4, "partial", 100, 40, 3600.0 * 0.6, seed=1),
        _unit("a", 8, "todo", 100, 0, None),
        _unit("b", 4, "running", 100, 10, 3600.0 * 9.0)))


def test_wall_time_is_at_least_the_longest_unit_left():
    """Regression: the wall time was the hours left divided by the processes (4.8 h on two),
    though one unit runs in one process: b's 9 h unit alone takes 9 h."""
    g = _grid()
    assert g.wall_seconds(2) == pytest.approx(9.0 * 3600)
    assert g.wall_seconds(1) == pytest.approx(9.6 * 3600)
    even = GridStatus("/x", tuple(_unit("a", 4, "todo", 10, 0, 3600.0, seed=s)
                                  for s in range(4)))
    assert even.wall_seconds(2) == pytest.approx(2 * 3600)
    assert "about 2.0 h of wall time" in even.summary(workers=2)
    assert GridStatus("/x", ()).wall_seconds(3) == 0.0


def test_unestimated_units_are_said_not_counted_as_zero():
    """Regression: a (model, k) whose units all lacked an estimate showed 0.0 hours, and the
    wall line left those units out without a word."""
    text = _grid().summary(workers=2)
    a8 = next(ln for ln in text.splitlines() if ln.startswith("a ") and " 8 " in ln[:30])
    assert re.search(r"\s\?\s\(\+1 units not estimated\)$", a8), a8
    assert "0.0 (+1" not in text
    total = next(ln for ln in text.splitlines() if ln.startswith("total"))
    assert total.endswith("9.6 (+1 units not estimated)")
    assert ("with 2 processes: about 9.0 h of wall time (the total divided among them, at "
            "least the longest unit left), not counting 1 unit not estimated") in text
    # a group with some done units and the others unestimated is "?" too
    g = GridStatus("/x", (_unit("c", 4, "done", 10, 10, 0.0),
                          _unit("c", 4, "todo", 10, 0, None, seed=1),
                          _unit("c", 4, "todo", 10, 0, None, seed=2)))
    lines = g.summary(workers=3).splitlines()
    assert lines[2].endswith("? (+2 units not estimated)")
    assert lines[-1].endswith("not counting 2 units not estimated")
    # everything estimated: no "?" and no remark
    done = GridStatus("/x", (_unit("c", 4, "done", 10, 10, 0.0),))
    assert "?" not in done.summary(workers=2) and "not estimated" not in done.summary(2)
