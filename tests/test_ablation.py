"""The representation x objective ablation: its units and its report (issue 12, item 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icldistill.core.stats import paired_comparisons
from icldistill.core.validation import InputError
from icldistill.evaluation.harness import UnitResult, UnitSpec
from icldistill.evaluation.scoring import MetricResult
from icldistill.reporting.reports import (
    ablation_pairs,
    control_checks,
    merge_comparisons,
    write_ablation_report,
)

from .scripts import load_script


def _bench():
    return load_script("benchmarks/bench_ablation.py")


def _unit(task, selector, encoder, params, correct, n=40):
    spec = UnitSpec("m", task, selector, 8, encoder=encoder, params=params)
    truth = ["x", "y"] * (n // 2)
    pred = [t if i < correct else ("y" if t == "x" else "x") for i, t in enumerate(truth)]
    acc = correct / n
    metric = MetricResult(acc, acc - 0.1, acc + 0.1)
    res = UnitResult(spec, spec.key(task), metric, metric, n, 0.1, 0.1, False, 0.0, 1.0, 1, 1)
    return res, (pred, truth)


def _grid(correct, tasks=("a", "b")):
    """Units of every ``(selector, encoder) -> items right of 40`` on every task, and their
    predictions."""
    rows, preds = [], {}
    for task in tasks:
        for (sel, enc), c in correct.items():
            r, p = _unit(task, sel, enc, (), c)
            rows.append(r)
            preds[r.key] = p
    return rows, preds


def _comparisons(correct, objectives, encoders):
    """A fake grid's units, their paired comparisons against kNN and the factor contrasts."""
    rows, preds = _grid(correct)
    paired = paired_comparisons(rows, preds, baselines=("knn",), n_boot=300, n_perm=2000)
    contrasts = paired_comparisons(rows, preds, pairs=ablation_pairs(objectives, encoders),
                                   n_boot=300, n_perm=2000)
    return rows, paired, contrasts


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
    correct = {("knn", "minilm"): 20, ("mmd", "minilm"): 10, ("mmd-query", "minilm"): 38,
               ("knn", "kv:auto"): 20, ("mmd", "kv:auto"): 20, ("mmd-query", "kv:auto"): 21}
    rows, preds = _grid(correct)
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


def test_ablation_cell_over_fewer_tasks_says_so(tmp_path):
    # an unfinished grid: the kv:auto units exist on tasks "a" and "b" only, so their mean
    # against kNN is over 2 of the header's 3 tasks, and the cell must say so
    mod = _bench()
    rows, preds = _grid({("knn", "minilm"): 20, ("mmd-query", "minilm"): 30}, tasks=("a", "b", "c"))
    more, more_preds = _grid({("knn", "kv:auto"): 20, ("mmd-query", "kv:auto"): 30},
                             tasks=("a", "b"))
    rows += more
    preds.update(more_preds)
    paired = paired_comparisons(rows, preds, baselines=("knn",), n_boot=200, n_perm=2000)
    path = write_ablation_report(rows, paired, tmp_path, objectives=mod.OBJECTIVES[:3],
                                 encoders=["minilm", "kv:auto"], commands=["cmd"], notes=[])
    text = path.read_text()
    assert "Mean over 3 tasks" in text
    minilm_row = next(line for line in text.splitlines() if line.startswith("| per-query MMD |"))
    cells = [c.strip() for c in minilm_row.strip("|").split("|")]
    assert "of 3 tasks" not in cells[1]                      # minilm: all 3 tasks
    assert cells[2].strip("*").endswith("(2 of 3 tasks)")    # kv:auto: 2 of them


def test_ablation_pairs_are_the_factor_contrasts():
    mod = _bench()
    pairs = ablation_pairs(mod.OBJECTIVES, ["minilm", "hidden:4", "kv:auto"])
    assert len(pairs) == len(set(pairs))
    # representation: every objective on hidden and kv against itself on MiniLM
    assert ("knn@kv:auto", "knn") in pairs
    assert ("mmd-local@hidden:4,label_weight=0.0", "mmd-local,label_weight=0.0") in pairs
    # objective: every non-kNN objective against kNN on the same representation
    assert ("mmd-query@kv:auto,diversity=1.0", "knn@kv:auto") in pairs
    assert ("mmd", "knn") in pairs
    n_obj = len(mod.OBJECTIVES)
    assert len(pairs) == n_obj * 2 + (n_obj - 1) * 3


