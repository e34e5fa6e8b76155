"""End-to-end demonstration of the math core on generated data (``icldistill demo``).

:func:`run_demo` runs every part of the framework (§1–5 of ``docs/math.md``) on a random
attention head and Gaussian tokens (:mod:`icldistill.lab.synthetic`), in a few seconds on a laptop
CPU:

1. **Decomposition** — segment components of a causal head vs an independent
   ``torch.softmax(...) @ v``; ``eta*`` per position; domain stationarity (``eta*`` vs the mean
   query–demonstration logit, Jensen's inequality).
2. **Implicit alignment** — one distillation gradient step from ``W = 0`` lands on ``W_0`` exactly
   at ``eta = eta*``.
3. **Random features** — relative error of the primal ``W_0`` as the number of features grows,
   for moderate and for large key norms.
4. **Bias vs MMD** — ``||W_0(P_delta) - W_0(Q*)||_HS = c MMD_{K_att}`` as the prompt distribution
   drifts away from the target; Gaussian-kernel MMD of the input tokens alongside.
5. **Generalization** — Rademacher complexity (closed form and Monte Carlo) and the bound as the
   number of demonstration tokens grows, against ``1/sqrt(N)``.
6. **Selection** — MMD-greedy choice of 16 demonstrations vs random subsets, with permutation
   tests.

It writes ``demo.png`` (one figure, eight panels), ``summary.json`` (every number),
``summary.md`` and ``summary.html`` (the summary, embedding the figure; one
:class:`icldistill.artifacts.document.Report` rendered twice) into the output folder, each file
atomically, and prints the plain-text summary.
"""

from __future__ import annotations

import io
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill import __version__
from icldistill.artifacts import document as rp
from icldistill.artifacts.store import atomic_write, to_jsonable, write_json
from icldistill.core.bounds import generalization_bound, rademacher_complexity, w0_bias
from icldistill.core.decomposition import decompose_head, distillation_step, random_feature_error
from icldistill.core.kernels import median_bandwidth
from icldistill.core.mmd import mmd, mmd_test
from icldistill.core.util import linear_fit, single_thread, sub_seeds
from icldistill.core.validation import check_seed
from icldistill.lab.synthetic import (
    AttentionHead,
    build_prompt,
    gaussian_mixture,
    gaussian_tokens,
    random_head,
    synthetic_prompt,
)
from icldistill.selection import greedy_mmd

__all__ = ["DemoSummary", "run_demo"]

FIGURE_NAME = "demo.png"
JSON_NAME = "summary.json"
MARKDOWN_NAME = "summary.md"
HTML_NAME = "summary.html"


# ============================================================================ configuration
@dataclass(frozen=True)
class _Sizes:
    """Problem sizes of the demo (the ``fast`` variant is for tests)."""

    d_model: int = 32
    d_head: int = 16
    n_demos: int = 32
    n_query: int = 8
    n_probes: int = 256
    eta_grid: int = 41
    rf_features: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    rf_seeds: int = 9
    bias_samples: int = 400
    bias_shifts: int = 8
    gen_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)
    rademacher_samples: int = 1000
    pool: int = 2000
    targets: int = 200
    k: int = 16
    random_subsets: int = 20
    permutations: int = 1000


_FULL = _Sizes()
_FAST = _Sizes(
    n_probes=64, eta_grid=13, rf_features=(16, 64, 256, 1024), rf_seeds=3, bias_samples=120,
    bias_shifts=5, gen_sizes=(8, 32, 128), rademacher_samples=200, pool=400, targets=80,
    random_subsets=8, permutations=200,
)

#: qk_gain of the demo head: ``scale * ||k||^2 ≈ 0.25 * sqrt(d_head) = 1`` (moderate).
QK_GAIN = 0.5
#: qk_gain of the large-key-norm contrast in section 3 (``scale * ||k||^2 ≈ 4``).
QK_GAIN_LARGE = 1.0
#: Failure probability of the generalization bound.
DELTA = 0.05


