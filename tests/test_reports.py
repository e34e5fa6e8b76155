"""Trace reports: files, figures, Parquet and JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from icldistill.data.prompts import Prompt
from icldistill.models.tracing import trace
from icldistill.reporting.reports import atomic_write, write_trace_report

from .tiny_models import tiny_model, tiny_tokenizer

PNG = b"\x89PNG\r\n\x1a\n"


def test_trace_report_files(tmp_path):
    model = tiny_model("qwen2")
    prompt = Prompt([("good movie", "positive"), ("bad plot", "negative")], "fun film")
    res = trace(model, tiny_tokenizer(), prompt)
    files = write_trace_report(res, tmp_path, title="tiny", metadata={"model": "tiny-qwen2"})
    assert set(files) == {"eta_heatmap", "demo_share_heatmap", "positions", "json", "parquet",
                          "markdown", "html"}
    for kind in ("eta_heatmap", "demo_share_heatmap", "positions"):
        assert files[kind].read_bytes()[:8] == PNG
    payload = json.loads(files["json"].read_text())
    assert payload["model"] == "tiny-qwen2"
    assert payload["num_layers"] == 2 and payload["num_heads"] == 4
    assert len(payload["eta_last"]) == 2 and len(payload["eta_last"][0]) == 4
    frame = pd.read_parquet(files["parquet"])
    assert len(frame) == res.eta.numel()
    md = files["markdown"].read_text()
    assert "η*" in md and "![" in md
    page = files["html"].read_text()
    assert files["html"].name == "summary.html"
    assert '<img src="eta_heatmap.png"' in page and "tiny-qwen2" in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def boom(fh):
        fh.write(b"half")
        raise KeyboardInterrupt  # ^C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp"))


def _unit_result(task, selector, acc, mmd2, seed=0, recalls=(0.8, 0.8)):
    from icldistill.evaluation.harness import UnitResult, UnitSpec
    from icldistill.evaluation.scoring import MetricResult

    spec = UnitSpec("m", task, selector, 4, seed)
    metric = MetricResult(acc, acc - 0.05, acc + 0.05, 0.95)
    return UnitResult(spec, f"{task}-{selector}-{seed}", metric, metric, 200, mmd2, mmd2, True,
                      0.01, 1.0, 100, 1000, {"a": recalls[0], "b": recalls[1]})


def test_comparison_report_conclusions_are_computed_from_the_numbers(tmp_path):
    from icldistill.reporting.reports import write_comparison_report

    rs = []
    # task "easy": mmd wins, accuracy falls with MMD^2 across the five sets
    for seed, (a, m) in enumerate([(0.60, 0.10), (0.70, 0.08), (0.65, 0.09)]):
        rs.append(_unit_result("easy", "random", a, m, seed))
    rs += [_unit_result("easy", "knn", 0.80, 0.05), _unit_result("easy", "mmd", 0.90, 0.02)]
    # task "prior": the model answers one label whatever the demonstrations; mmd loses
    for seed in range(3):
        rs.append(_unit_result("prior", "random", 0.55, 0.1, seed, recalls=(1.0, 0.0)))
    rs += [_unit_result("prior", "knn", 0.60, 0.03, recalls=(0.9, 0.3)),
           _unit_result("prior", "mmd", 0.54, 0.02, recalls=(1.0, 0.01))]
    rep = write_comparison_report(rs, tmp_path)
    tag = "m k=4"
    assert rep.best[tag] == "mmd"                      # mean (0.90 + 0.54) / 2 = 0.72 > 0.70
    assert rep.mmd_family_best[tag] is True
    assert rep.beats_random[tag] == {"easy": True, "prior": False}
    assert rep.spearman[tag]["easy"] == pytest.approx(-1.0)
    assert rep.collapsed[tag] == {"easy": (0, 5), "prior": (4, 5)}
    md = rep.markdown.read_text()
    # no paired comparisons: the means are compared, and the report says nothing was tested
    assert rep.beats_random_tested == {tag: False}
    assert ("The best MMD-family selector has a higher mean accuracy than random on 1 of 2 "
            "tasks (means of the units; not tested: no paired comparison against random); not on: "
            "prior.") in md
    assert "Why — prior: best MMD-family mean mmd 0.540 vs random 0.550" in md
    assert "4 of 5 units predict (almost) only one label" in md
    assert rep.html.exists() and all(f.exists() for f in rep.figures)
    assert "## Overview" in md
    assert "MMD family: higher mean than random (not tested) on |" in md
    assert "| m k=4 | mmd 0.720 | mmd 0.720 | 0.000 | 0.050 | 1 of 2 |" in md
    # the table of every unit says its seconds are a log, paused time included
    every = md[md.index("## Every evaluated unit"):]
    assert "including any time it was paused" in every and "not a speed measurement" in every


def test_comparison_report_states_the_gap_when_the_mmd_family_is_not_best(tmp_path):
    from icldistill.reporting.reports import write_comparison_report

    rs = [_unit_result(t, "random", 0.6, 0.1, s) for t in ("a", "b") for s in range(3)]
    rs += [_unit_result(t, "knn", 0.85, 0.01) for t in ("a", "b")]
    rs += [_unit_result("a", "mmd", 0.84, 0.02), _unit_result("b", "mmd", 0.82, 0.02)]
    md = write_comparison_report(rs, tmp_path).markdown.read_text()
    # best knn 0.850, best MMD family mmd 0.830: a gap of 0.020 < the units' half-width 0.05
    assert ("Gap: the best MMD-family selector, mmd (0.830), is 0.020 below knn (0.850) on the "
            "mean over tasks; a single unit's 95% bootstrap half-width is 0.050 on average "
            "here, so the two are not distinguishable at this test size.") in md
    assert "| m k=4 | knn 0.850 | mmd 0.830 | 0.020 | 0.050 | 2 of 2 |" in md


def test_comparison_report_counts_every_mmd_prefixed_selector_as_the_mmd_family(tmp_path):
    """Regression: the overview's "best MMD family" knew only mmd, mmd-query and mmd-balanced,
    so mmd-joint / mmd-local / mmd-katt (and encoder-suffixed labels) were left out of it."""
    from icldistill.reporting.reports import write_comparison_report

    rs = [_unit_result(t, "random", 0.6, 0.1, s) for t in ("a", "b") for s in range(3)]
    rs += [_unit_result(t, "knn", 0.85, 0.01) for t in ("a", "b")]
    rs += [_unit_result(t, "mmd-local", 0.84, 0.02) for t in ("a", "b")]
    rs += [_unit_result(t, "mmd-joint", 0.80, 0.02) for t in ("a", "b")]
    rep = write_comparison_report(rs, tmp_path)
    md = rep.markdown.read_text()
    assert "| m k=4 | knn 0.850 | mmd-local 0.840 | 0.010 | 0.050 | 2 of 2 |" in md
    assert rep.beats_random["m k=4"] == {"a": True, "b": True}


def test_comparison_report_calls_a_tie_a_tie_and_shows_no_nan(tmp_path, monkeypatch):
    """Two selectors at the same mean accuracy: no winner, "tie between"; a Spearman
    correlation of constant numbers: "n/a (constant)", never "+nan"; the accuracy-vs-MMD²
    figure gives every selector its own colour and marker and has one legend."""
    import icldistill.reporting.reports as reports
    from icldistill.reporting.reports import write_comparison_report

    figures = {}
    save = reports.save_figure

    def spy(fig, path, **kw):
        figures[Path(path).name] = fig
        return save(fig, path, **kw)

    monkeypatch.setattr(reports, "save_figure", spy)
    rs = [_unit_result(t, "random", 0.85, 0.1, s) for t in ("a", "b") for s in range(3)]
    rs += [_unit_result(t, "knn", 0.85, 0.1) for t in ("a", "b")]      # coincident with random
    rs += [_unit_result(t, "mmd", 0.80, 0.1) for t in ("a", "b")]      # constant MMD²
    rep = write_comparison_report(rs, tmp_path)
    tag = "m k=4"
    assert rep.ties[tag] == ("random", "knn") and tag not in rep.best
    assert rep.mmd_family_best[tag] is False
    md = rep.markdown.read_text()
    assert "a tie between **random**, **knn** (0.850; none of them an MMD-family" in md
    assert "Best mean accuracy" not in md
    assert "is 0.050 below random and knn (0.850)" in md
    assert "| m k=4 | tie: random, knn 0.850 |" in md
    assert "a n/a (constant), b n/a (constant)" in md
    assert not re.search(r"\bnan\b", md, re.IGNORECASE)
    scatter = figures["acc_vs_mmd_m_k4.png"]
    titles = [ax.get_title() for ax in scatter.axes if ax.get_title()]
    assert titles and all("n/a (constant)" in t and "nan" not in t for t in titles)
    assert len(scatter.legends) == 1
    assert [t.get_text() for t in scatter.legends[0].get_texts()] == ["random", "knn", "mmd"]
    points = scatter.axes[0].collections
    assert len(points) == 3
    assert len({tuple(round(float(v), 3) for v in c.get_edgecolor()[0]) for c in points}) == 3
    assert len({c.get_paths()[0].vertices.round(3).tobytes() for c in points}) == 3


def test_comparison_report_label_coverage_section(tmp_path):
    """Shares and conditional accuracies are pooled over a selector's units and tasks, the
    Spearman correlation is per task over all units, and units without a coverage record are
    counted as left out."""
    import numpy as np

    from icldistill.evaluation.harness import LabelCoverage
    from icldistill.reporting.reports import write_comparison_report

    def cov(r, shown, correct):
        shown = np.asarray(shown, dtype=bool)
        return LabelCoverage(r.key, shown, shown.astype(float) / 4,
                             np.asarray(correct, dtype=bool), shown.astype(float) / 2)

    rs = [_unit_result(t, "random", 0.5, 0.1, s) for t in ("a", "b") for s in range(2)]
    rs += [_unit_result(t, "knn", 0.75, 0.01) for t in ("a", "b")]
    coverage = {}
    for r in rs:
        if r.spec.selector == "knn":     # label always shown, 3 of 4 right
            coverage[r.key] = cov(r, [1, 1, 1, 1], [1, 1, 1, 0])
        elif r.spec.seed == 0:           # shown on 2 items (both right), 0 of 2 right otherwise
            coverage[r.key] = cov(r, [1, 1, 0, 0], [1, 1, 0, 0])
    rep = write_comparison_report(rs, tmp_path, coverage=coverage)
    by = {c.selector: c for c in rep.coverage}
    assert by["knn"].items == 8 and by["knn"].shown == 1.0
    assert by["knn"].acc_shown == 0.75 and np.isnan(by["knn"].acc_not_shown)
    assert by["random"].items == 8 and by["random"].shown == 0.5      # seed 1: no record
    assert by["random"].acc_shown == 1.0 and by["random"].acc_not_shown == 0.0
    assert by["random"].per_task_shown == {"a": 0.5, "b": 0.5}
    assert by["knn"].rho == {}                  # 2 units with a record per task: < 3 points
    md = rep.markdown.read_text()
    assert "## Do the demonstrations show the query's label?" in md
    assert "m k=4: 4 of 6 units have their selection recorded" in md
    assert ("m k=4: over every unit, accuracy is 83.3% on the 12 items whose label a "
            "demonstration shows and 0.0% on the 4 items whose label none shows.") in md
    assert "| random | 50% | 50% |" in md and "| knn | 100% | 100% |" in md    # per task
    assert by["random"].label_share == 0.125 and by["random"].vote == 0.25
    # model minus the vote, paired per item: knn [1,1,1,0] - .5; random [1,1,0,0] - [.5,.5,0,0]
    assert by["knn"].vs_vote.value == pytest.approx(0.25)
    assert by["random"].vs_vote.value == pytest.approx(0.25)
    assert by["knn"].vs_vote.low <= 0.25 <= by["knn"].vs_vote.high
    assert 0 < by["knn"].p_holm_vote <= 1
    assert ("m k=4: the model is significantly less accurate than a majority vote of its own "
            "demonstrations' labels (Holm p < 0.05) with: none; significantly more accurate "
            "with: none.") in rep.markdown.read_text()      # 12 items: too few to tell
    assert "| random | 8 | 50.0% | 100.0% | 0.0% | 12.5% | 50.0% | 25.0% |" in md
    assert "| knn | 8 | 100.0% | 75.0% | – | 25.0% | 75.0% | 50.0% |" in md
    # the scatter of share shown against accuracy, one point per unit with a record
    scatter = tmp_path / "figures" / "label_shown_m_k4.png"
    assert "](figures/label_shown_m_k4.png)" in md and scatter in rep.figures
    assert scatter.stat().st_size > 1000
    # the same summaries, machine-readable
    import json

    records = json.loads(rep.coverage_json.read_text())
    assert [r["selector"] for r in records] == [c.selector for c in rep.coverage]
    knn = records[[r["selector"] for r in records].index("knn")]
    assert knn["shown"] == 1.0 and knn["acc_not_shown"] is None
    assert knn["vs_vote"]["value"] == pytest.approx(0.25)
    assert knn["per_task_shown"] == {"a": 1.0, "b": 1.0}
    # without coverage records, no section and no file
    none = write_comparison_report(rs, tmp_path / "none")
    assert none.coverage == [] and none.coverage_json is None
    assert not (tmp_path / "none" / "coverage.json").exists()


def test_paired_differences_keep_their_sign_when_they_round_to_zero():
    """Every table's ``diff [CI]`` cell goes through one formatter. Regression: a negative
    difference or bound that rounds to zero was printed ``+0.0`` (a negative diff read
    positive); it is ``-0.0`` now, with the same ``-`` as every negative value."""
    from types import SimpleNamespace

    from icldistill.reporting.reports import _diff_ci, _points

    c = SimpleNamespace(diff=-0.0001, ci_low=-0.0123, ci_high=0.00004)
    assert _diff_ci(c) == "-0.0 [-1.2, +0.0]"
    assert [_points(x) for x in (-0.0004, -0.00049, 0.0, -0.0, 0.0004, -0.0123, 0.012)] == [
        "-0.0", "-0.0", "+0.0", "+0.0", "+0.0", "-1.2", "+1.2"]


@pytest.mark.parametrize("where", ["mkstemp", "replace"])
def test_atomic_write_errors_name_the_file_not_its_temporary(tmp_path, monkeypatch, where):
    """Regression: a folder that refused the write was reported under the temporary file's
    name ('.selection.json.h8gptw67.tmp: Operation not permitted')."""
    import errno
    import os
    import tempfile

    import icldistill.artifacts.store as store

    target = tmp_path / "selection.json"

    def refuse(*args, **kwargs):      # as the OS reports it: about the temporary file
        tmp = args[0] if where == "replace" else tmp_path / ".selection.json.abc.tmp"
        raise PermissionError(errno.EPERM, "Operation not permitted", str(tmp))

    if where == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as info:
        store.atomic_write(target, lambda fh: fh.write(b"{}"))
    assert info.value.filename == str(target) and info.value.errno == errno.EPERM
    assert not list(tmp_path.iterdir())                  # no temporary file left behind


# ============================================================================ audit fixes
def _pc(task, selector, baseline, diff, low, high, p_holm, k=4, model="m"):
    from icldistill.core.stats import PairedComparison

    return PairedComparison(model, k, task, selector, baseline, diff, low, high, p_holm,
                            p_holm, 200, 1 if task != "mean" else 2)


def _grid(tasks=("t1", "t2")):
    """random at 0.600 (three seeds), knn at 0.700, mmd 0.1 point above random on every task."""
    rs = [_unit_result(t, "random", 0.600, 0.1, s) for t in tasks for s in range(3)]
    rs += [_unit_result(t, "knn", 0.70, 0.05) for t in tasks]
    rs += [_unit_result(t, "mmd", 0.601, 0.05) for t in tasks]
    return rs


def test_mmd_family_vs_random_is_judged_by_the_paired_comparisons(tmp_path):
    """Regression: "beats random" was the best MMD-family mean above random's mean (a maximum
    of point estimates), printed as "The best MMD-family selector beats random on every task
    evaluated" though no comparison was significant. With paired comparisons it is now: some
    MMD-family selector significantly better than random on the task (Holm p < 0.05)."""
    from icldistill.reporting.reports import write_comparison_report

    paired = [_pc("t1", "mmd", "random", 0.001, -0.040, 0.042, 1.0),      # a mean above: n/s
              _pc("t2", "mmd", "random", 0.001, -0.040, 0.042, 1.0),
              _pc("t2", "random", "mmd-query", -0.05, -0.08, -0.02, 0.01),  # mirrored: mmd-query
              _pc("mean", "mmd", "random", 0.001, -0.03, 0.03, 1.0),        # better on t2
              _pc("t1", "mmd", "knn", -0.1, -0.14, -0.06, 0.001),
              _pc("t2", "mmd", "knn", -0.1, -0.14, -0.06, 0.001)]
    rep = write_comparison_report(_grid(), tmp_path, paired=paired)
    tag = "m k=4"
    assert rep.beats_random == {tag: {"t1": False, "t2": True}}
    assert rep.beats_random_tested == {tag: True}
    md = rep.markdown.read_text()
    assert "beats random on every task" not in md
    assert ("An MMD-family selector is significantly better than random (paired, Holm p < "
            "0.05) on 1 of 2 tasks; none is on: t1.") in md
    assert ("Why — t1: best MMD-family mean mmd 0.601 vs random 0.600 ± 0.000; largest paired "
            "gain over random: mmd +0.1 [-4.0, +4.2] points, Holm p 1; Spearman") in md
    assert "| model, k | best mean (selector, accuracy) | best MMD family | gap | unit 95% CI " \
           "half-width | MMD family significantly better than random (paired, Holm p < 0.05) " \
           "on |" in md
    assert "| m k=4 | knn 0.700 | mmd 0.601 | 0.099 | 0.050 | 1 of 2 |" in md
    # without paired comparisons the same grid reads as means, untested
    plain_rep = write_comparison_report(_grid(), tmp_path / "means")
    assert plain_rep.beats_random == {tag: {"t1": True, "t2": True}}
    assert plain_rep.beats_random_tested == {tag: False}
    text = plain_rep.markdown.read_text()
    assert ("The best MMD-family selector has a higher mean accuracy than random on 2 of 2 tasks "
            "(means of the units; not tested: no paired comparison against random).") in text
    assert "MMD family: higher mean than random (not tested) on |" in text


def test_control_column_credits_only_significant_differences_beyond_the_control(tmp_path):
    """Regression: "differs from the control" compared the trained point estimate with the
    control's interval, so a trained comparison with Holm p = 1 and a CI across 0 read "yes".
    Now: yes = significant and the whole interval beyond the control's on its own side; n/s =
    not significant; no = significant but overlapping (or the control shows it as strongly)."""
    from icldistill.artifacts.document import Report, to_markdown
    from icldistill.reporting.reports import _control_section, control_checks

    trained = [_pc("a", "mmd", "knn", -0.017, -0.060, 0.030, 1.0),       # n/s (was "yes")
               _pc("b", "mmd", "knn", 0.20, 0.08, 0.32, 0.001),          # overlaps: no (was yes)
               _pc("c", "mmd", "knn", 0.20, 0.15, 0.25, 0.001),          # beyond: yes
               _pc("d", "mmd", "knn", 0.03, 0.01, 0.05, 0.01)]           # the control more: no
    control = [_pc("a", "mmd", "knn", 0.093, 0.010, 0.173, 0.02),
               _pc("b", "mmd", "knn", 0.0, -0.10, 0.10, 1.0),
               _pc("c", "mmd", "knn", 0.0, -0.10, 0.10, 1.0),
               _pc("d", "mmd", "knn", 0.10, 0.08, 0.12, 0.001)]
    checks = control_checks(trained, control)
    assert [(c.differs, c.verdict) for c in checks] == [
        (False, "n/s"), (False, "no"), (True, "yes"), (False, "no")]
    md = to_markdown(Report("T", (_control_section(checks, "the twin"),)))
    rows = {ln.split("|")[3].strip(): ln.split("|")[-2].strip() for ln in md.splitlines()
            if ln.startswith("| mmd | knn |")}
    assert rows == {"a": "n/s", "b": "no", "c": "yes", "d": "no"}
    assert "**n/s** when the trained difference is not significant" in md
    # the sentence counts what the column shows
    assert ("m k=4: 3 of the 4 comparisons matched with the control are significant on the "
            "trained model (Holm p < 0.05); 1 of them differ from the control, 2 do not: mmd vs "
            "knn on b, mmd vs knn on d.") in md
    # the post-hoc table reads the same rule
    rep = write_comparison_report_posthoc(tmp_path, trained, control)
    table = [ln.split("|") for ln in rep.splitlines() if ln.startswith("| mmd | knn | ")]
    assert [c[-2].strip() for c in table if c[3].strip() in "abcd"] == ["n/s", "no", "yes", "no"]


def write_comparison_report_posthoc(tmp_path, posthoc, control):
    from icldistill.reporting.reports import write_comparison_report

    rs = [_unit_result(t, s, 0.6, 0.05) for t in ("a", "b", "c", "d") for s in ("knn", "mmd")]
    rep = write_comparison_report(rs, tmp_path / "posthoc", posthoc=posthoc,
                                  control_posthoc=control)
    return rep.markdown.read_text()


def test_vote_column_needs_a_trained_interval_clear_of_zero_and_of_the_control():
    """The vote-vs-control table uses the same three values: a trained model − vote interval
    across 0 is "n/s", not "yes", even when its mean lies outside the control's interval."""
    from icldistill.reporting.reports import _control_verdict

    assert _control_verdict(False, -0.017, -0.06, 0.03, 0.01, 0.17) == "n/s"
    assert _control_verdict(True, 0.2, 0.08, 0.32, -0.1, 0.1) == "no"
    assert _control_verdict(True, 0.2, 0.15, 0.25, -0.1, 0.1) == "yes"
    assert _control_verdict(True, -0.2, -0.25, -0.15, -0.1, 0.1) == "yes"
    assert _control_verdict(True, 0.03, 0.01, 0.05, 0.08, 0.12) == "no"


