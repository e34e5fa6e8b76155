"""The real-model experiment on a tiny random model, the lab report and section round trip."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.validation import InputError
from icldistill.evaluation.harness import Harness
from icldistill.lab.experiments import Check, Section, Table, real
from icldistill.lab.experiments.report import (
    format_cell,
    read_section,
    write_lab_report,
    write_section,
)

from .test_harness import _write_task
from .tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _write_task(tmp_path_factory.mktemp("data") / "toy.jsonl")


def _loaded():
    return SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(True),
                           name="tiny-llama")


def test_real_trace_on_tiny_model(toy):
    res = real.real_model_trace("tiny", "toy", k=3, n_prompts=2, seed=0, loaded=_loaded(),
                                split=toy.split)
    L, H = res.has_kernel_form.shape
    assert res.eta_last.shape == (2, L, H) and res.demo_share_last.shape == (2, L, H)
    assert res.max_decomposition_error < 1e-4
    assert res.jensen_violations == 0 and res.jensen_checked > 0
    assert res.alignment_error < 1e-8            # one step with eta* is W_0
    assert res.alignment_error_2x > 0.5          # ... and with 2 eta* it is not
    again = real.real_model_trace("tiny", "toy", k=3, n_prompts=2, seed=0, loaded=_loaded(),
                                  split=toy.split)
    np.testing.assert_allclose(res.eta_last, again.eta_last)
    # per prompt: the Jensen gaps average to the pooled ones (each prompt weighted equally),
    # and one head-mean stationarity Spearman per prompt
    assert res.jensen_gap_prompts.shape == (2, L, H)
    np.testing.assert_allclose(res.jensen_gap_prompts.mean(0), res.jensen_gap)
    assert res.stationarity_prompts.shape == (2,)
    assert np.all(np.abs(res.stationarity_prompts[np.isfinite(res.stationarity_prompts)]) <= 1)


def test_real_trace_bad_input(toy):
    with pytest.raises(InputError, match="k and n_prompts"):
        real.real_model_trace("tiny", "toy", k=0, loaded=_loaded(), split=toy.split)


def test_real_section_with_fewshot_grid(tmp_path, toy):
    h = Harness(tmp_path / "fs", tasks={"toy": toy}, model_loader=lambda _n: _loaded(),
                progress=False, embedding_cache=tmp_path / "emb",
                reference_encoder="hidden:-1", n_boot=20, batch_size=4)
    def control_harness(folder, loader):
        return Harness(folder, tasks={"toy": toy}, model_loader=loader, progress=False,
                       embedding_cache=tmp_path / "emb", reference_encoder="hidden:-1",
                       n_boot=20, batch_size=4)

    sec = real.run("tiny", out_dir=tmp_path / "real", quick=True, dataset="toy",
                   fewshot_tasks=("toy",), loaded=_loaded(), split=toy.split, harness=h,
                   control_harness=control_harness)
    assert sec.name == "real" and sec.tables and sec.checks
    # every model claim is compared with the random-init twin (issue 13 item 5)
    assert len(sec.data["controls"]) == 1
    assert (tmp_path / "real" / "fewshot-control-1" / "results.jsonl").is_file()
    # the control's folder names its twin; another twin is refused there, not read back
    from icldistill.evaluation.harness import recorded_weights
    from icldistill.lab.experiments.phenomena import random_twin

    folder = tmp_path / "real" / "fewshot-control-1"
    assert recorded_weights(folder) == "tiny-llama random-init #1"
    with pytest.raises(InputError, match=r"random-init #1 weights.*random-init #7"):
        real._control_relation("tiny", random_twin(_loaded(), 7), folder, ("toy",),
                               ("random",), 12, 0, False, control_harness)
    claims = {c.claim: c for c in sec.checks}
    # the software identities are marked as such (the report counts them apart)
    assert [c.is_identity for c in sec.checks][:2] == [True, True]
    assert not any(c.is_identity for c in sec.checks[2:])
    jensen = next(c for k, c in claims.items() if k.startswith("Jensen"))
    assert "random-init control spread" in jensen.detail
    stationarity = next(c for k, c in claims.items() if k.startswith("domain stationarity"))
    assert "random-init control spread" in stationarity.detail
    assert all(c["controls"] for c in sec.data["comparisons"])
    # regression: the control comparisons resampled the (layer, head) cells, the model's
    # fixed parts; they are paired over the traced prompts (6 in quick mode), the draws
    for c in sec.data["comparisons"][1:]:                       # Jensen gap, demo share
        assert c["paired"][0]["n"] == 6 and c["trained"]["n"] == 6
    assert "paired on the same units" in jensen.detail
    # stationarity's pooled Spearman has no per-prompt parts: the interval rule, and the
    # within-prompt version beside it as a finding
    assert "paired" not in sec.data["comparisons"][0]
    assert any(f.startswith("Within each prompt") for f in sec.findings)
    assert "6 prompts allow no p below 0.0312" in sec.description
    for f in sec.figures:
        assert (tmp_path / "real" / f).read_bytes()[:4] == b"\x89PNG"
    assert "real_accuracy_mmd.png" in sec.figures
    rows = sec.data["fewshot"]["rows"]
    assert {r["selector"] for r in rows} == {"random", "mmd", "mmd-balanced"}
    assert sum(r["selector"] == "random" for r in rows) == 3     # 3 seeds
    # reading the same folder back gives the same relation
    rel = real.fewshot_relation(tmp_path / "fs", run_grid=False)
    assert rel.spearman.keys() == {"toy"}
    with pytest.raises(InputError, match="no finished units"):
        real.fewshot_relation(tmp_path / "empty", run_grid=False)


def _section():
    return Section(name="demo", title="A demo", description="what was done",
                   checks=[Check("a holds", True, "x = 1"), Check("b holds", False, "y = 2")],
                   findings=["finding one"],
                   tables=[Table("t", ("a", "b"), ((1, 0.5), (2, float("nan"))))],
                   figures=["fig.png"], data={"x": [1.0, 2.0]}, seconds=1.5)


def test_section_round_trip_and_fingerprint(tmp_path):
    sec = _section()
    write_section(sec, tmp_path / "s.json", fingerprint="abc")
    back = read_section(tmp_path / "s.json", fingerprint="abc")
    assert back is not None and back.checks == sec.checks and back.findings == sec.findings
    assert back.tables[0].rows[0] == (1, 0.5) and back.tables[0].rows[1][1] is None
    assert read_section(tmp_path / "s.json", fingerprint="other") is None
    assert read_section(tmp_path / "missing.json") is None
    (tmp_path / "torn.json").write_text('{"name": ')
    assert read_section(tmp_path / "torn.json") is None


def test_lab_report_shows_failed_checks(tmp_path):
    files = write_lab_report([_section()], tmp_path, title="T", header=["seed 0"],
                             commands=["icldistill reproduce --quick"],
                             section_commands={"demo": "icldistill lab demo"})
    md = files["markdown"].read_text()
    assert "1 of 2 checks hold" in md and "**NO**" in md and "icldistill lab demo" in md
    assert "![fig](fig.png)" in md
    html = files["html"].read_text()
    assert '<img src="fig.png"' in html and "<td>NO</td>" not in html
    assert "<strong>NO</strong>" in html and "<code>icldistill lab demo</code>" in html


def test_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match="cells"):
        Table("t", ("a", "b"), ((1,),))


@pytest.mark.parametrize(("v", "s"), [(None, "–"), (True, "yes"), (0.0, "0"), (1234.5678, "1235"),
                                      (1e-5, "1.000e-05"), (float("inf"), "–"), ("x", "x")])
def test_format_cell(v, s):
    assert format_cell(v) == s


def test_accuracy_mmd_figure_has_a_panel_per_model_and_k(tmp_path, monkeypatch):
    """One panel per (k, model), one series per task in each, with that group's Spearman ρ;
    it redraws from stored rows (plain dicts)."""
    import matplotlib.axes

    rows = [{"model": m, "task": t, "k": k, "mmd2_task": 0.01 * i, "accuracy": 0.5 + 0.01 * i}
            for m in ("a", "b (bfloat16)") for k in (4, 8) for t in ("t1", "t2")
            for i in range(3)]
    spearman = {f"{m} {t} k={k}": -0.5 for m in ("a", "b (bfloat16)") for k in (4, 8)
                for t in ("t1", "t2")}
    del spearman["a t2 k=8"]                        # a group without ρ is drawn as nan
    labels, titles = [], []
    real_scatter = matplotlib.axes.Axes.scatter
    real_title = matplotlib.axes.Axes.set_title

    def scatter(self, *a, **kw):
        labels.append(kw.get("label"))
        return real_scatter(self, *a, **kw)

    def set_title(self, text, *a, **kw):
        titles.append(text)
        return real_title(self, text, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", set_title)
    path = real.accuracy_mmd_figure(SimpleNamespace(rows=rows, spearman=spearman),
                                    tmp_path / "f.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert titles == ["a, k=4", "b (bfloat16), k=4", "a, k=8", "b (bfloat16), k=8"]
    assert labels.count("t1 (ρ=-0.50)") == 4 and labels.count("t2 (ρ=-0.50)") == 3
    assert "t2 (ρ=nan)" in labels


# ------------------------------------------------------------------ the grid's tasks and seeds
class _Stop(Exception):
    """Ends a stubbed real.run once the calls of interest are recorded."""


def _stubbed_run(monkeypatch, calls, *, stop_after):
    """``real.run`` with tracing stubbed and ``fewshot_relation`` recording its calls."""
    monkeypatch.setattr(real, "real_model_trace", lambda *a, **kw: "trace")

    def fake(out_dir, **kw):
        calls.append((Path(out_dir), kw))
        if len(calls) >= stop_after:
            raise _Stop
        return real.FewShotRelation(rows=[], spearman={}, source=str(out_dir))

    monkeypatch.setattr(real, "fewshot_relation", fake)
    return dict(loaded=object(), split=object(), controls=[object()],
                control_harness=lambda folder, loader: None)


@pytest.mark.parametrize(("dataset", "quick", "tasks"), [
    ("yelp", False, ("yelp", "rt-subjectivity")),
    ("rt-subjectivity", False, ("rt-subjectivity", "yelp")),
    ("amazon", False, ("amazon", "yelp", "rt-subjectivity")),
    ("yelp", True, ("yelp",)),
])
def test_real_default_tasks_list_each_task_once(tmp_path, monkeypatch, dataset, quick, tasks):
    """``dataset="yelp"`` listed yelp twice and the harness refused the grid after all the
    tracing."""
    calls = []
    kw = _stubbed_run(monkeypatch, calls, stop_after=1)
    with pytest.raises(_Stop):
        real.run("m", out_dir=tmp_path / "real", quick=quick, dataset=dataset, **kw)
    assert calls[0][1]["tasks"] == tasks


@pytest.mark.parametrize(("tasks", "message"), [
    (("toy", "toy"), "fewshot_tasks: task 'toy' is listed twice"),
    ("toy", "fewshot_tasks must be a sequence of task names"),
    (("toy", ""), "fewshot_tasks: every task must be a non-empty name"),
    (("toy", 3), "fewshot_tasks: every task must be a non-empty name"),
])
def test_real_bad_tasks_are_refused_before_tracing(tmp_path, monkeypatch, tasks, message):
    def no_trace(*a, **kw):
        raise AssertionError("traced before the tasks were checked")

    monkeypatch.setattr(real, "real_model_trace", no_trace)
    with pytest.raises(InputError, match=re.escape(message)):
        real.run("m", out_dir=tmp_path / "real", quick=True, fewshot_tasks=tasks,
                 loaded=object(), controls=[object()])
    assert not (tmp_path / "real").exists()


@pytest.mark.parametrize("seed", [1.5, -1, True])
def test_real_bad_seed_is_refused_before_the_folder(tmp_path, seed):
    with pytest.raises(InputError, match="seed must be an integer >= 0"):
        real.run("m", out_dir=tmp_path / "real", seed=seed, loaded=object(),
                 controls=[object()])
    assert not (tmp_path / "real").exists()


@pytest.mark.parametrize(("seed", "trained", "control"), [
    (0, "fewshot", "fewshot-control-1"),            # the committed layout, unchanged
    (2, "fewshot-seed-2", "fewshot-seed-2-control-3"),
])
def test_real_grids_honour_the_seed(tmp_path, monkeypatch, seed, trained, control):
    """``--seed`` was ignored by the trained model's grid (selection seeds 0.. and the folder
    ``fewshot`` whatever the seed) while its control's grid folder followed it: now both
    grids use the selection seeds ``seed ..``, in folders of that seed."""
    calls = []
    kw = _stubbed_run(monkeypatch, calls, stop_after=2)
    out = tmp_path / "real"
    with pytest.raises(_Stop):
        real.run("m", out_dir=out, quick=True, seed=seed, dataset="toy", **kw)
    assert [(c[0], c[1]["seed"]) for c in calls] == [(out / trained, seed),
                                                     (out / control, seed)]
    assert real.fewshot_folder(out, seed) == out / trained


def test_fewshot_relation_runs_the_seeded_units(tmp_path):
    ran = []
    h = SimpleNamespace(run=lambda units: ran.extend(units) or [])
    real.fewshot_relation(tmp_path, model="m", tasks=("toy",), selectors=("random", "mmd"),
                          seeds=2, seed=4, harness=h)
    assert sorted((u.selector, u.seed) for u in ran) == [("mmd", 0), ("random", 4),
                                                         ("random", 5)]
    with pytest.raises(InputError, match="seed must be an integer >= 0"):
        real.fewshot_relation(tmp_path, model="m", tasks=("toy",), seed=-3, harness=h)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), seeds=st.integers(1, 4))
def test_grid_units_use_the_seeds_from_seed(seed, seeds):
    """The randomised selector runs with seeds ``seed .. seed + seeds - 1``, the deterministic
    ones once with seed 0; seed 0 gives exactly the harness's own grid (committed results)."""
    from icldistill.evaluation.harness import unit_grid

    units = real._grid_units("m", ("a", "b"), ("random", "mmd", "knn"), 4, seeds, seed, 20)
    for task in ("a", "b"):
        got = {s: sorted(u.seed for u in units if u.task == task and u.selector == s)
               for s in ("random", "mmd", "knn")}
        assert got == {"random": list(range(seed, seed + seeds)), "mmd": [0], "knn": [0]}
    if seed == 0:
        assert units == unit_grid(models=["m"], tasks=["a", "b"],
                                  selectors=["random", "mmd", "knn"], ks=[4], seeds=seeds,
                                  n_test=20)


# ------------------------------------------------------------------ implicit alignment per head
def test_alignment_checks_every_kernel_form_head_by_its_own_flag(monkeypatch):
    """The kernel form was read from head 0 of each layer only: a layer whose head 0 had none
    was skipped whole, and one whose later head had none asked that head for W_0 (an error)."""
    asked = []

    class Res:
        def w0(self, layer, head, position):
            assert kernel[layer, head], f"W_0 asked of layer {layer} head {head}"
            asked.append((layer, head))
            return (layer, head)

    def step(w0, eta=None):
        return SimpleNamespace(relative_distance=0.1 * (w0[0] + 1) if eta is None else 0.5 + w0[1],
                               eta_star=1.0)

    monkeypatch.setattr(real, "distillation_step", step)
    kernel = np.array([[False, True, True], [True, False, True], [False, False, False]])
    sums = real._TraceSums(kernel=kernel)
    sums._alignment(Res())
    assert asked == [(0, 1), (0, 2), (1, 0), (1, 2)]
    assert sums.align == pytest.approx(0.2)              # largest over every kernel-form head
    assert sums.align2 == pytest.approx(0.5)             # 2 eta*: layer 1's first head (0)
