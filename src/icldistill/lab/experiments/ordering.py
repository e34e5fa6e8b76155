"""Order sensitivity of few-shot prompts, seen through the distilled student ``W_0``.

For fixed, label-balanced demonstration sets the demonstrations are presented in many orders
(every one of the ``k!`` orders when there are at most ``n_orders`` of them, else ``n_orders``
distinct sampled ones, :func:`orderings`). For every order:

- **accuracy** on the held-back test items (one shared prompt prefix per order); per set the
  spread across orders (max - min, standard deviation, IQR) and, per item, the share of
  orders whose prediction differs from the item's most frequent prediction (*disagreement*,
  0 = the order never changes the prediction);
- **distillation quantities** at the label position of the traced *calibration* queries, per
  layer (mean over the kernel-form heads): ``eta* = N / (2 D')``, ``log ||W_0||_HS``, the
  demonstrations' share of the attention output, and the relative Hilbert–Schmidt distance
  ``||A - B|| / ((||A|| + ||B||) / 2)`` between the same head's ``A = W_0(order)`` and
  ``B = W_0(reference order)``, over the mean of the two norms (symmetric, at most 2;
  :func:`relative_w0_distance`). The same demonstration tokens sit at other positions in
  another order, so their keys change through RoPE and ``W_0`` moves; ``N`` does not change
  (the same tokens), so ``eta*`` moves only through ``D'``.

**The rule** (fixed before any held-back item is scored): the test items are split into the
``n_trace`` traced calibration queries and the held-back rest. The primary rule picks the
**medoid order**: the order whose per-layer profile ``(log ||W_0||, log eta*)`` on the
calibration queries is closest (Euclidean) to the profile averaged over all orders. The
order-averaged student is the order-free estimate of the task's ``W_0``; the medoid is the
order whose student deviates least from it, i.e. the order that adds the least order-specific
distortion. It was chosen as primary over the secondary rule — the order with the largest
demonstration share of the attention output on the calibration queries — because it uses the
quantity the theory is about (the student itself) rather than a proxy, and does not favour
extreme orders. Both rules are compared on the held-back items, paired (same items, same
demonstration set), with

- **random order**: the correctness averaged over all orders (the expected correctness of a
  uniformly random order);
- **most similar last**: per held-back query, the set's demonstrations sorted by MiniLM cosine
  similarity to the query, the most similar last (:func:`most_similar_last`; one prompt per
  query).

The unit of every comparison is the demonstration set: a rule picks one order per set, and
all held-back items of a set are read with that set's demonstrations, so items are not
independent draws. Per comparison: the mean over sets of the per-set difference in held-back
accuracy, its bootstrap interval over sets
(:func:`~icldistill.core.stats.paired_bootstrap_ci`) and a two-sided p-value over sets: against
a random order the exact pick-randomisation test
(:func:`~icldistill.lab.experiments._stats.pick_randomisation_test`: the rule's pick against a
uniform pick in every set), against most-similar-last the exact sign-flip test of the per-set
differences (:func:`~icldistill.core.stats.sign_flip_test`). With ``S`` sets a sign-flip p is
never below ``2 / 2**S`` (0.031 for 6 sets). The trained models' comparisons are
Holm-adjusted together; the random-init controls' form a family of their own. Everything is
measured on the trained model and its random-initialised controls on the same prompts (the
control rule of :mod:`icldistill.lab.experiments.phenomena`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icldistill.artifacts.figures import new_figure, save_figure
from icldistill.artifacts.store import to_jsonable
from icldistill.core.decomposition import DualWeights, log_kernel_form
from icldistill.core.progress import progress_bar
from icldistill.core.results import Result
from icldistill.core.stats import holm, paired_bootstrap_ci, sign_flip_test, spearman
from icldistill.core.validation import InputError, check_int, check_seed
from icldistill.lab.experiments import phenomena as ph
from icldistill.lab.experiments._common import Check, Section, Table
from icldistill.lab.experiments._stats import pick_randomisation_test

__all__ = [
    "FULL",
    "QUICK",
    "OrderTrace",
    "OrderingSizes",
    "PairedResult",
    "SetResult",
    "hs_cosine",
    "log_hs_inner",
    "medoid_order",
    "most_similar_last",
    "orderings",
    "paired_result",
    "relative_w0_distance",
    "run",
    "trace_order",
]

#: Largest ``k`` for which sampled orders are drawn from the explicit list of all ``k!`` orders
#: (above it, permutations are drawn until ``n`` distinct ones are found).
_ENUMERATE_MAX_K = 8


# ============================================================================ sizes
@dataclass(frozen=True)
class OrderingSizes:
    """How much the section measures.

    Attributes
    ----------
    ks : tuple of int
        Demonstrations per prompt.
    n_orders : tuple of int
        Per ``k``: every order when ``k! <= n_orders``, else ``n_orders`` sampled orders.
    n_sets : int
        Fixed demonstration sets per task and ``k``.
    n_test : int
        Test items per task: ``n_trace`` calibration queries and the held-back rest (scored in
        every order).
    n_trace : int
        Of them, the calibration queries traced in every order (the rest are held back).
    """

    ks: tuple[int, ...] = (4,)
    n_orders: tuple[int, ...] = (24,)
    n_sets: int = 1
    n_test: int = 16
    n_trace: int = 1

    def __post_init__(self) -> None:
        if not self.ks or len(self.ks) != len(self.n_orders):
            raise InputError(f"sizes: ks {self.ks!r} and n_orders {self.n_orders!r} need one "
                             "entry each per k")
        for name, vals in (("ks", self.ks), ("n_orders", self.n_orders)):
            for v in vals:
                if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                    raise InputError(f"sizes.{name} must hold positive integers, got {v!r}")
        for name in ("n_sets", "n_test", "n_trace"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise InputError(f"sizes.{name} must be a positive integer, got {v!r}")
        if self.n_trace >= self.n_test:
            raise InputError(f"sizes.n_trace ({self.n_trace}) must be smaller than sizes.n_test "
                             f"({self.n_test}): the rest are the held-back items")

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "n_orders": list(self.n_orders), "n_sets": self.n_sets,
                "n_test": self.n_test, "n_trace": self.n_trace}


#: Quick mode: k = 4, 6 of the 24 orders sampled, one set per task, 5 test items of which 1
#: calibration query is traced and 4 are held back (scored). Measured on smollm2-135m + 1 control
#: on the 3 default tasks: 110 CPU-seconds on one thread (about 4.6 s per order and model, 13 s
#: for each model's most-similar-last prompts); every order costs one shared-prefix scoring pass
#: and one traced forward pass per calibration query, so the 24 orders of k = 4 do not fit.
QUICK = OrderingSizes(ks=(4,), n_orders=(6,), n_sets=1, n_test=5, n_trace=1)
#: Full mode (what issue 13 asks): k = 4 in all 24 orders and k = 8 in 50 sampled orders, one set
#: per task and k, 62 test items (2 traced calibration queries, 60 held back for the paired rule
#: comparison). Held-back items share each order's prompt prefix, so they cost only their own
#: tokens; the traces and the per-query most-similar-last prompts dominate. Several CPU-times
#: the quick run per model: a background job (``reproduce`` resumes per section).
FULL = OrderingSizes(ks=(4, 8), n_orders=(24, 50), n_sets=1, n_test=62, n_trace=2)


# ============================================================================ orders
def orderings(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Orders of ``k`` demonstrations: all of them when there are at most ``n``, else ``n``.

    Parameters
    ----------
    k : int
        Number of demonstrations (``>= 1``).
    n : int
        Most orders wanted (``>= 1``).
    rng : numpy Generator
        Draws the sampled orders (unused when all ``k!`` are returned).

    Returns
    -------
    ndarray ``[m, k]`` int64
        Distinct permutations of ``0 .. k-1`` in lexicographic order: all ``m = k!`` when
        ``k! <= n``, else ``m = n`` drawn uniformly without replacement.
    """
    k = check_int(k, "k", 1)
    n = check_int(n, "n", 1)
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    total = math.factorial(k)
    if total <= n:
        return np.asarray(list(itertools.permutations(range(k))), dtype=np.int64).reshape(-1, k)
    if k <= _ENUMERATE_MAX_K:
        pick = np.sort(rng.choice(total, size=n, replace=False))
        every = itertools.permutations(range(k))
        want = set(int(i) for i in pick)
        rows = [p for i, p in enumerate(every) if i in want]
        return np.asarray(rows, dtype=np.int64)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < n:
        seen.add(tuple(int(i) for i in rng.permutation(k)))
    return np.asarray(sorted(seen), dtype=np.int64)


