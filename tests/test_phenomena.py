"""The shared machinery of the phenomena sections: random-init twins, the control rule,
balanced demonstrations, label-position quantities (issue 13)."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.validation import InputError
from icldistill.data.prompts import Prompt
from icldistill.lab.experiments import phenomena as ph

from .test_harness import _write_task
from .tiny_models import tiny_model, tiny_tokenizer


def _loaded():
    return SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(True),
                           name="tiny")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _write_task(tmp_path_factory.mktemp("data") / "toy.jsonl")


@given(st.lists(st.sampled_from("abc"), min_size=1, max_size=30), st.integers(0, 30),
       st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_balanced_indices_property(labels, k, seed):
    labels = np.asarray(labels)
    k = min(k, len(labels))
    idx = ph.balanced_indices(labels, k, np.random.default_rng(seed))
    assert len(idx) == k and len(set(idx.tolist())) == k
    got = Counter(labels[idx].tolist())
    have = Counter(labels.tolist())
    # as balanced as the data allow: a label below the top count has run out
    top = max(got.values(), default=0)
    for lab, n in have.items():
        assert got.get(lab, 0) >= min(n, top - 1)
    again = ph.balanced_indices(labels, k, np.random.default_rng(seed))
    np.testing.assert_array_equal(idx, again)


def test_balanced_indices_exclude_and_errors():
    labels = np.array(["a", "b"] * 5)
    idx = ph.balanced_indices(labels, 6, np.random.default_rng(0), exclude=[0, 1])
    assert not {0, 1} & set(idx.tolist())
    with pytest.raises(InputError, match="available"):
        ph.balanced_indices(labels, 9, np.random.default_rng(0), exclude=[0, 1])
    with pytest.raises(InputError, match="k must"):
        ph.balanced_indices(labels, -1, np.random.default_rng(0))


def test_statistic_and_control_rule():
    s = ph.statistic([1.0, 2.0, 3.0, np.nan], "m")
    assert s.value == pytest.approx(2.0) and s.n == 3 and s.low <= 2.0 <= s.high
    c = ph.statistic([5.0, 5.0], "c", role="control")
    assert (c.value, c.low, c.high) == (5.0, 5.0, 5.0)
    assert math.isnan(ph.statistic([], "e").value)
    trained = ph.Statistic("t", "trained", 0.9, 0.8, 1.0, 10)
    ctl = [ph.Statistic("c1", "control", 0.5, 0.4, 0.6, 10),
           ph.Statistic("c2", "control", 0.55, 0.45, 0.7, 10)]
    cmp = ph.compare_with_controls("acc", trained, ctl)
    assert (cmp.low, cmp.high, cmp.outside) == (0.4, 0.7, True)
    inside = ph.compare_with_controls("acc", ph.Statistic("t", "trained", 0.65, 0.6, 0.7, 10),
                                      ctl)
    assert not inside.outside
    assert ph.controlled_check("x", True, cmp, sign=1).holds
    assert not ph.controlled_check("x", False, cmp, sign=1).holds
    no = ph.controlled_check("x", True, inside, sign=1)
    assert not no.holds and "does not show what training taught" in no.detail
    # outside, but on the side opposite to the claim: the control shows more of it
    wrong = ph.controlled_check("x falls", True, cmp, sign=-1)
    assert not wrong.holds and "side opposite to the claim" in wrong.detail
    with pytest.raises(ValueError, match="sign"):
        ph.controlled_check("x", True, cmp, sign=0)
    with pytest.raises(InputError, match="control"):
        ph.compare_with_controls("acc", trained, [])


def test_paired_control_rule():
    """Trained and control on the same units: a paired sign-flip test per control, which the
    interval rule misjudged both ways (a constant control gave a zero-width interval that any
    trained value "beat"; a paired difference the intervals hid was missed)."""
    members = ["t", "c1"]
    # a constant control (zero-width interval) and a trained model that differs on only 3 of
    # 6 units: the interval rule calls it outside, the paired test does not
    trained = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]
    ctl = [0.0] * 6
    interval = ph.compare_with_controls("x", ph.statistic(trained), [ph.statistic(ctl)])
    assert interval.outside
    cmp = ph.compare_paired_with_controls("x", trained, [ctl], members)
    assert not cmp.outside and cmp.verdict == "NOT shown to differ (paired)"
    (pc,) = cmp.paired
    assert pc.n == 6 and pc.diff == pytest.approx(0.1)
    assert pc.p == pytest.approx(ph.sign_flip_p(np.subtract(trained, ctl)))
    assert pc.floor == pytest.approx(2 / 2 ** 6)        # 6 units (3 of them measured 0)
    # overlapping intervals, but the trained model is above the control on every unit
    rng = np.random.default_rng(0)
    base = rng.normal(size=8)
    up = base + 0.05
    assert not ph.compare_with_controls("y", ph.statistic(up), [ph.statistic(base)]).outside
    cmp = ph.compare_paired_with_controls("y", up, [base], members)
    assert cmp.outside and cmp.paired[0].p == pytest.approx(2 / 2 ** 8)
    assert ph.controlled_check("y rises", True, cmp, sign=1).holds
    wrong = ph.controlled_check("y falls", True, cmp, sign=-1)
    assert not wrong.holds and "side opposite to the claim" in wrong.detail
    assert "paired on the same units" in wrong.detail
    # two controls: it must differ from both, in one direction
    cmp = ph.compare_paired_with_controls("z", up, [base, up + 0.05], ["t", "c1", "c2"])
    assert not cmp.outside
    assert ph.compare_paired_with_controls("z", up, [base, base - 0.1],
                                           ["t", "c1", "c2"]).outside
    assert cmp.to_dict()["paired"][1]["diff"] == pytest.approx(-0.05)
    with pytest.raises(InputError, match="same units"):
        ph.compare_paired_with_controls("z", up, [base[:-1]], members)
    with pytest.raises(InputError, match="members"):
        ph.compare_paired_with_controls("z", up, [base], ["t"])
    with pytest.raises(InputError, match="control"):
        ph.compare_paired_with_controls("z", up, [], ["t"])


@settings(max_examples=200, deadline=None)
@given(t=st.floats(-5, 5), lo=st.floats(-5, 5), width=st.floats(0, 3),
       sign=st.sampled_from([1, -1]), holds=st.booleans())
def test_a_controlled_check_passes_only_beyond_the_controls_on_the_claims_side(t, lo, width,
                                                                             sign, holds):
    """Regression: the real section's stationarity check (a claimed negative Spearman) passed
    with the trained value -0.50 above a control spread of [-0.62, -0.58], i.e. with the
    random-init twin showing the property more strongly."""
    trained = ph.Statistic("t", "trained", t, t - 0.01, t + 0.01, 10)
    ctl = [ph.Statistic("c", "control", lo + width / 2, lo, lo + width, 10)]
    check = ph.controlled_check("claim", holds, ph.compare_with_controls("s", trained, ctl),
                                sign=sign)
    beyond = t > lo + width if sign > 0 else t < lo
    assert check.holds == (holds and beyond)


def test_random_twin_is_a_fresh_model_of_the_same_architecture():
    loaded = _loaded()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    twin = ph.random_twin(loaded, 3)
    again = ph.random_twin(loaded, 3)
    other = ph.random_twin(loaded, 4)
    sd, sd2, sd3 = twin.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert sd.keys() == before.keys()
    assert all(sd[k].shape == before[k].shape and sd[k].dtype == before[k].dtype for k in sd)
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)                  # seeded
    assert any(not torch.equal(sd[k], sd3[k]) for k in sd)              # seed matters
    big = [k for k in sd if sd[k].numel() > 64]
    assert any(not torch.equal(sd[k], before[k]) for k in big)          # not the trained one
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in before.items())
    assert not twin.model.training and twin.tokenizer is loaded.tokenizer
    assert "random-init #3" in twin.name
    groups = ph.resolve_models([], under_test=[[ph.ModelUnderTest("trained", "t", loaded),
                                                ph.ModelUnderTest("control", "c", twin, 3)]])
    assert groups[0][1].is_control
    with pytest.raises(InputError, match="control"):
        ph.resolve_models([], under_test=[[ph.ModelUnderTest("trained", "t", loaded)]])


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_the_twin_of_a_half_precision_model_keeps_its_tied_head(arch):
    """Regression: float32_head unties a tied head (its float32 copy) and clears the config's
    flag, so the twin built from that config got an independent random head: not the
    architecture of the model, whose logits read the input embedding. And models_under_test
    left the twin's logits in bfloat16 where the trained model's are float32."""
    from icldistill.models import float32_head, float32_head_untied

    model = tiny_model(arch).to(torch.bfloat16)
    assert model.config.tie_word_embeddings and not float32_head_untied(model)
    float32_head(model)
    assert float32_head_untied(model) and not model.config.tie_word_embeddings
    loaded = SimpleNamespace(model=model, tokenizer=tiny_tokenizer(True), name="t")
    for twin in (ph.random_twin(loaded, 2),
                 ph.models_under_test(loaded, n_controls=1, seed=1)[1].loaded):
        head = twin.model.get_output_embeddings().weight
        assert head.dtype == torch.float32                        # logits in float32
        # built tied (the head is the embedding), then copied to float32
        assert torch.equal(head, twin.model.get_input_embeddings().weight.float())
    # the float32 model's twin is tied outright and has the same weights, up to bf16 rounding
    full = ph.random_twin(SimpleNamespace(model=tiny_model(arch), tokenizer=None, name="t"), 2)
    emb = full.model.get_input_embeddings().weight
    assert emb.data_ptr() == full.model.get_output_embeddings().weight.data_ptr()
    half = ph.random_twin(loaded, 2).model.get_input_embeddings().weight
    assert torch.equal(emb.to(torch.bfloat16), half)


def test_task_items_and_prediction(toy):
    items = ph.task_items(toy.split, n_test=10, seed=0, name="toy")
    assert len(items.test_texts) == 10
    assert Counter(items.test_labels.tolist()) == {"pos": 5, "neg": 5}
    assert ph.task_items(toy.split, n_test=10, seed=0).test_texts == items.test_texts
    demos = items.demos(ph.balanced_indices(items.pool_labels, 4, np.random.default_rng(0)))
    pred, lp = ph.predict(_loaded(), items, items.test_texts, demos)
    assert pred.shape == (10,) and lp.shape == (10, 2)
    assert set(pred.tolist()) <= set(items.label_names)
    with pytest.raises(InputError, match="n_test"):
        ph.task_items(toy.split, n_test=0)


def test_label_position_quantities(toy):
    items = ph.task_items(toy.split, n_test=4, seed=0)
    loaded = _loaded()
    demos = items.demos([0, 1, 2])
    q = ph.label_position(loaded, Prompt(demos, items.test_texts[0],
                                         instruction=items.format.instruction,
                                         template=items.format.template))
    L = loaded.model.config.num_hidden_layers
    for a in (q.demo_mass, q.demo_share, q.eta, q.log_normalizer, q.log_w0_norm):
        assert a.shape == (L,) and np.isfinite(a).all()
    assert ((q.demo_mass > 0) & (q.demo_mass < 1)).all()
    assert q.heads.shape[:1] == (L,) and q.heads.shape[-1] == 4
    zero = ph.label_position(loaded, Prompt([], items.test_texts[0],
                                            instruction=items.format.instruction,
                                            template=items.format.template))
    assert np.all(zero.demo_mass == 0) and np.all(np.isneginf(zero.log_w0_norm))


def test_a_single_item_statistic_is_never_outside_the_controls():
    one = ph.statistic([0.9], "t")
    ctl = ph.statistic([0.1], "c", role="control")
    cmp = ph.compare_with_controls("rho", one, [ctl])
    assert not cmp.outside and "no spread" in cmp.describe()
    many = ph.compare_with_controls("rho", ph.statistic([0.9, 0.95, 0.85], "t"),
                                    [ph.statistic([0.1, 0.15, 0.05], "c", role="control")])
    assert many.outside and many.verdict == "outside"


def test_sections_refuse_traces_that_are_not_one_entry_per_layer(toy):
    """DiffLlama calls attention twice per layer: reading its trace entries as layers would be
    silently wrong, so the phenomena (and the real section) refuse it by name (issue 14)."""
    from .test_tracing_coverage import tiny_causal_lm

    items = ph.task_items(toy.split, n_test=2, seed=0)
    loaded = SimpleNamespace(model=tiny_causal_lm("diffllama"), tokenizer=tiny_tokenizer(),
                             name="tiny-diffllama")
    prompt = Prompt(items.demos([0, 1]), items.test_texts[0],
                    instruction=items.format.instruction, template=items.format.template)
    with pytest.raises(InputError, match=r"DiffLlama.*one softmax attention call"):
        ph.label_position(loaded, prompt)
