"""Cross-task interference: demonstrations of another task, and wrong labels, in a few-shot
prompt — accuracy against the fraction ``rho`` of replaced demonstrations and against the MMD of
the mixed demonstrations to the target task (GitHub issue 13).

Design
------
``k = 8`` demonstrations per prompt (every ``rho`` in :data:`RHOS` gives a whole number
``round(rho k)``). For a target task ``T`` the *foreign* task ``F`` is the next task of the list
(cyclic). Per demonstration set (seeded):

- the **base** set: ``k`` label-balanced pool items of ``T`` (:func:`~.phenomena.balanced_indices`,
  kept in selection order, where labels take turns) placed at a seeded random permutation of
  the ``k`` prompt positions;
- **foreign mix** (:func:`mix`): the last ``round(rho k)`` target items of the selection order are
  replaced, at their positions, by the first ``round(rho k)`` of ``k`` label-balanced items of
  ``F``, shown with ``F``'s **own label words** (another task's demonstrations: input and label
  from ``F``, written in ``T``'s template). The remaining target items are a prefix of the
  selection order, so they stay label-balanced; the sets are nested in ``rho``;
- **random labels** (:func:`relabel`): the same ``k`` target inputs at the same positions; the
  last ``round(rho k)`` of the selection order get a **wrong** label of ``T`` — a derangement of
  their labels (every one of them moves to a different label and the label counts are kept)
  where the labels allow it, otherwise (one item, or a label holding more than half of them) a
  label drawn uniformly from ``T``'s other labels. ``rho`` is the fraction of demonstrations
  whose shown label is wrong; at ``rho = 1`` a binary task's labels are all flipped.

At ``rho = 0`` both variants are the base prompt (scored once).

Measured per (model, task, variant, ``rho``, set): accuracy on the task's test items with the
shared prefix (one demonstration set for all queries; label scoring as
:func:`~.phenomena.predict`, see :func:`predict_shown`), and the biased MMD² (V-statistic,
:func:`~icldistill.core.mmd.mmd`) between the ``k`` demonstrations and a fixed label-balanced
sample of
``T``'s pool (the *target sample*, disjoint from the demonstrations; its items written as
demonstrations with their true labels):

- **MiniLM** (label-aware): embeddings of the demonstration texts as shown (input and label
  line), Gaussian kernel with the median-heuristic bandwidth fixed per task (over the target
  sample and every demonstration text of the task);
- **MiniLM, inputs only**: the same on the inputs alone (unchanged by the random-label variant);
- **K_att per layer**: pre-RoPE keys and values of all KV heads of every layer, averaged over
  each text's tokens (:class:`~icldistill.encoders.representations.AttentionKVEncoder`, all layers
  in one
  forward pass: :func:`encode_kv_all_layers`), normalised ``K_att`` (``encoder.kernel()``);
- **K_att at the demo-carrying head**: the KV head of the layer chosen by
  :func:`~icldistill.encoders.representations.choose_attention_heads` on calibration prompts of
  ``T``
  (per model and task).

The theory's *bias* is the accuracy drop relative to ``rho = 0``; it predicts the bias linear in
the MMD, so accuracy ``= a + b MMD²`` (ordinary least squares, :func:`fit_line`) is fitted per
task over the (``rho``, set) points of the foreign variant, per layer for ``K_att`` and once for
MiniLM. Everything is computed on the trained model and on its random-initialised controls,
on the same prompts and items; every check goes through :func:`~.phenomena.controlled_check`.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.figures import new_figure, save_figure
from icldistill.artifacts.store import to_jsonable
from icldistill.core.kernels import make_kernel, median_bandwidth
from icldistill.core.mmd import mmd
from icldistill.core.progress import log
from icldistill.core.stats import spearman
from icldistill.core.util import LineFit, fit_line
from icldistill.core.validation import InputError, check_int
from icldistill.data.prompts import Demonstration, Prompt
from icldistill.lab.experiments import phenomena as ph
from icldistill.lab.experiments._common import Check, Section, Table
from icldistill.lab.experiments._stats import within_level_test

__all__ = [
    "R2_THRESHOLD",
    "RHOS",
    "RHOS_QUICK",
    "VARIANTS",
    "DemoSet",
    "K",
    "LineFit",
    "encode_kv_all_layers",
    "falling_r2",
    "fit_line",
    "mix",
    "predict_shown",
    "relabel",
    "run",
    "signed_r2",
]

#: Demonstrations per prompt.
K = 8
#: Fractions of replaced (foreign) or wrongly labelled demonstrations (full mode).
RHOS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
#: The fractions of quick mode (measured budget: 5 prompts per task and model).
RHOS_QUICK = (0.0, 0.5, 1.0)
#: The two ways of corrupting the demonstrations.
VARIANTS = ("foreign", "random-label")
#: R² of accuracy against the MMD² above which the bias counts as linear in the MMD.
R2_THRESHOLD = 0.5

# Sizes: quick / full. Measured on smollm2-135m, one torch thread, CPU time per model: quick
# r8 (the longest task) 23 s scoring + 8 s K_att encoding + 3 s head choice, ~57 s for the 3
# default tasks, so ~115 s CPU (one thread) for the model and its control; full (2 sets x 11
# prompts x 30 items per task) ~8 min CPU per model, ~16 min per group on one thread.
_SETS = {True: 1, False: 2}
_N_TEST = {True: 8, False: 60}
_N_SAMPLE = {True: 16, False: 64}
_N_CALIBRATION = {True: 1, False: 2}
_N_BOOT = 1000
#: Random permutations of the R² checks' permutation test (:func:`_r2_permutation_p`).
N_PERM = 2000


# ============================================================================ demonstrations
@dataclass(frozen=True)
class DemoSet:
    """``k`` demonstrations as shown in a prompt, position by position.

    Attributes
    ----------
    inputs : tuple of str ``[k]``
    labels : tuple of str ``[k]``
        Label *names* shown, in the demonstration's own task (``F``'s names for foreign items).
    words : tuple of str ``[k]``
        Label words shown (the verbalisers of ``labels`` in their own task).
    source : tuple of str ``[k]``
        ``"target"`` or ``"foreign"``.
    index : tuple of int ``[k]``
        Pool index of each item in its own task.
    true_labels : tuple of str ``[k]``
        The item's correct label name in its own task.
    variant : str
        ``"foreign"`` or ``"random-label"``.
    rho : float
    """

    inputs: tuple[str, ...]
    labels: tuple[str, ...]
    words: tuple[str, ...]
    source: tuple[str, ...]
    index: tuple[int, ...]
    true_labels: tuple[str, ...]
    variant: str
    rho: float

    @property
    def k(self) -> int:
        return len(self.inputs)

    @property
    def n_foreign(self) -> int:
        """Demonstrations from the foreign task."""
        return sum(s == "foreign" for s in self.source)

    @property
    def n_wrong(self) -> int:
        """Demonstrations whose shown label is not their true label."""
        return sum(a != b for a, b in zip(self.labels, self.true_labels, strict=True))

    def shown(self) -> list[Demonstration]:
        """The demonstrations as the prompt shows them (label words)."""
        return [Demonstration(x, w) for x, w in zip(self.inputs, self.words, strict=True)]

    def texts(self, template: Any) -> list[str]:
        """Each demonstration written with ``template.demo`` (input and label line), stripped."""
        return [template.demo.format(input=x, label=w).strip()
                for x, w in zip(self.inputs, self.words, strict=True)]

    def key(self) -> tuple[Any, ...]:
        """What the prompt shows (equal keys: the same prompt)."""
        return (self.inputs, self.words)


def _count(rho: Any, k: int) -> int:
    """``round(rho k)`` (halves up), after checking ``rho``."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(rho)) or not 0.0 <= float(rho) <= 1.0:
        raise InputError(f"rho must be a number in [0, 1], got {rho!r}")
    return math.floor(float(rho) * k + 0.5)


def _check_indices(idx: Any, n: int, name: str) -> list[int]:
    try:
        out = [int(i) for i in np.asarray(idx).ravel()]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a sequence of pool indices, got {idx!r}") from None
    if any(not 0 <= i < n for i in out):
        raise InputError(f"{name} has indices outside the pool (0..{n - 1})")
    if len(set(out)) != len(out):
        raise InputError(f"{name} has repeated indices")
    return out


def _check_k(target_idx: Any, task: ph.TaskItems) -> list[int]:
    idx = _check_indices(target_idx, len(task.pool_texts), "target_idx")
    if len(idx) < 1:
        raise InputError("k (the length of target_idx) must be at least 1")
    return idx


