"""The one selector interface: :class:`Selector` (``fit(pool)`` returns self, ``select(targets,
k)`` returns a :class:`Selection`), and the prompt orders every selector accepts.

Prompt order
------------
``Selection.indices[i]`` lists the demonstrations for target ``i`` in prompt order: index 0 is
the first demonstration, the last one sits next to the query. Every selector takes
``order=`` one of

* ``"similarity"``: ascending relevance to the target (the query, or for set-level selectors
  the target set as a whole), so the most relevant demonstration is last, next to the query;
* ``"selection"``: the order the algorithm picked them (greedy order; rank order for
  retrievers, most relevant first);
* ``"reverse"``: the selection order reversed;
* ``"random"``: a random permutation (seeded by the selector's ``seed``).

Adding a selector: subclass :class:`Selector`, implement ``_select(targets: PoolData, k) ->
SelectionRun`` (and optionally ``_fit(data: PoolData)``), then register the class in
:data:`icldistill.selection.registry.SELECTORS`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch

from icldistill.artifacts.store import to_jsonable
from icldistill.core.validation import InputError, check_int
from icldistill.selection._common import check_k, unit_rows
from icldistill.selection.pool import Pool, PoolData, as_pool, check_pool

if TYPE_CHECKING:  # Python 3.10 has no typing.Self
    from typing_extensions import Self

__all__ = ["ORDERS", "Selection", "SelectionRun", "Selector"]

ORDERS: tuple[str, ...] = ("similarity", "selection", "reverse", "random")
"""Prompt orders every selector accepts (``order=``); index 0 of a demonstration set is the
first demonstration, the last one sits next to the query. ``"similarity"``: ascending relevance
to the target (most relevant last); ``"selection"``: the order the algorithm picked them;
``"reverse"``: that order reversed; ``"random"``: a permutation seeded by ``seed``."""


@dataclass(frozen=True, eq=False)
class Selection:
    """Demonstrations chosen for every target.

    Attributes
    ----------
    indices : numpy.ndarray ``[n_targets, k]`` (int64)
        Pool rows per target, in prompt order: index 0 is the first demonstration, the last
        one sits next to the query.
    shared : bool
        True for set-level selectors: one set for all targets (all rows identical).
    selector : str
        Name of the selector that made it.
    seconds : float
        Wall time of ``select()``.
    mmd2 : numpy.ndarray or None
        The greedy ``MMD^2`` trajectory in selection order, for the MMD family: ``[k]`` for the
        set-level selectors, ``[n_targets, k]`` for ``mmd-query``; ``None`` otherwise.
    """

    indices: np.ndarray
    shared: bool
    selector: str
    seconds: float
    mmd2: np.ndarray | None = None

    def demo_set(self, i: int = 0) -> np.ndarray:
        """The ``k`` pool rows chosen for target ``i`` (prompt order), ``[k]``."""
        return self.indices[i]

    @property
    def k(self) -> int:
        """Number of demonstrations per target."""
        return int(self.indices.shape[1])

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-ready dict (arrays become nested lists)."""
        return to_jsonable({"selector": self.selector, "shared": self.shared, "k": self.k,
                            "seconds": self.seconds, "indices": self.indices,
                            "mmd2": self.mmd2})


class SelectionRun(NamedTuple):
    """What a selector's ``_select`` returns, before prompt ordering."""

    indices: np.ndarray            # [R, k] selection order (R = 1 for set-level selectors)
    relevance: np.ndarray | None   # [R, k] relevance of each chosen item to its target(s)
    mmd2: np.ndarray | None = None  # [R, k] greedy MMD^2 trajectory (MMD family)


