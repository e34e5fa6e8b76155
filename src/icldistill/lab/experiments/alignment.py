"""Implicit alignment and domain stationarity in a trained in-context learner (SPEC §2).

On fresh in-distribution prompts of the model's own task (``N = max_examples`` pairs), every
layer, head and query token ``i`` (``i >= 1``, so ``N_t = i`` demonstration keys) is split with
:func:`~icldistill.lab.experiments._common.icl_head_decomposition` (float64 copy of the model):

- ``eta*_t = N_t / (2 D'_t)`` and ``log D'_t``, the mean query–demonstration logit and the
  demonstrations' share ``||c_D|| / (||c_D|| + ||c_Q||)`` of the head output;
- the decomposition error ``max |c_D + c_Q - o_t|`` against the model's own attention output
  (``trace.layers[l].output``; float precision expected);
- **implicit alignment**: one distillation step with ``eta*`` from ``W = 0`` gives ``W_0``
  (:func:`~icldistill.core.decomposition.distillation_step`; relative distance ~ 0), while ``0.5
  eta*``
  and ``2 eta*`` do not (relative distances 0.5 and 1: the step size is specific);
- Jensen's inequality ``log(D'_t / n_t) >= mean_j l_tj`` (violations counted);
- **domain stationarity**: per head, the Spearman (and Pearson) correlation between
  ``log eta*`` and the mean query–demonstration logit over all prompts and positions, plus a
  within-position version (per-position means removed, since ``N_t`` changes along the prompt).
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

from icldistill.artifacts.figures import (
    heatmap,
    layer_colorbar,
    layer_colors,
    new_figure,
    save_figure,
)
from icldistill.artifacts.store import to_jsonable
from icldistill.core.decomposition import distillation_step
from icldistill.core.results import Result
from icldistill.core.stats import spearman
from icldistill.core.util import single_thread
from icldistill.core.validation import InputError
from icldistill.lab.experiments._common import (
    Check,
    Section,
    Table,
    icl_head_decomposition,
    query_token,
)
from icldistill.lab.synthetic import icl_batch
from icldistill.lab.training import TrainedICL

__all__ = ["AlignmentResult", "alignment", "run"]

#: Tolerance of the Jensen check (float64 rounding of logsumexp and of the mean).
JENSEN_TOL = 1e-10
#: Step-size multipliers compared with ``eta*`` (the "specificity" contrast).
CONTRAST = (0.5, 2.0)


@dataclass(frozen=True)
class AlignmentResult(Result):
    """Per-position quantities of every head on ``P`` prompts (``L`` layers, ``H`` heads,
    positions ``i = 1 .. N-1``).

    Attributes
    ----------
    task : str
    n_examples : int
        ``N`` pairs per prompt.
    positions : ndarray ``[N-1]``
        Example index ``i`` of each position (``N_t = i`` demonstration keys).
    eta : ndarray ``[P, L, H, N-1]``
        ``eta*_t = N_t / (2 D'_t)``.
    log_normalizer : ndarray ``[P, L, H, N-1]``
        ``log D'_t``.
    mean_demo_logit : ndarray ``[P, L, H, N-1]``
        Mean logit of the query over the demonstration keys.
    mean_logit : ndarray ``[P, L, H, N-1]``
        Mean logit over all ``n_t = i + 1`` attended keys (Jensen).
    demo_share : ndarray ``[P, L, H, N-1]``
        ``||c_D|| / (||c_D|| + ||c_Q||)``.
    decomposition_error : ndarray ``[L, H]``
        ``max |c_D + c_Q - o_t|`` over prompts, positions and coordinates (model's own ``o_t``).
    alignment_distance : ndarray ``[P, L, H, N-1]``
        ``||W_1 - W_0||_HS / ||W_0||_HS`` after one step with ``eta*``.
    contrast_distance : dict[str, ndarray ``[L, H]``]
        Smallest relative distance with ``0.5 eta*`` / ``2 eta*`` (keys ``"0.5"``, ``"2"``) over
        the positions where it was computed.
    contrast_positions : int
        Number of (prompt, position) pairs per head where the contrast was computed.
    jensen_slack : ndarray ``[P, L, H, N-1]``
        ``log(D'_t / n_t) - mean_logit`` (Jensen: ``>= 0``).
    jensen_violations : int
        Entries with ``jensen_slack < -JENSEN_TOL``.
    stationarity_spearman, stationarity_pearson : ndarray ``[L, H]``
        Correlation of ``log eta*`` with ``mean_demo_logit`` over all prompts and positions.
    stationarity_within : ndarray ``[L, H]``
        Spearman correlation after removing the per-position means of both quantities.
    trace_prediction_error : float
        ``max |trace.predictions - model(xs, ys)|`` (tracing must not change the output).
    seconds : float
    """

    task: str
    n_examples: int
    positions: np.ndarray
    eta: np.ndarray
    log_normalizer: np.ndarray
    mean_demo_logit: np.ndarray
    mean_logit: np.ndarray
    demo_share: np.ndarray
    decomposition_error: np.ndarray
    alignment_distance: np.ndarray
    contrast_distance: dict[str, np.ndarray]
    contrast_positions: int
    jensen_slack: np.ndarray
    jensen_violations: int
    stationarity_spearman: np.ndarray
    stationarity_pearson: np.ndarray
    stationarity_within: np.ndarray
    trace_prediction_error: float
    seconds: float

    @property
    def n_prompts(self) -> int:
        return int(self.eta.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(L, H)``."""
        return int(self.eta.shape[1]), int(self.eta.shape[2])


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def alignment(
    trained: TrainedICL,
    *,
    n_prompts: int = 8,
    seed: int = 0,
    contrast_prompts: int = 1,
    progress: bool = False,
) -> AlignmentResult:
    """Measure ``eta*``, the demo share, the decomposition error, implicit alignment, Jensen's
    inequality and domain stationarity at every layer, head and query token.

    Parameters
    ----------
    trained : TrainedICL
    n_prompts : int
        Fresh in-distribution prompts (task ``trained.config.task``, ``N = max_examples``).
    seed : int
        Seed of the prompts.
    contrast_prompts : int
        The ``0.5 eta*`` / ``2 eta*`` contrast is computed at every position of the first
        ``contrast_prompts`` prompts and at the last position of every prompt (the ``eta*``
        step itself at every position of every prompt).
    progress : bool
        Show a progress bar over prompts.
    """
    if int(n_prompts) < 1:
        raise InputError(f"n_prompts must be >= 1, got {n_prompts}")
    t0 = time.perf_counter()
    cfg = trained.config
    N = cfg.max_examples
    if N < 2:
        raise InputError("the model must take at least 2 examples (no demonstrations otherwise)")
    with single_thread():
        return _alignment(trained, int(n_prompts), int(seed), int(contrast_prompts), progress,
                          t0)


def _alignment(trained: TrainedICL, n_prompts: int, seed: int, contrast_prompts: int,
               progress: bool, t0: float) -> AlignmentResult:
    cfg = trained.config
    N = cfg.max_examples
    model = copy.deepcopy(trained.model).double().eval()
    batch = icl_batch(cfg.task, n_prompts, N, cfg.d_x, seed, dtype=torch.float64)
    with torch.no_grad():
        trace = model.trace(batch.xs, batch.ys)
        plain = model(batch.xs, batch.ys)
    pred_err = float((trace.predictions - plain).abs().max())
    P, L, H, n_pos = n_prompts, cfg.n_layers, cfg.n_heads, N - 1
    shape = (P, L, H, n_pos)
    eta, logn, mdl, ml, share, adist, slack = (np.full(shape, np.nan) for _ in range(7))
    dec_err = np.zeros((L, H))
    contrast = {f"{m:g}": np.full((L, H), np.inf) for m in CONTRAST}
    n_contrast = 0
    from icldistill.core.progress import progress_bar

    for b in progress_bar(range(P), desc="alignment", enabled=progress):
        for layer in range(L):
            own = trace.layers[layer].output
            for head in range(H):
                for ii, i in enumerate(range(1, N)):
                    dec = icl_head_decomposition(trace, b, layer, head, i)
                    o = own[b, head, query_token(trace, i)].detach().to(torch.float64)
                    dec_err[layer, head] = max(dec_err[layer, head],
                                               float((dec.output[0] - o).abs().max()))
                    eta[b, layer, head, ii] = float(dec.eta[0])
                    logn[b, layer, head, ii] = float(dec.log_normalizer[0])
                    mdl[b, layer, head, ii] = float(dec.mean_demo_logit[0])
                    ml[b, layer, head, ii] = float(dec.mean_logit[0])
                    slack[b, layer, head, ii] = (float(dec.log_normalizer[0])
                                                 - math.log(int(dec.num_keys[0]))
                                                 - float(dec.mean_logit[0]))
                    cd = float(dec.components["demos"][0].norm())
                    cq = float(dec.components["query"][0].norm())
                    share[b, layer, head, ii] = cd / (cd + cq) if cd + cq > 0 else float("nan")
                    w0 = dec.w0(0)
                    step = distillation_step(w0)
                    adist[b, layer, head, ii] = step.relative_distance
                    if b < contrast_prompts or i == N - 1:
                        for m in CONTRAST:
                            d = distillation_step(w0, m * step.eta_star).relative_distance
                            key = f"{m:g}"
                            contrast[key][layer, head] = min(contrast[key][layer, head], d)
        n_contrast += n_pos if b < contrast_prompts else 1
    violations = int((slack < -JENSEN_TOL).sum())
    sp, pe, within = (np.full((L, H), np.nan) for _ in range(3))
    log_eta = np.log(eta)
    for layer in range(L):
        for head in range(H):
            x = mdl[:, layer, head].ravel()
            y = log_eta[:, layer, head].ravel()
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() >= 3:
                sp[layer, head] = spearman(x[ok], y[ok])
                pe[layer, head] = _pearson(x[ok], y[ok])
            if P >= 2:
                xr = (mdl[:, layer, head] - mdl[:, layer, head].mean(0)).ravel()
                yr = (log_eta[:, layer, head] - log_eta[:, layer, head].mean(0)).ravel()
                ok = np.isfinite(xr) & np.isfinite(yr)
                if ok.sum() >= 3:
                    within[layer, head] = spearman(xr[ok], yr[ok])
    return AlignmentResult(
        task=cfg.task, n_examples=N, positions=np.arange(1, N), eta=eta, log_normalizer=logn,
        mean_demo_logit=mdl, mean_logit=ml, demo_share=share, decomposition_error=dec_err,
        alignment_distance=adist, contrast_distance=contrast, contrast_positions=n_contrast,
        jensen_slack=slack, jensen_violations=violations, stationarity_spearman=sp,
        stationarity_pearson=pe, stationarity_within=within, trace_prediction_error=pred_err,
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------------- figures
def _wide(x: np.ndarray) -> bool:
    """Whether positive values span more than a decade (then a log scale helps)."""
    x = x[np.isfinite(x)]
    return bool(x.size and (x > 0).all() and x.max() > 10 * x.min())


def _figures(res: AlignmentResult, out: Path) -> list[str]:
    L, H = res.shape
    colors = layer_colors(L)
    fig, axes = new_figure(1, 2, size=(5.6, 4.2))
    heatmap(axes[0, 0], res.eta[..., -1].mean(0),
             f"mean η* at the last query (N_t = {res.n_examples - 1})", "η*", fig,
             log=_wide(res.eta[..., -1].mean(0)))
    axes[0, 0].set_xticks(range(H))
    axes[0, 0].set_yticks(range(L))
    ax = axes[0, 1]
    pos = res.positions
    for layer in range(L):
        for head in range(H):
            ax.plot(pos, res.eta[:, layer, head].mean(0), color=colors[layer], lw=0.7, alpha=0.4)
        ax.plot(pos, res.eta[:, layer].mean((0, 1)), color=colors[layer], lw=2.2,
                label=f"layer {layer} (mean of heads)")
    if _wide(res.eta.mean(0)):
        ax.set_yscale("log")
    ax.set_xlabel("number of in-context examples i (N_t = i demo tokens)")
    ax.set_ylabel("η* = N_t / (2 D'_t)")
    ax.set_title("η* along the prompt (thin: single heads)")
    ax.legend(fontsize=8)
    fig.suptitle(f"Effective learning rate η*, {res.n_prompts} {res.task} prompts")
    save_figure(fig, out / "alignment_eta.png")

    fig, axes = new_figure(1, 1, size=(6.4, 4.6))
    ax = axes[0, 0]
    for layer in range(L):
        ax.scatter(res.mean_demo_logit[:, layer].ravel(), np.log(res.eta[:, layer]).ravel(),
                   s=6, alpha=0.35, color=colors[layer], edgecolors="none")
    layer_colorbar(fig, ax, L)
    st = res.stationarity_spearman[np.isfinite(res.stationarity_spearman)]
    ax.set_xlabel("mean query–demonstration logit  mean_j s⟨q_t, k_j⟩")
    ax.set_ylabel("log η*")
    ax.set_title(f"Domain stationarity: Spearman < 0 in {int((st < 0).sum())} of {st.size} "
                 f"heads (median {np.median(st) if st.size else float('nan'):+.2f})")
    save_figure(fig, out / "alignment_stationarity.png")
    return ["alignment_eta.png", "alignment_stationarity.png"]


# ---------------------------------------------------------------------------------- section
def run(trained: TrainedICL, *, out_dir: Path, quick: bool = False, seed: int = 0,
        progress: bool = False) -> Section:
    """The implicit-alignment / domain-stationarity experiment as a report section.

    ``quick``: 4 prompts, contrast step sizes on the first prompt (and every last position);
    otherwise 16 prompts and the contrast on the first 4 prompts.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with single_thread():
        res = alignment(trained, n_prompts=4 if quick else 16, seed=seed,
                        contrast_prompts=1 if quick else 4, progress=progress)
        figures = _figures(res, out)
    sm = _Summary.of(res)
    return Section(
        name="alignment",
        title="Implicit alignment and domain stationarity",
        description=_description(res, seed),
        checks=_checks(res, sm),
        findings=_findings(res, sm),
        tables=_tables(res, sm),
        figures=figures,
        data=to_jsonable(_data(res)),
        seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class _Summary:
    """The numbers the checks, findings and table share."""

    eta_last: np.ndarray        # [L, H] mean eta* at the last position
    share_mean: np.ndarray      # [L, H] mean demo share
    max_dec: float
    max_align: float
    half: np.ndarray            # [L, H] relative distance with 0.5 eta*
    double: np.ndarray          # [L, H] ... with 2 eta*
    st: np.ndarray              # [L, H] stationarity Spearman
    fin: np.ndarray             # [L, H] where it is finite
    neg: int                    # heads with a negative Spearman

    @classmethod
    def of(cls, res: AlignmentResult) -> _Summary:
        st = res.stationarity_spearman
        fin = np.isfinite(st)
        return cls(eta_last=res.eta[..., -1].mean(0),
                   share_mean=np.nanmean(res.demo_share, axis=(0, 3)),
                   max_dec=float(res.decomposition_error.max()),
                   max_align=float(np.nanmax(res.alignment_distance)),
                   half=res.contrast_distance["0.5"], double=res.contrast_distance["2"],
                   st=st, fin=fin, neg=int((st[fin] < 0).sum()))


def _checks(res: AlignmentResult, sm: _Summary) -> list[Check]:
    L, H = res.shape
    min_contrast = float(min(sm.half.min(), sm.double.min()))
    neg_p = int((res.stationarity_pearson[np.isfinite(res.stationarity_pearson)] < 0).sum())
    wi = res.stationarity_within[np.isfinite(res.stationarity_within)]
    fin, neg = sm.fin, sm.neg
    return [
        Check("the segment decomposition c_D + c_Q reproduces the model's attention output "
              "(float64)", bool(sm.max_dec < 1e-10),
              f"max abs error {sm.max_dec:.1e} over {res.n_prompts} prompts x {L}x{H} heads x "
              f"{len(res.positions)} positions"),
        Check("tracing does not change the model's predictions",
              bool(res.trace_prediction_error == 0),
              f"max |trace - forward| = {res.trace_prediction_error:.1e}"),
        Check("implicit alignment: one distillation step with eta* from W = 0 gives W_0",
              bool(sm.max_align < 1e-10), f"max ||W_1 - W_0|| / ||W_0|| = {sm.max_align:.1e} "
              f"at every prompt, layer, head and position"),
        Check("the step size is specific: 0.5 eta* and 2 eta* do not give W_0",
              bool(min_contrast > 0.1),
              f"smallest relative distance {float(sm.half.min()):.3f} (0.5 eta*) and "
              f"{float(sm.double.min()):.3f} (2 eta*) over {res.contrast_positions} positions "
              "per head"),
        Check("Jensen: log(D'_t / n_t) >= mean logit at every position",
              bool(res.jensen_violations == 0),
              f"{res.jensen_violations} violations in {res.jensen_slack.size} head-positions; "
              f"min slack {float(np.nanmin(res.jensen_slack)):.2e}"),
        Check("domain stationarity: eta* falls as the query-demonstration logit rises "
              "(Spearman < 0) in a majority of heads",
              bool(fin.sum() > 0 and neg > fin.sum() / 2),
              f"negative in {neg} of {int(fin.sum())} heads (Pearson of log eta*: {neg_p}; "
              f"within-position: {int((wi < 0).sum())} of {wi.size})"),
    ]


def _findings(res: AlignmentResult, sm: _Summary) -> list[str]:
    L, H = res.shape
    st, fin, eta_last, share_mean = sm.st, sm.fin, sm.eta_last, sm.share_mean
    pos_heads = [f"L{la}H{h} ({st[la, h]:+.2f})" for la in range(L) for h in range(H)
                 if fin[la, h] and st[la, h] >= 0]
    top = np.unravel_index(int(np.argmax(share_mean)), share_mean.shape)
    lo = np.unravel_index(int(np.argmin(eta_last)), eta_last.shape)
    hi = np.unravel_index(int(np.argmax(eta_last)), eta_last.shape)
    trend = res.eta.mean((0, 2))  # [L, N-1]
    return [
        f"Mean eta* at the last query ranges from {eta_last[lo]:.3g} (layer {lo[0]} head "
        f"{lo[1]}) to {eta_last[hi]:.3g} (layer {hi[0]} head {hi[1]}).",
        "Along the prompt, the layer-mean eta* goes " + "; ".join(
            f"layer {la}: {trend[la, 0]:.3g} (i=1) -> {trend[la, -1]:.3g} (i={res.n_examples - 1})"
            for la in range(L)) + ".",
        f"The demonstrations' share of the head output (mean over prompts and positions) is "
        f"{share_mean.mean():.2f} on average, largest at layer {top[0]} head {top[1]} "
        f"({share_mean[top]:.2f}).",
        f"One step with eta* reproduces W_0 to {sm.max_align:.1e} (relative), while 0.5 eta* "
        f"and 2 eta* miss it by at least {float(sm.half.min()):.2f} and "
        f"{float(sm.double.min()):.2f}.",
        (f"Domain stationarity holds (negative Spearman of log eta* vs the mean "
         f"query-demonstration logit) in {sm.neg} of {int(fin.sum())} heads"
         + (f"; it fails in {', '.join(pos_heads)}." if pos_heads else ", i.e. in every head.")),
        f"Jensen's inequality has {res.jensen_violations} violations in "
        f"{res.jensen_slack.size} head-positions.",
    ]


def _tables(res: AlignmentResult, sm: _Summary) -> list[Table]:
    L, H = res.shape
    rows = tuple(
        (la, h, float(sm.eta_last[la, h]), float(np.nanmean(res.eta[:, la, h])),
         float(sm.share_mean[la, h]), float(sm.st[la, h]),
         float(res.stationarity_pearson[la, h]), float(res.stationarity_within[la, h]),
         float(res.decomposition_error[la, h]),
         float(np.nanmax(res.alignment_distance[:, la, h])), float(sm.half[la, h]),
         float(sm.double[la, h]))
        for la in range(L) for h in range(H))
    return [Table(
        "Per layer and head (eta* at the last position and over all positions; correlations of "
        "log eta* with the mean query-demo logit)",
        ("layer", "head", "mean eta* (last)", "mean eta* (all)", "demo share",
         "Spearman(log eta*, logit)", "Pearson(log eta*, logit)", "Spearman within-position",
         "max decomposition error", "max alignment rel. distance", "rel. distance 0.5 eta*",
         "rel. distance 2 eta*"),
        rows)]


def _data(res: AlignmentResult) -> dict[str, Any]:
    return {
        "task": res.task, "n_prompts": res.n_prompts, "n_examples": res.n_examples,
        "positions": res.positions, "eta": res.eta, "log_normalizer": res.log_normalizer,
        "mean_demo_logit": res.mean_demo_logit, "mean_logit": res.mean_logit,
        "demo_share": res.demo_share, "decomposition_error": res.decomposition_error,
        "alignment_distance": res.alignment_distance,
        "contrast_distance": res.contrast_distance,
        "contrast_positions": res.contrast_positions, "jensen_slack": res.jensen_slack,
        "jensen_violations": res.jensen_violations,
        "stationarity_spearman": res.stationarity_spearman,
        "stationarity_pearson": res.stationarity_pearson,
        "stationarity_within": res.stationarity_within,
        "trace_prediction_error": res.trace_prediction_error, "compute_seconds": res.seconds,
    }


def _description(res: AlignmentResult, seed: int) -> str:
    L, H = res.shape
    return (
        f"{res.n_prompts} fresh in-distribution {res.task} prompts (N = {res.n_examples} "
        f"pairs, seed {seed}) through a float64 copy of the trained model ({L} layers x "
        f"{H} heads). At every query token i (i = 1..{res.n_examples - 1}; demonstrations "
        "= the i demonstration tokens it sees, query = its own token) each head is split "
        "into c_D + c_Q; "
        "eta* = N_t/(2 D'_t), log D'_t, the mean query-demonstration logit and the demo "
        "share ||c_D||/(||c_D||+||c_Q||) are recorded; one distillation step from W = 0 "
        "with eta* is compared with W_0 (and with 0.5 eta*, 2 eta* at every position of "
        "the first prompts and the last position of all). Stationarity: Spearman / Pearson "
        "of log eta* vs the mean query-demonstration logit per head over all prompts and "
        "positions, and within positions (per-position means removed).")
