"""The task-adaptation section on a tiny random model and a toy task."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.validation import InputError
from icldistill.lab.experiments import adaptation
from icldistill.lab.experiments import phenomena as ph

from .lab_helpers import PNG, tiny_group
from .test_harness import _write_task

#: k = 32 does not fit the tiny model's context of 256 tokens (about 14 tokens a demonstration).
KS = (0, 1, 2, 4, 32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    task = _write_task(tmp_path_factory.mktemp("data") / "toy.jsonl")
    return ph.task_items(task.split, n_test=8, seed=0, name="toy")


@pytest.fixture(scope="module")
def group():
    return tiny_group()


def _run(tmp_path, toy, group, **kw):
    args = dict(out_dir=tmp_path, quick=True, seed=0, tasks=[toy, toy], under_test=[group],
                ks=KS, n_sets=2, n_trace=1)
    args.update(kw)
    return adaptation.run(**args)


@pytest.fixture(scope="module")
def section(tmp_path_factory, toy, group):
    out = tmp_path_factory.mktemp("adaptation")
    return out, _run(out, toy, group)


def test_section_builds(section):
    out, sec = section
    assert sec.name == "adaptation"
    assert sec.tables and all(t.rows for t in sec.tables)
    assert len(sec.figures) == 3
    for f in sec.figures:
        assert (out / f).read_bytes()[:8] == PNG
    assert sec.checks and sec.findings
    assert len(sec.checks) == 6
    assert all(isinstance(c.holds, bool) for c in sec.checks)
    assert all("random-init control spread" in c.detail for c in sec.checks)
    # every claim is Holm-corrected over the section's claims (and holds only below ALPHA)
    assert all("Holm-adjusted over the section's 6 claim checks" in c.detail
               for c in sec.checks)
    # a handful of (task, set) units cannot pass 6 Holm-corrected checks: each says so
    assert all(c.testable is False and not c.holds and "not testable at this size" in c.detail
               for c in sec.checks)
    json.dumps(sec.data, allow_nan=False)
    assert sec.seconds > 0
    assert len(sec.data["comparisons"]) == 6


def test_one_point_per_fitting_k(section):
    _, sec = section
    curves = sec.data["curves"][0]             # [member][task]
    assert len(curves) == 2 and len(curves[0]) == 2
    for member in curves:
        for c in member:
            assert c["ks"] == [0, 1, 2, 4]                 # 32 is too long for the context
            assert c["skipped"][0][0] == 32 and "context" in c["skipped"][0][1]
            K = len(c["ks"])
            assert len(c["accuracy"]) == K
            assert np.asarray(c["correct"]).shape == (K, 2, 8)
            for q in adaptation.QUANTITIES:
                assert len(c["layer_mean"][q]) == K
    assert any("k=32" in f and "context" in f for f in sec.findings)


def test_zero_shot_has_no_w0(toy, group):
    rng = np.random.default_rng(0)
    orders = adaptation.demo_orders(toy.pool_labels, 4, 2, rng)
    curve = adaptation.adaptation_curve(group[0], toy, [0, 2, 4], orders,
                                        np.array([[0], [3]]))
    L = curve.traced["demo_share"].shape[-1]
    assert curve.traced["demo_share"].shape == (3, 2, L) and L == 2
    for q in ("demo_mass", "demo_share", "eta"):
        np.testing.assert_array_equal(curve.traced[q][0], 0.0)
        assert np.all(curve.traced[q][1:] > 0)
    assert np.isnan(curve.traced["log_w0_norm"][0]).all()
    assert np.isfinite(curve.traced["log_w0_norm"][1:]).all()
    assert np.isfinite(curve.traced["log_normalizer"]).all()
    # the per-key normaliser is log D' minus the log of the prompt length
    np.testing.assert_allclose(curve.traced["log_normalizer_per_key"],
                               curve.traced["log_normalizer"]
                               - np.log(curve.n_tokens)[..., None])
    # k = 0 is scored once: the same answers in every set
    np.testing.assert_array_equal(curve.correct[0, 0], curve.correct[0, 1])
    assert np.isnan(curve.layer_mean("log_w0_norm")[0])
    assert adaptation.curve_saturation(curve, "log_w0_norm") in (2.0, 4.0)


def test_nested_demonstration_sets(toy):
    rng = np.random.default_rng(3)
    (order,) = adaptation.demo_orders(toy.pool_labels, 16, 1, rng)
    prev: list[int] = []
    for k in (1, 2, 4, 8, 16):
        idx = adaptation.nested_set(order, k).tolist()
        assert len(set(idx)) == k
        # the smaller prompt is a sub-sequence of the larger one
        it = iter(idx)
        assert all(i in it for i in prev)
        labels = toy.pool_labels[idx]
        counts = [int((labels == lab).sum()) for lab in np.unique(toy.pool_labels)]
        assert max(counts) - min(counts) <= 1          # every prefix is label-balanced
        prev = idx


def test_deterministic(tmp_path, toy, group, section):
    _, sec = section
    again = _run(tmp_path, toy, group)
    assert again.data["curves"] == sec.data["curves"]
    assert again.data["comparisons"] == sec.data["comparisons"]
    assert [c.holds for c in again.checks] == [c.holds for c in sec.checks]


def test_prompt_limit_skips(tmp_path, toy, group):
    sec = _run(tmp_path, toy, group, tasks=[toy], ks=(0, 1, 2, 4), n_sets=1,
               max_prompt_tokens=45)
    c = sec.data["curves"][0][0][0]
    assert c["ks"][0] == 0 and 4 not in c["ks"]
    assert all("limit" in why or "too long" in why for _, why in c["skipped"])


@pytest.mark.parametrize("kw, match", [
    ({"ks": (0,)}, "ks"), ({"ks": (2, 1)}, "ks"), ({"ks": (0, -1)}, "ks"),
    ({"ks": (0, 1.5)}, "ks"), ({"ks": "01"}, "ks"), ({"ks": ()}, "ks"),
    ({"n_test": 0}, "n_test"), ({"n_test": True}, "n_test"), ({"n_test": 2.0}, "n_test"),
    ({"n_sets": 0}, "n_sets"), ({"n_trace": -1}, "n_trace"),
    ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
])
def test_bad_input(tmp_path, toy, group, kw, match):
    with pytest.raises(InputError, match=match):
        _run(tmp_path, toy, group, **kw)


def test_saturation_point_examples():
    ks = [0, 1, 2, 4, 8]
    assert adaptation.saturation_point(ks, [0.5, 0.6, 0.9, 0.95, 0.96]) == 4   # 90% of .46
    assert adaptation.saturation_point(ks, [0.5, 1.0, 1.0, 1.0, 1.0]) == 1
    assert adaptation.saturation_point(ks, [0.5, 0.4, 0.3, 0.2, 0.1]) == 0    # never rises
    assert adaptation.saturation_point(ks, [np.nan, -1.0, 0.0, 1.0, 1.0]) == 4
    assert np.isnan(adaptation.saturation_point(ks, [np.nan] * 5))
    assert adaptation.log2_position(0) == -1 and adaptation.log2_position(8) == 3
    doubling = adaptation.within_one_doubling
    assert doubling(0, 2) == 0.0 and doubling(0, 1) == 1.0
    assert doubling(4, 8) == 1.0 and doubling(2, 8) == 0.0
    with pytest.raises(InputError, match="increasing"):
        adaptation.saturation_point([0, 2, 1], [0, 1, 2])
    with pytest.raises(InputError, match="fraction"):
        adaptation.saturation_point(ks, [0] * 5, fraction=0)
    with pytest.raises(InputError, match="equal length"):
        adaptation.saturation_point(ks, [0] * 4)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=7),
       start=st.floats(-5, 5, allow_nan=False), frac=st.floats(0.05, 1.0))
def test_saturation_point_definition(steps, start, frac):
    """On a monotone curve k_sat is the first k whose value reaches frac of the total rise."""
    values = start + np.cumsum([0.0, *steps])
    ks = [0, *[2 ** i for i in range(len(steps))]]
    got = adaptation.saturation_point(ks, values, fraction=frac)
    target = values[0] + frac * (values.max() - values[0])
    first = next(k for k, v in zip(ks, values, strict=True) if v >= target)
    assert got == first
    i = ks.index(int(got))
    assert values[i] >= target and all(v < target for v in values[:i])


def test_agreement_needs_a_rising_accuracy():
    sat = {"accuracy": 2.0, "demo_share": 4.0, "log_w0_norm": 16.0, "accuracy_rise": 0.1}
    assert adaptation.saturation_agreement(sat, "demo_share") == 1.0
    assert adaptation.saturation_agreement(sat, "log_w0_norm") == 0.0
    assert np.isnan(adaptation.saturation_agreement({**sat, "accuracy_rise": 0.0}, "demo_share"))


def test_directional_claims_fail_on_the_wrong_side():
    def cmp(trained, control):
        return ph.compare_with_controls("x", ph.statistic(trained), [ph.statistic(control)])

    # a claimed fall (sign -1) that is shallower than the control's: outside, wrong side
    assert cmp([-0.5, -0.4, -0.6], [-1.0, -1.0]).wrong_side(-1.0)
    assert not cmp([-0.5, -0.4, -0.6], [0.2, 0.3]).wrong_side(-1.0)
    assert cmp([0.5, 0.4, 0.6], [1.0, 1.0]).wrong_side(1.0)
    assert not cmp([0.5, 0.4, 0.6], [0.4, 0.6]).wrong_side(1.0)   # inside


def _curve(traced_fn, *, S=2, per=1, L=5, ks=(0, 1, 2, 4, 8)):
    """An AdaptationCurve whose traced quantities come from ``traced_fn(k_index, t, layer)``."""
    K = len(ks)
    traced = {q: np.fromfunction(np.vectorize(traced_fn), (K, S * per, L)).astype(float)
              for q in adaptation.QUANTITIES}
    return adaptation.AdaptationCurve(
        model="m", role="trained", task="t", ks=ks, correct=np.zeros((K, S, 4)),
        traced=traced, n_tokens=np.ones((K, S * per)), skipped=(), chance=0.5)


def test_set_spearmans_one_value_per_set():
    # set 0 rises with k on every layer, set 1 falls: one value per set, not per layer
    c = _curve(lambda ki, t, layer: ki * (1 if t == 0 else -1) + 0.01 * layer)
    rho = adaptation.set_spearmans(c, "demo_share")
    np.testing.assert_allclose(rho, [1.0, -1.0])
    np.testing.assert_allclose(adaptation.set_spearmans(c, "demo_share", -1.0), [-1.0, 1.0])
    # the traced prompts of a set are averaged before the correlation (2 prompts per set)
    c2 = _curve(lambda ki, t, layer: ki if t < 2 else -ki, per=2)
    np.testing.assert_allclose(adaptation.set_spearmans(c2, "eta"), [1.0, -1.0])


def test_set_spearmans_need_three_points():
    c = _curve(lambda ki, t, layer: ki, ks=(0, 1, 2))   # only k = 1, 2 count
    assert np.isnan(adaptation.set_spearmans(c, "eta")).all()


def test_spearman_claims_resample_sets_not_layers():
    """Regression: the Spearman claims' sign-flip test ran over every (task, layer) pair, as
    if the 30 layers of one prompt sequence were independent draws (p ~ 1e-27 on three
    prompt sequences). Its units are now the (task, set) draws: three sequences give the
    smallest two-sided sign-flip p, 0.25, however many layers agree."""
    curves = [_curve(lambda ki, t, layer: -ki - 0.1 * layer, S=1, L=30) for _ in range(3)]
    st_ = adaptation._group_stats([curves])
    assert st_.rho_lr[0].shape == (3,)
    np.testing.assert_allclose(st_.rho_lr[0], 1.0)      # log 1/D' = k + ... rises everywhere
    assert ph.sign_flip_p(st_.rho_lr[0]) == pytest.approx(0.25)


def test_section_records_per_set_layers(section):
    _, sec = section
    curve = sec.data["curves"][0][0][0]
    S = sec.data["sizes"]["n_sets"]
    for q in adaptation.QUANTITIES:
        arr = np.asarray(curve["set_layers"][q], dtype=float)
        assert arr.shape[:2] == (S, len(curve["ks"]))
        # the per-set curves average to the recorded all-prompt curve (one traced prompt
        # per set; log ||W_0|| is NaN at k = 0 in every set)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(arr, axis=0)
        np.testing.assert_allclose(mean, np.asarray(curve["layers"][q], dtype=float))
    names = [c["name"] for c in sec.data["comparisons"]]
    assert any("per-(task, set) layer-mean Spearman" in n for n in names)
    assert any("(task, set) units" in c.detail for c in sec.checks)


def test_accuracy_gain_takes_one_unit_per_set():
    """Regression: the gain was tested over the pooled test items (180 in the full run), as
    if the items read with one demonstration set were independent draws; one set that helps
    every item of a task made it significant. The unit is now the (task, set)."""
    K, S, n = 3, 2, 60
    correct = np.zeros((K, S, n))
    correct[-1, 0] = 1.0            # set 0 makes every item right at the largest k; set 1 not
    c = adaptation.AdaptationCurve(
        model="m", role="trained", task="t", ks=(0, 1, 2), correct=correct,
        traced={q: np.zeros((K, S, 2)) for q in adaptation.QUANTITIES},
        n_tokens=np.ones((K, S)), skipped=(), chance=0.5)
    np.testing.assert_allclose(adaptation.set_gains(c), [1.0, 0.0])
    st_ = adaptation._group_stats([[c, c, c]])
    assert st_.gains[0].shape == (6,)
    assert ph.sign_flip_p(st_.gains[0]) == pytest.approx(0.25)   # items: ~1e-18


def _units(acc, what, rise=None):
    rise = [0.2] * len(acc) if rise is None else rise
    return [{"task": f"t{i}", "block": i, "set": 0, "accuracy": a, "demo_share": w,
             "log_w0_norm": w, "accuracy_rise": r}
            for i, (a, w, r) in enumerate(zip(acc, what, rise, strict=True))]


def _saturation_checks_on(units, twin_agrees=True):
    from types import SimpleNamespace

    from icldistill.lab.experiments import adaptation as ad

    agree = np.array([ad.saturation_agreement(u, "demo_share") for u in units])
    twin = agree.copy() if twin_agrees else np.zeros_like(agree)
    st_ = ad._GroupStats([], [], [], [], [units, units], [agree, twin], [agree, twin])
    g_res = [[SimpleNamespace(task=u["task"]) for u in units]] * 2
    group = [ph.ModelUnderTest(role="trained", name="m", loaded=None, seed=0),
             ph.ModelUnderTest(role="control", name="c", loaded=None, seed=1)]
    return ad._saturation_checks(group, g_res, st_, 0, "", [])


def test_saturation_floor_counts_every_unit():
    """Regression (review): the saturation checks' floor counted only the units where accuracy
    rises, a subset the data chose, so fewer rising units made a check "not testable at this
    size"; the design's floor counts every (task, set) unit (5 units: 1/5! pairings)."""
    units = _units([4.0] * 5, [4.0] * 5, rise=[0.2, 0.2, 0.0, 0.0, 0.0])
    out = _saturation_checks_on(units)
    assert [floor for *_, floor in out] == [pytest.approx(1 / 120)] * 2
    assert "2 of the 2 (task, set) units where accuracy rises agree" in out[0][2]


