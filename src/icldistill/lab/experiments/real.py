"""Real language models: ``eta*`` and the demonstrations' share per layer and head on real
few-shot prompts, and the accuracy-vs-MMD relation of the selection harness.

Two parts:

1. **Trace** (:func:`real_model_trace`): ``n_prompts`` few-shot prompts of a registry dataset
   (``k`` random demonstrations from the pool, a test query each) are traced through every
   layer and head (:func:`icldistill.models.tracing.trace`). Per layer and head: ``eta*`` and
   the demo share at the last position (where the label is predicted); the decomposition error
   against the model's own attention output; Jensen's inequality
   ``log(D'_t / n_t) >= mean logit`` at every query position; the implicit alignment (one
   gradient step with ``eta*`` reproduces ``W_0``) at the last position of every kernel-form
   head; and domain stationarity — the Spearman correlation between ``log eta*`` and the mean
   query–demonstration logit over the query positions of all prompts, per head.
2. **Accuracy vs MMD** (:func:`fewshot_relation`): units of the selection harness (a small grid
   run here, or results read from an earlier run's folder): accuracy against the MMD² of the
   demonstrations to the task's test inputs, with Spearman's correlation per task.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.figures import new_figure, save_figure
from icldistill.core.decomposition import distillation_step
from icldistill.core.results import Result
from icldistill.core.stats import spearman
from icldistill.core.validation import InputError, check_seed
from icldistill.lab.experiments._common import IDENTITY, IDENTITY_PREFIX, Check, Section, Table

__all__ = ["FewShotRelation", "RealTraceResult", "accuracy_mmd_figure", "fewshot_folder",
           "fewshot_relation", "real_model_trace", "run"]


@dataclass(frozen=True)
class RealTraceResult(Result):
    """Per-layer/head quantities of a real model on real few-shot prompts.

    Shapes: ``P`` prompts, ``L`` layers, ``H`` heads.

    Attributes
    ----------
    model, dataset : str
    k : int
        Demonstrations per prompt.
    eta_last : ndarray ``[P, L, H]``
        ``eta*`` at the last position of every prompt.
    demo_share_last : ndarray ``[P, L, H]``
    demo_mass_last : ndarray ``[P, L, H]``
        Attention probability mass on the demonstrations at the last position.
    stationarity : ndarray ``[L, H]``
        Spearman correlation of ``log eta*`` and the mean query–demonstration logit over all
        query positions of all prompts (NaN where undefined).
    has_kernel_form : ndarray ``[L, H]`` (bool)
    max_decomposition_error : float
    jensen_violations : int
        Query positions where ``log(D'_t / n_t) < mean logit - 1e-9`` (should be 0).
    jensen_checked : int
    jensen_gap : ndarray ``[L, H]``
        Mean of ``log(D'_t / n_t) - mean logit`` over the query positions of all prompts (0 for
        uniform attention; grows as attention concentrates).
    alignment_error : float
        Largest relative ``||W_1 - W_0|| / ||W_0||`` after one step with ``eta*`` (should be ~0),
        over every kernel-form head at the last position of the first prompt.
    alignment_error_2x : float
        The smallest relative distance with ``2 eta*`` instead (the first kernel-form head of
        every layer; shows the step size matters).
    num_tokens : list of int
        Prompt lengths.
    seconds : float
    jensen_gap_prompts : ndarray ``[P, L, H]`` or None
        :attr:`jensen_gap` per prompt (the prompts are the independent draws: the control
        comparisons pair them).
    stationarity_prompts : ndarray ``[P]`` or None
        Per prompt, the mean over heads of the per-head Spearman of :attr:`stationarity`
        computed on that prompt's query positions alone (NaN where no head has 3 points).
    """

    model: str
    dataset: str
    k: int
    eta_last: np.ndarray
    demo_share_last: np.ndarray
    demo_mass_last: np.ndarray
    stationarity: np.ndarray
    has_kernel_form: np.ndarray
    max_decomposition_error: float
    jensen_violations: int
    jensen_checked: int
    jensen_gap: np.ndarray
    alignment_error: float
    alignment_error_2x: float
    num_tokens: list[int]
    seconds: float
    jensen_gap_prompts: np.ndarray | None = None
    stationarity_prompts: np.ndarray | None = None


def real_model_trace(
    model: str = "smollm2-135m",
    dataset: str = "amazon",
    *,
    k: int = 4,
    n_prompts: int = 4,
    seed: int = 0,
    progress: bool = False,
    loaded: Any | None = None,
    split: Any | None = None,
) -> RealTraceResult:
    """Trace ``n_prompts`` ``k``-shot prompts of ``dataset`` through every head of ``model``.

    Parameters
    ----------
    model : str
        Registry key (or path) of the language model.
    dataset : str
        Registry dataset; demonstrations are drawn at random (seeded) from its pool and queries
        from its test part.
    k, n_prompts : int
    seed : int
    progress : bool
    loaded : LoadedModel-like, optional
        An already loaded model (``.model``, ``.tokenizer``); skips loading ``model``.
    split : DatasetSplit, optional
        An already loaded split; skips loading ``dataset``.
    """
    from icldistill.data.datasets import load_split
    from icldistill.models import load_model
    from icldistill.models.tracing import trace

    if k < 1 or n_prompts < 1:
        raise InputError(f"k and n_prompts must be >= 1, got k={k}, n_prompts={n_prompts}")
    t0 = time.perf_counter()
    if split is None:
        split = load_split(dataset, progress=progress)
    if loaded is None:
        loaded = load_model(model, progress=progress)
    pool, test = split.train, split.test
    if len(pool) < k:
        raise InputError(f"the pool of {dataset!r} has {len(pool)} items, fewer than k={k}")
    rng = np.random.default_rng(seed)
    fmt = pool.format
    acc = _TraceSums()
    queries = rng.choice(len(test), size=min(n_prompts, len(test)), replace=False)
    for qi in queries:
        demo_idx = rng.choice(len(pool), size=k, replace=False)
        demos = [(pool.texts[int(j)], str(pool.labels[int(j)])) for j in demo_idx]
        prompt = fmt.prompt(demos, test.texts[int(qi)])
        with torch.no_grad():
            res = trace(loaded.model, loaded.tokenizer, prompt, positions="query", keep_w0=True,
                        progress=progress)
        acc.add(res, loaded.model)
    return RealTraceResult(
        model=getattr(loaded, "name", model), dataset=dataset, k=k,
        eta_last=np.stack(acc.eta), demo_share_last=np.stack(acc.share),
        demo_mass_last=np.stack(acc.mass),
        stationarity=_stationarity(acc.stat_x, acc.stat_y),
        has_kernel_form=np.asarray(acc.kernel, dtype=bool),
        max_decomposition_error=float(acc.max_err), jensen_violations=acc.viol,
        jensen_checked=acc.checked, jensen_gap=np.mean(acc.gaps, axis=0),
        alignment_error=float(acc.align), alignment_error_2x=float(acc.align2),
        num_tokens=acc.lens, seconds=time.perf_counter() - t0,
        jensen_gap_prompts=np.stack(acc.gaps),
        stationarity_prompts=np.asarray([_head_mean(_stationarity([x], [y]))
                                         for x, y in zip(acc.stat_x, acc.stat_y, strict=True)]),
    )


def _head_mean(a: np.ndarray) -> float:
    """Mean of the finite entries (NaN without any)."""
    from icldistill.lab.experiments.phenomena import finite_mean

    return finite_mean(a)


@dataclass
class _TraceSums:
    """What :func:`real_model_trace` collects over the traced prompts."""

    eta: list[np.ndarray] = field(default_factory=list)       # [L, H] at the label position
    share: list[np.ndarray] = field(default_factory=list)
    mass: list[np.ndarray] = field(default_factory=list)
    stat_x: list[np.ndarray] = field(default_factory=list)    # [L, H, P] mean demo logit
    stat_y: list[np.ndarray] = field(default_factory=list)    # [L, H, P] log eta*
    gaps: list[np.ndarray] = field(default_factory=list)      # [L, H] mean Jensen gap
    lens: list[int] = field(default_factory=list)
    max_err: float = 0.0
    viol: int = 0
    checked: int = 0
    align: float = 0.0
    align2: float = float("inf")
    kernel: Any = None

    def add(self, res: Any, model: Any) -> None:
        """Add one traced prompt (the first one also measures the implicit alignment)."""
        from icldistill.lab.experiments.phenomena import check_one_entry_per_layer

        check_one_entry_per_layer(res, model)
        self.lens.append(len(res.tokens))
        self.kernel = res.has_kernel_form.numpy()
        self.eta.append(res.eta[:, :, -1].double().numpy())
        self.share.append(res.demo_share[:, :, -1].double().numpy())
        self.mass.append(res.attention_mass["demos"][:, :, -1].double().numpy())
        self.stat_x.append(res.mean_demo_logit.double().numpy())            # [L, H, P]
        self.stat_y.append(np.log(res.eta.double().numpy()))
        self.max_err = max(self.max_err, res.max_decomposition_error)
        n_keys = res.num_keys.double().numpy()[:, None, :]                  # [L, 1, P]
        lhs = res.log_normalizer.double().numpy() - np.log(n_keys)
        gap = lhs - res.mean_logit.double().numpy()                          # [L, H, P]
        self.gaps.append(gap.mean(-1))
        self.viol += int((gap < -1e-9).sum())
        self.checked += lhs.size
        if len(self.lens) == 1:       # alignment: every kernel-form head of the first prompt
            self._alignment(res)

    def _alignment(self, res: Any) -> None:
        """One step with ``eta*`` against ``W_0`` at the last position of every kernel-form
        head (its own flag: a layer may mix heads with and without kernel form); ``2 eta*`` on
        the first kernel-form head of every layer."""
        L, H = self.kernel.shape
        for layer in range(L):
            first = True
            for head in range(H):
                if not self.kernel[layer, head]:
                    continue
                w0 = res.w0(layer, head, -1)
                step = distillation_step(w0)
                self.align = max(self.align, step.relative_distance)
                if first:
                    self.align2 = min(self.align2, distillation_step(w0, 2.0 * step.eta_star)
                                      .relative_distance)
                    first = False


def _stationarity(stat_x: list[np.ndarray], stat_y: list[np.ndarray]) -> np.ndarray:
    """Per head ``[L, H]``: Spearman of log eta* against the mean query-demo logit over every
    query position of every prompt (NaN with fewer than 3 finite points)."""
    x = np.concatenate(stat_x, axis=-1)
    y = np.concatenate(stat_y, axis=-1)
    L, H = x.shape[:2]
    stationarity = np.full((L, H), np.nan)
    for layer in range(L):
        for head in range(H):
            ok = np.isfinite(x[layer, head]) & np.isfinite(y[layer, head])
            if ok.sum() >= 3:
                stationarity[layer, head] = spearman(x[layer, head][ok], y[layer, head][ok])
    return stationarity


@dataclass(frozen=True)
class FewShotRelation(Result):
    """Accuracy against MMD² of the demonstrations, from harness units.

    Attributes
    ----------
    rows : list of dict
        One per unit: task, selector, k, seed, accuracy, macro_f1, mmd2_task, n.
    spearman : dict[str, float]
        Spearman(MMD², accuracy) per task (per task and ``k``, and model, when the units have
        several; NaN with fewer than 3 units).
    source : str
        Where the units come from (the folder).
    """

    rows: list[dict[str, Any]]
    spearman: dict[str, float]
    source: str


def fewshot_relation(
    out_dir: str | Path,
    *,
    model: str = "smollm2-135m",
    tasks: tuple[str, ...] = ("amazon",),
    selectors: tuple[str, ...] = ("random", "mmd", "mmd-balanced"),
    k: int = 4,
    seeds: int = 3,
    seed: int = 0,
    n_test: int | None = 80,
    run_grid: bool = True,
    progress: bool = False,
    harness: Any | None = None,
) -> FewShotRelation:
    """Run (or read back) a selection-harness grid and relate accuracy to MMD².

    With ``run_grid`` the grid ``model x tasks x selectors x k`` is run into ``out_dir`` with
    :class:`icldistill.evaluation.harness.Harness` (resumable: finished units are read back):
    the randomised selectors (``random``) with the ``seeds`` selection seeds
    ``seed, seed + 1, ..., seed + seeds - 1``, the deterministic ones once, with seed 0 (their
    choice does not depend on it). Without ``run_grid``, every unit already in
    ``out_dir/results.jsonl`` is used (``seed`` and ``seeds`` are then not used). ``harness``
    replaces the default :class:`~icldistill.evaluation.harness.Harness` on ``out_dir`` (e.g.
    one with its own tasks or model loader).

    Raises
    ------
    InputError
        ``seed`` is not an integer >= 0, a task or selector is listed twice, or (without
        ``run_grid``) ``out_dir`` holds no finished unit.
    """
    from icldistill.evaluation.harness import Harness, load_results

    out = Path(out_dir)
    if run_grid:
        units = _grid_units(model, tasks, selectors, k, seeds, check_seed(seed), n_test)
        h = harness if harness is not None else Harness(out, progress=progress)
        results = h.run(units)
    else:
        results = load_results(out)
        if not results:
            raise InputError(f"no finished units in {out / 'results.jsonl'}")
    rows = [{"model": r.spec.model_label, "task": r.spec.task, "selector": r.spec.label,
             "k": r.spec.k, "seed": r.spec.seed, "accuracy": r.accuracy.value,
             "macro_f1": r.macro_f1.value, "mmd2_task": r.mmd2_task, "n": r.n} for r in results]
    rho = {}
    groups = sorted({(r["model"], r["task"], r["k"]) for r in rows})
    for model_name, task, k_ in groups:
        sub = [r for r in rows if (r["model"], r["task"], r["k"]) == (model_name, task, k_)]
        name = task if len(groups) == len({g[1] for g in groups}) else f"{task} k={k_}"
        if len({g[0] for g in groups}) > 1:
            name = f"{model_name} {name}"
        rho[name] = spearman([r["mmd2_task"] for r in sub], [r["accuracy"] for r in sub])
    return FewShotRelation(rows=rows, spearman=rho, source=str(out))


def _grid_units(model: str, tasks: tuple[str, ...], selectors: tuple[str, ...], k: int,
                seeds: int, seed: int, n_test: int | None) -> list[Any]:
    """The units of :func:`fewshot_relation`'s grid: the randomised selectors with selection
    seeds ``seed .. seed + seeds - 1``, the deterministic ones with seed 0 (with ``seed = 0``
    exactly :func:`~icldistill.evaluation.harness.unit_grid`'s units)."""
    from icldistill.evaluation.harness import unit_grid

    grid = unit_grid(models=[model], tasks=list(tasks), selectors=list(selectors), ks=[k],
                     seeds=seed + seeds, n_test=n_test)
    randomised = {u.selector for u in grid if u.seed > 0}
    return [u for u in grid if u.selector not in randomised or u.seed >= seed]


def fewshot_folder(parent: str | Path, seed: int = 0) -> Path:
    """The default folder of the real section's accuracy-vs-MMD grid under ``parent``:
    ``fewshot`` for seed 0 and ``fewshot-seed-<seed>`` for another seed (so that grids of
    different seeds do not share one ``results.jsonl``); each random-init control's grid goes
    beside it, in ``<folder>-control-<control seed>``."""
    seed = check_seed(seed)
    return Path(parent) / ("fewshot" if seed == 0 else f"fewshot-seed-{seed}")


def _grid_tasks(fewshot_tasks: Any, dataset: str, quick: bool) -> tuple[str, ...]:
    """The tasks of the real section's grid (checked before anything is traced): the given
    ones, or ``dataset`` (plus ``yelp`` and ``rt-subjectivity`` in full mode), each once."""
    if not fewshot_tasks:
        return tuple(dict.fromkeys((dataset,) if quick else (dataset, "yelp", "rt-subjectivity")))
    if isinstance(fewshot_tasks, str | bytes) or not isinstance(fewshot_tasks, Sequence):
        raise InputError(f"fewshot_tasks must be a sequence of task names, got "
                         f"{fewshot_tasks!r}")
    seen: set[str] = set()
    for t in fewshot_tasks:
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"fewshot_tasks: every task must be a non-empty name, got {t!r}")
        if t in seen:
            raise InputError(f"fewshot_tasks: task {t!r} is listed twice")
        seen.add(t)
    return tuple(fewshot_tasks)


# ---------------------------------------------------------------------------------- section
def _group_name(row: dict[str, Any], rel: FewShotRelation) -> str:
    """The key of ``rel.spearman`` that ``row`` belongs to."""
    for name in (row["task"], f"{row['task']} k={row['k']}",
                 f"{row['model']} {row['task']}", f"{row['model']} {row['task']} k={row['k']}"):
        if name in rel.spearman:
            return name
    return row["task"]


def _figures(tr: RealTraceResult, rel: FewShotRelation | None, out: Path) -> list[str]:
    from matplotlib.colors import LogNorm

    names = []
    eta = tr.eta_last.mean(0)
    share = tr.demo_share_last.mean(0)
    fig, axes = new_figure(1, 3, size=(5.0, 4.4))
    for ax, data, title, log in ((axes[0, 0], eta, "mean η* at the label position", True),
                                 (axes[0, 1], share, "mean demo share ‖c_D‖/Σ‖c_S‖", False),
                                 (axes[0, 2], tr.stationarity,
                                  "Spearman(mean q·k_demo logit, log η*)", False)):
        kw: dict[str, Any] = {"aspect": "auto", "origin": "lower"}
        if log:
            pos = data[data > 0]
            kw["norm"] = LogNorm(vmin=float(pos.min()), vmax=float(pos.max())) if pos.size else None
        elif "Spearman" in title:
            kw.update(cmap="coolwarm", vmin=-1, vmax=1)
        im = ax.imshow(data, **kw)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{tr.model}: {tr.k}-shot {tr.dataset}, {tr.eta_last.shape[0]} prompts")
    save_figure(fig, out / "real_heads.png")
    names.append("real_heads.png")
    if rel is not None and rel.rows:
        accuracy_mmd_figure(rel, out / "real_accuracy_mmd.png")
        names.append("real_accuracy_mmd.png")
    return names


def accuracy_mmd_figure(rel: Any, path: Path) -> Path:
    """Few-shot accuracy against the demonstrations' MMD² to the task: one panel per model
    (columns) and ``k`` (rows), one colour per task (the same in every panel), each task's
    Spearman ρ in its panel's legend.

    ``rel`` needs ``rows`` (dicts with ``model``, ``task``, ``k``, ``mmd2_task``,
    ``accuracy``) and ``spearman`` (group name -> ρ, as :class:`FewShotRelation`), so the figure
    can be redrawn from a stored section's ``data["fewshot"]``.
    """
    models = list(dict.fromkeys(str(r["model"]) for r in rel.rows))
    ks = sorted({int(r["k"]) for r in rel.rows})
    tasks = sorted({str(r["task"]) for r in rel.rows})
    color = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
    marker = {t: "os^Dv<>ph*"[(i // 10) % 10] for i, t in enumerate(tasks)}
    fig, axes = new_figure(len(ks), len(models), size=(4.8, 3.8))
    for ki, k in enumerate(ks):
        for mi, model in enumerate(models):
            ax = axes[ki, mi]
            for task in tasks:
                sub = [r for r in rel.rows
                       if str(r["model"]) == model and int(r["k"]) == k and str(r["task"]) == task]
                if not sub:
                    continue
                rho = rel.spearman.get(_group_name(sub[0], rel), float("nan"))
                ax.scatter([r["mmd2_task"] for r in sub], [r["accuracy"] for r in sub], s=18,
                           color=color[task], marker=marker[task], label=f"{task} (ρ={rho:.2f})")
            ax.set_xlabel("MMD² to the test inputs (MiniLM Gaussian)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{model}, k={k}", fontsize=9)
            ax.legend(fontsize=6)
    fig.suptitle("Few-shot accuracy against the MMD² of the demonstrations (ρ: Spearman)")
    return save_figure(fig, path)


def _control_relation(model: str, twin: Any, fewshot_dir: Path, tasks: tuple[str, ...],
                      selectors: tuple[str, ...], n_test: int, seed: int, progress: bool,
                      harness_factory: Any | None) -> FewShotRelation:
    """The accuracy-vs-MMD grid of the real section, on a random-init twin (the trained
    model's selection seeds)."""
    from icldistill.evaluation.harness import Harness

    def loader(_name: str, **_kw: Any) -> Any:
        return twin

    # the folder records which twin its units ran on ("<model> random-init #<seed>"), so a
    # rerun with other controls is refused instead of reading this one's results back
    name = getattr(twin, "name", None)
    loader.weights = name if isinstance(name, str) and name.strip() else None  # type: ignore[attr-defined]
    if harness_factory is not None:
        h = harness_factory(fewshot_dir, loader)
    else:
        h = Harness(fewshot_dir, model_loader=loader, progress=progress)
    return fewshot_relation(fewshot_dir, model=model, tasks=tasks, selectors=selectors,
                            n_test=n_test, seed=seed, progress=progress, harness=h)


def _spearman_items(tr: RealTraceResult) -> np.ndarray:
    st = tr.stationarity
    return st[np.isfinite(st)]


# long: 18 lines of signature and 41 of NumPy docstring; the code is 45
def run(
    model: str = "smollm2-135m",
    *,
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    progress: bool = False,
    dataset: str = "amazon",
    fewshot_dir: str | Path | None = None,
    fewshot_results: str | Path | None = None,
    fewshot_tasks: tuple[str, ...] | None = None,
    loaded: Any | None = None,
    split: Any | None = None,
    harness: Any | None = None,
    n_controls: int = 1,
    controls: Any | None = None,
    control_harness: Any | None = None,
) -> Section:
    """The real-model experiment as a report section, with random-initialised controls.

    Every quantity is measured on the trained model and on ``n_controls`` architecture-identical
    random-init twins (:func:`icldistill.lab.experiments.phenomena.random_twin`, seeds
    ``seed + 1 ..``) on the same prompts; a claim about the model passes only when the trained
    value lies outside the controls' spread (:func:`~icldistill.lab.experiments.phenomena.
    controlled_check`). The decomposition and the implicit alignment are identities of the
    software that hold for any weights: they are checked on every model (trained and controls)
    and marked as identities (:data:`~icldistill.lab.experiments._common.IDENTITY`), which the
    report counts apart from the claims.

    Parameters
    ----------
    model : str
        Registry key of the language model (default ``smollm2-135m``).
    out_dir : path
        Figures go here; the harness grid runs in ``fewshot_dir`` (default
        :func:`fewshot_folder`: ``out_dir/fewshot`` for seed 0, ``out_dir/fewshot-seed-<seed>``
        otherwise), the controls' grids in ``<fewshot_dir>-control-<control seed>``.
    quick : bool
        6 traced prompts and a 5-unit grid on 60 test inputs of one task; otherwise 12 prompts
        and a 3-task grid on 200 test inputs.
    seed : int
        An integer >= 0: the seed of the traced prompts and of the random selector's
        selections in the grids (selection seeds ``seed .. seed + 2``, the same for the trained
        model and its controls); the controls are initialised with seeds ``seed + 1 ..``.
    fewshot_results : path, optional
        Read the trained model's accuracy-vs-MMD units from this harness folder instead of
        running a grid (the controls' grid is then not run, and that check says so).
    fewshot_tasks : tuple of str, optional
        Tasks of the grid (default ``dataset``, plus ``yelp`` and ``rt-subjectivity`` in full
        mode, each once); a task listed twice is an :class:`InputError`, raised before
        anything is traced.
    loaded, split, harness : optional
        An already loaded model / dataset split / harness (see :func:`real_model_trace` and
        :func:`fewshot_relation`).
    n_controls : int
        Random-init twins (default 1).
    controls : sequence of LoadedModel-like, optional
        Already built twins (instead of ``n_controls`` new ones).
    control_harness : callable, optional
        ``control_harness(folder, model_loader) -> Harness`` for the controls' grids (tests).
    """
    t0 = time.perf_counter()
    seed = check_seed(seed)
    tasks = _grid_tasks(fewshot_tasks, dataset, quick)       # checked before anything is traced
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # the prompts are the unit of the control comparisons: 6 is the fewest that can give a
    # two-sided sign-flip p below 0.05
    n_prompts = 6 if quick else 12
    if loaded is None:
        from icldistill.models import load_model

        loaded = load_model(model, progress=progress)
    controls = _controls(loaded, controls, n_controls, seed)
    tr = real_model_trace(model, dataset, k=4, n_prompts=n_prompts, seed=seed, progress=progress,
                          loaded=loaded, split=split)
    ctr = [real_model_trace(model, dataset, k=4, n_prompts=n_prompts, seed=seed,
                            progress=progress, loaded=c, split=split) for c in controls]
    selectors = (("random", "mmd", "mmd-balanced") if quick else
                 ("random", "vote-k", "mmd", "mmd-balanced"))
    n_test = 60 if quick else 200
    fs_dir = Path(fewshot_dir) if fewshot_dir is not None else fewshot_folder(out, seed)
    crel: list[FewShotRelation] = []
    if fewshot_results is not None:
        rel = fewshot_relation(fewshot_results, run_grid=False)
    else:
        rel = fewshot_relation(fs_dir, model=model, tasks=tasks, harness=harness,
                               selectors=selectors, n_test=n_test, seed=seed,
                               progress=progress)
        for i, c in enumerate(controls, 1):
            crel.append(_control_relation(model, c, fs_dir.with_name(
                f"{fs_dir.name}-control-{seed + i}"), tasks, selectors, n_test, seed, progress,
                control_harness))
    figures = _figures(tr, rel, out)
    m = _Measured(tr=tr, ctr=ctr, rel=rel, crel=crel, seed=seed,
                  names=[getattr(c, "name", f"control {i}") for i, c in enumerate(controls, 1)])
    cmps = _compare(m)
    return Section(
        name="real",
        title=f"Real model: {tr.model} on {tr.dataset}",
        description=_description(m),
        checks=_checks(m, cmps),
        findings=_findings(m, cmps),
        tables=_tables(m),
        figures=figures,
        data=_data(m, cmps),
        seconds=time.perf_counter() - t0,
    )


def _controls(loaded: Any, controls: Any | None, n_controls: Any, seed: int) -> list[Any]:
    """The given random-init twins, or ``n_controls`` new ones (seeds ``seed + 1 ..``)."""
    from icldistill.lab.experiments.phenomena import random_twin

    if controls is None:
        if isinstance(n_controls, bool) or not isinstance(n_controls, int) or n_controls < 1:
            raise InputError(f"n_controls must be a positive integer, got {n_controls!r}")
        controls = [random_twin(loaded, seed + i) for i in range(1, n_controls + 1)]
    controls = list(controls)
    if not controls:
        raise InputError("the real section needs at least one random-init control")
    return controls


@dataclass(frozen=True)
class _Measured:
    """The traces and few-shot grids of the trained model (``tr``, ``rel``) and of its
    controls (``ctr``, ``crel``, named ``names``)."""

    tr: RealTraceResult
    ctr: list[RealTraceResult]
    rel: FewShotRelation | None
    crel: list[FewShotRelation]
    names: list[str]
    seed: int


@dataclass(frozen=True)
class _Comparisons:
    """The trained model against its controls: stationarity, Jensen gap and demo share."""

    stat: Any
    jensen: Any
    share: Any


def _compare(m: _Measured) -> _Comparisons:
    """Trained against controls. The Jensen gap and the demo share are means over prompts,
    so they are paired over the traced prompts (the independent draws; the heads are the
    model's fixed parts, not draws): per prompt the mean over heads. Stationarity's statistic
    is a Spearman correlation pooled over every prompt's query positions, which has no
    per-prompt parts: it keeps the interval rule over heads (the within-prompt version is a
    different statistic, reported as a finding, :func:`_findings`)."""
    from icldistill.lab.experiments.phenomena import (
        compare_paired_with_controls,
        compare_with_controls,
        statistic,
    )

    tr, ctr, names, seed = m.tr, m.ctr, m.names, m.seed
    members = [tr.model, *names]

    def per_prompt(t: RealTraceResult) -> tuple[np.ndarray, np.ndarray]:
        if t.jensen_gap_prompts is None:
            raise InputError(f"{t.model}: a trace without per-prompt values cannot be "
                             "compared with its controls")
        return t.jensen_gap_prompts.mean(axis=(1, 2)), t.demo_share_last.mean(axis=(1, 2))

    t_vals, c_vals = per_prompt(tr), [per_prompt(c) for c in ctr]
    return _Comparisons(
        stat=compare_with_controls(
            "mean per-head Spearman(mean q-k_demo logit, log eta*)",
            statistic(_spearman_items(tr), "trained", seed=seed),
            [statistic(_spearman_items(c), n, role="control", seed=seed)
             for c, n in zip(ctr, names, strict=True)]),
        jensen=compare_paired_with_controls(
            "per-prompt mean Jensen gap log(D'/n) - mean logit", t_vals[0],
            [c[0] for c in c_vals], members, seed=seed),
        share=compare_paired_with_controls(
            "per-prompt mean demo share at the label position", t_vals[1],
            [c[1] for c in c_vals], members, seed=seed))


def _checks(m: _Measured, cmps: _Comparisons) -> list[Check]:
    from icldistill.lab.experiments.phenomena import controlled_check

    tr, ctr = m.tr, m.ctr
    st = _spearman_items(tr)
    neg = int((st < 0).sum())
    all_tr = [tr, *ctr]
    checks = [
        Check(f"{IDENTITY_PREFIX} the segment decomposition reproduces the attention output "
              "of the trained model and of every control",
              all(t.max_decomposition_error < 1e-4 for t in all_tr),
              "max relative error " + ", ".join(f"{t.model}: {t.max_decomposition_error:.1e}"
                                                for t in all_tr), kind=IDENTITY),
        Check(f"{IDENTITY_PREFIX} one step with eta* gives W_0, on the trained model and "
              "every control", all(t.alignment_error < 1e-8 for t in all_tr),
              "max relative distance " + ", ".join(f"{t.model}: {t.alignment_error:.1e}"
                                                   for t in all_tr)
              + f" (with 2 eta*: at least {tr.alignment_error_2x:.2f})", kind=IDENTITY),
        controlled_check(
            "Jensen: log(D'/n) >= mean logit, with a gap beyond the random-init control's "
            "(attention concentrated by training)",
            tr.jensen_violations == 0 and all(c.jensen_violations == 0 for c in ctr),
            cmps.jensen,
            f"{tr.jensen_violations} violations in {tr.jensen_checked} head-positions "
            f"(controls: {sum(c.jensen_violations for c in ctr)}); the inequality itself holds "
            "for any softmax", sign=1),
        controlled_check(
            "domain stationarity: eta* falls as the query-demo logit rises (per head)",
            st.size > 0 and neg > st.size / 2, cmps.stat,
            f"negative Spearman in {neg} of {st.size} heads (median "
            f"{float(np.median(st)) if st.size else float('nan'):.2f})", sign=-1),
    ]
    if m.rel is not None:
        checks.append(_fewshot_check(m, m.rel))
    return checks


def _fewshot_check(m: _Measured, rel: FewShotRelation) -> Check:
    """Accuracy falls with the demonstrations' MMD² (against the controls' grids, when run)."""
    from icldistill.lab.experiments.phenomena import (
        compare_with_controls,
        controlled_check,
        statistic,
    )

    finite = {t: r for t, r in rel.spearman.items() if np.isfinite(r)}
    trained_rho = statistic(list(finite.values()), "trained", seed=m.seed)
    if m.crel:
        rel_cmp = compare_with_controls(
            "Spearman(MMD², accuracy) per task",
            trained_rho, [statistic([r for r in c.spearman.values() if np.isfinite(r)], n,
                                    role="control", seed=m.seed)
                          for c, n in zip(m.crel, m.names, strict=False)])
        return controlled_check(
            "accuracy falls as the demonstrations' MMD² to the task rises",
            bool(finite) and all(r < 0 for r in finite.values()), rel_cmp,
            ", ".join(f"{t}: Spearman {r:.2f}" for t, r in rel.spearman.items()), sign=-1)
    return Check(
        "accuracy falls as the demonstrations' MMD² to the task rises", False,
        ", ".join(f"{t}: Spearman {r:.2f}" for t, r in rel.spearman.items())
        + "; read from a results folder, so no random-init control grid was run: "
        "not counted")


def _within_prompt_stationarity(m: _Measured) -> str:
    """The stationarity Spearman within each prompt (head mean), trained and controls: a
    different statistic from the pooled one the check compares (between-prompt variation in
    eta* and the logits enters the pooled correlation), reported beside it."""
    def fmt(t: RealTraceResult) -> str:
        v = np.asarray(t.stationarity_prompts, dtype=np.float64)
        v = v[np.isfinite(v)]
        return (f"{v.mean():.2f} (per prompt {v.min():.2f} to {v.max():.2f})" if v.size
                else "undefined")

    if m.tr.stationarity_prompts is None:
        return "Within-prompt stationarity: not recorded."
    text = (f"Within each prompt (Spearman over its own query positions, mean over heads), "
            f"stationarity is {fmt(m.tr)} on the trained model")
    for c, n in zip(m.ctr, m.names, strict=True):
        if c.stationarity_prompts is not None:
            t, cv = (np.asarray(x.stationarity_prompts, dtype=np.float64) for x in (m.tr, c))
            ok = np.isfinite(t) & np.isfinite(cv)
            text += (f", {fmt(c)} on {n} (the trained model's is more negative on "
                     f"{int((t[ok] < cv[ok]).sum())} of {int(ok.sum())} prompts)")
    return text + (": a different statistic from the check's pooled one, which the "
                   "between-prompt variation of eta* and the logits enters.")


def _findings(m: _Measured, cmps: _Comparisons) -> list[str]:
    tr, rel = m.tr, m.rel
    L, H = tr.has_kernel_form.shape
    eta = tr.eta_last.mean(0)
    share = tr.demo_share_last.mean(0)
    top = np.unravel_index(np.argmax(share), share.shape)
    findings = [
        f"Mean eta* at the label position ranges from {eta.min():.3g} to {eta.max():.3g} over "
        f"{L} layers x {H} heads; layer means go from {eta.mean(1)[0]:.3g} (layer 0) to "
        f"{eta.mean(1)[-1]:.3g} (layer {L - 1}).",
        f"The demonstrations' share of the head output averages {share.mean():.2f}; it is "
        f"largest at layer {top[0]} head {top[1]} ({share[top]:.2f}). "
        + cmps.share.describe(".2f") + ".",
        f"Prompts have {min(tr.num_tokens)}-{max(tr.num_tokens)} tokens.",
        cmps.stat.describe(".2f") + ".",
        _within_prompt_stationarity(m),
        cmps.jensen.describe(".3g") + ".",
    ]
    if rel is not None:
        by_sel: dict[str, list[float]] = {}
        for r in rel.rows:
            by_sel.setdefault(r["selector"], []).append(r["accuracy"])
        findings.append("Mean accuracy per selector: " + ", ".join(
            f"{s} {np.mean(v):.3f}" for s, v in sorted(by_sel.items())) + ".")
        for c, n in zip(m.crel, m.names, strict=False):
            acc = [r["accuracy"] for r in c.rows]
            findings.append(f"{n}: mean accuracy {np.mean(acc):.3f} over {len(acc)} units; "
                            "Spearman(MMD², accuracy) " + ", ".join(
                                f"{t} {r:.2f}" for t, r in c.spearman.items()) + ".")
    return findings


def _tables(m: _Measured) -> list[Table]:
    tr, rel = m.tr, m.rel
    L = tr.has_kernel_form.shape[0]
    eta = tr.eta_last.mean(0)
    share = tr.demo_share_last.mean(0)
    c_eta = [c.eta_last.mean(0) for c in m.ctr]
    c_share = [c.demo_share_last.mean(0) for c in m.ctr]
    layer_rows = tuple(
        (layer, float(eta[layer].mean()), float(eta[layer].min()), float(eta[layer].max()),
         float(share[layer].mean()), float(np.nanmean(tr.stationarity[layer]))
         if np.isfinite(tr.stationarity[layer]).any() else float("nan"),
         float(np.mean([e[layer].mean() for e in c_eta])),
         float(np.mean([s_[layer].mean() for s_ in c_share])))
        for layer in range(L))
    tables = [Table("Per layer (mean over heads and prompts, last position; control = mean over "
                    "the random-init twins)",
                    ("layer", "mean eta*", "min eta*", "max eta*", "demo share",
                     "stationarity Spearman", "control eta*", "control demo share"),
                    layer_rows)]
    if rel is not None:
        tables.append(Table("Few-shot units: accuracy vs MMD² (selection harness)",
                            ("model", "task", "selector", "k", "seed", "accuracy", "macro-F1",
                             "MMD²", "n"),
                            tuple((mdl, r["task"], r["selector"], r["k"], r["seed"],
                                   r["accuracy"], r["macro_f1"], r["mmd2_task"], r["n"])
                                  for mdl, rr in (("trained", rel),
                                                  *zip(m.names, m.crel, strict=False))
                                  for r in rr.rows)))
    return tables


def _description(m: _Measured) -> str:
    tr, ctr, rel, seed = m.tr, m.ctr, m.rel, m.seed
    return (f"{len(tr.num_tokens)} random {tr.k}-shot prompts of `{tr.dataset}` traced "
            f"through every layer and head of `{tr.model}` (seed {seed}) and of "
            f"{len(ctr)} architecture-identical random-init twin(s) (seeds "
            f"{seed + 1}..{seed + len(ctr)}) on the same prompts; eta* and the "
            "demo share at the label position, the decomposition error, Jensen's "
            "inequality and stationarity at every query position. A claim about the "
            "model counts only when the trained model differs from every control: for the "
            "Jensen gap paired over the prompts (the independent draws; per prompt the mean "
            "over heads; two-sided exact sign-flip test of trained - control, p < 0.05, one "
            f"direction: {len(tr.num_tokens)} prompts allow no p below "
            f"{min(1.0, 2.0 / 2 ** len(tr.num_tokens)):.3g}); for stationarity, a Spearman "
            "correlation pooled over all prompts' positions per head, with the trained value "
            "outside the controls' spread (union of their 95% bootstrap intervals over "
            "heads). Accuracy vs MMD² "
            "comes from the selection harness "
            + (f"results in `{rel.source}`." if rel is not None else "."))


def _data(m: _Measured, cmps: _Comparisons) -> dict[str, Any]:
    tr, rel, crel = m.tr, m.rel, m.crel
    return {"eta_last": tr.eta_last.tolist(), "demo_share_last": tr.demo_share_last.tolist(),
            "stationarity": tr.stationarity.tolist(),
            "max_decomposition_error": tr.max_decomposition_error,
            "jensen_violations": tr.jensen_violations, "alignment_error": tr.alignment_error,
            "jensen_gap": tr.jensen_gap.tolist(),
            "controls": [{"model": n, "stationarity": c.stationarity.tolist(),
                          "jensen_gap": c.jensen_gap.tolist(),
                          "demo_share_last": c.demo_share_last.tolist(),
                          "eta_last": c.eta_last.tolist(),
                          "max_decomposition_error": c.max_decomposition_error,
                          "fewshot": None if not crel else
                          {"rows": crel[i].rows, "spearman": crel[i].spearman}}
                         for i, (c, n) in enumerate(zip(m.ctr, m.names, strict=True))],
            "comparisons": [cmps.stat.to_dict(), cmps.jensen.to_dict(), cmps.share.to_dict()],
            "fewshot": None if rel is None else {"rows": rel.rows, "spearman": rel.spearman}}