def most_similar_last(demo_embeddings: Any, query_embeddings: Any) -> np.ndarray:
    """Per query, the demonstrations ordered by cosine similarity to it, the most similar last.

    Parameters
    ----------
    demo_embeddings : array-like ``[k, d]``
    query_embeddings : array-like ``[n, d]``

    Returns
    -------
    ndarray ``[n, k]`` int64
        Row ``i`` lists the demonstration indices in prompt order for query ``i`` (ascending
        similarity; ties keep the demonstrations' own order).
    """
    d = np.asarray(demo_embeddings, dtype=np.float64)
    q = np.asarray(query_embeddings, dtype=np.float64)
    if d.ndim != 2 or q.ndim != 2 or d.shape[1] != q.shape[1] or d.shape[0] < 1:
        raise InputError(f"demo_embeddings [k, d] and query_embeddings [n, d] must share d, got "
                         f"shapes {d.shape} and {q.shape}")
    if not (np.isfinite(d).all() and np.isfinite(q).all()):
        raise InputError("demo_embeddings and query_embeddings must be finite")
    dn = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
    sim = qn @ dn.T                                            # [n, k]
    return np.argsort(sim, axis=1, kind="stable").astype(np.int64)


# ============================================================================ W_0 geometry
def log_hs_inner(a: DualWeights, b: DualWeights) -> tuple[float, float]:
    """The Hilbert–Schmidt inner product ``<A, B>_HS`` of two dual weights, in log space.

    ``<A, B> = e^{L_a + L_b} sum_ij <c_i, c'_j> exp(scale <k_i, k'_j>)`` (float64, shifted by
    the largest exponent, so it is finite where the value itself overflows).

    Parameters
    ----------
    a, b : DualWeights
        Same kernel scale, same key and value dimensions.

    Returns
    -------
    sign : float
        ``+1``, ``-1`` or ``0`` (then ``log_abs = -inf``).
    log_abs : float
        ``log |<A, B>|``.
    """
    _check_pair(a, b)
    sign, log_abs = log_kernel_form(a.coefficients, a.keys, b.coefficients, b.keys, a.scale)
    if sign == 0.0:
        return 0.0, -math.inf
    return sign, log_abs + a.log_multiplier + b.log_multiplier


def _check_pair(a: Any, b: Any) -> None:
    if not isinstance(a, DualWeights) or not isinstance(b, DualWeights):
        raise InputError("a and b must be DualWeights")
    if a.scale != b.scale:
        raise InputError(f"a and b have different kernel scales ({a.scale} vs {b.scale})")
    if a.keys.shape[1] != b.keys.shape[1] or a.coefficients.shape[1] != b.coefficients.shape[1]:
        raise InputError("a and b have different key or value dimensions")


def _movement(log_aa: float, log_bb: float, sign_ab: float, log_ab: float
              ) -> tuple[float, float]:
    """Relative distance ``||A - B|| / ((||A|| + ||B||) / 2)`` and cosine
    ``<A, B> / (||A|| ||B||)`` from ``log ||A||^2``, ``log ||B||^2`` and ``<A, B>`` (log form).

    With ``u = min(||A||, ||B||) / max(||A||, ||B||)`` the distance is
    ``2 sqrt(1 + u^2 - 2 u cos) / (1 + u)``: no norm is ever formed, so nothing overflows.
    """
    fa, fb = math.isfinite(log_aa), math.isfinite(log_bb)
    if not fa and not fb:
        return math.nan, math.nan
    if not fa or not fb:
        return 2.0, math.nan
    la, lb = 0.5 * log_aa, 0.5 * log_bb
    cos = sign_ab * math.exp(log_ab - la - lb) if sign_ab else 0.0
    cos = min(1.0, max(-1.0, cos))
    u = math.exp(min(la, lb) - max(la, lb))
    return 2.0 * math.sqrt(max(0.0, 1.0 + u * u - 2.0 * u * cos)) / (1.0 + u), cos


def relative_w0_distance(a: DualWeights, b: DualWeights) -> float:
    """``||A - B||_HS / ((||A||_HS + ||B||_HS) / 2)`` of two dual weights (e.g. one head's
    ``W_0`` in two orders of the same demonstrations): 0 for equal maps, at most 2.

    Symmetric and bounded (a norm that changes by a large factor does not blow it up; the
    change of scale alone is ``log ||B|| - log ||A||``). Computed from ``||A||^2``, ``||B||^2``
    and ``<A, B>`` in log space (:func:`log_hs_inner`), finite where the norms overflow
    float64; NaN when both are zero.
    """
    return _pair_movement(a, b)[0]


def hs_cosine(a: DualWeights, b: DualWeights) -> float:
    """``<A, B>_HS / (||A||_HS ||B||_HS)``: the change of direction of two dual weights alone
    (NaN when one is zero)."""
    return _pair_movement(a, b)[1]


def _pair_movement(a: DualWeights, b: DualWeights) -> tuple[float, float]:
    _check_pair(a, b)
    s_aa, l_aa = log_hs_inner(a, a)
    s_bb, l_bb = log_hs_inner(b, b)
    s_ab, l_ab = log_hs_inner(a, b)
    return _movement(l_aa if s_aa > 0 else -math.inf, l_bb if s_bb > 0 else -math.inf, s_ab,
                     l_ab)


@dataclass(frozen=True)
class _Group:
    """The dual expansion several heads share (grouped-query attention): keys, values and the
    log of its unscaled squared norm."""

    keys: torch.Tensor
    coefficients: torch.Tensor
    log_sq: float


def _groups(res: Any, layer: int, heads: Sequence[int]) -> tuple[list[_Group], dict[int, int],
                                                                  dict[int, float], float]:
    """The distinct dual expansions of ``heads`` at ``layer`` (last position), which group
    every head uses and its ``log_multiplier``."""
    groups: list[_Group] = []
    which: dict[int, int] = {}
    mult: dict[int, float] = {}
    scale = math.nan
    for h in heads:
        w = res.w0(layer, h, -1)
        scale = w.scale
        mult[h] = w.log_multiplier
        for gi, g in enumerate(groups):
            if g.keys.shape == w.keys.shape and torch.equal(g.keys, w.keys) \
                    and torch.equal(g.coefficients, w.coefficients):
                which[h] = gi
                break
        else:
            k = w.keys.to(torch.float64)
            c = w.coefficients.to(torch.float64)
            sign, log_sq = log_kernel_form(c, k, c, k, w.scale)
            groups.append(_Group(k, c, log_sq if sign > 0 else -math.inf))
            which[h] = len(groups) - 1
    return groups, which, mult, scale