def test_saturation_agreement_is_tested_against_chance_pairing():
    """Audit F6: agreement with accuracy's k_sat was tested against agreement on half of the
    tasks, which is not chance agreement: saturation points that pile up on one k agree on
    every unit whatever the curves. The null now re-pairs the units."""
    piled = _saturation_checks_on(_units([4.0] * 6, [4.0] * 6))
    assert piled[0][0].holds is not None and piled[0][1] == 1.0     # all agree, p = 1
    # each unit's demo-share k_sat sits on its own accuracy k_sat, far from the others'
    spread = _saturation_checks_on(_units([0.0, 1.0, 4.0, 16.0, 32.0, 2.0],
                                          [0.0, 1.0, 4.0, 16.0, 32.0, 2.0]),
                                   twin_agrees=False)
    check, p, test, floor = spread[0]
    assert check.holds and floor == pytest.approx(1 / 720)
    # by hand: 0 and 1 agree (one doubling apart, k=0 at -1), 1 and 2, 2 and 4; 16 and 32;
    # units (0, 1, 5) = k 0, 1, 2 form a path, (2) = 4 joins 2; only pairings keeping all six
    # within one doubling count: brute force over the 720
    import itertools
    ks = [0.0, 1.0, 4.0, 16.0, 32.0, 2.0]
    hits = sum(all(adaptation.within_one_doubling(ks[i], ks[pi[i]]) == 1.0 for i in range(6))
               for pi in itertools.permutations(range(6)))
    assert p == pytest.approx(hits / 720)
    assert p < 0.05 and "every one of the 720 re-pairings" in test


