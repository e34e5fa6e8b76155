"""Bad inputs of the synthetic generators (:mod:`icldistill.lab.synthetic`) and of the demo:
each is an :class:`InputError` naming the argument, raised before any draw or folder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.validation import InputError, check_seed
from icldistill.lab import synthetic as syn
from icldistill.lab.demo import run_demo

BAD_SEEDS = [1.7, 0.5, -1, -(2**40), True, False, "3", None, math.nan, math.inf, 2**64]

GENERATORS = {
    "gaussian_tokens": lambda seed: syn.gaussian_tokens(3, 2, seed=seed),
    "gaussian_mixture": lambda seed: syn.gaussian_mixture(4, [[0.0, 0.0], [1.0, 1.0]],
                                                          seed=seed),
    "synthetic_prompt": lambda seed: syn.synthetic_prompt(3, 2, 1, seed=seed),
    "random_head": lambda seed: syn.random_head(3, 2, seed=seed),
    "icl_batch": lambda seed: syn.icl_batch("regression", 2, 3, 2, seed),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
@pytest.mark.parametrize("seed", BAD_SEEDS, ids=repr)
def test_every_generator_refuses_a_bad_seed(name, seed):
    """A fractional seed was truncated (synthetic_prompt: 1.7 gave seed 1's prompt), a negative
    one was numpy's bare ValueError (or accepted, by gaussian_tokens): one rule for all now."""
    with pytest.raises(InputError, match=r"^seed must be"):
        GENERATORS[name](seed)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_integral_seeds_are_still_taken(name):
    """NumPy integers and integral floats are seeds; the draws do not change."""
    def draws(out):
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, tuple):
            return out[0]
        for field in ("tokens", "xs", "W_Q"):
            if hasattr(out, field):
                return getattr(out, field)
        raise AssertionError(type(out))

    assert torch.equal(draws(GENERATORS[name](np.int64(7))), draws(GENERATORS[name](7.0)))
    assert torch.equal(draws(GENERATORS[name](7.0)), draws(GENERATORS[name](7)))


@settings(max_examples=40, deadline=None)
@given(seed=st.floats(0.0, 1e6, allow_nan=False).filter(lambda v: not v.is_integer()))
def test_synthetic_prompt_never_truncates_a_fractional_seed(seed):
    with pytest.raises(InputError, match="seed must be an integer >= 0"):
        syn.synthetic_prompt(3, 2, 1, seed=seed)


def test_check_seed():
    assert check_seed(0) == 0 and check_seed(np.uint32(5)) == 5 and check_seed(3.0) == 3
    assert check_seed(2**63 - 1) == 2**63 - 1
    with pytest.raises(InputError, match=r"^split_seed must be an integer >= 0, got -2$"):
        check_seed(-2, "split_seed")
    with pytest.raises(InputError, match=r"at most 2\*\*63-1"):
        check_seed(2**63)


@pytest.mark.parametrize("norm", [-1.0, 0.0, -0.0, math.nan, math.inf, True, "2", [1.0]],
                         ids=repr)
def test_synthetic_prompt_refuses_a_bad_prefix_norm(norm):
    """A negative norm silently flipped the prefix tokens; NaN said "prefix: contains NaN"."""
    with pytest.raises(InputError, match=r"^prefix_norm must be"):
        syn.synthetic_prompt(3, 2, 1, prefix_norm=norm)


@settings(max_examples=25, deadline=None)
@given(norm=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32))
def test_synthetic_prompt_prefix_has_the_asked_norm(norm, seed):
    p = syn.synthetic_prompt(4, 2, 1, n_prefix=2, prefix_norm=norm, seed=seed)
    np.testing.assert_allclose(p.segment_tokens("prefix").norm(dim=1).numpy(), norm, rtol=1e-12)


def _context():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    return xs, torch.randn(2, 5, generator=g, dtype=torch.float64), xs[:, 0]


@pytest.mark.parametrize("steps", [1.5, 0, -2, True, "3", None, math.nan], ids=repr)
def test_gd_predictions_refuses_bad_steps(steps):
    """``steps=1.5`` ran one step (``int`` truncation)."""
    with pytest.raises(InputError, match=r"^steps must be an integer >= 1"):
        syn.gd_predictions(*_context(), [0.1], steps)