@dataclass(frozen=True)
class OrderTrace:
    """Distillation quantities of one prompt (one order, one query) at its last token, per
    layer as the mean over the kernel-form heads (NaN where a layer has none).

    Attributes
    ----------
    eta : ndarray ``[L]``
        ``eta* = N / (2 D')``.
    log_w0_norm : ndarray ``[L]``
        ``log ||W_0||_HS``.
    demo_share : ndarray ``[L]``
        ``||c_D|| / sum_S ||c_S||``.
    demo_mass : ndarray ``[L]``
        Attention probability mass on the demonstrations.
    rel_distance : ndarray ``[L]``
        :func:`relative_w0_distance` of every head's ``W_0`` to the reference prompt's ``W_0``
        of the same head (NaN without a reference).
    cosine : ndarray ``[L]``
        :func:`hs_cosine` of the same pairs.
    n_demo_tokens : int
        ``N``, the demonstration tokens.
    n_tokens : int
    """

    eta: np.ndarray
    log_w0_norm: np.ndarray
    demo_share: np.ndarray
    demo_mass: np.ndarray
    rel_distance: np.ndarray
    cosine: np.ndarray
    n_demo_tokens: int
    n_tokens: int
    reference: Any = field(default=None, repr=False, compare=False)


def _layer_mean(a: np.ndarray, form: np.ndarray) -> np.ndarray:
    """Mean over the kernel-form heads with a finite value, per layer (NaN where none)."""
    ok = form & np.isfinite(a)
    cnt = ok.sum(1)
    a = np.where(ok, a, 0.0)
    with np.errstate(all="ignore"):
        return np.where(cnt > 0, a.sum(1) / np.maximum(cnt, 1), np.nan)


def trace_order(loaded: Any, prompt: Any, reference: OrderTrace | None = None) -> OrderTrace:
    """Trace ``prompt`` at its last token; per layer ``eta*``, ``log ||W_0||``, demo share and
    mass, and (given a ``reference`` trace of the same demonstrations in another order) the
    relative HS distance of every head's ``W_0`` to the reference's.

    Heads that share keys and values (grouped-query attention) share the quadratic forms; only
    their ``log_multiplier = -log D'`` differs.

    Parameters
    ----------
    loaded : LoadedModel-like
        ``.model``, ``.tokenizer``.
    prompt : Prompt
        With at least one demonstration.
    reference : OrderTrace, optional
        An earlier result of this function (it keeps its ``W_0`` expansions).

    Returns
    -------
    OrderTrace
        Arrays ``[L]``; ``.reference`` holds the expansions for later calls.
    """
    from icldistill.models.tracing import trace

    if not getattr(prompt, "demonstrations", None):
        raise InputError("prompt needs at least one demonstration (W_0 is a sum over them)")
    with torch.no_grad():
        res = trace(loaded.model, loaded.tokenizer, prompt, positions="last", keep_w0=True)
    form = res.has_kernel_form.numpy().astype(bool)
    L, H = form.shape
    lw = np.full((L, H), np.nan)
    dist = np.full((L, H), np.nan)
    cos = np.full((L, H), np.nan)
    keep: dict[int, tuple[list[_Group], dict[int, int], dict[int, float]]] = {}
    ref_groups = reference.reference if reference is not None else None
    for layer in range(L):
        heads = [h for h in range(H) if form[layer, h]]
        if not heads:
            continue
        groups, which, mult, scale = _groups(res, layer, heads)
        keep[layer] = (groups, which, mult)
        cross: dict[tuple[int, int], tuple[float, float]] = {}
        for h in heads:
            g = groups[which[h]]
            lw[layer, h] = 0.5 * g.log_sq + mult[h]
            if ref_groups is None or layer not in ref_groups:
                continue
            rgroups, rwhich, rmult = ref_groups[layer]
            if h not in rwhich:
                continue
            key = (rwhich[h], which[h])
            if key not in cross:
                rg = rgroups[rwhich[h]]
                cross[key] = log_kernel_form(rg.coefficients, rg.keys, g.coefficients, g.keys,
                                             scale)
            s_ab, l_ab = cross[key]
            rg = rgroups[rwhich[h]]
            dist[layer, h], cos[layer, h] = _movement(rg.log_sq + 2 * rmult[h],
                                                      g.log_sq + 2 * mult[h], s_ab,
                                                      l_ab + rmult[h] + mult[h])
    eta = res.eta[..., -1].double().numpy()
    share = res.demo_share[..., -1].double().numpy()
    mass = res.attention_mass["demos"][..., -1].double().numpy()
    n_demo = int(res.num_demo_keys[:, -1].max())
    return OrderTrace(eta=_layer_mean(eta, form), log_w0_norm=_layer_mean(lw, form),
                      demo_share=_layer_mean(share, form), demo_mass=_layer_mean(mass, form),
                      rel_distance=_layer_mean(dist, form), cosine=_layer_mean(cos, form),
                      n_demo_tokens=n_demo,
                      n_tokens=len(res.tokens), reference=keep)


# ============================================================================ the rule
def medoid_order(log_w0: Any, log_eta: Any) -> int:
    """Index of the order whose per-layer profile is closest to the order-averaged one.

    Parameters
    ----------
    log_w0, log_eta : array-like ``[O, Q, L]``
        ``log ||W_0||`` and ``log eta*`` per order, calibration query and layer.

    Returns
    -------
    int
        ``argmin_o ||p_o - mean_o' p_o'||_2`` with ``p_o`` the concatenated profile (layers with
        a non-finite value in any order are left out; ties: the first order).
    """
    a = np.asarray(log_w0, dtype=np.float64)
    b = np.asarray(log_eta, dtype=np.float64)
    if a.ndim != 3 or a.shape != b.shape or a.shape[0] < 1:
        raise InputError(f"log_w0 and log_eta must both have shape [O, Q, L], got {a.shape} and "
                         f"{b.shape}")
    p = np.concatenate([a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)], axis=1)
    ok = np.isfinite(p).all(0)
    p = p[:, ok]
    if p.shape[1] == 0:
        return 0
    d = np.linalg.norm(p - p.mean(0, keepdims=True), axis=1)
    return int(np.argmin(d))


# ============================================================================ paired statistics
@dataclass(frozen=True)
class PairedResult:
    """A paired comparison over the same units (demonstration sets, in the section).

    Attributes
    ----------
    name : str
        ``"<rule> vs <baseline>"``.
    model, role : str
    diffs : ndarray ``[n]``
        Per-unit differences (rule minus baseline).
    diff, low, high : float
        Mean difference and its 95% bootstrap interval over the units.
    p : float
        Two-sided p-value over the units (sign-flip by default; exact McNemar for 0/1
        values).
    p_holm : float
        Holm-adjusted over its family (NaN until adjusted).
    floor : float
        The smallest p its test allows on these units, whatever the data (a lower bound; 0
        where not known).
    floor_holm : float
        The Holm-adjusted p of ``floor`` with every comparison of the family at its own
        floor: the smallest ``p_holm`` the design allows (NaN until adjusted). Not below
        :data:`~icldistill.lab.experiments.phenomena.ALPHA`: not testable at this size.
    """

    name: str
    model: str
    role: str
    diffs: np.ndarray
    diff: float
    low: float
    high: float
    p: float
    p_holm: float = math.nan
    floor: float = 0.0
    floor_holm: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "role": self.role,
                "n": int(self.diffs.size), "diff": self.diff, "low": self.low,
                "high": self.high, "p": self.p, "p_holm": self.p_holm, "floor": self.floor,
                "floor_holm": self.floor_holm, "diffs": self.diffs.tolist()}