# ============================================================================ result
@dataclass(frozen=True)
class DemoSummary:
    """Headline numbers of one :func:`run_demo` run (every number is in ``summary.json``).

    Attributes
    ----------
    seed : int
        Seed of the run (same seed, same numbers).
    fast : bool
        Whether the reduced problem sizes were used.
    runtime_s : float
        Wall-clock time of the whole demo, figure and files included.
    decomposition_max_abs_error : float
        ``max |sum_S c_S(t) - softmax(l) v|`` over positions and coordinates (float64).
    jensen_min_slack : float
        ``min_t [log(D'_t / n_t) - mean_j l_tj]`` (Jensen: must be ``>= 0``).
    eta_star : float
        ``eta*`` at the last query position.
    alignment_rel_distance : dict[str, float]
        ``||W_1 - W_0||_HS / ||W_0||_HS`` after one step with ``eta`` = ``0.5 eta*``, ``eta*``,
        ``2 eta*`` (keys ``"0.5"``, ``"1"``, ``"2"``).
    rf_num_features : tuple of int
        Feature counts ``m`` of section 3.
    rf_rel_error : tuple of float
        Median relative error (over feature draws) of the random-feature ``W_0`` per ``m``
        (moderate key norms).
    rf_rel_error_large : tuple of float
        The same for the large-key-norm head.
    bias_identity_max_abs_error : float
        ``max_delta |hs_norm - c MMD_{K_att}|``.
    bias_identity_max_rel_error : float
        The same divided by ``hs_norm``.
    bias_slope_att, bias_r2_att : float
        Least-squares slope and ``R^2`` of the bias against ``MMD_{K_att}`` (slope ``= c``).
    bias_slope_gauss, bias_r2_gauss : float
        The same against the Gaussian-kernel MMD of the input tokens.
    gen_n : tuple of int
        Numbers of demonstration tokens ``N`` of section 5.
    rademacher_closed_form, rademacher_monte_carlo, bound : tuple of float
        ``R_hat(F_B)`` (closed form, Monte Carlo) and the generalization bound per ``N``.
    rademacher_loglog_slope : float
        Least-squares slope of ``log R_hat`` (closed form) against ``log N`` (``-0.5`` expected).
    greedy_mmd2 : float
        Biased ``MMD^2`` of the 16 greedily chosen points to the targets.
    random_mmd2_median : float
        Median biased ``MMD^2`` of the random subsets of the same size.
    p_value_greedy : float
        Permutation-test p-value, chosen points vs targets.
    p_value_random_median : float
        Median p-value, random subsets vs targets.
    out_dir : pathlib.Path
        Folder the files were written to.
    files : dict[str, pathlib.Path]
        ``"figure"``, ``"json"``, ``"markdown"`` and ``"html"`` output paths.
    """

    seed: int
    fast: bool
    runtime_s: float
    decomposition_max_abs_error: float
    jensen_min_slack: float
    eta_star: float
    alignment_rel_distance: dict[str, float]
    rf_num_features: tuple[int, ...]
    rf_rel_error: tuple[float, ...]
    rf_rel_error_large: tuple[float, ...]
    bias_identity_max_abs_error: float
    bias_identity_max_rel_error: float
    bias_slope_att: float
    bias_r2_att: float
    bias_slope_gauss: float
    bias_r2_gauss: float
    gen_n: tuple[int, ...]
    rademacher_closed_form: tuple[float, ...]
    rademacher_monte_carlo: tuple[float, ...]
    bound: tuple[float, ...]
    rademacher_loglog_slope: float
    greedy_mmd2: float
    random_mmd2_median: float
    p_value_greedy: float
    p_value_random_median: float
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON types (paths as strings, non-finite numbers as ``None``)."""
        return to_jsonable(asdict(self))


# ============================================================================ report
def _g(x: float, digits: int = 4) -> str:
    """Compact number format (``nan`` for non-finite)."""
    if x is None or not math.isfinite(float(x)):
        return "nan"
    x = float(x)
    if x == 0.0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{max(1, digits - 2)}e}"


# ============================================================================ sections
def _section_decomposition(head: AttentionHead, sz: _Sizes, seed: int) -> dict[str, Any]:
    prompt = synthetic_prompt(sz.d_model, sz.n_demos, sz.n_query, n_prefix=1, seed=seed)
    q, k, v = head.project(prompt.tokens)
    dec = decompose_head(q, k, v, prompt.segments, head.scale, prompt.mask)
    # independent reference: plain masked softmax attention
    logits = head.scale * (q @ k.T)
    ref = torch.softmax(logits.masked_fill(~prompt.mask, -math.inf), dim=-1) @ v
    total = sum(dec.components.values())
    err = float((total - ref).abs().max())
    err_output = float((dec.output - ref).abs().max())
    n_t = dec.num_keys.to(torch.float64)
    slack = dec.log_normalizer - torch.log(n_t) - dec.mean_logit
    slack = slack[dec.num_keys >= 2]  # equality when a single key is attended
    query_pos = prompt.positions("query")
    # domain stationarity: probe queries of varied norm against the fixed prefix + demo context
    g = torch.Generator().manual_seed(int(seed) + 1)
    ctx = torch.cat([prompt.positions("prefix"), prompt.positions("demos")])
    radii = torch.linspace(0.25, 3.0, sz.n_probes, dtype=torch.float64)
    probes_x = torch.randn(sz.n_probes, sz.d_model, generator=g, dtype=torch.float64)
    probes_x = probes_x * radii[:, None]
    probe_dec = decompose_head(head.queries(probes_x), k[ctx], v[ctx],
                               [prompt.segments[i] for i in ctx.tolist()], head.scale)
    log_eta_p = torch.log(probe_dec.eta).numpy()
    logit_p = probe_dec.mean_demo_logit.numpy()
    corr = float(np.corrcoef(logit_p, log_eta_p)[0, 1])
    return {
        "prompt": prompt,
        "dec": dec,
        "max_abs_error": err,
        "max_abs_error_output": err_output,
        "jensen_slack": slack,
        "query_positions": query_pos,
        "probe_mean_demo_logit": logit_p,
        "probe_log_eta": log_eta_p,
        "probe_corr": corr,
        "probe_num_demos": int(probe_dec.num_demo_keys[0]),
        "probe_num_keys": int(probe_dec.num_keys[0]),
    }


def _section_alignment(dec: Any, t: int, sz: _Sizes) -> dict[str, Any]:
    w0 = dec.w0(t)
    eta_star = float(dec.eta[t])
    fixed = {}
    for f in (0.5, 1.0, 2.0):
        st = distillation_step(w0, None if f == 1.0 else f * eta_star)
        fixed[f"{f:g}"] = st
    mult = np.linspace(0.0, 3.0, sz.eta_grid)
    mult[0] = 0.02  # eta must be > 0
    grid = [distillation_step(w0, float(m) * eta_star) for m in mult]
    return {
        "w0": w0,
        "t": t,
        "eta_star": eta_star,
        "eta_star_step": fixed["1"].eta_star,
        "steps": fixed,
        "grid_mult": mult,
        "grid_rel_distance": np.array([s.relative_distance for s in grid]),
        "grid_loss": np.array([s.loss_final for s in grid]),
        "loss_initial": fixed["1"].loss_initial,
        "loss_w0": fixed["1"].loss_w0,
    }


def _section_random_features(
    head: AttentionHead, head_large: AttentionHead, prompt: Any, t: int, sz: _Sizes
) -> dict[str, Any]:
    out: dict[str, Any] = {"num_features": np.array(sz.rf_features)}
    qpos = prompt.positions("query")
    for name, h in (("moderate", head), ("large", head_large)):
        q, k, v = h.project(prompt.tokens)
        dec = decompose_head(q, k, v, prompt.segments, h.scale, prompt.mask)
        w0 = dec.w0(t)
        res = random_feature_error(w0, q[qpos], sz.rf_features, seeds=sz.rf_seeds)
        out[name] = {
            "mean": res.mean,
            "std": res.std,
            "median": res.median,
            "q25": res.q25,
            "q75": res.q75,
            "seeds": res.seeds,
            "scale_key_sq_norm": float(h.scale * (w0.keys**2).sum(1).mean()),
            "scale_query_sq_norm": float(h.scale * (q[qpos] ** 2).sum(1).mean()),
            "qk_gain": QK_GAIN if h is head else QK_GAIN_LARGE,
        }
    return out


def _section_bias(head: AttentionHead, c: float, sz: _Sizes, seed: int) -> dict[str, Any]:
    s = sub_seeds(seed, sz.bias_shifts + 1)
    xq = gaussian_tokens(sz.bias_samples, sz.d_model, 0.0, seed=s[0])
    kq, vq = head.keys(xq), head.values(xq)
    h = median_bandwidth(xq)  # fixed Gaussian bandwidth for every shift
    shifts = np.linspace(0.0, 2.0, sz.bias_shifts)
    hs, c_mmd, m_att, m_gauss = [], [], [], []
    for i, delta in enumerate(shifts):
        xp = gaussian_tokens(sz.bias_samples, sz.d_model, float(delta), seed=s[i + 1])
        b = w0_bias(head.keys(xp), head.values(xp), kq, vq, c=c, scale=head.scale)
        hs.append(b.hs_norm)
        c_mmd.append(b.c_times_mmd)
        m_att.append(b.mmd_att)
        m_gauss.append(mmd(xp, xq, "gaussian", "biased", squared=False, bandwidth=h))
    hs_a, c_mmd_a = np.array(hs), np.array(c_mmd)
    m_att_a, m_gauss_a = np.array(m_att), np.array(m_gauss)
    abs_err = np.abs(hs_a - c_mmd_a)
    slope_att, icpt_att, r2_att = linear_fit(m_att_a, hs_a)
    slope_g, icpt_g, r2_g = linear_fit(m_gauss_a, hs_a)
    return {
        "c": c,
        "bandwidth": h,
        "shifts": shifts,
        "hs_norm": hs_a,
        "c_times_mmd_att": c_mmd_a,
        "mmd_att": m_att_a,
        "mmd_gauss": m_gauss_a,
        "identity_abs_error": abs_err,
        "identity_max_abs_error": float(abs_err.max()),
        "identity_max_rel_error": float((abs_err / hs_a).max()),
        "fit_att": {"slope": slope_att, "intercept": icpt_att, "r2": r2_att},
        "fit_gauss": {"slope": slope_g, "intercept": icpt_g, "r2": r2_g},
        "max_ratio_gauss": float((hs_a / m_gauss_a).max()),
    }


def _section_generalization(head: AttentionHead, sz: _Sizes, seed: int) -> dict[str, Any]:
    s = sub_seeds(seed, 3)
    n_max = max(sz.gen_sizes)
    demos_all = gaussian_tokens(n_max, sz.d_model, seed=s[0])  # nested samples
    query = gaussian_tokens(sz.n_query, sz.d_model, seed=s[1])
    prefix = gaussian_tokens(1, sz.d_model, seed=s[2])
    rows = []
    for n in sz.gen_sizes:
        prompt = build_prompt(demos_all[:n], query, prefix)
        q, k, v = head.project(prompt.tokens)
        dec = decompose_head(q, k, v, prompt.segments, head.scale, prompt.mask)
        w0 = dec.w0(len(prompt) - 1)
        b = w0.hs_norm()
        keys, vals = w0.keys, w0.coefficients
        rc = rademacher_complexity(keys, b, "softmax", samples=sz.rademacher_samples, seed=s[0],
                                   scale=head.scale)
        # squared error per output coordinate, normalised to [0, 1]: |v| <= Y and
        # |W phi(k)| <= ||W||_HS sqrt(kappa(k, k)) <= F on the sample, so (y - f)^2 <= (Y + F)^2
        # and the normalised loss is 2 / (Y + F)-Lipschitz in the prediction f.
        y_max = float(vals.abs().max())
        f_max = b * float(torch.exp(0.5 * head.scale * (keys**2).sum(1)).max())
        r = y_max + f_max
        loss = float(((vals - w0.apply(keys)) ** 2).mean()) / r**2
        gb = generalization_bound(loss, rc, lipschitz=2.0 / r, loss_bound=1.0, delta=DELTA)
        rows.append({
            "n": n, "B": b, "closed_form": rc.closed_form, "monte_carlo": rc.monte_carlo,
            "monte_carlo_stderr": rc.monte_carlo_stderr, "empirical_loss": loss,
            "complexity_term": gb.complexity_term, "confidence_term": gb.confidence_term,
            "bound": gb.bound, "lipschitz": gb.lipschitz, "value_bound_Y": y_max,
            "prediction_bound_F": f_max, "eta_star": float(dec.eta[-1]),
        })
    ns = np.array([r["n"] for r in rows], dtype=np.float64)
    cf = np.array([r["closed_form"] for r in rows])
    bd = np.array([r["bound"] for r in rows])
    slope_r = float(np.polyfit(np.log(ns), np.log(cf), 1)[0])
    slope_b = float(np.polyfit(np.log(ns), np.log(bd), 1)[0])
    radius = np.array([r["B"] for r in rows])
    slope_rb = float(np.polyfit(np.log(ns), np.log(cf / radius), 1)[0])
    return {"rows": rows, "loglog_slope_rademacher": slope_r, "loglog_slope_bound": slope_b,
            "loglog_slope_rademacher_over_B": slope_rb,
            "delta": DELTA, "loss_bound_M": 1.0}


def _section_selection(sz: _Sizes, seed: int) -> dict[str, Any]:
    s = sub_seeds(seed, 5)
    d = 8
    g = torch.Generator().manual_seed(s[0])
    centers = 3.0 * torch.randn(4, d, generator=g, dtype=torch.float64)
    pool, labels = gaussian_mixture(sz.pool, centers, std=1.0, seed=s[1])
    direction = torch.randn(d, generator=g, dtype=torch.float64)
    targets = gaussian_tokens(sz.targets, d, 1.0, seed=s[2], direction=direction) + centers[0]
    sel = greedy_mmd(pool, targets, sz.k, "gaussian", seed=s[3])
    kern = sel.kernel
    rng = np.random.default_rng(s[4])
    rand_traj = np.empty((sz.random_subsets, sz.k))
    rand_p = np.empty(sz.random_subsets)
    subsets = []
    for r in range(sz.random_subsets):
        idx = rng.choice(sz.pool, size=sz.k, replace=False)
        subsets.append(idx)
        for j in range(sz.k):
            rand_traj[r, j] = mmd(pool[idx[: j + 1]], targets, kern, "biased")
        rand_p[r] = mmd_test(pool[idx], targets, kern, permutations=sz.permutations,
                             seed=s[4] + r).p_value
    chosen = pool[sel.indices]
    test_greedy = mmd_test(chosen, targets, kern, permutations=sz.permutations, seed=s[4])
    chosen_labels = labels[sel.indices]
    return {
        "pool": pool,
        "labels": labels,
        "targets": targets,
        "indices": sel.indices,
        "chosen_labels": chosen_labels,
        "greedy_traj": sel.mmd2,
        "bandwidth": kern.bandwidth,
        "random_traj": rand_traj,
        "random_subsets": np.array(subsets),
        "greedy_mmd2": float(mmd(chosen, targets, kern, "biased")),
        "random_mmd2": rand_traj[:, -1],
        "p_greedy": test_greedy.p_value,
        "p_random": rand_p,
        "frac_from_target_component": float((chosen_labels == 0).mean()),
    }


# ============================================================================ figure
#: Colours of the prompt segments in the figure.
_SEGMENT_COLORS = {"prefix": "tab:gray", "demos": "tab:blue", "query": "tab:orange"}


def _make_figure(res: dict[str, Any], seed: int) -> bytes:
    """The demo figure (PNG bytes): two rows of four panels, one per section."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # manual layout: constrained layout doubles the drawing time of this figure
    fig = Figure(figsize=(22, 11))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4)
    fig.subplots_adjust(left=0.04, right=0.975, top=0.895, bottom=0.06, wspace=0.32,
                        hspace=0.5)
    fig.suptitle(f"icldistill demo — in-context learning as one-step distillation "
                 f"(random head, synthetic tokens, seed {seed})", fontsize=14)
    panels = (
        (0, 0, _panel_segment_mass),
        (0, 1, _panel_stationarity),
        (0, 2, _panel_alignment),
        (0, 3, _panel_random_features),
        (1, 0, _panel_bias),
        (1, 1, _panel_generalization),
        (1, 2, _panel_selection),
        (1, 3, _panel_selection_pca),
    )
    for i, j, panel in panels:
        panel(axes[i, j], res)

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _panel_segment_mass(ax: Any, res: dict[str, Any]) -> None:
    """(a) Attention mass per segment by position."""
    d1 = res["decomposition"]
    dec, prompt = d1["dec"], d1["prompt"]
    pos = np.arange(len(prompt))
    bottom = np.zeros(len(prompt))
    for name in prompt.segment_names:
        m = dec.attention_mass[name].numpy()
        ax.bar(pos, m, bottom=bottom, width=1.0, color=_SEGMENT_COLORS.get(name), label=name,
               edgecolor="none")
        bottom += m
    qpos = d1["query_positions"].numpy()
    ax.axvspan(qpos[0] - 0.5, qpos[-1] + 0.5, color="k", alpha=0.06)
    ax.set_xlim(-0.5, len(prompt) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel("query position t (causal mask)")
    ax.set_ylabel("attention mass of segment")
    ax.set_title(f"1. Decomposition: mass per segment\nmax |Σ c_S − softmax·v| = "
                 f"{d1['max_abs_error']:.1e}")
    ax.legend(loc="lower left", fontsize=9, title="segment", framealpha=0.9)


def _panel_stationarity(ax: Any, res: dict[str, Any]) -> None:
    """(b) Domain stationarity."""
    d1 = res["decomposition"]
    dec = d1["dec"]
    qt = d1["query_positions"].numpy()
    ax.scatter(d1["probe_mean_demo_logit"], np.exp(d1["probe_log_eta"]), s=10, alpha=0.5,
               color="tab:purple", label="probe queries (fixed context)")
    ax.scatter(dec.mean_demo_logit.numpy()[qt], dec.eta.numpy()[qt], s=45, color="tab:orange",
               edgecolor="k", zorder=3, label="prompt's query positions")
    ax.set_xlabel("mean query–demo logit  mean_j s⟨q_t, k_j⟩")
    ax.set_ylabel("effective learning rate η*_t = N/(2D′_t)")
    ax.set_title(f"1b. Domain stationarity: η* falls as q_t matches the demos\n"
                 f"corr(mean logit, log η*) = {d1['probe_corr']:.2f}")
    ax.legend(fontsize=9)


def _panel_alignment(ax: Any, res: dict[str, Any]) -> None:
    """(c) Implicit alignment."""
    d2 = res["alignment"]
    ax.plot(d2["grid_mult"], d2["grid_rel_distance"], "-o", ms=3, color="tab:blue",
            label="‖W₁ − W₀‖ / ‖W₀‖")
    for f, st in d2["steps"].items():
        ax.scatter([float(f)], [st.relative_distance], s=60, color="tab:red", zorder=3)
        ax.annotate(f"η = {f}·η*: {st.relative_distance:.2g}", (float(f), st.relative_distance),
                    textcoords="offset points", xytext=(8, -4), fontsize=9)
    ax.set_xlabel("step size η / η*")
    ax.set_ylabel("relative HS distance to W₀", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(d2["grid_mult"], d2["grid_loss"], "--", color="tab:green",
             label="distillation loss L(W₁)")
    ax2.set_ylabel("distillation loss L(W₁)", color="tab:green")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=9, loc="upper center")
    ax.set_title(f"2. Implicit alignment: one GD step from 0\nlands on W₀ at η = η* "
                 f"(= {d2['eta_star']:.3g})")


def _panel_random_features(ax: Any, res: dict[str, Any]) -> None:
    """(d) Random features."""
    d3 = res["random_features"]
    m = d3["num_features"]
    for name, col in (("moderate", "tab:blue"), ("large", "tab:red")):
        r = d3[name]
        yerr = np.stack([r["median"] - r["q25"], r["q75"] - r["median"]])
        ax.errorbar(m, r["median"], yerr=yerr, fmt="-o", color=col, capsize=3,
                    label=f"{name} keys: s‖k‖² ≈ {r['scale_key_sq_norm']:.1f}")
    ref = d3["moderate"]["median"][0] * np.sqrt(m[0] / m)
    ax.plot(m, ref, ":", color="k", label="∝ 1/√m")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of random features m")
    ax.set_ylabel("relative error of primal W₀ φ(q)\n(median, quartile bars)")
    ax.set_title("3. Positive random features vs exact dual W₀\n(poor for large key norms)")
    ax.legend(fontsize=9)


def _panel_bias(ax: Any, res: dict[str, Any]) -> None:
    """(e) Bias vs MMD."""
    d4 = res["bias"]
    ax.scatter(d4["mmd_att"], d4["hs_norm"], marker="o", s=50, color="tab:blue",
               label=f"vs MMD_Katt (slope {d4['fit_att']['slope']:.3g} = c, "
                     f"R² {d4['fit_att']['r2']:.3f})")
    xs = np.linspace(0, d4["mmd_att"].max() * 1.05, 10)
    ax.plot(xs, d4["c"] * xs, "-", color="tab:blue", lw=1, alpha=0.6)
    ax.set_xlabel("MMD_Katt(P_δ, Q*)  (attention product kernel)", color="tab:blue")
    ax.set_ylabel("bias ‖W₀(P_δ) − W₀(Q*)‖_HS")
    ax_t = ax.twiny()
    ax_t.scatter(d4["mmd_gauss"], d4["hs_norm"], marker="^", s=50, color="tab:red",
                 label=f"vs Gaussian MMD of tokens (R² {d4['fit_gauss']['r2']:.3f})")
    ax_t.set_xlabel("Gaussian-kernel MMD of input tokens", color="tab:red")
    for delta, xg, yb in zip(d4["shifts"], d4["mmd_gauss"], d4["hs_norm"], strict=True):
        ax_t.annotate(f"δ={delta:.2g}", (xg, yb), textcoords="offset points", xytext=(4, -10),
                      fontsize=7, color="tab:red")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax_t.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=9, loc="upper left")
    ax.set_title("4. Bias of W₀ grows linearly with MMD\n(prompt mean shift δ = 0 … 2)",
                 pad=28)


