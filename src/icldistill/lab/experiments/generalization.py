"""The Rademacher generalization bound of the distilled student against the observed gap, as
the number of demonstrations grows (SPEC §4), on a trained in-context learner.

Setting. For a grid of example indices ``i`` (``1, 2, 4, ...`` and ``max_examples - 1``), the
query position of ``x_i`` sees the demonstration tokens of the ``i`` pairs before it (as
:func:`~icldistill.lab.experiments._common.icl_head_decomposition` splits them: segment
``"demos"``). **The sample size of the bound is the number of demonstration tokens ``N``** that
position sees (SPEC §2/§4: ``N`` = number of demonstration keys visible to the position; it is
read from the decomposition, e.g. ``i`` with one token per demonstration, ``2 i`` with
interleaved ``x, y`` tokens). At every layer and head
(:func:`~icldistill.lab.experiments._common.icl_head_decomposition`, float64 copy of the model):

- the student is ``f(x) = W_0 phi(k(x))`` with ``W_0 = W_0(t)`` the distilled weights of the
  ``x_i`` position in dual form (:meth:`HeadDecomposition.w0`); the teacher's targets are the
  values ``v(x)``; ``B = ||W_0||_HS`` (:meth:`DualWeights.hs_norm`);
- ``R_hat(F_B)`` on the ``N`` demonstration keys, closed form and Monte Carlo
  (:func:`~icldistill.core.bounds.rademacher_complexity`, softmax kernel with the layer's scale;
  all ``2^N`` sign vectors when ``2^N`` does not exceed the sample count);
- **loss**: per-coordinate absolute error clipped at ``M``,
  ``l(f, v) = mean_c min(|f_c - v_c|, M)``, in ``[0, M]`` and 1-Lipschitz in each prediction
  coordinate (``L = 1``). ``M`` is one constant per head, fixed before the experiment from an
  independent calibration batch: ``M = 2 max |v|`` over its demonstration tokens (those the
  last ``x`` position sees) and value coordinates;
- empirical loss on the ``N`` demonstration tokens (targets: their values), held-out loss on
  fresh tokens of the same distribution: the demonstration tokens that the same position sees in
  independent held-out prompts of the same task (their keys and values at the same head,
  :func:`~icldistill.lab.experiments._common.demo_key_values`), pooled;
- the bound ``empirical + 2 L R_hat + 3 M sqrt(ln(2 d_v / delta) / (2 N))`` from
  :func:`~icldistill.core.bounds.generalization_bound`: the one-coordinate bound of SPEC §4 holds
  for
  each of the ``d_v`` value coordinates (every row of ``W`` has norm ``<= ||W||_HS <= B``), and
  with ``delta / d_v`` per coordinate (union bound) for all of them at once, hence for their mean.

Caveats the report states: ``B`` is measured on the sample itself, and the demonstration tokens
of one prompt are not i.i.d. (the keys depend on the context through earlier layers, and the
tokens alternate between ``x`` and ``y`` tokens), so the bound is evaluated as SPEC §4 prescribes
rather than proven to apply; the held-out loss is itself an estimate of the expected loss.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.figures import layer_colors, new_figure, save_figure
from icldistill.artifacts.store import to_jsonable
from icldistill.core.bounds import generalization_bound, rademacher_complexity
from icldistill.core.results import Result
from icldistill.core.util import single_thread, sub_seeds
from icldistill.core.validation import InputError
from icldistill.lab.demo import DELTA
from icldistill.lab.experiments._common import (
    Check,
    Section,
    Table,
    demo_key_values,
    icl_head_decomposition,
)
from icldistill.lab.synthetic import icl_batch
from icldistill.lab.training import TrainedICL
from icldistill.models.icl_transformer import ICLTrace

__all__ = ["GeneralizationResult", "clipped_abs_loss", "generalization", "pair_grid", "run"]

#: ``M = LOSS_RANGE_FACTOR * max |v|`` on the calibration prompts (per head).
LOSS_RANGE_FACTOR = 2.0
#: Lipschitz constant of the clipped absolute loss in each prediction coordinate.
LIPSCHITZ = 1.0
#: A log-log slope within this distance of -0.5 counts as "shrinks like 1/sqrt(N)".
SLOPE_TOL = 0.2


def pair_grid(max_examples: int) -> tuple[int, ...]:
    """Example indices ``i`` of the grid: powers of two below ``max_examples`` and
    ``max_examples - 1``."""
    if max_examples < 2:
        raise InputError("the model must take at least 2 examples (no demonstrations otherwise)")
    grid = {max_examples - 1}
    i = 1
    while i < max_examples:
        grid.add(i)
        i *= 2
    return tuple(sorted(grid))


def clipped_abs_loss(pred: torch.Tensor, target: torch.Tensor, bound: float) -> torch.Tensor:
    """Per-token loss ``mean_c min(|pred_c - target_c|, bound)`` (``[n]`` from ``[n, d_v]``):
    in ``[0, bound]`` and 1-Lipschitz in every prediction coordinate."""
    return (pred - target).abs().clamp(max=float(bound)).mean(-1)


@dataclass(frozen=True)
class GeneralizationResult(Result):
    """Bound and observed losses per prompt ``P``, layer ``L``, head ``H`` and grid point ``G``.

    Attributes
    ----------
    task : str
    n_examples : int
        Pairs per prompt (``max_examples``).
    pairs : ndarray ``[G]``
        Example index ``i`` of each grid point.
    n_tokens : ndarray ``[G]``
        ``N``, the number of demonstration tokens the ``x_i`` position sees: the sample size
        of the bound.
    radius : ndarray ``[P, L, H, G]``
        ``B = ||W_0||_HS``.
    rademacher_closed, rademacher_mc, rademacher_mc_stderr : ndarray ``[P, L, H, G]``
        ``R_hat(F_B)``: closed form, Monte Carlo (exact when enumerated) and its standard error.
    empirical, heldout : ndarray ``[P, L, H, G]``
        Mean clipped loss on the demonstration tokens / on the held-out tokens.
    complexity, confidence, bound : ndarray ``[P, L, H, G]``
        ``2 L R_hat``, ``3 M sqrt(ln(2 d_v / delta) / (2N))`` and the bound.
    clipped_empirical, clipped_heldout : ndarray ``[P, L, H, G]``
        Fraction of loss entries (token, coordinate) that hit the clip ``M``.
    demo_mass : ndarray ``[P, L, H, G]``
        Attention mass of the ``x_i`` position on its demonstrations.
    student_scale : ndarray ``[P, L, H, G]``
        ``median |W_0 phi(k_j)| / median |v_j|`` over the demonstration tokens and coordinates:
        how large the student's outputs are relative to its targets.
    loss_bound : ndarray ``[L, H]``
        ``M`` per head.
    delta : float
        Failure probability of the bound (all coordinates together).
    value_dim : int
        ``d_v``.
    heldout_prompts : int
    rademacher_samples : int
        Sign vectors per Monte-Carlo estimate (fewer when enumerated exhaustively).
    representative : tuple of int
        ``(layer, head)`` shown in the figures: most attention on the demonstrations at the
        largest ``N``.
    skipped : int
        Grid entries without a finite ``W_0`` norm (float64 overflow; NaN in the arrays).
    seconds : float
    """

    task: str
    n_examples: int
    pairs: np.ndarray
    n_tokens: np.ndarray
    radius: np.ndarray
    rademacher_closed: np.ndarray
    rademacher_mc: np.ndarray
    rademacher_mc_stderr: np.ndarray
    empirical: np.ndarray
    heldout: np.ndarray
    complexity: np.ndarray
    confidence: np.ndarray
    bound: np.ndarray
    clipped_empirical: np.ndarray
    clipped_heldout: np.ndarray
    demo_mass: np.ndarray
    student_scale: np.ndarray
    loss_bound: np.ndarray
    delta: float
    value_dim: int
    heldout_prompts: int
    rademacher_samples: int
    representative: tuple[int, int]
    skipped: int
    seconds: float

    @property
    def n_prompts(self) -> int:
        return int(self.radius.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(L, H)``."""
        return int(self.radius.shape[1]), int(self.radius.shape[2])

    @property
    def gap(self) -> np.ndarray:
        """Observed gap ``heldout - empirical`` ``[P, L, H, G]``."""
        return self.heldout - self.empirical

    @property
    def violations(self) -> int:
        """Entries where the bound is below the held-out loss."""
        ok = np.isfinite(self.bound)
        return int((self.bound[ok] < self.heldout[ok]).sum())

    @property
    def evaluated(self) -> int:
        """Entries with a finite bound."""
        return int(np.isfinite(self.bound).sum())

    def slope(self, values: np.ndarray, *, absolute: bool = False) -> np.ndarray:
        """Log-log slope over ``N`` of the prompt mean of ``values`` ``[P, L, H, G]`` per head
        ``[L, H]`` (of its absolute value with ``absolute``; NaN unless the mean is positive
        and finite at every grid point)."""
        mean = np.nanmean(values, axis=0) if values.shape[0] > 1 else values[0]
        if absolute:
            mean = np.abs(mean)
        out = np.full(mean.shape[:2], np.nan)
        x = np.log(self.n_tokens.astype(np.float64))
        for la in range(mean.shape[0]):
            for h in range(mean.shape[1]):
                y = mean[la, h]
                ok = np.isfinite(y) & (y > 0)
                if ok.all() and ok.sum() >= 2:
                    out[la, h] = float(np.polyfit(x[ok], np.log(y[ok]), 1)[0])
        return out


