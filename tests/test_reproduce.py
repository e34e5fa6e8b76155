"""``reproduce`` end to end on the tiny preset (every lab experiment; the real-model section has
its own test), resuming from stored sections, and the lab CLI."""

from __future__ import annotations

import json
import re
import time

import pytest

from icldistill.cli.app import main
from icldistill.core.validation import InputError
from icldistill.lab.experiments.reproduce import (
    EXPERIMENTS,
    PHENOMENA_SECTIONS,
    phenomena_models,
    plan,
    reproduce,
)

LAB = list(EXPERIMENTS)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cache = tmp_path_factory.mktemp("cache")
    res = reproduce(out, quick=True, preset_name="tiny", only=LAB, cache_dir=cache,
                    progress=False)
    return out, cache, res


def test_plan_covers_every_experiment():
    quick, full = plan(True), plan(False)
    for name in [*EXPERIMENTS, "real", *PHENOMENA_SECTIONS]:
        assert any(n == name for n, _ in quick)
    assert set(quick) < set(full)
    assert ("gd", "classification") in quick
    assert list(PHENOMENA_SECTIONS) == ["adaptation", "ordering", "interference",
                                        "icl-vs-finetuning"]
    assert phenomena_models("smollm2-135m", True) == ("smollm2-135m",)
    assert phenomena_models("smollm2-135m", False) == ("smollm2-135m", "qwen2.5-0.5b")


def test_reproduce_writes_every_section_and_figure(report):
    out, _, res = report
    keys = {s.name for s in res.sections}
    assert keys == {f"{n}-{t}" for n, t in plan(True) if t}
    for s in res.sections:
        assert s.tables and s.checks, s.name
        assert s.figures, s.name
        for f in s.figures:
            assert (out / f).read_bytes()[:4] == b"\x89PNG", f
        assert (out / "sections" / f"{s.name}.json").is_file()
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for s in res.sections:
        assert s.title in md
        for f in s.figures:
            assert f"({f})" in md and f'src="{f}"' in html
    assert "Versions:" in md and "seed 0" in md and "icldistill lab alignment" in md
    summary = json.loads((out / "report.json").read_text())
    assert summary["checks"] == sum(len(s.checks) for s in res.sections)


def test_reproduce_resumes_from_stored_sections(report):
    out, cache, res = report
    again = reproduce(out, quick=True, preset_name="tiny", only=LAB, cache_dir=cache,
                      progress=False)
    assert sorted(again.resumed) == sorted(s.name for s in res.sections)
    assert [s.checks for s in again.sections] == [s.checks for s in res.sections]


def test_an_only_run_keeps_the_other_stored_sections_in_the_report(report):
    """Regression: ``--only X`` used to rewrite report.md with X alone."""
    out, cache, res = report
    cmd = f"icldistill reproduce --quick --only gd --out {out}"
    again = reproduce(out, quick=True, preset_name="tiny", only=["gd"], cache_dir=cache,
                      progress=False, command=cmd)
    assert [s.name for s in again.sections] == [s.name for s in res.sections]
    md = (out / "report.md").read_text()
    assert all(s.title in md for s in res.sections)
    # the report's command is the whole run's; the learners' lines are kept
    assert f"Command: `icldistill reproduce --quick --out {out}`" in md
    assert f"Last updated by: `{cmd}`" in md
    assert "regression model: " in md and "classification model: " in md
    assert "The sections' own run times add up to" in md


def test_a_section_another_process_computes_is_waited_for_then_read_back(report, tmp_path):
    """Two processes on one output folder: a step locked by the other one is passed over,
    then waited for at the end and read back, not computed twice."""
    import shutil
    import subprocess
    import sys
    import textwrap

    src, cache, res = report
    out = tmp_path / "shared"
    shutil.copytree(src, out)
    key = "gd-regression"
    section = out / "sections" / f"{key}.json"
    saved = tmp_path / "saved.json"
    shutil.move(section, saved)
    held = tmp_path / "held"
    other = textwrap.dedent(f"""
        import shutil, time
        from icldistill.artifacts.store import unit_lock
        with unit_lock({str(out / "sections")!r}, {key!r}):
            open({str(held)!r}, "w").close()
            time.sleep(2.0)                                    # "computing" the section
            shutil.move({str(saved)!r}, {str(section)!r})      # ... and storing it
    """)
    proc = subprocess.Popen([sys.executable, "-c", other])
    try:
        while not held.exists():
            assert proc.poll() is None
            time.sleep(0.02)
        lines: list[str] = []
        again = reproduce(out, quick=True, preset_name="tiny", only=LAB, cache_dir=cache,
                          progress=False, log=lines.append)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    mine = [ln for ln in lines if key in ln]
    assert "another process is computing it" in mine[0]
    assert "waiting for the other process" in mine[1]
    assert mine[2].endswith(f"{key}: finished earlier, read back")
    assert len(mine) == 3                                       # never computed here
    assert sorted(again.resumed) == sorted(s.name for s in res.sections)
    assert [s.name for s in again.sections] == [s.name for s in res.sections]