def _panel_generalization(ax: Any, res: dict[str, Any]) -> None:
    """(f) Generalization."""
    d5 = res["generalization"]
    ns = np.array([r["n"] for r in d5["rows"]], dtype=np.float64)
    cf = np.array([r["closed_form"] for r in d5["rows"]])
    mc = np.array([r["monte_carlo"] for r in d5["rows"]])
    bd = np.array([r["bound"] for r in d5["rows"]])
    ax.plot(ns, cf, "-o", color="tab:blue", label="R̂(F_B) closed form")
    ax.plot(ns, mc, "--x", color="tab:cyan", label="R̂(F_B) Monte Carlo")
    ax.plot(ns, bd, "-s", color="tab:red", label=f"bound on E[loss] (δ={d5['delta']}, M=1)")
    ax.plot(ns, cf[0] * np.sqrt(ns[0] / ns), ":", color="k", label="∝ 1/√N")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of demonstration tokens N")
    ax.set_ylabel("value")
    ax.set_title(f"5. Generalization (B = ‖W₀‖_HS)\nlog-log slope: R̂ "
                 f"{d5['loglog_slope_rademacher']:.2f}, R̂/B "
                 f"{d5['loglog_slope_rademacher_over_B']:.2f}, bound "
                 f"{d5['loglog_slope_bound']:.2f}")
    ax.legend(fontsize=9)