def test_p_values_just_below_alpha_are_never_shown_as_alpha():
    """Regression: 0.0496 was shown as "0.050" (tables) and "0.05" (short form) beside
    "better"; now it keeps the digits that show it below 0.05, and every other value reads as
    before."""
    import numpy as np

    from icldistill.artifacts.document import Report, to_markdown
    from icldistill.reporting.reports import _bar_section, _fmt_p, _paired_section, _short_p

    assert (_fmt_p(0.0496), _short_p(0.0496)) == ("0.0496", "0.0496")
    assert (_fmt_p(0.04951), _short_p(0.04951)) == ("0.0495", "0.0495")
    assert _fmt_p(0.0499999) == "0.0499999"
    for p in np.linspace(0.0490, 0.0499999999, 2001):
        for text in (_fmt_p(p), _short_p(p)):
            assert float(text) < 0.05, (p, text)
    # unchanged: values that do not cross 0.05 in rounding
    assert [_fmt_p(p) for p in (0.0494, 0.05, 0.0504, 0.012, 0.5, 1.0, 2e-4, 0.0)] == [
        "0.049", "0.050", "0.050", "0.012", "0.500", "1.000", "2.0e-04", "<1e-307"]
    assert [_short_p(p) for p in (0.0494, 0.05, 0.0504, 0.012, 0.23006, 1.0, 2.5e-20)] == [
        "0.049", "0.05", "0.05", "0.012", "0.23", "1", "2.5e-20"]
    cs = [_pc("mean", "mmd", "knn", 0.021, 0.001, 0.04, 0.0496),
          _pc("mean", "mmd", "random", 0.0, -0.02, 0.02, 1.0)]
    md = to_markdown(Report("T", (_paired_section(cs), _bar_section(cs)[0])))
    assert "| mmd | knn | +2.1 | [+0.1, +4.0] | 0.0496 | 0.0496 | 2 | 200 | better |" in md
    assert "| mmd | +2.1 [+0.1, +4.0] | 0.0496 | 2 | none | yes |" in md


