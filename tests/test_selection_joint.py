"""The joint / local / attention-space MMD selectors (mmd-joint, mmd-local, mmd-katt).

Exactness is checked against a brute-force joint MMD^2 written from the definition (explicit
sums over weighted target atoms with label distributions), not against the selectors' own
arithmetic; each greedy step must be the brute-force argmin among the remaining candidates.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from icldistill.core.kernels import make_kernel
from icldistill.core.validation import InputError
from icldistill.encoders.representations import choose_attention_heads, make_encoder
from icldistill.evaluation.harness import Harness, UnitSpec
from icldistill.selection import SELECTORS, Pool, make_selector, soft_labels

from .test_harness import POS, _write_task
from .tiny_models import tiny_model, tiny_tokenizer


def _pool(seed: int, n: int = 60, d: int = 4, labels: int = 3, sep: float = 0.8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, n)
    x = rng.normal(size=(n, d)) + sep * y[:, None]
    t = rng.normal(size=(7, d)) + sep * rng.integers(0, labels, 7)[:, None]
    return x, np.array([f"l{v}" for v in y]), t


def _joint_mmd2(xs, ys, atoms, kx, gamma):
    """Biased MMD^2 between the uniform set {(xs_i, ys_i)} and weighted target atoms
    ``(weight, x, label distribution dict)`` under K_x * ((1-g) + g [y=y']), by plain sums."""
    def lk(p, q):   # E[(1-g) + g [Y=Y']] for independent label distributions p, q
        return (1 - gamma) + gamma * sum(p.get(a, 0.0) * q.get(a, 0.0) for a in p)
    k = len(xs)
    ss = sum(kx(xs[i], xs[j]) * lk({ys[i]: 1.0}, {ys[j]: 1.0})
             for i in range(k) for j in range(k)) / k**2
    st_ = sum(w * kx(xs[i], x) * lk({ys[i]: 1.0}, p)
              for i in range(k) for (w, x, p) in atoms) / k
    tt = sum(w1 * w2 * kx(x1, x2) * lk(p1, p2) for (w1, x1, p1) in atoms for (w2, x2, p2) in atoms)
    return ss - 2 * st_ + tt


def _kx(kern):
    def f(a, b):
        return float(kern(torch.as_tensor(a[None]), torch.as_tensor(b[None]))[0, 0])
    return f


def _vote(kvals, labs):
    w = np.clip(np.asarray(kvals, dtype=np.float64), 0, None)
    w = w / w.sum()
    out: dict[str, float] = {}
    for wi, lab in zip(w, labs, strict=True):
        out[lab] = out.get(lab, 0.0) + wi
    return out


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([0.0, 0.5, 1.0]),
       m=st.sampled_from([0, 3, 60]))
def test_mmd_joint_matches_brute_force_greedy(seed, gamma, m):
    x, y, t = _pool(seed)
    k = 4
    kern = make_kernel("gaussian", torch.as_tensor(x), torch.as_tensor(t))
    sel = make_selector("mmd-joint", label_weight=gamma, neighbors=m, order="selection",
                        bandwidth=kern.params["bandwidth"]).fit(Pool(x, y))
    res = sel.select(t, k)
    kx = _kx(kern)
    atoms = []
    for tj in t:
        kv = np.array([kx(tj, xi) for xi in x])
        if m == 0:
            p = {lab: float(np.mean(y == lab)) for lab in np.unique(y)}
        else:
            near = np.argsort(-kv, kind="stable")[:m]
            p = _vote(kv[near], y[near])
        atoms.append((1.0 / len(t), tj, p))
    chosen = list(res.indices[0])
    for j in range(k):
        objs = {c: _joint_mmd2(x[[*chosen[:j], c]], [*y[chosen[:j]], y[c]], atoms, kx, gamma)
                for c in range(len(x)) if c not in chosen[:j]}
        best = min(objs.values())
        assert objs[chosen[j]] <= best + 1e-9          # every step is the greedy argmin
        assert res.mmd2[j] == pytest.approx(objs[chosen[j]], abs=1e-9)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.sampled_from([0.0, 1.0]),
       wq=st.sampled_from([0.3, 1.0]), m=st.sampled_from([0, 5]))