def _panel_selection(ax: Any, res: dict[str, Any]) -> None:
    """(g) Selection trajectory."""
    d6 = res["selection"]
    ks = np.arange(1, d6["greedy_traj"].shape[0] + 1)
    rt = d6["random_traj"]
    ax.fill_between(ks, rt.min(0), rt.max(0), color="tab:gray", alpha=0.25,
                    label=f"random subsets (min–max of {rt.shape[0]})")
    ax.plot(ks, np.median(rt, 0), "-", color="tab:gray", label="random subsets (median)")
    ax.plot(ks, d6["greedy_traj"], "-o", color="tab:green", ms=4, label="MMD-greedy")
    ax.set_yscale("log")
    ax.set_xlabel("number of chosen demonstrations k")
    ax.set_ylabel("biased MMD²(S, targets)")
    ax.set_title(f"6. Demonstration selection by MMD\np-value greedy {d6['p_greedy']:.2g}, "
                 f"random (median) {float(np.median(d6['p_random'])):.2g}")
    ax.legend(fontsize=9)


def _panel_selection_pca(ax: Any, res: dict[str, Any]) -> None:
    """(h) Selection in 2-D (PCA of pool + targets)."""
    d6 = res["selection"]
    pool, targets = d6["pool"].numpy(), d6["targets"].numpy()
    z = np.concatenate([pool, targets])
    mu = z.mean(0)
    _, _, vt = np.linalg.svd(z - mu, full_matrices=False)
    proj = vt[:2].T
    pp, tp = (pool - mu) @ proj, (targets - mu) @ proj
    ax.scatter(pp[:, 0], pp[:, 1], s=4, color="lightgray", label="candidate pool (mixture)")
    ax.scatter(tp[:, 0], tp[:, 1], s=8, color="tab:blue", alpha=0.6, label="targets")
    rs = pp[d6["random_subsets"][0]]
    ax.scatter(rs[:, 0], rs[:, 1], s=40, marker="x", color="tab:orange",
               label="one random subset")
    cp = pp[d6["indices"]]
    ax.scatter(cp[:, 0], cp[:, 1], s=90, marker="*", color="tab:green", edgecolor="k",
               label="MMD-greedy choice")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(f"6b. Chosen demonstrations (k = {len(d6['indices'])}), PCA view")
    ax.legend(fontsize=9, loc="best")


