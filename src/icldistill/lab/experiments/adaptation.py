"""Task adaptation: accuracy and the distillation quantities as the number of demonstrations
grows, on a trained language model and its random-initialised controls.

For every task and ``k`` in :data:`KS` (``0, 1, 2, 4, ..., 32`` demonstrations):

- **Accuracy** on ``n_test`` test items, every test item scored after the same demonstration
  set (one shared prompt prefix per set, :func:`~icldistill.lab.experiments.phenomena.predict`);
  ``k = 0`` is zero-shot (scored once, it is the same for every set).
- **Distillation quantities at the label position**
  (:func:`~icldistill.lab.experiments.phenomena.label_position`) on ``n_trace`` test queries per
  demonstration set: per layer the demonstrations' attention mass, their share of the head
  output, ``eta* = N / (2 D')``, ``log D'`` (the effective learning rate is ``1/D'``), the
  per-key normaliser ``log(D'/n)`` (``n`` keys: the prompt's length) and ``log ||W_0||``.
  Without demonstrations (``k = 0``) the demo mass, share and ``eta*`` are 0 and ``W_0`` does
  not exist (``log ||W_0|| = -inf``, kept as undefined).

Demonstration sets are **nested**: set ``s`` is one label-balanced draw of the largest ``k``
(:func:`~icldistill.lab.experiments.phenomena.balanced_indices`, labels taking turns, so every
prefix is balanced too); the ``k``-set is its first ``k`` items, shown in the order of one
seeded random ranking of the whole draw, so the ``k``-prompt is a sub-sequence of the
``2k``-prompt and curves over ``k`` change one thing at a time.

The saturation point of a curve (:func:`saturation_point`) is the smallest ``k`` at which it
reaches ``90%`` of its rise from its first point to its maximum; the question whether the
distillation curves "predict where accuracy saturates" compares these points on the doubling
grid (:func:`log2_position`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.figures import new_figure, save_figure
from icldistill.artifacts.store import to_jsonable
from icldistill.core.results import Result
from icldistill.core.stats import spearman
from icldistill.core.validation import InputError
from icldistill.lab.experiments import phenomena as ph
from icldistill.lab.experiments._common import Check, Section, Table
from icldistill.lab.experiments._stats import pairing_floor, pairing_permutation_test

__all__ = [
    "FULL",
    "KS",
    "QUICK",
    "SATURATION_FRACTION",
    "AdaptationCurve",
    "Sizes",
    "adaptation_curve",
    "curve_saturation",
    "demo_orders",
    "log2_position",
    "nested_set",
    "run",
    "saturation_agreement",
    "saturation_point",
    "set_gains",
    "set_saturation",
    "set_spearmans",
    "within_one_doubling",
]

#: Demonstration counts of the section.
KS = (0, 1, 2, 4, 8, 16, 32)
#: A curve saturates where it reaches this fraction of its rise (:func:`saturation_point`).
SATURATION_FRACTION = 0.9
#: Quantities traced at the label position, in :class:`AdaptationCurve` order.
QUANTITIES = ("demo_mass", "demo_share", "eta", "log_normalizer", "log_normalizer_per_key",
              "log_w0_norm")


@dataclass(frozen=True)
class Sizes:
    """How much the section measures.

    Attributes
    ----------
    ks : tuple of int
        Demonstration counts (increasing, starting at 0 or above).
    n_test : int
        Test items scored per task (and per demonstration set).
    n_sets : int
        Demonstration sets per ``k``.
    n_trace : int
        Test queries traced per demonstration set and ``k``.
    max_prompt_tokens : int or None
        A ``k`` whose longest prompt is longer is skipped (and reported), like one longer than
        the model's context; None: the context is the only limit.
    """

    ks: tuple[int, ...]
    n_test: int
    n_sets: int
    n_trace: int
    max_prompt_tokens: int | None


#: Quick mode (smoke test sized for about a minute on two CPU cores with one control).
QUICK = Sizes(ks=(0, 1, 2, 4), n_test=10, n_sets=1, n_trace=1, max_prompt_tokens=450)
#: Full mode: every k of the issue (0 .. 32) wherever the prompt fits 2,560 tokens (r8's
#: 32-shot prompts do not), 60 test items, 2 demonstration sets. A background job: several
#: times the quick run per model (``reproduce`` resumes per section).
FULL = Sizes(ks=KS, n_test=60, n_sets=2, n_trace=1, max_prompt_tokens=2560)


# ============================================================================ definitions
def log2_position(k: float) -> float:
    """Position of ``k`` on the doubling grid: ``log2 k`` for ``k >= 1`` and ``-1`` for ``k = 0``
    (zero-shot sits one doubling left of ``k = 1``, as on the figures' x-axis)."""
    if not np.isfinite(k) or k < 0:
        return math.nan
    return -1.0 if k == 0 else math.log2(k)


def saturation_point(ks: Sequence[float], values: Sequence[float], *,
                     fraction: float = SATURATION_FRACTION) -> float:
    """The smallest ``k`` at which a curve reaches ``fraction`` of its total rise.

    The rise is measured from the curve's first finite point ``v_0`` (at the smallest ``k``
    with a finite value) to its maximum ``v_max``; the saturation point is the first ``k``
    (in increasing ``k``) with ``v >= v_0 + fraction (v_max - v_0)``. A curve that never rises
    above its first point saturates there.

    Parameters
    ----------
    ks : sequence of float, length ``K``
        Increasing ``k``.
    values : sequence of float, length ``K``
        The curve; non-finite points (skipped ``k``, ``-inf`` log-norms) are ignored.
    fraction : float
        In ``(0, 1]``.

    Returns
    -------
    float
        The saturation point (NaN when the curve has no finite point).
    """
    k = np.asarray(ks, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if k.ndim != 1 or k.shape != v.shape:
        raise InputError(f"ks and values must be 1-D of equal length, got {k.shape} and "
                         f"{v.shape}")
    if k.size > 1 and not np.all(np.diff(k) > 0):
        raise InputError("ks must be strictly increasing")
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    ok = np.isfinite(v)
    if not ok.any():
        return math.nan
    k, v = k[ok], v[ok]
    target = v[0] + fraction * (v.max() - v[0])
    return float(k[np.argmax(v >= target)])


# ============================================================================ demonstrations
def demo_orders(labels: Sequence[Any], k_max: int, n_sets: int,
                rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_sets`` nested demonstration draws.

    Returns, per set, ``(draw, rank)``: ``draw`` ``[k_max]`` pool indices in label-balanced
    selection order (every prefix is as balanced as the pool allows) and ``rank`` ``[k_max]`` a
    random permutation; the ``k``-set is ``draw[:k]`` shown in increasing ``rank`` (see
    :func:`nested_set`).
    """
    out = []
    for _ in range(n_sets):
        draw = ph.balanced_indices(labels, k_max, rng)
        out.append((draw, rng.permutation(k_max)))
    return out


def nested_set(order: tuple[np.ndarray, np.ndarray], k: int) -> np.ndarray:
    """Pool indices of the ``k``-set of one draw (:func:`demo_orders`), in prompt order: the
    first ``k`` of the draw, so a smaller set's prompt is a sub-sequence of a larger one's."""
    draw, rank = order
    return draw[:k][np.argsort(rank[:k], kind="stable")]


# ============================================================================ one model
@dataclass(frozen=True)
class AdaptationCurve(Result):
    """One model's adaptation to one task.

    Shapes: ``K`` demonstration counts that fit, ``S`` sets, ``n`` test items, ``L`` attention
    entries (layers), ``T = S * n_trace`` traced prompts.

    Attributes
    ----------
    model, role, task : str
    ks : tuple of int, length ``K``
    correct : ndarray ``[K, S, n]`` (float 0/1)
        Whether each test item was answered correctly after set ``s`` (``k = 0``: the same
        zero-shot answers in every set).
    traced : dict[str, ndarray ``[K, T, L]``]
        Per traced prompt and layer, every quantity of :data:`QUANTITIES` (``log_w0_norm`` is
        NaN at ``k = 0``: undefined).
    n_tokens : ndarray ``[K, T]``
        Length of every traced prompt (the keys the last token attends to).
    skipped : tuple of (int, str)
        Demonstration counts left out and why.
    chance : float
        ``1 / number of labels``.
    """

    model: str
    role: str
    task: str
    ks: tuple[int, ...]
    correct: np.ndarray
    traced: dict[str, np.ndarray]
    n_tokens: np.ndarray
    skipped: tuple[tuple[int, str], ...]
    chance: float

    @property
    def accuracy(self) -> np.ndarray:
        """``[K]`` accuracy over sets and test items."""
        K = len(self.ks)
        return self.correct.reshape(K, -1).mean(1) if self.correct.size else np.zeros(K)

    def layers(self, name: str) -> np.ndarray:
        """``[K, L]`` mean of quantity ``name`` over the traced prompts."""
        a = self.traced[name]
        if not a.size:
            return np.zeros((len(self.ks), 0))
        return _nanmean_axis1(a)

    def layer_mean(self, name: str) -> np.ndarray:
        """``[K]`` mean of quantity ``name`` over prompts and layers (NaN where undefined)."""
        return np.array([_nanmean(r) for r in self.layers(name)], dtype=np.float64)


def adaptation_curve(member: ph.ModelUnderTest, task: ph.TaskItems, ks: Sequence[int],
                     orders: Sequence[tuple[np.ndarray, np.ndarray]],
                     trace_queries: np.ndarray, *,
                     skipped: Sequence[tuple[int, str]] = ()) -> AdaptationCurve:
    """Accuracy and distillation quantities of one model on one task over ``ks``.

    Parameters
    ----------
    member : ModelUnderTest
    task : TaskItems
    ks : sequence of int
        Demonstration counts that fit (see :func:`_fitting_ks`).
    orders : sequence of ``S`` draws from :func:`demo_orders`
    trace_queries : ndarray ``[S, n_trace]``
        Test-item indices traced with each set.
    skipped : sequence of (k, reason)
        Recorded in the result.
    """
    loaded = member.loaded
    S = len(orders)
    n = len(task.test_texts)
    correct = np.zeros((len(ks), S, n))
    traced: dict[str, list[np.ndarray]] = {q: [] for q in QUANTITIES}
    n_tokens = np.zeros((len(ks), S * trace_queries.shape[1]))
    for ki, k in enumerate(ks):
        sets = [task.demos(nested_set(o, k)) for o in orders]
        if k == 0:
            pred, _ = ph.predict(loaded, task, task.test_texts, [])
            correct[ki] = (pred == task.test_labels)[None, :]
        else:
            for s, demos in enumerate(sets):
                pred, _ = ph.predict(loaded, task, task.test_texts, demos)
                correct[ki, s] = pred == task.test_labels
        rows: dict[str, list[np.ndarray]] = {q: [] for q in QUANTITIES}
        t = 0
        for s, demos in enumerate(sets):
            for qi in trace_queries[s]:
                prompt = task.format.prompt(demos, task.test_texts[int(qi)])
                lp = ph.label_position(loaded, prompt, w0=k > 0)
                lw = np.where(np.isfinite(lp.log_w0_norm), lp.log_w0_norm, np.nan)
                rows["demo_mass"].append(lp.demo_mass)
                rows["demo_share"].append(lp.demo_share)
                rows["eta"].append(lp.eta)
                rows["log_normalizer"].append(lp.log_normalizer)
                rows["log_normalizer_per_key"].append(lp.log_normalizer - math.log(lp.n_tokens))
                rows["log_w0_norm"].append(lw if k > 0 else np.full_like(lw, np.nan))
                n_tokens[ki, t] = lp.n_tokens
                t += 1
        for q in QUANTITIES:
            traced[q].append(np.stack(rows[q]).astype(np.float64))
    T = n_tokens.shape[1]
    return AdaptationCurve(
        model=member.name, role=member.role, task=task.name, ks=tuple(int(k) for k in ks),
        correct=correct, traced={q: np.stack(v) if v else np.zeros((0, T, 0))
                                 for q, v in traced.items()},
        n_tokens=n_tokens, skipped=tuple(skipped), chance=1.0 / max(1, len(task.label_names)))


# ============================================================================ prompt lengths
def _context(loaded: Any) -> int:
    from icldistill.evaluation.scoring import context_limit

    return context_limit(loaded.model, loaded.tokenizer)


def _prompt_length(loaded: Any, task: ph.TaskItems, demos: list[tuple[str, str]],
                   query: str) -> int:
    """Tokens of the prompt (special tokens included) plus its longest label."""
    tok = loaded.tokenizer
    text = task.format.prompt(demos, query).render().text
    n = len(tok(text, add_special_tokens=True)["input_ids"])
    labels = max(len(tok(" " + task.format.label_words[lab], add_special_tokens=False)
                     ["input_ids"]) for lab in task.label_names)
    return n + labels


def _fitting_ks(loaded: Any, task: ph.TaskItems, ks: Sequence[int],
                orders: Sequence[tuple[np.ndarray, np.ndarray]], limit: int | None
                ) -> tuple[list[int], list[tuple[int, str]]]:
    """The ``ks`` whose every prompt (longest test query, every set) fits the model's context
    and ``limit``, and the skipped ones with the reason."""
    ctx = _context(loaded)
    tok = loaded.tokenizer
    lens = [len(tok(q, add_special_tokens=False)["input_ids"]) for q in task.test_texts]
    longest = task.test_texts[int(np.argmax(lens))]
    pool = len(task.pool_texts)
    fit, skipped = [], []
    for k in ks:
        if k > pool:
            skipped.append((k, f"larger than the pool ({pool} items)"))
            continue
        if skipped and "tokens" in skipped[-1][1]:     # nested sets: a larger k is longer
            skipped.append((k, f"longer than k={skipped[-1][0]}'s prompt, already too long"))
            continue
        n = max((_prompt_length(loaded, task, task.demos(nested_set(o, k)), longest)
                 for o in orders), default=0)
        if n > ctx:
            skipped.append((k, f"prompt of {n} tokens exceeds the model context of {ctx}"))
        elif limit is not None and n > limit:
            skipped.append((k, f"prompt of {n} tokens exceeds this mode's limit of {limit} "
                               "tokens"))
        else:
            fit.append(int(k))
    return fit, skipped


# ============================================================================ statistics
def _per_layer_spearman(ks: Sequence[int], layers: np.ndarray, sign: float) -> np.ndarray:
    """``[L]`` Spearman over ``k >= 1`` of ``sign * layers[:, l]`` (``layers`` ``[K, L]``)
    against ``k``; NaN for a layer with fewer than 3 finite points."""
    k = np.asarray(ks)
    sel = k >= 1
    out = []
    for y in layers[sel].T:
        ok = np.isfinite(y)
        out.append(spearman(k[sel][ok], sign * y[ok]) if ok.sum() >= 3 else math.nan)
    return np.asarray(out, dtype=np.float64)


def _layer_spearmans(curve: AdaptationCurve, name: str, sign: float = 1.0) -> np.ndarray:
    """``[L]`` Spearman over ``k >= 1`` of ``sign * quantity`` against ``k``, per layer."""
    return _per_layer_spearman(curve.ks, curve.layers(name), sign)


def set_spearmans(curve: AdaptationCurve, name: str, sign: float = 1.0) -> np.ndarray:
    """``[S]`` per demonstration set: the mean over layers of the Spearman over ``k >= 1`` of
    ``sign * quantity`` (averaged over the set's traced prompts) against ``k``.

    The sets are the section's independent draws (each is one nested sequence of prompts);
    the layers and traced queries of one set are not, so the claim tests resample sets, not
    (task, layer) pairs. A layer with fewer than 3 finite points is left out of the mean; a
    set without any other layer is NaN.
    """
    return np.asarray([_nanmean(_per_layer_spearman(curve.ks, layers, sign))
                       for layers in _set_layers(curve, name)], dtype=np.float64)


def curve_saturation(curve: AdaptationCurve, what: str) -> float:
    """:func:`saturation_point` of one quantity's curve: ``"accuracy"``, or a traced quantity's
    layer mean (``"log_w0_norm"`` from ``k = 1`` on: it is undefined at ``k = 0``)."""
    ks = np.asarray(curve.ks, dtype=np.float64)
    if what == "accuracy":
        return saturation_point(ks, curve.accuracy)
    if what == "log_w0_norm":               # starts at k = 1 (undefined at k = 0)
        v = curve.layer_mean("log_w0_norm")
        return saturation_point(ks[ks >= 1], v[ks >= 1]) if (ks >= 1).any() else math.nan
    return saturation_point(ks, curve.layer_mean(what))


def _saturation(curve: AdaptationCurve) -> dict[str, float]:
    """Saturation points of accuracy, the layer-mean demo share and ``log ||W_0||``, and the
    rise of the accuracy curve above its first point."""
    out = {w: curve_saturation(curve, w) for w in ("accuracy", "demo_share", "log_w0_norm")}
    acc = curve.accuracy
    out["accuracy_rise"] = float(acc.max() - acc[0]) if acc.size else math.nan
    return out


def set_saturation(curve: AdaptationCurve) -> list[dict[str, float]]:
    """Per demonstration set, the saturation points of that set's curves: accuracy over the
    test items read with the set, and the layer-mean demo share and ``log ||W_0||`` over the
    set's traced prompts (``log ||W_0||`` from ``k = 1`` on), with the rise of the set's
    accuracy above its first point (keys as in :func:`saturation_agreement`).

    The set, not the task, is the unit of the saturation claim: each set is one independent
    prompt sequence, and its accuracy and distillation curves come from the same prompts.

    Returns
    -------
    list of ``S`` dicts
        ``"accuracy"``, ``"demo_share"``, ``"log_w0_norm"``, ``"accuracy_rise"``.
    """
    ks = np.asarray(curve.ks, dtype=np.float64)
    S = curve.correct.shape[1] if curve.correct.ndim == 3 else 0
    share, w0 = _set_layers(curve, "demo_share"), _set_layers(curve, "log_w0_norm")
    w = ks >= 1
    out = []
    for s in range(S):
        acc = curve.correct[:, s].mean(1) if curve.correct.size else np.zeros(0)
        sh = np.array([_nanmean(r) for r in share[s]], dtype=np.float64)
        lw = np.array([_nanmean(r) for r in w0[s]], dtype=np.float64)
        out.append({
            "accuracy": saturation_point(ks, acc) if acc.size else math.nan,
            "demo_share": saturation_point(ks, sh) if sh.size else math.nan,
            "log_w0_norm": saturation_point(ks[w], lw[w]) if w.any() and lw.size else math.nan,
            "accuracy_rise": float(acc.max() - acc[0]) if acc.size else math.nan})
    return out


def saturation_agreement(sat: dict[str, float], what: str) -> float:
    """Agreement of accuracy's saturation point with ``what``'s; undefined (NaN) when accuracy
    never rises above its first point (there is no saturation to predict)."""
    if not sat["accuracy_rise"] > 0:
        return math.nan
    return within_one_doubling(sat["accuracy"], sat[what])


def within_one_doubling(a: float, b: float) -> float:
    """1 when ``a`` and ``b`` lie within one doubling of each other, else 0 (NaN if either is
    undefined)."""
    pa, pb = log2_position(a), log2_position(b)
    if not (np.isfinite(pa) and np.isfinite(pb)):
        return math.nan
    return float(abs(pa - pb) <= 1.0 + 1e-12)


def set_gains(curve: AdaptationCurve) -> np.ndarray:
    """``[S]`` per demonstration set: accuracy at the largest fitting ``k`` minus zero-shot
    accuracy, over the same test items.

    The set, not the item, is the unit: every item of a task is read with the same set's
    demonstrations, so the items of one set are not independent draws of the claim "accuracy
    rises with k" (which is about demonstration sets in general).
    """
    if len(curve.ks) < 2 or curve.ks[0] != 0:
        return np.zeros(0)
    return curve.correct[-1].mean(1) - curve.correct[0].mean(1)


# ============================================================================ section
def _validate(ks: Any, n_test: Any, n_sets: Any, n_trace: Any) -> None:
    def positive(v: Any, name: str) -> None:
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")

    if not isinstance(ks, Sequence) or isinstance(ks, str) or len(ks) == 0:
        raise InputError(f"ks must be a non-empty sequence of demonstration counts, got {ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise InputError(f"ks must hold non-negative integers, got {k!r}")
    if list(ks) != sorted(set(int(k) for k in ks)):
        raise InputError(f"ks must be strictly increasing, got {list(ks)}")
    if len(ks) < 2:
        raise InputError(f"ks needs at least two demonstration counts, got {list(ks)}")
    positive(n_test, "n_test")
    positive(n_sets, "n_sets")
    positive(n_trace, "n_trace")


# long: 8 lines of signature and 24 of NumPy docstring; the code is 52
def run(models: Sequence[str | Any] = ("smollm2-135m",), *, out_dir: str | Path,
        quick: bool = False, seed: int = 0, progress: bool = False,
        tasks: Sequence[str | ph.TaskItems] | None = None,
        under_test: Sequence[Sequence[ph.ModelUnderTest]] | None = None, n_controls: int = 1,
        dtype: torch.dtype = torch.float32, ks: Sequence[int] | None = None,
        n_test: int | None = None, n_sets: int | None = None, n_trace: int | None = None,
        max_prompt_tokens: int | str | None = "mode",
        resume_dir: str | Path | None = None) -> Section:
    """The task-adaptation section (see the module docstring).

    Parameters
    ----------
    models : sequence of str or loaded models
        Trained models (registry keys); each gets ``n_controls`` random-initialised twins.
    out_dir : path
        Figures go here.
    quick : bool
        :data:`QUICK` sizes instead of :data:`FULL`.
    seed : int
        Seeds the test items, the demonstration sets, the traced queries and the bootstrap.
    tasks : sequence of str or TaskItems, optional
        Default :data:`~icldistill.lab.experiments.phenomena.DEFAULT_TASKS`.
    under_test : sequence of model groups, optional
        Already built groups (trained first, then controls) instead of ``models``.
    ks, n_test, n_sets, n_trace : optional
        Override the mode's sizes (:class:`Sizes`).
    max_prompt_tokens : int, None or ``"mode"``
        Override the mode's prompt-length limit (None: only the context).
    resume_dir : path, optional
        Keep each finished (model, task) curve here, so that a killed run resumes from its
        last finished part (:class:`~icldistill.lab.experiments.phenomena.Parts`).
    """
    t0 = time.perf_counter()
    sizes = QUICK if quick else FULL
    ks_ = tuple(sizes.ks if ks is None else ks)
    n_test_ = sizes.n_test if n_test is None else n_test
    n_sets_ = sizes.n_sets if n_sets is None else n_sets
    n_trace_ = sizes.n_trace if n_trace is None else n_trace
    _validate(ks_, n_test_, n_sets_, n_trace_)
    limit = sizes.max_prompt_tokens if max_prompt_tokens == "mode" else max_prompt_tokens
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise InputError(f"max_prompt_tokens must be a positive integer or None, got {limit!r}")
    sizes = Sizes(tuple(int(k) for k in ks_), int(n_test_), int(n_sets_), int(n_trace_), limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = ph.resolve_models(models, under_test=under_test, n_controls=n_controls, seed=seed,
                               dtype=dtype, progress=progress)
    items = ph.resolve_tasks(ph.DEFAULT_TASKS if tasks is None else tasks, n_test=sizes.n_test,
                             seed=seed, progress=progress)
    torch.manual_seed(seed)
    # demonstration sets and traced queries: drawn once per task, shared by every model
    plan = []
    for ti, task in enumerate(items):
        rng = np.random.default_rng([seed, ti])
        k_max = min(max(sizes.ks), len(task.pool_texts))
        orders = demo_orders(task.pool_labels, k_max, sizes.n_sets, rng)
        n = len(task.test_texts)
        m = sizes.n_sets * sizes.n_trace
        pick = rng.permutation(n)[: min(m, n)]
        queries = np.resize(pick, m).reshape(sizes.n_sets, sizes.n_trace)
        plan.append((task, orders, queries))
    parts = ph.Parts(resume_dir, "adaptation", {
        "sizes": dataclasses.asdict(sizes), "seed": seed,
        "tasks": [ph.task_fingerprint(t) for t in items]})
    results: list[list[list[AdaptationCurve]]] = []       # [group][member][task]
    for group in groups:
        # the controls share the trained model's tokenizer and context
        fits = [_fitting_ks(group[0].loaded, task, sizes.ks, orders, limit)
                for task, orders, _ in plan]
        g_res = []
        for member in group:
            m_res = []
            for ti, ((task, orders, queries), (fit, skipped)) in enumerate(
                    zip(plan, fits, strict=True)):
                if progress:
                    print(f"adaptation: {member.name} on {task.name}, k = {fit}", flush=True)
                m_res.append(parts.run(
                    functools.partial(adaptation_curve, member, task, fit, orders, queries,
                                      skipped=skipped),
                    model=member, task=task.name, index=ti, ks=list(fit), skipped=skipped))
            g_res.append(m_res)
        results.append(g_res)
    return _section(results, groups, plan, sizes, out, seed, quick, t0 - parts.reused_seconds)


# ---------------------------------------------------------------------------------- assembly
#: Appended to a directional claim (it closes the claim's parenthesis).
DIRECTION = "; the trained value must not lie beyond the controls on the opposite side)"


def _sign_ok(st: ph.Statistic, sign: float) -> bool:
    """The mean has the claimed sign and its interval excludes 0."""
    if not np.isfinite(st.value):
        return False
    return bool(st.value * sign > 0 and st.low * sign > 0 and st.high * sign > 0)


@dataclass(frozen=True)
class _GroupStats:
    """Per member of one model group (trained first): the per-(task, set) layer-mean
    Spearmans of log 1/D', log n/D' and the demo share against k
    (:func:`set_spearmans`), the per-(task, set) accuracy gains (:func:`set_gains`), the
    saturation points per (task, set) (:func:`set_saturation`, with ``"task"`` and ``"set"``
    added) and their agreement with accuracy's."""

    rho_lr: list[np.ndarray]
    rho_key: list[np.ndarray]
    rho_share: list[np.ndarray]
    gains: list[np.ndarray]
    set_sat: list[list[dict[str, Any]]]
    agree_share: list[np.ndarray]
    agree_w0: list[np.ndarray]


def _group_stats(g_res: list[list[AdaptationCurve]]) -> _GroupStats:
    rho_lr, rho_key, rho_share, gains, set_sat = [], [], [], [], []
    for m_res in g_res:
        rho_lr.append(np.concatenate([set_spearmans(c, "log_normalizer", -1.0)
                                      for c in m_res]))
        rho_key.append(np.concatenate([set_spearmans(c, "log_normalizer_per_key", -1.0)
                                       for c in m_res]))
        rho_share.append(np.concatenate([set_spearmans(c, "demo_share") for c in m_res]))
        gains.append(np.concatenate([set_gains(c) for c in m_res]))
        set_sat.append([{"task": c.task, "block": ti, "set": s, **d}
                        for ti, c in enumerate(m_res) for s, d in enumerate(set_saturation(c))])
    agree_share = [np.array([saturation_agreement(s, "demo_share") for s in m])
                   for m in set_sat]
    agree_w0 = [np.array([saturation_agreement(s, "log_w0_norm") for s in m])
                for m in set_sat]
    return _GroupStats(rho_lr, rho_key, rho_share, gains, set_sat, agree_share, agree_w0)


#: A check with the raw p-value of its claim, the test's description and the smallest p the
#: test allows on its units (for the section's Holm correction and testability,
#: :func:`~icldistill.lab.experiments.phenomena.holm_checks`).
_Tested = tuple[Check, float, str, float]


def _direction_checks(group: list[ph.ModelUnderTest], st: _GroupStats, seed: int, tag: str,
                      comparisons: list[dict[str, Any]]) -> list[_Tested]:
    """The four directional claims (1/D', n/D', demo share, accuracy gain) of one group,
    each against its controls, with the paired sign-flip p-value of its mean over the items
    its interval resamples; the comparisons are appended to ``comparisons``."""
    trained = group[0]
    specs = [
        ("mean per-(task, set) layer-mean Spearman(log 1/D', k) over k >= 1", st.rho_lr, -1.0,
         "the effective learning rate 1/D' falls as the number of demonstrations grows "
         "(the theory's claim, on D' itself)"),
        ("mean per-(task, set) layer-mean Spearman(log n/D', k) over k >= 1", st.rho_key, -1.0,
         "the per-key learning rate n/D' falls as the number of demonstrations grows "
         "(D' is a sum over the n keys, so 1/D' falls with any weights; this variant "
         "removes that)"),
        ("mean per-(task, set) layer-mean Spearman(demo share, k) over k >= 1", st.rho_share, 1.0,
         "the demonstrations' share of the attention output rises with k"),
        ("per-(task, set) accuracy at the largest k minus zero-shot", st.gains, 1.0,
         "accuracy rises with k (largest fitting k against k = 0, paired over the same test "
         "items, one unit per demonstration set)"),
    ]
    checks = []
    for name, vals, sign, claim in specs:
        # every member is measured on the same (task, set) units: paired against each twin
        cmp = ph.compare_paired_with_controls(name, vals[0], vals[1:], group, seed=seed)
        comparisons.append({"group": trained.name, **cmp.to_dict()})
        n = int(np.isfinite(vals[0]).sum())
        units = "(task, set) units"
        check = ph.controlled_check(
            tag + claim + (" (mean < 0 with its interval below 0" if sign < 0 else
                           " (mean > 0 with its interval above 0") + DIRECTION,
            _sign_ok(cmp.trained, sign), cmp, f"{n} {units} on the trained model", sign=sign)
        # the design's floor: a (task, set) whose Spearman the data left undefined (a
        # constant curve) could have been measured
        checks.append((check, ph.sign_flip_p(vals[0]), ph.sign_flip_text(vals[0], units),
                       ph.sign_flip_floor(np.zeros(vals[0].size))))
    return checks


def _saturation_checks(group: list[ph.ModelUnderTest], g_res: list[list[AdaptationCurve]],
                       st: _GroupStats, seed: int, tag: str,
                       comparisons: list[dict[str, Any]]) -> list[_Tested]:
    """Whether the demo-share and ||W_0|| curves saturate where accuracy does, per group,
    against the controls, with the one-sided pairing permutation p-value
    (:func:`~icldistill.lab.experiments._stats.pairing_permutation_test`) of the
    per-(task, set) agreement: does a set's distillation curve saturate near *its own*
    accuracy curve more often than near another set's? Agreement on half the units is not
    chance agreement (saturation points pile up on a few ``k``); re-pairing the units is.
    The comparisons are appended to ``comparisons``."""
    trained = group[0]
    units = st.set_sat[0]
    multi_set = len({u["set"] for u in units}) > 1
    checks = []
    for label, agree, what in (("demo share", st.agree_share, "demo_share"),
                               ("||W_0||", st.agree_w0, "log_w0_norm")):
        name = f"per-(task, set) agreement of k_sat(accuracy) and k_sat({label})"
        cmp = ph.compare_paired_with_controls(name, agree[0], agree[1:], group, seed=seed)
        comparisons.append({"group": trained.name, **cmp.to_dict()})
        fin = agree[0][np.isfinite(agree[0])]
        # the units whose accuracy rises are re-paired among themselves (defined by accuracy
        # alone, so that re-pairing does not change which units take part; an undefined
        # distillation k_sat agrees with nothing), a task's sets as a whole (blocks: the
        # task's position, not its name, which may repeat)
        active = np.array([u["accuracy_rise"] > 0 and bool(np.isfinite(u["accuracy"]))
                           for u in units], dtype=bool).reshape(len(units))
        match = np.array([[within_one_doubling(a["accuracy"], b[what]) == 1.0
                           for b in units] for a in units], dtype=bool
                         ).reshape(len(units), len(units))
        blocks = [u["block"] for u in units]
        test = pairing_permutation_test(match, blocks=blocks, active=active, seed=seed)
        detail = "trained k_sat (accuracy / " + label + "): " + ", ".join(
            f"{u['task']}" + (f" set {u['set']}" if multi_set else "")
            + f" {_k(u['accuracy'])} / {_k(u[what])}"
            + ("" if u["accuracy_rise"] > 0 else " (accuracy does not rise: left out)")
            for u in units)
        check = ph.controlled_check(
            tag + f"the {label} curve predicts where accuracy saturates: k_sat within one "
            "doubling of k_sat(accuracy) on more than half of the (task, set) units where "
            "accuracy rises, and more often than with the units' curves paired at random "
            "(k_sat: first k reaching 90% of the rise" + DIRECTION,
            bool(fin.size) and float(fin.mean()) > 0.5, cmp, detail, sign=1)
        how = (f"every one of the {test.n_perm} re-pairings" if test.exact
               else f"{test.n_perm} random re-pairings")
        checks.append((check, test.p,
                       f"pairing permutation test (one-sided, {how} of the units where accuracy "
                       "rises: tasks moved as wholes, sets permuted within a task) of "
                       "agreement beyond chance pairing: "
                       f"{test.agree} of the {test.n} (task, set) units where accuracy "
                       "rises agree",
                       # the design's floor: the re-pairings of all its units
                       pairing_floor(len(units),
                                     block_size=max(1, len(units) // max(1, len(set(blocks)))))))
    return checks


@dataclass
class _Rows:
    """Rows of the four tables, filled group by group."""

    acc: list[tuple[Any, ...]]
    dist: list[tuple[Any, ...]]
    layer: list[tuple[Any, ...]]
    sat: list[tuple[Any, ...]]


def _add_rows(rows: _Rows, group: list[ph.ModelUnderTest], g_res: list[list[AdaptationCurve]],
              st: _GroupStats, sizes: Sizes) -> None:
    for m_i, (member, m_res) in enumerate(zip(group, g_res, strict=True)):
        for c in m_res:
            rows.acc.append((member.name, c.task, *_on_grid(c.ks, c.accuracy, sizes.ks)))
        mean_acc = _task_mean([(_on_grid(c.ks, c.accuracy, sizes.ks)) for c in m_res])
        rows.acc.append((member.name, "mean over tasks", *mean_acc))
        for q, label in (("demo_mass", "demo mass"), ("demo_share", "demo share"),
                         ("eta", "eta*"), ("log_normalizer", "log D'"),
                         ("log_normalizer_per_key", "log(D'/n)"),
                         ("log_w0_norm", "log ||W_0||")):
            for c in m_res:
                rows.dist.append((member.name, c.task, label,
                                  *_on_grid(c.ks, c.layer_mean(q), sizes.ks)))
        for s in st.set_sat[m_i]:
            rows.sat.append((member.name, s["task"], s["set"], s["accuracy_rise"],
                             s["accuracy"], s["demo_share"], s["log_w0_norm"],
                             saturation_agreement(s, "demo_share"),
                             saturation_agreement(s, "log_w0_norm")))
        L = _n_layers(m_res)
        for layer in range(L):
            rows.layer.append((member.name, layer, *_layer_row(m_res, layer)))


def _group_findings(group: list[ph.ModelUnderTest], g_res: list[list[AdaptationCurve]],
                    st: _GroupStats, tag: str) -> list[str]:
    findings = []
    for m_i, (member, m_res) in enumerate(zip(group, g_res, strict=True)):
        accs = ", ".join(f"{c.task} {c.accuracy[0]:.2f} -> {c.accuracy[-1]:.2f} "
                         f"(k={c.ks[-1]}, chance {c.chance:.2f})" for c in m_res
                         if len(c.ks))
        findings.append(f"{member.name}: accuracy from the smallest to the largest fitting "
                        f"k: {accs}.")
        sh = [c.layer_mean("demo_share") for c in m_res]
        lw = [c.layer_mean("log_w0_norm") for c in m_res]
        lk = [c.layer_mean("log_normalizer_per_key") for c in m_res]
        findings.append(
            f"{member.name}: layer-mean demo share " + ", ".join(
                f"{c.task} {_first(s, c.ks):.3f} (k={_first_k(c.ks)}) -> {s[-1]:.3f}"
                for c, s in zip(m_res, sh, strict=True) if len(c.ks))
            + "; layer-mean log ||W_0|| " + ", ".join(
                f"{c.task} {_first(w, c.ks):.2f} -> {w[-1]:.2f}"
                for c, w in zip(m_res, lw, strict=True) if len(c.ks))
            + "; layer-mean log(D'/n) " + ", ".join(
                f"{c.task} {v[0]:.2f} -> {v[-1]:.2f}"
                for c, v in zip(m_res, lk, strict=True) if len(c.ks)) + ".")
        findings.append(
            f"{member.name}: mean over (task, set) of the layer-mean Spearman of log 1/D' vs k "
            f"{_nanmean(st.rho_lr[m_i]):.2f}, of log n/D' vs k {_nanmean(st.rho_key[m_i]):.2f}, "
            f"of the demo share vs k {_nanmean(st.rho_share[m_i]):.2f}; k_sat agreement "
            f"(accuracy vs demo share) {_nanmean(st.agree_share[m_i]):.2f}, "
            f"(accuracy vs ||W_0||) {_nanmean(st.agree_w0[m_i]):.2f} of the (task, set) units "
            "where accuracy rises.")
    skipped = sorted({(c.task, k, why) for c in g_res[0] for k, why in c.skipped})
    if skipped:
        findings.append(f"{tag}skipped: " + "; ".join(f"{t} k={k} ({why})"
                                                      for t, k, why in skipped) + ".")
    return findings


def _tables(rows: _Rows, sizes: Sizes) -> list[Table]:
    grid = [f"k={k}" for k in sizes.ks]
    return [
        Table("Accuracy vs number of demonstrations (mean over sets and test items)",
              ("model", "task", *grid), tuple(rows.acc)),
        Table("Layer-mean distillation quantities at the label position vs k (mean over "
              "traced prompts and layers; log ||W_0|| undefined at k=0)",
              ("model", "task", "quantity", *grid), tuple(rows.dist)),
        Table("Per layer (mean over tasks): demo share at the smallest/largest k >= 1, "
              "Spearman over k >= 1 of the demo share, log 1/D' and log n/D', eta* and "
              "log ||W_0|| at the largest k",
              ("model", "layer", "share k_min", "share k_max", "rho(share, k)",
               "rho(log 1/D', k)", "rho(log n/D', k)", "eta* k_max", "log||W_0|| k_max"),
              tuple(rows.layer)),
        Table("Saturation points k_sat per (task, demonstration set) (first k reaching 90% of "
              "the rise of the set's curve; ||W_0|| from k=1) and agreement with accuracy's "
              "(1 = within one doubling; undefined where the set's accuracy never rises above "
              "its first point)",
              ("model", "task", "set", "accuracy rise", "k_sat accuracy", "k_sat demo share",
               "k_sat ||W_0||", "agree share", "agree ||W_0||"), tuple(rows.sat)),
    ]


def _description(plan: list[Any], sizes: Sizes, seed: int, quick: bool) -> str:
    tasks = [p[0] for p in plan]
    return (
        f"Task adaptation on {', '.join(t.name for t in tasks)}: for k in "
        f"{list(sizes.ks)} demonstrations ({'quick' if quick else 'full'} mode), accuracy on "
        f"{sizes.n_test} test items per task (label-balanced, seed {seed}) after each of "
        f"{sizes.n_sets} nested label-balanced demonstration set(s) (one shared prompt per set; "
        "k=0 is zero-shot), and the distillation quantities at the label position (last "
        f"token) on {sizes.n_trace} traced test quer{'y' if sizes.n_trace == 1 else 'ies'} per "
        "set and k: per layer (mean over the kernel-form heads) the demonstrations' attention "
        "mass, their share ||c_D|| / sum_S ||c_S|| of the head output, eta* = N/(2D'), "
        "log D' (effective learning rate 1/D'), the per-key normaliser log(D'/n) (n = prompt "
        "length = keys of the last token) and log ||W_0||_HS (undefined at k=0). The k-set is "
        "the first k items of one label-balanced draw per set, shown in the order of one "
        "seeded ranking, so each prompt is a sub-sequence of the next larger one. A k longer "
        "than the pool, or whose longest prompt exceeds the model context"
        + (f" or {sizes.max_prompt_tokens} tokens (this mode's compute limit)"
           if sizes.max_prompt_tokens else "")
        + " is skipped and reported. Every quantity is measured on the trained model and on "
        "its random-initialised control(s) on the same prompts; a check passes only if its "
        "claim holds on the trained model and the trained model differs from every control "
        "on the same units (paired: trained - control per (task, set) or per task, two-sided "
        f"exact sign-flip p < {ph.ALPHA:g}, all in one direction; with U units no p is below "
        "2/2^U); the claims are directional, so a trained model that differs on the opposite "
        "side (the random network shows the property more strongly) fails too. Spearman "
        "checks use, per task and demonstration set (the independent "
        "draws), the Spearman correlation over k >= 1 (k=0 has no demonstrations) of each "
        "layer's curve, averaged over layers; the claim needs the mean over the (task, set) "
        "units' interval on the claimed side of 0 (the layers of one prompt sequence are not "
        "independent, so they are not resampled apart: with T tasks and S sets the smallest "
        "two-sided sign-flip p is 2/2^(T S), 0.25 for 3 tasks and 1 set). The accuracy "
        "check takes one unit per (task, set) too: the set's accuracy at the largest fitting "
        "k minus zero-shot on the same items (the items of a set share its demonstrations). "
        "The 1/D' check "
        "uses D' itself, as the theory states it; "
        "the per-key check uses n/D', which removes the growth of D' with the number of keys "
        "(a sum over keys grows with any weights). Saturation: k_sat of a curve is the "
        "smallest k reaching 90% of its rise from its first point (k=0; k=1 for log ||W_0||) "
        "to its maximum, per (task, demonstration set) on that set's curves (accuracy over the "
        "items read with the set; the distillation curves over its traced prompts); "
        "accuracy's and a distillation curve's agree on a unit when their "
        "log2 positions (k=0 at -1) differ by at most 1 (undefined on a unit whose accuracy "
        "never rises above its first point: nothing saturates); the check needs agreement "
        "on more than half of the units where it is defined, and the per-unit agreement (0/1) "
        "is the statistic compared with the controls. Each claim also gets a p-value on the "
        "trained model: the paired sign-flip test of mean = 0 over the same values its "
        "interval resamples for the Spearman and accuracy-gain checks; for the saturation "
        "checks a one-sided pairing permutation test (does a unit's distillation k_sat agree "
        "with its own accuracy k_sat more often than with another unit's? saturation points "
        "that pile up on one k agree by chance; the re-pairings move a task's sets as a "
        "whole and permute them within the task, since they share its test items and "
        "format: with T tasks of S sets no p is below 1/(T! S!^T)), "
        "Holm-corrected over this section's claim checks (the family "
        f"is the section's claims); a check holds only with Holm p < {ph.ALPHA:g}.")


def _data(plan: list[Any], groups: list[list[ph.ModelUnderTest]], sizes: Sizes, seed: int,
          quick: bool, data_models: list[Any], comparisons: list[dict[str, Any]]
          ) -> dict[str, Any]:
    return {
        "sizes": {"ks": list(sizes.ks), "n_test": sizes.n_test, "n_sets": sizes.n_sets,
                  "n_trace": sizes.n_trace, "max_prompt_tokens": sizes.max_prompt_tokens},
        "seed": seed, "quick": quick,
        "tasks": [{"name": t.name, "labels": list(t.label_names),
                   "sets": [{"draw": o[0].tolist(), "rank": o[1].tolist()} for o in orders],
                   "trace_queries": q.tolist()} for t, orders, q in plan],
        "models": [[m.name for m in g] for g in groups],
        "curves": data_models,
        "comparisons": comparisons,
    }


def _section(results: list[list[list[AdaptationCurve]]], groups: list[list[ph.ModelUnderTest]],
             plan: list[Any], sizes: Sizes, out: Path, seed: int, quick: bool,
             t0: float) -> Section:
    tested: list[_Tested] = []
    findings: list[str] = []
    comparisons: list[dict[str, Any]] = []
    rows = _Rows([], [], [], [])
    multi = len(groups) > 1
    data_models = []
    for group, g_res in zip(groups, results, strict=True):
        tag = f"{group[0].name}: " if multi else ""
        st = _group_stats(g_res)
        tested += _direction_checks(group, st, seed, tag, comparisons)
        tested += _saturation_checks(group, g_res, st, seed, tag, comparisons)
        _add_rows(rows, group, g_res, st, sizes)
        findings += _group_findings(group, g_res, st, tag)
        data_models.append([[_curve_data(c) for c in m_res] for m_res in g_res])
    checks = ph.holm_checks([c for c, _, _, _ in tested], [p for _, p, _, _ in tested],
                            [t for _, _, t, _ in tested], floors=[f for *_, f in tested])
    tables = _tables(rows, sizes)
    figures = _figures(results, groups, sizes, out)
    data = _data(plan, groups, sizes, seed, quick, data_models, comparisons)
    return Section(name="adaptation", title="Task adaptation: accuracy and distillation vs k",
                   description=_description(plan, sizes, seed, quick), checks=checks,
                   findings=findings, tables=tables, figures=figures, data=to_jsonable(data),
                   seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------- helpers
def _k(v: float) -> str:
    return "–" if not np.isfinite(v) else str(int(v))


def _nanmean(a: np.ndarray) -> float:
    return ph.finite_mean(a)


def _first_k(ks: Sequence[int]) -> int:
    return next((k for k in ks if k >= 1), ks[0])


def _first(v: np.ndarray, ks: Sequence[int]) -> float:
    i = next((i for i, k in enumerate(ks) if k >= 1), 0)
    return float(v[i])


def _on_grid(ks: Sequence[int], values: np.ndarray, grid: Sequence[int]) -> list[float]:
    m = dict(zip(ks, (float(v) for v in values), strict=True))
    return [m.get(k, math.nan) for k in grid]


def _task_mean(rows: list[list[float]]) -> list[float]:
    a = np.asarray(rows, dtype=np.float64)
    with np.errstate(all="ignore"):
        return [float(np.mean(col)) if np.isfinite(col).all() else math.nan for col in a.T]


def _n_layers(m_res: list[AdaptationCurve]) -> int:
    return max((c.traced["demo_share"].shape[-1] for c in m_res if c.ks), default=0)


def _layer_row(m_res: list[AdaptationCurve], layer: int) -> tuple[float, ...]:
    def at(c: AdaptationCurve, q: str, which: str) -> float:
        ks = np.asarray(c.ks)
        idx = np.nonzero(ks >= 1)[0]
        if not idx.size:
            return math.nan
        return float(c.layers(q)[idx[0] if which == "min" else idx[-1], layer])

    def mean(vals: list[float]) -> float:
        return _nanmean(np.asarray(vals))

    return (mean([at(c, "demo_share", "min") for c in m_res]),
            mean([at(c, "demo_share", "max") for c in m_res]),
            mean([_layer_spearmans(c, "demo_share")[layer] for c in m_res]),
            mean([_layer_spearmans(c, "log_normalizer", -1.0)[layer] for c in m_res]),
            mean([_layer_spearmans(c, "log_normalizer_per_key", -1.0)[layer] for c in m_res]),
            mean([at(c, "eta", "max") for c in m_res]),
            mean([at(c, "log_w0_norm", "max") for c in m_res]))


def _curve_data(c: AdaptationCurve) -> dict[str, Any]:
    return {
        "model": c.model, "role": c.role, "task": c.task, "ks": list(c.ks),
        "accuracy": c.accuracy.tolist(), "chance": c.chance,
        "correct": c.correct.astype(int).tolist(),
        "layers": {q: c.layers(q).tolist() for q in QUANTITIES},
        # [S, K, L] per demonstration set (mean over its traced prompts): the claim tests'
        # units, kept so that a re-analysis can recompute them
        "set_layers": {q: _set_layers(c, q).tolist() for q in QUANTITIES},
        "layer_mean": {q: c.layer_mean(q).tolist() for q in QUANTITIES},
        "n_tokens": c.n_tokens.tolist(),
        "saturation": _saturation(c),
        "set_saturation": set_saturation(c),
        "skipped": [[k, why] for k, why in c.skipped],
    }


def _set_layers(c: AdaptationCurve, name: str) -> np.ndarray:
    """``[S, K, L]`` quantity ``name`` per demonstration set (mean over its traced prompts)."""
    S = c.correct.shape[1] if c.correct.ndim == 3 else 0
    a = c.traced[name]
    if not S or not a.size:
        return np.zeros((S, len(c.ks), 0))
    per = a.shape[1] // S
    with np.errstate(all="ignore"):
        return np.stack([_nanmean_axis1(a[:, s * per:(s + 1) * per, :]) for s in range(S)])


def _nanmean_axis1(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    cnt = ok.sum(1)
    return np.where(cnt > 0, np.where(ok, a, 0.0).sum(1) / np.maximum(cnt, 1), np.nan)


def _x(ks: Sequence[int]) -> list[float]:
    return [log2_position(k) for k in ks]


def _xaxis(ax: Any, grid: Sequence[int]) -> None:
    ax.set_xticks(_x(grid))
    ax.set_xticklabels([str(k) for k in grid])
    ax.set_xlabel("k (log2 axis, k=0 at the left)")


def _figures(results: list[list[list[AdaptationCurve]]], groups: list[list[ph.ModelUnderTest]],
             sizes: Sizes, out: Path) -> list[str]:
    _accuracy_figure(results, groups, sizes, out / "adaptation_accuracy.png")
    _distillation_figure(results, groups, sizes, out / "adaptation_distillation.png")
    _share_heatmap(results, groups, sizes, out / "adaptation_share_heatmap.png")
    return ["adaptation_accuracy.png", "adaptation_distillation.png",
            "adaptation_share_heatmap.png"]


def _accuracy_figure(results: list[list[list[AdaptationCurve]]],
                     groups: list[list[ph.ModelUnderTest]], sizes: Sizes, path: Path) -> None:
    """(a) accuracy vs k per task (+ mean), trained solid vs controls dashed grey."""
    G = len(groups)
    n_tasks = len(results[0][0])
    fig, axes = new_figure(G, n_tasks + 1, size=(3.6, 3.2))
    for gi, (group, g_res) in enumerate(zip(groups, results, strict=True)):
        for ti in range(n_tasks + 1):
            ax = axes[gi, ti]
            for mi, (member, m_res) in enumerate(zip(group, g_res, strict=True)):
                if ti < n_tasks:
                    c = m_res[ti]
                    x, y = _x(c.ks), c.accuracy
                    title = c.task
                    chance = c.chance
                else:
                    y = np.asarray(_task_mean([_on_grid(c.ks, c.accuracy, sizes.ks)
                                               for c in m_res]))
                    x = _x(sizes.ks)
                    title = "mean over tasks"
                    chance = float(np.mean([c.chance for c in m_res]))
                ctrl = member.is_control
                ax.plot(x, y, "--" if ctrl else "-", marker="o", ms=3,
                        color="0.55" if ctrl else "C0",
                        label=("random-init control" if mi == 1 else None) if ctrl else
                        "trained")
            ax.axhline(chance, color="0.8", lw=0.8, ls=":")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{group[0].name}: {title}" if G > 1 else title, fontsize=9)
            _xaxis(ax, sizes.ks)
            if ti == 0:
                ax.set_ylabel("accuracy")
                ax.legend(fontsize=7)
    save_figure(fig, path)


def _distillation_figure(results: list[list[list[AdaptationCurve]]],
                         groups: list[list[ph.ModelUnderTest]], sizes: Sizes,
                         path: Path) -> None:
    """(b) layer-mean distillation quantities vs k, one colour per task."""
    from matplotlib import colormaps

    G = len(groups)
    n_tasks = len(results[0][0])
    colors = [colormaps["tab10"](i % 10) for i in range(n_tasks)]
    panels = (("demo_share", "demo share ||c_D|| / Σ||c_S||", False),
              ("eta", "η* = N / (2D')", True),
              ("log_normalizer", "log D'  (1/D' = learning rate)", False),
              ("log_normalizer_per_key", "log(D'/n)  (per key)", False),
              ("log_w0_norm", "log ||W_0||", False))
    fig, axes = new_figure(G, len(panels), size=(3.6, 3.2))
    for gi, (group, g_res) in enumerate(zip(groups, results, strict=True)):
        for pi, (q, title, log) in enumerate(panels):
            ax = axes[gi, pi]
            for member, m_res in zip(group, g_res, strict=True):
                for ti, c in enumerate(m_res):
                    y = c.layer_mean(q)
                    x = np.asarray(_x(c.ks))
                    if log:
                        y = np.where(y > 0, y, np.nan)
                    ctrl = member.is_control
                    ax.plot(x, y, "--" if ctrl else "-", marker="." if ctrl else "o", ms=3,
                            color=colors[ti], alpha=0.55 if ctrl else 1.0,
                            label=None if ctrl else c.task)
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{group[0].name}: {title}" if G > 1 else title, fontsize=9)
            _xaxis(ax, sizes.ks)
            if pi == 0:
                ax.set_ylabel("layer mean (solid trained, dashed control)")
                ax.legend(fontsize=7)
    save_figure(fig, path)


def _share_matrix(m_res: list[AdaptationCurve], sizes: Sizes) -> np.ndarray:
    """Demo share ``[layer, k]`` of one member, mean over tasks (NaN where no task fits k)."""
    L = _n_layers(m_res)
    mat = np.full((L, len(sizes.ks)), np.nan)
    for j, k in enumerate(sizes.ks):
        cols = [c.layers("demo_share")[list(c.ks).index(k)] for c in m_res if k in c.ks]
        if cols:
            mat[:, j] = np.mean(np.stack(cols), axis=0)
    return mat


def _share_heatmap(results: list[list[list[AdaptationCurve]]],
                   groups: list[list[ph.ModelUnderTest]], sizes: Sizes, path: Path) -> None:
    """(c) heatmap layer x k of the demo share (mean over tasks), trained and first control."""
    fig, axes = new_figure(len(groups), 2, size=(4.4, 3.6))
    for gi, (group, g_res) in enumerate(zip(groups, results, strict=True)):
        mats = [_share_matrix(m_res, sizes) for m_res in (g_res[0], g_res[1])]
        finite = np.concatenate([m[np.isfinite(m)] for m in mats])
        vmax = float(finite.max()) if finite.size else 1.0
        for j, (member, mat) in enumerate(zip((group[0], group[1]), mats, strict=True)):
            ax = axes[gi, j]
            im = ax.imshow(mat, aspect="auto", origin="lower", cmap="viridis", vmin=0.0,
                           vmax=vmax, interpolation="nearest")
            ax.set_xticks(range(len(sizes.ks)))
            ax.set_xticklabels([str(k) for k in sizes.ks])
            ax.set_xlabel("demonstrations k")
            ax.set_ylabel("layer")
            ax.set_title(f"{member.name}: demo share", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
    save_figure(fig, path)
