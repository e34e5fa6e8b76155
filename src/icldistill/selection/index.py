"""The candidate stage of per-query selectors: exact top-``c`` search, or an approximate index.

Per-query selectors (``knn``, ``mmr``, ``dpp``, ``mmd-query``) first shortlist, for each query,
the pool items closest to it, then run their exact objective on that shortlist. On a pool of a
million items the shortlist is the expensive part (``O(T n d)``), so it can come from an
approximate nearest-neighbour index (faiss,
``pip install icldistill[faiss]``):

- ``"exact"``: blockwise matrix products and ``topk`` (no extra dependency; the reference);
- ``"ivf"``: inverted lists over k-means cells (``IndexIVFFlat``), ``nprobe`` cells searched per
  query; stores the vectors once more (``4 n d`` bytes);
- ``"ivf-sq8"``: the same with 8-bit scalar-quantised vectors (``n d`` bytes); the shortlist is
  re-scored exactly on the original embeddings by the selector;
- ``"hnsw"``: a hierarchical navigable small-world graph (``IndexHNSWFlat``): no training, slower
  to build, ``4 n d`` bytes plus the graph.

Scores are inner products on unit-normalised rows (``metric="cosine"``: kNN, MMR and DPP use
cosine similarity) or negated squared Euclidean distances (``metric="l2"``: the Gaussian,
Laplace and IMQ kernels decrease with the distance, so their largest ``K(c, q)`` are the nearest
items). Selectors always recompute the objective exactly on the shortlist; the index only
decides which items are on it.
"""

from __future__ import annotations

import math
from typing import Any, Self

import numpy as np
import torch

from icldistill.core.validation import InputError, check_int
from icldistill.selection._common import row_chunks, topk_low_index, unit_rows

__all__ = ["INDEX_KINDS", "CandidateIndex", "faiss_available", "indexed_shortlist", "make_index"]

INDEX_KINDS = ("exact", "ivf", "ivf-sq8", "hnsw")
METRICS = ("cosine", "l2")