def test_a_rerun_removes_the_records_it_no_longer_writes(tmp_path):
    """Regression: paired.json (and the other records beside the report) stayed from an
    earlier run when the next one had no paired comparisons, contradicting the report. Only
    the known record names are removed; other files stay."""
    from icldistill.reporting.reports import write_comparison_report

    sidecars = ("paired.json", "paired_macro_f1.json", "paired_posthoc.json", "coverage.json",
                "precision.json", "concordance.json")
    rs = _grid()
    paired = [_pc("t1", "mmd", "knn", -0.1, -0.14, -0.06, 0.001),
              _pc("t2", "mmd", "knn", -0.1, -0.14, -0.06, 0.001),
              _pc("mean", "mmd", "knn", -0.1, -0.13, -0.07, 0.001)]
    first = write_comparison_report(rs, tmp_path, paired=paired, posthoc=paired)
    assert first.paired_json.exists() and first.posthoc_json.exists()
    forest = tmp_path / "figures" / "paired_m_k4.png"
    assert forest.exists()
    mine = [tmp_path / "notes.json", tmp_path / "figures" / "my_paired.png",
            tmp_path / "paired.json.bak"]
    for f in mine:
        f.write_text("keep")
    for name in sidecars:               # stale records of every kind
        if not (tmp_path / name).exists():
            (tmp_path / name).write_text("[]")
    second = write_comparison_report(rs, tmp_path)
    assert second.paired_json is None
    assert not any((tmp_path / name).exists() for name in sidecars)
    assert not forest.exists()
    assert all(f.read_text() == "keep" for f in mine)
    assert (tmp_path / "report.md").exists()
    assert all(f.exists() for f in second.figures)
    # and what a run writes, it keeps
    third = write_comparison_report(rs, tmp_path, paired=paired)
    assert third.paired_json.exists() and forest.exists()
    assert not (tmp_path / "paired_posthoc.json").exists()


