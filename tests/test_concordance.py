"""within_item_concordance against a brute-force double loop, and its item-bootstrap p-value
against the resamples that give its interval."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.stats import within_item_concordance
from icldistill.core.validation import InputError


def _brute(correct, x, strata=None):
    """Score and number of the discordant pairs, one pair at a time."""
    n, c = x.shape
    g = np.zeros((n, c), dtype=int) if strata is None else strata
    score = pairs = 0.0
    for i in range(n):
        for a in range(c):
            for b in range(c):
                if np.isnan(x[i, a]) or np.isnan(x[i, b]) or g[i, a] != g[i, b]:
                    continue
                if correct[i, a] and not correct[i, b]:
                    pairs += 1
                    score += 1.0 if x[i, a] < x[i, b] else 0.5 if x[i, a] == x[i, b] else 0.0
    return score, pairs


@st.composite
def _tables(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, 5))
    # few distinct values: ties are common
    x = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, np.nan]),
                               min_size=n * c, max_size=n * c))).reshape(n, c)
    correct = np.array(draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c))
                       ).reshape(n, c)
    strata = np.array(draw(st.lists(st.integers(0, 2), min_size=n * c, max_size=n * c))
                      ).reshape(n, c)
    return correct, x, strata


@settings(max_examples=150, deadline=None)
@given(_tables(), st.booleans())
def test_equals_the_pairwise_definition(table, stratified):
    correct, x, strata = table
    s = strata if stratified else None
    score, pairs = _brute(correct, x, s)
    r = within_item_concordance(correct, x, strata=s, n_boot=50)
    assert r.n_pairs == pairs
    if pairs == 0:
        assert np.isnan(r.value) and np.isnan(r.p) and r.n_items == 0
    else:
        assert r.value == pytest.approx(score / pairs, abs=1e-12)
        assert r.low <= r.value + 1e-12 and r.value <= r.high + 1e-12
        assert 0 < r.p <= 1


def test_perfect_reversed_and_invariances():
    rng = np.random.default_rng(1)
    x = rng.random((40, 6))
    right = x < np.median(x, axis=1, keepdims=True)         # the lower half of each item
    assert within_item_concordance(right, x, n_boot=200).value == 1.0
    assert within_item_concordance(~right, x, n_boot=200).value == 0.0
    r = within_item_concordance(right, x, n_boot=200)
    assert r.p == pytest.approx(1 / 201)                   # no resample reaches 0.5 in 200
    # a monotone transform of x and a reordering of the conditions change nothing
    cols = rng.permutation(6)
    same = within_item_concordance(right[:, cols], np.exp(3 * x[:, cols]), n_boot=200)
    assert same.value == r.value and same.n_pairs == r.n_pairs


def test_p_is_the_percentile_bootstrap_p_of_the_interval_resamples():
    """The p-value is ``2 min(P*(v* <= 0.5), P*(v* >= 0.5))`` (floored at ``1/(B+1)``) over
    the item resamples that give the interval: the resampled ratios are rebuilt here from
    the per-item scores of the brute-force double loop and the same generator."""
    rng = np.random.default_rng(8)
    x = rng.random((30, 4))
    correct = rng.random((30, 4)) < 0.5 + 0.3 * (x < 0.4)
    n_boot = 300
    r = within_item_concordance(correct, x, n_boot=n_boot, seed=3)
    per_item = np.array([_brute(correct[i:i + 1], x[i:i + 1]) for i in range(30)])
    keep = per_item[:, 1] > 0
    s_i, m_i = per_item[keep, 0], per_item[keep, 1]
    idx = np.random.default_rng(3).integers(0, s_i.size, size=(n_boot, s_i.size))
    draws = s_i[idx].sum(axis=1) / m_i[idx].sum(axis=1)
    assert (r.low, r.high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])),
                                            abs=1e-12)
    tails = min(np.mean(draws <= 0.5), np.mean(draws >= 0.5))
    assert r.p == pytest.approx(min(1.0, max(1 / (n_boot + 1), 2 * tails)), abs=1e-12)


def test_strata_keep_pairs_and_permutations_inside():
    """Where the score only separates the strata (right answers all in stratum 1, which has
    lower x), the unstratified concordance is high but the stratified one is 0.5."""
    rng = np.random.default_rng(2)
    n, c = 200, 8
    strata = rng.integers(0, 2, (n, c))
    x = np.where(strata == 1, 0.0, 1.0) + 0.0            # x is the stratum only
    correct = (strata == 1) & (rng.random((n, c)) < 0.7) | (rng.random((n, c)) < 0.1)
    plain = within_item_concordance(correct, x, n_boot=300)
    strat = within_item_concordance(correct, x, strata=strata, n_boot=300)
    assert plain.value > 0.7 and plain.p < 0.01
    assert strat.value == 0.5 and strat.p == 1.0


def test_null_is_not_rejected_too_often():
    rng = np.random.default_rng(4)
    ps = [within_item_concordance(rng.random((60, 5)) < 0.5, rng.random((60, 5)),
                                  n_boot=200, seed=s).p for s in range(40)]
    assert np.mean(np.array(ps) < 0.05) <= 0.15


def test_seeded_and_bad_input():
    rng = np.random.default_rng(5)
    c, x = rng.random((30, 4)) < 0.5, rng.random((30, 4))
    assert within_item_concordance(c, x, seed=7) == within_item_concordance(c, x, seed=7)
    with pytest.raises(InputError, match="same shape"):
        within_item_concordance(c, x[:, :3])
    with pytest.raises(InputError, match="infinite"):
        within_item_concordance(c, np.where(c, np.inf, x))
    with pytest.raises(InputError, match="boolean"):
        within_item_concordance(np.full((30, 4), 2), x)
    with pytest.raises(InputError, match="strata"):
        within_item_concordance(c, x, strata=np.zeros((30, 3), dtype=int))


def _units_and_coverage(rng, n=40, k=4, tasks=("a", "b"), selectors=("s1", "s2", "s3"),
                        closer_is_right=True):
    """Fake units of one model and ``k`` and their coverage records: on every item the
    prompt with the lowest MMD² is right and the others wrong (or the reverse)."""
    from types import SimpleNamespace

    from icldistill.evaluation.harness import LabelCoverage

    units, cov = [], {}
    for t in tasks:
        mmd2 = rng.random((n, len(selectors)))
        best = mmd2.argmin(axis=1) if closer_is_right else mmd2.argmax(axis=1)
        for j, s in enumerate(selectors):
            key = f"{t}-{s}"
            units.append(SimpleNamespace(key=key, spec=SimpleNamespace(task=t, k=k, label=s)))
            share = rng.integers(0, k + 1, n) / k
            cov[key] = LabelCoverage(key, share > 0, share, best == j, np.zeros(n), mmd2[:, j])
    return units, cov


def test_concordance_records_on_a_known_grid():
    from icldistill.reporting.concordance import concordance_records, concordance_section

    rng = np.random.default_rng(0)
    units, cov = _units_and_coverage(rng)
    _, flipped = _units_and_coverage(np.random.default_rng(0), closer_is_right=False)
    recs = concordance_records({("m", 4): units}, cov, flipped, n_boot=100)
    trained = {(r.task, r.pairs_compared): r for r in recs if r.reader == "trained"}
    control = {(r.task, r.pairs_compared): r for r in recs if r.reader == "control"}
    assert set(trained) == {(t, h) for t in ("a", "b", "all")
                            for h in ("all pairs", "same label shown", "same label count")}
    for key, r in trained.items():
        if r.n_pairs:
            assert r.value == 1.0 and control[key].value == 0.0
            assert r.p_holm >= r.p and r.n_conditions == 3
    assert trained[("all", "all pairs")].n_pairs == 2 * 40 * 2     # 1 right x 2 wrong per item
    md_section = concordance_section(recs)
    assert md_section.title == "Within an item, do closer demonstrations answer right?"
    # a second space: its own records and table, one Holm family per reader with the first
    katt = {key: -c.mmd2_query for key, c in cov.items()}      # closer is now farther
    both = concordance_records({("m", 4): units}, cov, flipped, katt=katt, n_boot=50)
    assert {r.space for r in both} == {"reference", "K_att"} and len(both) == 2 * len(recs)
    assert all(r.value == 0.0 for r in both if r.space == "K_att" and r.reader == "trained"
               and r.n_pairs)
    titles = [b.title for b in concordance_section(both).blocks[2:]]
    assert len(titles) == 2 and "K_att" in titles[1]
    # units without per-item MMD give no records
    no_mmd = {k: dataclasses.replace(c, mmd2_query=None) for k, c in cov.items()}
    assert concordance_records({("m", 4): units}, no_mmd) == []


def test_a_control_on_fewer_tasks_is_pooled_beside_the_same_tasks():
    from icldistill.reporting.concordance import (
        CONTROL_TASKS,
        concordance_records,
        concordance_section,
    )

    units, cov = _units_and_coverage(np.random.default_rng(3), tasks=("a", "b", "c"))
    control = {k: v for k, v in cov.items() if not k.startswith("c-")}
    recs = concordance_records({("m", 4): units}, cov, control, n_boot=50)
    pooled = {(r.reader, r.task) for r in recs if r.task in ("all", CONTROL_TASKS)}
    assert pooled == {("trained", "all"), ("trained", CONTROL_TASKS), ("control", CONTROL_TASKS)}
    sub = next(r for r in recs if (r.reader, r.task, r.pairs_compared)
               == ("trained", CONTROL_TASKS, "all pairs"))
    assert sub.n_pairs == 2 * 40 * 2                       # tasks a and b only
    claims = concordance_section(recs).blocks[1].items
    assert any("the control's tasks: trained" in c for c in claims)
    assert all("all, the control" not in c.split("right answers on")[-1] for c in claims)


def _records(model, tasks, p_holm=0.001, value=0.7):
    from icldistill.reporting.concordance import ConcordanceRecord

    return [ConcordanceRecord(model, 4, t, how, "trained", "reference", value, value - 0.1,
                              value + 0.1, p_holm, p_holm, 50, 100, 3)
            for t in tasks for how in ("all pairs", "same label shown", "same label count")]


def test_section_escapes_task_and_model_names_in_its_sentences():
    """Regression: the computed sentences put the model (``"model k=K"``) and the task names
    into inline Markdown unescaped, so ``*x*`` became emphasis and backticks a code span."""
    import html

    from icldistill.artifacts.document import Report, plain, to_html, to_markdown
    from icldistill.reporting.concordance import concordance_section

    task, model = "x*bold*_y_", "org/m_`x`"
    sec = concordance_section(_records(model, [task, "other", "all"]))
    md, page = to_markdown(Report("T", (sec,))), to_html(Report("T", (sec,)))
    (line,) = [ln for ln in md.splitlines() if "closer demonstrations go with right" in ln]
    assert line.startswith(f"- {plain(model)} k=4:") and plain(task) in line
    assert f"{html.escape(model)} k=4" in page and html.escape(task) in page
    assert "<em>" not in page and "<code>x</code>" not in page


def test_section_p_values_just_below_alpha_keep_their_digits():
    """Regression: a Holm p of 0.0496 was written ``0.05`` (``.2g``) in the sentences."""
    from icldistill.artifacts.document import Report, to_markdown
    from icldistill.reporting.concordance import concordance_section

    md = to_markdown(Report("T", (concordance_section(
        _records("m", ["a", "b", "all"], p_holm=0.0496)),)))
    assert "(Holm p 0.0496)" in md and "Holm p 0.05)" not in md
    md = to_markdown(Report("T", (concordance_section(
        _records("m", ["a", "b", "all"], p_holm=0.23)),)))
    assert "(Holm p 0.23)" in md