def test_paired_comparisons_of_chosen_pairs_match_the_baseline_rows(tmp_path):
    correct = {("knn", "minilm"): 20, ("mmd", "minilm"): 10, ("knn", "kv:auto"): 30,
               ("mmd", "kv:auto"): 33}
    rows, preds = _grid(correct)
    pairs = [("mmd@kv:auto", "mmd"), ("mmd@kv:auto", "knn@kv:auto")]
    got = paired_comparisons(rows, preds, pairs=pairs, n_boot=200, n_perm=2000)
    assert {(p.selector, p.baseline) for p in got} == set(pairs)
    assert len(got) == 2 * 3                       # two tasks and the mean, per pair
    full = paired_comparisons(rows, preds, baselines=("mmd", "knn@kv:auto"), n_boot=200,
                              n_perm=2000)
    by = {(p.selector, p.baseline, p.task): p for p in full}
    for p in got:
        q = by[(p.selector, p.baseline, p.task)]
        assert np.isclose(p.diff, q.diff) and np.isclose(p.p, q.p)
        assert p.p_holm <= q.p_holm + 1e-12        # a smaller Holm family
    mean = {(p.selector, p.baseline): p for p in got if p.task == "mean"}
    assert np.isclose(mean[("mmd@kv:auto", "mmd")].diff, (33 - 10) / 40)
    assert np.isclose(mean[("mmd@kv:auto", "knn@kv:auto")].diff, 3 / 40)
    with pytest.raises(InputError, match="pairs must be"):
        paired_comparisons(rows, preds, pairs=["mmd"])


def test_ablation_report_factor_tables(tmp_path):
    mod = _bench()
    objectives = mod.OBJECTIVES[:2]            # kNN, set MMD
    encoders = ["minilm", "kv:auto"]
    correct = {("knn", "minilm"): 20, ("mmd", "minilm"): 10, ("knn", "kv:auto"): 30,
               ("mmd", "kv:auto"): 39}
    rows, paired, contrasts = _comparisons(correct, objectives, encoders)
    path = write_ablation_report(rows, paired, tmp_path, objectives=objectives,
                                 encoders=encoders, contrasts=contrasts)
    text = path.read_text()
    assert "representation and objective separately" in text
    assert "| objective | kv:auto − minilm |" in text
    # representation: mmd on kv:auto - mmd on MiniLM = +29 of 40 = +72.5 points
    assert "**+72.5" in text
    # objective on kv:auto: mmd - knn = +9 of 40 = +22.5 points
    assert "**+22.5" in text
    rec = json.loads((tmp_path / "ablation.json").read_text())
    kinds = {r["contrast"] for r in rec}
    assert kinds == {"baseline", "representation", "objective"}
    rep = next(r for r in rec if r["contrast"] == "representation" and r["objective"] == "set MMD")
    assert rep["selector"] == "mmd@kv:auto" and rep["baseline"] == "mmd"
    assert np.isclose(rep["diff"], 29 / 40)


def test_ablation_report_label_coverage_section(tmp_path):
    from icldistill.evaluation.harness import LabelCoverage

    mod = _bench()
    rows, preds = _grid({("knn", "minilm"): 20, ("mmd", "minilm"): 10})
    paired = paired_comparisons(rows, preds, baselines=("knn",), n_boot=200, n_perm=2000)
    coverage = {}
    for r in rows:
        pred, truth = preds[r.key]
        correct = np.asarray([p == t for p, t in zip(pred, truth, strict=True)])
        shown = np.ones(40, dtype=bool) if r.spec.selector == "knn" else np.arange(40) < 30
        coverage[r.key] = LabelCoverage(r.key, shown, shown / 2.0, correct, shown / 2.0)
    path = write_ablation_report(rows, paired, tmp_path, objectives=mod.OBJECTIVES[:2],
                                 encoders=["minilm"], coverage=coverage)
    text = path.read_text()
    assert "## Do the demonstrations show the query's label?" in text
    assert "| mmd | 80 | 75.0% |" in text and "| knn | 80 | 100.0% |" in text
    # without coverage, no section
    path = write_ablation_report(rows, paired, tmp_path / "plain",
                                 objectives=mod.OBJECTIVES[:2], encoders=["minilm"])
    assert "show the query's label" not in path.read_text()