def paired_result(name: str, a: Any, b: Any, *, model: str = "", role: str = "trained",
                  seed: int = 0) -> PairedResult:
    """Compare per-unit correctness ``a`` with ``b`` (same units; values in ``[0, 1]``).

    Parameters
    ----------
    a, b : array-like ``[n]``
        Correctness of the rule and of the baseline per unit (0/1 per item, or a mean: over
        orders, over a set's held-back items).

    Returns
    -------
    PairedResult
        ``diff = mean(a - b)``, bootstrap interval, sign-flip p-value.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise InputError(f"a and b must be non-empty and of equal length, got {x.size} and "
                         f"{y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("a and b must be finite")
    d = x - y
    ci = paired_bootstrap_ci(d, seed=seed)
    return PairedResult(name, model, role, d, float(d.mean()), float(ci.low), float(ci.high),
                        float(sign_flip_test(d, seed=seed)), floor=ph.sign_flip_floor(d))


# ============================================================================ measurement
@dataclass(frozen=True)
class SetResult(Result):
    """One model on one fixed demonstration set in every order.

    Shapes: ``O`` orders, ``Q`` traced calibration queries, ``L`` layers, ``h`` held-back
    items. Only the held-back items are scored: no item that informs the rule is scored.

    Attributes
    ----------
    task : str
    k, set_index : int
    orders : ndarray ``[O, k]``
    predictions : ndarray ``[O, h]`` of str
        Predicted labels of the held-back items in every order.
    correct : ndarray ``[O, h]`` float
    eta, log_w0_norm, demo_share, rel_distance, cosine : ndarray ``[O, Q, L]``
        :class:`OrderTrace` fields per order and calibration query (``rel_distance`` and
        ``cosine`` against the first order: 0 and 1 for it).
    held : ndarray ``[h]`` int
        Held-back test items (indices into the test items).
    msl_correct : ndarray ``[h]``
        Correctness in the most-similar-last order.
    medoid, max_share : int
        The orders the primary (medoid) and secondary (largest demo share) rules pick.
    n_demo_tokens : ndarray ``[O]`` int
    """

    task: str
    k: int
    set_index: int
    orders: np.ndarray
    predictions: np.ndarray
    correct: np.ndarray
    eta: np.ndarray
    log_w0_norm: np.ndarray
    demo_share: np.ndarray
    rel_distance: np.ndarray
    cosine: np.ndarray
    held: np.ndarray
    msl_correct: np.ndarray
    medoid: int
    max_share: int
    n_demo_tokens: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        """Accuracy per order ``[O]`` on the held-back items."""
        return self.correct.mean(1)

    @property
    def disagreement(self) -> np.ndarray:
        """Per held-back item ``[h]``: share of orders whose prediction differs from the item's
        most frequent prediction."""
        out = np.empty(self.predictions.shape[1])
        for i in range(out.size):
            _, counts = np.unique(self.predictions[:, i].astype(str), return_counts=True)
            out[i] = 1.0 - counts.max() / self.predictions.shape[0]
        return out

    def held_correct(self, order: int) -> np.ndarray:
        """Correctness of order ``order`` on the held-back items ``[h]``."""
        return self.correct[order]

    def random_correct(self) -> np.ndarray:
        """Expected correctness of a uniformly random order on the held-back items ``[h]``."""
        return self.correct.mean(0)


@dataclass(frozen=True)
class _Plan:
    """What every model of a group sees for one task: sets, orders, calibration split and the
    most-similar-last orders."""

    task: ph.TaskItems
    n_test: int
    trace_items: np.ndarray
    held: np.ndarray
    sets: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]  # k, s, idx, orders, msl


def _plan(task: ph.TaskItems, sizes: OrderingSizes, encoder: Any, seed: int, ti: int
          ) -> _Plan:
    rng = np.random.default_rng([seed, ti, 7])
    n_test = min(sizes.n_test, len(task.test_texts))
    if n_test <= sizes.n_trace:
        raise InputError(f"task {task.name!r} has {len(task.test_texts)} test items; the section "
                         f"needs more than n_trace = {sizes.n_trace}")
    perm = rng.permutation(n_test)
    trace_items = np.sort(perm[:sizes.n_trace])
    held = np.sort(perm[sizes.n_trace:])
    held_q = [task.test_texts[int(i)] for i in held]
    sets = []
    used: list[int] = []
    for k, n_ord in zip(sizes.ks, sizes.n_orders, strict=True):
        for s in range(sizes.n_sets):
            excl = used if len(task.pool_texts) - len(used) >= k else []
            idx = ph.balanced_indices(task.pool_labels, k, rng, exclude=excl)
            used.extend(int(i) for i in idx)
            orders = orderings(k, n_ord, rng)
            texts = [task.pool_texts[int(i)] for i in idx]
            emb = np.asarray(encoder.encode(texts + held_q), dtype=np.float64)
            msl = most_similar_last(emb[:k], emb[k:])
            sets.append((k, s, idx, orders, msl))
    return _Plan(task, n_test, trace_items, held, sets)


def _direct(compute: Callable[[], Any], **_step: Any) -> Any:
    return compute()


def _measure(m: ph.ModelUnderTest, plan: _Plan, progress: bool,
             step: Callable[..., Any] | None = None) -> list[SetResult]:
    """Every order of every demonstration set of ``plan`` on ``m``. Each order is one
    ``step(compute, **labels)`` (:meth:`~icldistill.lab.experiments.phenomena.Parts.step`: kept
    on disk, so a killed run resumes from the last finished order)."""
    run_step = step or _direct
    task = plan.task
    queries = [task.test_texts[int(i)] for i in plan.held]
    labels = np.asarray(task.test_labels).astype(str)[plan.held]
    out = []
    for k, s, idx, orders, msl in plan.sets:
        base = task.demos(idx)
        refs: list[OrderTrace | None] = [None] * len(plan.trace_items)

        def prompt(order: Any, item: Any, base: list[Any] = base) -> Any:
            return task.format.prompt([base[int(j)] for j in order], task.test_texts[int(item)])

        def reference(qi: int, orders: Any = orders, refs: list[Any] = refs) -> OrderTrace:
            """The first order's trace of calibration query ``qi`` with its W_0 expansions
            (traced again when that order was read back: tracing is deterministic)."""
            if refs[qi] is None:
                refs[qi] = trace_order(m.loaded, prompt(orders[0], plan.trace_items[qi]))
            return refs[qi]

        def one(oi: int, order: Any, base: list[Any] = base, refs: list[Any] = refs
                ) -> tuple[np.ndarray, list[OrderTrace]]:
            p, _ = ph.predict(m.loaded, task, queries, [base[int(j)] for j in order],
                              progress=False)
            row = []
            for qi, item in enumerate(plan.trace_items):
                tr = trace_order(m.loaded, prompt(order, item),
                                 None if oi == 0 else reference(qi))
                if oi == 0:
                    refs[qi] = tr
                row.append(dataclasses.replace(tr, reference=None))  # expansions stay in refs
            return np.asarray(p).astype(str), row

        preds, traces = [], []
        bar = progress_bar(enumerate(orders), enabled=progress, total=len(orders),
                           desc=f"ordering: {m.name} on {task.name}, k={k}, set {s}",
                           unit="order")
        for oi, order in bar:
            p, row = run_step(functools.partial(one, oi, order), k=int(k), set=int(s), order=oi)
            preds.append(p)
            traces.append(row)
        bar.close()
        per_query = [[base[int(j)] for j in msl[i]] for i in range(len(plan.held))]
        pm = run_step(lambda per_query=per_query: ph.predict(
            m.loaded, task, queries, per_query=per_query, progress=False)[0],
            k=int(k), set=int(s), order="most similar last, per query")
        predictions = np.stack(preds)
        correct = (predictions == labels[None, :]).astype(np.float64)

        def grab(name: str, traces: list[list[OrderTrace]] = traces) -> np.ndarray:
            return np.asarray([[getattr(t, name) for t in row] for row in traces],
                              dtype=np.float64)

        eta, lw = grab("eta"), grab("log_w0_norm")
        share = grab("demo_share")
        dist, cos = grab("rel_distance"), grab("cosine")
        dist[0], cos[0] = 0.0, 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            medoid = medoid_order(lw, np.log(eta))
        share_mean = np.nanmean(share.reshape(share.shape[0], -1), axis=1) \
            if np.isfinite(share).any() else np.zeros(len(orders))
        max_share = int(np.argmax(np.nan_to_num(share_mean, nan=-np.inf)))
        out.append(SetResult(
            task=task.name, k=int(k), set_index=int(s), orders=orders, predictions=predictions,
            correct=correct, eta=eta, log_w0_norm=lw, demo_share=share, rel_distance=dist,
            cosine=cos, held=plan.held.copy(),
            msl_correct=(np.asarray(pm).astype(str) == labels).astype(np.float64),
            medoid=medoid, max_share=max_share,
            n_demo_tokens=np.asarray([[t.n_demo_tokens for t in row] for row in traces])[:, 0]))
    return out


# ============================================================================ section
RULES = (("medoid", "primary"), ("max-share", "secondary"))
BASELINES = ("random order", "most similar last")
_BASELINE_TEXT = {"random order": "a random order",
                  "most similar last": "the most-similar-last order"}


def _rule_pick(r: SetResult, rule: str) -> int:
    return r.medoid if rule == "medoid" else r.max_share


def _comparisons(results: list[SetResult], m: ph.ModelUnderTest, seed: int
                 ) -> list[PairedResult]:
    """Each rule against each baseline, one unit per demonstration set (module docstring)."""
    out = []
    for rule, _ in RULES:
        picks = [_rule_pick(r, rule) for r in results]
        a = np.array([r.held_correct(o).mean() for r, o in zip(results, picks, strict=True)])
        for base in BASELINES:
            b = np.array([(r.random_correct() if base == "random order" else r.msl_correct)
                          .mean() for r in results])
            res = paired_result(f"{rule} order vs {base}", a, b, model=m.name, role=m.role,
                                seed=seed)
            if base == "random order":      # the null randomises the pick in every set
                counts = [np.rint(r.correct.sum(1)).astype(np.int64) for r in results]
                res = dataclasses.replace(  # its p is never below 1 / prod(orders per set)
                    res, p=pick_randomisation_test(counts, picks),
                    floor=float(Fraction(1, math.prod(c.size for c in counts))))
            out.append(res)
    return out


def _set_movement(results: list[SetResult], what: str) -> np.ndarray:
    """Per demonstration set: the order effect on a distillation quantity, averaged over the
    set's calibration queries and layers (:func:`_movement_cells`)."""
    out = []
    for r in results:
        v = _movement_cells(r, what)
        v = v[np.isfinite(v)]
        out.append(float(v.mean()) if v.size else math.nan)
    return np.asarray(out, dtype=np.float64)


