"""Demonstration selection (SPEC §5): one interface, ``make_selector(name).fit(pool).select(...)``,
over the classic retrievers and the MMD family, and greedy MMD itself.

Modules, lowest first (each imports only those before it):

* :mod:`~icldistill.selection.pool`: :class:`Pool`, the items a selector works on;
* :mod:`~icldistill.selection.greedy`: the math, :func:`greedy_mmd` / :func:`select_mmd`
  (both return a :class:`GreedySelection`), :func:`label_quotas`,
  :func:`landmark_row_means`;
* :mod:`~icldistill.selection.index`: the candidate stage of per-query selectors,
  :class:`CandidateIndex` (exact, or faiss IVF / IVF-SQ8 / HNSW for large pools; their
  ``index=`` argument);
* :mod:`~icldistill.selection.base`: the :class:`Selector` interface, :class:`Selection` and
  the prompt orders :data:`ORDERS`;
* :mod:`~icldistill.selection.retrievers`: ``random``, ``knn`` (KATE), ``bm25``, ``mmr``,
  ``dpp``, ``vote-k`` and :func:`tokenize`;
* :mod:`~icldistill.selection.mmd`: ``mmd``, ``mmd-query``, ``mmd-balanced``, ``mmd-joint``,
  ``mmd-local``, ``mmd-katt`` and :func:`soft_labels`;
* :mod:`~icldistill.selection.registry`: :data:`SELECTORS`, :func:`make_selector`,
  :func:`selector_key` (the registry name of a name or alias) and :data:`DEFAULT_SELECTOR`
  (``knn``: what the CLI and the adapters use when no selector is named).

``icldistill.selection.selectors`` re-exports all of these for code written against 0.1.
No module here imports ``transformers``: selectors work on representation matrices and texts.
"""

from icldistill.selection.base import ORDERS, Selection, Selector
from icldistill.selection.greedy import (
    GreedySelection,
    LandmarkRowMeans,
    greedy_mmd,
    label_quotas,
    landmark_row_means,
    select_mmd,
)
from icldistill.selection.index import INDEX_KINDS, CandidateIndex
from icldistill.selection.mmd import (
    MMDBalancedSelector,
    MMDJointSelector,
    MMDKattSelector,
    MMDLocalSelector,
    MMDQuerySelector,
    MMDSelector,
    soft_labels,
)
from icldistill.selection.pool import Pool
from icldistill.selection.registry import (
    DEFAULT_SELECTOR,
    SELECTORS,
    make_selector,
    selector_key,
)
from icldistill.selection.retrievers import (
    BM25Selector,
    DPPSelector,
    KNNSelector,
    MMRSelector,
    RandomSelector,
    VoteKSelector,
    tokenize,
)

__all__ = [
    "DEFAULT_SELECTOR",
    "INDEX_KINDS",
    "ORDERS",
    "SELECTORS",
    "BM25Selector",
    "CandidateIndex",
    "DPPSelector",
    "GreedySelection",
    "KNNSelector",
    "LandmarkRowMeans",
    "MMDBalancedSelector",
    "MMDJointSelector",
    "MMDKattSelector",
    "MMDLocalSelector",
    "MMDQuerySelector",
    "MMDSelector",
    "MMRSelector",
    "Pool",
    "RandomSelector",
    "Selection",
    "Selector",
    "VoteKSelector",
    "greedy_mmd",
    "label_quotas",
    "landmark_row_means",
    "make_selector",
    "select_mmd",
    "selector_key",
    "soft_labels",
    "tokenize",
]
