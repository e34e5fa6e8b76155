"""Shared checks of the laboratory experiment tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from icldistill.experiments import Section

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    """Run the test with one torch thread (the experiments are small; threads only contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