def _movement_cells(r: SetResult, what: str) -> np.ndarray:
    """Per (calibration query, layer) of one set, flattened: the order effect on a
    distillation quantity (NaN where undefined)."""
    with np.errstate(all="ignore"):
        if what == "w0":            # mean over the other orders of the relative HS distance
            a = r.rel_distance[1:] if r.rel_distance.shape[0] > 1 else r.rel_distance
            return np.nanmean(a, axis=0).ravel()
        if what == "dir":           # mean over the other orders of 1 - HS cosine
            a = r.cosine[1:] if r.cosine.shape[0] > 1 else r.cosine
            return 1.0 - np.nanmean(a, axis=0).ravel()
        if what == "eta":           # std over orders of log eta*
            return np.nanstd(np.log(r.eta), axis=0).ravel()
        return np.nanstd(r.log_w0_norm, axis=0).ravel()    # std over orders of log ||W_0||


def _set_data(r: SetResult) -> dict[str, Any]:
    return {"task": r.task, "k": r.k, "set": r.set_index, "orders": r.orders,
            "accuracy": r.accuracy, "correct": r.correct, "predictions": r.predictions.tolist(),
            "eta": r.eta, "log_w0_norm": r.log_w0_norm, "demo_share": r.demo_share,
            "rel_distance": r.rel_distance, "cosine": r.cosine, "held": r.held,
            "msl_correct": r.msl_correct,
            "medoid": r.medoid, "max_share": r.max_share, "n_demo_tokens": r.n_demo_tokens}


def _iqr(a: np.ndarray) -> float:
    q1, q3 = np.quantile(a, [0.25, 0.75])
    return float(q3 - q1)


def _figures(groups: list[list[ph.ModelUnderTest]], res: dict[tuple[int, int], list[SetResult]],
             paired: dict[tuple[int, int], list[PairedResult]], tasks: list[str], out: Path,
             tag: str) -> list[str]:
    names = [f"ordering_accuracy{tag}.png", f"ordering_movement{tag}.png",
             f"ordering_rule{tag}.png"]
    _accuracy_figure(groups, res, tasks, out / names[0])
    _movement_figure(groups, res, tasks, out / names[1])
    _rule_figure(groups, paired, out / names[2])
    return names


def _accuracy_figure(groups: list[list[ph.ModelUnderTest]],
                     res: dict[tuple[int, int], list[SetResult]], tasks: list[str],
                     path: Path) -> None:
    """1. accuracy per order, per group and task."""
    fig, axes = new_figure(len(groups), len(tasks), size=(4.2, 3.4))
    for gi, g in enumerate(groups):
        for ti, tname in enumerate(tasks):
            ax = axes[gi, ti]
            ticks, labels = [], []
            x = 0
            for mi, m in enumerate(g):
                for r in [r for r in res[(gi, mi)] if r.task == tname]:
                    acc = r.accuracy
                    jit = np.linspace(-0.18, 0.18, acc.size)
                    ctl = m.is_control
                    ax.scatter(x + jit, acc, s=14, color="0.55" if ctl else "C0",
                               marker="x" if ctl else "o", alpha=0.8)
                    ax.plot([x - 0.3, x + 0.3], [acc.mean()] * 2, color="0.3" if ctl else "C0",
                            ls="--" if ctl else "-")
                    ax.scatter([x], [acc[r.medoid]], s=60, facecolors="none", edgecolors="C3",
                               zorder=3)
                    ticks.append(x)
                    labels.append(f"{'control' if ctl else 'trained'}\nk={r.k} set {r.set_index}")
                    x += 1
            ax.set_xticks(ticks)
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_ylim(-0.05, 1.05)
            ax.set_ylabel("held-back accuracy")
            ax.set_title(f"{g[0].name}: {tname}", fontsize=9)
    fig.suptitle("accuracy of every order of a fixed demonstration set (red ring: medoid order; "
                 "grey x: random-init control)", fontsize=9)
    save_figure(fig, path)


def _layer_movement(rs: list[SetResult]) -> tuple[np.ndarray, ...]:
    """Per layer, mean over sets and heads: std over orders of log ||W_0|| and of log eta*,
    relative HS distance and 1 - HS cosine to the first order."""
    with np.errstate(all="ignore"):
        lw = np.nanmean([np.nanstd(r.log_w0_norm, axis=0).mean(0) for r in rs], 0)
        le = np.nanmean([np.nanstd(np.log(r.eta), axis=0).mean(0) for r in rs], 0)
        rd = np.nanmean([np.nanmean(r.rel_distance[1:], axis=0).mean(0)
                         if r.rel_distance.shape[0] > 1 else
                         np.zeros(r.rel_distance.shape[2]) for r in rs], 0)
        dc = np.nanmean([1.0 - np.nanmean(r.cosine[1:], axis=0).mean(0)
                         if r.cosine.shape[0] > 1 else
                         np.zeros(r.cosine.shape[2]) for r in rs], 0)
    return lw, le, rd, dc