def test_ablation_report_within_item_section(tmp_path):
    """With per-item MMD² in the coverage, the ablation gets the within-item section over its
    cells' prompts, and ``concordance.json``: trained and twin, reference and K_att space."""
    from icldistill.evaluation.harness import LabelCoverage

    mod = _bench()
    rows, preds = _grid({("knn", "minilm"): 20, ("mmd", "minilm"): 10})
    paired = paired_comparisons(rows, preds, baselines=("knn",), n_boot=200, n_perm=2000)
    coverage, twin, katt = {}, {}, {}
    for r in rows:
        pred, truth = preds[r.key]
        correct = np.asarray([p == t for p, t in zip(pred, truth, strict=True)])
        near = r.spec.selector == "knn"              # knn's prompts are the closer ones
        mmd2 = np.full(40, 0.1 if near else 0.5)
        shown = np.ones(40, dtype=bool)
        coverage[r.key] = LabelCoverage(r.key, shown, shown / 2.0, correct, shown / 2.0, mmd2)
        # the twin, on the same prompts, is right where the trained model is wrong
        twin[r.key] = LabelCoverage(r.key, shown, shown / 2.0, ~correct, shown / 2.0, mmd2)
        katt[r.key] = 1.0 - mmd2                     # in K_att space knn's are the farther
    path = write_ablation_report(rows, paired, tmp_path, objectives=mod.OBJECTIVES[:2],
                                 encoders=["minilm"], coverage=coverage,
                                 control_coverage=twin, katt_mmd=katt)
    text = path.read_text()
    assert "## Within an item, do closer demonstrations answer right?" in text
    recs = json.loads((tmp_path / "concordance.json").read_text())
    got = {(r["reader"], r["space"]): r["value"] for r in recs
           if r["task"] == "all" or r["task"].startswith("all,")
           if r["pairs_compared"] == "all pairs"}
    # items 10-19 of each task: knn right, mmd wrong (20 discordant pairs)
    assert got == {("trained", "reference"): 1.0, ("control", "reference"): 0.0,
                   ("trained", "K_att"): 0.0, ("control", "K_att"): 1.0}
    assert {r["n_pairs"] for r in recs if r["task"] == "all"} == {20}
    # without per-item MMD², no section and no file
    plain = {k: LabelCoverage(c.key, c.shown, c.share, c.correct, c.vote)
             for k, c in coverage.items()}
    path = write_ablation_report(rows, paired, tmp_path / "plain",
                                 objectives=mod.OBJECTIVES[:2], encoders=["minilm"],
                                 coverage=plain)
    assert "Within an item" not in path.read_text()
    assert not (tmp_path / "plain" / "concordance.json").exists()


def test_ablation_report_sets_each_comparison_beside_the_control(tmp_path):
    mod = _bench()
    objectives = mod.OBJECTIVES[:2]            # kNN, set MMD
    encoders = ["minilm", "kv:auto"]
    # the twin shows set MMD's loss to kNN on MiniLM and its gain from kv:auto just as
    # strongly (so neither is credited to training), but not set MMD's gain over kNN on kv:auto
    trained = {("knn", "minilm"): 20, ("mmd", "minilm"): 10, ("knn", "kv:auto"): 30,
               ("mmd", "kv:auto"): 39}
    twin = {("knn", "minilm"): 20, ("mmd", "minilm"): 10, ("knn", "kv:auto"): 40,
            ("mmd", "kv:auto"): 40}
    rows, paired, contrasts = _comparisons(trained, objectives, encoders)
    _, c_paired, c_contrasts = _comparisons(twin, objectives, encoders)
    # the objective contrast mmd - knn on MiniLM repeats the cell mmd vs knn, and the
    # representation contrast knn@kv:auto - knn the cell knn@kv:auto: twice is refused
    with pytest.raises(InputError, match=r" vs knn on .* twice; join families"):
        control_checks([*paired, *contrasts], [*c_paired, *c_contrasts])
    merged = merge_comparisons(paired, contrasts)
    assert len(merged) == len({(c.task, c.selector, c.baseline) for c in merged})
    assert merged[:len(paired)] == list(paired)                # the cells' Holm p is kept
    cells = {(c.task, c.selector, c.baseline) for c in paired}
    repeated = [c for c in contrasts if (c.task, c.selector, c.baseline) in cells]
    assert {(c.selector, c.baseline) for c in repeated} == {("mmd", "knn"), ("knn@kv:auto", "knn")}
    assert all(c not in merged for c in repeated)
    checks = control_checks(merged, merge_comparisons(c_paired, c_contrasts))
    keys = [(c.selector, c.baseline, c.task) for c in checks]
    assert len(keys) == len(set(keys))                         # each comparison once
    by = {(c.selector, c.baseline, c.task): c for c in checks}
    assert not by[("mmd", "knn", "mean")].differs              # -25 vs the twin's -25
    assert not by[("mmd@kv:auto", "mmd", "mean")].differs      # +72.5 vs the twin's +75
    assert by[("mmd@kv:auto", "knn@kv:auto", "mean")].differs  # +22.5 vs the twin's 0
    path = write_ablation_report(rows, paired, tmp_path, objectives=objectives,
                                 encoders=encoders, contrasts=contrasts, control=checks,
                                 control_label="the twin")
    text = path.read_text()
    # the heat map of the cells, trained beside the twin (both cover the same tasks)
    assert "](figures/ablation_m_k8.png)" in text and "random-init twin" in text
    assert (tmp_path / "figures" / "ablation_m_k8.png").stat().st_size > 1000
    assert "## Against a random-init control" in text
    assert "the trained model's own selection" in text
    assert "MiniLM embeddings of the same pool" not in text


