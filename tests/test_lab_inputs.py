"""Bad inputs of the lab experiments, refused with a named :class:`InputError` before anything
is traced."""

from __future__ import annotations

import math
import re

import pytest

from icldistill.core.validation import InputError
from icldistill.lab.experiments import bias

from .lab_helpers import tiny_cached


@pytest.fixture
def no_tracing(monkeypatch):
    def traced(*a, **kw):
        raise AssertionError("measured before the levels were checked")

    monkeypatch.setattr(bias, "_bias_vs_mmd", traced)


@pytest.mark.parametrize(("task", "levels", "message"), [
    ("regression", {"mean_shift": ()}, "levels['mean_shift'] must be a non-empty sequence"),
    ("regression", {"mean_shift": (0.0, 1.0), "cov_scale": []},
     "levels['cov_scale'] must be a non-empty sequence"),
    ("regression", {"mean_shift": "12"}, "levels['mean_shift'] must be a non-empty sequence"),
    ("regression", {"mean_shift": 1.0}, "levels['mean_shift'] must be a non-empty sequence"),
    ("regression", {"mean_shift": (0.0, math.nan)}, "levels['mean_shift'][1] must"),
    ("regression", {"mean_shift": (0.0, "x")}, "levels['mean_shift'][1] must be a number"),
    ("regression", {"mean_shift": (True,)}, "levels['mean_shift'][0] must be a number"),
    ("regression", {"cov_scale": (1.0, -0.5)}, "levels['cov_scale'][1] must"),
    ("regression", {"label_noise": (math.inf,)}, "levels['label_noise'][0] must"),
    ("classification", {"label_noise": (0.0, 1.5)}, "levels['label_noise'][1] must lie in"),
    ("regression", {}, "levels must be a non-empty dict"),
    ("regression", [("mean_shift", (1.0,))], "levels must be a non-empty dict"),
    ("regression", {"rotation": (0.0,)}, "unknown shift kinds ['rotation']"),
])
def test_bias_levels_are_checked_before_tracing(no_tracing, task, levels, message):
    """A kind with no levels passed and failed after every trace in ``np.ptp([])``."""
    with pytest.raises(InputError, match=re.escape(message)):
        bias.bias_vs_mmd(tiny_cached(task), n_prompts=2, n_seeds=1, levels=levels)


def test_bias_empty_level_list_is_a_named_error():
    """End to end (nothing stubbed): the old code raised numpy's bare ValueError."""
    with pytest.raises(InputError, match=re.escape("levels['cov_scale']")):
        bias.bias_vs_mmd(tiny_cached(), n_prompts=2, n_seeds=1,
                         levels={"mean_shift": (0.0, 1.0), "cov_scale": ()})


def test_bias_good_levels_reach_the_measurement_as_floats(monkeypatch):
    seen = {}
    monkeypatch.setattr(bias, "_bias_vs_mmd", lambda tr, B, S, levels, *a: seen.update(levels))
    bias.bias_vs_mmd(tiny_cached(), n_prompts=2, n_seeds=1,
                     levels={"label_noise": [0, 2], "mean_shift": (-1, 0.5)})
    assert seen == {"mean_shift": (-1.0, 0.5), "label_noise": (0.0, 2.0)}
    assert list(seen) == ["mean_shift", "label_noise"]            # in the order of KINDS


@pytest.mark.parametrize(("kw", "message"), [
    ({"n_prompts": 2.5}, "n_prompts must be an integer >= 1"),
    ({"n_seeds": 0}, "n_seeds must be an integer >= 1"),
    ({"seed": 1.5}, "seed must be an integer >= 0"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_bias_sizes_and_seed_are_not_truncated(no_tracing, kw, message):
    """``int()`` read n_prompts=2.5 as 2 and seed=1.5 as seed 1."""
    args = {"n_prompts": 2, "n_seeds": 1, **kw}
    with pytest.raises(InputError, match=re.escape(message)):
        bias.bias_vs_mmd(tiny_cached(), **args)


def test_ordering_refuses_a_negative_seed_by_name():
    """A negative seed went on to fail as 'control seed must be >= 1'."""
    from icldistill.lab.experiments import ordering

    with pytest.raises(InputError, match=r"^seed must be an integer >= 0"):
        ordering.run(("unused",), out_dir="/nonexistent/never-made", seed=-1)
