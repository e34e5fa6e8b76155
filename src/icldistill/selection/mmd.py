"""The MMD family of selectors: greedy MMD (:mod:`icldistill.selection.greedy`) behind the
:class:`~icldistill.selection.base.Selector` interface.

* set-level (one set for all targets): ``mmd`` (against the whole target sample),
  ``mmd-balanced`` (with label quotas), ``mmd-joint`` (joint input-label kernel);
* per query: ``mmd-query`` (the query alone as the target), ``mmd-local`` (the query's
  neighbourhood and its label mix as the target) and ``mmd-katt`` (``mmd-local`` in the reading
  model's attention space).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from icldistill.core.kernels import Kernel, canonical_kernel_name, kernel_parameters, make_kernel
from icldistill.core.validation import InputError, check_float, check_int
from icldistill.selection._common import (
    Candidates,
    batched_gram,
    check_diversity,
    check_labels,
    promote,
    row_chunks,
    topk_low_index,
)
from icldistill.selection.base import SelectionRun, Selector
from icldistill.selection.greedy import greedy_mmd_batch, greedy_mmd_on_tensors
from icldistill.selection.index import CandidateIndex, indexed_shortlist, make_index
from icldistill.selection.pool import PoolData

#: Kernels that decrease with the Euclidean distance (an index's nearest items are their largest).
DISTANCE_KERNELS = ("gaussian", "laplace", "imq")

__all__ = ["MMDBalancedSelector", "MMDJointSelector", "MMDKattSelector", "MMDLocalSelector",
           "MMDQuerySelector", "MMDSelector", "soft_labels"]


class _KernelSelector(Selector):
    """Common constructor of the MMD family: kernel (name or :class:`Kernel`) and its
    parameters, checked against the kernel's own; ``diversity``; ``median_samples``."""

    needs = frozenset({"embeddings"})

    def __init__(self, *, kernel: str | Kernel = "gaussian", diversity: float = 0.0,
                 median_samples: int = 2000, order: str | None = None, seed: int = 0,
                 **kernel_params: Any) -> None:
        super().__init__(order=order, seed=seed)
        self.median_samples = check_int(median_samples, "median_samples", 2)
        name = kernel.name if isinstance(kernel, Kernel) else canonical_kernel_name(kernel)
        unknown = set(kernel_params) - set(kernel_parameters(name))
        if unknown:
            allowed = ", ".join(kernel_parameters(name)) or "none"
            raise InputError(f"kernel {name!r} got unknown parameter(s) {sorted(unknown)}; "
                             f"allowed: {allowed}")
        self.kernel = kernel
        self.kernel_params = dict(kernel_params)
        self.diversity = check_diversity(diversity)

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), **self.kernel_params}

    def _kernel_for(self, targets: PoolData) -> tuple[PoolData, torch.Tensor, torch.Tensor,
                                                      Kernel]:
        """The fitted pool, pool ``[n, d]`` and target ``[T, d]`` embeddings in their common
        dtype, and the kernel (median heuristic on both, seeded) checked against ``d``."""
        data = self._fitted()
        pool, tgt = promote(data.emb, targets.emb)
        kern = make_kernel(self.kernel, pool, tgt, max_samples=self.median_samples,
                           seed=self.seed, **self.kernel_params)
        kern.check_input_dim(pool.shape[1])
        return data, pool, tgt, kern


def _finite(gram: torch.Tensor, kern: Kernel) -> torch.Tensor:
    """``gram`` unchanged; an :class:`InputError` when the kernel overflowed in it."""
    if not bool(torch.isfinite(gram).all()):
        raise InputError(f"kernel {kern.name!r} overflowed (infinite Gram entries)")
    return gram