def mix(target: ph.TaskItems, foreign: ph.TaskItems, target_idx: Sequence[int],
        foreign_idx: Sequence[int], rho: float, rng: np.random.Generator) -> DemoSet:
    """``k = len(target_idx)`` demonstrations of which ``round(rho k)`` come from ``foreign``.

    Parameters
    ----------
    target, foreign : TaskItems
    target_idx : sequence of int ``[k]``
        Pool indices of ``target`` in selection order (e.g. :func:`~.phenomena.balanced_indices`:
        every prefix is label-balanced).
    foreign_idx : sequence of int ``[>= round(rho k)]``
        Pool indices of ``foreign`` in selection order.
    rho : float in ``[0, 1]``
    rng : numpy Generator
        Draws the positions (``rng.permutation(k)``: item ``j`` of the selection order sits at
        position ``perm[j]``). A fresh generator with the same seed for every ``rho`` gives
        nested sets: foreign item ``j`` takes the place of target item ``k - 1 - j``.

    Returns
    -------
    DemoSet
        The remaining target items are the first ``k - round(rho k)`` of ``target_idx`` (so they
        keep its label balance); foreign items show ``foreign``'s label words.
    """
    t_idx = _check_k(target_idx, target)
    k = len(t_idx)
    n_f = _count(rho, k)
    f_idx = _check_indices(foreign_idx, len(foreign.pool_texts), "foreign_idx")
    if len(f_idx) < n_f:
        raise InputError(f"foreign_idx has {len(f_idx)} items, rho={rho} needs {n_f}")
    perm = rng.permutation(k)
    rows: list[tuple[str, str, str, str, int, str] | None] = [None] * k
    for j in range(k - n_f):
        i = t_idx[j]
        lab = str(target.pool_labels[i])
        rows[int(perm[j])] = (target.pool_texts[i], lab, target.format.word(lab), "target", i,
                              lab)
    for j in range(n_f):
        i = f_idx[j]
        lab = str(foreign.pool_labels[i])
        rows[int(perm[k - 1 - j])] = (foreign.pool_texts[i], lab, foreign.format.word(lab),
                                      "foreign", i, lab)
    return _demo_set(rows, "foreign", float(rho))


def _demo_set(rows: list[Any], variant: str, rho: float) -> DemoSet:
    cols = list(zip(*rows, strict=True))
    return DemoSet(inputs=tuple(cols[0]), labels=tuple(cols[1]), words=tuple(cols[2]),
                   source=tuple(cols[3]), index=tuple(int(i) for i in cols[4]),
                   true_labels=tuple(cols[5]), variant=variant, rho=rho)


