"""``benchmarks/lab_reanalysis.py``: the re-analysis of the committed laboratory sections.

The script runs once on the committed full sections (into a temporary folder); its numbers are
checked against computations done here independently from the JSON files (plain counting, brute
force enumeration), and bad input must be a one-line error with exit code 2.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.stats import holm

from .scripts import ROOT

FULL = ROOT / "benchmarks" / "results" / "lab" / "full" / "sections"
MC_FLOOR = 1 / 10_001


@pytest.fixture(scope="module")
def script():
    """The script as a module, registered in ``sys.modules`` while the tests run (its
    dataclasses look their module up there)."""
    name = "lab_reanalysis_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks/lab_reanalysis.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def report(script, tmp_path_factory) -> str:
    """The Markdown report of ``main`` on the committed full sections (fewer random order picks
    than the default, to keep the test short: no number checked here depends on them)."""
    out = tmp_path_factory.mktemp("reanalysis") / "reanalysis.md"
    script.N_PICKS = 200
    try:
        assert script.main(["--sections", str(FULL), "--out", str(out)]) == 0
    finally:
        script.N_PICKS = 1000
    return out.read_text()


def _section(name: str) -> dict:
    return json.loads((FULL / f"{name}.json").read_text())["data"]


def _row(md: str, *first_cells: str, after: str | None = None) -> list[str]:
    """The cells of the first table row whose leading cells are ``first_cells`` (searching
    after the line ``after`` when given)."""
    lines = md.splitlines()
    if after is not None:
        lines = lines[lines.index(after):]
    for line in lines:
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if tuple(cells[:len(first_cells)]) == first_cells:
                return cells
    raise AssertionError(f"no row {first_cells} in the report")


def _p(cell: str) -> float:
    return MC_FLOOR if cell.startswith("<=") else float(cell)


# ------------------------------------------------------------------------------------------------
# Independent hand computations
# ------------------------------------------------------------------------------------------------


def _rec2ftp_by_hand(results: list[dict]) -> tuple[int, int, int, int]:
    a = b = c = d = 0
    for r in results:
        for y, z, i, f in zip(r["labels"], r["zsl"], r["icl"], r["ft"], strict=True):
            if z == y:
                continue
            if f == y:
                a += i == y
                b += i != y
            else:
                c += i == y
                d += i != y
    return a, b, c, d


def _subset_counts(marked: int, unmarked: int) -> list[list[int]]:
    """``counts[size][j]``: subsets of ``size`` items holding ``j`` marked ones, counted by
    adding the items one at a time (no binomial coefficients)."""
    n = marked + unmarked
    counts = [[0] * (marked + 1) for _ in range(n + 1)]
    counts[0][0] = 1
    for item in range(n):
        is_marked = item < marked
        for size in range(item, -1, -1):
            for j in range(marked, -1, -1):
                if counts[size][j]:
                    counts[size + 1][j + is_marked] += counts[size][j]
    return counts


def _fisher_brute(a: int, b: int, c: int, d: int) -> float:
    """One-sided Fisher p by enumerating the row-1 subsets of the pooled items: the share of
    the ``a + b`` item subsets of the ``n`` items that hold at least ``a`` of the ``a + c``
    column-1 items."""
    counts = _subset_counts(a + c, b + d)[a + b]
    return float(Fraction(sum(counts[a:]), sum(counts)))


def _binom_brute(k: int, n: int) -> Fraction:
    """``P(X >= k)``, ``X ~ Binomial(n, 1/2)``, from Pascal's triangle built by additions."""
    row = [1]
    for _ in range(n):
        row = [x + y for x, y in zip([0, *row], [*row, 0], strict=True)]
    return Fraction(sum(row[k:]), 2 ** n)


def _spearman_no_ties(x: np.ndarray, y: np.ndarray) -> float:
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    n = x.size
    return 1 - 6 * float(np.sum((rx - ry) ** 2)) / (n * (n * n - 1))


# ------------------------------------------------------------------------------------------------
# The report against them
# ------------------------------------------------------------------------------------------------