def test_saturation_pairing_leaves_out_units_where_accuracy_does_not_rise():
    """Review (helper-54): with the non-rising units in the re-pairing, their distillation
    k_sat became partners of the rising ones, and a test of "does a unit's curve saturate
    where its own accuracy does" rewarded curves that merely tell rising from non-rising
    units (7 tasks: 3 rising, all piled up at k = 4; 4 not rising with k_sat 32: p 0.033).
    Rising units are re-paired among themselves: p 1."""
    units = _units([4.0] * 3 + [0.0] * 4, [4.0] * 3 + [32.0] * 4,
                   rise=[0.2] * 3 + [0.0] * 4)
    _, p, test, floor = _saturation_checks_on(units, twin_agrees=False)[0]
    assert p == 1.0 and "every one of the 6 re-pairings" in test
    assert floor == pytest.approx(1 / 2001)                      # 7! > 2000: the design's


def test_saturation_blocks_are_task_positions():
    """Review (helper-54): blocks were labelled by task name, so a task listed twice made
    one block of twice the size and the section failed after its compute."""
    units = _units([1.0, 4.0, 16.0], [1.0, 4.0, 16.0])
    for u in units:
        u["task"] = "amazon"                                     # the same name, 3 blocks
    _, p, _, _ = _saturation_checks_on(units, twin_agrees=False)[0]
    assert p == pytest.approx(1 / 6)