# ============================================================================ summary
def _section(title: str, intro: str, items: Sequence[tuple[str, str]] = (),
             tables: Sequence[tuple[Sequence[str], Sequence[Sequence[str]]]] = (),
             notes: Sequence[str] = ()) -> rp.Section:
    """A demo section: intro, a quantity/value table, further tables, notes (all plain text)."""
    P = rp.plain
    blocks: list[rp.Block] = [rp.Paragraph(P(intro))]
    if items:
        blocks.append(rp.Table(("quantity", "value"), [(P(k), P(v)) for k, v in items]))
    blocks += [rp.Table([P(c) for c in cols], [[P(v) for v in r] for r in rows])
               for cols, rows in tables]
    blocks += [rp.Quote(P(n)) for n in notes]
    return rp.Section(title, blocks)


def _build_sections(res: dict[str, Any], sz: _Sizes) -> list[rp.Section]:
    """The summary's sections, one per part of the demo, in order."""
    makers = (_decomposition_section, _alignment_section, _random_features_section,
              _bias_section, _generalization_section, _selection_section)
    return [make(res, sz) for make in makers]


def _decomposition_section(res: dict[str, Any], sz: _Sizes) -> rp.Section:
    """Summary section 1 (Attention-head decomposition)."""
    d1 = res["decomposition"]
    dec, prompt = d1["dec"], d1["prompt"]
    rows = []
    for t in d1["query_positions"].tolist():
        rows.append([str(t), str(int(dec.num_demo_keys[t]))]
                    + [f"{float(dec.attention_mass[nm][t]):.3f}" for nm in prompt.segment_names]
                    + [f"{float(dec.log_normalizer[t]):.3f}",
                       f"{float(dec.mean_demo_logit[t]):+.3f}", f"{float(dec.eta[t]):.4f}"])
    return _section(
        "1. Attention-head decomposition",
        f"Random head (d_model={sz.d_model}, d_head={sz.d_head}, s=1/sqrt(d_head)) on a causal "
        f"prompt: 1 prefix token, {sz.n_demos} demo tokens ~ P = N(0, I), {sz.n_query} query "
        "tokens.",
        items=[
            ("max |sum_S c_S(t) - softmax(l) v|", _g(d1["max_abs_error"], 3)),
            ("Jensen: min_t log(D'_t/n_t) - mean logit", _g(float(d1["jensen_slack"].min()), 3)
             + "  (>= 0 required; positions with n_t >= 2)"),
            ("corr(mean demo logit, log eta*) probes", f"{d1['probe_corr']:.3f}  "
             f"({sz.n_probes} probe queries, fixed context)"),
        ],
        tables=[(["t", "N_t"] + [f"mass {nm}" for nm in prompt.segment_names]
                 + ["log D'", "mean demo logit", "eta*"], rows)],
    )