class MMDSelector(_KernelSelector):
    """Greedy MMD against the whole target distribution; one set shared by all targets.

    Chooses ``S`` to minimise the biased ``MMD^2(S, T)`` between the chosen demonstrations and
    all targets at once (:func:`greedy_mmd`, SPEC §5), optionally with the diversity term.
    Kernel: ``kernel`` (a name or a :class:`~icldistill.Kernel`, e.g.
    ``make_kernel("attention", key_dim=64)`` for ``[k | v]`` attention tokens) with
    ``**kernel_params``; default Gaussian with the median-heuristic bandwidth of the pooled
    pool and targets. Default order ``"similarity"``: ascending ``r_c = mean_t K(c, t)``, so
    the most representative demonstration sits next to the query.

    References: SPEC §5; Gretton et al. (2012), "A Kernel Two-Sample Test" (MMD); greedy MMD
    minimisation as in MMD-critic prototypes (Kim, Khanna & Koyejo 2016) and kernel herding
    (Chen, Welling & Smola 2010).

    ``landmarks=m`` approximates the row means through ``m`` random targets (Nyström, see
    :func:`greedy_mmd`; certified error, exact reported MMD², seeded by ``seed``).

    Cost: ``O(n T d)`` for the row means ``r_c`` (the same matrix product as kNN retrieval;
    ``O((n + T) m d)`` with landmarks), ``O(T^2 d)`` for the trajectory constant, ``O(k n d)``
    for the greedy steps and ``O(2000^2 d)`` for the median heuristic.
    """

    name = "mmd"
    shared = True
    _param_names = ("kernel", "diversity", "median_samples", "landmarks")
    balance: ClassVar[bool] = False

    def __init__(self, *, kernel: str | Kernel = "gaussian", diversity: float = 0.0,
                 median_samples: int = 2000, landmarks: int | None = None,
                 order: str | None = None, seed: int = 0, **kernel_params: Any) -> None:
        super().__init__(kernel=kernel, diversity=diversity, median_samples=median_samples,
                         order=order, seed=seed, **kernel_params)
        self.landmarks = None if landmarks is None else check_int(landmarks, "landmarks", 1)

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        data = self._fitted()
        pool, tgt = promote(data.emb, targets.emb)   # the kernel is built by greedy_mmd
        res = greedy_mmd_on_tensors(pool, tgt, k, self.kernel, data.labels, self.balance,
                                    self.diversity, self.seed, self.kernel_params,
                                    self.median_samples, self.landmarks)
        return SelectionRun(res.indices[None], res.row_means[None], res.mmd2[None])


class MMDBalancedSelector(MMDSelector):
    """Greedy MMD with label-balanced quotas; one set shared by all targets.

    As ``mmd``, restricted so that every label gets :func:`label_quotas` of the ``k`` slots
    (pool labels needed). Default order ``"similarity"`` (ascending ``r_c``).

    Reference: SPEC §5 (label-balanced selection).

    Cost: as ``mmd``.
    """

    name = "mmd-balanced"
    needs = frozenset({"embeddings", "labels"})
    balance = True