def test_rec2ftp_counts_and_exact_tests(report, script):
    groups = {g["models"][0]: g for g in _section("icl-vs-finetuning")["groups"]}
    expected = {"smollm2-135m": (31, 59), "qwen2.5-0.5b": (30, 54)}
    for model, (hit, corrected) in expected.items():
        a, b, c, d = _rec2ftp_by_hand(groups[model]["results"][0])
        assert (a, a + b) == (hit, corrected)
        cells = _row(report, model, "trained", f"{a}/{a + b} = {a / (a + b):.3f}")
        assert cells[3] == f"{c}/{c + d} = {c / (c + d):.3f}"
        fisher = _fisher_brute(a, b, c, d)
        assert script.fisher_greater(a, b, c, d) == pytest.approx(fisher, rel=1e-12)
        assert _p(cells[5]) == pytest.approx(fisher, rel=5e-3)
        binom = float(_binom_brute(a, a + b))
        assert script.binom_greater(a, a + b) == pytest.approx(binom, rel=1e-12)
        assert _p(cells[6]) == pytest.approx(binom, rel=5e-3)
        # ICL is no more often right where FT corrected than on the errors FT left
        assert fisher > 0.05 and binom > 0.05
        # stratified by task: the package's exact test on the per-task tables
        from icldistill.lab.experiments._stats import fisher_exact_greater_stratified

        tables = [_rec2ftp_by_hand([r]) for r in groups[model]["results"][0]]
        strat = fisher_exact_greater_stratified(tables)
        assert script.fisher_greater_stratified(tables) == pytest.approx(strat, rel=1e-12)
        assert _p(cells[7]) == pytest.approx(strat, rel=5e-3) and strat > 0.05
    # the committed 52.5% and its counts
    assert "31/59 = 0.525" in report and "30/54 = 0.556" in report


def test_fisher_against_brute_force_on_small_tables(script):
    for a, b, c, d in [(3, 1, 1, 3), (0, 5, 4, 0), (7, 2, 0, 9), (2, 2, 2, 2), (5, 0, 0, 0)]:
        assert script.fisher_greater(a, b, c, d) == pytest.approx(_fisher_brute(a, b, c, d),
                                                                 rel=1e-12)
    # the classical tea-tasting table: 4 of 4 right, p = 1/70
    assert script.fisher_greater(4, 0, 0, 4) == pytest.approx(1 / 70)


def test_holm_on_a_known_vector_and_on_the_reported_family(report):
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # the icl-vs-finetuning family as reported: Holm of the raw p-values, by hand
    header = "### icl-vs-finetuning (4 checks)"
    lines = report.splitlines()
    start = lines.index(header) + 4                          # title, blank, header, rule
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[start:start + 4]]
    raw = [_p(r[5]) for r in rows]
    order = sorted(range(4), key=lambda i: raw[i])
    adjusted, running = [0.0] * 4, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * raw[i]))
        adjusted[i] = running
    for r, want in zip(rows, adjusted, strict=True):
        assert _p(r[6]) == pytest.approx(want, rel=5e-3)
    # the Rec2FTP check's sign-flip p is the two-sided binomial test of 31 of 59 against 1/2
    smol = next(r for r in rows if r[0].startswith("smollm2-135m: ICL covers"))
    assert _p(smol[5]) == pytest.approx(min(1.0, 2 * float(_binom_brute(31, 59))), rel=5e-3)
    assert smol[-1] == "**NO**"


def test_bias_regression_spearman(report):
    data = _section("bias-regression")
    x = np.concatenate([np.ravel(data["mmd_gauss"][k]) for k in data["levels"]])
    y = np.concatenate([np.ravel(data["icl_excess"][k]) for k in data["levels"]])
    assert x.size == 45 and np.unique(x).size == 45 and np.unique(y).size == 45
    rho = _spearman_no_ties(x, y)
    cells = _row(report, "45")
    assert float(cells[1]) == pytest.approx(rho, abs=5e-4)
    assert 0.05 < _p(cells[2]) < 1
    # within each shift kind (the kinds' MMD scales differ): the mean of the kinds' rho, and a
    # permutation test within kinds
    within = [_spearman_no_ties(np.ravel(data["mmd_gauss"][k]), np.ravel(data["icl_excess"][k]))
              for k in data["levels"]]
    assert float(cells[4]) == pytest.approx(np.mean(within), abs=5e-4)
    assert _p(cells[5]) < 0.01


