"""Resumable phenomena sections: finished parts are kept, a killed run resumes from them, and a
resumed section equals an uninterrupted one."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from icldistill.artifacts.store import Checkpoints
from icldistill.encoders.representations import make_encoder
from icldistill.lab.experiments import adaptation, interference, ordering
from icldistill.lab.experiments import finetuning as ft
from icldistill.lab.experiments import phenomena as ph
from icldistill.lab.experiments.ordering import OrderingSizes

from .lab_helpers import one_thread, tiny_group  # noqa: F401 - autouse fixture
from .test_harness import _write_task
from .test_phenomena_interference import _task


# ------------------------------------------------------------------------------ Checkpoints
def test_checkpoints_store_and_read_back(tmp_path):
    cp = Checkpoints(tmp_path / "cp")
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(3)}

    first = cp.run("k1", compute)
    again = Checkpoints(tmp_path / "cp")
    second = again.run("k1", compute)
    assert len(calls) == 1
    assert np.array_equal(first["a"], second["a"])
    assert (cp.computed, again.reused) == (1, 1)
    assert again.reused_seconds >= 0
    assert not list((tmp_path / "cp").glob(".*.tmp"))          # written atomically
    again.clear()
    assert not (tmp_path / "cp").exists()


def test_a_piece_made_of_read_back_pieces_counts_their_time(tmp_path):
    """A part resumed from its steps records the steps' compute time too, so the section's
    time stays the time of the whole computation when the part is read back later."""
    import time

    first = Checkpoints(tmp_path)
    first.run("step", lambda: time.sleep(0.3) or 1)
    again = Checkpoints(tmp_path)
    assert again.run("whole", lambda: again.run("step", lambda: 1 / 0) + 1) == 2
    with open(tmp_path / "whole.pkl", "rb") as fh:
        assert pickle.load(fh)["seconds"] >= 0.3
    again.discard("step")
    assert not (tmp_path / "step.pkl").exists()


def test_damaged_checkpoint_is_recomputed(tmp_path, capsys):
    cp = Checkpoints(tmp_path)
    cp.run("k", lambda: 1)
    cp.path("k").write_bytes(b"\x80garbage")                   # a torn or foreign file
    assert Checkpoints(tmp_path).run("k", lambda: 2) == 2
    assert "could not be read back" in capsys.readouterr().err
    with open(cp.path("k"), "rb") as fh:
        assert pickle.load(fh)["value"] == 2


@pytest.mark.parametrize("key", ["", "a/b", "../x", "a b", "x" * 129, 3])
def test_checkpoint_keys_are_checked(tmp_path, key):
    with pytest.raises(ValueError, match="checkpoint key"):
        Checkpoints(tmp_path).run(key, lambda: 1)


# ------------------------------------------------------------------------------ Parts
def test_parts_keys_follow_the_model_and_the_part(tmp_path):
    group = tiny_group()
    parts = ph.Parts(tmp_path, "s", {"seed": 0})
    assert parts.run(lambda: "a", model=group[0], task=0) == "a"
    assert parts.run(lambda: "b", model=group[0], task=0) == "a"          # read back
    assert parts.run(lambda: "c", model=group[0], task=1) == "c"          # another part
    assert parts.run(lambda: "d", model=group[1], task=0) == "d"          # another model
    assert ph.Parts(tmp_path, "s", {"seed": 1}).run(lambda: "e", model=group[0], task=0) == "e"
    assert ph.Parts(tmp_path, "t", {"seed": 0}).run(lambda: "f", model=group[0], task=0) == "f"
    # same name, role and config, other weights: another key
    other = tiny_group(seed=1)
    with torch.no_grad():
        next(other[0].loaded.model.parameters()).add_(1e-3)
    assert parts.run(lambda: "g", model=other[0], task=0) == "g"
    assert ph.Parts(None, "s", {}).run(lambda: "h", model=group[0], task=0) == "h"
    assert ph.Parts(None, "s", {}).reused_seconds == 0


def test_model_fingerprint_is_stable_and_weight_sensitive():
    a, b = tiny_group(), tiny_group()
    assert ph.model_fingerprint(a[0]) == ph.model_fingerprint(b[0])      # same seeded weights
    assert ph.model_fingerprint(a[0]) != ph.model_fingerprint(a[1])      # the random twin
    json.dumps(ph.model_fingerprint(a[0]))


def test_task_fingerprint(tmp_path):
    split = _write_task(tmp_path / "t.jsonl").split
    t1 = ph.task_items(split, n_test=6, seed=0, name="toy")
    assert ph.task_fingerprint(t1) == ph.task_fingerprint(ph.task_items(split, n_test=6, seed=0,
                                                                        name="toy"))
    assert ph.task_fingerprint(t1) != ph.task_fingerprint(ph.task_items(split, n_test=6, seed=1,
                                                                        name="toy"))
    assert ph.task_fingerprint(t1) != ph.task_fingerprint(ph.task_items(split, n_test=6, seed=0,
                                                                        name="toy2"))


# ------------------------------------------------------------------------------ sections
def _without_seconds(x):
    """Section data as JSON, without the wall-clock fields (they differ between runs)."""
    if isinstance(x, dict):
        return {k: _without_seconds(v) for k, v in x.items()
                if "seconds" not in k and k not in ("timing", "scoring", "kv")}
    if isinstance(x, list):
        return [_without_seconds(v) for v in x]
    return x


def _resume_check(monkeypatch, module, attr, run, tmp_path):
    """Run once with parts kept; delete one part (a run killed before it finished); rerun
    counting the computations: only the missing part is computed and the section is the same."""
    parts = tmp_path / "parts"
    first = run(tmp_path / "a", parts)
    files = sorted(parts.glob("*.pkl"))
    assert len(files) >= 4                                      # 2 models x >= 2 tasks
    files[0].unlink()
    real = getattr(module, attr)
    calls = []

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(module, attr, counted)
    again = run(tmp_path / "b", parts)
    assert len(calls) == 1
    a = json.loads(json.dumps(first.data, sort_keys=True))
    b = json.loads(json.dumps(again.data, sort_keys=True))
    assert _without_seconds(a) == _without_seconds(b)
    assert [c.holds for c in first.checks] == [c.holds for c in again.checks]
    assert [c.detail for c in first.checks] == [c.detail for c in again.checks]
    assert again.seconds > 0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    task = _write_task(tmp_path_factory.mktemp("data") / "toy.jsonl")
    return ph.task_items(task.split, n_test=8, seed=0, name="toy")


@pytest.fixture(scope="module")
def group():
    return tiny_group()


def test_adaptation_resumes(monkeypatch, tmp_path, toy, group):
    def run(out, parts):
        return adaptation.run(out_dir=out, quick=True, seed=0, tasks=[toy, toy],
                              under_test=[group], ks=(0, 1, 2), n_sets=1, n_trace=1,
                              resume_dir=parts)

    _resume_check(monkeypatch, adaptation, "adaptation_curve", run, tmp_path)


def _ordering_runner(tmp_path, group):
    """``run(out, parts)``: the ordering section on two toy tasks (2 models x 2 tasks)."""
    split = _write_task(tmp_path / "t.jsonl").split
    tasks = [ph.task_items(split, n_test=8, seed=s, name=f"toy{s}") for s in (0, 1)]
    enc = make_encoder("hidden:-1", group[0].loaded.model, group[0].loaded.tokenizer)
    sizes = OrderingSizes(ks=(3,), n_orders=(4,), n_sets=1, n_test=6, n_trace=2)

    def run(out, parts):
        return ordering.run(under_test=[group], tasks=tasks, out_dir=out, sizes=sizes,
                            encoder=enc, seed=3, resume_dir=parts)

    return run


def test_ordering_resumes(monkeypatch, tmp_path, group):
    _resume_check(monkeypatch, ordering, "_measure", _ordering_runner(tmp_path, group),
                  tmp_path)


def test_ordering_resumes_inside_a_part_from_its_last_finished_order(monkeypatch, tmp_path,
                                                                    group):
    """A part of the ordering section is every order of a set (over an hour of one core for
    qwen2.5-0.5b): each order is a step kept on disk, so a run killed mid-part resumes from the
    last finished order, and the section equals an uninterrupted run's."""
    run = _ordering_runner(tmp_path, group)
    real, calls = ph.predict, []

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(ph, "predict", counted)
    base = run(tmp_path / "base", None)
    full = len(calls)                        # 4 parts x (4 orders + 1 per-query) = 20
    assert full == 20

    def killed(*a, **kw):
        if len(calls) == 7:                  # mid-way through the 2nd part
            raise KeyboardInterrupt
        return counted(*a, **kw)

    calls.clear()
    parts = tmp_path / "parts"
    monkeypatch.setattr(ph, "predict", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "a", parts)
    assert len(list(parts.glob("*.pkl"))) == 1 + 2            # part 1 (its steps gone) + 2 steps
    calls.clear()
    monkeypatch.setattr(ph, "predict", counted)
    again = run(tmp_path / "b", parts)
    assert len(calls) == full - 7             # part 1 and 2 orders of part 2 read back
    assert len(list(parts.glob("*.pkl"))) == 4                  # the parts; no step is left
    a = json.loads(json.dumps(base.data, sort_keys=True))
    b = json.loads(json.dumps(again.data, sort_keys=True))
    assert _without_seconds(a) == _without_seconds(b)
    assert [c.detail for c in base.checks] == [c.detail for c in again.checks]


