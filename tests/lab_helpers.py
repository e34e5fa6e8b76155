"""Shared checks of the laboratory experiment tests."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from icldistill.core.util import single_thread
from icldistill.lab.experiments import Section
from icldistill.lab.training import TrainConfig, TrainedICL
from icldistill.models.icl_transformer import ICLConfig, ICLTransformer

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    """Run the test with one torch thread (the experiments are small; threads only contend)."""
    with single_thread():
        yield


#: Pairs per prompt of the tiny untrained learner the experiment tests run on.
N = 8


def tiny(task: str = "regression") -> TrainedICL:
    """A fresh tiny untrained in-context learner (seeded: same weights every call)."""
    torch.manual_seed(0)
    cfg = ICLConfig(d_x=3, max_examples=N, n_layers=2, n_heads=2, d_model=16, task=task)
    return TrainedICL(model=ICLTransformer(cfg).eval(), config=cfg, train=TrainConfig())


@functools.lru_cache(maxsize=2)
def tiny_cached(task: str = "regression") -> TrainedICL:
    """:func:`tiny`, built once per task (callers copy it before changing it)."""
    return tiny(task)


def check_section(sec: Section, name: str, out: Path, *, figures: int = 2) -> None:
    """``sec`` is a complete report section named ``name`` whose PNG figures are in ``out``."""
    assert sec.name == name
    assert sec.tables and all(t.rows for t in sec.tables)
    assert len(sec.figures) == figures
    for f in sec.figures:
        path = out / f
        assert path.is_file()
        assert path.read_bytes()[:8] == PNG
    assert sec.checks and sec.findings
    assert all(isinstance(c.holds, bool) for c in sec.checks)
    json.dumps(sec.data, allow_nan=False)  # JSON-able
    assert sec.seconds > 0


def tiny_group(arch: str = "llama", seed: int = 1) -> list:
    """A phenomena model group: a tiny random "trained" model and its random-init twin."""
    from types import SimpleNamespace

    from icldistill.lab.experiments import phenomena as ph

    from .tiny_models import tiny_model, tiny_tokenizer

    loaded = SimpleNamespace(model=tiny_model(arch), tokenizer=tiny_tokenizer(True),
                             name="tiny" if arch == "llama" else f"tiny-{arch}")
    return [ph.ModelUnderTest("trained", "tiny", loaded),
            ph.ModelUnderTest("control", f"tiny random-init #{seed}",
                              ph.random_twin(loaded, seed), seed)]