def test_ordering_numbers(report, script):
    data = _section("ordering")
    g = data["groups"][0]
    rs = g["results"][0]
    diff = [c - sum(col) / len(col)
            for r in rs
            for c, col in zip(r["correct"][r["medoid"]], zip(*r["correct"], strict=True),
                              strict=True)]
    cells = _row(report, "smollm2-135m", "trained", "360")
    assert float(cells[3].split(" ")[0]) == pytest.approx(sum(diff) / len(diff), abs=5e-4)
    # the item-level test calls far more than 5% of random picks significant
    assert float(cells[6].split(" ")[0]) > 0.2
    # exact set-level p agrees with its Monte Carlo cross-check, and is not significant
    assert _p(cells[7]) == pytest.approx(_p(cells[9]), abs=0.02)
    assert _p(cells[7]) > 0.05


def test_set_level_p_against_enumeration(script):
    rng = np.random.default_rng(3)
    counts = [rng.integers(0, 9, size=n) for n in (4, 5, 3)]
    picked = [1, 4, 0]
    obs = sum(int(k[o]) for k, o in zip(counts, picked, strict=True))
    mean = sum(Fraction(int(k.sum()), k.size) for k in counts)
    totals = [sum(int(k[o]) for k, o in zip(counts, pick, strict=True))
              for pick in itertools.product(*(range(k.size) for k in counts))]
    two = Fraction(sum(abs(t - mean) >= abs(obs - mean) for t in totals), len(totals))
    one = Fraction(sum(t >= obs for t in totals), len(totals))
    assert script.set_level_p(counts, picked) == pytest.approx((float(two), float(one)))


def test_header_and_summary(report):
    for name in ("ordering", "icl-vs-finetuning", "bias-regression", "adaptation",
                 "interference", "real"):
        assert f"`{name}.json`" in report
    assert "icldistill 0.1.0" in report and "torch " in report and "numpy " in report
    assert "| check | committed verdict | re-analysis verdict | why |" in report
    assert "identity (not phenomenon evidence)" in report
    assert not any(line.startswith("**Warning") for line in report.splitlines())


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_missing_folder_is_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lab_reanalysis.py"),
                           "--sections", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "r.md")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "no such folder" in proc.stderr
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("text", ['{"data": ', "[]", '{"data": {}, "checks": []}'])
def test_malformed_sections_are_exit_code_2(script, tmp_path, capsys, text):
    folder = tmp_path / "sections"
    folder.mkdir()
    for name in script.SECTIONS:
        (folder / f"{name}.json").write_text(text)
    assert script.main(["--sections", str(folder), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.md").exists()


def test_missing_section_file_is_exit_code_2(script, tmp_path, capsys):
    folder = tmp_path / "sections"
    folder.mkdir()
    assert script.main(["--sections", str(folder), "--out", str(tmp_path / "r.md")]) == 2
    assert "ordering.json: cannot read" in capsys.readouterr().err


def test_adaptation_spearman_claims_are_tested_over_tasks(report):
    """Regression: the adaptation Spearman checks were sign-flip tested over every (task,
    layer) pair (p ~ 1e-27 from three prompt sequences, which also shrank the Holm step for
    the section's other claims). The committed full sections keep one curve per task
    (averaged over its 2 sets), so the units are the 3 tasks: two-sided p = 2/8 at best."""
    header = "### adaptation (12 checks)"
    lines = report.splitlines()
    start = lines.index(header) + 4
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[start:start + 12]]
    spear = [r for r in rows if "falls as the number" in r[0] or "share of the attention" in r[0]]
    assert len(spear) == 6
    for r in spear:
        assert r[2] == "3" and r[3].startswith("tasks")
        assert _p(r[5]) >= 0.25
    # every unit is the mean over layers of the per-layer Spearman of one task's curve
    curves = {m[0]["model"]: m for group in _section("adaptation")["curves"] for m in group}
    smol = curves["smollm2-135m"]
    by_hand = []
    for t in smol:
        ks = np.asarray(t["ks"], float)
        arr = np.asarray(t["layers"]["demo_share"], float)
        sel = (ks >= 1) & np.isfinite(arr).all(1)
        by_hand.append(np.mean([_spearman_no_ties(ks[sel], arr[sel, j])
                                for j in range(arr.shape[1])]))
    share = next(r for r in spear if r[0].startswith("smollm2-135m: the demonstrations' share"))
    assert float(share[4]) == pytest.approx(np.mean(by_hand), abs=5e-4)
    # with only 3 units left, qwen2.5-0.5b's accuracy gain (p 0.006 over 180 items) is the
    # section's smallest p-value: Holm multiplies it by all 12 claims
    acc = next(r for r in rows if r[0] == "qwen2.5-0.5b: accuracy rises with k")
    assert _p(acc[6]) == pytest.approx(min(1.0, 12 * _p(acc[5])), rel=5e-3)
    assert acc[-1] == "**NO**"


# ------------------------------------------------------------------------------------------------
# Section 6: the demonstration sets as units
# ------------------------------------------------------------------------------------------------

QUICK = ROOT / "benchmarks" / "results" / "lab" / "quick" / "sections"
UNITS = "## 6. Units: the demonstration sets"


def _sign_flip_enumerated(d: list[float]) -> float:
    """Two-sided sign-flip p by listing all 2^n sign vectors."""
    obs = abs(sum(d))
    tol = 1e-9 * max(1.0, sum(abs(x) for x in d))
    hits = sum(abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= obs - tol
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


def _holm_by_hand(raw: list[float]) -> list[float]:
    order = sorted(range(len(raw)), key=lambda i: raw[i])
    adjusted, running = [0.0] * len(raw), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(raw) - rank) * raw[i]))
        adjusted[i] = running
    return adjusted


