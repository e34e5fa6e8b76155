"""The Ray backend on a local Ray instance (2 CPUs) and a tiny model: the same results as the
local harness, and a worker killed mid-grid is retried with nothing lost or duplicated."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from icldistill.core.validation import InputError
from icldistill.evaluation.distributed import run_ray
from icldistill.evaluation.harness import Harness, load_results, unit_grid

from .test_harness import _write_task
from .tiny_models import tiny_model, tiny_tokenizer

ray = pytest.importorskip("ray", reason="the ray extra is part of the test install")


@pytest.fixture(scope="module")
def ray_local():
    # one logical GPU: Ray schedules GPU workers on it, and this machine has no CUDA, as a
    # CPU-only driver of a GPU cluster would see it
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _write_task(tmp_path_factory.mktemp("data") / "toy.jsonl")


def _loader(name, **_):
    return SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(True))


class _DieOnce:
    """A model loader that kills its process the first time it runs (marker file), as an
    out-of-memory kill or a lost node would, in the middle of a unit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, name, **kw):
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(137)
        return _loader(name, **kw)


def _kwargs(tmp_path, toy, loader=_loader):
    return dict(tasks={"toy": toy}, model_loader=loader, embedding_cache=str(tmp_path / "emb"),
                reference_encoder="hidden:-1", n_boot=50, batch_size=4)


def _units():
    return unit_grid(models=["tiny"], tasks=["toy"], selectors=["random", "knn", "mmd"],
                     ks=[2], seeds=2, encoder="hidden:-1", n_test=10)


def _by_key(results):
    return {r.key: (r.accuracy.value, r.n, round(r.mmd2_task, 10), r.shared) for r in results}


def _recorded_keys(folder: Path) -> list[str]:
    lines = (folder / "results.jsonl").read_text().splitlines()
    return [json.loads(line)["key"] for line in lines if line.strip()]


def test_ray_backend_gives_the_local_results(tmp_path, toy, ray_local, float32_default,
                                             one_thread):
    # Ray workers build the tiny model under torch's float32 default, so the local run does too
    units = _units()
    local = Harness(tmp_path / "local", progress=False, **_kwargs(tmp_path, toy)).run(units)
    got = run_ray(units, tmp_path / "ray", harness_kwargs=_kwargs(tmp_path, toy),
                  num_workers=2, progress=False)
    assert [r.key for r in got] == [r.key for r in local]
    assert _by_key(got) == _by_key(local)
    preds_local = (tmp_path / "local" / "predictions.jsonl").read_text().splitlines()
    preds_ray = (tmp_path / "ray" / "predictions.jsonl").read_text().splitlines()
    assert sorted(preds_local) == sorted(preds_ray)
    # finished units are read back, not sent to workers again
    seen = []
    again = run_ray(units, tmp_path / "ray", harness_kwargs=_kwargs(tmp_path, toy),
                    progress=False, on_result=seen.append)
    assert seen == [] and _by_key(again) == _by_key(local)


def test_a_worker_killed_mid_grid_is_retried_and_nothing_is_lost_or_doubled(
        tmp_path, toy, ray_local, float32_default, one_thread):
    units = _units()
    marker = tmp_path / "died"
    got = run_ray(units, tmp_path / "ray", harness_kwargs=_kwargs(tmp_path, toy,
                                                                    _DieOnce(marker)),
                  num_workers=2, max_retries=2, progress=False)
    assert marker.exists(), "the fault was not injected"
    keys = _recorded_keys(tmp_path / "ray")
    assert sorted(keys) == sorted(r.key for r in got) and len(set(keys)) == len(units)
    local = Harness(tmp_path / "local", progress=False, **_kwargs(tmp_path, toy)).run(units)
    assert _by_key(got) == _by_key(local)
    assert len(load_results(tmp_path / "ray")) == len(units)


def test_bad_settings_are_one_line_errors(tmp_path, toy):
    for kw, what in [({"num_workers": 0}, "num_workers"), ({"cpus_per_worker": 0}, "cpus"),
                     ({"max_retries": -1}, "max_retries"), ({"gpus_per_worker": -1}, "gpus")]:
        with pytest.raises(InputError, match=what):
            run_ray(_units(), tmp_path / "x", harness_kwargs=_kwargs(tmp_path, toy),
                    progress=False, **kw)
    assert np.isfinite(1.0)


def test_harness_kwargs_that_run_ray_sets_itself_are_input_errors(tmp_path, toy):
    """Regression: harness_kwargs={"progress": ...} (or "out_dir") was a raw TypeError
    ("got multiple values for keyword argument"); an unknown key was one too."""
    for key, value, what in [("progress", False, "pass progress= to run_ray itself"),
                             ("out_dir", str(tmp_path), "run_ray's out_dir"),
                             ("batchsize", 4, "not a Harness argument; they are tasks, "
                                              "batch_size")]:
        kw = {**_kwargs(tmp_path, toy), key: value}
        with pytest.raises(InputError, match=rf"harness_kwargs\['{key}'\].*{what}"):
            run_ray(_units(), tmp_path / "x", harness_kwargs=kw, progress=False)
    with pytest.raises(InputError, match="harness_kwargs must be a dict"):
        run_ray(_units(), tmp_path / "x", harness_kwargs=[("batch_size", 4)], progress=False)


