"""Result records: every result type is a frozen dataclass with ``to_dict()`` (JSON-ready).

:class:`Result` gives a frozen dataclass its ``to_dict()``: each field through
:func:`to_jsonable` (tensors and arrays to lists, numpy scalars to Python numbers, non-finite
floats to ``None``, nested results to their dicts). :func:`to_jsonable` is the package's one JSON
cleaning; :func:`icldistill.artifacts.store.write_json` writes through it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Result", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """``obj`` with JSON types only.

    Tensors and arrays become (nested) lists, numpy scalars Python numbers, non-finite floats
    ``None``, paths strings, mappings dicts with string keys, objects with ``to_dict()`` what
    it returns (cleaned the same way, recursively) and other dataclasses their fields; anything
    else is returned as it is.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach"):  # torch.Tensor
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return obj


class Result:
    """Mixin of the package's result dataclasses: :meth:`to_dict`."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (see :func:`to_jsonable`)."""
        return {f.name: to_jsonable(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]