def test_mmd_local_matches_brute_force_greedy(seed, gamma, wq, m):
    x, y, t = _pool(seed)
    k, cand = 3, 12
    kern = make_kernel("gaussian", torch.as_tensor(x), torch.as_tensor(t))
    sel = make_selector("mmd-local", label_weight=gamma, neighbors=m, query_weight=wq,
                        candidates=cand, order="selection",
                        bandwidth=kern.params["bandwidth"]).fit(Pool(x, y))
    res = sel.select(t, k)
    kx = _kx(kern)
    for i, q in enumerate(t):
        kv = np.array([kx(q, xi) for xi in x])
        short = list(np.argsort(-kv, kind="stable")[:cand])
        labs = sorted(set(y))
        if m == 0:
            atoms = [(1.0, q, {lab: 1.0 / len(labs) for lab in labs})]
        else:
            near = short[:m]
            atoms = [(wq, q, _vote(kv[near], y[near]))]
            atoms += [((1 - wq) / m, x[j], {y[j]: 1.0}) for j in near]
        chosen = list(res.indices[i])
        assert set(chosen) <= set(short)
        for j in range(k):
            objs = {c: _joint_mmd2(x[[*chosen[:j], c]], [*y[chosen[:j]], y[c]], atoms, kx,
                                   gamma) for c in short if c not in chosen[:j]}
            assert objs[chosen[j]] <= min(objs.values()) + 1e-9
            assert res.mmd2[i, j] == pytest.approx(objs[chosen[j]], abs=1e-9)


def test_reductions_to_existing_selectors():
    x, y, t = _pool(3, n=200, d=6)
    a = make_selector("mmd-local", neighbors=0, label_weight=0.0, order="selection")
    b = make_selector("mmd-query", order="selection")
    ra, rb = a.fit(Pool(x, y)).select(t, 5), b.fit(Pool(x, y)).select(t, 5)
    np.testing.assert_array_equal(ra.indices, rb.indices)
    np.testing.assert_allclose(ra.mmd2, rb.mmd2, atol=1e-12)
    a = make_selector("mmd-joint", label_weight=0.0, order="selection")
    b = make_selector("mmd", order="selection")
    ra, rb = a.fit(Pool(x, y)).select(t, 5), b.fit(Pool(x, y)).select(t, 5)
    np.testing.assert_array_equal(ra.indices, rb.indices)
    np.testing.assert_allclose(ra.mmd2, rb.mmd2, atol=1e-12)


@pytest.mark.parametrize("name", ["mmd-joint", "mmd-local", "mmd-katt"])
def test_sizes_determinism_and_trajectory(name):
    x, y, t = _pool(5, n=300, d=8)
    s1 = make_selector(name).fit(Pool(x, y)).select(t, 6)
    s2 = make_selector(name).fit(Pool(x, y)).select(t, 6)
    assert s1.indices.shape == (7, 6) and s1.indices.dtype == np.int64
    np.testing.assert_array_equal(s1.indices, s2.indices)
    assert all(len(set(row)) == 6 for row in s1.indices)
    assert s1.shared == (name == "mmd-joint")
    traj = s1.mmd2 if s1.mmd2.ndim == 2 else s1.mmd2[None]
    assert np.all(traj > -1e-12)
    # the greedy set beats random sets of the same size on its own objective
    assert traj[:, -1].mean() < traj[:, 0].mean()


