"""Result types: frozen dataclasses whose ``to_dict()`` is JSON-ready (one JSON cleaning,
``core.results.to_jsonable``)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil

import numpy as np
import torch

import icldistill
import icldistill as ic
from icldistill.core.results import Result, to_jsonable


def _public_dataclasses():
    for info in pkgutil.walk_packages(icldistill.__path__, "icldistill."):
        if info.name.startswith(("icldistill.adapters", "icldistill._compat")) \
                or info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name, None)
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) \
                    and obj.__module__ == mod.__name__:
                yield obj


def test_every_result_type_is_frozen_and_has_to_dict():
    results = [c for c in _public_dataclasses()
               if c.__name__.endswith(("Result", "Bound", "Complexity", "Check", "Comparison",
                                       "Selection", "Summary", "Metrics"))]
    assert len(results) >= 12
    for cls in results:
        assert cls.__dataclass_params__.frozen, cls
        assert callable(getattr(cls, "to_dict", None)), cls


def test_to_dict_is_json_ready():
    torch.manual_seed(0)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randn(30, 4, dtype=torch.float64) + 1
    res = ic.mmd_test(x, y, permutations=64, seed=0)
    d = res.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(res)}
    assert json.loads(json.dumps(d, allow_nan=False))["p_value"] == res.p_value
    assert isinstance(res, Result)


def test_to_jsonable_cleans_what_json_cannot_take():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        a: np.ndarray

    out = to_jsonable({"t": torch.tensor([1.0, float("inf")]), "n": np.float32(2.5),
                       "i": np.int64(3), "b": np.bool_(True), "inner": Inner(np.arange(2)),
                       "m": type("M", (), {"to_dict": lambda self: {"z": math.nan}})()})
    assert out == {"t": [1.0, None], "n": 2.5, "i": 3, "b": True, "inner": {"a": [0, 1]},
                   "m": {"z": None}}
    json.dumps(out, allow_nan=False)


def test_to_jsonable_cleans_what_to_dict_returns():
    """Regression: what an object's ``to_dict()`` returned was passed through as it was, so
    NaN, infinities and numpy values inside it reached the JSON writers (``NaN`` in a file)."""
    obj = type("M", (), {"to_dict": lambda self: {
        "z": math.nan, "inf": [np.float64(-math.inf)], "n": np.int32(4),
        "nested": type("N", (), {"to_dict": lambda self: {"a": np.array([1.5, np.nan])}})()}})()
    out = to_jsonable([obj])
    assert out == [{"z": None, "inf": [None], "n": 4, "nested": {"a": [1.5, None]}}]
    assert type(out[0]["n"]) is int
    json.dumps(out, allow_nan=False)