def _unit_row(md: str, section: str, model: str, label: str) -> list[str]:
    """A row of section 6's table for ``section``."""
    lines = md.splitlines()
    start = lines.index(f"### {section}", lines.index(UNITS))
    return _row("\n".join(lines[start:]), model, label)


def _unit_values(cell: str) -> list[float]:
    """``name +0.123, name -0.045`` -> the numbers."""
    return [float(part.rsplit(" ", 1)[1]) for part in cell.split(", ")]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _check_unit_row(cells: list[str], by_hand: list[float], audit: list[float]) -> float:
    """The report's per-unit values, mean, exact p and floor against the hand computation
    (and the audit's rounded figures); returns the enumerated p."""
    n = len(by_hand)
    assert cells[8] == str(n)
    assert _unit_values(cells[9]) == pytest.approx(by_hand, abs=5e-4)
    assert by_hand == pytest.approx(audit, abs=6e-3)
    assert float(cells[10]) == pytest.approx(_mean(by_hand), abs=5e-4)
    p = _sign_flip_enumerated(by_hand)
    assert _p(cells[11]) == pytest.approx(p, rel=5e-3)
    assert _p(cells[12]) == pytest.approx(2 / 2 ** n, rel=5e-3)
    return p


def _family_holm(md: str, section: str, model: str, n_rows: int) -> list[list[str]]:
    """The ``n_rows`` rows of a (section, model) family, with their Holm column checked
    against Holm of their set-level p-values by hand."""
    lines = md.splitlines()
    start = lines.index(f"### {section}", lines.index(UNITS))
    rows = []
    for line in lines[start:]:
        if line.startswith(f"| {model} | "):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    assert len(rows) == n_rows
    want = _holm_by_hand([_p(r[11]) for r in rows])
    for r, a in zip(rows, want, strict=True):
        p_holm, m = r[13].split(" (m = ")
        assert _p(p_holm) == pytest.approx(a, rel=5e-3) and m == f"{n_rows})"
    return rows


def test_units_adaptation_gain_per_task_and_set(report):
    curves = {m[0]["model"]: m for group in _section("adaptation")["curves"] for m in group}
    by_hand = []
    for t in curves["qwen2.5-0.5b"]:
        assert t["ks"][0] == 0
        rows = [c for c in t["correct"] if c is not None]
        zero, last = rows[0], rows[-1]
        for s in range(len(last)):
            by_hand.append(sum(last[s]) / len(last[s]) - sum(zero[s]) / len(zero[s]))
    cells = _unit_row(report, "adaptation", "qwen2.5-0.5b",
                      "accuracy gain, largest k - zero-shot (> 0)")
    p = _check_unit_row(cells, by_hand, [-0.017, 0, 0.283, 0.4, -0.017, -0.017])
    assert p == pytest.approx(0.5)
    # the committed unit: 180 test items, the same sign-flip p as section 4's check
    assert cells[3].startswith("test items") and cells[4] == "180"
    assert cells[2] == "yes (check)"
    assert _p(cells[6]) == pytest.approx(0.00623, rel=5e-3)
    _family_holm(report, "adaptation", "qwen2.5-0.5b", 2)
    assert cells[14] == "not shown at the set level; untestable at this size"