def test_ablation_control_flags_fail_with_one_line(tmp_path, capsys):
    mod = _bench()
    assert mod.main(["--control", "1", "--reuse", str(tmp_path), "--out",
                     str(tmp_path / "c")]) == 2
    assert "holds trained units" in capsys.readouterr().err
    assert not (tmp_path / "c" / "control.json").exists()     # nothing written on refusal
    (tmp_path / "ctl").mkdir()
    (tmp_path / "ctl" / "control.json").write_text('{"control": "random-init", "seed": 2}')
    assert mod.main(["--control", "1", "--reuse", str(tmp_path / "ctl"), "--out",
                     str(tmp_path / "c")]) == 2
    assert "the control of seed 2" in capsys.readouterr().err
    assert mod.main(["--reuse", str(tmp_path / "ctl"), "--out", str(tmp_path / "t")]) == 2
    assert "copies trained units only" in capsys.readouterr().err
    assert mod.reuse_problem(str(tmp_path / "ctl"), 2) is None
    assert mod.reuse_problem(str(tmp_path), None) is None
    with pytest.raises(SystemExit) as exc:       # the flag's type: one line, exit 2
        mod.main(["--control", "0", "--out", str(tmp_path / "c")])
    assert exc.value.code == 2
    assert "--control must be a positive integer, got '0'" in capsys.readouterr().err
    assert mod.main(["--report-only", "--out", str(tmp_path / "t"),
                     "--control-dir", str(tmp_path)]) == 2
    assert "not a control folder" in capsys.readouterr().err


def test_bench_ablation_end_to_end_katt_concordance_reads_the_trained_model(tmp_path,
                                                                         monkeypatch):
    """The whole bench_ablation path on a tiny model: trained units, the random-init twin on
    the trained demonstrations, then --report-only --katt-concordance. The K_att values are
    the trained model's in both folders (the twin only reads the prompts): computed in the
    control folder with no twin loader, they equal the trained folder's, and they differ from
    the values the twin's own attention space gives."""
    from icldistill.evaluation.harness import Harness, Task, load_results
    from icldistill.lab.experiments.phenomena import twin_loader

    from .test_harness import _write_task
    from .tiny_models import tiny_model, tiny_tokenizer

    model_dir = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer(True).save_pretrained(model_dir)
    toy = _write_task(tmp_path / "toy.jsonl")
    monkeypatch.setenv("ICLDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(Task, "from_registry", classmethod(lambda cls, name, **kw: toy))
    mod = _bench()
    trained, control = tmp_path / "trained", tmp_path / "control"
    base = ["--model", str(model_dir), "--tasks", "toy", "--encoders", "minilm,kv:auto",
            "--k", "2", "--n-test", "6", "--pool-size", "40"]
    assert mod.main([*base, "--out", str(trained)]) == 0
    assert mod.main([*base, "--out", str(control), "--control", "1",
                     "--selections-from", str(trained)]) == 0
    keys = sorted(r.key for r in load_results(trained))
    assert keys == sorted(r.key for r in load_results(control))
    assert len(keys) == 2 * len(mod.OBJECTIVES)
    # the control folder's report with K_att: no twin loader, the trained model's space
    assert mod.main([*base, "--out", str(control), "--control", "1", "--selections-from",
                     str(trained), "--report-only", "--katt-concordance"]) == 0
    assert mod.main([*base, "--out", str(trained), "--report-only", "--control-dir",
                     str(control), "--katt-concordance"]) == 0

    def stored(folder):
        return {json.loads(x)["key"]: np.asarray(json.loads(x)["values"])
                for x in (folder / "item_mmd.jsonl").read_text().splitlines()}

    a, b = stored(trained), stored(control)
    assert sorted(a) == sorted(b) == keys
    for k in keys:
        assert a[k].shape == (6,) and np.all(a[k] >= -1e-9)
        np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12)
    # independently: the twin's own K_att space gives other values on the same selections
    twin = Harness(tmp_path / "twin-katt", tasks={"toy": toy}, progress=False,
                   model_loader=twin_loader(1))
    (tmp_path / "twin-katt").mkdir(exist_ok=True)
    (tmp_path / "twin-katt" / "selections").symlink_to(trained / "selections")
    other = twin.item_mmd(load_results(trained))
    assert sorted(other) == keys
    assert any(not np.allclose(other[k], a[k], rtol=1e-6) for k in keys)
    conc = json.loads((trained / "concordance.json").read_text())
    assert {(r["space"], r["reader"]) for r in conc} >= {
        ("K_att", "trained"), ("K_att", "control"), ("reference", "trained"),
        ("reference", "control")}