def faiss_available() -> bool:
    """Whether faiss can be imported (``pip install icldistill[faiss]``)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss(kind: str) -> Any:
    try:
        import faiss
    except ImportError:
        raise InputError(f"index {kind!r} needs faiss: pip install 'icldistill[faiss]' "
                         "(or use index='exact')") from None
    return faiss


class CandidateIndex:
    """Top-``c`` candidates of each query among the pool rows (scikit-learn style).

    Parameters
    ----------
    kind : {"exact", "ivf", "ivf-sq8", "hnsw"}
        Exact search or a faiss index (see the module docstring).
    metric : {"cosine", "l2"}
        Inner product on unit rows, or (negated) squared Euclidean distance.
    nlist : int, optional
        IVF cells; default ``round(sqrt(n))`` clipped to ``[1, n // 39]``.
    nprobe : int
        IVF cells searched per query (default 32).
    hnsw_m, ef_construction, ef_search : int
        HNSW graph degree and search breadths.
    train_size : int, optional
        Rows the IVF k-means is trained on (default ``64 * nlist``, a seeded sample).
    seed : int
        Seed of the training sample and of faiss's k-means.

    Attributes
    ----------
    n, d : int
        Pool size and dimension after :meth:`fit`.
    """

    def __init__(self, kind: str = "ivf", *, metric: str = "cosine", nlist: int | None = None,
                 nprobe: int = 32, hnsw_m: int = 32, ef_construction: int = 80,
                 ef_search: int = 128, train_size: int | None = None, seed: int = 0) -> None:
        if kind not in INDEX_KINDS:
            raise InputError(f"unknown index {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        self.kind, self.metric = kind, metric
        self.nlist = None if nlist is None else check_int(nlist, "nlist")
        self.nprobe = check_int(nprobe, "nprobe")
        self.hnsw_m = check_int(hnsw_m, "hnsw_m")
        self.ef_construction = check_int(ef_construction, "ef_construction")
        self.ef_search = check_int(ef_search, "ef_search")
        self.train_size = None if train_size is None else check_int(train_size, "train_size")
        self.seed = int(seed)
        self._index: Any = None
        self._pool: torch.Tensor | None = None
        self.n = self.d = 0

    def __repr__(self) -> str:
        return f"CandidateIndex(kind={self.kind!r}, metric={self.metric!r}, n={self.n})"

    def clone(self) -> CandidateIndex:
        """An unfitted index with the same configuration (kind, metric and search settings)."""
        return CandidateIndex(self.kind, metric=self.metric, nlist=self.nlist,
                              nprobe=self.nprobe, hnsw_m=self.hnsw_m,
                              ef_construction=self.ef_construction, ef_search=self.ef_search,
                              train_size=self.train_size, seed=self.seed)

    def _prepare(self, x: Any) -> np.ndarray:
        t = torch.as_tensor(x).detach().to("cpu", torch.float32)
        if t.ndim != 2 or t.shape[0] < 1:
            raise InputError(f"index rows must be a non-empty [n, d] matrix, got {tuple(t.shape)}")
        if self.metric == "cosine":
            t = unit_rows(t)
        return np.ascontiguousarray(t.numpy())

    def fit(self, emb: Any) -> Self:
        """Index the pool rows ``emb`` ``[n, d]``; returns self."""
        x = self._prepare(emb)
        self.n, self.d = x.shape
        if self.kind == "exact":
            self._pool = torch.from_numpy(x)
            return self
        faiss = _faiss(self.kind)
        ip = self.metric == "cosine"
        mt = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.d, self.hnsw_m, mt)
            index.hnsw.efConstruction = self.ef_construction
            index.add(x)
            index.hnsw.efSearch = self.ef_search
        else:
            nlist = self.nlist or int(min(max(1, round(math.sqrt(self.n))),
                                          max(1, self.n // 39)))
            quantizer = faiss.IndexFlatIP(self.d) if ip else faiss.IndexFlatL2(self.d)
            if self.kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, self.d, nlist, mt)
            else:
                index = faiss.IndexIVFScalarQuantizer(quantizer, self.d, nlist,
                                                      faiss.ScalarQuantizer.QT_8bit, mt)
            index.cp.seed = self.seed
            size = min(self.n, self.train_size or 64 * nlist)
            rng = np.random.default_rng(self.seed)
            sample = x if size >= self.n else x[np.sort(rng.choice(self.n, size, replace=False))]
            index.train(sample)
            index.add(x)
            index.nprobe = min(self.nprobe, nlist)
        self._index = index
        return self

    def search(self, queries: Any, c: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``c`` best pool rows of each query.

        Parameters
        ----------
        queries : array-like ``[m, d]``
        c : int
            Candidates per query (at most the pool size).

        Returns
        -------
        scores : numpy.ndarray ``[m, c]`` float32
            Cosine similarity, or negated squared distance (``"l2"``), best first.
        indices : numpy.ndarray ``[m, c]`` int64
            Pool rows. An approximate index may return fewer than ``c`` real rows for a query;
            the missing ones are ``-1`` with score ``-inf``.
        """
        if self._index is None and self._pool is None:
            raise InputError("CandidateIndex.search before fit")
        c = min(check_int(c, "c"), self.n)
        q = self._prepare(queries)
        if q.shape[1] != self.d:
            raise InputError(f"queries have dimension {q.shape[1]}, the index {self.d}")
        if self._pool is not None:
            return self._exact(torch.from_numpy(q), c)
        scores, idx = self._index.search(q, c)
        if self.metric == "l2":
            scores = -scores
        scores[idx < 0] = -np.inf
        return scores.astype(np.float32), idx.astype(np.int64)

    def _exact(self, q: torch.Tensor, c: int) -> tuple[np.ndarray, np.ndarray]:
        pool = self._pool
        assert pool is not None
        vals = np.empty((q.shape[0], c), dtype=np.float32)
        idx = np.empty((q.shape[0], c), dtype=np.int64)
        for sl in row_chunks(q.shape[0], pool.shape[0]):
            s = q[sl] @ pool.T
            if self.metric == "l2":
                s = 2 * s - (pool * pool).sum(1) - (q[sl] * q[sl]).sum(1, keepdim=True)
            v, i = topk_low_index(s, c)
            vals[sl], idx[sl] = v.numpy(), i.numpy()
        return vals, idx


def _exact_rows(pool: torch.Tensor, queries: torch.Tensor, c: int, metric: str) -> np.ndarray:
    """Pool rows ``[m, c]`` of the ``c`` best items of each query, by brute force on ``pool`` as
    it is (no normalised copy of the pool: cosine ranks ``q . p / |p|``, L2 ranks
    ``2 q . p - |p|^2``)."""
    q = queries.to(pool.dtype)
    norms = pool.norm(dim=1) if metric == "cosine" else (pool * pool).sum(1)
    out = np.empty((q.shape[0], c), dtype=np.int64)
    for sl in row_chunks(q.shape[0], pool.shape[0]):
        s = q[sl] @ pool.T
        s = s / norms.clamp_min(torch.finfo(s.dtype).tiny) if metric == "cosine" else 2 * s - norms
        out[sl] = topk_low_index(s, c)[1].cpu().numpy()
    return out


def make_index(index: str | CandidateIndex | None, metric: str) -> CandidateIndex | None:
    """A selector's ``index`` argument as a new, unfitted :class:`CandidateIndex` or ``None``.

    A :class:`CandidateIndex` given is a configuration: the result is an unfitted
    :meth:`~CandidateIndex.clone` of it, never the object itself, so selectors sharing one
    index object each fit their own copy on their own pool (and the caller's object is never
    fitted or changed).
    """
    if index is None:
        return None
    if isinstance(index, CandidateIndex):
        if index.metric != metric:
            raise InputError(f"this selector shortlists by {metric!r}; the index given uses "
                             f"{index.metric!r}")
        return index.clone()
    if isinstance(index, str):
        return CandidateIndex(index, metric=metric)
    raise InputError(f"index must be a kind ({', '.join(INDEX_KINDS)}), a CandidateIndex or "
                     f"None, got {type(index).__name__}")


def indexed_shortlist(index: CandidateIndex, pool: torch.Tensor, queries: torch.Tensor,
                      c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``c`` candidates of each query from ``index`` and their exact scores.

    Parameters
    ----------
    index : CandidateIndex
        Fitted on ``pool``.
    pool : torch.Tensor ``[n, d]``
        The pool rows the index was built from (any scale; cosine re-normalises).
    queries : torch.Tensor ``[m, d]``
    c : int

    Returns
    -------
    scores : torch.Tensor ``[m, c]``
        Exact cosine similarity (``metric="cosine"``) or negated squared distance, in
        ``pool``'s dtype, best first.
    indices : torch.Tensor ``[m, c]`` int64
        Pool rows. Queries for which the approximate index found fewer than ``c`` rows are
        searched exactly instead, so every row is a real candidate.
    """
    _, idx = index.search(queries, c)
    short = (idx < 0).any(1)
    if short.any():
        idx[short] = _exact_rows(pool, queries[torch.from_numpy(short)], c, index.metric)
    ids = torch.from_numpy(idx).to(pool.device)
    rows = pool[ids]                                                    # [m, c, d]
    q = queries.to(pool.dtype)
    if index.metric == "cosine":
        scores = torch.einsum("mcd,md->mc", unit_rows(rows.reshape(-1, rows.shape[-1]))
                              .reshape(rows.shape), unit_rows(q))
    else:
        scores = -((rows - q[:, None, :]) ** 2).sum(-1)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return scores, ids.gather(1, order)