def test_units_interference_random_labels(report):
    data = _section("interference")
    v = data["variants"].index("random-label")
    assert data["rhos"][0] == 0 and data["rhos"][-1] == 1
    group = next(g for g in data["groups"] if g["model"] == "qwen2.5-0.5b")
    trained = next(m for m in group["models"] if m["role"] == "trained")
    by_hand = []
    for t in trained["tasks"]:
        at0, at1 = t["correct"][v][0], t["correct"][v][-1]            # [set][item]
        for s in range(len(at0)):
            by_hand.append((sum(at0[s]) - sum(at1[s])) / len(at0[s]))
    cells = _unit_row(report, "interference", "qwen2.5-0.5b",
                      "accuracy drop rho=0 -> 1, random labels (> 0)")
    p = _check_unit_row(cells, by_hand, [0.083, 0.05, 0.217, 0.133, 0.5, 0.35])
    assert p == pytest.approx(1 / 32)                     # all six positive: the floor
    rows = _family_holm(report, "interference", "qwen2.5-0.5b", 4)
    assert cells in rows
    # even the floor cannot pass Holm over 4 rows: 4 * 2/2^6 = 0.125
    assert _p(cells[13].split(" ")[0]) >= 0.125
    assert cells[14] == "not shown at the set level; untestable at this size"


def _disagreement_by_hand(preds: list[list]) -> float:
    """Mean over items of the share of orders that differ from the item's most frequent
    prediction."""
    shares = []
    for i in range(len(preds[0])):
        column = [str(p[i]) for p in preds]
        top = max(column.count(x) for x in set(column))
        shares.append(1 - top / len(column))
    return _mean(shares)


def test_units_ordering_disagreement_trained_minus_twin(report):
    g = next(g for g in _section("ordering")["groups"] if g["models"][0] == "smollm2-135m")
    trained, twin = g["results"][0], g["results"][1]
    by_hand = [_disagreement_by_hand(a["predictions"]) - _disagreement_by_hand(b["predictions"])
               for a, b in zip(trained, twin, strict=True)]
    cells = _unit_row(report, "ordering", "smollm2-135m",
                      "disagreement across orders, trained - twin (> 0)")
    p = _check_unit_row(cells, by_hand, [-0.05, -0.233, 0.236, 0.204, -0.139, 0.225])
    assert p == pytest.approx(0.59375)
    assert cells[2] == "yes (check)" and cells[4] == "360"
    _family_holm(report, "ordering", "smollm2-135m", 5)
    assert cells[14] == "not shown at the set level; untestable at this size"
    # the medoid row keeps section 1's pick-randomisation p
    medoid = _unit_row(report, "ordering", "smollm2-135m", "medoid order - random order (> 0)")
    section1 = _row(report, "smollm2-135m", "trained", "360")
    assert medoid[15] == f"pick-randomisation set-level p (section 1) = {section1[7]}"


def test_units_simaou_per_fine_tuning_run(report):
    g = next(g for g in _section("icl-vs-finetuning")["groups"]
             if g["models"][0] == "qwen2.5-0.5b")
    by_hand = []
    for r in g["results"][0]:
        per_item = [_mean(c) - _mean(rc) for c, rc in zip(r["cos"], r["random_cos"],
                                                          strict=True)]
        by_hand.append(_mean(per_item))
    cells = _unit_row(report, "icl-vs-finetuning", "qwen2.5-0.5b",
                      "SimAOU - random-vector baseline (> 0)")
    p = _check_unit_row(cells, by_hand, [0.242, 0.197, 0.221])
    assert p == pytest.approx(0.25)
    assert cells[4] == "300" and cells[13] == "0.25 (m = 1)"
    assert cells[14] == "not shown at the set level; untestable at this size"


def test_units_rows_in_the_summary(report):
    """Every tested row of section 6 is a summary row; none holds with 6 (task, set) units."""
    summary = report[report.index("## Summary"):]
    rows = [line for line in summary.splitlines() if line.startswith("| set level, ")]
    assert len(rows) == 2 * (2 + 4 + 5 + 1)
    assert all(" | not shown at the set level; untestable at this size: Holm p " in r
               for r in rows)
    # the rows the README's re-judged lab count reads are unchanged
    assert "| adaptation: qwen2.5-0.5b: accuracy rises with k | yes | **NO**: Holm p" in report
    assert "## 9. Identity checks of the real section" in report


