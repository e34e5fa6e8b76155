"""icldistill.evaluation.compare_precisions: the same unit in two precisions, paired on the
same test items (agreement, accuracy difference, McNemar p by enumeration, Holm), the report
section, and bench_fewshot.py keeping the other precision's units out of the grid's tables."""

from __future__ import annotations

import json
from dataclasses import replace
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.artifacts.store import write_json
from icldistill.core.validation import InputError
from icldistill.evaluation import (
    MetricResult,
    PrecisionComparison,
    UnitResult,
    UnitSpec,
    compare_precisions,
)
from icldistill.reporting.reports import write_comparison_report

from .scripts import load_script

LABELS = ("x", "y", "z")


def _unit(spec: UnitSpec, pred, truth):
    acc = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))
    metric = MetricResult(acc, max(0.0, acc - 0.1), min(1.0, acc + 0.1), 0.95)
    key = spec.key("data")
    res = UnitResult(spec, key, metric, metric, len(truth), 0.1, 0.1,
                     spec.selector == "random", 0.01, 1.0, 10, 100, {})
    return res, (list(pred), list(truth))


def _pairs(*units):
    return [u for u, _ in units], {u.key: p for u, p in units}


def _mcnemar_by_enumeration(b: int, c: int) -> float:
    """Two-sided exact McNemar: the probability, under Binomial(b + c, 1/2), of a split at
    least as unbalanced as the one seen."""
    n = b + c
    if n == 0:
        return 1.0
    seen = abs(b - c)
    return min(1.0, sum(comb(n, i) for i in range(n + 1) if abs(2 * i - n) >= seen) / 2 ** n)


def test_a_unit_is_paired_with_its_float32_twin():
    truth = ["x", "y"] * 10
    ref = ["x", "y"] * 10
    ref[0] = ref[1] = "z"                                  # float32: 18 right
    half = list(ref)
    half[0] = "x"                                          # bf16 fixes item 0: 19 right
    half[5] = "x"                                          # and breaks item 5: 18 right
    half[7] = "x"                                          # and item 7: 17 right
    spec = UnitSpec("m", "t", "knn", 8, dtype="bfloat16")
    units, preds = _pairs(_unit(spec, half, truth),
                          _unit(replace(spec, dtype="float32"), ref, truth),
                          _unit(UnitSpec("m", "t", "mmd", 8, dtype="bfloat16"), truth, truth))
    [c] = compare_precisions(units, preds)                 # mmd has no twin: left out
    assert isinstance(c, PrecisionComparison)
    assert (c.model, c.task, c.selector, c.k, c.dtype, c.reference) == (
        "m", "t", "knn", 8, "bfloat16", "float32")
    assert c.n == 20 and c.agreement == pytest.approx(17 / 20)
    assert (c.accuracy, c.reference_accuracy) == (pytest.approx(17 / 20), pytest.approx(18 / 20))
    assert c.diff == pytest.approx(-1 / 20)
    assert c.ci_low <= c.diff <= c.ci_high and c.level == 0.95
    assert c.p == pytest.approx(_mcnemar_by_enumeration(1, 2)) and c.p_holm == c.p
    assert c.same_demonstrations is None                   # no selections/ given
    rec = c.to_dict()
    assert json.loads(json.dumps(rec)) == rec


def test_units_recorded_on_other_test_items_are_refused():
    spec = UnitSpec("m", "t", "knn", 8, dtype="bfloat16")
    units, preds = _pairs(_unit(spec, ["x", "y"], ["x", "y"]),
                          _unit(replace(spec, dtype="float32"), ["x", "y"], ["y", "y"]))
    with pytest.raises(InputError, match="different test items"):
        compare_precisions(units, preds)


def test_same_demonstrations_are_read_from_the_selection_records(tmp_path):
    truth = ["x", "y", "x"]
    units = []
    for sel, same in (("knn", True), ("mmd-katt", False), ("mmr", None)):
        spec = UnitSpec("m", "t", sel, 2, dtype="bfloat16")
        half, ref = _unit(spec, truth, truth), _unit(replace(spec, dtype="float32"), truth,
                                                     truth)
        units += [half, ref]
        if same is None:
            continue
        idx = [[0, 1], [2, 3], [4, 5]]
        write_json(tmp_path / f"{ref[0].key}.json", {"indices": idx, "shared": False})
        write_json(tmp_path / f"{half[0].key}.json",
                   {"indices": idx if same else [[0, 1], [3, 2], [4, 5]], "shared": False})
    out = {c.selector: c.same_demonstrations
           for c in compare_precisions(*_pairs(*units), selections_dir=tmp_path)}
    assert out == {"knn": True, "mmd-katt": False, "mmr": None}
    (tmp_path / f"{units[0][0].key}.json").write_text("not json")
    with pytest.raises(InputError, match="not a selection record"):
        compare_precisions(*_pairs(*units), selections_dir=tmp_path)


def test_holm_runs_over_every_comparison_returned():
    truth = ["x"] * 40
    units = []
    for t, wrong in (("a", 12), ("b", 1), ("c", 0)):
        spec = UnitSpec("m", t, "knn", 4, dtype="bfloat16")
        units += [_unit(spec, ["y"] * wrong + ["x"] * (40 - wrong), truth),
                  _unit(replace(spec, dtype="float32"), truth, truth)]
    cs = compare_precisions(*_pairs(*units))
    assert [c.task for c in cs] == ["a", "b", "c"]
    p = np.array([c.p for c in cs])
    assert p[0] == pytest.approx(_mcnemar_by_enumeration(0, 12))
    order = np.argsort(p)
    expected = np.minimum(1, np.maximum.accumulate((3 - np.arange(3)) * p[order]))
    assert [c.p_holm for c in np.array(cs)[order]] == pytest.approx(list(expected))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(LABELS), st.sampled_from(LABELS),
                          st.sampled_from(LABELS)), min_size=1, max_size=40))