class MMDQuerySelector(_KernelSelector):
    """Greedy MMD against each query on its own, per query.

    For target ``q`` the greedy step minimises ``MMD^2(S, {q})`` (plus the diversity term).
    With a single target point and a kernel with constant diagonal (Gaussian, Laplace, IMQ)
    the step picks ``argmax_c K(c, q) - (1 + lambda) s_c / (|S| + 1)`` (``S`` the items
    chosen so far, ``s_c`` the kernel sum from ``c`` to them, ``lambda`` = ``diversity``):
    kNN in kernel space with a redundancy penalty. Note that MMD to a single point rewards
    concentrating on it, so near-duplicates of the query are kept unless ``diversity > 0``.
    Candidates: the ``candidates`` pool items with the largest ``K(c, q)`` (two-stage, like
    ``dpp``); ``candidates=None`` runs the exact greedy over the whole pool. All queries are
    processed as one batch of greedy problems with cached row sums (the routine behind
    :func:`greedy_mmd`); the kernel bandwidth (median heuristic) is computed once per
    ``select()`` call on the pooled pool and targets (see Notes). Default order
    ``"similarity"`` (ascending ``K(c, q)``).
    On 10,000 clustered 384-d embeddings a shortlist of 50 kept ~92% of the exact greedy's
    picks (``benchmarks/results/selection_2cpu.md``).

    Reference: SPEC §5 (per-query targets).

    Cost: ``O(T n d)`` for ``K(pool, query)`` and the shortlist, ``O(T k N d)`` for the
    greedy steps; exact (``candidates=None``): ``O(T k n d)``.

    Notes
    -----
    **Batch dependence of the default bandwidth.** Without an explicit bandwidth the
    kernel's bandwidth is the median heuristic over the pool and all queries of one
    ``select()`` call (a seeded sample of ``median_samples`` rows), so one query's
    demonstrations depend on the other queries in the batch. Pass ``bandwidth=...`` (or
    ``kernel=...``, a ready :class:`~icldistill.Kernel` or a kernel without a bandwidth) to
    make a query's demonstrations independent of its batch: each query's shortlist and
    greedy steps then use only the pool and that query.
    """

    name = "mmd-query"
    _param_names = ("kernel", "candidates", "diversity", "median_samples", "index")

    def __init__(self, *, kernel: str | Kernel = "gaussian", candidates: int | None = 50,
                 diversity: float = 0.0, median_samples: int = 2000,
                 index: str | CandidateIndex | None = None, order: str | None = None,
                 seed: int = 0, **kernel_params: Any) -> None:
        super().__init__(kernel=kernel, diversity=diversity, median_samples=median_samples,
                         order=order, seed=seed, **kernel_params)
        self.candidates = None if candidates is None else check_int(candidates, "candidates")
        self.index = index
        make_index(index, "l2")                  # check it now, not at fit
        if index is not None:
            name = kernel.name if isinstance(kernel, Kernel) else canonical_kernel_name(kernel)
            if name not in DISTANCE_KERNELS:
                raise InputError(f"an index shortlists by distance, which ranks K(c, q) only for "
                                 f"{', '.join(DISTANCE_KERNELS)}; kernel {name!r} needs "
                                 "index=None")
            if candidates is None:
                raise InputError("an index gives a shortlist: set candidates (e.g. 50), not None")

    def _fit(self, data: PoolData) -> None:
        self._ann = make_index(self.index, "l2")
        if self._ann is not None:
            assert data.emb is not None
            self._ann.fit(data.emb)

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        if self._ann is not None:
            return self._select_indexed(targets, k)
        _, pool, tgt, kern = self._kernel_for(targets)
        n, dim = pool.shape
        pool_diag = kern.diag(pool).to(torch.float64)
        gram_pool = kern.against(pool)                                 # x -> K(x, pool)
        n_short = n if self.candidates is None else max(k, min(self.candidates, n))
        full = n_short >= n
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        traj = np.empty((targets.n, k))
        for sl in row_chunks(targets.n, n if full else n + 2 * n_short * (dim + n_short)):
            q = tgt[sl]
            kq = gram_pool(q)                                          # [R, n]
            if full:
                r, cand, diag = kq, Candidates(pool, None, gram_pool=gram_pool), pool_diag
            else:
                r, short = topk_low_index(kq, n_short)
                cand, diag = Candidates(pool, short, kern), pool_diag[short]
            _finite(r, kern)
            chosen, tr = greedy_mmd_batch(r, diag, kern.diag(q).to(torch.float64),
                                          cand.column, k, self.diversity,
                                          kernel_name=kern.name)
            idx[sl] = cand.to_global(chosen).cpu().numpy()
            rel[sl] = r.gather(1, chosen).cpu().numpy()
            traj[sl] = tr.cpu().numpy()
        return SelectionRun(idx, rel, traj)

    def _select_indexed(self, targets: PoolData, k: int) -> SelectionRun:
        """The shortlist of nearest pool items from the index; ``K(c, q)`` and the greedy
        steps exact on it (the kernel's bandwidth from a seeded sample, as without index)."""
        _, pool, tgt, kern = self._kernel_for(targets)
        n_short = max(k, min(int(self.candidates), pool.shape[0]))
        dim = pool.shape[1]
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        traj = np.empty((targets.n, k))
        pool_diag = kern.diag(pool).to(torch.float64)
        for sl in row_chunks(targets.n, 2 * n_short * (dim + n_short)):
            q = tgt[sl]
            _, short = indexed_shortlist(self._ann, pool, q, n_short)
            r = _finite(kern(q[:, None, :], pool[short])[:, 0, :], kern)      # [R, N]
            cand = Candidates(pool, short, kern)
            chosen, tr = greedy_mmd_batch(r, pool_diag[short],
                                          kern.diag(q).to(torch.float64), cand.column, k,
                                          self.diversity, kernel_name=kern.name)
            idx[sl] = cand.to_global(chosen).cpu().numpy()
            rel[sl] = r.gather(1, chosen).cpu().numpy()
            traj[sl] = tr.cpu().numpy()
        return SelectionRun(idx, rel, traj)