def test_units_quick_run_has_no_second_model(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "N_PICKS", 0)
    monkeypatch.setattr(script, "N_PERM", 50)
    out = tmp_path / "quick.md"
    assert script.main(["--sections", str(QUICK), "--out", str(out)]) == 0
    md = out.read_text()
    cells = _unit_row(md, "ordering", "qwen2.5-0.5b",
                      "disagreement across orders, trained - twin (> 0)")
    assert cells[14] == "not in this run"
    cells = _unit_row(md, "interference", "smollm2-135m",
                      "accuracy drop rho=0 -> 1, random labels (> 0)")
    assert cells[8] == "3" and _p(cells[12]) == pytest.approx(0.25)
    assert cells[14] == "not shown at the set level; untestable at this size"


@pytest.mark.parametrize("section, edit, message", [
    ("interference", lambda d: d.update(rhos=d["rhos"][::-1]), "rho levels must run from 0"),
    ("interference", lambda d: d.pop("variants"), "KeyError: 'variants'"),
    ("adaptation", lambda d: d["curves"][0][0][0]["correct"][-1][0].__setitem__(0, 0.5),
     "adaptation: 'correct' must be a 0/1 array"),
])
def test_units_bad_input_is_exit_code_2(script, tmp_path, monkeypatch, capsys, section, edit,
                                        message):
    monkeypatch.setattr(script, "N_PICKS", 0)
    monkeypatch.setattr(script, "N_PERM", 50)
    folder = tmp_path / "sections"
    folder.mkdir()
    for name in script.SECTIONS:
        sec = json.loads((QUICK / f"{name}.json").read_text())
        if name == section:
            edit(sec["data"])
        (folder / f"{name}.json").write_text(json.dumps(sec))
    assert script.main(["--sections", str(folder), "--out", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert message in err
    assert not (tmp_path / "r.md").exists()


def test_interference_units_follow_the_section(script, tmp_path):
    """Regression: the interference claims were labelled "test items (mean over 2 sets)"
    whatever the section held; the quick run's sections (since 2026-12-05) keep one drop per
    (task, set), 3 of them."""
    out = tmp_path / "quick.md"
    script.N_PICKS = 50
    try:
        assert script.main(["--sections", str(FULL.parents[1] / "quick" / "sections"),
                            "--out", str(out)]) == 0
    finally:
        script.N_PICKS = 1000
    text = out.read_text()
    row = _row(text, "smollm2-135m: random labels lower accuracy",
               after="### interference (4 checks)")
    assert row[2:4] == ["3", "(task, set) units"]
    committed = (FULL.parents[1] / "reanalysis.md").read_text()
    full = _row(committed, "smollm2-135m: random labels lower accuracy",
                after="### interference (8 checks)")
    assert full[2:4] == ["180", "test items (mean over 2 sets)"]


def test_mmd_beyond_rho(report, script):
    """The within-rho test: the committed statistic by hand (qwen2.5-0.5b, label-aware MiniLM),
    an effect present on every level found, none found by the layer search alone."""
    data = _section("interference")
    fv = data["variants"].index("foreign")
    g = next(g for g in data["groups"] if g["model"] == "qwen2.5-0.5b")
    m = next(m for m in g["models"] if m["role"] == "trained")
    corrs = []
    for t, dt in zip(m["tasks"], data["tasks"], strict=True):
        acc = np.asarray(t["correct"], float)[fv].mean(-1)          # [R, S]
        x = np.asarray(dt["mmd_text"], float)[fv]
        a, b = acc - acc.mean(1, keepdims=True), x - x.mean(1, keepdims=True)
        corrs.append(float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())))
    cells = _row(report, "qwen2.5-0.5b", "trained", "label-aware MiniLM",
                 after="## 7. interference: the MMD² beyond the fraction of foreign "
                       "demonstrations")
    assert float(cells[3]) == pytest.approx(np.mean(corrs), abs=5e-4)
    assert 0.2 < _p(cells[4]) < 0.8
    assert "smallest p the sets allow" in report
    rng = np.random.default_rng(0)
    x = [rng.random((6, 2)) for _ in range(3)]
    # accuracy lower for the set with the larger MMD² at every level: with 2 sets in each of
    # 3 tasks, the 8 relabellings of whole sets allow no p below 1/8 (regression: each level
    # was shuffled on its own, as if the 6 levels were 6 independent draws: p < 0.002)
    accs = [0.5 - 0.1 * (xi == xi.max(1, keepdims=True)) for xi in x]
    r, best, p, floor = script.within_rho_test(accs, [x], 2000, 0)
    assert r < -0.5 and best == 0 and p == floor == 1 / 8
    # 6 sets in each of 3 tasks (6!^3 relabellings, drawn): a real relation is found
    x6 = [rng.random((4, 6)) for _ in range(3)]
    accs6 = [0.5 - 0.1 * xi for xi in x6]
    r, best, p, floor = script.within_rho_test(accs6, [x6], 2000, 0)
    assert r == pytest.approx(-1.0) and p == floor == 1 / 2001
    # 30 unrelated "layers" and accuracy that ignores them: the search does not find one
    layers = [[rng.random((6, 4)) for _ in range(3)] for _ in range(30)]
    noise = [rng.random((6, 4)) for _ in range(3)]
    r, best, p, floor = script.within_rho_test(noise, layers, 500, 0)
    assert r < 0 and p > 0.05
    # a task whose accuracy is equal within every level is left out, whatever the value
    flat = [script.within_rho_test([np.full((2, 3), v), -x6[0][:2, :3]],
                                   [[rng.random((2, 3)), x6[0][:2, :3]]], 100, 0)[0]
            for v in (1.0, 0.1)]
    assert flat[0] == pytest.approx(-1.0) and flat[1] == pytest.approx(-1.0)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(2, 4), st.integers(2, 3),
       st.integers(1, 3))
