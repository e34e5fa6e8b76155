"""The selector registry: :data:`SELECTORS` (every selector class by name) and
:func:`make_selector`. Register a new :class:`~icldistill.selection.base.Selector` subclass here;
the evaluation harness, the CLI (``--selectors``) and the adapters find it by name.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from icldistill.core.validation import InputError
from icldistill.selection import mmd, retrievers
from icldistill.selection.base import Selector

__all__ = ["DEFAULT_SELECTOR", "SELECTORS", "make_selector", "selector_key"]


SELECTORS: dict[str, type[Selector]] = {
    cls.name: cls
    for cls in (retrievers.RandomSelector, retrievers.KNNSelector, retrievers.BM25Selector,
                retrievers.MMRSelector, retrievers.DPPSelector, retrievers.VoteKSelector,
                mmd.MMDSelector, mmd.MMDQuerySelector, mmd.MMDBalancedSelector,
                mmd.MMDJointSelector, mmd.MMDLocalSelector, mmd.MMDKattSelector)
}
"""Selector classes by name."""

DEFAULT_SELECTOR = "knn"
"""The selector the CLI (``select``, ``evaluate``) and the adapters use when none is named.

``knn``, not an MMD-family selector, because that is what the paired evidence supports: in the
10-task selection grid (``benchmarks/results/selection-grid/``) no MMD-family selector beats kNN
on the mean over tasks, set-level ``mmd`` loses about 18 points to it on smollm2-135m at k = 8,
and the per-query ones (``mmd-query``, ``mmd-local``) tie it at best. Name a selector to use
another one.
"""

_SELECTOR_ALIASES = {"kate": "knn", "topk": "knn", "votek": "vote-k", "fast-votek": "vote-k",
                     "mmd-set": "mmd"}


def selector_key(name: str) -> str:
    """The registry name (a key of :data:`SELECTORS`) of a selector name or alias.

    Names are case-insensitive and ``_`` equals ``-``; ``kate`` and ``topk`` give ``"knn"``,
    ``votek`` and ``fast-votek`` ``"vote-k"``, ``mmd-set`` ``"mmd"``. An unknown name raises
    :class:`InputError` with the closest names.
    """
    if not isinstance(name, str):
        raise InputError(f"selector name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    key = _SELECTOR_ALIASES.get(key, key)
    if key not in SELECTORS:
        close = difflib.get_close_matches(key, [*SELECTORS, *_SELECTOR_ALIASES], n=3,
                                          cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise InputError(f"unknown selector {name!r}{hint} (choose one of "
                         f"{', '.join(SELECTORS)})")
    return key


def make_selector(name: str, **params: Any) -> Selector:
    """Build a selector by name (see :data:`SELECTORS`) with its parameters.

    Names are case-insensitive and ``_`` equals ``-`` (``"vote_k"``); aliases: ``kate`` and
    ``topk`` for ``knn``, ``votek`` for ``vote-k``. Unknown names or parameters raise
    :class:`InputError` (with the closest names).
    """
    key = selector_key(name)
    cls = SELECTORS[key]
    sig = inspect.signature(cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = set(params) - set(sig.parameters) - {"self"}
    if unknown and not takes_any:
        allowed = ", ".join(p for p in sig.parameters if p != "self")
        raise InputError(f"selector {key!r} got unknown parameter(s) {sorted(unknown)}; "
                         f"allowed: {allowed}")
    for name, value in params.items():      # a flag given as text ("False") would be truthy
        default = sig.parameters[name].default if name in sig.parameters else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise InputError(f"selector {key!r}: parameter {name} must be true or false, got "
                             f"{value!r}")
    return cls(**params)