def _loss_bounds(trace: ICLTrace, n_prompts: int, i_last: int) -> np.ndarray:
    """``M = LOSS_RANGE_FACTOR * max |v|`` per head ``[L, H]`` over the values of the
    demonstration tokens that the last ``x`` position sees, in a calibration trace."""
    L, H = len(trace.layers), int(trace.layers[0].values.shape[1])
    out = np.zeros((L, H))
    for layer in range(L):
        for head in range(H):
            out[layer, head] = LOSS_RANGE_FACTOR * max(
                float(demo_key_values(trace, b, layer, head, i_last)[1].abs().max())
                for b in range(n_prompts))
    return out


def generalization(
    trained: TrainedICL,
    *,
    n_prompts: int = 8,
    heldout_prompts: int = 16,
    rademacher_samples: int = 500,
    delta: float = DELTA,
    seed: int = 0,
    progress: bool = False,
) -> GeneralizationResult:
    """Rademacher bound, empirical and held-out loss of the distilled student of every head
    over a grid of demonstration counts (module docstring for the definitions).

    Parameters
    ----------
    trained : TrainedICL
    n_prompts : int
        Prompts whose demonstrations train the student (``N = max_examples`` pairs each; the
        grid positions are read from the same prompts, as the model is causal).
    heldout_prompts : int
        Independent prompts whose tokens measure the held-out loss (pooled).
    rademacher_samples : int
        Monte-Carlo sign vectors (all ``2^N`` when that is not more).
    delta : float
        Failure probability of the bound.
    seed : int
        Seed of the prompts (training, held-out and calibration batches) and sign vectors.
    progress : bool
        Show a progress bar over prompts.
    """
    for name, value in (("n_prompts", n_prompts), ("heldout_prompts", heldout_prompts),
                        ("rademacher_samples", rademacher_samples)):
        if int(value) != value or int(value) < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 < delta < 1.0:
        raise InputError(f"delta must lie in (0, 1), got {delta}")
    t0 = time.perf_counter()
    with single_thread():
        return _generalization(trained, int(n_prompts), int(heldout_prompts),
                               int(rademacher_samples), float(delta), int(seed), progress, t0)