class Selector(ABC):
    """Base class of every demonstration selector (scikit-learn style).

    ``fit(pool)`` validates and indexes the candidate pool and returns ``self``;
    ``select(targets, k)`` returns a :class:`Selection` with ``k`` demonstrations per target.
    Subclasses declare ``name``, ``needs`` (the :class:`Pool` fields they use: a subset of
    ``{"embeddings", "texts", "labels"}``), whether they are set-level (``shared``) and their
    default prompt order.

    Common parameters: ``order`` (one of :data:`ORDERS`, default per selector) and ``seed``
    (every random choice, including the ``"random"`` order, depends only on it).
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]]
    target_needs: ClassVar[frozenset[str]] = frozenset({"embeddings"})
    shared: ClassVar[bool] = False
    default_order: ClassVar[str] = "similarity"
    #: Representation the evaluation harness encodes the texts with for this selector when the
    #: unit asks for the default one (``None``: the unit's encoder).
    preferred_encoder: ClassVar[str | None] = None
    _param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, order: str | None = None, seed: int = 0) -> None:
        if order is not None and order not in ORDERS:
            raise InputError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
        self.order = order
        self.seed = check_int(seed, "seed", 0)
        self._data: PoolData | None = None

    # -- scikit-learn style plumbing
    def get_params(self) -> dict[str, Any]:
        """The constructor parameters of this selector."""
        return {p: getattr(self, p) for p in (*self._param_names, "order", "seed")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @property
    def n_pool(self) -> int:
        """Size of the fitted pool."""
        return self._fitted().n

    def _fitted(self) -> PoolData:
        if self._data is None:
            raise InputError(f"selector {self.name!r} is not fitted; call fit(pool) first")
        return self._data

    def _pool_needs(self) -> frozenset[str]:
        return self.needs

    # -- public API
    def fit(self, pool: Pool | Any) -> Self:
        """Validate and index the candidate pool; returns ``self``.

        ``pool`` is a :class:`Pool`, an array/tensor of embeddings ``[n, d]``, or a list of
        texts. Raises :class:`InputError` for an empty pool, NaN/inf, missing fields. The
        selector keeps its own copy of the pool's embeddings and labels: changing the caller's
        arrays after ``fit`` does not change its selections.
        """
        data = check_pool(as_pool(pool, "pool"), self._pool_needs(), "pool", self.name,
                          copy=True)                # a fitted selector owns its pool
        self._data = None
        self._fit(data)
        self._data = data
        return self

    def select(self, targets: Pool | Any, k: int) -> Selection:
        """Choose ``k`` demonstrations for every target.

        ``targets`` is a :class:`Pool` (or embeddings, or a list of texts) of the test
        inputs. Set-level selectors return one set, repeated for every target.
        """
        start = time.perf_counter()
        data = self._fitted()
        k = check_k(k)
        if k > data.n:
            raise InputError(f"k={k} is larger than the pool ({data.n} items)")
        tdata = check_pool(as_pool(targets, "targets"), self.target_needs, "targets",
                           self.name)
        if tdata.emb is not None and data.emb is not None:
            if tdata.emb.shape[1] != data.emb.shape[1]:
                raise InputError(f"dimension mismatch: pool embeddings have dimension "
                                 f"{data.emb.shape[1]}, targets have {tdata.emb.shape[1]}")
            if tdata.emb.device != data.emb.device:
                raise InputError(f"pool embeddings are on {data.emb.device} but targets on "
                                 f"{tdata.emb.device}")
        run = self._select(tdata, k)
        idx = self._ordered(run, tdata)
        if self.shared:
            idx = np.tile(idx[:1], (tdata.n, 1))
        mmd2 = run.mmd2
        if mmd2 is not None and self.shared:
            mmd2 = mmd2[0]
        return Selection(np.ascontiguousarray(idx, dtype=np.int64), self.shared, self.name,
                         time.perf_counter() - start, mmd2)

    # -- to implement
    def _fit(self, data: PoolData) -> None:  # noqa: B027 - optional hook
        """Index the pool (default: nothing beyond validation)."""

    @abstractmethod
    def _select(self, targets: PoolData, k: int) -> SelectionRun:
        """Indices ``[R, k]`` in selection order, their relevance and an optional trajectory."""

    # -- ordering
    def _ordered(self, run: SelectionRun, targets: PoolData) -> np.ndarray:
        order = self.order or self.default_order
        idx = run.indices
        if order == "selection":
            return idx
        if order == "reverse":
            return idx[:, ::-1]
        if order == "random":
            rng = np.random.default_rng(self.seed)
            perm = np.argsort(rng.random(idx.shape), axis=1)
            return np.take_along_axis(idx, perm, axis=1)
        rel = run.relevance
        if rel is None:
            rel = self._cosine_relevance(idx, targets)
        perm = np.argsort(rel, axis=1, kind="stable")   # ascending: most relevant last
        return np.take_along_axis(idx, perm, axis=1)

    def _cosine_relevance(self, idx: np.ndarray, targets: PoolData) -> np.ndarray:
        """Cosine of each chosen item to its query (or to the mean target direction)."""
        data = self._fitted()
        if data.emb is None or targets.emb is None:
            raise InputError(f"order='similarity' for selector {self.name!r} needs embeddings "
                             "of the pool and of the targets")
        pool = unit_rows(data.emb)
        tgt = unit_rows(targets.emb.to(pool.dtype))
        rows = torch.as_tensor(idx, device=pool.device)
        if self.shared:
            direction = tgt.mean(0)
            return (pool[rows] @ direction).cpu().numpy().astype(np.float64)
        return torch.einsum("tkd,td->tk", pool[rows], tgt).cpu().numpy().astype(np.float64)