def test_the_package_within_level_test_agrees(script, seed, T, R, S, C):
    """The laboratory's within-level test (``icldistill.lab.experiments._stats``) and the
    re-analysis' independent one (section 7) give the same statistic and chosen layer, and
    p-values within their Monte Carlo error."""
    from icldistill.lab.experiments._stats import within_level_test

    rng = np.random.default_rng(seed)
    ys = [rng.random((R, S)) for _ in range(T)]
    xs = [[rng.random((R, S)) - rng.random() * y for y in ys] for _ in range(C)]
    r, best, p, floor = script.within_rho_test(ys, xs, 3000, 0)
    got = within_level_test(ys, xs, n_perm=3000, seed=1)
    assert got.r == pytest.approx(r, nan_ok=True) and got.best == best
    assert got.floor == pytest.approx(floor, nan_ok=True)
    if got.exact:                               # both enumerate every relabelling
        assert got.p == pytest.approx(p)
    else:
        assert got.p == pytest.approx(p, abs=0.05)


# ------------------------------------------------------------------ 8. saturation, re-paired
@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([(1, 1), (3, 1), (5, 1), (6, 1), (2, 2), (3, 2),
                                                (2, 3)]))
def test_the_package_pairing_test_agrees(script, seed, shape):
    """The laboratory's pairing permutation test and the re-analysis' (section 8) agree
    exactly where both enumerate every re-pairing (tasks moved as wholes, sets within); the
    chance agreement is the mean over them."""
    from icldistill.lab.experiments._stats import pairing_permutation_test

    B, S = shape
    n = B * S
    rng = np.random.default_rng(seed)
    match = rng.random((n, n)) < rng.random()
    block = [f"t{i // S}" for i in range(n)]
    active = rng.random(n) < 0.8
    p, chance, total, exact = script.pairing_p(match, 10_000, 0, block)
    got = pairing_permutation_test(match, blocks=block)
    assert got.exact and exact and total == got.n_perm
    assert got.p == pytest.approx(p) and got.agree == int(np.trace(match))
    if S == 1:                                  # every permutation: the mean of the matrix
        assert chance == pytest.approx(match.sum() / n)
    if active.any():                            # only the active units re-paired
        p, _, _, _ = script.pairing_p(match, 10_000, 0, block, active)
        got = pairing_permutation_test(match, blocks=block, active=active)
        assert got.p == pytest.approx(p)


def test_saturation_section_on_the_full_run(report):
    """The committed full run keeps only the curves averaged over its two sets: 3 task units
    per model, 6 re-pairings, no p below 1/6. Every distillation curve of the trained models
    saturates at k = 16 or 32, so agreement is what re-pairing gives: p = 1."""
    part = report[report.index("## 8. adaptation"):report.index("## 9. Identity")]
    rows = [r for r in part.splitlines() if r.startswith("| smollm2-135m | trained")
            or r.startswith("| qwen2.5-0.5b | trained")]
    assert len(rows) == 4
    for r in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", r.strip("|"))]
        assert cells[3] == "3 task units" and cells[7] == "1"
        assert cells[8] == "0.167; untestable at this size"
    assert "| qwen2.5-0.5b | trained | demo share | 3 task units | amazon 2 / 16, " \
           "rt-subjectivity 32 / 16, r8 2 / 16 | 1 of 3 | 1.00 | 1 |" in part
    summary = report[report.index("## Summary"):]
    assert "| adaptation, qwen2.5-0.5b: the demo share curve predicts where accuracy " \
           "saturates | **NO** | not beyond chance pairing: p = 1 |" in summary


