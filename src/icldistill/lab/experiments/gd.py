"""In-context learning against gradient descent and least squares (after von Oswald et al., 2023
and Garg et al., 2022), on a trained in-context learner.

On fresh noiseless in-distribution prompts of the model's task (``N = max_examples`` pairs), the
transformer's prediction at ``x_n`` (made from the ``n`` pairs before it) is compared, for every
``n = 1 .. N-1``, with linear estimators fitted on the same ``n`` pairs and evaluated at ``x_n``:

- ``zero``: the predictor ``0`` (for classification ``sign(0) = +1``, i.e. always ``+1``);
- ``gd1``, ``gd5``, ``gd50`` (the step counts of ``GD_STEPS``): ``K`` steps of gradient descent
  from ``w = 0`` on ``L(w) = (1 / 2n) ||y - X w||^2``; one step gives
  ``w_1 = (eta / n) X^T y``, i.e. the prediction ``(eta / n) sum_i y_i <x_i, x_q>``. ``K`` steps
  are computed in closed form in the eigenbasis of ``H = X^T X / n``:
  ``w_K = V diag((1 - (1 - eta lambda)^K) / lambda) V^T (X^T y / n)`` (``eta K`` where
  ``lambda = 0``). **The step size is tuned per n and per method**: the value of ``ETA_GRID``
  (log-spaced) with the smallest mean squared error on a separate validation batch of the same
  task, then frozen and applied to the evaluation prompts. For ``K >= 2`` steps the search is
  restricted to ``eta <= 2 / lambda*``, ``lambda*`` the largest curvature
  ``lambda_max(X^T X / n)`` over the validation and evaluation contexts (inputs only, no
  labels), so that GD is stable on every prompt (``|1 - eta lambda| <= 1``); without this cap a
  step size tuned on the validation prompts diverges on the rare evaluation prompts with a
  larger curvature and their ``|1 - eta lambda|^K`` growth dominates every mean (one step from
  0 cannot diverge and is not capped);
- ``least_squares``: the minimum-norm least-squares solution ``X^+ y`` (pseudo-inverse in the same
  eigenbasis; eigenvalues below ``PINV_RTOL * lambda_max`` are treated as 0) — the limit of GD
  from 0 as ``K -> inf``.

Regression: normalised squared error ``(f - y)^2 / d_x`` (the zero predictor scores about 1) and
the normalised squared distance between the transformer's and each method's predictions,
``(f_TF - f_m)^2 / d_x``. Classification: the methods predict ``sign`` of the same linear
estimates (``y = ±1`` as regression targets, step sizes tuned by the squared error against the
labels, the transformer's own training loss); accuracy of ``sign(f)`` and, as the distance, the
rate at which ``sign(f_TF)`` and ``sign(f_m)`` disagree.
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

from icldistill.artifacts.figures import new_figure, save_figure
from icldistill.artifacts.store import to_jsonable
from icldistill.core.results import Result
from icldistill.core.stats import spearman
from icldistill.core.util import single_thread, sub_seeds
from icldistill.core.validation import InputError
from icldistill.lab.experiments._common import Check, Section, Table
from icldistill.lab.synthetic import (
    PINV_RTOL,
    context_spectrum,
    gd_predictions,
    icl_batch,
    least_squares_predictions,
)
from icldistill.lab.training import TrainedICL

__all__ = [
    "ETA_GRID",
    "GDComparison",
    "gd_comparison",
    "gd_predictions",
    "least_squares_predictions",
    "run",
    "tune_eta",
]

#: Numbers of gradient steps compared (each a method ``gd{K}``).
GD_STEPS = (1, 5, 50)
#: Step sizes searched on the validation batch (log-spaced, ratio ~1.1).
ETA_GRID = tuple(float(x) for x in np.geomspace(1e-3, 10.0, 97))
#: Spearman correlation the "error decreases with n" check requires (sign flipped for accuracy).
SPEARMAN_MIN = 0.5


def tune_eta(xs: torch.Tensor, ys: torch.Tensor, queries: torch.Tensor, targets: torch.Tensor,
             steps: int, grid: Any = ETA_GRID, *,
             max_eta: float | None = None) -> tuple[float, float]:
    """The step size of ``grid`` with the smallest mean squared error of
    :func:`gd_predictions` against ``targets [P]`` (a line search on a validation batch).

    ``max_eta`` restricts the search to ``eta <= max_eta`` (the smallest grid value is always
    kept).

    Returns
    -------
    (eta, mse)
    """
    grid = np.asarray(grid, dtype=np.float64)
    if max_eta is not None:
        grid = grid[(grid <= max_eta) | (np.arange(grid.size) == 0)]
    preds = gd_predictions(xs, ys, queries, grid, steps)
    mse = ((preds - targets[None]) ** 2).mean(-1)
    mse = torch.where(torch.isfinite(mse), mse, torch.full_like(mse, math.inf))
    k = int(torch.argmin(mse))
    return float(grid[k]), float(mse[k])


# ---------------------------------------------------------------------------------- result
@dataclass(frozen=True)
class GDComparison(Result):
    """Transformer vs linear estimators at every number of in-context examples.

    Attributes
    ----------
    task : str
    d_x : int
    n_examples : int
        ``N`` pairs per prompt.
    n : ndarray ``[N-1]``
        Numbers of in-context examples ``1 .. N-1``.
    methods : tuple of str
        ``("transformer", "zero", "gd1", ..., "least_squares")``.
    predictions : dict[str, ndarray ``[P, N-1]``]
        Each method's prediction at ``x_n`` on the evaluation prompts.
    targets : ndarray ``[P, N-1]``
        ``y_n``.
    error : dict[str, ndarray ``[N-1]``]
        Regression: mean ``(f - y)^2 / d_x``; classification: error rate of ``sign(f)``.
    error_sem : dict[str, ndarray ``[N-1]``]
        Standard error of the mean over prompts.
    accuracy : dict[str, ndarray ``[N-1]``] or None
        Classification only: accuracy of ``sign(f)``.
    distance : dict[str, ndarray ``[N-1]``]
        Transformer vs method: mean ``(f_TF - f_m)^2 / d_x`` (regression) or sign-disagreement
        rate (classification); no ``"transformer"`` entry.
    eta : dict[str, ndarray ``[N-1]``]
        Tuned step size per ``n`` of every GD method.
    eta_at_edge : dict[str, ndarray ``[N-1]``] of bool
        Whether the tuned step size is the smallest or the largest value searched (the grid's
        end or, for ``K >= 2``, the stability cap).
    eta_cap : ndarray ``[N-1]``
        Stability cap ``2 / lambda*`` of the ``K >= 2`` searches.
    validation_prompts : int
    seconds : float
    """

    task: str
    d_x: int
    n_examples: int
    n: np.ndarray
    methods: tuple[str, ...]
    predictions: dict[str, np.ndarray]
    targets: np.ndarray
    error: dict[str, np.ndarray]
    error_sem: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray] | None
    distance: dict[str, np.ndarray]
    eta: dict[str, np.ndarray]
    eta_at_edge: dict[str, np.ndarray]
    eta_cap: np.ndarray
    validation_prompts: int
    seconds: float

    @property
    def n_prompts(self) -> int:
        return int(self.targets.shape[0])

    @property
    def baselines(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m != "transformer")

    def closest(self) -> list[str]:
        """Per ``n``, the method whose predictions are closest to the transformer's."""
        d = np.stack([self.distance[m] for m in self.baselines])
        return [self.baselines[int(k)] for k in np.argmin(d, axis=0)]