def test_reports_state_the_software_they_were_written_with(tmp_path, monkeypatch):
    """The comparison report names icldistill's version (and commit when it is imported from
    a git checkout), torch's and transformers'; without git it falls back to the version."""
    import subprocess

    import icldistill
    from icldistill.artifacts import document

    md = write_comparison_report_posthoc(tmp_path, [], [])
    (line,) = [ln for ln in md.splitlines() if ln.startswith("- **software**: ")]
    assert line.startswith(f"- **software**: icldistill {icldistill.__version__}")
    assert ", torch " in line and ", transformers " in line
    assert md.count("**software**") == 1

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    document._git_state.cache_clear()
    monkeypatch.setattr(subprocess, "run", no_git)
    try:
        text = document.provenance()
    finally:
        document._git_state.cache_clear()
    assert text.startswith(f"icldistill {icldistill.__version__}, torch ")


def test_coverage_sentences_and_caption_escape_the_model_name(tmp_path):
    """Regression: the label-coverage sentences and the scatter's caption put ``"model k=K"``
    into inline Markdown unescaped."""
    import html

    import numpy as np

    from icldistill.artifacts.document import Report, to_html
    from icldistill.evaluation.harness import LabelCoverage, UnitResult, UnitSpec
    from icldistill.evaluation.scoring import MetricResult
    from icldistill.reporting.reports import _coverage_section

    model = "org/m_`x`*y*"
    rs, coverage = [], {}
    for t in ("a", "b"):
        for sel, seed in (("knn", 0), ("random", 0), ("random", 1)):
            m = MetricResult(0.5, 0.4, 0.6, 0.95)
            r = UnitResult(UnitSpec(model, t, sel, 4, seed), f"{t}-{sel}-{seed}", m, m, 4, 0.1,
                           0.1, True, 0.0, 1.0, 1, 1, {"x": 0.5, "y": 0.5})
            rs.append(r)
            shown = np.array([1, 1, 0, seed], dtype=bool)
            coverage[r.key] = LabelCoverage(r.key, shown, shown / 4.0,
                                            np.array([1, 0, 1, 0], dtype=bool), shown / 2.0)
    (tmp_path / "figures").mkdir()
    section, _ = _coverage_section(rs, coverage, {}, tmp_path / "figures")
    page = to_html(Report("T", (section,)))
    assert "<code>x</code>" not in page and "<em>y</em>" not in page
    shown = html.escape(model)
    assert f"<li>{shown} k=4: the model is significantly less accurate" in page
    assert f"<figcaption>{shown} k=4: share of items whose label is shown" in page
