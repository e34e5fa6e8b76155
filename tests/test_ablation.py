"""The representation x objective ablation: its units and its report (issue 12, item 4)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from icldistill.core.stats import paired_comparisons
from icldistill.evaluation.harness import UnitResult, UnitSpec
from icldistill.evaluation.scoring import MetricResult
from icldistill.reporting.reports import write_ablation_report

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ablation.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ablation", BENCH)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def _unit(task, selector, encoder, params, correct, n=40):
    spec = UnitSpec("m", task, selector, 8, encoder=encoder, params=params)
    truth = ["x", "y"] * (n // 2)
    pred = [t if i < correct else ("y" if t == "x" else "x") for i, t in enumerate(truth)]
    acc = correct / n
    metric = MetricResult(acc, acc - 0.1, acc + 0.1)
    res = UnitResult(spec, spec.key(task), metric, metric, n, 0.1, 0.1, False, 0.0, 1.0, 1, 1)
    return res, (pred, truth)


def test_units_cover_every_representation_and_objective():
    mod = _bench()
    units = mod.units("m", "float32", ["a", "b"], ["minilm", "hidden:4", "kv:auto"], 8, 300)
    assert len(units) == 2 * 3 * len(mod.OBJECTIVES)
    assert len({u.key("f") for u in units}) == len(units)
    labels = {u.label for u in units}
    assert "knn" in labels and "mmd-local@kv:auto,label_weight=0.0" in labels
    assert "mmd-query@hidden:4,diversity=1.0" in labels
    assert all(u.n_test == 300 and u.k == 8 for u in units)


def test_ablation_report_cells_are_the_paired_differences(tmp_path):
    mod = _bench()
    objectives = mod.OBJECTIVES[:3]            # kNN, set MMD, per-query MMD
    encoders = ["minilm", "kv:auto"]
    rows, preds = [], {}
    correct = {("knn", "minilm"): 20, ("mmd", "minilm"): 10, ("mmd-query", "minilm"): 38,
               ("knn", "kv:auto"): 20, ("mmd", "kv:auto"): 20, ("mmd-query", "kv:auto"): 21}
    for task in ("a", "b"):
        for (sel, enc), c in correct.items():
            r, p = _unit(task, sel, enc, (), c)
            rows.append(r)
            preds[r.key] = p
    paired = paired_comparisons(rows, preds, baselines=("knn",), n_boot=200, n_perm=2000)
    path = write_ablation_report(rows, paired, tmp_path, objectives=objectives,
                                 encoders=encoders, commands=["cmd"], notes=["note"])
    text = path.read_text()
    assert "| kNN | baseline |" in text
    # per-query MMD on MiniLM: +18 of 40 items on both tasks = +45 points, significant
    assert "**+45.0" in text
    assert "-25.0" in text                     # set MMD on MiniLM: 10 vs 20 of 40
    assert "significantly better than kNN on the mean over tasks: per-query MMD on minilm" \
        in text
    rec = json.loads((tmp_path / "ablation.json").read_text())
    cell = next(r for r in rec if r["objective"] == "per-query MMD" and r["encoder"] == "minilm")
    assert np.isclose(cell["diff"], 0.45) and cell["p_holm"] < 0.05
    assert {"objective", "encoder", "selector", "diff", "ci_low", "ci_high", "p_holm"} <= set(cell)