class _Sent(Exception):
    """Stops run_ray once it has built the workers' arguments."""


def test_path_arguments_are_made_absolute_on_the_driver(tmp_path, toy, monkeypatch):
    """Regression: embedding_cache / selections_from went to the workers as given, so a
    relative path was read from each worker's own folder (another one on a cluster node)."""
    from icldistill.evaluation import distributed

    sent = []

    class FakeRay:                  # the driver's side of Ray: records what workers get
        def is_initialized(self):
            return True

        def cluster_resources(self):
            return {"CPU": 2.0}

        def remote(self, **_):
            class Actor:
                @staticmethod
                def remote(*args):
                    sent.append(args)
                    raise _Sent

            return lambda cls: Actor

    monkeypatch.setattr(distributed, "_ray", FakeRay)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "earlier" / "selections").mkdir(parents=True)
    kw = {**_kwargs(tmp_path, toy), "embedding_cache": "emb",
          "selections_from": Path("earlier")}
    with pytest.raises(_Sent):
        run_ray(_units(), "out", harness_kwargs=kw, num_workers=1, progress=False)
    out_dir, worker_kwargs, _ = sent[0]
    assert out_dir == str(tmp_path / "out")
    assert worker_kwargs["embedding_cache"] == str(tmp_path / "emb")
    assert worker_kwargs["selections_from"] == str(tmp_path / "earlier")
    assert worker_kwargs["batch_size"] == 4 and worker_kwargs["tasks"]["toy"] is toy


def test_cli_evaluate_with_the_ray_backend_gives_the_local_results(tmp_path, ray_local,
                                                                   float32_default, one_thread,
                                                                   capsys, monkeypatch):
    # regression: the local run used torch's default thread count and the workers one thread
    # each, and the float32 embeddings (so mmd2_task) differed in the 7th digit on CI
    from icldistill.cli import main

    monkeypatch.setenv("ICLDISTILL_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny-llama"
    tiny_model("llama", dtype=__import__("torch").float32).save_pretrained(model_dir)
    tiny_tokenizer(True).save_pretrained(model_dir)
    data = tmp_path / "toy.jsonl"
    _write_task(data)
    argv = ["evaluate", "--model", str(model_dir), "--file", str(data), "--text-field",
            "sentence", "--label-field", "y", "--test-size", "20", "--selector", "random,knn",
            "--k", "2", "--seeds", "1", "--n-test", "8", "--encoder", "hidden:-1", "--quiet",
            "--json", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "local")]) == 0
    local = json.loads(capsys.readouterr().out)
    assert main([*argv, "--out", str(tmp_path / "ray"), "--backend", "ray",
                 "--workers", "2"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in remote] == [r["key"] for r in local]
    assert [r["accuracy"] for r in remote] == [r["accuracy"] for r in local]
    assert [r["mmd2_task"] for r in remote] == pytest.approx([r["mmd2_task"] for r in local],
                                                             rel=1e-9)


def test_cli_refuses_a_device_this_machine_lacks(capsys):
    import torch

    from icldistill.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["evaluate", "--device", "cuda", "--datasets", "amazon"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err
    assert main(["trace", "--device", "tpu", "--demos", "x", "--query", "q"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def _no_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")


def test_the_device_is_checked_on_the_workers_not_on_the_driver(tmp_path, toy, ray_local):
    """A driver without CUDA may run a GPU grid: it does not refuse ``device="cuda"`` itself;
    a worker with the requested GPU checks it (here the logical GPU has no CUDA behind it, so
    the worker's answer is the error, named as the workers')."""
    _no_cuda()
    kw = {**_kwargs(tmp_path, toy), "device": "cuda"}
    with pytest.raises(InputError, match=r"on the Ray workers \(1 CPU\(s\), 1 GPU\(s\) "
                                         r"each\): device 'cuda': CUDA is not available"):
        run_ray(_units(), tmp_path / "ray", harness_kwargs=kw, gpus_per_worker=1,
                progress=False)
    with pytest.raises(InputError, match=r"has 1 GPU\(s\); each worker asks for 2"):
        run_ray(_units(), tmp_path / "ray", harness_kwargs=kw, gpus_per_worker=2,
                num_workers=1, progress=False)
    assert not (tmp_path / "ray" / "results.jsonl").exists() or not _recorded_keys(
        tmp_path / "ray")


def test_cli_ray_backend_leaves_the_device_to_the_workers(tmp_path, ray_local, capsys):
    from icldistill.cli import main

    _no_cuda()
    data = tmp_path / "toy.jsonl"
    _write_task(data)
    argv = ["evaluate", "--model", "smollm2-135m", "--file", str(data), "--text-field",
            "sentence", "--label-field", "y", "--test-size", "20", "--selector", "random",
            "--k", "2", "--n-test", "8", "--quiet", "--out", str(tmp_path / "out"),
            "--device", "cuda"]
    assert main([*argv, "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "on the Ray workers" in err and "CUDA" in err
    assert main(argv) == 2                              # the local backend checks it here
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "on the Ray workers" not in err
    assert "CUDA is not available" in err
    assert main([*argv[:-1], "tpu", "--backend", "ray"]) == 2     # a name torch does not know
    assert "unknown device 'tpu'" in capsys.readouterr().err
