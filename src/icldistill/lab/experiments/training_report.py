"""The trained in-context learner itself: its training curve and its in-context error against
the number of examples, beside a reference learner on the same prompts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from icldistill.artifacts.figures import new_figure, save_figure
from icldistill.core.stats import spearman
from icldistill.lab.experiments._common import Check, Section, Table
from icldistill.lab.training import TrainedICL, evaluate_icl

__all__ = ["run"]


def run(trained: TrainedICL, *, out_dir: str | Path, quick: bool = False, seed: int = 0,
        progress: bool = False) -> Section:
    """Training curve and in-context error curve of ``trained`` as a report section."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = trained.config
    ev = evaluate_icl(trained, batches=2 if quick else 8, batch_size=256, seed=seed + 10_000)
    err = ev.error.numpy()
    base = ev.baseline.numpy()
    se = ev.stderr.numpy()
    n = np.arange(len(err))
    fig, axes = new_figure(1, 2, size=(5.4, 4.0))
    if trained.history:
        steps, losses = zip(*trained.history, strict=True)
        axes[0, 0].plot(steps, losses)
        axes[0, 0].set_yscale("log")
    axes[0, 0].set_xlabel("training step")
    axes[0, 0].set_ylabel("training loss")
    axes[0, 0].set_title(f"training ({trained.train.steps} steps)")
    ax = axes[0, 1]
    ax.errorbar(n, err, yerr=se, label="transformer", capsize=2)
    ax.plot(n, base, "--", label=ev.baseline_name)
    if cfg.task == "regression":
        ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="zero predictor")
        ax.axvline(cfg.d_x, color="grey", lw=0.8, ls="-.", label="n = d")
    else:
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("in-context examples n")
    ax.set_ylabel(ev.metric)
    ax.set_title(f"in-context {cfg.task}, d = {cfg.d_x}")
    ax.legend(fontsize=8)
    save_figure(fig, out / "training.png")
    rho = spearman(n[1:], err[1:])
    better = err[-1] < 0.5 if cfg.task == "regression" else err[-1] > 0.6
    ref = "least squares" if cfg.task == "regression" else "the baseline"
    checks = [
        Check("the model learns in context: its error falls as examples are added",
              (rho < -0.8) if cfg.task == "regression" else (rho > 0.8),
              f"Spearman(n, {ev.metric}) = {rho:.2f} over n = 1..{len(err) - 1}"),
        Check("it beats the trivial predictor with the full context", bool(better),
              f"{ev.metric} {err[-1]:.3f} at n = {len(err) - 1} (trivial: "
              f"{'1.0' if cfg.task == 'regression' else '0.5'}; {ref}: {base[-1]:.3f})"),
    ]
    picks = sorted({1, 2, cfg.d_x, 2 * cfg.d_x, len(err) - 1} & set(range(1, len(err))))
    return Section(
        name="training",
        title=f"Trained in-context learner ({cfg.task})",
        description=(f"A {cfg.n_layers}-layer, {cfg.n_heads}-head softmax-attention transformer "
                     f"(d_model {cfg.d_model}) trained with seed {trained.train.seed} for "
                     f"{trained.train.steps} steps (batch {trained.train.batch_size}) on "
                     f"in-context {cfg.task}: x ~ N(0, I_{cfg.d_x}), w ~ N(0, I), "
                     + ("y = w·x" if cfg.task == "regression" else "y = sign(w·x)")
                     + f", up to {cfg.max_examples} examples per prompt. Evaluated on "
                     f"{ev.prompts} fresh prompts."),
        checks=checks,
        findings=[f"{ev.metric} with n examples: " + ", ".join(
            f"n={i}: {err[i]:.3f} ({ev.baseline_name} {base[i]:.3f})" for i in picks) + "."],
        tables=[Table(f"In-context {ev.metric} vs number of examples",
                      ("n", ev.metric, "stderr", ev.baseline_name),
                      tuple((int(i), float(err[i]), float(se[i]), float(base[i]))
                            for i in range(len(err))))],
        figures=["training.png"],
        data={"error": err.tolist(), "stderr": se.tolist(), "baseline": base.tolist(),
              "history": [list(h) for h in trained.history], "train_seconds": trained.seconds},
        seconds=time.perf_counter() - t0,
    )
