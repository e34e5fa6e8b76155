"""``benchmarks/lab_reanalysis.py``: the re-analysis of the committed laboratory sections.

The script runs once on the committed full sections (into a temporary folder); its numbers are
checked against computations done here independently from the JSON files (plain counting, brute
force enumeration), and bad input must be a one-line error with exit code 2.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

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