LABELS = {"transformer": "transformer", "zero": "zero predictor",
          "least_squares": "least squares"}


def _label(m: str) -> str:
    return LABELS.get(m, f"{m[2:]}-step GD" if m.startswith("gd") else m)


def gd_comparison(
    trained: TrainedICL,
    *,
    n_prompts: int = 1024,
    validation_prompts: int = 1024,
    steps: tuple[int, ...] = GD_STEPS,
    seed: int = 0,
    progress: bool = False,
) -> GDComparison:
    """Compare the transformer's in-context predictions with GD and least squares.

    Parameters
    ----------
    trained : TrainedICL
    n_prompts : int
        Evaluation prompts (noiseless, in-distribution, ``N = max_examples`` pairs).
    validation_prompts : int
        Separate prompts on which the GD step sizes are tuned (per ``n`` and method).
    steps : tuple of int
        GD step counts compared.
    seed : int
        Seed of the evaluation and validation prompts.
    progress : bool
        Show a progress bar over ``n``.
    """
    for name, value in (("n_prompts", n_prompts), ("validation_prompts", validation_prompts)):
        if int(value) != value or int(value) < 2:
            raise InputError(f"{name} must be an integer >= 2, got {value!r}")
    steps = tuple(int(k) for k in steps)
    if not steps or min(steps) < 1 or len(set(steps)) != len(steps):
        raise InputError(f"steps must be distinct positive integers, got {steps!r}")
    cfg = trained.config
    if cfg.max_examples < 2:
        raise InputError("the model must take at least 2 examples")
    t0 = time.perf_counter()
    with single_thread():
        return _compare(trained, int(n_prompts), int(validation_prompts), steps, int(seed),
                        progress, t0)