# ---------------------------------------------------------------- joint input-label kernel
def _label_codes(labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, int]:
    """Integer codes ``[n]`` of the labels (sorted order) and the number of labels."""
    _, inv = np.unique(check_labels(labels), return_inverse=True)
    return torch.as_tensor(inv.reshape(-1), dtype=torch.long, device=device), int(inv.max()) + 1


def _check_weight(value: Any, name: str) -> float:
    return check_float(value, name, 0.0, 1.0)


def soft_labels(kq: torch.Tensor, codes: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Kernel-weighted label distribution of neighbours, ``[R, L]`` (float64).

    ``kq`` ``[R, m]`` holds the kernel values between each target and its ``m`` neighbours,
    ``codes`` ``[R, m]`` the neighbours' label codes. Row ``i`` is
    ``p_i(y) = sum_j kq_ij [y_j = y] / sum_j kq_ij`` (uniform weights when all are zero).
    """
    w = kq.to(torch.float64).clamp_min(0.0)
    tot = w.sum(1, keepdim=True)
    w = torch.where(tot > 0, w / tot.clamp_min(torch.finfo(torch.float64).tiny),
                    torch.full_like(w, 1.0 / max(1, w.shape[1])))
    out = torch.zeros(w.shape[0], n_labels, dtype=torch.float64, device=w.device)
    return out.scatter_add_(1, codes, w)


class MMDJointSelector(_KernelSelector):
    """Greedy MMD under a joint input-label kernel; one set shared by all targets.

    The distilled weights ``W_0 = sum_i phi(v_i) phi(k_i)^T`` pair each demonstration's input
    (key side) with its label (value side), so the distribution that matters is the *joint*
    one. This selector minimises the biased ``MMD^2`` between the chosen ``(x, y)`` pairs and
    the targets' joint distribution under

    ``K((x, y), (x', y')) = K_x(x, x') ((1 - gamma) + gamma [y = y'])``

    (``gamma`` = ``label_weight``; 0 gives ``mmd``). Targets have no labels: each target ``t``
    gets the kernel-weighted label distribution ``p_t`` of its ``neighbors`` nearest pool
    items (:func:`soft_labels`; ``neighbors=0`` uses the pool's label frequencies), so the
    target embedding is ``mean_t phi(t) (x) p_t``. The within-set term only counts same-label
    pairs, so choosing many items of one label is penalised by the objective itself: label
    balance (matched to the targets' estimated label mix) follows without quotas.

    Reference: SPEC §3 (the value side of ``W_0``), §5 (MMD selection); joint kernel mean
    embeddings of conditional distributions (Song, Fukumizu & Gretton 2013).

    Cost: ``O(n T d)`` for ``K_x(pool, targets)`` (as ``mmd``) plus ``O(n T L)`` for the label
    weighting, ``O(T^2 (d + L))`` for the trajectory constant, ``O(k n d)`` greedy steps.
    """

    name = "mmd-joint"
    shared = True
    needs = frozenset({"embeddings", "labels"})
    _param_names = ("kernel", "label_weight", "neighbors", "diversity", "median_samples")

    def __init__(self, *, kernel: str | Kernel = "gaussian", label_weight: float = 1.0,
                 neighbors: int = 16, diversity: float = 0.0, median_samples: int = 2000,
                 order: str | None = None, seed: int = 0, **kernel_params: Any) -> None:
        super().__init__(kernel=kernel, diversity=diversity, median_samples=median_samples,
                         order=order, seed=seed, **kernel_params)
        self.label_weight = _check_weight(label_weight, "label_weight")
        self.neighbors = check_int(neighbors, "neighbors", 0)

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        data, pool, tgt, kern = self._kernel_for(targets)
        assert data.labels is not None
        n = pool.shape[0]
        codes, n_lab = _label_codes(data.labels, pool.device)
        gam = self.label_weight
        f64 = torch.float64
        m = min(self.neighbors, n)
        gram_pool = kern.against(pool)
        # p_t [T, L] and the label-weighted row sums A[c, y] = sum_t K(c, t) p_t(y)
        p_t = torch.empty(targets.n, n_lab, dtype=f64, device=pool.device)
        a = torch.zeros(n, n_lab, dtype=f64, device=pool.device)
        for sl in row_chunks(targets.n, n):
            kt = _finite(gram_pool(tgt[sl]).to(f64), kern)                     # [R, n]
            if m > 0:
                vals, nb = topk_low_index(kt, m)
                p_t[sl] = soft_labels(vals, codes[nb], n_lab)
            else:
                p_t[sl] = torch.bincount(codes, minlength=n_lab).to(f64) / n
            a += kt.T @ p_t[sl]
        a /= targets.n
        r_x = a.sum(1)                                        # mean_t K(c, t): sum_y p_t = 1
        r = (1.0 - gam) * r_x + gam * a.gather(1, codes[:, None])[:, 0]
        ktt = kern(tgt, tgt).to(f64)
        const = float(((1.0 - gam) + gam * (p_t @ p_t.T)).mul(ktt).mean())

        def column(best: torch.Tensor) -> torch.Tensor:
            kb = gram_pool(pool[best]).to(f64)                               # [1, n]
            return kb * ((1.0 - gam) + gam * (codes[None] == codes[best][:, None]))

        chosen, traj = greedy_mmd_batch(r[None], kern.diag(pool), torch.tensor(
            [const], dtype=f64, device=pool.device), column, k, self.diversity,
            kernel_name=kern.name)
        return SelectionRun(chosen.cpu().numpy(), r[chosen].cpu().numpy(), traj.cpu().numpy())


class MMDLocalSelector(_KernelSelector):
    """Greedy MMD against each query's local joint distribution, per query.

    A single query point is a poor target: MMD to one point rewards concentrating on it
    (``mmd-query`` is kNN with a redundancy penalty). Here the target of query ``q`` is a
    mixture: weight ``query_weight`` on ``q`` itself and the rest spread evenly over its
    ``neighbors`` nearest pool items (its neighbourhood in the task's input distribution),
    each with its label. Under the joint kernel of ``mmd-joint``
    (``label_weight = gamma``; ``q``'s label distribution is the kernel-weighted vote of its
    neighbours) the chosen set matches the neighbourhood's inputs *and* its label mix. The
    greedy runs over the ``candidates`` pool items closest to ``q`` (shortlist, like
    ``mmd-query``); with ``neighbors=0`` or ``query_weight=1`` and ``label_weight=0`` it is
    ``mmd-query``. Default order ``"similarity"`` (most similar to the query last).

    Reference: SPEC §3, §5 (per-query targets; the joint input-label distribution behind
    ``W_0``).

    Cost: ``O(T n d)`` for ``K(pool, query)`` and the shortlist, ``O(T N^2 d)`` for the
    shortlist Gram matrices (``N = candidates``), ``O(T k N)`` greedy steps.

    Notes
    -----
    As for ``mmd-query``, the default bandwidth is the median heuristic over the pool and all
    queries of one ``select()`` call; pass ``bandwidth=...`` (or ``kernel=...``) to make a
    query's demonstrations independent of its batch (``mmd-query``'s Notes).
    """

    name = "mmd-local"
    needs = frozenset({"embeddings", "labels"})
    _param_names = ("kernel", "candidates", "neighbors", "query_weight", "label_weight",
                    "diversity", "median_samples")

    def __init__(self, *, kernel: str | Kernel = "gaussian", candidates: int = 50,
                 neighbors: int = 16, query_weight: float = 0.5, label_weight: float = 1.0,
                 diversity: float = 0.0, median_samples: int = 2000,
                 order: str | None = None, seed: int = 0, **kernel_params: Any) -> None:
        super().__init__(kernel=kernel, diversity=diversity, median_samples=median_samples,
                         order=order, seed=seed, **kernel_params)
        self.candidates = check_int(candidates, "candidates")
        self.neighbors = check_int(neighbors, "neighbors", 0)
        self.query_weight = _check_weight(query_weight, "query_weight")
        self.label_weight = _check_weight(label_weight, "label_weight")

    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        data, pool, tgt, kern = self._kernel_for(targets)
        assert data.labels is not None
        n, dim = pool.shape
        f64 = torch.float64
        codes, n_lab = _label_codes(data.labels, pool.device)
        gam = self.label_weight
        n_short = max(k, min(self.candidates, n))
        m = min(self.neighbors, n_short)
        wq = 1.0 if m == 0 else self.query_weight
        wn = 0.0 if m == 0 else (1.0 - wq) / m
        pool_diag = kern.diag(pool).to(f64)
        gram_pool = kern.against(pool)
        idx = np.empty((targets.n, k), dtype=np.int64)
        rel = np.empty((targets.n, k))
        traj = np.empty((targets.n, k))
        for sl in row_chunks(targets.n, n + 2 * n_short * (dim + n_short)):
            q = tgt[sl]
            kq = _finite(gram_pool(q), kern)                                   # [R, n]
            vals, short = topk_low_index(kq, n_short)             # descending: neighbours first
            vals = vals.to(f64)
            lab = codes[short]                                                 # [R, N]
            same = (lab[:, :, None] == lab[:, None, :]).to(f64)                # [R, N, N]
            joint = batched_gram(pool[short], kern).to(f64) * ((1.0 - gam) + gam * same)
            if m > 0:
                w = soft_labels(vals[:, :m], lab[:, :m], n_lab)                # [R, L]
                p_c = w.gather(1, lab)                                          # [R, N]
            else:
                w = torch.full((q.shape[0], n_lab), 1.0 / n_lab, dtype=f64, device=q.device)
                p_c = torch.full_like(vals, 1.0 / n_lab)
            lq = (1.0 - gam) + gam * p_c                                       # [R, N]
            r = wq * vals * lq + wn * joint[:, :, :m].sum(2)
            kqq = kern.diag(q).to(f64)
            const = (wq**2 * kqq * ((1.0 - gam) + gam * (w * w).sum(1))
                     + 2.0 * wq * wn * (vals[:, :m] * lq[:, :m]).sum(1)
                     + wn**2 * joint[:, :m, :m].sum((1, 2)))
            rows = torch.arange(q.shape[0], device=q.device)

            def column(best: torch.Tensor, joint: torch.Tensor = joint,
                       rows: torch.Tensor = rows) -> torch.Tensor:
                return joint[rows, :, best]

            chosen, tr = greedy_mmd_batch(r, pool_diag[short], const, column, k,
                                          self.diversity, kernel_name=kern.name)
            idx[sl] = short.gather(1, chosen).cpu().numpy()
            rel[sl] = vals.gather(1, chosen).cpu().numpy()
            traj[sl] = tr.cpu().numpy()
        return SelectionRun(idx, rel, traj)


class MMDKattSelector(MMDLocalSelector):
    """``mmd-local`` in the reading model's own attention space.

    The same objective as ``mmd-local``, on the representation the theory speaks of: keys and
    values (``[k | v]``, pre-RoPE, averaged over each text's tokens) of the attention heads
    where the demonstrations carry the most attention mass, under normalised ``K_att``
    (``attention-norm``). The heads are chosen automatically by tracing a few calibration
    prompts of the task on the model that will read the prompt (encoder spec ``"kv:auto"``,
    see :func:`icldistill.encoders.representations.choose_attention_heads`); the evaluation harness
    does this by itself (``preferred_encoder``). Given other embeddings it behaves as
    ``mmd-local`` with their kernel.

    Reference: SPEC §3 (``K_att``), §5.

    Cost: as ``mmd-local``, plus encoding the pool once with the model up to the chosen layer
    (cached) and tracing the calibration prompts.

    Notes
    -----
    As for ``mmd-query``, the default bandwidth is the median heuristic over the pool and all
    queries of one ``select()`` call; pass ``bandwidth=...`` (or ``kernel=...``) to make a
    query's demonstrations independent of its batch (``mmd-query``'s Notes).
    """

    name = "mmd-katt"
    preferred_encoder: ClassVar[str | None] = "kv:auto"