def test_disagreement_bounds_the_accuracy_difference(items):
    """An item right in one precision and wrong in the other has two different predictions,
    so |accuracy difference| <= 1 - agreement; agreement 1 gives p = 1."""
    truth, half, ref = (list(x) for x in zip(*items, strict=True))
    spec = UnitSpec("m", "t", "knn", 4, dtype="bfloat16")
    [c] = compare_precisions(*_pairs(_unit(spec, half, truth),
                                     _unit(replace(spec, dtype="float32"), ref, truth)),
                             n_boot=200)
    assert 0 <= c.agreement <= 1 and abs(c.diff) <= 1 - c.agreement + 1e-12
    assert c.diff == pytest.approx(c.accuracy - c.reference_accuracy)
    right_h = np.array(half, dtype=object) == np.array(truth, dtype=object)
    right_r = np.array(ref, dtype=object) == np.array(truth, dtype=object)
    assert c.p == pytest.approx(_mcnemar_by_enumeration(int(np.sum(right_h & ~right_r)),
                                                        int(np.sum(~right_h & right_r))))
    if c.agreement == 1:
        assert c.p == 1 and c.diff == 0


def test_report_section_and_precision_json(tmp_path):
    truth = ["x", "y"] * 5
    spec = UnitSpec("m", "t", "knn", 4, dtype="bfloat16")
    units, preds = _pairs(_unit(spec, truth, truth),
                          _unit(replace(spec, dtype="float32"), ["x"] * 10, truth))
    cs = compare_precisions(units, preds)
    rep = write_comparison_report([units[0]], tmp_path, precision=cs)
    md = rep.markdown.read_text()
    assert "## The same units in two precisions" in md
    assert "| m | bfloat16 vs float32 | 4 | 1 | t | 5 of 10 (50.0%) |" in md
    assert json.loads(rep.precision_json.read_text()) == [c.to_dict() for c in cs]
    empty = write_comparison_report([units[0]], tmp_path / "e", precision=[])
    assert "No unit of this folder was run in two precisions." in empty.markdown.read_text()
    assert write_comparison_report([units[0]], tmp_path / "n").precision_json is None


def test_bench_report_keeps_the_other_precision_out_of_the_grid(tmp_path, monkeypatch,
                                                                 capsys):
    """A qwen block first run in float32, then in bfloat16: the report of the bfloat16 grid
    shows only its units, names the others in a note and compares the twins."""
    from .test_harness import _write_task

    toy = _write_task(tmp_path / "toy.jsonl")
    mod = load_script("benchmarks/bench_fewshot.py", "bench_fewshot_precision_test")
    monkeypatch.setattr(mod.Task, "from_registry", classmethod(lambda cls, name, **kw: toy))
    out = tmp_path / "g"
    out.mkdir()
    truth = ["x", "y"] * 5
    recs = []
    for dtype in ("float32", "bfloat16"):
        for sel in ("knn", "mmd"):
            spec = UnitSpec("qwen2.5-0.5b", "amazon", sel, 8, n_test=10, dtype=dtype)
            res, (pred, tr) = _unit(spec, truth if sel == "knn" else ["x"] * 10, truth)
            recs.append((res, pred, tr))
    with open(out / "results.jsonl", "w") as f:
        for res, _, _ in recs:
            f.write(json.dumps(res.to_dict()) + "\n")
    with open(out / "predictions.jsonl", "w") as f:
        for res, pred, tr in recs:
            f.write(json.dumps({"key": res.key, "pred": pred, "truth": tr}) + "\n")
    argv = ["--report-only", "--models", "qwen2.5-0.5b", "--dtype", "bfloat16", "--tasks",
            "amazon", "--selectors", "knn,mmd", "--ks", "8", "--n-test", "10",
            "--pool-size", "30", "--out", str(out)]
    assert mod.main(argv) == 0
    md = (out / "report.md").read_text()
    capsys.readouterr()
    assert "Not in the tables: 2 units of qwen2.5-0.5b at k = 8" in md
    assert "## The same units in two precisions" in md
    assert "| qwen2.5-0.5b | bfloat16 vs float32 | 8 | 2 | amazon | 20 of 20 (100.0%) |" in md
    # the detail table lists the bfloat16 units only
    detail = md.split("## Every evaluated unit")[1]
    assert "qwen2.5-0.5b (bfloat16)" in detail and "| qwen2.5-0.5b |" not in detail
    assert len(json.loads((out / "precision.json").read_text())) == 2
    # a grid with none of its units finished says so (the float32 units are not its own)
    argv[argv.index("--selectors") + 1] = "random"
    assert mod.main(argv) == 1
    assert "no results of this command's grid" in capsys.readouterr().err


def test_a_twin_on_other_data_is_not_taken_when_the_right_one_is_there():
    """Two float32 runs of one spec on different test items (another pool size): the one with
    the unit's own test items is its twin, whatever the order of the records."""
    spec = UnitSpec("m", "t", "knn", 4, dtype="bfloat16")
    ref = replace(spec, dtype="float32")
    mine = _unit(spec, ["x", "y", "x"], ["x", "y", "y"])
    other = _unit(ref, ["y", "y", "y"], ["y", "y", "y"])
    other = (replace(other[0], key="other-data"), other[1])
    right = _unit(ref, ["x", "y", "y"], ["x", "y", "y"])
    for order in ([mine, other, right], [mine, right, other]):
        [c] = compare_precisions(*_pairs(*order))
        assert c.reference_accuracy == 1.0 and c.agreement == pytest.approx(2 / 3)