@pytest.mark.parametrize(("cmd", "whole"), [
    ("icldistill reproduce --only gd,real --out r", "icldistill reproduce --out r"),
    ("icldistill reproduce --only=gd --quick", "icldistill reproduce --quick"),
    ("icldistill reproduce --out 'my dir' --only gd", "icldistill reproduce --out 'my dir'"),
])
def test_the_whole_reports_command_drops_only(cmd, whole):
    from icldistill.lab.experiments.reproduce import _without_only

    assert _without_only(cmd) == whole


def test_reproduce_rejects_unknown_experiment(tmp_path):
    with pytest.raises(InputError, match="unknown experiment"):
        reproduce(tmp_path, quick=True, only=["nope"], progress=False)


def test_lab_cli_train_and_experiment(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ICLDISTILL_CACHE", str(tmp_path / "cache"))
    assert main(["lab", "train", "--preset", "tiny", "--quiet"]) == 0
    out_text = capsys.readouterr().out
    assert re.search(r"trained \d+ steps in \d+ s; checkpoint ", out_text), out_text
    out = tmp_path / "gd"
    assert main(["lab", "gd", "--preset", "tiny", "--quiet", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "checks hold" in text and (out / "report.md").is_file()
    assert main(["reproduce", "--only", "nope", "--out", str(tmp_path / "r"), "--quiet"]) == 2


def test_phenomena_parts_live_until_the_section_is_stored(tmp_path, monkeypatch):
    """A phenomena section gets ``sections/.parts/<key>`` for its finished parts (a killed run
    resumes from them); once the section is stored the folder is removed."""
    from icldistill.lab.experiments import phenomena as ph
    from icldistill.lab.experiments import reproduce as rp
    from icldistill.lab.experiments._common import Section

    seen = []

    def fake_run(name, models, *, out_dir, quick, seed, progress, under_test=None,
                 resume_dir=None):
        seen.append(resume_dir)
        assert resume_dir == tmp_path / "sections" / rp.PARTS_DIR / name
        resume_dir.mkdir(parents=True)
        (resume_dir / "part.pkl").write_bytes(b"x")
        return Section(name=name, title=name, description="fake")

    monkeypatch.setattr(ph, "resolve_models", lambda *a, **kw: [])
    monkeypatch.setattr(rp, "run_phenomenon", fake_run)
    rp.reproduce(tmp_path, quick=True, only=["adaptation", "ordering"], progress=False)
    assert len(seen) == 2
    assert (tmp_path / "sections" / "adaptation.json").is_file()
    assert not any(p.exists() for p in seen)


def test_phenomena_sections_judged_the_old_way_are_recomputed(tmp_path, monkeypatch):
    """Regression: the phenomena sections' judging changed (one unit per demonstration set,
    the paired control rule) while their settings did not, so a rerun read back a stored
    section with the old verdicts. Their fingerprint carries PHENOMENA_JUDGING; the other
    sections' fingerprints do not change with it."""
    from icldistill.lab.experiments import phenomena as ph
    from icldistill.lab.experiments import reproduce as rp
    from icldistill.lab.experiments._common import Section

    runs = []

    def fake_run(name, models, *, out_dir, quick, seed, progress, under_test=None,
                 resume_dir=None):
        runs.append(name)
        return Section(name=name, title=name, description="fake")

    monkeypatch.setattr(ph, "resolve_models", lambda *a, **kw: [])
    monkeypatch.setattr(rp, "run_phenomenon", fake_run)

    def go():
        return rp.reproduce(tmp_path, quick=True, only=["adaptation"], progress=False)

    go()
    assert go().resumed == ["adaptation"] and runs == ["adaptation"]
    monkeypatch.setattr(rp, "PHENOMENA_JUDGING", rp.PHENOMENA_JUDGING + 1)
    assert go().resumed == [] and runs == ["adaptation", "adaptation"]
    run = rp._Run.__new__(rp._Run)   # only what fingerprint() reads
    run.__dict__.update(quick=True, seed=0, preset_name="quick", commands={}, out=tmp_path,
                        model="smollm2-135m", dataset="sst2", fewshot_results=None)
    before = run.fingerprint("gd", "regression")
    monkeypatch.setattr(rp, "PHENOMENA_JUDGING", rp.PHENOMENA_JUDGING + 1)
    assert run.fingerprint("gd", "regression") == before
    # a section's own revision recomputes that section only
    run.quick, run.model = True, "smollm2-135m"
    prints = {n: run.fingerprint(n, "") for n in ("adaptation", "interference")}
    monkeypatch.setitem(rp.SECTION_REVISIONS, "interference",
                        rp.SECTION_REVISIONS["interference"] + 1)
    assert run.fingerprint("adaptation", "") == prints["adaptation"]
    assert run.fingerprint("interference", "") != prints["interference"]


def test_the_real_section_is_recomputed_when_its_fewshot_folder_gains_units(tmp_path,
                                                                            monkeypatch):
    """Regression: the stored "real" section was keyed by the --fewshot-results path only, so
    after units were added to that folder a rerun read back the stale section."""
    from icldistill.lab.experiments import real
    from icldistill.lab.experiments._common import Section

    fs = tmp_path / "fewshot"
    fs.mkdir()
    (fs / "results.jsonl").write_text('{"key": "a"}\n')
    runs = []

    def fake_run(model, *, fewshot_results=None, **_kw):
        runs.append((fs / "results.jsonl").read_text().count("\n"))
        return Section(name="real", title="real", description="fake")

    monkeypatch.setattr(real, "run", fake_run)
    def go():
        return reproduce(tmp_path / "out", quick=True, fewshot_results=fs, only=["real"],
                         progress=False)

    go()
    assert go().resumed == ["real"] and runs == [1]          # nothing changed: read back
    with (fs / "results.jsonl").open("a") as fh:
        fh.write('{"key": "b"}\n')
    assert go().resumed == [] and runs == [1, 2]


def _record_slowly(out, task, start):
    """One process's ``_record_learner``, with a pause inside the write (the other process
    reads meanwhile)."""
    import types
    from pathlib import Path

    import icldistill.artifacts.store as store
    from icldistill.lab.experiments.reproduce import _Run

    real_write = store.atomic_write

    def slow(path, write):
        time.sleep(0.3)
        return real_write(path, write)

    store.atomic_write = slow
    run = types.SimpleNamespace(out=out, _learners_file=lambda: out / "learners.json")
    while time.time() < start:
        time.sleep(0.001)
    _Run._record_learner(run, task, f"{task} line", Path(f"icl-{task}.pt"))


def test_two_processes_record_their_learners_without_losing_one(tmp_path):
    """Regression: learners.json was read, updated and written without a lock, so of two
    reproduce processes on one --out (one per learner) one line could be lost."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    start = time.time() + 1.0
    procs = [ctx.Process(target=_record_slowly, args=(tmp_path, t, start))
             for t in ("regression", "classification")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    known = json.loads((tmp_path / "learners.json").read_text())
    assert sorted(known) == ["classification", "regression"]


@pytest.mark.parametrize("name", ["adaptation", "interference", "ordering",
                                  "icl-vs-finetuning"])
def test_lab_phenomenon_sets_option(tmp_path, monkeypatch, name):
    """``--sets N``: the number of demonstration sets per task (the claims' unit), passed to
    the section (ordering: in its sizes); other sections do not take it (exit 2)."""
    import importlib

    from icldistill.lab.experiments import phenomena as ph
    from icldistill.lab.experiments._common import Section
    from icldistill.lab.experiments.reproduce import PHENOMENA_SECTIONS

    seen = {}

    def fake_run(models, **kw):
        seen.update(kw)
        return Section(name=name, title=name, description="fake")

    mod = importlib.import_module(PHENOMENA_SECTIONS[name])
    monkeypatch.setattr(mod, "run", fake_run)
    monkeypatch.setattr(ph, "resolve_models", lambda *a, **kw: [])
    assert main(["lab", name, "--sets", "3", "--quick", "--quiet",
                 "--out", str(tmp_path / name)]) == 0
    if name == "ordering":
        assert seen["sizes"].n_sets == 3 and seen["sizes"].ks == mod.QUICK.ks
    else:
        assert seen["n_sets"] == 3
    assert main(["lab", name, "--sets", "0", "--out", str(tmp_path / "x")]) == 2


def test_lab_sets_option_is_refused_where_it_means_nothing(tmp_path, capsys):
    assert main(["lab", "real", "--sets", "3", "--out", str(tmp_path)]) == 2
    assert "--sets" in capsys.readouterr().err
