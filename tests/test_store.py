"""The result store: JSON-lines records, JSON files, the report lock."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from icldistill.artifacts.store import append_record, read_records


def _strict(text: str) -> object:
    """``json.loads`` that refuses ``NaN`` / ``Infinity`` (what other JSON readers do)."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_append_record_round_trips_non_finite_numbers(tmp_path):
    """The JSON-lines stores keep NaN and infinities exactly (Python's json tokens): writing
    them as ``null`` (a change tried on 2026-12-04) read a log-probability of ``-inf`` back as
    a missing value, and a NaN field made ``UnitResult.from_dict`` drop the unit."""
    path = tmp_path / "results.jsonl"
    append_record(path, {"mmd2_task": math.nan, "x": math.inf, "y": [-math.inf, 1.5]})
    records, torn = read_records(path)
    assert torn == 0 and math.isnan(records[0]["mmd2_task"])
    assert records[0]["x"] == math.inf and records[0]["y"] == [-math.inf, 1.5]


def test_append_record_lines_of_finite_records_are_unchanged(tmp_path):
    """The committed files' records are written byte for byte as before."""
    path = tmp_path / "r.jsonl"
    rec = {"b": [1, 2.5, "x"], "a": {"c": True, "d": None}, "e": np.float64(0.1)}
    append_record(path, rec)
    assert path.read_text() == '{"a": {"c": true, "d": null}, "b": [1, 2.5, "x"], "e": 0.1}\n'


def test_bench_selection_writes_standard_json(tmp_path, monkeypatch):
    """Regression: benchmarks/bench_selection.py wrote its JSON with plain ``json.dumps``, so
    the seconds of a selector it did not run were a bare ``NaN`` in the committed file."""
    import importlib.util
    import sys

    from .scripts import ROOT

    name = "bench_selection_under_test"        # registered: its dataclasses look it up
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks/bench_selection.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)
    spec.loader.exec_module(mod)
    rows = [mod.Row("knn", "", 1.0, "TopkRetriever", None, None, ""),
            mod.Row("mmd", "", 2.0, "", None, None, "", 0.01),
            mod.Row("mmd-query", "", 3.0, "", None, None, ""),
            mod.Row("—", "", float("nan"), "MDLRetriever", None, None, "not run")]
    monkeypatch.setattr(mod, "bench", lambda args: (rows, {"seed": np.int64(0)}))
    out = tmp_path / "selection.json"
    mod.main(["--no-openicl", "--json", str(out)])
    payload = _strict(out.read_text())
    assert [r["seconds"] for r in payload["rows"]] == [1.0, 2.0, 3.0, None]
    assert payload["info"] == {"seed": 0}


def test_a_result_with_a_nan_field_reads_back(tmp_path):
    from icldistill.evaluation.harness import UnitResult, UnitSpec, load_results
    from icldistill.evaluation.scoring import MetricResult

    m = MetricResult(0.5, 0.4, 0.6, 0.95)
    r = UnitResult(UnitSpec("m", "t", "knn", 4, 0), "key", m, m, 10, math.nan, 0.1, True, 0.0,
                   1.0, 1, 1, {})
    append_record(tmp_path / "results.jsonl", r.to_dict())
    (back,) = load_results(tmp_path)
    assert back.key == "key" and math.isnan(back.mmd2_task)


def test_report_lock_excludes_other_processes_and_is_not_a_unit_lock(tmp_path):
    """Two workers finishing at once wrote one folder's report together (bench_fewshot's
    --report-only-if-done; only the queue script serialised them)."""
    import subprocess
    import sys
    import textwrap
    import time

    from icldistill.artifacts.store import held_locks, report_lock

    code = textwrap.dedent(f"""
        import time
        from icldistill.artifacts.store import report_lock
        with report_lock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert held_locks(tmp_path) == []        # not a unit: nobody waits on it for units
        t0 = time.monotonic()
        with report_lock(tmp_path):
            waited = time.monotonic() - t0
    finally:
        proc.wait(timeout=30)
    assert waited > 0.5


def test_report_writers_hold_the_report_lock(tmp_path, monkeypatch):
    import contextlib

    from icldistill.reporting import reports

    seen = []

    @contextlib.contextmanager
    def spy(folder):
        seen.append(str(folder))
        yield

    monkeypatch.setattr(reports, "report_lock", spy)
    with contextlib.suppress(Exception):          # no results: only the lock matters here
        reports.write_comparison_report([], tmp_path / "a")
    with contextlib.suppress(Exception):
        reports.write_ablation_report([], [], out_dir=tmp_path / "b", objectives=(),
                                      encoders=())
    assert seen == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_exclusive_json_write_creates_once(tmp_path):
    from icldistill.artifacts.store import write_json

    path = tmp_path / "reference.json"
    write_json(path, {"a": 1}, exclusive=True)
    with pytest.raises(FileExistsError):
        write_json(path, {"a": 2}, exclusive=True)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["reference.json"]   # no stray temp file