def _derange(labels: list[str], names: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Wrong labels for ``labels``: a rotation of the label-sorted list by the largest label
    count (a derangement that keeps the counts whenever no label holds more than half of
    them); an item that still keeps its own label gets a uniformly drawn other label."""
    m = len(labels)
    if m == 0:
        return []
    order = sorted(range(m), key=lambda i: (labels[i], i))
    shift = max(labels.count(lab) for lab in set(labels))
    out = [""] * m
    for pos, i in enumerate(order):
        out[i] = labels[order[(pos + shift) % m]]
    for i in range(m):
        if out[i] == labels[i]:
            others = [n for n in names if n != labels[i]]
            out[i] = str(others[int(rng.integers(len(others)))])
    return out


def relabel(target: ph.TaskItems, target_idx: Sequence[int], rho: float,
            rng: np.random.Generator) -> DemoSet:
    """The ``k = len(target_idx)`` target demonstrations with ``round(rho k)`` wrong labels.

    Inputs and positions are those of :func:`mix` with the same ``target_idx`` and an ``rng``
    of the same seed (``rng.permutation(k)`` first); the **last** ``round(rho k)`` items of the
    selection order get wrong labels of ``target`` (see the module docstring: a derangement of
    their labels where possible, else a uniformly drawn other label; drawn from ``rng`` after the
    permutation).

    Parameters
    ----------
    target : TaskItems
        Needs at least two labels.
    target_idx : sequence of int ``[k]``
    rho : float in ``[0, 1]``
    rng : numpy Generator
    """
    t_idx = _check_k(target_idx, target)
    k = len(t_idx)
    m = _count(rho, k)
    if len(target.label_names) < 2 and m > 0:
        raise InputError(f"task {target.name!r} has one label: no wrong label to show")
    perm = rng.permutation(k)
    true = [str(target.pool_labels[i]) for i in t_idx]
    shown = list(true)
    shown[k - m:] = _derange(true[k - m:], [str(n) for n in target.label_names], rng)
    rows: list[Any] = [None] * k
    for j, i in enumerate(t_idx):
        rows[int(perm[j])] = (target.pool_texts[i], shown[j], target.format.word(shown[j]),
                              "target", i, true[j])
    return _demo_set(rows, "random-label", float(rho))


# ============================================================================ scoring
def predict_shown(loaded: Any, task: ph.TaskItems, queries: Sequence[str],
                  demos: DemoSet | Sequence[Demonstration], *, scorer: Any = None,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~.phenomena.predict` for demonstrations given **as shown** (label words already
    written: another task's words, or wrong labels).

    Only ``task``'s labels are scored after the query. Returns predicted label names ``[n]``
    and label log-probabilities ``[n, C]`` (``task.label_names`` order). ``scorer`` (a
    ``phenomena.task_scorer(loaded, task, demo_labels="shown")``) is reused when given.
    """
    sc = scorer if scorer is not None else ph.task_scorer(loaded, task, demo_labels="shown")
    shown = demos.shown() if isinstance(demos, DemoSet) else list(demos)
    res = sc.score(list(queries), shown, progress=progress)
    return np.asarray(res.predictions, dtype=object), np.asarray(res.logprobs)


# ============================================================================ K_att, all layers
def encode_kv_all_layers(model: Any, tokenizer: Any, texts: Sequence[str], *,
                         batch_size: int = 16) -> list[np.ndarray]:
    """:class:`~icldistill.encoders.representations.AttentionKVEncoder` (all KV heads) of **every**
    layer
    in one forward pass per batch.

    Parameters
    ----------
    model, tokenizer
        A ``transformers`` causal LM and its tokenizer (or a LoadedModel as ``model``).
    texts : sequence of str ``[n]``
    batch_size : int

    Returns
    -------
    list of ndarray, one per layer, each float32 ``[n, dim_l]``
        Row ``i`` of entry ``l`` equals ``AttentionKVEncoder(model, tokenizer, l).encode(texts)``
        (up to float rounding): pre-RoPE keys and values, token-averaged, ``[k_1..k_H | v_1..v_H]``.
    """
    from icldistill.encoders.representations import AttentionKVEncoder

    first = AttentionKVEncoder(model, tokenizer, 0)
    encs = [first] + [AttentionKVEncoder(model, tokenizer, la)
                      for la in range(1, first.n_layers)]
    if isinstance(texts, (str, bytes)) or any(not isinstance(t, str) for t in texts):
        raise InputError("texts must be a sequence of strings")
    items = list(texts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    out = [np.zeros((len(items), e.dim), dtype=np.float32) for e in encs]
    if not items:
        return out
    order = sorted(range(len(items)), key=lambda i: -len(items[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, att, pool = first._tokenize([items[i] for i in idx])
        captured: dict[tuple[int, str], torch.Tensor] = {}

        def grab(key: tuple[int, str], into: dict[tuple[int, str], torch.Tensor] = captured
                 ) -> Callable[..., None]:
            def hook(_mod: Any, _inp: Any, o: Any) -> None:
                into[key] = o[0] if isinstance(o, tuple) else o
            return hook

        handles = []
        try:
            for la, e in enumerate(encs):
                if e.fused is not None:
                    handles.append(e.fused.register_forward_hook(grab((la, "qkv"))))
                else:
                    handles.append(e.attn.k_proj.register_forward_hook(grab((la, "k"))))
                    handles.append(e.attn.v_proj.register_forward_hook(grab((la, "v"))))

            def fwd(ids: torch.Tensor = ids, att: torch.Tensor = att) -> torch.Tensor:
                first.base(input_ids=ids, attention_mask=att, use_cache=False, return_dict=True)
                return ids

            first._run(fwd)
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            for la, e in enumerate(encs):
                out[la][idx] = _pool_kv(e, captured, la, pool).cpu().numpy()
    return out


def _pool_kv(e: Any, captured: dict[tuple[int, str], torch.Tensor], la: int,
             pool: torch.Tensor) -> torch.Tensor:
    """AttentionKVEncoder's pooling of captured projections (same steps, same order)."""
    kv_width = e.n_kv_heads * e.head_dim
    if e.fused is not None:
        qkv = captured[(la, "qkv")]
        q_width = e.n_heads * e.head_dim
        k = qkv[..., q_width:q_width + kv_width]
        v = qkv[..., q_width + kv_width:]
    else:
        k, v = captured[(la, "k")], captured[(la, "v")]
    b, s = k.shape[:2]
    k = k.reshape(b, s, e.n_kv_heads, e.head_dim)
    v = v.reshape(b, s, e.n_kv_heads, e.v_head_dim)
    k_norm = getattr(e.attn, "k_norm", None)
    if k_norm is not None:
        k = k_norm(k)
    v_norm = getattr(e.attn, "v_norm", None)
    if v_norm is not None:
        v = v_norm(v)
    sel = list(e.heads)
    m = pool.to(torch.float32).reshape(b, s, 1, 1)
    km = (k[:, :, sel].float() * m).sum(1) / m.sum(1).clamp_min(1.0)
    vm = (v[:, :, sel].float() * m).sum(1) / m.sum(1).clamp_min(1.0)
    return torch.cat([km.reshape(b, -1), vm.reshape(b, -1)], dim=1)


# ============================================================================ fits
def _r_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson ``r`` of each row of ``y [B, P]`` with ``x [P]``; 0 where ``x`` or a row is
    constant (nothing explained)."""
    xc = x - x.mean()
    yc = y - y.mean(axis=-1, keepdims=True)
    sxx = float(xc @ xc)
    syy = (yc * yc).sum(-1)
    ok = (syy > 1e-15) & (sxx > 0)
    with np.errstate(all="ignore"):
        r = (yc @ xc) / np.sqrt(np.where(ok, syy, 1.0) * max(sxx, 1e-300))
    return np.where(ok, np.clip(r, -1.0, 1.0), 0.0)


def falling_r2(r: Any) -> Any:
    """Signed R² of a line: ``r²`` when accuracy falls with the MMD² (``r < 0``), ``-r²`` when
    it rises (``-r |r|``). +1: accuracy falls exactly linearly; -1: it rises exactly linearly."""
    r = np.asarray(r, dtype=np.float64)
    return -r * np.abs(r)


def _r2_statistic(correct: list[np.ndarray], x: list[np.ndarray], model: ph.ModelUnderTest,
                  seed: int, n_boot: int = _N_BOOT) -> ph.Statistic:
    """Mean over tasks of the signed R² (:func:`falling_r2`) of accuracy on the MMD², with a
    95% interval from resampling each task's test items (the same resample at every point).
    ``correct[t]``: ``[P, N]`` 0/1; ``x[t]``: ``[P]``."""
    rng = np.random.default_rng(seed)
    point, boots, n = [], [], 0
    for c, xt in zip(correct, x, strict=True):
        c = np.asarray(c, dtype=np.float64)
        N = c.shape[1]
        n += N
        point.append(float(falling_r2(_r_rows(xt, c.mean(1)[None]))[0]))
        idx = rng.integers(0, N, size=(n_boot, N))
        acc = c[:, idx].mean(-1).T                                   # [B, P]
        boots.append(falling_r2(_r_rows(xt, acc)))
    b = np.mean(boots, axis=0)
    lo, hi = np.percentile(b, [2.5, 97.5])
    return ph.Statistic(model.name, model.role, float(np.mean(point)), float(lo), float(hi), n)


def _r2_permutation_p(correct: list[np.ndarray], xs: list[np.ndarray], seed: int,
                      n_perm: int = N_PERM) -> float:
    """One-sided permutation p-value of the best mean-over-tasks signed R² of accuracy on an
    MMD² (:func:`falling_r2`), the best taken over candidate regressors (e.g. layers).

    ``correct[t]``: ``[P, N]`` 0/1 per (rho, set) point and test item of task ``t``;
    ``xs[t]``: ``[C, P]``, the ``C`` candidate regressors (one row for a single MMD). Under
    the null hypothesis that accuracy does not depend on which demonstration set was shown,
    a task's ``P`` point accuracies are exchangeable: each of ``n_perm`` seeded permutations
    (one per task, applied to every candidate) gives the best candidate's mean signed R², so
    choosing the best layer on the data is part of the test. ``p = (1 + #{null >= observed})
    / (n_perm + 1)``.
    """
    rng = np.random.default_rng(seed)
    obs = np.zeros(xs[0].shape[0])
    null = np.zeros((xs[0].shape[0], n_perm))
    for c, x in zip(correct, xs, strict=True):
        acc = np.asarray(c, dtype=np.float64).mean(1)                     # [P]
        perms = rng.permuted(np.broadcast_to(acc, (n_perm, acc.size)), axis=1)
        for j, xc in enumerate(np.asarray(x, dtype=np.float64)):
            obs[j] += falling_r2(_r_rows(xc, acc[None]))[0] / len(correct)
            null[j] += falling_r2(_r_rows(xc, perms)) / len(correct)
    best, null_best = float(obs.max()), null.max(axis=0)
    return float((1 + np.count_nonzero(null_best >= best - 1e-12)) / (n_perm + 1))


# ============================================================================ helpers
def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class _Design:
    """The demonstration sets of one target task (model-independent)."""

    task: ph.TaskItems
    foreign: ph.TaskItems
    sample_idx: np.ndarray
    sets: list[dict[str, Any]]
    demos: dict[str, list[list[DemoSet]]]            # variant -> [rho][set]


def _design(ti: int, tasks: list[ph.TaskItems], k: int, rhos: Sequence[float], n_sets: int,
            n_sample: int, seed: int) -> _Design:
    target, foreign = tasks[ti], tasks[(ti + 1) % len(tasks)]
    rng = np.random.default_rng([int(seed), 13, ti])
    n_pool = len(target.pool_texts)
    need = k * n_sets
    if n_pool < need + 2:
        raise InputError(f"task {target.name!r}: the pool has {n_pool} items, {need + 2} are "
                         f"needed ({n_sets} set(s) of k={k} and a target sample)")
    if len(foreign.pool_texts) < k:
        raise InputError(f"task {foreign.name!r}: the pool has fewer than k={k} items")
    n_s = min(n_sample, n_pool - need)
    sample = ph.balanced_indices(target.pool_labels, n_s, rng)
    used = list(sample)
    sets = []
    demos: dict[str, list[list[DemoSet]]] = {v: [[] for _ in rhos] for v in VARIANTS}
    for _s in range(n_sets):
        t_idx = ph.balanced_indices(target.pool_labels, k, rng, exclude=used)
        used += list(t_idx)
        f_idx = ph.balanced_indices(foreign.pool_labels, k, rng)
        slot_seed = int(rng.integers(2**31 - 1))
        sets.append({"target_idx": t_idx.tolist(), "foreign_idx": f_idx.tolist(),
                     "slot_seed": slot_seed})
        for r, rho in enumerate(rhos):
            demos["foreign"][r].append(mix(target, foreign, t_idx, f_idx, rho,
                                           np.random.default_rng(slot_seed)))
            demos["random-label"][r].append(relabel(target, t_idx, rho,
                                                    np.random.default_rng(slot_seed)))
    return _Design(target, foreign, np.asarray(sample), sets, demos)


def _sample_texts(d: _Design) -> list[str]:
    t = d.task
    return [t.format.template.demo.format(input=t.pool_texts[i],
                                          label=t.format.word(str(t.pool_labels[i]))).strip()
            for i in d.sample_idx]


def _all_sets(d: _Design) -> list[DemoSet]:
    return [ds for v in VARIANTS for row in d.demos[v] for ds in row]


def _gaussian_mmd(emb: dict[str, np.ndarray], d: _Design, texts_of: Callable[[DemoSet], list],
                  sample: list[str]) -> np.ndarray:
    """Biased MMD² ``[V, R, S]`` of every demonstration set to the target sample, Gaussian
    kernel with the median bandwidth over the sample and every demonstration text."""
    pool = sorted(set(sample) | {t for ds in _all_sets(d) for t in texts_of(ds)})
    z = np.stack([emb[t] for t in pool]).astype(np.float64)
    kern = make_kernel("gaussian", bandwidth=median_bandwidth(z, seed=0))
    y = np.stack([emb[t] for t in sample]).astype(np.float64)
    R, S = len(d.demos["foreign"]), len(d.sets)
    out = np.zeros((len(VARIANTS), R, S))
    for v, var in enumerate(VARIANTS):
        for r in range(R):
            for s in range(S):
                x = np.stack([emb[t] for t in texts_of(d.demos[var][r][s])]).astype(np.float64)
                out[v, r, s] = mmd(x, y, kern, "biased")
    return out


def _calibration_prompts(d: _Design, n: int) -> list[Prompt]:
    t = d.task
    out = []
    for s in range(min(n, len(d.sets))):
        base = d.demos["foreign"][0][s]
        out.append(Prompt(base.shown(), t.test_texts[s % len(t.test_texts)],
                          instruction=t.format.instruction, template=t.format.template))
    return out


def _measure_model(m: ph.ModelUnderTest, d: _Design, n_cal: int, progress: bool
                   ) -> dict[str, Any]:
    """Accuracy and K_att MMD² of every demonstration set of one task on one model."""
    from icldistill.encoders.representations import AttentionKVEncoder, choose_attention_heads

    t = d.task
    R, S = len(d.demos["foreign"]), len(d.sets)
    N = len(t.test_texts)
    t0, c0 = time.perf_counter(), time.process_time()
    scorer = ph.task_scorer(m.loaded, t, demo_labels="shown")
    done: dict[Any, np.ndarray] = {}
    correct = np.zeros((len(VARIANTS), R, S, N), dtype=bool)
    with torch.no_grad():
        for v, var in enumerate(VARIANTS):
            for r in range(R):
                for s in range(S):
                    ds = d.demos[var][r][s]
                    if ds.key() not in done:
                        pred, _ = predict_shown(m.loaded, t, t.test_texts, ds, scorer=scorer)
                        done[ds.key()] = pred == t.test_labels
                    correct[v, r, s] = done[ds.key()]
    timing = {"scoring": time.perf_counter() - t0, "scoring_cpu": time.process_time() - c0}
    log(progress, f"interference: {m.name} {t.name}: {len(done)} prompts scored in "
                  f"{timing['scoring']:.1f} s")
    t0, c0 = time.perf_counter(), time.process_time()
    sample = _sample_texts(d)
    texts = sorted(set(sample) | {x for ds in _all_sets(d) for x in ds.texts(t.format.template)})
    with torch.no_grad():
        per_layer = encode_kv_all_layers(m.loaded.model, m.loaded.tokenizer, texts)
        timing.update(kv=time.perf_counter() - t0, kv_cpu=time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        choice = choose_attention_heads(m.loaded.model, m.loaded.tokenizer,
                                        _calibration_prompts(d, n_cal), n_heads=1)
        timing.update(heads=time.perf_counter() - t0, heads_cpu=time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    row = {x: i for i, x in enumerate(texts)}
    L = len(per_layer)
    mmd_kv = np.zeros((L, len(VARIANTS), R, S))
    chosen = np.zeros((len(VARIANTS), R, S))
    sample_rows = [row[x] for x in sample]
    kernels = []
    for la in range(L):
        e = AttentionKVEncoder(m.loaded.model, m.loaded.tokenizer, la)
        kernels.append(e.kernel())
    ce = AttentionKVEncoder(m.loaded.model, m.loaded.tokenizer, choice.layer, choice.heads)
    full = AttentionKVEncoder(m.loaded.model, m.loaded.tokenizer, choice.layer)
    cols = [h * full.head_dim + j for h in ce.heads for j in range(full.head_dim)] + \
        [full.key_dim + h * full.v_head_dim + j for h in ce.heads for j in range(full.v_head_dim)]
    ckern = ce.kernel()
    emb = [np.asarray(a, dtype=np.float64) for a in per_layer]
    c = emb[choice.layer][:, cols]
    for v, var in enumerate(VARIANTS):
        for r in range(R):
            for s in range(S):
                rows = [row[x] for x in d.demos[var][r][s].texts(t.format.template)]
                for la in range(L):
                    mmd_kv[la, v, r, s] = mmd(emb[la][rows], emb[la][sample_rows], kernels[la],
                                              "biased")
                chosen[v, r, s] = mmd(c[rows], c[sample_rows], ckern, "biased")
    timing.update(mmd=time.perf_counter() - t0, mmd_cpu=time.process_time() - c0)
    return {"correct": correct, "mmd_kv": mmd_kv, "mmd_chosen": chosen, "choice": choice,
            "n_prompts": len(done), "n_texts": len(texts), "timing": timing}


def signed_r2(f: LineFit) -> float:
    """:func:`falling_r2` of a fit: ``R²`` when the line falls, ``-R²`` when it rises, 0 where
    ``R²`` or the slope is undefined (a constant ``x`` or ``y``)."""
    if not (np.isfinite(f.r2) and np.isfinite(f.slope)):
        return 0.0
    return float(-np.sign(f.slope) * f.r2)


def _cross_prediction(s: dict[str, Any], mres: list[dict[str, Any]],
                      text_mmd: list[np.ndarray], R: int) -> dict[str, float]:
    """Random-label accuracy drop rho=0 -> 1 predicted by each task's foreign-variant line
    (``-slope * Delta MMD²``, means over sets), and the measured drop; means over tasks."""
    rv = VARIANTS.index("random-label")
    text, kv, meas = [], [], []
    for ti, r in enumerate(mres):
        ft = s["fits"]["foreign"][ti]
        dt = float(text_mmd[ti][rv, R - 1].mean() - text_mmd[ti][rv, 0].mean())
        dk = float(r["mmd_kv"][s["best"], rv, R - 1].mean() - r["mmd_kv"][s["best"], rv, 0].mean())
        text.append(-ft["text"].slope * dt if np.isfinite(ft["text"].slope) else 0.0)
        sl = ft["layers"][s["best"]].slope
        kv.append(-sl * dk if np.isfinite(sl) else 0.0)
        meas.append(float(s["acc"][ti, rv, 0].mean() - s["acc"][ti, rv, R - 1].mean()))
    return {"text": float(np.mean(text)), "kv": float(np.mean(kv)),
            "measured": float(np.mean(meas))}


# ============================================================================ the section
def _task_fits(acc: np.ndarray, x: np.ndarray) -> LineFit:
    """Fit over the (rho, set) points of one variant: ``acc``, ``x`` ``[R, S]``."""
    return fit_line(x.ravel(), acc.ravel())


# long: 7 lines of signature and 36 of NumPy docstring (every size it takes); the code is 39
def run(models: Sequence[str | Any] = ("smollm2-135m",), *, out_dir: str | Path,
        quick: bool = False, seed: int = 0, progress: bool = False,
        tasks: Sequence[str | ph.TaskItems] | None = None,
        under_test: Sequence[Sequence[ph.ModelUnderTest]] | None = None, n_controls: int = 1,
        dtype: torch.dtype = torch.float32, k: int = K, rhos: Sequence[float] | None = None,
        text_encoder: Any = "minilm", resume_dir: str | Path | None = None,
        n_sets: int | None = None) -> Section:
    """Cross-task interference and random labels, on each model and its random-init controls.

    Parameters
    ----------
    models : sequence of str or LoadedModel
        Trained models (registry keys); each gets ``n_controls`` random-init twins.
    out_dir : path
        Figures are written here.
    quick : bool
        Quick: ``rho`` in :data:`RHOS_QUICK`, 1 demonstration set per (task, rho), 8 test
        items, a target sample of 16, 1 calibration prompt. Full: :data:`RHOS`, 2 sets, 60 test
        items, a target sample of 64, 2 calibration prompts.
    seed : int
    progress : bool
    tasks : sequence of str or TaskItems, optional
        Target tasks (default :data:`~.phenomena.DEFAULT_TASKS`; at least two, each one's
        foreign task is the next one, cyclically).
    under_test : groups of ModelUnderTest, optional
        Ready model groups (trained first, then controls) instead of ``models``.
    n_controls : int
    dtype : torch.dtype
    k : int
        Demonstrations per prompt (default :data:`K`); every ``rho k`` must be a whole number.
    rhos : sequence of float, optional
        Override the ``rho`` levels (must start with 0 and contain 1).
    text_encoder : str or Encoder
        The label-free text encoder of the "MiniLM" MMD (default ``"minilm"``; any
        :class:`~icldistill.encoders.representations.Encoder` with a Gaussian kernel, e.g. in
        tests).
    resume_dir : path, optional
        Keep each finished (model, task) measurement here, so that a killed run resumes from
        its last finished part (:class:`~icldistill.lab.experiments.phenomena.Parts`).
    n_sets : int, optional
        Demonstration sets per task and rho (default 1 quick, 2 full). The (task, set) is the
        unit of the accuracy-drop claims: with fewer than 6 units in all no test can reach
        p < 0.05, and a Holm family of 4 needs about 8.
    """
    t_start = time.perf_counter()
    k, levels = _check_design(k, rhos, quick)
    n_sets = _SETS[bool(quick)] if n_sets is None else check_int(n_sets, "n_sets", 1)
    n_test, n_sample, n_cal = (_N_TEST[bool(quick)], _N_SAMPLE[bool(quick)],
                               _N_CALIBRATION[bool(quick)])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_list = _target_tasks(tasks, n_test, seed, progress)
    groups = ph.resolve_models(models, under_test=under_test, n_controls=n_controls, seed=seed,
                               dtype=dtype, progress=progress)
    torch.manual_seed(seed)
    designs = [_design(i, task_list, k, levels, n_sets, n_sample, seed)
               for i in range(len(task_list))]

    # ---- label-free text encoder (model-independent): label-aware and input-only MMD²
    t0 = time.perf_counter()
    enc_name, text_mmd, input_mmd = _text_mmds(text_encoder, designs)
    t_text = time.perf_counter() - t0

    # ---- every model of every group
    parts = ph.Parts(resume_dir, "interference", {
        "k": k, "levels": list(levels), "seed": seed, "n_sets": n_sets, "n_test": n_test,
        "n_sample": n_sample, "tasks": [ph.task_fingerprint(t) for t in task_list]})
    results: list[list[list[dict[str, Any]]]] = []        # group -> model -> task
    for g in groups:
        gres = []
        for m in g:
            gres.append([parts.run(functools.partial(_measure_model, m, d, n_cal, progress),
                                   model=m, task=i, n_cal=n_cal)
                         for i, d in enumerate(designs)])
        results.append(gres)
    t_start -= parts.reused_seconds

    setup = _Setup(designs=designs, text_mmd=text_mmd, input_mmd=input_mmd, levels=levels,
                   k=k, enc_name=enc_name, seed=seed, quick=quick, n_sets=n_sets,
                   n_test=n_test, n_sample=n_sample, n_cal=n_cal, t_text=t_text)
    sec = _assemble(groups, results, setup, out)
    return Section(**{**sec, "seconds": time.perf_counter() - t_start})


def _check_design(k: Any, rhos: Sequence[float] | None,
                  quick: bool) -> tuple[int, tuple[float, ...]]:
    """``k`` and the ``rho`` levels of a run, checked (every ``rho k`` a whole number; the
    levels increasing from 0 to 1, at least three)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"k must be an integer >= 2, got {k!r}")
    k = int(k)
    levels = tuple(float(r) for r in (rhos if rhos is not None else
                                      (RHOS_QUICK if quick else RHOS)))
    for rho in levels:
        c = _count(rho, k)
        if abs(rho * k - c) > 1e-9:
            raise InputError(f"rho={rho} gives {rho * k:g} of k={k} demonstrations: rho * k must "
                             "be a whole number")
    if len(levels) < 3 or levels[0] != 0.0 or levels[-1] != 1.0 or \
            any(b <= a for a, b in itertools.pairwise(levels)):
        raise InputError(f"rhos must be increasing, start at 0, end at 1 and have at least 3 "
                         f"levels, got {levels}")
    return k, levels


def _target_tasks(tasks: Sequence[str | ph.TaskItems] | None, n_test: int, seed: int,
                  progress: bool) -> list[ph.TaskItems]:
    """The target tasks (at least two, distinct names; each one's foreign task is the next)."""
    task_list = ph.resolve_tasks(list(tasks) if tasks is not None else list(ph.DEFAULT_TASKS),
                                 n_test=n_test, seed=seed, progress=progress)
    if len(task_list) < 2:
        raise InputError("interference needs at least two tasks (each task's foreign "
                         "demonstrations come from the next one)")
    names = [t.name for t in task_list]
    if len(set(names)) != len(names):
        raise InputError(f"task names must be distinct, got {names}")
    return task_list


def _text_mmds(text_encoder: Any, designs: list[_Design]
               ) -> tuple[str, list[np.ndarray], list[np.ndarray]]:
    """The encoder's name and, per task, the label-aware (texts as shown) and input-only
    Gaussian MMD² ``[V, R, S]`` of every demonstration set to the target sample."""
    if isinstance(text_encoder, str):
        from icldistill.encoders.representations import make_encoder

        enc = make_encoder(text_encoder)
    else:
        enc = text_encoder
    enc_name = getattr(enc, "name", str(text_encoder))
    text_mmd, input_mmd = [], []
    for d in designs:
        tmpl = d.task.format.template
        sample = _sample_texts(d)
        sample_inputs = [d.task.pool_texts[i] for i in d.sample_idx]
        all_texts = sorted(set(sample) | set(sample_inputs) |
                           {x for ds in _all_sets(d) for x in ds.texts(tmpl)} |
                           {x for ds in _all_sets(d) for x in ds.inputs})
        arr = enc.encode(all_texts)
        emb = {x: arr[i] for i, x in enumerate(all_texts)}
        text_mmd.append(_gaussian_mmd(emb, d, lambda ds, tmpl=tmpl: ds.texts(tmpl), sample))
        input_mmd.append(_gaussian_mmd(emb, d, lambda ds: list(ds.inputs), sample_inputs))
    return enc_name, text_mmd, input_mmd


@dataclass(frozen=True)
class _Setup:
    """What a run measured independently of the models, and its settings."""

    designs: list[_Design]
    text_mmd: list[np.ndarray]          # per task [V, R, S], label-aware texts
    input_mmd: list[np.ndarray]         # per task [V, R, S], inputs only
    levels: tuple[float, ...]
    k: int
    enc_name: str
    seed: int
    quick: bool
    n_sets: int
    n_test: int
    n_sample: int
    n_cal: int
    t_text: float


@dataclass
class _Rows:
    """Rows of the three tables, filled group by group."""

    acc: list[tuple[Any, ...]] = field(default_factory=list)
    fit: list[tuple[Any, ...]] = field(default_factory=list)
    layer: list[tuple[Any, ...]] = field(default_factory=list)


def _assemble(groups: list[list[ph.ModelUnderTest]], results: list[Any], setup: _Setup,
              out: Path) -> dict[str, Any]:
    tested: list[tuple[Check, float, str, float]] = []
    findings: list[str] = []
    rows = _Rows()
    data_groups = []
    per_model: list[list[dict[str, Any]]] = []
    for g, gres in zip(groups, results, strict=True):
        summaries = [_summarise(m, mres, setup) for m, mres in zip(g, gres, strict=True)]
        per_model.append(summaries)
        comps = _comparisons(summaries, setup)
        tested += _group_checks(summaries, comps, setup)
        findings += _model_findings(summaries, setup)
        evidence = _random_label_evidence(summaries, gres, setup)
        findings.append(_random_label_finding(summaries[0], comps, evidence, setup))
        pred = _cross_prediction(summaries[0], gres[0], setup.text_mmd, len(setup.levels))
        findings.append(
            f"One line for both corruptions ({summaries[0]['model'].name}): the foreign-variant "
            f"fits (slope per task) times the random-label MMD² change rho=0 -> 1 predict an "
            f"accuracy drop of {pred['text']:+.3f} ({setup.enc_name}) and {pred['kv']:+.3f} "
            f"(K_att, layer {summaries[0]['best']}) on average over tasks; measured "
            f"{pred['measured']:+.3f}.")
        _add_rows(rows, summaries, gres, setup)
        data_groups.append({
            "model": summaries[0]["model"].name,
            "comparisons": {key: c.to_dict() for key, c in comps.items()},
            "models": [_model_data(s, gres[j], setup.designs) for j, s in enumerate(summaries)],
            "spearman_rho_mmd_random_label": {"text": evidence["sp_text"],
                                              "kv_best_trained": evidence["sp_kv"],
                                              "kv_best_controls": evidence["sp_kv_c"]},
            "input_mmd_max_change_random_label": evidence["max_in"],
            "random_label_drop_predicted_by_foreign_fit": pred,
        })

    checks = ph.holm_checks([c for c, _, _, _ in tested], [p for _, p, _, _ in tested],
                            [t for _, _, t, _ in tested], floors=[f for *_, f in tested])
    figures = _figures(groups, per_model, setup.designs, setup.text_mmd, results, setup.levels,
                       setup.enc_name, out)
    return {"name": "interference",
            "title": "Cross-task interference and random labels against the MMD",
            "description": _description(groups, setup), "checks": checks,
            "findings": findings, "tables": _tables(rows, setup.enc_name), "figures": figures,
            "data": to_jsonable(_data(setup, data_groups, _seconds(results, setup.t_text)))}


def _summarise(m: ph.ModelUnderTest, mres: list[dict[str, Any]],
               setup: _Setup) -> dict[str, Any]:
    """One model's accuracies, fits, best layer, per-(task, set) drops and R² statistics."""
    rho = np.asarray(setup.levels)
    R, T = len(setup.levels), len(setup.designs)
    fv, rv = VARIANTS.index("foreign"), VARIANTS.index("random-label")
    L = mres[0]["mmd_kv"].shape[0]
    acc = np.stack([r["correct"].mean(-1) for r in mres])            # [T, V, R, S]
    fits, r2_layers, sr2_layers, slope_layers = _variant_fits(acc, mres, setup, L)
    best = int(np.argmax(np.nan_to_num(sr2_layers[fv], nan=-2.0)))
    # one unit per (task, demonstration set): a set's items share its demonstrations
    drop_f = np.concatenate([(r["correct"][fv, 0].astype(float)
                              - r["correct"][fv, -1].astype(float)).mean(-1)
                             for r in mres])
    drop_r = np.concatenate([(r["correct"][rv, 0].astype(float)
                              - r["correct"][rv, -1].astype(float)).mean(-1)
                             for r in mres])
    mean_acc = acc.mean(axis=(0, 3))                                 # [V, R]
    slope_rho = [fit_line(rho, mean_acc[v]).slope for v in range(len(VARIANTS))]
    fold = [mres[ti]["correct"][fv].reshape(R * setup.n_sets, -1) for ti in range(T)]
    x_best = [mres[ti]["mmd_kv"][best, fv].ravel() for ti in range(T)]
    x_text = [setup.text_mmd[ti][fv].ravel() for ti in range(T)]
    return {
        "model": m, "L": L, "acc": acc, "fits": fits, "r2_layers": r2_layers,
        "sr2_layers": sr2_layers, "slope_layers": slope_layers, "best": best,
        "drop_f": drop_f, "drop_r": drop_r, "mean_acc": mean_acc, "slope_rho": slope_rho,
        "r2_best": _r2_statistic(fold, x_best, m, setup.seed),
        "r2_text": _r2_statistic(fold, x_text, m, setup.seed),
        "p_r2_kv": _r2_permutation_p(
            fold, [mres[ti]["mmd_kv"][:, fv].reshape(L, -1) for ti in range(T)], setup.seed),
        "p_r2_text": _r2_permutation_p(fold, [x[None] for x in x_text], setup.seed),
        # beyond rho: at a fixed level, do the sets with the larger MMD² score lower?
        "beyond_text": within_level_test([acc[ti, fv] for ti in range(T)],
                                         [[setup.text_mmd[ti][fv] for ti in range(T)]],
                                         n_perm=N_PERM, seed=setup.seed),
        "beyond_kv": within_level_test([acc[ti, fv] for ti in range(T)],
                                       [[mres[ti]["mmd_kv"][la, fv] for ti in range(T)]
                                        for la in range(L)], n_perm=N_PERM, seed=setup.seed),
        "slope_best": float(np.nanmean([fits["foreign"][ti]["layers"][best].slope
                                        for ti in range(T)])),
        "slope_text": float(np.nanmean([fits["foreign"][ti]["text"].slope
                                        for ti in range(T)])),
        "choices": [r["choice"] for r in mres]}


def _variant_fits(acc: np.ndarray, mres: list[dict[str, Any]], setup: _Setup, L: int
                  ) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """Per variant and task, the fits of accuracy on the label-aware text, input-only text,
    chosen-head and every layer's MMD²; and per variant and layer the mean R², mean signed
    R² and mean slope over tasks (``[V, L]`` each)."""
    T = len(setup.designs)
    fits: dict[str, Any] = {}
    r2_layers = np.full((len(VARIANTS), L), np.nan)
    sr2_layers = np.full((len(VARIANTS), L), np.nan)
    slope_layers = np.full((len(VARIANTS), L), np.nan)
    for v, var in enumerate(VARIANTS):
        per_task = []
        for ti in range(T):
            f = {"text": _task_fits(acc[ti, v], setup.text_mmd[ti][v]),
                 "inputs": _task_fits(acc[ti, v], setup.input_mmd[ti][v]),
                 "chosen": _task_fits(acc[ti, v], mres[ti]["mmd_chosen"][v]),
                 "layers": [_task_fits(acc[ti, v], mres[ti]["mmd_kv"][la, v])
                            for la in range(L)]}
            per_task.append(f)
        fits[var] = per_task
        for la in range(L):
            r2 = [per_task[ti]["layers"][la].r2 for ti in range(T)]
            r2_layers[v, la] = float(np.mean(np.nan_to_num(r2, nan=0.0)))
            sr2_layers[v, la] = float(np.mean([signed_r2(per_task[ti]["layers"][la])
                                               for ti in range(T)]))
            sl = [per_task[ti]["layers"][la].slope for ti in range(T)]
            slope_layers[v, la] = float(np.nanmean(sl)) if np.isfinite(sl).any() \
                else np.nan
    return fits, r2_layers, sr2_layers, slope_layers


def _comparisons(summaries: list[dict[str, Any]],
                 setup: _Setup) -> dict[str, ph.ControlComparison]:
    """The trained model against its controls: the two per-set drops and the two R²."""
    tr, ctrls = summaries[0], summaries[1:]
    name, seed, enc_name = tr["model"].name, setup.seed, setup.enc_name
    comps = {}
    members = [tr["model"], *(c["model"] for c in ctrls)]
    # the drops are measured on the same (task, set) units by every model: paired
    comps["drop_foreign"] = ph.compare_paired_with_controls(
        f"{name}: accuracy drop rho=0 -> 1, foreign demonstrations (per (task, set))",
        tr["drop_f"], [c["drop_f"] for c in ctrls], members, seed=seed)
    comps["r2_kv"] = ph.compare_with_controls(
        f"{name}: signed R² of accuracy on K_att MMD² at the best layer (each model's "
        "own)",
        tr["r2_best"], [c["r2_best"] for c in ctrls], seed=seed)
    comps["r2_text"] = ph.compare_with_controls(
        f"{name}: signed R² of accuracy on {enc_name} MMD² (label-aware texts)",
        tr["r2_text"], [c["r2_text"] for c in ctrls], seed=seed)
    comps["drop_random"] = ph.compare_paired_with_controls(
        f"{name}: accuracy drop rho=0 -> 1, random labels (per (task, set))",
        tr["drop_r"], [c["drop_r"] for c in ctrls], members, seed=seed)
    return comps


def _group_checks(summaries: list[dict[str, Any]], comps: dict[str, ph.ControlComparison],
                  setup: _Setup) -> list[tuple[Check, float, str, float]]:
    """The four controlled checks of one group, each with the raw p-value of its claim on the
    trained model, the test's description and the smallest p the test allows (for the
    section's Holm correction and testability)."""
    tr, ctrls = summaries[0], summaries[1:]
    name, enc_name, T = tr["model"].name, setup.enc_name, len(setup.designs)
    fv, rv = VARIANTS.index("foreign"), VARIANTS.index("random-label")
    sf, sr = tr["slope_rho"][fv], tr["slope_rho"][rv]
    df, dr = comps["drop_foreign"].trained, comps["drop_random"].trained
    perm = (f"one-sided permutation test ({N_PERM} permutations of the (rho, set) points "
            "within each task)")
    perm_floor = 1.0 / (N_PERM + 1)  # the +1-corrected permutation p's lower bound
    tests = [
        (ph.sign_flip_p(tr["drop_f"]), ph.sign_flip_text(tr["drop_f"], "(task, set) units"),
         ph.sign_flip_floor(tr["drop_f"])),
        (tr["p_r2_kv"], perm + " of the best layer's mean signed R², the layer chosen within "
                        "each permutation", perm_floor),
        (tr["p_r2_text"], perm + " of the mean signed R²", perm_floor),
        (ph.sign_flip_p(tr["drop_r"]), ph.sign_flip_text(tr["drop_r"], "(task, set) units"),
         ph.sign_flip_floor(tr["drop_r"])),
    ]
    checks = [
        ph.controlled_check(
            f"{name}: accuracy falls as the fraction of foreign demonstrations rises (slope on "
            "rho < 0, per-(task, set) drop rho=0 -> 1 with its 95% interval above 0)",
            bool(np.isfinite(sf) and sf < 0 and df.low > 0), comps["drop_foreign"],
            f"slope of mean accuracy on rho {sf:+.3f} per unit rho (mean over {T} tasks)",
            sign=1),
        ph.controlled_check(
            f"{name}: the bias is linear in the K_att MMD² (signed R² at the best layer >= "
            f"{R2_THRESHOLD}: accuracy falls along a line in the MMD²)",
            bool(tr["r2_best"].value >= R2_THRESHOLD), comps["r2_kv"],
            f"best layer {tr['best']} (trained; plain R² "
            f"{tr['r2_layers'][fv, tr['best']]:.2f}), mean slope {tr['slope_best']:+.3g} per "
            f"unit MMD²; control best layer(s) {[c['best'] for c in ctrls]}", sign=1),
        ph.controlled_check(
            f"{name}: the bias is linear in the {enc_name} MMD² (signed R² >= {R2_THRESHOLD})",
            bool(tr["r2_text"].value >= R2_THRESHOLD), comps["r2_text"],
            f"mean slope {tr['slope_text']:+.3g} per unit MMD²", sign=1),
        ph.controlled_check(
            f"{name}: random labels lower accuracy (the distillation view's prediction; an "
            "input-only account predicts no change): per-(task, set) drop rho=0 -> 1 with its 95% "
            "interval above 0",
            bool(dr.low > 0), comps["drop_random"],
            f"slope of mean accuracy on rho {sr:+.3f} per unit rho", sign=1),
    ]
    return [(c, p, t, f) for c, (p, t, f) in zip(checks, tests, strict=True)]


def _model_findings(summaries: list[dict[str, Any]], setup: _Setup) -> list[str]:
    fv, rv = VARIANTS.index("foreign"), VARIANTS.index("random-label")
    T = len(setup.designs)
    findings = []
    for s in summaries:
        mdl = s["model"]
        ma = s["mean_acc"]
        findings.append(
            f"{mdl.name} ({mdl.role}): mean accuracy over {T} tasks from rho=0 to rho=1 "
            f"goes {ma[fv, 0]:.3f} -> {ma[fv, -1]:.3f} with foreign demonstrations and "
            f"{ma[rv, 0]:.3f} -> {ma[rv, -1]:.3f} with wrong labels; best K_att layer "
            f"{s['best']} (signed R² {s['r2_best'].value:.2f}, plain R² "
            f"{s['r2_layers'][fv, s['best']]:.2f}), {setup.enc_name} signed R² "
            f"{s['r2_text'].value:.2f}.")
        findings.append(_beyond_rho_finding(s, setup))
    return findings


def _beyond_rho_finding(s: dict[str, Any], setup: _Setup) -> str:
    """Whether the MMD² explains accuracy beyond rho (:func:`within_level_test`): the R²
    checks' permutation null is rejected by any effect of rho, and the MMD² moves almost in
    step with rho, so only the sets of one level separate the two."""
    mdl, bt, bk = s["model"], s["beyond_text"], s["beyond_kv"]
    head = (f"{mdl.name} ({mdl.role}), the MMD² beyond the fraction of foreign "
            "demonstrations: ")
    if not np.isfinite(bt.r) and not np.isfinite(bk.r):
        if setup.n_sets < 2:
            return head + ("not measurable with 1 demonstration set per level (no contrast "
                           "within a level: --sets 2 gives one, and with 3 tasks --sets 3 "
                           "gives one that can reach p < 0.05).")
        return head + ("not measurable: accuracy or the MMD² does not vary between the sets "
                       "of any level.")

    def part(t: Any, name: str) -> str:
        if not np.isfinite(t.r):
            return f"{name}: no contrast within a level"
        return f"{name} {t.r:+.3f}, one-sided permutation p {t.p:.3g}"

    t = bt if np.isfinite(bt.r) else bk
    how = (f"all {t.n_perm} relabellings enumerated" if t.exact else
           f"{t.n_perm} relabellings drawn")
    return head + (
        f"at each rho level the sets differ in MMD²; mean over tasks of the within-level "
        f"correlation of accuracy and MMD² (negative: sets with a larger MMD² score lower), "
        f"{part(bt, setup.enc_name)}; "
        + part(bk, f"K_att at its most negative layer ({bk.best}, re-chosen in every "
                   "relabelling)")
        + f" (the null relabels each task's sets as wholes, the same at every rho level; "
          f"{how}; no p below {t.floor:.3g} with these sets"
        + ("; untestable at this size)." if not t.floor < ph.ALPHA else ").")
        )

def _random_label_evidence(summaries: list[dict[str, Any]], gres: list[Any],
                           setup: _Setup) -> dict[str, Any]:
    """Random labels leave the input-only MMD² unchanged (its largest change ``max_in``)
    while the label-aware MMD² rises with rho: Spearman per task of the text MMD² and of
    the K_att MMD² at each model's best layer."""
    tr, ctrls = summaries[0], summaries[1:]
    rv = VARIANTS.index("random-label")
    max_in = max(float(np.max(np.abs(im[rv] - im[rv][:1]))) for im in setup.input_mmd)
    rho_pts = np.repeat(np.asarray(setup.levels), setup.n_sets)
    sp_text = [spearman(rho_pts, tm[rv].ravel()) for tm in setup.text_mmd]
    sp_kv = [spearman(rho_pts, r["mmd_kv"][tr["best"], rv].ravel())
             for r in gres[0]]
    sp_kv_c = [[spearman(rho_pts, r["mmd_kv"][c["best"], rv].ravel())
                for r in gres[1 + j]] for j, c in enumerate(ctrls)]
    return {"max_in": max_in, "sp_text": sp_text, "sp_kv": sp_kv, "sp_kv_c": sp_kv_c}


def _random_label_finding(tr: dict[str, Any], comps: dict[str, ph.ControlComparison],
                          ev: dict[str, Any], setup: _Setup) -> str:
    name, enc_name = tr["model"].name, setup.enc_name
    holds_r = comps["drop_random"].trained.value > 0
    return (
        f"Random labels ({name}): the input-only {enc_name} MMD² does not change with rho "
        f"(largest change {ev['max_in']:.2g}), so an input-only account predicts no accuracy "
        f"change; the label-aware {enc_name} MMD² rises with rho (Spearman per task "
        f"{', '.join(f'{x:.2f}' for x in ev['sp_text'])}) and so does the K_att MMD² at the "
        f"trained model's best layer ({', '.join(f'{x:.2f}' for x in ev['sp_kv'])}; controls "
        f"{'; '.join(', '.join(f'{x:.2f}' for x in row) for row in ev['sp_kv_c'])}). The "
        f"distillation view (values carry the labels, W_0 = sum of value x key terms) "
        f"predicts a drop; measured per-(task, set) drop rho=0 -> 1: "
        f"{comps['drop_random'].trained.value:+.3f} on the trained model "
        f"({'a drop' if holds_r else 'no drop'}), control spread "
        f"[{comps['drop_random'].low:+.3f}, {comps['drop_random'].high:+.3f}].")


def _add_rows(rows: _Rows, summaries: list[dict[str, Any]], gres: list[Any],
              setup: _Setup) -> None:
    fv, rv = VARIANTS.index("foreign"), VARIANTS.index("random-label")
    enc_name, levels = setup.enc_name, setup.levels
    for j, s in enumerate(summaries):
        mdl = s["model"]
        for ti, d in enumerate(setup.designs):
            for v, var in enumerate(VARIANTS):
                for r in range(len(levels)):
                    rows.acc.append((mdl.name, mdl.role, d.task.name, var, levels[r],
                                     float(s["acc"][ti, v, r].mean()),
                                     float(setup.text_mmd[ti][v, r].mean()),
                                     float(gres[j][ti]["mmd_kv"][s["best"], v, r].mean()),
                                     float(gres[j][ti]["mmd_chosen"][v, r].mean())))
            for var in VARIANTS:
                f = s["fits"][var][ti]
                ch = s["choices"][ti]
                for rep, lf in ((f"{enc_name} (texts)", f["text"]),
                                (f"{enc_name} (inputs)", f["inputs"]),
                                (f"K_att best layer {s['best']}", f["layers"][s["best"]]),
                                (f"K_att {ch.spec} (demo-carrying)", f["chosen"])):
                    rows.fit.append((mdl.name, mdl.role, d.task.name, var, rep, lf.slope,
                                     lf.intercept, lf.r2, signed_r2(lf)))
        for la in range(s["L"]):
            rows.layer.append((mdl.name, mdl.role, la, float(s["r2_layers"][fv, la]),
                               float(s["sr2_layers"][fv, la]),
                               float(s["slope_layers"][fv, la]),
                               float(s["r2_layers"][rv, la]),
                               float(s["sr2_layers"][rv, la])))


def _tables(rows: _Rows, enc_name: str) -> list[Table]:
    return [
        Table("Accuracy and MMD² per rho (mean over sets)",
              ("model", "role", "task", "variant", "rho", "accuracy", f"MMD² {enc_name}",
               "MMD² K_att best layer", "MMD² K_att demo-carrying head"), tuple(rows.acc)),
        Table("Fits accuracy = intercept + slope MMD² over the (rho, set) points",
              ("model", "role", "task", "variant", "representation", "slope", "intercept",
               "R²", "signed R²"), tuple(rows.fit)),
        Table("R² of accuracy on the K_att MMD² per layer (mean over tasks)",
              ("model", "role", "layer", "R² foreign", "signed R² foreign",
               "mean slope foreign", "R² random-label", "signed R² random-label"),
              tuple(rows.layer)),
    ]


def _seconds(results: list[Any], t_text: float) -> dict[str, float]:
    """Wall and CPU time per stage, summed over every model and task."""
    seconds: dict[str, float] = {"text_encoder": t_text}
    for key in ("scoring", "kv", "heads", "mmd"):
        for suffix in ("", "_cpu"):
            seconds[key + suffix] = float(sum(r["timing"][key + suffix] for gr in results
                                              for mr in gr for r in mr))
    return seconds


def _data(setup: _Setup, data_groups: list[dict[str, Any]],
          seconds: dict[str, float]) -> dict[str, Any]:
    return {
        "k": setup.k, "rhos": list(setup.levels), "variants": list(VARIANTS),
        "n_sets": setup.n_sets, "n_test": setup.n_test, "n_sample": setup.n_sample,
        "n_calibration": setup.n_cal, "seed": setup.seed, "quick": bool(setup.quick),
        "r2_threshold": R2_THRESHOLD, "text_encoder": setup.enc_name,
        "tasks": [{"task": d.task.name, "foreign": d.foreign.name,
                   "sample_idx": d.sample_idx.tolist(), "sets": d.sets,
                   "mmd_text": setup.text_mmd[i].tolist(),
                   "mmd_inputs": setup.input_mmd[i].tolist()}
                  for i, d in enumerate(setup.designs)],
        "groups": data_groups, "seconds": seconds}


def _description(groups: list[list[ph.ModelUnderTest]], setup: _Setup) -> str:
    tasks_desc = ", ".join(f"{d.task.name} (foreign: {d.foreign.name})"
                           for d in setup.designs)
    k, levels, enc_name = setup.k, setup.levels, setup.enc_name
    return (
        f"Cross-task interference on {len(groups)} model group(s) "
        f"({', '.join(g[0].name for g in groups)}, each with "
        f"{len(groups[0]) - 1} random-init control(s)), target tasks {tasks_desc}. "
        f"k={k} demonstrations; rho in {{{', '.join(f'{r:g}' for r in levels)}}}; "
        f"{setup.n_sets} seeded demonstration set(s) per (task, rho), nested in rho; "
        f"{setup.n_test} test "
        f"items per task scored after every prompt (shared prefix). Foreign variant: the last "
        f"round(rho k) of k label-balanced target items (selection order) are replaced, at "
        f"their seeded random positions, by label-balanced items of the next task shown with "
        f"that task's own label words in the target's template. Random-label variant: the same "
        f"inputs and positions, round(rho k) of them with a wrong target label (a derangement "
        f"of their labels that keeps the label counts where possible, else a uniformly drawn "
        f"other label); at rho=1 every label is wrong. MMD² (biased V-statistic) between the "
        f"k demonstrations and a label-balanced target sample of {setup.n_sample} pool items "
        f"written "
        f"with their true labels: {enc_name} Gaussian (median bandwidth fixed per task) on the "
        f"texts as shown and on the inputs alone; normalised K_att of all KV heads of every "
        f"layer (pre-RoPE keys/values averaged over each text's tokens); normalised K_att at "
        f"the most demo-carrying KV head (choose_attention_heads, {setup.n_cal} calibration "
        f"prompt(s) per task and model). Bias = accuracy drop from rho=0; accuracy = a + b "
        f"MMD² fitted by OLS per task over the (rho, set) points of the foreign variant. The "
        f"checks use the signed R² (R² when accuracy falls with the MMD², -R² when it rises; "
        f"a constant accuracy counts as 0), averaged over tasks, with a 95% interval from "
        f"resampling test items ({_N_BOOT} resamples); the best layer is chosen per model by "
        f"its own mean signed R². Drops are per (task, demonstration set), the mean over the "
        f"set's items (which share its demonstrations, so they are not resampled apart; with "
        f"U units no sign-flip p is below 2/2^U); "
        f"a drop counts when its 95% interval lies above 0. Each claim also gets a p-value on "
        f"the trained model (drops: the paired sign-flip test over the (task, set) units "
        f"their interval resamples; R²: a one-sided permutation test of the (rho, set) "
        f"points within each task, {N_PERM} permutations, the best layer re-chosen in each), "
        f"Holm-corrected over this section's claim checks (the family is the section's "
        f"claims); a check holds only with Holm p < {ph.ALPHA:g}. Seed {setup.seed}; "
        f"quick={setup.quick}.")


def _model_data(s: dict[str, Any], mres: list[dict[str, Any]], designs: list[_Design]
                ) -> dict[str, Any]:
    m = s["model"]
    return {
        "name": m.name, "role": m.role, "seed": m.seed, "best_layer": s["best"],
        "r2_layers": {v: s["r2_layers"][i].tolist() for i, v in enumerate(VARIANTS)},
        "signed_r2_layers": {v: s["sr2_layers"][i].tolist() for i, v in enumerate(VARIANTS)},
        "slope_layers": {v: s["slope_layers"][i].tolist() for i, v in enumerate(VARIANTS)},
        "slope_accuracy_rho": dict(zip(VARIANTS, s["slope_rho"], strict=True)),
        "r2_best": s["r2_best"].to_dict(), "r2_text": s["r2_text"].to_dict(),
        "p_r2_kv": s["p_r2_kv"], "p_r2_text": s["p_r2_text"],
        "beyond_rho": {"text": s["beyond_text"].to_dict(), "kv": s["beyond_kv"].to_dict()},
        "drop_foreign": s["drop_f"].tolist(), "drop_random_label": s["drop_r"].tolist(),
        "tasks": [{
            "task": d.task.name,
            "head_choice": r["choice"].to_dict(),
            "correct": r["correct"].astype(int).tolist(),           # [V, R, S, N]
            "accuracy": s["acc"][ti].tolist(),                       # [V, R, S]
            "mmd_kv": r["mmd_kv"].tolist(),                          # [L, V, R, S]
            "mmd_chosen": r["mmd_chosen"].tolist(),                  # [V, R, S]
            "fits": {v: {"text": s["fits"][v][ti]["text"].to_dict(),
                         "inputs": s["fits"][v][ti]["inputs"].to_dict(),
                         "chosen": s["fits"][v][ti]["chosen"].to_dict(),
                         "layers": [f.to_dict() for f in s["fits"][v][ti]["layers"]]}
                     for v in VARIANTS},
            "n_prompts": r["n_prompts"], "n_texts_encoded": r["n_texts"],
            "seconds": r["timing"]}
            for ti, (d, r) in enumerate(zip(designs, mres, strict=True))]}


# ============================================================================ figures
_VAR_COLOR = {"foreign": "C0", "random-label": "C3"}


def _figures(groups: list[list[ph.ModelUnderTest]], per_model: list[list[dict[str, Any]]],
             designs: list[_Design], text_mmd: list[np.ndarray], results: list[Any],
             levels: tuple[float, ...], enc_name: str, out: Path) -> list[str]:
    _accuracy_rho_figure(groups, per_model, designs, levels,
                         out / "interference_accuracy_rho.png")
    _accuracy_mmd_figure(groups, per_model, designs, text_mmd, results, enc_name,
                         out / "interference_accuracy_mmd.png")
    _r2_layers_figure(groups, per_model, enc_name, out / "interference_r2_layers.png")
    return ["interference_accuracy_rho.png", "interference_accuracy_mmd.png",
            "interference_r2_layers.png"]


def _accuracy_rho_figure(groups: list[list[ph.ModelUnderTest]],
                         per_model: list[list[dict[str, Any]]], designs: list[_Design],
                         levels: tuple[float, ...], path: Path) -> None:
    """1. accuracy vs rho, per group and task."""
    G, T = len(groups), len(designs)
    rho = np.asarray(levels)
    fig, axes = new_figure(G, T, size=(4.2, 3.4))
    for gi, summaries in enumerate(per_model):
        for ti, d in enumerate(designs):
            ax = axes[gi, ti]
            for s in summaries:
                ctrl = s["model"].is_control
                for v, var in enumerate(VARIANTS):
                    ax.plot(rho, s["acc"][ti, v].mean(-1), ls="--" if ctrl else "-",
                            marker="o", ms=3, color=_VAR_COLOR[var], alpha=0.55 if ctrl else 1,
                            label=f"{var}, {'control' if ctrl else 'trained'}")
            ax.axhline(1.0 / len(d.task.label_names), color="grey", lw=0.7, ls=":")
            ax.set_title(f"{groups[gi][0].name}: {d.task.name} (foreign {d.foreign.name})",
                         fontsize=8)
            ax.set_xlabel("rho (fraction replaced / wrongly labelled)")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            if gi == 0 and ti == 0:
                ax.legend(fontsize=6)
    fig.suptitle("Accuracy against rho (solid: trained, dashed: random-init control)")
    save_figure(fig, path)


def _accuracy_mmd_figure(groups: list[list[ph.ModelUnderTest]],
                         per_model: list[list[dict[str, Any]]], designs: list[_Design],
                         text_mmd: list[np.ndarray], results: list[Any], enc_name: str,
                         path: Path) -> None:
    """2. accuracy vs MMD (foreign variant), text encoder and best K_att layer, with fits."""
    fv = VARIANTS.index("foreign")
    fig, axes = new_figure(len(groups), 2, size=(5.2, 4.0))
    markers = "osD^v<>ph*"
    for gi, summaries in enumerate(per_model):
        for col in range(2):
            ax = axes[gi, col]
            for j, s in enumerate(summaries):
                ctrl = s["model"].is_control
                for ti, d in enumerate(designs):
                    x = (text_mmd[ti][fv] if col == 0
                         else results[gi][j][ti]["mmd_kv"][s["best"], fv]).ravel()
                    y = s["acc"][ti, fv].ravel()
                    ax.scatter(x, y, marker=markers[ti % len(markers)], s=18,
                               facecolors="none" if ctrl else f"C{ti}", edgecolors=f"C{ti}",
                               label=f"{d.task.name}" if not ctrl else None)
                    f = fit_line(x, y)
                    if np.isfinite(f.slope):
                        xs = np.linspace(x.min(), x.max(), 10)
                        ax.plot(xs, f.intercept + f.slope * xs, color=f"C{ti}",
                                ls="--" if ctrl else "-", lw=1, alpha=0.6 if ctrl else 1)
            which = enc_name if col == 0 else "K_att, best layer (trained: " \
                f"{summaries[0]['best']})"
            ax.set_xlabel(f"MMD² to the target task ({which})")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{groups[gi][0].name}: foreign demonstrations", fontsize=9)
            ax.legend(fontsize=6)
    fig.suptitle("Accuracy against MMD² (filled/solid: trained, hollow/dashed: control)")
    save_figure(fig, path)


def _r2_layers_figure(groups: list[list[ph.ModelUnderTest]],
                      per_model: list[list[dict[str, Any]]], enc_name: str, path: Path) -> None:
    """3. signed R² per layer, K_att, with the text encoder's as a line."""
    fig, axes = new_figure(1, len(groups), size=(5.6, 3.8))
    for gi, summaries in enumerate(per_model):
        ax = axes[0, gi]
        for s in summaries:
            ctrl = s["model"].is_control
            for v, var in enumerate(VARIANTS):
                ax.plot(np.arange(s["L"]), s["sr2_layers"][v], ls="--" if ctrl else "-",
                        color=_VAR_COLOR[var], alpha=0.55 if ctrl else 1,
                        label=f"{var}, {'control' if ctrl else 'trained'}")
            ax.axhline(s["r2_text"].value, color="k" if not ctrl else "grey",
                       ls="--" if ctrl else "-.", lw=0.8,
                       label=f"{enc_name} (foreign), {'control' if ctrl else 'trained'}")
        ax.axhline(R2_THRESHOLD, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel("signed R² of accuracy on MMD² (mean over tasks)")
        ax.set_ylim(-1.02, 1.02)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_title(f"{groups[gi][0].name}", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Signed R² per layer, K_att (+: accuracy falls with the MMD²; solid: trained, "
                 "dashed: control)")
    save_figure(fig, path)