def _alignment_section(res: dict[str, Any], sz: _Sizes) -> rp.Section:
    """Summary section 2 (Implicit alignment)."""
    d2 = res["alignment"]
    return _section(
        "2. Implicit alignment (one gradient step = W_0)",
        f"Distillation loss L(W) = (1/N) sum_i ||v_i - W phi(k_i)||^2 over the N={sz.n_demos} "
        f"demo tokens; one step from W = 0 at the last position t={d2['t']}.",
        items=[("eta* = N / (2 D'_t)", _g(d2["eta_star"], 6)),
               ("L(0), L(W_0)", f"{_g(d2['loss_initial'])}, {_g(d2['loss_w0'])}")],
        tables=[(["eta / eta*", "||W_1 - W_0|| / ||W_0||", "L(W_1)"],
                 [[f, _g(st.relative_distance, 3), _g(st.loss_final)]
                  for f, st in d2["steps"].items()])],
        notes=["the distance is |eta/eta* - 1| exactly; W_0 is a single step of size eta*, "
               "not the minimiser of L."],
    )


def _random_features_section(res: dict[str, Any], sz: _Sizes) -> rp.Section:
    """Summary section 3 (Random-feature (primal) W_0 vs the exact dual form)."""
    d3 = res["random_features"]
    mod, lar = d3["moderate"], d3["large"]
    return _section(
        "3. Random-feature (primal) W_0 vs the exact dual form",
        f"Relative error ||W_prim phi(q) - W_0 phi(q)|| / ||W_0 phi(q)|| on the query positions, "
        f"median [quartiles] over {mod['seeds']} feature draws (positive orthogonal "
        "features; the error is heavy-tailed, so the median is the robust summary).",
        tables=[(
            ["m", f"moderate (s||k||^2 ≈ {mod['scale_key_sq_norm']:.2f})",
             f"large (s||k||^2 ≈ {lar['scale_key_sq_norm']:.2f})"],
            [[str(m), f"{a:.3f} [{a1:.3f}, {a3:.3f}]", f"{b:.3f} [{b1:.3f}, {b3:.3f}]"]
             for m, a, a1, a3, b, b1, b3 in zip(d3["num_features"], mod["median"], mod["q25"],
                                                mod["q75"], lar["median"], lar["q25"],
                                                lar["q75"], strict=True)])],
        notes=["the estimator's variance grows like exp(s(||k||^2 + ||q||^2)): with large "
               "key/query norms convergence in m is slow and erratic — use the exact dual "
               "form there."],
    )


def _bias_section(res: dict[str, Any], sz: _Sizes) -> rp.Section:
    """Summary section 4 (Bias of W_0 vs MMD)."""
    d4 = res["bias"]
    return _section(
        "4. Bias of W_0 vs MMD",
        f"Target Q* = N(0, I), prompt P_delta = N(delta u, I), {sz.bias_samples} tokens each; "
        f"c = 2 eta* = {d4['c']:.4g}; Gaussian bandwidth {d4['bandwidth']:.3g} (median, fixed).",
        items=[
            ("identity max |hs_norm - c MMD_Katt|", _g(d4["identity_max_abs_error"], 3)),
            ("identity max relative error", _g(d4["identity_max_rel_error"], 3)),
            ("fit bias ~ MMD_Katt: slope, R^2", f"{d4['fit_att']['slope']:.6g}, "
             f"{d4['fit_att']['r2']:.6f}"),
            ("fit bias ~ MMD_gauss: slope, R^2", f"{d4['fit_gauss']['slope']:.4g}, "
             f"{d4['fit_gauss']['r2']:.4f}"),
            ("max bias / MMD_gauss (empirical c G)", _g(d4["max_ratio_gauss"])),
        ],
        tables=[(["delta", "bias ||.||_HS", "c MMD_Katt", "MMD_Katt", "MMD_gauss"],
                 [[f"{dl:.3f}", _g(a), _g(b), _g(c_), _g(dg)] for dl, a, b, c_, dg in
                  zip(d4["shifts"], d4["hs_norm"], d4["c_times_mmd_att"], d4["mmd_att"],
                      d4["mmd_gauss"], strict=True)])],
        notes=["at delta = 0 the bias is the finite-sample MMD between two samples of the "
               "same distribution."],
    )