@pytest.mark.parametrize("bad", [math.nan, -0.5, 0.0, math.inf, True, "x", None], ids=repr)
def test_gd_predictions_names_the_bad_step_size(bad):
    """NaN and negative step sizes were accepted (NaN predictions, a diverging "GD")."""
    with pytest.raises(InputError, match=r"^etas\[1\] must be"):
        syn.gd_predictions(*_context(), [0.1, bad, 0.2], 2)


@pytest.mark.parametrize("etas", [[], 0.1, "0.1", [[0.1], [0.1, 0.2]]], ids=repr)
def test_gd_predictions_needs_a_list_of_step_sizes(etas):
    with pytest.raises(InputError, match=r"^etas must be a non-empty 1-D sequence"):
        syn.gd_predictions(*_context(), etas, 2)


def test_gd_predictions_takes_arrays_and_numpy_scalars():
    xs, ys, q = _context()
    a = syn.gd_predictions(xs, ys, q, np.array([0.1, 0.3]), np.int64(3))
    b = syn.gd_predictions(xs, ys, q, torch.tensor([0.1, 0.3]), 3)
    assert a.shape == (2, 2) and torch.equal(a, b)


@pytest.mark.parametrize(("call", "name"), [
    (lambda v: syn.gaussian_tokens(v, 2), "n"),
    (lambda v: syn.gaussian_tokens(2, v), "d"),
    (lambda v: syn.random_head(v, 2), "d_model"),
    (lambda v: syn.causal_mask(v), "n"),
    (lambda v: syn.synthetic_prompt(3, 2, 1, n_prefix=v), "n_prefix"),
    (lambda v: syn.icl_batch("regression", v, 2, 2, 0), "batch"),
], ids=["tokens-n", "tokens-d", "head-d_model", "mask-n", "prompt-n_prefix", "batch"])
@pytest.mark.parametrize("value", ["3", None, math.nan, math.inf, 2.5, True], ids=repr)
def test_sizes_are_named_input_errors(call, name, value):
    """Text, None and NaN were raw TypeError / ValueError (``int(value)``)."""
    with pytest.raises(InputError, match=rf"^{name} must be an integer"):
        call(value)


@pytest.mark.parametrize(("call", "name"), [
    (lambda v: syn.gaussian_tokens(2, 2, cov_scale=v), "cov_scale"),
    (lambda v: syn.gaussian_mixture(3, [[0.0]], std=v), "std"),
    (lambda v: syn.random_head(2, 2, qk_gain=v), "qk_gain"),
    (lambda v: syn.random_head(2, 2, v_gain=v), "v_gain"),
    (lambda v: syn.icl_batch("regression", 2, 2, 2, 0, label_noise=v), "label_noise"),
], ids=["cov_scale", "std", "qk_gain", "v_gain", "label_noise"])
@pytest.mark.parametrize("value", ["1", None, math.nan, -1.0, True, [1.0]], ids=repr)
def test_scalars_are_named_input_errors(call, name, value):
    """``cov_scale="1"`` / ``None`` were raw TypeErrors (``math.isfinite``)."""
    with pytest.raises(InputError, match=rf"^{name} must"):
        call(value)


@pytest.mark.parametrize("scale", ["1", math.nan, 0.0, -1.0, True], ids=repr)
def test_random_head_refuses_a_bad_scale(scale):
    with pytest.raises(InputError, match=r"^scale must"):
        syn.random_head(2, 2, scale=scale)
    assert syn.random_head(2, 2, scale=None).scale == pytest.approx(2**-0.5)


@pytest.mark.parametrize("seed", [1.7, -1, True], ids=repr)
def test_run_demo_refuses_a_bad_seed_before_making_its_folder(tmp_path, seed):
    out = tmp_path / "demo"
    with pytest.raises(InputError, match=r"^seed must be an integer >= 0"):
        run_demo(out, seed=seed, quiet=True, fast=True)
    assert not out.exists()
