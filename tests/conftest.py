"""Shared test configuration and hypothesis strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

settings.register_profile(
    "default", deadline=None, max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")

torch.set_default_dtype(torch.float64)

ELEMENTS = st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False, width=64)


def matrices(rows: st.SearchStrategy[int], cols: st.SearchStrategy[int] | int):
    """Strategy of float64 ``[rows, cols]`` arrays with bounded entries."""
    cols_s = st.just(cols) if isinstance(cols, int) else cols
    return st.tuples(rows, cols_s).flatmap(
        lambda rc: arrays(np.float64, rc, elements=ELEMENTS)
    )


def rel_err(a, b) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


@pytest.fixture
def float32_default():
    """The suite's default dtype is float64 (above); models that run as shipped use float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def one_thread():
    """torch on one thread, as a Ray worker with one CPU runs: float32 sums are ordered by the
    thread count, so two runs agree bit for bit only under the same count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