def _compare(trained: TrainedICL, P: int, P_val: int, steps: tuple[int, ...], seed: int,
             progress: bool, t0: float) -> GDComparison:
    cfg = trained.config
    N, d, task = cfg.max_examples, cfg.d_x, cfg.task
    s_eval, s_val = sub_seeds(seed, 2)
    ev = icl_batch(task, P, N, d, s_eval, dtype=torch.float64)
    va = icl_batch(task, P_val, N, d, s_val, dtype=torch.float64)
    model = copy.deepcopy(trained.model).double().eval()
    with torch.no_grad():
        tf = model(ev.xs, ev.ys)                                            # [P, N]
    gd_names = [f"gd{k}" for k in steps]
    methods = ("transformer", "zero", *gd_names, "least_squares")
    ns = np.arange(1, N)
    preds = {m: np.zeros((P, N - 1)) for m in methods}
    preds["transformer"] = tf[:, 1:].numpy()
    eta = {m: np.zeros(N - 1) for m in gd_names}
    edge = {m: np.zeros(N - 1, dtype=bool) for m in gd_names}
    cap = np.zeros(N - 1)
    from icldistill.core.progress import progress_bar

    for j, n in enumerate(progress_bar(ns, desc="gd", enabled=progress)):
        n = int(n)
        xe, ye, qe = ev.xs[:, :n], ev.ys[:, :n], ev.xs[:, n]
        xv, yv, qv, tv = va.xs[:, :n], va.ys[:, :n], va.xs[:, n], va.ys[:, n]
        lam_star = max(float(context_spectrum(xe, ye)[0][:, -1].max()),
                       float(context_spectrum(xv, yv)[0][:, -1].max()))
        cap[j] = 2.0 / lam_star
        allowed = [x for x in ETA_GRID if x <= cap[j]]
        searched_max = allowed[-1] if allowed else ETA_GRID[0]
        for k, m in zip(steps, gd_names, strict=True):
            e, _ = tune_eta(xv, yv, qv, tv, k, max_eta=cap[j] if k > 1 else None)
            eta[m][j] = e
            edge[m][j] = e in (ETA_GRID[0], ETA_GRID[-1] if k == 1 else searched_max)
            preds[m][:, j] = gd_predictions(xe, ye, qe, [e], k)[0].numpy()
        preds["least_squares"][:, j] = least_squares_predictions(xe, ye, qe).numpy()
    y = ev.ys[:, 1:].numpy()
    error, sem, dist = {}, {}, {}
    acc = {} if task == "classification" else None

    def sign(f: np.ndarray) -> np.ndarray:
        return np.where(f >= 0, 1.0, -1.0)

    for m in methods:
        f = preds[m]
        if task == "regression":
            per = (f - y) ** 2 / d
        else:
            per = (sign(f) != y).astype(np.float64)
            acc[m] = 1.0 - per.mean(0)
        error[m] = per.mean(0)
        sem[m] = per.std(0, ddof=1) / math.sqrt(P)
        if m != "transformer":
            ft = preds["transformer"]
            dist[m] = (((ft - f) ** 2 / d) if task == "regression"
                       else (sign(ft) != sign(f)).astype(np.float64)).mean(0)
    return GDComparison(task=task, d_x=d, n_examples=N, n=ns, methods=methods,
                        predictions=preds, targets=y, error=error, error_sem=sem, accuracy=acc,
                        distance=dist, eta=eta, eta_at_edge=edge, eta_cap=cap,
                        validation_prompts=P_val,
                        seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------- figures
_STYLE = {"transformer": ("k", "o-"), "zero": ("grey", "--"), "least_squares": ("tab:red", "s-")}
_GD_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")


def _style(res: GDComparison, m: str) -> tuple[str, str]:
    if m in _STYLE:
        return _STYLE[m]
    k = [x for x in res.methods if x.startswith("gd")].index(m)
    return _GD_COLORS[k % len(_GD_COLORS)], "^-"


def _figures(res: GDComparison, out: Path) -> list[str]:
    from matplotlib.ticker import MaxNLocator

    reg = res.task == "regression"
    fig, axes = new_figure(1, 1, size=(7.0, 4.6))
    ax = axes[0, 0]
    for m in res.methods:
        color, style = _style(res, m)
        y = res.error[m] if reg else res.accuracy[m]
        ax.plot(res.n, y, style, color=color, ms=3.5, lw=2.0 if m == "transformer" else 1.2,
                label=_label(m))
        ax.fill_between(res.n, y - 2 * res.error_sem[m], y + 2 * res.error_sem[m], color=color,
                        alpha=0.12, lw=0)
    ax.axvline(res.d_x, color="grey", lw=0.8, ls=":", label=f"n = d = {res.d_x}")
    ax.set_xlabel("number of in-context examples n")
    if reg:
        top = 1.3 * max(float(np.max(res.error["zero"])), 1e-12)
        ax.set_ylim(0, max(top, 1.1 * float(np.max(res.error["transformer"]))))
        ax.set_ylabel("normalised squared error (f − y)² / d")
    else:
        ax.set_ylim(0.4, 1.0)
        ax.set_ylabel("accuracy of sign(f)")
    ax.set_title(f"In-context {res.task}: transformer vs linear estimators "
                 f"({res.n_prompts} prompts, ±2 SEM)")
    ax.legend(fontsize=8, loc="upper right" if reg else "lower right")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, out / "gd_error.png")

    fig, axes = new_figure(1, 1, size=(7.0, 4.6))
    ax = axes[0, 0]
    for m in res.baselines:
        color, style = _style(res, m)
        y = np.asarray(res.distance[m], dtype=np.float64)
        ax.plot(res.n, np.where(y > 0, y, np.nan) if reg else y, style, color=color, ms=3.5,
                label=_label(m))
    ax.axvline(res.d_x, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("number of in-context examples n")
    if reg:
        ax.set_yscale("log")
        ax.set_ylabel("mean (f_TF − f_method)² / d")
    else:
        ax.set_ylabel("sign disagreement rate with the transformer")
    ax.set_title("Distance between the transformer's predictions and each method's")
    ax.legend(fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, out / "gd_distance.png")
    return ["gd_error.png", "gd_distance.png"]


# ---------------------------------------------------------------------------------- section
def _table_ns(d: int, N: int) -> list[int]:
    want = {1, max(1, d // 2), d, d + 1, 2 * d, N // 2, N - 1}
    return sorted(n for n in want if 1 <= n <= N - 1)


def run(trained: TrainedICL, *, out_dir: Path, quick: bool = False, seed: int = 0,
        progress: bool = False) -> Section:
    """The ICL-vs-gradient-descent experiment as a report section.

    ``quick``: 512 evaluation and 512 validation prompts; otherwise 4096 and 2048.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = gd_comparison(trained, n_prompts=512 if quick else 4096,
                        validation_prompts=512 if quick else 2048, seed=seed, progress=progress)
    with single_thread():
        figures = _figures(res, out)
    return _section(res, figures, seed, time.perf_counter() - t0)


@dataclass(frozen=True)
class _Summary:
    """The numbers the checks, findings and data share."""

    reg: bool
    err_word: str
    rho: float                     # Spearman(n, transformer error)
    linear: list[str]              # the baselines but the zero predictor
    mean_dist: dict[str, float]    # mean distance to the transformer per baseline
    best: str                      # linear method closest on average
    closest: list[str]             # closest method per n
    big: np.ndarray                # n >= d
    gd1: str                       # the one-step GD method (or the first linear one)
    excess: np.ndarray             # transformer minus one-step GD error at n >= d
    beats: int                     # n >= d where the transformer is at most one-step GD

    @classmethod
    def of(cls, res: GDComparison) -> _Summary:
        reg = res.task == "regression"
        tf_err = res.error["transformer"]
        linear = [m for m in res.baselines if m != "zero"]
        mean_dist = {m: float(np.mean(res.distance[m])) for m in res.baselines}
        big = res.n >= res.d_x
        gd1 = "gd1" if "gd1" in res.error else linear[0]
        excess = tf_err[big] - res.error[gd1][big]
        return cls(reg=reg, err_word="error" if reg else "error rate",
                   rho=spearman(res.n.astype(np.float64), tf_err), linear=linear,
                   mean_dist=mean_dist, best=min(linear, key=lambda m: mean_dist[m]),
                   closest=res.closest(), big=big, gd1=gd1, excess=excess,
                   beats=int((excess <= 0).sum()))


def _section(res: GDComparison, figures: list[str], seed: int, seconds: float) -> Section:
    sm = _Summary.of(res)
    return Section(
        name="gd",
        title="In-context learning vs gradient descent and least squares",
        description=_description(res, seed),
        checks=_checks(res, sm),
        findings=_findings(res, sm),
        tables=_tables(res, sm),
        figures=figures,
        data=to_jsonable(_data(res, sm)),
        seconds=seconds,
    )


def _checks(res: GDComparison, sm: _Summary) -> list[Check]:
    d, N = res.d_x, res.n_examples
    tf_err = res.error["transformer"]
    rho, best, mean_dist, big, excess, beats = (sm.rho, sm.best, sm.mean_dist, sm.big,
                                                sm.excess, sm.beats)
    err_word = sm.err_word
    counts = {m: sm.closest.count(m) for m in res.baselines}
    sem2 = 2 * float(np.max(res.error_sem["transformer"]))
    checks = [
        Check(f"the transformer's {err_word} decreases with n (Spearman(n, {err_word}) <= "
              f"-{SPEARMAN_MIN})",
              bool(math.isfinite(rho) and rho <= -SPEARMAN_MIN),
              f"Spearman {rho:+.3f} over n = 1..{N - 1}; {err_word} {tf_err[0]:.3g} at n = 1, "
              f"{tf_err[-1]:.3g} at n = {N - 1}"),
        Check(f"the transformer is closer to some GD / least-squares method ({_label(best)}) "
              "than to the zero predictor (mean distance over n)",
              bool(mean_dist[best] < mean_dist["zero"]),
              f"mean distance to {_label(best)} {mean_dist[best]:.4g} vs zero predictor "
              f"{mean_dist['zero']:.4g}; closest method per n: "
              + ", ".join(f"{_label(m)} {c}" for m, c in counts.items() if c)),
        Check(f"the transformer's {err_word} is at most one-step GD's (tuned eta) at every "
              f"n >= d = {d}",
              bool(big.any() and beats == int(big.sum())),
              f"holds at {beats} of {int(big.sum())} values of n >= d; largest excess "
              f"{float(excess.max()) if excess.size else float('nan'):+.3g} (2 SEM of the "
              f"transformer's {err_word} <= {sem2:.2g})"),
    ]
    ls_err = res.error["least_squares"][big]
    if sm.reg:
        checks.append(Check(
            "sanity: least squares recovers w on noiseless prompts with n >= d (error ~ 0)",
            bool(ls_err.size and float(ls_err.max()) < 1e-8),
            f"max mean error over n >= d: {float(ls_err.max()) if ls_err.size else math.nan:.2e}"))
    return checks


def _findings(res: GDComparison, sm: _Summary) -> list[str]:
    d, N = res.d_x, res.n_examples
    tf_err = res.error["transformer"]
    rho, mean_dist, big, gd1, beats = sm.rho, sm.mean_dist, sm.big, sm.gd1, sm.beats
    err_word = sm.err_word
    ls_err = res.error["least_squares"][big]
    zero_better = [m for m in sm.linear if np.mean(res.error[m]) < np.mean(res.error["zero"])]
    findings = [
        (f"The transformer's {err_word} goes from {tf_err[0]:.3g} (n = 1) to {tf_err[-1]:.3g} "
         f"(n = {N - 1}); Spearman with n {rho:+.2f}."),
        ("Mean distance to the transformer's predictions over n: "
         + ", ".join(f"{_label(m)} {mean_dist[m]:.3g}" for m in res.baselines)
         + f"; closest on average: {_label(min(res.baselines, key=lambda m: mean_dist[m]))}."),
        ("Closest method per n: " + "; ".join(
            (f"n={a}" if a == b else f"n={a}-{b}") + f": {_label(m)}"
            for a, b, m in _runs(res.n, sm.closest)) + "."),
        (f"At n >= d = {d}, the transformer's {err_word} is at most one-step GD's at {beats} of "
         f"{int(big.sum())} values of n; mean over these n: transformer "
         f"{float(tf_err[big].mean()) if big.any() else math.nan:.3g}, one-step GD "
         f"{float(res.error[gd1][big].mean()) if big.any() else math.nan:.3g}, least squares "
         f"{float(ls_err.mean()) if ls_err.size else math.nan:.3g}."),
        ("Methods with a lower mean error than the zero predictor: "
         + (", ".join(_label(m) for m in zero_better) or "none") + "."),
    ]
    edges = {m: int(v.sum()) for m, v in res.eta_at_edge.items() if v.any()}
    if edges:
        findings.append("The tuned step size is the smallest or largest value searched (grid "
                        f"{ETA_GRID[0]:g}..{ETA_GRID[-1]:g}, for K >= 2 steps capped at "
                        "2/lambda* for stability) for "
                        + ", ".join(f"{_label(m)} at {c} values of n" for m, c in edges.items())
                        + " (at the cap, for K >= 2: the unconstrained optimum on the "
                        "validation prompts would make GD unstable on some prompt).")
    return findings


def _tables(res: GDComparison, sm: _Summary) -> list[Table]:
    reg = sm.reg
    tn = _table_ns(res.d_x, res.n_examples)
    idx = [int(np.nonzero(res.n == n)[0][0]) for n in tn]
    metric = "error" if reg else "accuracy"
    vals = res.error if reg else res.accuracy
    rows = tuple(
        (int(res.n[j]), *[float(vals[m][j]) for m in res.methods],
         *[float(res.distance[m][j]) for m in res.baselines], _label(sm.closest[j]))
        for j in idx)
    eta_rows = tuple((int(res.n[j]), *[float(res.eta[m][j]) for m in res.eta],
                      float(res.eta_cap[j])) for j in idx)
    dist_name = "dist" if reg else "disagree"
    return [
        Table(f"{metric.capitalize()} per method and distance to the transformer "
              f"({'(f - y)^2 / d' if reg else 'accuracy of sign(f)'}; distance "
              f"{'(f_TF - f_m)^2 / d' if reg else '= sign disagreement rate'})",
              ("n", *[f"{metric} {_label(m)}" for m in res.methods],
               *[f"{dist_name} {_label(m)}" for m in res.baselines], "closest"),
              rows),
        Table("Step sizes tuned on the validation batch (per n and method)",
              ("n", *[f"eta {_label(m)}" for m in res.eta], "cap 2/lambda* (K >= 2)"),
              eta_rows),
    ]


def _data(res: GDComparison, sm: _Summary) -> dict[str, Any]:
    return {
        "task": res.task, "d_x": res.d_x, "n_examples": res.n_examples,
        "n_prompts": res.n_prompts,
        "validation_prompts": res.validation_prompts, "n": res.n, "methods": list(res.methods),
        "error": res.error, "error_sem": res.error_sem, "accuracy": res.accuracy,
        "distance": res.distance, "eta": res.eta, "eta_at_edge": res.eta_at_edge,
        "eta_cap": res.eta_cap, "eta_grid": list(ETA_GRID), "pinv_rtol": PINV_RTOL,
        "closest": sm.closest,
        "spearman_error_n": sm.rho, "mean_distance": sm.mean_dist,
        "compute_seconds": res.seconds,
    }


def _description(res: GDComparison, seed: int) -> str:
    reg = res.task == "regression"
    d, N = res.d_x, res.n_examples
    return (
        f"{res.n_prompts} fresh noiseless in-distribution {res.task} prompts "
        f"(d = {d}, N = {N} pairs, seed {seed}); at every x_n (n = 1..{N - 1} in-context "
        "examples) the transformer's prediction is compared with linear estimators fitted on "
        "the same n pairs: the zero predictor, "
        + ", ".join(_label(m) for m in res.eta)
        + " from w = 0 on (1/2n)||y - Xw||^2 (step size tuned separately for every n and "
        f"method by a grid line search over {len(ETA_GRID)} log-spaced values in "
        f"[{ETA_GRID[0]:g}, {ETA_GRID[-1]:g}] on {res.validation_prompts} validation "
        "prompts, minimising the squared error; for K >= 2 steps capped at 2/lambda*, "
        "lambda* the largest lambda_max(X^T X/n) over all contexts, so GD is stable on "
        "every prompt) and minimum-norm least squares "
        f"(pseudo-inverse, relative cut-off {PINV_RTOL:g})."
        + (" Error: (f - y)^2 / d; distance: mean (f_TF - f_m)^2 / d." if reg else
           " The methods predict sign(.) of the same estimates (labels ±1 as targets); "
           "accuracy of sign(f); distance: sign disagreement rate."))


def _runs(ns: np.ndarray, labels: list[str]) -> list[tuple[int, int, str]]:
    """Consecutive runs of equal labels: ``(first n, last n, label)``."""
    out: list[tuple[int, int, str]] = []
    for n, m in zip(ns, labels, strict=True):
        if out and out[-1][2] == m:
            out[-1] = (out[-1][0], int(n), m)
        else:
            out.append((int(n), int(n), m))
    return out