def test_joint_kernel_balances_labels_without_quotas():
    """Labels independent of the inputs: plain MMD picks whatever labels lie near the target
    mean; the joint kernel's within-set term (same-label pairs only) spreads the labels."""
    worst_joint, worst_plain = 0, 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(400, 5))
        y = np.where(rng.random(400) < 0.5, "a", "b")
        t = rng.normal(size=(100, 5))
        j = make_selector("mmd-joint", neighbors=0).fit(Pool(x, y)).select(t, 8)
        p = make_selector("mmd").fit(Pool(x, y)).select(t, 8)
        cj = np.unique(y[j.indices[0]], return_counts=True)[1]
        cp = np.unique(y[p.indices[0]], return_counts=True)[1]
        worst_joint = max(worst_joint, 8 - cj.min() if len(cj) == 2 else 8)
        worst_plain = max(worst_plain, 8 - cp.min() if len(cp) == 2 else 8)
    assert worst_joint <= 5            # at most 5 / 3 over eight seeds
    assert worst_plain > worst_joint


def test_joint_follows_the_targets_label_mix():
    """Targets near label 'a' items get soft labels 'a': the joint set leans towards 'a'."""
    rng = np.random.default_rng(0)
    y = np.array(["a"] * 200 + ["b"] * 200)
    x = rng.normal(size=(400, 3)) + np.where(y == "a", 2.0, -2.0)[:, None]
    t = rng.normal(size=(60, 3)) + 2.0
    s = make_selector("mmd-joint", neighbors=10).fit(Pool(x, y)).select(t, 8)
    assert np.sum(y[s.indices[0]] == "a") >= 6


def test_soft_labels_definition():
    kq = torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    codes = torch.tensor([[0, 1, 0], [1, 1, 0]])
    p = soft_labels(kq, codes, 2).numpy()
    np.testing.assert_allclose(p, [[0.75, 0.25], [1 / 3, 2 / 3]])


def test_bad_parameters_are_named():
    with pytest.raises(InputError, match="label_weight"):
        make_selector("mmd-joint", label_weight=1.5)
    with pytest.raises(InputError, match="neighbors"):
        make_selector("mmd-local", neighbors=-1)
    with pytest.raises(InputError, match="query_weight"):
        make_selector("mmd-local", query_weight=float("nan"))
    with pytest.raises(InputError, match="labels"):
        make_selector("mmd-joint").fit(np.zeros((5, 2)))
    assert SELECTORS["mmd-katt"].preferred_encoder == "kv:auto"


# ---- attention space: head choice and the harness ---------------------------------------
@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama"), tiny_tokenizer(True)


def test_choose_attention_heads_picks_the_most_demo_carrying_kv_head(llama):
    from icldistill.data.prompts import Prompt
    from icldistill.models.tracing import trace

    model, tok = llama
    prompts = [Prompt([("the movie was good", "positive"), ("the plot was bad", "negative")],
                      q) for q in ("the film was fun", "the story was awful")]
    choice = choose_attention_heads(model, tok, prompts, n_heads=2)
    # independent recomputation: per query head from the traces, then grouped by KV head
    shares = np.mean([trace(model, tok, p, positions="last").demo_share[..., -1].numpy()
                      for p in prompts], axis=0)                            # [L, H]
    n_kv = model.config.num_key_value_heads
    kv = shares.reshape(shares.shape[0], n_kv, -1).mean(-1)
    layer, head = np.unravel_index(np.argmax(kv), kv.shape)
    assert choice.layer == layer and choice.heads[0] == head
    assert len(choice.heads) == min(2, n_kv)
    np.testing.assert_allclose(choice.demo_share, kv, rtol=1e-6)
    enc = make_encoder(choice.spec, model, tok)
    assert enc.encode(["the movie was good"]).shape == (1, enc.dim)
    with pytest.raises(InputError, match="choose_attention_heads"):
        make_encoder("kv:auto", model, tok)
    with pytest.raises(InputError, match="calibration"):
        choose_attention_heads(model, tok, [])


