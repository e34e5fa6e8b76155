"""ICL versus fine-tuning (Dai et al., 2023) on tiny random models: Rec2FTP and SimAOU as
defined, fine-tuning of W_K/W_V only, attention-output hooks, the section, bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from icldistill.core.validation import InputError
from icldistill.evaluation.scoring import prompt_token_ids
from icldistill.lab.experiments import finetuning as ft
from icldistill.lab.experiments import phenomena as ph

from .lab_helpers import check_section, one_thread, tiny_group  # noqa: F401  (autouse fixture)
from .test_harness import _write_task
from .tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    task = _write_task(tmp_path_factory.mktemp("data") / "toy.jsonl")
    return ph.task_items(task.split, n_test=6, seed=0, name="toy")


def _loaded(arch: str = "llama"):
    return SimpleNamespace(model=tiny_model(arch), tokenizer=tiny_tokenizer(True),
                           name=f"tiny-{arch}")


def _groups(arch: str = "llama"):
    return [tiny_group(arch)]


def _demos(task, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return task.demos(ph.balanced_indices(task.pool_labels, k, rng))


# ------------------------------------------------------------------------------ Rec2FTP
def test_rec2ftp_hand_made():
    zsl = [True, False, False, False, True, False]
    fts = [True, True, True, False, False, True]
    icl = [False, True, False, True, True, True]
    r = ft.rec2ftp(zsl, fts, icl)
    # FT corrections: items 1, 2, 5; ICL right on 1 and 5
    assert (r.corrected, r.recalled) == (3, 2)
    assert r.value == pytest.approx(2 / 3)
    np.testing.assert_array_equal(r.indicator, [1.0, 0.0, 1.0])
    none = ft.rec2ftp([True, True], [True, False], [False, False])
    assert np.isnan(none.value) and none.corrected == 0 and none.indicator.size == 0
    assert ft.rec2ftp([0, 1], [1, 1], [1, 0]).value == 1.0        # 0/1 accepted


@given(arrays(np.bool_, st.integers(0, 30)).flatmap(
    lambda z: st.tuples(st.just(z), arrays(np.bool_, z.shape), arrays(np.bool_, z.shape))))
def test_rec2ftp_is_the_set_definition(abc):
    z, f, c = abc
    items = range(z.size)
    ft_set = {i for i in items if f[i] and not z[i]}
    icl_set = {i for i in items if c[i] and not z[i]}
    r = ft.rec2ftp(z, f, c)
    assert r.corrected == len(ft_set) and r.recalled == len(ft_set & icl_set)
    if ft_set:
        assert r.value == len(ft_set & icl_set) / len(ft_set)
        assert r.indicator.mean() == r.value
    else:
        assert np.isnan(r.value)


def test_rec2ftp_bad_input():
    with pytest.raises(InputError, match="one length"):
        ft.rec2ftp([True], [True, False], [True])
    with pytest.raises(InputError, match="zsl_correct"):
        ft.rec2ftp([[True]], [True], [True])
    with pytest.raises(InputError, match="ft_correct"):
        ft.rec2ftp([True], [0.5], [True])


# ------------------------------------------------------------------------------ SimAOU
def test_simaou_hand_made():
    a = np.zeros((2, 2, 2))
    b = np.zeros((2, 2, 2))
    a[0, 0], b[0, 0] = [1, 0], [1, 0]          # cos 1
    a[1, 0], b[1, 0] = [1, 0], [0, 3]          # cos 0
    a[0, 1], b[0, 1] = [1, 1], [-2, -2]        # cos -1
    a[1, 1], b[1, 1] = [2, 0], [0, 0]          # undefined (zero update): skipped
    cos = ft.update_cosines(a, b)
    np.testing.assert_allclose(cos[:, 0], [1.0, 0.0], atol=1e-15)
    assert cos[0, 1] == pytest.approx(-1.0) and np.isnan(cos[1, 1])
    np.testing.assert_allclose(ft.simaou(a, b), [0.5, -1.0])
    v = np.random.default_rng(0).standard_normal((5, 3, 7))
    np.testing.assert_allclose(ft.simaou(v, v), 1.0)
    np.testing.assert_allclose(ft.simaou(v, torch.tensor(-3 * v)), -1.0)


#: entries of update vectors: 0 or of moderate size (the reference below squares them)
UPDATES = st.floats(-3, 3, allow_nan=False, width=64).map(lambda x: 0.0 if abs(x) < 1e-6 else x)


@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 6)),
              elements=UPDATES).flatmap(
    lambda a: st.tuples(st.just(a), arrays(np.float64, a.shape, elements=UPDATES))))
def test_simaou_is_the_definition(ab):
    a, b = ab
    n, L, _ = a.shape
    want = []
    for layer in range(L):
        cs = [float(a[i, layer] @ b[i, layer]
                    / (np.linalg.norm(a[i, layer]) * np.linalg.norm(b[i, layer])))
              for i in range(n)
              if np.linalg.norm(a[i, layer]) > 0 and np.linalg.norm(b[i, layer]) > 0]
        want.append(np.mean(cs) if cs else np.nan)
    np.testing.assert_allclose(ft.simaou(a, b), np.clip(want, -1, 1), rtol=1e-9, atol=1e-12)


def test_simaou_bad_input():
    with pytest.raises(InputError, match="icl_updates"):
        ft.simaou(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InputError, match="one shape"):
        ft.simaou(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


# ------------------------------------------------------------------------------ model access
def test_hooks_capture_one_tensor_per_layer_and_change_nothing():
    m = _loaded()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        plain = m.model(ids).logits
        with ft.AttentionCapture(m.model) as cap:
            hooked = m.model(ids).logits
    L = m.model.config.num_hidden_layers
    assert len(cap.outputs) == L
    assert all(t.shape == (1, 6, m.model.config.hidden_size) for t in cap.outputs)
    assert torch.equal(plain, hooked)
    assert all(not a._forward_hooks for a in ft.attention_modules(m.model))
    # the captured tensor is the attention block's output: the residual stream after layer 0
    # is embeddings + attention output + MLP(...)
    layer0 = m.model.model.layers[0]
    with torch.no_grad():
        h = m.model.model.embed_tokens(ids)
        pos = m.model.model.rotary_emb(h, torch.arange(6)[None])
        mask = torch.full((6, 6), float("-inf")).triu(1)[None, None]
        att = layer0.self_attn(layer0.input_layernorm(h), position_embeddings=pos,
                               attention_mask=mask)[0]
    torch.testing.assert_close(cap.outputs[0], att, rtol=1e-5, atol=1e-6)


def test_attention_outputs_equal_one_prompt_at_a_time(toy):
    m = _loaded()
    demos = _demos(toy)
    texts = ft.prompt_texts(toy, demos, toy.test_texts)          # shared prefix: the demonstrations
    got = ft.attention_outputs(m, texts, batch_size=4)
    L, d = m.model.config.num_hidden_layers, m.model.config.hidden_size
    assert got.shape == (len(texts), L, d)
    for i, ids in enumerate(prompt_token_ids(m.tokenizer, texts)):
        with torch.no_grad(), ft.AttentionCapture(m.model) as cap:
            m.model(torch.tensor([ids]))
        want = np.stack([t[0, -1].double().numpy() for t in cap.outputs])
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
    zero = ft.attention_outputs(m, ft.prompt_texts(toy, [], toy.test_texts[:3]), batch_size=2)
    assert zero.shape == (3, L, d)


def _multi_token(task):
    """``task`` with two-token label words (the scorer's label trie / copy path)."""
    import dataclasses

    from icldistill.data.datasets import TaskFormat

    fmt = TaskFormat(task.format.instruction, task.format.template,
                     {"neg": "not good", "pos": "very good"})
    return dataclasses.replace(task, format=fmt)


@pytest.mark.parametrize("arch", ["llama", "mistral"])       # mistral: sliding window
@pytest.mark.parametrize("multi", [False, True])
def test_predict_and_capture_is_predict_plus_outputs(toy, arch, multi):
    m = _loaded(arch)
    task = _multi_token(toy) if multi else toy
    for demos in ([], _demos(toy, 3)):
        pred, lp, ao = ft.predict_and_capture(m, task, task.test_texts, demos)
        want_pred, want_lp = ph.predict(m, task, task.test_texts, demos)
        np.testing.assert_array_equal(lp, want_lp)
        assert (pred == want_pred).all()
        want = ft.attention_outputs(m, ft.prompt_texts(task, demos, task.test_texts))
        np.testing.assert_allclose(ao, want, rtol=1e-4, atol=1e-5)


def test_finetuning_changes_only_k_and_v(toy):
    m = _loaded()
    before = {n: p.detach().clone() for n, p in m.model.named_parameters()}
    res = ft.finetune_kv(m, toy, _demos(toy, 4), lr=0.5)
    assert res.losses.shape == (4,) and np.isfinite(res.losses).all()
    kv = set(ft.kv_parameter_names(m.model))
    assert kv and all(("k_proj" in n or "v_proj" in n) for n in kv)
    assert len(kv) == 2 * m.model.config.num_hidden_layers
    after = dict(res.loaded.model.named_parameters())
    for n, p in before.items():
        if n in kv:
            assert not torch.equal(after[n], p), n
        else:
            assert torch.equal(after[n], p), n
    # the original model is untouched and nothing is left trainable
    for n, p in m.model.named_parameters():
        assert torch.equal(p, before[n])
    assert not any(p.requires_grad for p in res.loaded.model.parameters())
    assert res.loaded.model is not m.model and res.loaded.tokenizer is m.tokenizer
    assert next(res.loaded.model.parameters()).dtype == torch.float32


def test_comparison_is_deterministic(toy):
    m = _loaded()
    demos = _demos(toy)
    a = ft.icl_vs_finetuning(m, toy, demos, lr_grid=(0.01, 0.5), seed=3)
    b = ft.icl_vs_finetuning(m, toy, demos, lr_grid=(0.01, 0.5), seed=3)
    L = m.model.config.num_hidden_layers
    assert a.cos.shape == a.random_cos.shape == (len(toy.test_texts), L)
    assert a.lr in (0.01, 0.5) and len(a.lr_search) == 2
    np.testing.assert_array_equal(a.cos, b.cos)
    np.testing.assert_array_equal(a.random_cos, b.random_cos)
    assert (a.ft == b.ft).all() and a.rec.corrected == b.rec.corrected
    fixed = ft.icl_vs_finetuning(m, toy, demos, lr=0.5, seed=3)
    assert fixed.lr == 0.5 and fixed.lr_search == ()


def test_random_label_fine_tune_by_hand(toy):
    """The SimAOU claim's null, recomputed independently: a fresh fine-tune (finetune_kv) on
    the same inputs with the recorded random labels, at the chosen rate, and its update's
    cosine with the ICL update. The labels are the set's own, permuted by the seed."""
    m = _loaded()
    demos = _demos(toy)
    c = ft.icl_vs_finetuning(m, toy, demos, lr=0.5, seed=3)
    # the demonstrations' own labels, shuffled among them: the label counts stay the set's
    # (review: labels drawn uniformly would change the label prior the fine-tune learns)
    assert sorted(c.random_labels) == sorted(y for _, y in demos)
    order = np.random.default_rng([3, 1]).permutation(len(demos))
    assert c.random_labels == tuple(demos[int(j)][1] for j in order)
    queries = list(toy.test_texts)
    zsl = ft.attention_outputs(m, ft.prompt_texts(toy, [], queries))
    icl = ft.attention_outputs(m, ft.prompt_texts(toy, demos, queries))
    tuned = ft.finetune_kv(m, toy, [(x, y) for (x, _), y in zip(demos, c.random_labels,
                                                                 strict=True)], lr=0.5)
    rl = ft.attention_outputs(tuned.loaded, ft.prompt_texts(toy, [], queries))
    np.testing.assert_allclose(c.random_label_cos, ft.update_cosines(icl - zsl, rl - zsl),
                               atol=1e-5)
    pred, _ = ph.predict(tuned.loaded, toy, queries, [])
    assert (c.ft_random_labels == pred).all()
    assert c.random_label_simaou.shape == (m.model.config.num_hidden_layers,)


def test_learning_rate_choice_and_workspace(toy):
    m = _loaded()
    demos = _demos(toy)
    ws = ft.FineTuneWorkspace(m)
    start = ws.state()
    c = ft.icl_vs_finetuning(m, toy, demos, lr_grid=(3.0, 0.01, 0.3, 1.0), workspace=ws)
    rates = [r for r, _, _ in c.lr_search]
    accs = [a for _, a, _ in c.lr_search]
    assert rates == sorted(rates) and rates[0] == 0.01
    assert c.lr == rates[accs.index(max(accs))]         # the smallest of the best
    assert all(a < 1.0 for a in accs[:-1])               # the search stops at a perfect fit
    assert c.train_accuracy == max(accs)
    # the kept model is the chosen rate's (its losses are a fresh run's), and it was reset
    np.testing.assert_allclose(c.train_losses, ft.finetune_kv(m, toy, demos, lr=c.lr).losses)
    assert all(torch.equal(v, start[n]) for n, v in ws.state().items())
    ws.train(toy, demos, 0.5)
    assert not all(torch.equal(v, start[n]) for n, v in ws.state().items())
    ws.reset()
    assert all(torch.equal(v, start[n]) for n, v in ws.state().items())


# ------------------------------------------------------------------------------ section
def test_section_builds_and_is_deterministic(tmp_path, toy):
    tasks = [toy, ph.task_items(_write_task(tmp_path / "t2.jsonl", seed=1).split, n_test=6,
                                seed=1, name="toy2")]
    sec = ft.run(out_dir=tmp_path / "a", quick=True, tasks=tasks, under_test=_groups(), k=4,
                 lr_grid=(0.05, 0.5))
    check_section(sec, "icl-vs-finetuning", tmp_path / "a", figures=2)
    assert len(sec.checks) == 2
    json.dumps(sec.data, allow_nan=False)
    res = sec.data["groups"][0]["results"]
    assert [r["role"] for r in (res[0][0], res[1][0])] == ["trained", "control"]
    assert res[1][0]["lr"] == res[0][0]["lr"]               # control: the trained model's rate
    # regression: SimAOU was resampled and sign-flip tested per item, though a task's items
    # share its one demonstration set and fine-tuning run; the unit is the task now
    sim = next(c for c in sec.checks if "SimAOU" in c.claim)
    assert ("SimAOU minus the random-label fine-tune's SimAOU: paired sign-flip test "
            "(two-sided) of mean = 0 over the 2 tasks (each one fine-tuning run) (no p below "
            "0.5 with these units)") in sim.detail
    assert "SimAOU (per-task mean over items and layers)" in sim.detail
    assert sim.testable is False and "not testable at this size" in sim.detail   # 2 tasks
    dai = next(t for t in sec.tables if t.title.startswith("Ours beside Dai"))
    assert [r[0] for r in dai.rows[:2]] == [f"Dai et al. (2023) {m}" for m in ft.DAI_2023]
    again = ft.run(out_dir=tmp_path / "b", quick=True, tasks=tasks, under_test=_groups(), k=4,
                   lr_grid=(0.05, 0.5))
    assert json.dumps(again.data, sort_keys=True) == json.dumps(sec.data, sort_keys=True)
    assert [c.holds for c in again.checks] == [c.holds for c in sec.checks]


def test_several_sets_per_task(tmp_path, toy):
    """``n_sets``: each task gets independently drawn demonstration sets, each with its own
    fine-tuning run; the (task, set) is SimAOU's unit, and the first set is the one a
    one-set run draws (same comparison)."""
    tasks = [toy, ph.task_items(_write_task(tmp_path / "t2.jsonl", seed=1).split, n_test=6,
                                seed=1, name="toy2")]
    kw = dict(quick=True, tasks=tasks, under_test=_groups(), k=4, lr_grid=(0.05, 0.5))
    sec = ft.run(out_dir=tmp_path / "a", n_sets=2, **kw)
    one = ft.run(out_dir=tmp_path / "b", **kw)
    res = sec.data["groups"][0]["results"][0]
    assert [(r["task"], r["set"]) for r in res] == [("toy", 0), ("toy", 1), ("toy2", 0),
                                                     ("toy2", 1)]
    demos = sec.data["demos"]
    assert [len(d) for d in demos] == [2, 2] and demos[0][0] != demos[0][1]
    assert demos[0][0] == one.data["demos"][0][0]
    first = one.data["groups"][0]["results"][0][0]
    assert res[0]["cos"] == first["cos"] and res[0]["lr"] == first["lr"]
    ctrl = sec.data["groups"][0]["results"][1]
    assert [r["lr"] for r in ctrl] == [r["lr"] for r in res]   # each set's trained rate
    sim = sec.checks[0]
    assert "over the 4 (task, set) units (each one fine-tuning run) (no p below 0.125" \
        in sim.detail
    assert "SimAOU (per-(task, set) mean over items and layers)" in sim.detail
    assert "toy set 2 " in sim.detail
    # Rec2FTP reads each task's first set (review: the sets share the test items, so their
    # tables are not independent strata): the same test as the one-set run's
    rec_data = sec.data["groups"][0]["comparisons"]["rec2ftp_test"]
    assert rec_data == one.data["groups"][0]["comparisons"]["rec2ftp_test"]
    assert rec_data["strata"] == 2
    # per layer, each test item once (its cosines averaged over the sets; review: pooling the
    # sets counted every item once per set in the per-layer intervals)
    per_layer = sec.data["groups"][0]["comparisons"]["per_layer"][0]["trained"]
    assert per_layer["n"] == sum(len(r["labels"]) for r in res if r["set"] == 0)
    table = next(t for t in sec.tables if t.title.startswith("ZSL, ICL"))
    assert [r[2] for r in table.rows[:4]] == ["toy", "toy set 2", "toy2", "toy2 set 2"]
    assert "Per task 2 independently drawn label-balanced sets" in sec.description
    with pytest.raises(InputError, match="n_sets"):
        ft.run(out_dir=tmp_path / "c", n_sets=0, **kw)


def test_unsupported_architecture(tmp_path, toy):
    with pytest.raises(InputError, match="gpt2"):
        ft.finetune_kv(_loaded("gpt2"), toy, _demos(toy), lr=0.1)
    with pytest.raises(InputError, match="gpt2"):
        ft.run(out_dir=tmp_path, tasks=[toy], under_test=_groups("gpt2"), k=2)
    with pytest.raises(InputError, match="phi3"):
        ft.attention_modules(tiny_model("phi3"))


def test_bad_arguments(tmp_path, toy):
    m = _loaded()
    with pytest.raises(InputError, match="k must"):
        ft.run(out_dir=tmp_path, tasks=[toy], under_test=_groups(), k=0)
    with pytest.raises(InputError, match="n_test"):
        ft.run(out_dir=tmp_path, tasks=[toy], under_test=_groups(), n_test=0)
    with pytest.raises(InputError, match="lr_grid"):
        ft.run(out_dir=tmp_path, tasks=[toy], under_test=_groups(), lr_grid=())
    with pytest.raises(InputError, match="lr_grid"):
        ft.run(out_dir=tmp_path, tasks=[toy], under_test=_groups(), lr_grid=(0.1, -1.0))
    with pytest.raises(InputError, match="lr must"):
        ft.finetune_kv(m, toy, _demos(toy), lr=0.0)
    with pytest.raises(InputError, match="unknown label"):
        ft.finetune_kv(m, toy, [("the movie", "meh")], lr=0.1)
    with pytest.raises(InputError, match="demos"):
        ft.icl_vs_finetuning(m, toy, [], lr=0.1)
    with pytest.raises(InputError, match="batch_size"):
        ft.attention_outputs(m, ["Input: a"], batch_size=0)
    with pytest.raises(InputError, match="n_controls"):
        ft.run(out_dir=tmp_path, tasks=[toy], n_controls=0, models=[m])
