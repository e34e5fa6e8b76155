"""Training of the in-context learner: determinism, presets, the checkpoint cache, resuming an
interrupted run, evaluation curves and input errors. Everything uses the ``tiny`` preset (or a
few steps of it) and ``tmp_path`` as the cache, so the whole file runs in seconds."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

import icldistill.lab.training as training
from icldistill import InputError
from icldistill.lab.training import (
    ICLEvaluation,
    TrainConfig,
    TrainedICL,
    checkpoint_path,
    dims_at,
    evaluate_icl,
    examples_at,
    learning_rate_at,
    load_or_train,
    preset,
    train_batch,
    train_icl,
)
from icldistill.models.icl_transformer import ICLConfig, ICLTransformer

from .lab_helpers import one_thread  # noqa: F401 (autouse fixture)


def _short(task: str = "regression", steps: int = 12, **kw) -> tuple[ICLConfig, TrainConfig]:
    cfg, tr = preset("tiny", task)
    return cfg, dataclasses.replace(tr, steps=steps, warmup=3, history_every=4, **kw)


def _untrained(cfg: ICLConfig) -> ICLTransformer:
    """A seeded untrained float32 model in eval mode (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ICLTransformer(cfg).float().eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_weights_different_seed_differs():
    cfg, tr = _short()
    rng_before = torch.get_rng_state()
    a, b = train_icl(cfg, tr), train_icl(cfg, tr)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert _same_weights(a.model, b.model)
    assert a.history == b.history
    c = train_icl(cfg, dataclasses.replace(tr, seed=1))
    assert not _same_weights(a.model, c.model)


def test_trained_model_is_float32_eval_even_with_float64_default():
    assert torch.get_default_dtype() == torch.float64  # set by conftest
    cfg, tr = _short("classification", steps=3)
    res = train_icl(cfg, tr)
    assert isinstance(res, TrainedICL) and res.task == "classification"
    assert not res.model.training
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
    assert torch.get_default_dtype() == torch.float64
    assert res.history[-1][0] == tr.steps and res.seconds > 0 and res.path is None


def test_schedule_and_curriculum():
    cfg = ICLConfig(d_x=3, max_examples=20)
    tr = TrainConfig(steps=100, lr=1.0, warmup=10, curriculum_start=4)
    lrs = [learning_rate_at(tr, s) for s in range(tr.steps)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(x >= y for x, y in itertools.pairwise(lrs[9:]))  # decays after warm-up
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    ns = [examples_at(cfg, tr, s) for s in range(tr.steps)]
    assert ns[0] == 4 and ns[50] == 20 and ns[-1] == 20
    assert all(x <= y for x, y in itertools.pairwise(ns))
    # curriculum_start above max_examples is clipped
    assert examples_at(cfg, TrainConfig(curriculum_start=50), 0) == 20


def test_dimension_curriculum():
    cfg = ICLConfig(d_x=6, max_examples=10)
    tr = TrainConfig(steps=40, batch_size=16, curriculum_dims_start=2, curriculum_start=3)
    dims = [dims_at(cfg, tr, s) for s in range(tr.steps)]
    assert dims[0] == 2 and dims[20] == 6 and dims[-1] == 6
    assert all(x <= y for x, y in itertools.pairwise(dims))
    xs, ys, d = train_batch(cfg, tr, 0)
    assert xs.shape == (16, 3, 6) and ys.shape == (16, 3) and d == 2
    assert xs.dtype == torch.float32
    active = (xs != 0).any(dim=1)                         # [B, d_x] active coordinates
    assert bool((active.sum(1) == 2).all())
    assert int(active.any(0).sum()) == 6                  # every coordinate is used somewhere
    xs_full, _, d_full = train_batch(cfg, tr, 30)
    assert d_full == 6 and bool((xs_full != 0).all())
    assert dims_at(cfg, dataclasses.replace(tr, curriculum_dims_start=None), 0) == 6


# ----------------------------------------------------------------------------- presets
def test_tiny_preset_loss_decreases():
    cfg, tr = preset("tiny")
    res = train_icl(cfg, tr)
    losses = [v for _, v in res.history]
    assert len(losses) >= 5 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.9 * first, losses


@pytest.mark.parametrize("name", ["tiny", "quick", "full"])
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_presets_are_valid(name, task):
    cfg, tr = preset(name, task)
    assert cfg.task == task and tr.steps >= 1
    if name != "tiny":
        assert cfg.max_examples >= 20 and 5 <= cfg.d_x <= 10
    ICLTransformer(cfg)  # builds


# ----------------------------------------------------------------------------- cache
def test_cache_hit_does_not_retrain(tmp_path, monkeypatch):
    cfg, tr = _short()
    first = load_or_train(cfg, tr, cache_dir=tmp_path)
    assert first.path == checkpoint_path(cfg, tr, tmp_path)
    assert first.path.is_file() and first.path.parent == tmp_path / "lab"
    assert not list((tmp_path / "lab").glob("*.state.pt"))
    assert not list((tmp_path / "lab").glob("*.tmp"))

    def boom(*args, **kwargs):
        raise AssertionError("retrained although the checkpoint is cached")

    monkeypatch.setattr(training, "icl_batch", boom)  # training draws its prompts here
    second = load_or_train(cfg, tr, cache_dir=tmp_path)
    assert _same_weights(first.model, second.model)
    assert second.history == first.history and second.seconds == pytest.approx(first.seconds)
    assert not second.model.training
    assert all(p.dtype == torch.float32 for p in second.model.parameters())
    # other configs -> other file
    assert checkpoint_path(cfg, dataclasses.replace(tr, seed=3), tmp_path) != first.path
    with pytest.raises(AssertionError, match="retrained"):
        load_or_train(cfg, tr, cache_dir=tmp_path, retrain=True)


def test_a_learner_another_process_trains_is_waited_for_and_loaded(tmp_path, monkeypatch):
    """Two processes needing the same learner (two ``reproduce`` runs on one folder): the one
    holding the learner's lock trains it; the other waits and loads its checkpoint."""
    import subprocess
    import sys
    import textwrap
    import time

    cfg, tr = _short()
    path = checkpoint_path(cfg, tr, tmp_path)
    held = tmp_path / "held"
    other = textwrap.dedent(f"""
        import dataclasses, time
        from icldistill.artifacts.store import unit_lock
        from icldistill.lab.training import load_or_train, preset
        cfg, tr = preset("tiny", "regression")
        tr = dataclasses.replace(tr, steps=12, warmup=3, history_every=4)
        with unit_lock({str(path.parent)!r}, {path.stem!r}):
            open({str(held)!r}, "w").close()
            time.sleep(1.0)
            load_or_train(cfg, tr, cache_dir={str(tmp_path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", other])
    try:
        while not held.exists():
            assert proc.poll() is None
            time.sleep(0.02)

        def boom(*args, **kwargs):
            raise AssertionError("trained although another process was training it")

        monkeypatch.setattr(training, "icl_batch", boom)
        got = load_or_train(cfg, tr, cache_dir=tmp_path)
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0 and got.path == path
    monkeypatch.undo()
    assert _same_weights(got.model, load_or_train(cfg, tr, cache_dir=tmp_path).model)


def test_mismatched_checkpoint_is_ignored(tmp_path):
    cfg, tr = _short(steps=4)
    res = load_or_train(cfg, tr, cache_dir=tmp_path)
    blob = torch.load(res.path, weights_only=True)
    blob["key"]["train"]["seed"] = 99  # stored configs no longer match the file name
    torch.save(blob, res.path)
    with pytest.warns(RuntimeWarning, match="other configs"):
        again = load_or_train(cfg, tr, cache_dir=tmp_path)
    assert _same_weights(again.model, res.model)
    res.path.write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        load_or_train(cfg, tr, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- resume
def test_resume_after_interrupt_matches_uninterrupted(tmp_path):
    cfg, tr = _short(steps=14)
    reference = train_icl(cfg, tr)
    with pytest.raises(KeyboardInterrupt):
        load_or_train(cfg, tr, cache_dir=tmp_path, _stop_after=6)
    path = checkpoint_path(cfg, tr, tmp_path)
    state = path.with_suffix(".state.pt")  # documented: next to the checkpoint
    assert state.is_file() and not path.exists()
    assert torch.load(state, weights_only=True)["step"] == 6
    resumed = load_or_train(cfg, tr, cache_dir=tmp_path)
    assert _same_weights(resumed.model, reference.model)
    assert resumed.history == reference.history
    assert path.is_file() and not state.exists()


def test_interrupt_inside_a_step_resumes_from_the_last_complete_step(tmp_path, monkeypatch):
    """A ^C arriving while a batch is being drawn (mid-step) keeps the last complete step, and
    periodic states are written while training."""
    cfg, tr = _short("classification", steps=10)
    reference = train_icl(cfg, tr)
    real_batch, calls, saved = training.icl_batch, [], []

    def interrupting_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    real_write = training.atomic_write

    def counting_write(path, write):
        real_write(path, write)
        saved.append(torch.load(path, weights_only=True).get("step"))

    monkeypatch.setattr(training, "icl_batch", interrupting_batch)
    monkeypatch.setattr(training, "atomic_write", counting_write)
    with pytest.raises(KeyboardInterrupt):
        load_or_train(cfg, tr, cache_dir=tmp_path, _state_every=0.0)
    assert saved == [1, 2, 3, 4, 5, 6, 7, 7]  # periodic states, then the one on ^C
    monkeypatch.setattr(training, "icl_batch", real_batch)
    resumed = load_or_train(cfg, tr, cache_dir=tmp_path)
    assert _same_weights(resumed.model, reference.model)
    assert resumed.history == reference.history


def test_progress_bar_runs(capsys):
    cfg, tr = _short(steps=3)
    train_icl(cfg, tr, progress=True)


# ----------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_evaluate_icl_shapes(task):
    cfg, _ = preset("tiny", task)
    model = _untrained(cfg)
    ev = evaluate_icl(model, task, n_examples=6, batches=2, batch_size=16, seed=1)
    assert isinstance(ev, ICLEvaluation) and ev.prompts == 32 and ev.n_examples == 6
    for t in (ev.error, ev.stderr, ev.baseline):
        assert t.shape == (6,) and t.dtype == torch.float64 and bool(torch.isfinite(t).all())
    assert bool((ev.stderr >= 0).all())
    if task == "classification":
        assert bool(((ev.error >= 0) & (ev.error <= 1)).all())
        assert ev.metric == "accuracy"
    else:
        # least squares is exact once there are d_x examples (noise-free labels)
        assert float(ev.baseline[cfg.d_x:].max()) < 1e-6
    # deterministic, TrainedICL accepted, default n_examples = max_examples
    again = evaluate_icl(model, n_examples=6, batches=2, batch_size=16, seed=1)
    assert torch.equal(ev.error, again.error)
    full = evaluate_icl(TrainedICL(model, cfg, TrainConfig()), batches=1, batch_size=4)
    assert full.error.shape == (cfg.max_examples,)
    assert "±" in ev.table([0, 5])
    assert model.training is False


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw", [
    {"steps": 0}, {"steps": -3}, {"steps": 2.5}, {"batch_size": 0}, {"lr": 0.0},
    {"lr": float("nan")}, {"weight_decay": -1.0}, {"warmup": -1}, {"curriculum_start": 0},
    {"label_noise": -0.1}, {"grad_clip": 0.0}, {"seed": -1}, {"history_every": 0},
    {"curriculum_dims_start": 0}, {"classification_loss": "hinge"},
])
def test_bad_train_config(kw):
    with pytest.raises(InputError):
        TrainConfig(**kw)


def test_bad_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown preset"):
        preset("huge")
    with pytest.raises(InputError, match="unknown task"):
        preset("tiny", "ranking")
    cfg, tr = _short(steps=2)
    with pytest.raises(InputError):
        train_icl(tr, cfg)  # swapped
    with pytest.raises(InputError):
        load_or_train(cfg, {"steps": 3}, cache_dir=tmp_path)
    model = _untrained(cfg)
    with pytest.raises(InputError, match="task mismatch"):
        evaluate_icl(model, "classification")
    with pytest.raises(InputError, match="n_examples"):
        evaluate_icl(model, n_examples=cfg.max_examples + 1)
    with pytest.raises(InputError, match="n_examples"):
        evaluate_icl(model, n_examples=0)
    with pytest.raises(InputError, match="batch_size"):
        evaluate_icl(model, batch_size=0)
    with pytest.raises(InputError, match="model"):
        evaluate_icl("not a model")
    assert TrainConfig(grad_clip=math.inf).grad_clip == math.inf
    with pytest.raises(InputError, match="flip probability"):
        train_icl(preset("tiny", "classification")[0], TrainConfig(steps=1, label_noise=2.0))


def test_numpy_numbers_are_normalised():
    np = pytest.importorskip("numpy")
    tr = TrainConfig(steps=np.int64(5), lr=np.float32(0.01), seed=np.int64(2))
    assert type(tr.steps) is int and type(tr.lr) is float and type(tr.seed) is int
    cfg = preset("tiny")[0]
    assert checkpoint_path(cfg, tr) == checkpoint_path(cfg, TrainConfig(steps=5, lr=float(
        np.float32(0.01)), seed=2))


def test_divergence_is_reported(monkeypatch):
    cfg, tr = _short(steps=3)

    real_batch = training.icl_batch

    def huge_labels(*args, **kwargs):  # finite labels whose squared error overflows float32
        batch = real_batch(*args, **kwargs)
        return dataclasses.replace(batch, ys=torch.full_like(batch.ys, 1e30))

    monkeypatch.setattr(training, "icl_batch", huge_labels)
    with pytest.raises(FloatingPointError, match="diverged at step 1"):
        train_icl(cfg, tr)