def test_interference_resumes(monkeypatch, tmp_path, group):
    tasks = [
        _task("toy-sentiment", ("pos", "neg"), {"pos": "positive", "neg": "negative"},
              {"pos": ["good", "great", "loved", "fun", "movie"],
               "neg": ["bad", "awful", "hated", "boring", "film"]}),
        _task("toy-topic", ("act", "story"), {"act": "acting", "story": "plot"},
              {"act": ["acting", "this", "very", "it"],
               "story": ["story", "that", "not", "of"]}, seed=1)]
    enc = make_encoder("hidden:-1", group[0].loaded.model, group[0].loaded.tokenizer)

    def run(out, parts):
        return interference.run(out_dir=out, quick=True, tasks=tasks, under_test=[group], k=4,
                                text_encoder=enc, resume_dir=parts)

    _resume_check(monkeypatch, interference, "_measure_model", run, tmp_path)


def test_finetuning_resumes(monkeypatch, tmp_path, toy, group):
    tasks = [toy, ph.task_items(_write_task(tmp_path / "t2.jsonl", seed=1).split, n_test=6,
                                seed=1, name="toy2")]

    def run(out, parts):
        return ft.run(out_dir=out, quick=True, tasks=tasks, under_test=[group], k=4,
                      lr_grid=(0.05, 0.5), resume_dir=parts)

    _resume_check(monkeypatch, ft, "icl_vs_finetuning", run, tmp_path)