def _movement_figure(groups: list[list[ph.ModelUnderTest]],
                     res: dict[tuple[int, int], list[SetResult]], tasks: list[str],
                     path: Path) -> None:
    """2. movement per layer, per group."""
    fig, axes = new_figure(len(groups), 4, size=(4.2, 3.4))
    for gi, g in enumerate(groups):
        for mi, m in enumerate(g):
            for ti, tname in enumerate(tasks):
                rs = [r for r in res[(gi, mi)] if r.task == tname]
                if not rs:
                    continue
                kw: dict[str, Any] = ({"color": "0.5", "ls": "--", "lw": 1.0} if m.is_control
                                      else {"color": f"C{ti}", "lw": 1.6})
                lab = f"{tname} ({'control' if m.is_control else 'trained'})"
                for ax, v in zip(axes[gi], _layer_movement(rs), strict=True):
                    ax.plot(np.arange(v.size), v, label=lab, **kw)
        for ax, t in zip(axes[gi], ("std over orders of log ||W_0||",
                                    "std over orders of log eta*",
                                    "||W_0 - W_0'|| / mean norm (vs first order)",
                                    "1 - HS cosine(W_0, W_0') (vs first order)"),
                         strict=True):
            ax.set_xlabel("layer")
            ax.set_title(f"{g[0].name}: {t}", fontsize=8)
        axes[gi, 0].legend(fontsize=6)
    fig.suptitle("how far the order moves the student (mean over heads; dashed grey: "
                 "random-init control)", fontsize=9)
    save_figure(fig, path)