# long: one nested loop (heads x positions x prompts) fills thirteen result arrays in place
def _generalization(trained: TrainedICL, n_prompts: int, heldout_prompts: int, samples: int,
                    delta: float, seed: int, progress: bool, t0: float) -> GeneralizationResult:
    cfg = trained.config
    N = cfg.max_examples
    grid = pair_grid(N)
    s_train, s_held, s_cal, s_sign = sub_seeds(seed, 4)
    model = copy.deepcopy(trained.model).double().eval()

    def traced(b: int, s: int) -> ICLTrace:
        batch = icl_batch(cfg.task, b, N, cfg.d_x, s, dtype=torch.float64)
        with torch.no_grad():
            return model.trace(batch.xs, batch.ys)

    trace = traced(n_prompts, s_train)
    held = traced(heldout_prompts, s_held)
    n_cal = max(4, heldout_prompts // 2)
    m_bound = _loss_bounds(traced(n_cal, s_cal), n_cal, N - 1)
    P, L, H, G = n_prompts, cfg.n_layers, cfg.n_heads, len(grid)
    d_v = int(trace.layers[0].values.shape[-1])
    shape = (P, L, H, G)
    names = ("radius", "closed", "mc", "mc_se", "emp", "held", "cplx", "conf", "bound",
             "clip_emp", "clip_held", "mass", "scale")
    arr = {k: np.full(shape, np.nan) for k in names}
    n_keys = np.zeros(G, dtype=np.int64)
    skipped = 0
    from icldistill.core.progress import progress_bar

    for layer, head in progress_bar([(a, b) for a in range(L) for b in range(H)],
                                    desc="generalization", enabled=progress):
        scale = trace.layers[layer].scale
        M = float(m_bound[layer, head])
        for g, i in enumerate(grid):
            # held-out sample: the demonstration tokens of the independent prompts, pooled
            hkv = [demo_key_values(held, bh, layer, head, i) for bh in range(heldout_prompts)]
            hk = torch.cat([k for k, _ in hkv])
            hv = torch.cat([v for _, v in hkv])
            for b in range(P):
                dec = icl_head_decomposition(trace, b, layer, head, i)
                arr["mass"][b, layer, head, g] = float(dec.attention_mass["demos"][0])
                w0 = dec.w0(0)
                keys, vals = w0.keys, w0.coefficients
                n_tok = w0.num_keys
                if n_keys[g] and n_keys[g] != n_tok:
                    raise InputError(f"example {i}: {n_tok} demonstration keys in prompt {b}, "
                                     f"{n_keys[g]} before")
                n_keys[g] = n_tok
                radius = w0.hs_norm()
                pred, hpred = w0.apply(keys), w0.apply(hk)
                if not (math.isfinite(radius) and bool(torch.isfinite(pred).all())
                        and bool(torch.isfinite(hpred).all())):
                    skipped += 1
                    continue
                exhaustive = 2 ** n_tok <= samples
                try:
                    rc = rademacher_complexity(
                        keys, radius, "softmax",
                        samples="exhaustive" if exhaustive else samples,
                        seed=s_sign + ((b * L + layer) * H + head) * G + g, scale=scale)
                except InputError:  # the kernel overflowed float64 on these keys
                    skipped += 1
                    continue
                emp = float(clipped_abs_loss(pred, vals, M).mean())
                hld = float(clipped_abs_loss(hpred, hv, M).mean())
                gb = generalization_bound(emp, rc.closed_form, n_tok, lipschitz=LIPSCHITZ,
                                          loss_bound=M, delta=delta / d_v)
                for key, val in (
                    ("radius", radius), ("closed", rc.closed_form), ("mc", rc.monte_carlo),
                    ("mc_se", rc.monte_carlo_stderr), ("emp", emp), ("held", hld),
                    ("cplx", gb.complexity_term), ("conf", gb.confidence_term),
                    ("bound", gb.bound),
                    ("clip_emp", float(((pred - vals).abs() >= M).double().mean())),
                    ("clip_held", float(((hpred - hv).abs() >= M).double().mean())),
                    ("scale", float(pred.abs().median() / vals.abs().median().clamp_min(1e-300))),
                ):
                    arr[key][b, layer, head, g] = val
    mass_last = np.nanmean(arr["mass"][..., -1], axis=0)
    rep = np.unravel_index(int(np.nanargmax(mass_last)), mass_last.shape)
    return GeneralizationResult(
        task=cfg.task, n_examples=N, pairs=np.array(grid), n_tokens=n_keys,
        radius=arr["radius"], rademacher_closed=arr["closed"], rademacher_mc=arr["mc"],
        rademacher_mc_stderr=arr["mc_se"], empirical=arr["emp"], heldout=arr["held"],
        complexity=arr["cplx"], confidence=arr["conf"], bound=arr["bound"],
        clipped_empirical=arr["clip_emp"], clipped_heldout=arr["clip_held"],
        demo_mass=arr["mass"], student_scale=arr["scale"], loss_bound=m_bound, delta=delta,
        value_dim=d_v,
        heldout_prompts=heldout_prompts, rademacher_samples=samples,
        representative=(int(rep[0]), int(rep[1])), skipped=skipped,
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------- figures
def _pmean(x: np.ndarray) -> np.ndarray:
    """Mean over prompts (axis 0), NaN-aware."""
    with np.errstate(all="ignore"):
        return np.nanmean(x, axis=0) if np.isfinite(x).any() else np.full(x.shape[1:], np.nan)


def _positive(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).copy()
    y[~(y > 0)] = np.nan
    return y


def _log_axes(ax: Any, n: np.ndarray) -> None:
    """Log-log axes with the grid's ``N`` as plain x tick labels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(n)
    ax.set_xticklabels([str(int(v)) for v in n])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _figures(res: GeneralizationResult, out: Path) -> list[str]:
    la, h = res.representative
    n = res.n_tokens.astype(np.float64)
    L, H = res.shape
    colors = layer_colors(L)
    fig, axes = new_figure(1, 2, size=(5.8, 4.4))
    ax = axes[0, 0]
    slack = _pmean(res.bound - res.empirical)[la, h]
    curves = [
        ("R̂ closed form", _pmean(res.rademacher_closed)[la, h], "o-"),
        ("R̂ Monte Carlo", _pmean(res.rademacher_mc)[la, h], "x--"),
        ("bound − empirical", slack, "s-"),
    ]
    for label, y, style in curves:
        ax.plot(n, _positive(y), style, label=label, ms=4)
    gap = _pmean(res.gap)[la, h]
    line = ax.plot(n, np.abs(gap), "-", color="tab:red", label="|observed gap| (open: negative)")
    ax.scatter(n[gap >= 0], gap[gap >= 0], marker="d", color=line[0].get_color(), zorder=3)
    ax.scatter(n[gap < 0], -gap[gap < 0], marker="d", facecolors="none",
               edgecolors=line[0].get_color(), zorder=3)
    if np.isfinite(slack[0]):
        ax.plot(n, slack[0] * np.sqrt(n[0] / n), ":", color="grey", label="∝ 1/√N reference")
    _log_axes(ax, n)
    ax.set_xlabel("N = number of demonstration tokens")
    ax.set_ylabel("value (prompt mean)")
    ax.set_title(f"layer {la} head {h} (representative), M = {res.loss_bound[la, h]:.3g}")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    rc = _pmean(res.rademacher_closed)
    for layer in range(L):
        for head in range(H):
            ax.plot(n, _positive(rc[layer, head]), color=colors[layer], lw=0.9, alpha=0.7,
                    label=f"layer {layer}" if head == 0 else None)
    ref = rc[np.isfinite(rc[..., 0]) & (rc[..., 0] > 0), 0]
    if ref.size:
        ax.plot(n, float(np.exp(np.log(ref).mean())) * np.sqrt(n[0] / n), "k:",
                label="∝ 1/√N reference")
    _log_axes(ax, n)
    ax.set_xlabel("N = number of demonstration tokens")
    ax.set_ylabel("R̂(F_B), closed form")
    ax.set_title("Rademacher complexity, every head")
    ax.legend(fontsize=7)
    fig.suptitle(f"Generalization of the distilled student ({res.task}, {res.n_prompts} prompts, "
                 f"δ = {res.delta:g})")
    save_figure(fig, out / "generalization_rademacher.png")

    fig, axes = new_figure(1, 2, size=(5.8, 4.4))
    ax = axes[0, 0]
    for label, arr_, style in (("empirical loss", res.empirical, "o-"),
                               ("held-out loss", res.heldout, "s-"),
                               ("bound", res.bound, "^-")):
        y = arr_[:, la, h]
        mean = _pmean(y)
        sd = np.nanstd(y, axis=0) if np.isfinite(y).any() else np.full(y.shape[1:], np.nan)
        ax.errorbar(n, mean, yerr=sd, fmt=style, ms=4, capsize=2, label=label)
    ax.axhline(res.loss_bound[la, h], color="grey", ls="--", lw=0.8, label="M (loss range)")
    _log_axes(ax, n)
    ax.set_xlabel("N = number of demonstration tokens")
    ax.set_ylabel("clipped absolute loss (± sd over prompts)")
    ax.set_title(f"layer {la} head {h}")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    with np.errstate(all="ignore"):
        ratio = _pmean(res.bound / res.heldout)
    for layer in range(L):
        for head in range(H):
            ax.plot(n, _positive(ratio[layer, head]), color=colors[layer], lw=0.9, alpha=0.7,
                    label=f"layer {layer}" if head == 0 else None)
    ax.axhline(1.0, color="red", lw=1.0, label="bound = held-out")
    _log_axes(ax, n)
    ax.set_xlabel("N = number of demonstration tokens")
    ax.set_ylabel("bound / held-out loss (prompt mean)")
    ax.set_title(f"bound below held-out in {res.violations} of {res.evaluated} cases")
    ax.legend(fontsize=7)
    save_figure(fig, out / "generalization_losses.png")
    return ["generalization_rademacher.png", "generalization_losses.png"]


# ---------------------------------------------------------------------------------- section
def _fmt_slope(x: float) -> str:
    return f"{x:+.3f}" if math.isfinite(x) else "undefined"


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def run(trained: TrainedICL, *, out_dir: Path, quick: bool = False, seed: int = 0,
        progress: bool = False) -> Section:
    """The generalization-bound experiment as a report section.

    ``quick``: 4 prompts, 8 held-out prompts, 200 sign vectors; otherwise 12 prompts, 32
    held-out prompts, 1000 sign vectors.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = generalization(trained, n_prompts=4 if quick else 12,
                         heldout_prompts=8 if quick else 32,
                         rademacher_samples=200 if quick else 1000, seed=seed,
                         progress=progress)
    with single_thread():
        figures = _figures(res, out)
    return _section(res, figures, seed, time.perf_counter() - t0)


def _section(res: GeneralizationResult, figures: list[str], seed: int,
             seconds: float) -> Section:
    d = _Summary.of(res)
    return Section(
        name="generalization",
        title="Rademacher generalization bound vs number of demonstrations",
        description=_description(res, seed),
        checks=_checks(res, d),
        findings=_findings(res, d),
        tables=_tables(res, d),
        figures=figures,
        data=to_jsonable(_data(res, d)),
        seconds=seconds,
    )


@dataclass(frozen=True)
class _Summary:
    """What the section reads off a :class:`GeneralizationResult`: log-log slopes over N per
    ``[layer, head]`` and prompt means per ``[layer, head, N]``."""

    slope_r: np.ndarray       # R_hat closed form
    slope_mc: np.ndarray      # R_hat Monte Carlo
    slope_c: np.ndarray       # complexity term 2 L R_hat
    slope_s: np.ndarray       # bound - empirical
    slope_g: np.ndarray       # |gap|
    slope_b: np.ndarray       # B = ||W_0||_HS
    slope_rb: np.ndarray      # R_hat / B
    mean_held: np.ndarray
    mean_bound: np.ndarray
    mean_emp: np.ndarray
    mean_gap: np.ndarray
    vacuous: np.ndarray       # bound >= M, per (prompt, layer, head, N)
    fin: np.ndarray           # finite bound, per (prompt, layer, head, N)

    @classmethod
    def of(cls, res: GeneralizationResult) -> _Summary:
        with np.errstate(all="ignore"):
            vacuous = res.bound >= res.loss_bound[None, :, :, None]
        return cls(
            res.slope(res.rademacher_closed), res.slope(res.rademacher_mc),
            res.slope(res.complexity), res.slope(res.bound - res.empirical),
            res.slope(res.gap, absolute=True), res.slope(res.radius),
            res.slope(res.rademacher_closed / res.radius),
            _pmean(res.heldout), _pmean(res.bound), _pmean(res.empirical), _pmean(res.gap),
            vacuous, np.isfinite(res.bound))

    @property
    def fin_g(self) -> np.ndarray:
        """The finite slopes of the gap's magnitude."""
        return self.slope_g[np.isfinite(self.slope_g)]


def _checks(res: GeneralizationResult, d: _Summary) -> list[Check]:
    L, H = res.shape
    la, h = res.representative
    slope_c, slope_s, slope_g, slope_rb = d.slope_c, d.slope_s, d.slope_g, d.slope_rb
    slope_b, fin_g, mean_gap = d.slope_b, d.fin_g, d.mean_gap
    mean_held, mean_bound = d.mean_held, d.mean_bound
    med_c, med_s = _median(slope_c), _median(slope_s)
    viol, total = res.violations, res.evaluated
    heads_close = int((np.abs(slope_c[np.isfinite(slope_c)] + 0.5) <= SLOPE_TOL).sum())
    n_slope = int(np.isfinite(slope_c).sum())
    return [
        Check("the bound is at least the held-out loss for every prompt, head and N",
              bool(total > 0 and viol == 0),
              f"{viol} violations in {total} (prompt, layer, head, N) cases"
              + (f" ({res.skipped} skipped: W_0 norm overflow)" if res.skipped else "")
              + f"; on prompt means: {int((mean_bound < mean_held).sum())} of "
              f"{int(np.isfinite(mean_bound).sum())}"),
        Check("the complexity term 2 L R_hat shrinks like 1/sqrt(N) "
              f"(log-log slope within {SLOPE_TOL} of -0.5, median over heads)",
              bool(math.isfinite(med_c) and abs(med_c + 0.5) <= SLOPE_TOL),
              f"median slope {_fmt_slope(med_c)}; {heads_close} of {n_slope} heads within "
              f"{SLOPE_TOL}; representative head {_fmt_slope(float(slope_c[la, h]))}; "
              f"slope of B = ||W_0||_HS median {_fmt_slope(_median(slope_b))}"),
        Check("at fixed radius, R_hat(F_B) / B shrinks like 1/sqrt(N) "
              f"(log-log slope within {SLOPE_TOL} of -0.5, median over heads)",
              bool(math.isfinite(_median(slope_rb)) and abs(_median(slope_rb) + 0.5) <= SLOPE_TOL),
              f"median slope {_fmt_slope(_median(slope_rb))}, representative head "
              f"{_fmt_slope(float(slope_rb[la, h]))} (R_hat / B = sqrt(sum_i kappa(k_i, k_i)) / N; "
              "-0.5 exactly when the mean of kappa(k_i, k_i) = exp(s ||k_i||^2) does not "
              "change with N)"),
        Check("bound - empirical loss shrinks like 1/sqrt(N) "
              f"(log-log slope within {SLOPE_TOL} of -0.5, median over heads)",
              bool(math.isfinite(med_s) and abs(med_s + 0.5) <= SLOPE_TOL),
              f"median slope {_fmt_slope(med_s)}, representative head "
              f"{_fmt_slope(float(slope_s[la, h]))}"),
        Check("the observed gap |held-out - empirical| shrinks as N grows (negative log-log "
              "slope of the prompt-mean gap's magnitude, majority of heads)",
              bool(fin_g.size > 0 and (fin_g < 0).sum() > (L * H) / 2),
              f"negative in {int((fin_g < 0).sum())} of {L * H} heads (undefined in "
              f"{L * H - fin_g.size}: a zero mean gap); median slope "
              f"{_fmt_slope(_median(slope_g))}; the mean gap is negative (held-out below "
              f"empirical) in {int((mean_gap < 0).sum())} of {mean_gap.size} (head, N) cells"),
    ]


def _findings(res: GeneralizationResult, d: _Summary) -> list[str]:
    L, H = res.shape
    la, h = res.representative
    n = res.n_tokens
    slope_r, slope_mc, slope_b, slope_rb = d.slope_r, d.slope_mc, d.slope_b, d.slope_rb
    mean_emp, mean_held, mean_bound, mean_gap = d.mean_emp, d.mean_held, d.mean_bound, d.mean_gap
    fin, fin_g = d.fin, d.fin_g
    viol, total = res.violations, res.evaluated
    vac_by_n = [int(d.vacuous[..., g][fin[..., g]].sum()) for g in range(len(n))]
    r_ratio = _pmean(res.rademacher_mc / res.rademacher_closed)
    findings = [
        (f"Over all heads, R_hat (closed form) falls with N with median log-log slope "
         f"{_fmt_slope(_median(slope_r))} (Monte Carlo {_fmt_slope(_median(slope_mc))}; "
         f"1/sqrt(N) is -0.5); B = ||W_0||_HS has median slope "
         f"{_fmt_slope(_median(slope_b))}, so R_hat ~ B sqrt(mean kappa(k,k)) / sqrt(N) "
         "deviates from -0.5 by the slope of B; R_hat / B (the fixed-radius complexity) has "
         f"median slope {_fmt_slope(_median(slope_rb))}."),
        (f"The Monte-Carlo estimate is {np.nanmin(r_ratio):.2f}–{np.nanmax(r_ratio):.2f} times "
         "the closed form (Jensen: at most 1 in expectation)."),
        (f"Representative head (layer {la}, head {h}, M = {res.loss_bound[la, h]:.3g}): "
         f"from N = {n[0]} to N = {n[-1]}, empirical loss {mean_emp[la, h, 0]:.3g} -> "
         f"{mean_emp[la, h, -1]:.3g}, held-out {mean_held[la, h, 0]:.3g} -> "
         f"{mean_held[la, h, -1]:.3g}, bound {mean_bound[la, h, 0]:.3g} -> "
         f"{mean_bound[la, h, -1]:.3g}."),
        (f"The bound is below the held-out loss in {viol} of {total} cases."
         + (" It holds everywhere." if viol == 0 and total else "")),
        ("The bound is vacuous (>= M, the largest possible loss) in "
         + ", ".join(f"{v}/{int(fin[..., g].sum())} at N={n[g]}" for g, v in enumerate(vac_by_n))
         + " cases: the confidence term 3 M sqrt(ln(2 d_v/δ)/(2N)) alone exceeds M for "
         f"N <= {4.5 * math.log(2 * res.value_dim / res.delta):.1f}."),
        ("Observed gap (held-out − empirical), mean over heads: "
         + ", ".join(f"{np.nanmean(mean_gap[..., g]):.3g} at N={n[g]}" for g in range(len(n)))
         + f"; the log-log slope of its magnitude is negative in {int((fin_g < 0).sum())} of "
         f"{L * H} heads."),
        (f"Clipping at M touched {100 * np.nanmean(res.clipped_empirical):.2f} % of the "
         f"empirical and {100 * np.nanmean(res.clipped_heldout):.2f} % of the held-out loss "
         "entries; the student's outputs W_0 phi(k_j) at the demonstration keys are "
         f"{_median(res.student_scale):.3g} times the values in median size (median over "
         f"prompts, heads and N; range {np.nanmin(res.student_scale):.3g}–"
         f"{np.nanmax(res.student_scale):.3g})."),
    ]
    if np.nanmean(res.clipped_empirical) > 0.1:
        findings.append(
            "The clipped loss is dominated by the clip: W_0 phi(k_j) = sum_i v_i "
            "kappa(k_i, k_j) / D'_t weighs the demonstration keys by their kernel with k_j "
            "(including kappa(k_j, k_j) = exp(s ||k_j||^2)) but normalises by the query's D'_t, "
            "so at keys more similar to each other than to the query the student's outputs are "
            "much larger than the values. The bound then holds trivially (empirical loss near M)"
            + (" and the observed gap is negative (held-out below empirical)."
               if np.nanmean(mean_gap) < 0 else "."))
    return findings


def _tables(res: GeneralizationResult, d: _Summary) -> list[Table]:
    L, H = res.shape
    la, h = res.representative
    n = res.n_tokens
    fin, vacuous = d.fin, d.vacuous
    mean_emp, mean_held, mean_bound, mean_gap = d.mean_emp, d.mean_held, d.mean_bound, d.mean_gap
    slope_r, slope_mc, slope_b, slope_rb = d.slope_r, d.slope_mc, d.slope_b, d.slope_rb
    slope_c, slope_s, slope_g = d.slope_c, d.slope_s, d.slope_g
    rows = []
    for g in range(len(n)):
        okg = fin[..., g]
        holds_all = int((res.bound[..., g][okg] >= res.heldout[..., g][okg]).sum())
        col = res.bound[:, la, h, g] >= res.heldout[:, la, h, g]
        rows.append((int(n[g]), int(res.pairs[g]),
                     float(_pmean(res.rademacher_closed)[la, h, g]),
                     float(_pmean(res.rademacher_mc)[la, h, g]),
                     float(_pmean(res.radius)[la, h, g]), float(mean_emp[la, h, g]),
                     float(mean_held[la, h, g]), float(mean_gap[la, h, g]),
                     float(_pmean(res.complexity)[la, h, g]),
                     float(_pmean(res.confidence)[la, h, g]), float(mean_bound[la, h, g]),
                     f"{int(col.sum())}/{res.n_prompts}", f"{holds_all}/{int(okg.sum())}"))
    head_rows = tuple(
        (a, b, float(res.loss_bound[a, b]), float(slope_r[a, b]), float(slope_mc[a, b]),
         float(slope_b[a, b]), float(slope_rb[a, b]), float(slope_c[a, b]),
         float(slope_s[a, b]), float(slope_g[a, b]),
         int((res.bound[:, a, b] < res.heldout[:, a, b]).sum()),
         float(np.nanmean(vacuous[:, a, b])), float(np.nanmean(res.clipped_empirical[:, a, b])))
        for a in range(L) for b in range(H))
    return [
        Table(f"Per N, representative head (layer {la}, head {h}); prompt means (N = number of "
              "demonstration tokens, holds = bound >= held-out)",
              ("N (demo tokens)", "pairs i", "R_hat closed", "R_hat MC", "B = ||W_0||_HS",
               "empirical loss", "held-out loss", "gap", "2 L R_hat", "confidence term",
               "bound", "holds (this head)", "holds (all heads)"),
              tuple(rows)),
        Table("Per layer and head: loss range M and log-log slopes over N (-0.5 = 1/sqrt(N))",
              ("layer", "head", "M", "slope R_hat closed", "slope R_hat MC", "slope B",
               "slope R_hat / B", "slope 2 L R_hat", "slope bound - empirical", "slope |gap|",
               "violations", "vacuous fraction", "clipped fraction (empirical)"),
              head_rows),
    ]


def _data(res: GeneralizationResult, d: _Summary) -> dict[str, Any]:
    """The raw numbers of the section (before :func:`to_jsonable`)."""
    viol, total = res.violations, res.evaluated
    slope_r, slope_mc, slope_b, slope_rb = d.slope_r, d.slope_mc, d.slope_b, d.slope_rb
    slope_c, slope_s, slope_g = d.slope_c, d.slope_s, d.slope_g
    return {
        "task": res.task, "n_prompts": res.n_prompts, "n_examples": res.n_examples,
        "pairs": res.pairs, "n_tokens": res.n_tokens, "delta": res.delta,
        "value_dim": res.value_dim, "lipschitz": LIPSCHITZ,
        "loss_range_factor": LOSS_RANGE_FACTOR, "loss_bound_M": res.loss_bound,
        "heldout_prompts": res.heldout_prompts, "rademacher_samples": res.rademacher_samples,
        "representative": list(res.representative), "skipped": res.skipped,
        "radius": res.radius, "rademacher_closed": res.rademacher_closed,
        "rademacher_mc": res.rademacher_mc, "rademacher_mc_stderr": res.rademacher_mc_stderr,
        "empirical_loss": res.empirical, "heldout_loss": res.heldout, "gap": res.gap,
        "complexity_term": res.complexity, "confidence_term": res.confidence,
        "bound": res.bound, "clipped_fraction_empirical": res.clipped_empirical,
        "clipped_fraction_heldout": res.clipped_heldout, "demo_attention_mass": res.demo_mass,
        "student_scale": res.student_scale,
        "violations": viol, "evaluated": total,
        "slopes": {"rademacher_closed": slope_r, "rademacher_mc": slope_mc, "radius": slope_b,
                   "rademacher_over_radius": slope_rb,
                   "complexity_term": slope_c, "bound_minus_empirical": slope_s,
                   "gap": slope_g},
        "compute_seconds": res.seconds,
    }


def _description(res: GeneralizationResult, seed: int) -> str:
    L, H = res.shape
    n = res.n_tokens
    return (
        f"{res.n_prompts} in-distribution {res.task} prompts (N = {res.n_examples} pairs, "
        f"seed {seed}) through a float64 copy of the model ({L} layers x {H} heads). At the "
        f"x_i positions i = {', '.join(str(int(i)) for i in res.pairs)} the student "
        "f(x) = W_0 phi(k(x)) of every head (W_0 in dual form, docs/math.md §2) is "
        "scored against the teacher's values. The sample size of the bound "
        f"is the number of demonstration tokens N ({', '.join(str(int(v)) for v in n)}) those "
        "positions see. Loss: per-coordinate absolute error "
        f"clipped at M (mean over the {res.value_dim} value coordinates; in [0, M], "
        f"1-Lipschitz, L = {LIPSCHITZ:g}), M = {LOSS_RANGE_FACTOR:g} max|v| per head from an "
        "independent calibration batch. Empirical loss: on the N demonstration tokens; "
        "held-out loss: on the demonstration tokens the same position sees in "
        f"{res.heldout_prompts} independent prompts (pooled). R_hat(F_B) with "
        "B = ||W_0||_HS on the N demonstration keys (closed form; "
        f"Monte Carlo with {res.rademacher_samples} sign vectors, exhaustive when 2^N is "
        "not more). Bound = empirical + 2 L R_hat + 3 M sqrt(ln(2 d_v/δ)/(2N)) with "
        f"δ = {res.delta:g} over all d_v coordinates (union bound). Caveats: B is measured "
        "on the sample, and one prompt's demonstration tokens are not i.i.d.")