def _generalization_section(res: dict[str, Any], sz: _Sizes) -> rp.Section:
    """Summary section 5 (Generalization bound)."""
    d5 = res["generalization"]
    return _section(
        "5. Generalization bound (Rademacher)",
        f"F_B with B = ||W_0||_HS at the last query position; loss = squared error per output "
        f"coordinate divided by (Y + F)^2 so it lies in [0, M], M = 1 (Y = max |v|, "
        f"F = B max sqrt(kappa(k,k))), L = 2/(Y+F); delta = {d5['delta']}.",
        items=[("log-log slope of R closed form vs N", f"{d5['loglog_slope_rademacher']:.3f}"
                "  (1/sqrt(N) = -0.5)"),
               ("log-log slope of R / B vs N", f"{d5['loglog_slope_rademacher_over_B']:.3f}"),
               ("log-log slope of the bound vs N", f"{d5['loglog_slope_bound']:.3f}")],
        tables=[(["N", "B", "R closed", "R Monte Carlo", "emp. loss", "2 L R", "3M sqrt(..)",
                  "bound"],
                 [[str(r["n"]), _g(r["B"]), _g(r["closed_form"]), _g(r["monte_carlo"]),
                   _g(r["empirical_loss"], 3), _g(r["complexity_term"], 3),
                   _g(r["confidence_term"], 3), _g(r["bound"], 3)] for r in d5["rows"]])],
        notes=["B = ||W_0||_HS itself shrinks with N here (the values have mean ~ 0), so R "
               "falls a little faster than 1/sqrt(N); R / B follows 1/sqrt(N).",
               "the bound is on the normalised loss (at most 1); values above 1 are vacuous."],
    )


def _selection_section(res: dict[str, Any], sz: _Sizes) -> rp.Section:
    """Summary section 6 (Demonstration selection by MMD)."""
    d6 = res["selection"]
    pr = d6["p_random"]
    return _section(
        "6. Demonstration selection by MMD",
        f"Pool: {sz.pool} points from a 4-component Gaussian mixture in R^8; targets: "
        f"{sz.targets} points from component 0 shifted by 1; Gaussian kernel, bandwidth "
        f"{d6['bandwidth']:.3g} (median heuristic); k = {sz.k}.",
        items=[
            ("MMD^2 greedy", _g(d6["greedy_mmd2"])),
            (f"MMD^2 random ({len(pr)} subsets): median [min, max]",
             f"{_g(float(np.median(d6['random_mmd2'])))} [{_g(float(d6['random_mmd2'].min()))},"
             f" {_g(float(d6['random_mmd2'].max()))}]"),
            ("greedy picks from target component", f"{d6['frac_from_target_component']:.0%}"),
            (f"permutation test p-value ({sz.permutations} perms): greedy",
             _g(d6["p_greedy"], 3)),
            ("permutation test p-value: random, median [min, max]",
             f"{_g(float(np.median(pr)), 3)} [{_g(float(pr.min()), 3)}, "
             f"{_g(float(pr.max()), 3)}]"),
        ],
        notes=["a high p-value means the chosen demonstrations are statistically "
               "indistinguishable from the targets."],
    )


def _json_payload(res: dict[str, Any], summary_fields: dict[str, Any], sz: _Sizes,
                  timings: dict[str, float]) -> dict[str, Any]:
    d1, d2, d3 = res["decomposition"], res["alignment"], res["random_features"]
    d4, d5, d6 = res["bias"], res["generalization"], res["selection"]
    dec, prompt = d1["dec"], d1["prompt"]
    return {
        "icldistill_version": __version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "sizes": {k: getattr(sz, k) for k in sz.__dataclass_fields__},
        "timings_s": timings,
        "headline": summary_fields,
        "decomposition": {
            "segments": list(prompt.segments),
            "max_abs_error": d1["max_abs_error"],
            "max_abs_error_output": d1["max_abs_error_output"],
            "eta_star": dec.eta,
            "log_normalizer": dec.log_normalizer,
            "num_demo_keys": dec.num_demo_keys,
            "num_keys": dec.num_keys,
            "mean_demo_logit": dec.mean_demo_logit,
            "mean_logit": dec.mean_logit,
            "attention_mass": dec.attention_mass,
            "jensen_slack": d1["jensen_slack"],
            "query_positions": d1["query_positions"],
            "probes": {"mean_demo_logit": d1["probe_mean_demo_logit"],
                       "log_eta_star": d1["probe_log_eta"],
                       "corr": d1["probe_corr"], "num_demo_keys": d1["probe_num_demos"],
                       "num_keys": d1["probe_num_keys"]},
            "qk_gain": QK_GAIN,
        },
        "alignment": {
            "position": d2["t"],
            "eta_star": d2["eta_star"],
            "loss_initial": d2["loss_initial"],
            "loss_w0": d2["loss_w0"],
            "steps": {f: {"eta": st.eta, "distance": st.distance,
                          "relative_distance": st.relative_distance,
                          "loss_final": st.loss_final} for f, st in d2["steps"].items()},
            "grid": {"eta_over_eta_star": d2["grid_mult"],
                     "relative_distance": d2["grid_rel_distance"], "loss": d2["grid_loss"]},
        },
        "random_features": {"num_features": d3["num_features"], "moderate": d3["moderate"],
                            "large": d3["large"]},
        "bias": {k: v for k, v in d4.items()},
        "generalization": d5,
        "selection": {
            "bandwidth": d6["bandwidth"],
            "indices": d6["indices"],
            "chosen_labels": d6["chosen_labels"],
            "greedy_trajectory": d6["greedy_traj"],
            "random_trajectories": d6["random_traj"],
            "greedy_mmd2": d6["greedy_mmd2"],
            "random_mmd2": d6["random_mmd2"],
            "p_value_greedy": d6["p_greedy"],
            "p_values_random": d6["p_random"],
            "frac_from_target_component": d6["frac_from_target_component"],
        },
    }