def _rule_figure(groups: list[list[ph.ModelUnderTest]],
                 paired: dict[tuple[int, int], list[PairedResult]], path: Path) -> None:
    """3. paired rule comparisons, per group."""
    fig, axes = new_figure(len(groups), 1, size=(7.5, 3.6))
    for gi, g in enumerate(groups):
        ax = axes[gi, 0]
        comps = [c.name for c in paired[(gi, 0)]]
        width = 0.8 / len(g)
        for mi, m in enumerate(g):
            ps = paired[(gi, mi)]
            x = np.arange(len(ps)) + (mi - (len(g) - 1) / 2) * width
            vals = np.array([p.diff for p in ps])
            err = np.array([[p.diff - p.low for p in ps], [p.high - p.diff for p in ps]])
            ax.bar(x, vals, width, yerr=err, capsize=3,
                   color="0.7" if m.is_control else "C0", hatch="//" if m.is_control else None,
                   label=m.name)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(comps)))
        ax.set_xticklabels([c.replace(" vs ", "\nvs ") for c in comps], fontsize=7)
        ax.set_ylabel("held-back accuracy difference")
        ax.set_title(f"{g[0].name}: rule order minus baseline (95% bootstrap CI)", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


# long: 14 lines of signature and 23 of NumPy docstring; the code is 47
def run(
    models: Sequence[str | Any] = ("smollm2-135m",),
    *,
    out_dir: str | Path,
    quick: bool = False,
    seed: int = 0,
    progress: bool = False,
    tasks: Sequence[str | ph.TaskItems] | None = None,
    under_test: Sequence[Sequence[ph.ModelUnderTest]] | None = None,
    n_controls: int = 1,
    dtype: torch.dtype = torch.float32,
    sizes: OrderingSizes | None = None,
    encoder: Any = "minilm",
    resume_dir: str | Path | None = None,
) -> Section:
    """Order sensitivity as a report section (see the module docstring).

    Parameters
    ----------
    models : sequence of str or LoadedModel-like
        Trained models (registry keys); each gets ``n_controls`` random-init twins.
    out_dir : path
        Figures go here.
    quick : bool
        :data:`QUICK` sizes instead of :data:`FULL`.
    seed : int
        Seeds the test items, demonstration sets, orders, split and controls.
    tasks : sequence, optional
        Registry names or :class:`~icldistill.lab.experiments.phenomena.TaskItems`
        (default :data:`~icldistill.lab.experiments.phenomena.DEFAULT_TASKS`).
    under_test : model groups, optional
        Ready groups (trained first, then controls) instead of loading ``models``.
    sizes : OrderingSizes, optional
        Overrides the sizes ``quick`` chooses.
    encoder : str or Encoder
        Similarity encoder of the most-similar-last baseline (``"minilm"``; any
        :func:`~icldistill.encoders.representations.make_encoder` spec or an Encoder).
    resume_dir : path, optional
        Keep each finished (model, task) measurement here, so that a killed run resumes from
        its last finished part (:class:`~icldistill.lab.experiments.phenomena.Parts`).
    """
    t0 = time.perf_counter()
    mode = "custom" if sizes is not None else ("quick" if quick else "full")
    if sizes is None:
        sizes = QUICK if quick else FULL
    if not isinstance(sizes, OrderingSizes):
        raise InputError(f"sizes must be an OrderingSizes, got {type(sizes).__name__}")
    seed = check_seed(seed)
    enc = _encoder(encoder)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = ph.resolve_models(list(models), under_test=under_test, n_controls=n_controls,
                               seed=seed, dtype=dtype, progress=progress)
    items = ph.resolve_tasks(list(tasks) if tasks is not None else list(ph.DEFAULT_TASKS),
                             n_test=sizes.n_test, seed=seed, progress=progress)
    plans = [_plan(t, sizes, enc, seed, ti) for ti, t in enumerate(items)]
    parts = ph.Parts(resume_dir, "ordering", {
        # an Encoder object by its identity (class, settings, weights): the most-similar-last
        # order depends on all of them, so two encoders of one class must not share parts
        "sizes": sizes.to_dict(), "seed": seed, "encoder": encoder if isinstance(encoder, str)
        else enc.identity, "tasks": [ph.task_fingerprint(t) for t in items]})
    torch.manual_seed(seed)
    res, paired = _measure_all(groups, plans, seed, progress, parts)
    t0 -= parts.reused_seconds

    task_names = [t.name for t in items]
    checks: list[Check] = []
    findings: list[str] = []
    rows = _Rows()
    data: dict[str, Any] = {"sizes": sizes.to_dict(), "seed": seed, "tasks": task_names,
                            "plans": [_plan_data(plan) for plan in plans], "groups": []}
    for gi, g in enumerate(groups):
        gdata: dict[str, Any] = {"models": [m.name for m in g], "roles": [m.role for m in g],
                                 "results": [], "paired": [], "comparisons": []}
        for mi, m in enumerate(g):
            rs = res[(gi, mi)]
            gdata["results"].append([_set_data(r) for r in rs])
            gdata["paired"].append([p.to_dict() for p in paired[(gi, mi)]])
            rows.acc.extend(_accuracy_row(m, r) for r in rs)
            rows.move.extend(_movement_row(m, r) for r in rs)
            rows.rule.extend((m.name, m.role, p.name, int(p.diffs.size), p.diff, p.low,
                              p.high, p.p, p.p_holm) for p in paired[(gi, mi)])
        checks += _group_checks(g, [res[(gi, mi)] for mi in range(len(g))],
                                [paired[(gi, mi)] for mi in range(len(g))], seed, gdata, rows)
        for mi, m in enumerate(g):
            findings += _model_findings(m, mi, res[(gi, mi)])
        data["groups"].append(gdata)

    figures = _figures(groups, res, paired, task_names, out, "")
    return Section(name="ordering", title="Order sensitivity of few-shot prompts and the student "
                   "W_0", description=_description(plans, mode, sizes, enc, groups, seed),
                   checks=checks, findings=findings, tables=_tables(rows), figures=figures,
                   data=to_jsonable(data), seconds=time.perf_counter() - t0)


def _encoder(encoder: Any) -> Any:
    """The similarity encoder of the most-similar-last baseline from a spec or an Encoder."""
    from icldistill.encoders.representations import Encoder, make_encoder

    if isinstance(encoder, str):
        return make_encoder(encoder)
    if isinstance(encoder, Encoder):
        return encoder
    raise InputError(f"encoder must be an encoder spec or an Encoder, got "
                     f"{type(encoder).__name__}")


def _measure_all(groups: list[list[ph.ModelUnderTest]], plans: list[_Plan], seed: int,
                 progress: bool, parts: ph.Parts | None = None
                 ) -> tuple[dict[tuple[int, int], list[SetResult]],
                            dict[tuple[int, int], list[PairedResult]]]:
    """Every model's set results and paired rule comparisons, keyed by (group, member); the
    comparisons' p-values Holm-adjusted (the trained models' together, the controls' apart).
    ``parts`` keeps each finished (model, task) measurement."""
    parts = parts or ph.Parts(None, "ordering", {})
    res: dict[tuple[int, int], list[SetResult]] = {}
    paired: dict[tuple[int, int], list[PairedResult]] = {}
    for gi, g in enumerate(groups):
        for mi, m in enumerate(g):
            rs: list[SetResult] = []
            for ti, plan in enumerate(plans):
                part = {"task": plan.task.name, "index": ti}
                step = functools.partial(parts.step, model=m, part=part)
                rs.extend(parts.run(functools.partial(_measure, m, plan, progress, step),
                                    model=m, **part))
            res[(gi, mi)] = rs
            paired[(gi, mi)] = _comparisons(rs, m, seed)
    # Holm over the trained models' comparisons; the controls' form a family of their own
    for trained in (True, False):
        flat = [(key, i) for key in sorted(paired) for i in range(len(paired[key]))
                if (paired[key][i].role == "trained") == trained]
        adj = holm([paired[key][i].p for key, i in flat]) if flat else np.zeros(0)
        best = holm([paired[key][i].floor for key, i in flat]) if flat else np.zeros(0)
        for (key, i), p_adj, b in zip(flat, adj, best, strict=True):
            paired[key][i] = dataclasses.replace(paired[key][i], p_holm=float(p_adj),
                                                 floor_holm=float(b))
    return res, paired


def _plan_data(plan: _Plan) -> dict[str, Any]:
    return {"task": plan.task.name, "n_test": plan.n_test,
            "trace_items": plan.trace_items, "held": plan.held,
            "sets": [{"k": k, "set": s, "pool_indices": idx, "orders": o,
                      "most_similar_last": msl}
                     for k, s, idx, o, msl in plan.sets]}


@dataclass
class _Rows:
    """Rows of the four tables, filled group by group."""

    acc: list[tuple[Any, ...]] = field(default_factory=list)
    move: list[tuple[Any, ...]] = field(default_factory=list)
    rule: list[tuple[Any, ...]] = field(default_factory=list)
    comp: list[tuple[Any, ...]] = field(default_factory=list)


def _accuracy_row(m: ph.ModelUnderTest, r: SetResult) -> tuple[Any, ...]:
    acc = r.accuracy
    return (m.name, m.role, r.task, r.k, r.set_index, acc.size,
            float(acc.mean()), float(acc.min()), float(acc.max()),
            float(acc.max() - acc.min()), float(acc.std()), _iqr(acc),
            float(r.disagreement.mean()), float(acc[r.medoid]),
            float(acc[r.max_share]),
            float(r.random_correct().mean()), float(r.msl_correct.mean()))


def _movement_row(m: ph.ModelUnderTest, r: SetResult) -> tuple[Any, ...]:
    with np.errstate(all="ignore"):
        lw = np.nanstd(r.log_w0_norm, axis=0)
        le = np.nanstd(np.log(r.eta), axis=0)
        rd = (np.nanmean(r.rel_distance[1:], axis=0) if r.rel_distance.shape[0] > 1
              else np.zeros_like(lw))
        dc = (1.0 - np.nanmean(r.cosine[1:], axis=0) if r.cosine.shape[0] > 1
              else np.zeros_like(lw))
        top = int(np.nanargmax(np.nanmean(rd, 0))) if np.isfinite(rd).any() else -1
        return (m.name, m.role, r.task, r.k, r.set_index,
                float(np.nanmean(lw)), float(np.nanmax(lw)),
                float(np.nanmean(le)), float(np.nanmax(le)),
                float(np.nanmean(rd)), float(np.nanmax(rd)), top,
                float(np.nanmean(dc)), float(np.nanmax(dc)),
                int(len(set(r.n_demo_tokens.tolist())) == 1))


def _disagreement(rs: list[SetResult]) -> np.ndarray:
    """Per demonstration set: the mean over its held-back items of the disagreement across
    orders (the set is the unit; its items share its demonstrations)."""
    return np.asarray([float(r.disagreement.mean()) for r in rs], dtype=np.float64)


def _group_checks(g: list[ph.ModelUnderTest], res: list[list[SetResult]],
                  paired: list[list[PairedResult]], seed: int, gdata: dict[str, Any],
                  rows: _Rows) -> list[Check]:
    """The controlled checks of one group (``res`` and ``paired`` per member); every
    comparison goes into ``gdata["comparisons"]`` and the controls table."""
    tr = g[0]
    ctl = [(mi, m) for mi, m in enumerate(g) if m.is_control]

    def comp(name: str, values: Any, per_model: Any) -> ph.ControlComparison:
        # one value per demonstration set for every model, the same sets: paired
        c = ph.compare_paired_with_controls(name, values, [per_model(mi) for mi, _ in ctl],
                                            [tr, *(m for _, m in ctl)], seed=seed)
        gdata["comparisons"].append(c.to_dict())
        rows.comp.append((tr.name, c.name, c.trained.value, c.trained.low, c.trained.high,
                          c.low, c.high, c.verdict))
        return c

    checks = []
    c_dis = comp("per-set disagreement across orders", _disagreement(res[0]),
                 lambda mi: _disagreement(res[mi]))
    checks.append(ph.controlled_check(
        f"{tr.name}: the order of a fixed demonstration set changes the predictions",
        c_dis.trained.value > 0, c_dis,
        "share of orders whose prediction differs from the item's most frequent one, mean "
        "over the held-back items of each demonstration set (the unit)", sign=1))
    for what, label, claim in (
            ("w0", "relative HS distance of W_0 between orders",
             "the order moves the student W_0 (same head, relative HS distance)"),
            ("eta", "std over orders of log eta*",
             "the order moves eta* (through D')")):
        c = comp(label, _set_movement(res[0], what),
                 lambda mi, what=what: _set_movement(res[mi], what))
        checks.append(ph.controlled_check(
            f"{tr.name}: {claim}", c.trained.value > 0, c,
            "per demonstration set (the unit), mean over its calibration queries, layers and "
            "heads", sign=1))
    for p0 in paired[0]:
        if not p0.name.startswith("medoid"):
            continue
        c = comp(f"held-back accuracy difference, {p0.name}", p0.diffs,
                 lambda mi, name=p0.name: next(
                     p.diffs for p in paired[mi] if p.name == name))
        checks.append(ph.controlled_check(
            f"{tr.name}: ordering by the distillation rule (medoid order) beats "
            f"{_BASELINE_TEXT[p0.name.split(' vs ')[1]]} on held-back items",
            p0.diff > 0 and p0.p_holm < 0.05, c,
            f"mean difference {p0.diff:+.3f} [{p0.low:+.3f}, {p0.high:+.3f}] over "
            f"{p0.diffs.size} demonstration sets, p = {p0.p:.3g}, Holm p = {p0.p_holm:.3g}",
            sign=1))
        if not p0.floor_holm < ph.ALPHA:
            checks[-1] = dataclasses.replace(
                checks[-1], testable=False,
                detail=f"{checks[-1].detail}; not testable at this size: with every comparison "
                       f"of the family at the smallest p its units allow, its Holm p is "
                       f"{p0.floor_holm:.3g}")
        elif checks[-1].testable is None:
            checks[-1] = dataclasses.replace(checks[-1], testable=True)
    return checks


def _avg(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _model_findings(m: ph.ModelUnderTest, mi: int, rs: list[SetResult]) -> list[str]:
    """Findings of one member (``mi`` its index in the group; the first adds the note on N),
    computed from the numbers."""
    if not rs:
        return []
    findings = []
    spread = np.array([r.accuracy.max() - r.accuracy.min() for r in rs])
    n_ord = sorted({r.orders.shape[0] for r in rs})
    findings.append(
        f"{m.name}: across {'/'.join(map(str, n_ord))} orders of a fixed demonstration "
        f"set, accuracy spans {spread.mean():.3f} on average (max - min; per task: "
        + ", ".join(f"{r.task} k={r.k} {r.accuracy.min():.2f}-{r.accuracy.max():.2f}"
                    for r in rs)
        + f"); {_disagreement(rs).mean():.3f} of the orders disagree with an item's most "
          "frequent prediction.")
    mv, me, ml, md = (_set_movement(rs, what) for what in ("w0", "eta", "lw", "dir"))
    findings.append(
        f"{m.name}: another order moves W_0 of the same head by {_avg(mv):.3g} of its "
        f"mean norm (||W_0 - W_0'|| / mean of the two norms, mean over sets, queries, "
        f"layers and heads; 1 - cosine {_avg(md):.3g}); std over orders of log ||W_0|| "
        f"{_avg(ml):.3g}, of log eta* {_avg(me):.3g}.")
    same_n = all(len(set(r.n_demo_tokens.tolist())) == 1 for r in rs)
    if mi == 0:
        findings.append(
            "The number of demonstration tokens N is "
            + ("the same in every order of every set, so eta* = N/(2D') moves only "
               "through the normaliser D'." if same_n else
               "not the same in every order (tokenization at demonstration "
               "boundaries), so eta* also moves through N."))
    rhos = [spearman(np.nanmean(r.demo_share, axis=(1, 2)), r.accuracy)
            for r in rs if r.orders.shape[0] >= 3]
    rhos = [x for x in rhos if np.isfinite(x)]
    picks = ", ".join(
        f"{r.task} k={r.k}: held-back accuracy medoid {r.held_correct(r.medoid).mean():.2f}"
        f" / max-share {r.held_correct(r.max_share).mean():.2f} / random "
        f"{r.random_correct().mean():.2f} / most-similar-last {r.msl_correct.mean():.2f}"
        for r in rs)
    findings.append(f"{m.name}: {picks}."
                    + (f" Spearman(demo share, accuracy) across orders, mean over sets: "
                       f"{np.mean(rhos):+.2f}." if rhos else ""))
    return findings


def _tables(rows: _Rows) -> list[Table]:
    return [
        Table("Accuracy across orders of a fixed demonstration set (held-back items)",
              ("model", "role", "task", "k", "set", "orders", "mean acc", "min", "max",
               "spread (max-min)", "std", "IQR", "disagreement", "medoid order",
               "max-share order", "random order (expected)", "most similar last"),
              tuple(rows.acc)),
        Table("How the order moves the distillation quantities (per layer: mean over heads and "
              "calibration queries; then mean / max over layers)",
              ("model", "role", "task", "k", "set", "std log||W_0|| mean", "max",
               "std log eta* mean", "max", "rel. HS distance mean", "max", "layer of max",
               "1 - cos mean", "max", "N equal in all orders"), tuple(rows.move)),
        Table("Rule order vs baselines on held-back items (paired; Holm over the section)",
              ("model", "role", "comparison", "items", "mean diff", "CI low", "CI high", "p",
               "Holm p"), tuple(rows.rule)),
        Table("Trained model vs random-init controls",
              ("model", "statistic", "trained", "low", "high", "control low", "control high",
               "trained vs control"), tuple(rows.comp)),
    ]


def _item_counts(plans: list[_Plan], sizes: OrderingSizes) -> tuple[str, str]:
    """How the description states the test items of every task and the held-back ones per set:
    the counts the plans actually use (a task with fewer test items than ``sizes.n_test`` uses
    all of its own, and then every task's counts are given by name)."""
    if all(p.n_test == sizes.n_test for p in plans):
        return (f"Of {sizes.n_test} test items per task, {sizes.n_test - sizes.n_trace} (held "
                "back)", f"the {sizes.n_test - sizes.n_trace} held-back items per set")
    tests = ", ".join(f"{p.task.name}: {p.n_test}" for p in plans)
    held = ", ".join(f"{p.task.name}: {p.n_test - sizes.n_trace}" for p in plans)
    return (f"Of the test items of each task ({tests}; {sizes.n_test} asked for, a task with "
            f"fewer uses all of its own), all but the calibration queries ({held}; held back)",
            f"the held-back items of each set ({held})")


def _description(plans: list[_Plan], mode: str, sizes: OrderingSizes, enc: Any,
                 groups: list[list[ph.ModelUnderTest]], seed: int) -> str:
    task_names = [p.task.name for p in plans]
    k_desc = ", ".join(f"k={k}: {'all' if math.factorial(k) <= n else n} of {math.factorial(k)} "
                       "orders" for k, n in zip(sizes.ks, sizes.n_orders, strict=True))
    of_items, held_items = _item_counts(plans, sizes)
    return (
        f"Order sensitivity on {', '.join(task_names)} ({mode} sizes; "
        f"seed {seed}). Per task {sizes.n_sets} fixed label-balanced demonstration set(s) per k "
        f"({k_desc}). {of_items} are scored in every order with one shared "
        f"prompt per order, and the other {sizes.n_trace} (calibration "
        f"quer{'y' if sizes.n_trace == 1 else 'ies'}) are traced at the label position in "
        "every order: per layer, mean over kernel-form heads, eta*, log ||W_0||, the demo share, "
        "and the distance of each head's W_0 to its W_0 in the first order (||W_0 - W_0'|| over "
        "the mean of the two HS norms, and 1 - HS cosine; RoPE moves the keys of a "
        "demonstration placed elsewhere). The primary rule picks the medoid order (per-layer "
        "(log ||W_0||, log eta*) profile on the calibration queries closest to the average over "
        "orders), the secondary one the order with the largest demo share; both are compared, "
        f"paired on {held_items}, with the "
        "expected correctness of a random order and with most-similar-last "
        f"(demonstrations sorted by {getattr(enc, 'name', 'encoder')} cosine similarity to each "
        "query, most similar last). The unit of every comparison and interval is the "
        "demonstration set (a rule picks one order per set, and a set's items share its "
        "demonstrations): per set the difference in held-back accuracy, tested against a "
        "random order by the exact pick-randomisation test (the rule's pick against a uniform "
        "pick in every set) and against most-similar-last by the exact sign-flip test over "
        "sets (with S sets no p is below 2/2^S: 0.031 for 6 sets), Holm over the trained "
        "models' comparisons; the disagreement and movement checks take one value per set "
        "too. Every "
        f"number is measured on the trained model and on {len(groups[0]) - 1} random-init "
        "control(s) (seeds seed+1, ...) on the same prompts; a check passes only if the "
        "trained model differs from every control, paired per set (two-sided exact "
        "sign-flip test of trained - control, one direction).")