def test_saturation_pairing_moves_a_tasks_sets_together():
    """Review (helper-53): the sets of one task share its test items and format, so a
    task-level coincidence must count once. 3 tasks x 2 sets whose accuracy and demo-share
    k_sat are both 1, 4 and 16 per task: re-pairing the 6 units freely gives p 8/720, moving
    tasks as wholes (sets permuted within) gives 8/48 = 1/6, what 3 task units give."""
    ks = [1.0, 1.0, 4.0, 4.0, 16.0, 16.0]
    units = [{**u, "task": f"t{i // 2}", "block": i // 2, "set": i % 2}
             for i, u in enumerate(_units(ks, ks))]
    _, p, test, floor = _saturation_checks_on(units, twin_agrees=False)[0]
    assert p == pytest.approx(1 / 6) and floor == pytest.approx(1 / 48)
    assert "every one of the 48 re-pairings of the units where accuracy rises: tasks moved as " \
        "wholes" in test


def test_set_saturation_reads_each_sets_own_curves():
    """Per (task, set) saturation: set 0's accuracy saturates at k=1, set 1's at k=4, each
    from its own items; the demo share is read from each set's traced prompts."""
    ks = (0, 1, 2, 4)
    correct = np.zeros((4, 2, 10))
    correct[0] = 0.0
    correct[1:, 0] = 1.0                     # set 0: 0 -> 1 at k = 1
    correct[3, 1] = 1.0                      # set 1: rises only at k = 4
    share = np.zeros((4, 2, 3))              # [K, T = S * 1 traced prompt, L]
    share[:, 0] = np.array([0.0, 0.5, 0.5, 0.5])[:, None]
    share[:, 1] = np.array([0.0, 0.1, 0.2, 0.6])[:, None]
    lw = np.ones((4, 2, 3))
    lw[0] = np.nan
    traced = {q: np.zeros((4, 2, 3)) for q in adaptation.QUANTITIES}
    traced.update(demo_share=share, log_w0_norm=lw)
    c = adaptation.AdaptationCurve(model="m", role="trained", task="t", ks=ks, correct=correct,
                                   traced=traced, n_tokens=np.ones((4, 2)), skipped=(),
                                   chance=0.5)
    s0, s1 = adaptation.set_saturation(c)
    assert (s0["accuracy"], s0["demo_share"], s0["accuracy_rise"]) == (1.0, 1.0, 1.0)
    assert (s1["accuracy"], s1["demo_share"], s1["accuracy_rise"]) == (4.0, 4.0, 1.0)
    assert s0["log_w0_norm"] == s1["log_w0_norm"] == 1.0      # flat from k = 1
    # the curve averaged over the sets saturates elsewhere: the sets are the units
    assert adaptation.curve_saturation(c, "accuracy") == 4.0


def test_section_records_per_set_saturation(section):
    _, sec = section
    curve = sec.data["curves"][0][0][0]
    assert len(curve["set_saturation"]) == sec.data["sizes"]["n_sets"]
    table = next(t for t in sec.tables if t.title.startswith("Saturation points"))
    assert table.columns[:3] == ("model", "task", "set")
    assert len(table.rows) == 2 * 2 * sec.data["sizes"]["n_sets"]   # 2 members x 2 tasks
    assert any("pairing permutation test" in c.detail for c in sec.checks)


def test_direction_floor_counts_undefined_units():
    """A (task, set) whose Spearman the data left undefined (a constant curve: NaN) still
    counts in the design's floor: 8 units, one undefined, allow p down to 2/2^8."""
    from icldistill.lab.experiments import adaptation as ad
    from icldistill.lab.experiments import phenomena as ph

    vals = np.linspace(-0.9, -0.2, 8)
    vals[3] = np.nan
    twin = np.full(8, 0.5)
    st = ad._GroupStats([vals, twin], [vals, twin], [-vals, -twin], [-vals, twin], [], [], [])
    group = [ph.ModelUnderTest(role="trained", name="m", loaded=None, seed=0),
             ph.ModelUnderTest(role="control", name="c", loaded=None, seed=1)]
    out = ad._direction_checks(group, st, 0, "", [])
    assert [floor for *_, floor in out] == [pytest.approx(2 / 2 ** 8)] * 4
    assert "over the 7 (task, set) units" in out[0][2]          # the test itself: 7 values
