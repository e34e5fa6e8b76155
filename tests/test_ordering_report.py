"""What the ordering section says about itself: the distance its module docstring states, and
the test-item counts its description states when a task has fewer items than asked for."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from icldistill.core.decomposition import DualWeights
from icldistill.lab.experiments import ordering

SIZES = ordering.OrderingSizes(ks=(2,), n_orders=(2,), n_sets=1, n_test=5, n_trace=1)
ENC = SimpleNamespace(name="stub", encode=lambda texts: np.random.default_rng(len(texts))
                      .normal(size=(len(texts), 4)))


def _hs_inner(a: DualWeights, b: DualWeights) -> float:
    gram = torch.exp(a.scale * a.keys @ b.keys.T)
    return math.exp(a.log_multiplier + b.log_multiplier) * float(
        ((a.coefficients @ b.coefficients.T) * gram).sum())


def test_module_docstring_states_the_distance_the_code_computes():
    """The docstring said ``||W_0(order) - W_0(ref)|| / ||W_0(ref)||``; the code divides by the
    mean of the two norms."""
    doc = " ".join(ordering.__doc__.split())
    assert "``||A - B|| / ((||A|| + ||B||) / 2)``" in doc
    assert "/ ||W_0(reference order)||" not in doc
    g = torch.Generator().manual_seed(0)
    a = DualWeights(keys=torch.randn(4, 3, generator=g, dtype=torch.float64),
                    coefficients=torch.randn(4, 2, generator=g, dtype=torch.float64),
                    log_multiplier=-1.0, scale=0.5)
    b = DualWeights(keys=a.keys, coefficients=a.coefficients, log_multiplier=-1.0 + math.log(2),
                    scale=0.5)                                       # B = 2 A
    na, nb = math.sqrt(_hs_inner(a, a)), math.sqrt(_hs_inner(b, b))
    diff = math.sqrt(_hs_inner(a, a) + _hs_inner(b, b) - 2 * _hs_inner(a, b))
    got = ordering.relative_w0_distance(a, b)
    assert got == pytest.approx(diff / ((na + nb) / 2), rel=1e-9)
    assert got == pytest.approx(2 / 3, rel=1e-9)                     # not ||A - B|| / ||B|| = 1/2


def _task(name: str, n_test: int):
    return SimpleNamespace(name=name, test_texts=[f"t{i}" for i in range(n_test)],
                           pool_texts=[f"p{i}" for i in range(6)],
                           pool_labels=np.array([0, 1] * 3))


def _description(*tasks):
    plans = [ordering._plan(t, SIZES, ENC, 0, i) for i, t in enumerate(tasks)]
    return plans, " ".join(ordering._description(plans, "custom", SIZES, ENC,
                                                 [[object(), object()]], 0).split())


def test_description_states_the_counts_a_small_task_really_has():
    """A task with 3 test items (5 asked for) was described as "Of 5 test items per task, 4
    (held back)"."""
    plans, text = _description(_task("big", 9), _task("small", 3))
    assert [p.n_test for p in plans] == [5, 3]
    assert "Of 5 test items per task" not in text and "the 4 held-back items" not in text
    assert "(big: 5, small: 3; 5 asked for" in text
    assert "all but the calibration queries (big: 4, small: 2; held back)" in text
    assert "paired on the held-back items of each set (big: 4, small: 2)" in text


def test_description_is_unchanged_when_every_task_has_the_items():
    _, text = _description(_task("a", 9), _task("b", 5))
    assert re.search(r"Of 5 test items per task, 4 \(held back\) are scored in every order",
                     text)
    assert "paired on the 4 held-back items per set, with the" in text