def test_harness_runs_mmd_katt_in_attention_space(tmp_path):
    toy = _write_task(tmp_path / "toy.jsonl")
    assert POS
    model, tok = tiny_model("llama"), tiny_tokenizer(True)

    def loader(name):
        return SimpleNamespace(model=model, tokenizer=tok)

    h = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=loader, progress=False,
                embedding_cache=tmp_path / "emb", reference_encoder="hidden:-1", n_boot=20,
                batch_size=4)
    spec = UnitSpec("tiny", "toy", "mmd-katt", 2, n_test=6)
    assert h.encoder_spec(spec, toy).startswith("kv:")
    res = h.run([spec, UnitSpec("tiny", "toy", "mmd-joint", 2, n_test=6, encoder="hidden:-1"),
                 UnitSpec("tiny", "toy", "mmd-local", 2, n_test=6, encoder="hidden:-1")])
    assert [r.n for r in res] == [6, 6, 6]
    heads = list((h.out_dir / "heads").glob("*.json"))
    assert len(heads) == 1
    rec = json.loads(heads[0].read_text())
    assert rec["spec"] == h.encoder_spec(spec, toy) and rec["task"] == "toy"
    # a second harness reads the choice back instead of tracing again
    h2 = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=None, progress=False)
    assert h2.attention_heads(toy, "tiny").spec == rec["spec"]
    # each item's MMD² in the model's K_att space, against a pair-by-pair computation
    assert h2.item_mmd(res, compute=False) == {}                  # nothing stored yet
    katt = h.item_mmd(res)
    enc = h.encoder(rec["spec"], "tiny")
    pool = torch.as_tensor(h.embeddings(toy, "train", rec["spec"], "tiny"), dtype=torch.float64)
    test = torch.as_tensor(h.embeddings(toy, "test", rec["spec"], "tiny", n=6),
                           dtype=torch.float64)
    kern = enc.kernel(pool, test)
    assert kern.name == "attention-norm"
    for r in res:
        sel = json.loads((h.out_dir / "selections" / f"{r.key}.json").read_text())
        idx = np.asarray(sel["indices"])
        for i in range(r.n):
            s_ = pool[idx[0 if sel["shared"] else i]]
            q = test[i:i + 1]
            ref = float(kern(s_, s_).mean() - 2 * kern(s_, q).mean() + kern(q, q)[0, 0])
            assert katt[r.key][i] == pytest.approx(ref, abs=1e-9)
    # stored, and read back without a model
    again = h2.item_mmd(res, compute=False)
    assert set(again) == {r.key for r in res}
    assert all(np.array_equal(again[k], v) for k, v in katt.items())
    with pytest.raises(InputError, match="unknown space"):
        h2.item_mmd(res, space="minilm")


def test_head_choice_maps_attention_calls_to_layers(llama, monkeypatch):
    """Traces list attention *calls* (two per layer for DiffLlama-style models; none for the
    non-attention layers of hybrids): shares are averaged per layer, a layer is eligible only
    if every call has kernel form, untraced layers are NaN."""
    import icldistill.models.tracing as tracing
    from icldistill.data.prompts import Prompt

    model, tok = llama
    n_layers = model.config.num_hidden_layers
    n_q, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    assert n_layers >= 2
    # layer 0: two calls; layer 1: one call without kernform on query head 0; others untraced
    share = torch.zeros(3, n_q, 1)
    share[0, :, 0], share[1, :, 0], share[2, :, 0] = 0.2, 0.6, 0.9
    form = torch.ones(3, n_q, dtype=torch.bool)
    form[2, 0] = False
    fake = SimpleNamespace(demo_share=share, has_kernel_form=form,
                           layer_index=torch.tensor([0, 0, 1]))
    monkeypatch.setattr(tracing, "trace", lambda *a, **k: fake)
    choice = choose_attention_heads(model, tok, [Prompt([("a", "b")], "c")], n_heads=n_kv)
    ds = choice.demo_share
    assert ds.shape == (n_layers, n_kv)
    np.testing.assert_allclose(ds[0], 0.4)                 # mean of the two calls
    assert np.isnan(ds[1, 0]) and np.allclose(ds[1, 1:], 0.9)
    assert np.isnan(ds[2:]).all()
    assert choice.layer == 1 and 0 not in choice.heads   # the non-kernel-form head is skipped


