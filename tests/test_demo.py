"""The end-to-end demo (``icldistill demo``) and the synthetic-data generators it uses."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from icldistill.cli import app as cli
from icldistill.lab import demo
from icldistill.lab.demo import DemoSummary, run_demo
from icldistill.lab.synthetic import (
    build_prompt,
    causal_mask,
    gaussian_mixture,
    gaussian_tokens,
    random_head,
    synthetic_prompt,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("demo.png", "summary.json", "summary.md", "summary.html")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data.endswith(b"IEND\xaeB`\x82"), "PNG is truncated"
    return width, height


def _check_outputs(out: Path) -> dict:
    for name in OUTPUTS:
        f = out / name
        assert f.is_file(), f"{name} missing"
        assert f.stat().st_size > 0, f"{name} empty"
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    w, h = _png_size(out / "demo.png")
    assert w >= 800 and h >= 400
    payload = json.loads((out / "summary.json").read_text())
    markdown = (out / "summary.md").read_text()
    assert "![" in markdown and "(demo.png)" in markdown
    page = (out / "summary.html").read_text()
    assert '<img src="demo.png"' in page
    for title in ("Attention-head decomposition", "Implicit alignment", "Random-feature",
                  "Bias of W_0 vs MMD", "Generalization bound", "Demonstration selection"):
        assert title in markdown and title in page
    return payload


def _check_numbers(head: dict) -> None:
    assert head["decomposition_max_abs_error"] < 1e-10
    assert head["jensen_min_slack"] >= -1e-12
    assert head["eta_star"] > 0
    rel = head["alignment_rel_distance"]
    assert rel["1"] < 1e-10
    assert rel["0.5"] == pytest.approx(0.5, abs=1e-10)
    assert rel["2"] == pytest.approx(1.0, abs=1e-10)
    assert head["bias_identity_max_rel_error"] < 1e-8
    assert head["bias_r2_att"] == pytest.approx(1.0, abs=1e-10)
    # random features converge for moderate key norms
    err = head["rf_rel_error"]
    assert err[-1] < err[0]
    # Rademacher: Monte Carlo below the closed-form (Jensen) bound, both decreasing in N
    cf, mc = np.array(head["rademacher_closed_form"]), np.array(head["rademacher_monte_carlo"])
    assert np.all(mc <= cf * 1.05)
    assert cf[-1] < cf[0]
    assert head["bound"][-1] < head["bound"][0]
    assert head["greedy_mmd2"] < head["random_mmd2_median"]
    assert head["p_value_greedy"] > head["p_value_random_median"]


def test_run_demo_fast_writes_valid_outputs(tmp_path, capsys):
    out = tmp_path / "nested" / "demo"
    summary = run_demo(out, seed=3, quiet=False, fast=True)
    assert isinstance(summary, DemoSummary)
    assert summary.fast and summary.seed == 3
    assert summary.files == {"figure": out / "demo.png", "json": out / "summary.json",
                             "markdown": out / "summary.md", "html": out / "summary.html"}
    payload = _check_outputs(out)
    head = payload["headline"]
    _check_numbers(head)
    # the returned summary and summary.json agree
    assert head["decomposition_max_abs_error"] == summary.decomposition_max_abs_error
    assert head["greedy_mmd2"] == summary.greedy_mmd2
    assert tuple(head["gen_n"]) == summary.gen_n
    assert payload["decomposition"]["max_abs_error"] == summary.decomposition_max_abs_error
    # the printed summary has one section per part of the math core
    printed = capsys.readouterr().out
    for i in range(1, 7):
        assert f"\n{i}. " in printed
    assert "degrade" in printed or "slow and erratic" in printed


def test_run_demo_quiet_deterministic_and_overwrites(tmp_path, capsys):
    a = run_demo(tmp_path / "a", seed=7, quiet=True, fast=True)
    assert capsys.readouterr().out == ""
    # a second run with the same seed, into a folder holding stale outputs
    (tmp_path / "b").mkdir()
    for name in OUTPUTS:
        (tmp_path / "b" / name).write_text("stale")
    b = run_demo(str(tmp_path / "b"), seed=7, quiet=True, fast=True)
    ja, jb = _check_outputs(tmp_path / "a"), _check_outputs(tmp_path / "b")
    for j in (ja, jb):
        j.pop("timings_s")
        j["headline"].pop("runtime_s")
    assert ja == jb
    assert a.greedy_mmd2 == b.greedy_mmd2
    assert b.out_dir == tmp_path / "b"


def test_cli_demo_returns_zero(tmp_path, monkeypatch, capsys):
    # the CLI runs the full-size demo; use the reduced sizes here to keep the test quick
    monkeypatch.setattr(demo, "_FULL", demo._FAST)
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet", "--seed", "1"]) == 0
    assert capsys.readouterr().out == ""
    payload = _check_outputs(tmp_path)
    assert payload["headline"]["seed"] == 1
    _check_numbers(payload["headline"])


def test_cli_demo_unwritable_output_is_an_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["demo", "--out", str(blocker / "sub"), "--quiet"]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_demo_full_size(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Demonstration selection" in printed
    payload = _check_outputs(tmp_path)
    head = payload["headline"]
    assert not head["fast"]
    _check_numbers(head)
    assert head["rf_num_features"] == [16, 64, 256, 1024, 4096]
    assert head["gen_n"] == [8, 16, 32, 64, 128, 256, 512]
    assert np.all(np.diff(head["rf_rel_error"]) < 0.05)  # (nearly) monotone convergence
    # R / B follows 1/sqrt(N)
    slope = payload["generalization"]["loglog_slope_rademacher_over_B"]
    assert slope == pytest.approx(-0.5, abs=0.1)
    assert head["runtime_s"] < 60


# ----------------------------------------------------------------------------- synthetic
def test_random_head_shapes_seed_and_projection():
    h = random_head(12, 4, 6, seed=5)
    assert h.W_Q.shape == (12, 4) and h.W_K.shape == (12, 4) and h.W_V.shape == (12, 6)
    assert h.W_Q.dtype == torch.float64
    assert h.scale == pytest.approx(0.5)
    assert torch.equal(random_head(12, 4, 6, seed=5).W_K, h.W_K)
    assert not torch.equal(random_head(12, 4, 6, seed=6).W_K, h.W_K)
    x = gaussian_tokens(9, 12, seed=1)
    q, k, v = h.project(x)
    assert torch.allclose(q, x @ h.W_Q) and torch.allclose(k, x @ h.W_K)
    assert torch.allclose(v, x @ h.W_V)
    assert torch.allclose(h.logits(x), h.scale * q @ k.T)
    with pytest.raises(ValueError):
        h.project(torch.zeros(3, 5))


def test_random_head_gain_sets_key_norm():
    h = random_head(64, 16, seed=0, qk_gain=0.5)
    x = gaussian_tokens(4000, 64, seed=2)
    s_k2 = float(h.scale * (h.keys(x) ** 2).sum(1).mean())
    assert s_k2 == pytest.approx(0.25 * math.sqrt(16), rel=0.25)


def test_gaussian_tokens_moments_and_shift():
    x = gaussian_tokens(20000, 4, mean_shift=2.0, cov_scale=4.0, seed=0)
    u = torch.full((4,), 0.5, dtype=torch.float64)
    assert torch.allclose(x.mean(0), 2.0 * u, atol=0.05)
    assert torch.allclose(x.var(0), torch.full((4,), 4.0, dtype=torch.float64), rtol=0.05)
    y = gaussian_tokens(5, 3, mean_shift=[1.0, 2.0, 3.0], cov_scale=0.0)
    assert torch.equal(y, torch.tensor([[1.0, 2.0, 3.0]] * 5, dtype=torch.float64))
    assert torch.equal(gaussian_tokens(3, 2, seed=4), gaussian_tokens(3, 2, seed=4))
    with pytest.raises(ValueError):
        gaussian_tokens(3, 2, mean_shift=[1.0, 2.0, 3.0])


def test_gaussian_mixture_labels():
    centers = torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    x, labels = gaussian_mixture(500, centers, std=0.1, weights=[0.2, 0.8], seed=1)
    assert x.shape == (500, 2) and labels.shape == (500,)
    assert np.all(np.diff(labels) >= 0)
    assert 60 < (labels == 0).sum() < 140
    near = torch.from_numpy(labels).to(torch.float64)
    assert torch.allclose(x.mean(1), 10.0 * near, atol=0.5)


def test_prompt_segments_and_causal_mask():
    p = build_prompt(torch.zeros(3, 2), torch.ones(2, 2), torch.full((1, 2), 5.0))
    assert p.segments == ("prefix", "demos", "demos", "demos", "query", "query")
    assert p.segment_names == ("prefix", "demos", "query")
    assert torch.equal(p.mask, causal_mask(6))
    assert bool(p.mask[2, 2]) and not bool(p.mask[2, 3])
    assert p.positions("query").tolist() == [4, 5]
    assert torch.equal(p.segment_tokens("prefix"), torch.full((1, 2), 5.0, dtype=torch.float64))
    q = synthetic_prompt(8, 5, 3, n_prefix=0, seed=1)
    assert len(q) == 8 and "prefix" not in q.segments
    r = synthetic_prompt(8, 5, 3, prefix_norm=10.0, seed=1)
    assert float(r.segment_tokens("prefix").norm()) == pytest.approx(10.0)


def test_head_attention_matches_decomposition():
    import icldistill as ic

    h = random_head(16, 8, seed=3)
    p = synthetic_prompt(16, 10, 4, seed=3)
    q, k, v = h.project(p.tokens)
    dec = ic.decompose_head(q, k, v, p.segments, h.scale, p.mask)
    assert float((dec.output - h.attention(p.tokens, p.mask)).abs().max()) < 1e-12