# ============================================================================ entry point
def run_demo(
    out_dir: Path | str, seed: int = 0, quiet: bool = False, *, fast: bool = False
) -> DemoSummary:
    """Run the whole math core on generated data; write a figure and the summary.

    Parameters
    ----------
    out_dir : pathlib.Path or str
        Output folder (created if missing). Receives ``demo.png``, ``summary.json``,
        ``summary.md`` and ``summary.html``; each is written to a temporary file in the folder
        and then moved into place with :func:`os.replace`, so a reader never sees a partial
        file.
    seed : int
        Seed of every random draw (same seed, same numbers): an integer >= 0.
    quiet : bool
        Do not print the plain-text summary to stdout.
    fast : bool
        Use reduced problem sizes (for tests; about a second of computation).

    Returns
    -------
    DemoSummary
        The headline numbers and the paths of the written files.

    Raises
    ------
    InputError
        ``seed`` is not an integer >= 0 (a fraction such as ``1.7`` is not read as 1); checked
        before the output folder is created.
    OSError
        The output folder cannot be created or written.
    """
    start = time.perf_counter()
    seed = check_seed(seed)                    # before the folder is made
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sz = _FAST if fast else _FULL
    timings: dict[str, float] = {}
    res, png = _compute(sz, seed, timings)
    files = {"figure": out / FIGURE_NAME, "json": out / JSON_NAME,
             "markdown": out / MARKDOWN_NAME, "html": out / HTML_NAME}
    fields_ = _headline(res, seed, fast)
    sections = _build_sections(res, sz)
    compute_s = time.perf_counter() - start
    fields_["runtime_s"] = compute_s
    timings["total_before_writing"] = compute_s
    meta = (
        rp.plain(f"seed {seed}{' (fast sizes)' if fast else ''} · icldistill {__version__} · "
                 f"torch {torch.__version__} · float64 · {compute_s:.1f} s"),
        rp.plain(f"files: {', '.join(f.name for f in files.values())} in {out}"),
    )
    report = rp.Report("icldistill demo", sections, meta=meta,
                       intro=(rp.Figure(FIGURE_NAME, "Demo figure: one panel per section"),))
    text = rp.to_text(report)
    atomic_write(files["figure"], lambda fh: fh.write(png))
    write_json(files["json"], _json_payload(res, fields_, sz, timings))
    rp.write_report(report, out, stem=Path(MARKDOWN_NAME).stem)
    fields_["runtime_s"] = time.perf_counter() - start
    summary = DemoSummary(**fields_, out_dir=out, files=files)
    if not quiet:
        print(text, end="")
        print(f"\nwrote {', '.join(str(f) for f in files.values())} "
              f"({summary.runtime_s:.1f} s)")
    return summary


def _compute(sz: _Sizes, seed: int, timings: dict[str, float]) -> tuple[dict[str, Any], bytes]:
    """Every part of the demo (single-threaded) and the figure; each part's wall time goes
    into ``timings``."""
    sub = sub_seeds(seed, 8)
    res: dict[str, Any] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        val = fn()
        timings[name] = time.perf_counter() - t0
        return val

    with single_thread():
        head = random_head(sz.d_model, sz.d_head, sz.d_head, seed=sub[0], qk_gain=QK_GAIN)
        head_large = random_head(sz.d_model, sz.d_head, sz.d_head, seed=sub[0],
                                 qk_gain=QK_GAIN_LARGE)
        res["decomposition"] = timed("decomposition",
                                     lambda: _section_decomposition(head, sz, sub[1]))
        prompt = res["decomposition"]["prompt"]
        t_last = len(prompt) - 1
        res["alignment"] = timed("alignment",
                                 lambda: _section_alignment(res["decomposition"]["dec"], t_last,
                                                            sz))
        res["random_features"] = timed(
            "random_features",
            lambda: _section_random_features(head, head_large, prompt, t_last, sz))
        c = 2.0 * res["alignment"]["eta_star"]
        res["bias"] = timed("bias", lambda: _section_bias(head, c, sz, sub[2]))
        res["generalization"] = timed("generalization",
                                      lambda: _section_generalization(head, sz, sub[3]))
        res["selection"] = timed("selection", lambda: _section_selection(sz, sub[4]))
        png = timed("figure", lambda: _make_figure(res, seed))
    return res, png


def _headline(res: dict[str, Any], seed: int, fast: bool) -> dict[str, Any]:
    """The fields of :class:`DemoSummary` but ``out_dir`` and ``files`` (``runtime_s`` 0)."""
    d2, d3, d4, d5, d6 = (res[k] for k in ("alignment", "random_features", "bias",
                                           "generalization", "selection"))
    return {
        "seed": seed,
        "fast": fast,
        "runtime_s": 0.0,
        "decomposition_max_abs_error": res["decomposition"]["max_abs_error"],
        "jensen_min_slack": float(res["decomposition"]["jensen_slack"].min()),
        "eta_star": d2["eta_star"],
        "alignment_rel_distance": {f: st.relative_distance for f, st in d2["steps"].items()},
        "rf_num_features": tuple(int(m) for m in d3["num_features"]),
        "rf_rel_error": tuple(float(v) for v in d3["moderate"]["median"]),
        "rf_rel_error_large": tuple(float(v) for v in d3["large"]["median"]),
        "bias_identity_max_abs_error": d4["identity_max_abs_error"],
        "bias_identity_max_rel_error": d4["identity_max_rel_error"],
        "bias_slope_att": d4["fit_att"]["slope"],
        "bias_r2_att": d4["fit_att"]["r2"],
        "bias_slope_gauss": d4["fit_gauss"]["slope"],
        "bias_r2_gauss": d4["fit_gauss"]["r2"],
        "gen_n": tuple(int(r["n"]) for r in d5["rows"]),
        "rademacher_closed_form": tuple(float(r["closed_form"]) for r in d5["rows"]),
        "rademacher_monte_carlo": tuple(float(r["monte_carlo"]) for r in d5["rows"]),
        "bound": tuple(float(r["bound"]) for r in d5["rows"]),
        "rademacher_loglog_slope": d5["loglog_slope_rademacher"],
        "greedy_mmd2": d6["greedy_mmd2"],
        "random_mmd2_median": float(np.median(d6["random_mmd2"])),
        "p_value_greedy": float(d6["p_greedy"]),
        "p_value_random_median": float(np.median(d6["p_random"])),
    }