def test_attention_heads_are_stored_per_calibration(tmp_path):
    """Regression: the choice was cached per (task, model, dtype) only, so a call with other
    calibration prompts (n_prompts, k, seed) silently got the first call's heads."""
    toy = _write_task(tmp_path / "toy.jsonl")
    def loader(name, **_kw):
        return SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(True))

    h = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=loader, progress=False,
                embedding_cache=tmp_path / "emb")
    default = h.attention_heads(toy, "tiny")
    other = h.attention_heads(toy, "tiny", n_prompts=2, k=3, seed=5)
    assert (default.n_prompts, other.n_prompts) == (4, 2)
    files = sorted(p.name for p in (h.out_dir / "heads").glob("*.json"))
    assert len(files) == 2 and sum("-n2-k3-s5" in f for f in files) == 1
    # read back per calibration by a harness that cannot trace
    h2 = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=None, progress=False)
    assert h2.attention_heads(toy, "tiny").n_prompts == 4
    assert h2.attention_heads(toy, "tiny", n_prompts=2, k=3, seed=5).n_prompts == 2
    # a file that says another calibration than its name is refused, not used
    path = next((h.out_dir / "heads").glob("*-n2-k3-s5-*.json"))
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "seed": 6}))
    h3 = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=None, progress=False)
    with pytest.raises(InputError, match=r"n_prompts, k, seed = \(2, 3, 6\)"):
        h3.attention_heads(toy, "tiny", n_prompts=2, k=3, seed=5)
    for bad in ({"n_prompts": 0}, {"k": True}, {"seed": -1}):
        with pytest.raises(InputError, match="attention_heads"):
            h.attention_heads(toy, "tiny", **bad)


def test_attention_heads_of_two_models_with_folded_names_stay_apart(tmp_path):
    """Regression: the file name was the task, model and dtype with unsafe characters folded
    and cut at 120 characters, so "ckpt/run1" read back "ckpt_run1"'s heads (and two long
    checkpoint paths with a common prefix each other's)."""
    toy = _write_task(tmp_path / "toy.jsonl")
    long = "/scratch/" + "x" * 120
    names = {"ckpt/run1": 1, "ckpt_run1": 2, long + "/step-1": 3, long + "/step-2": 4}

    def loader(name, **_kw):
        return SimpleNamespace(model=tiny_model("llama", seed=names[name]),
                               tokenizer=tiny_tokenizer(True))

    def harness(folder):
        return Harness(tmp_path / folder, tasks={"toy": toy}, model_loader=loader,
                       progress=False, embedding_cache=tmp_path / "emb")

    shared = harness("shared")
    for name in names:
        shared.attention_heads(toy, name)
    assert len(list((tmp_path / "shared" / "heads").glob("*.json"))) == 4
    for name in names:
        again = harness("shared").attention_heads(toy, name)     # read back from its file
        alone = harness(f"alone-{names[name]}").attention_heads(toy, name)
        np.testing.assert_array_equal(again.demo_share, alone.demo_share)
        assert (again.layer, again.heads) == (alone.layer, alone.heads)


def test_attention_heads_read_a_file_named_without_the_hash(tmp_path):
    """Results folders written before the hash (the committed grids) are read back."""
    toy = _write_task(tmp_path / "toy.jsonl")

    def loader(name, **_kw):
        return SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer(True))

    h = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=loader, progress=False,
                embedding_cache=tmp_path / "emb")
    choice = h.attention_heads(toy, "tiny")
    path = next((h.out_dir / "heads").glob("*.json"))
    path.rename(path.with_name(path.name.rsplit("-", 1)[0] + ".json"))
    h2 = Harness(tmp_path / "run", tasks={"toy": toy}, model_loader=None, progress=False)
    np.testing.assert_array_equal(h2.attention_heads(toy, "tiny").demo_share,
                                  choice.demo_share)