def test_saturation_units_from_per_set_curves(script):
    """Sections that keep each set's curves give one unit per (task, set), read from that
    set's items and traced prompts."""
    ks = [0, 1, 2, 4]
    correct = np.zeros((4, 2, 5))
    correct[1:, 0] = 1                                    # set 1 saturates at k = 1
    correct[3, 1] = 1                                     # set 2 at k = 4
    share = [[[0.0], [0.9], [0.9], [0.9]], [[0.0], [0.1], [0.2], [0.9]]]
    w0 = [[[np.nan], [1.0], [2.0], [2.0]], [[np.nan], [1.0], [1.0], [5.0]]]
    curve = {"task": "t", "ks": ks, "correct": correct.tolist(),
             "set_layers": {"demo_share": share, "log_w0_norm": w0}}
    units, kind = script.saturation_units([curve])
    assert kind == "(task, set)" and [u["name"] for u in units] == ["t set 1", "t set 2"]
    assert [(u["accuracy"], u["demo_share"], u["log_w0_norm"]) for u in units] == \
        [(1.0, 1.0, 2.0), (4.0, 4.0, 4.0)]
    assert all(u["rises"] for u in units)


def test_pairing_p_never_below_its_stated_floor(script):
    """Review (helper-54): the re-analysis enumerated only when n! <= n_perm but stated the
    floor 1/(T! S!^T) whenever that was <= n_perm: 4 tasks x 2 sets gave a Monte Carlo p of
    0.00260 under a stated floor of 1/384 = 0.00260. Up to 8 units every re-pairing is
    enumerated now."""
    block = [i // 2 for i in range(8)]
    p, _, total, exact = script.pairing_p(np.eye(8, dtype=bool), 10_000, 0, block)
    assert exact and total == 384 and p == pytest.approx(1 / 384)
    p, _, total, exact = script.pairing_p(np.eye(10, dtype=bool), 500, 0)
    assert not exact and total == 500 and p >= 1 / 501


def test_saturation_rows_count_only_rising_units(script):
    """Review (helper-55): the agreeing units were counted over every unit, and a flat
    accuracy curve saturates at k = 0, which agrees with any distillation k_sat up to 2
    ("3 of 2"). Only the units whose accuracy rises count."""
    ks = [0, 1, 2, 4]

    def curve(task, acc, share):
        correct = [[[1.0] * int(10 * a) + [0.0] * (10 - int(10 * a))] for a in acc]
        return {"model": "m", "role": "trained", "task": task, "ks": ks, "correct": correct,
                "layers": {"demo_share": [[v] for v in share],
                           "log_w0_norm": [[float("nan")]] + [[v] for v in share[1:]]}}

    rising = [0.1, 0.9, 0.9, 0.9]
    flat = [0.5, 0.5, 0.5, 0.5]
    curves = [curve("a", rising, [0, 1, 1, 1]), curve("b", rising, [0, 0.2, 0.4, 1]),
              curve("c", flat, [0, 1, 1, 1]), curve("d", flat, [0, 1, 1, 1])]
    rep = script.Report()
    script.saturation_pairing(rep, {"data": {"curves": [[curves]]}, "checks": []}, 100)
    rows = [r for r in rep.lines if r.startswith("| m | trained | demo share")]
    assert len(rows) == 1 and "| 1 of 2 |" in rows[0]


def test_pairing_p_samples_the_active_subgroup_directly(script):
    """Review (helper-55): rejection sampling kept 1 draw in C(n, a); 12 units with 2 active
    now draw from the subgroup itself and agree with the package."""
    from icldistill.lab.experiments._stats import pairing_permutation_test

    match = np.eye(12, dtype=bool)
    active = np.zeros(12, dtype=bool)
    active[[3, 7]] = True
    p, _, total, exact = script.pairing_p(match, 2000, 0, None, active)
    assert not exact and total == 2000
    assert p == pytest.approx(pairing_permutation_test(match, active=active).p, abs=0.05)
    assert p == pytest.approx(0.5, abs=0.05)               # 2 active units: 2 re-pairings
