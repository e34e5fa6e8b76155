"""Old flat import paths (``icldistill.kernels``, ``icldistill.harness`` ...) for one release.

The modules moved into subpackages (see ``ARCHITECTURE.md``). Importing an old path gives the
new module itself (the same object, so attributes and monkeypatches are shared) and a
:class:`DeprecationWarning` naming the new path. Removed in 0.3.

``icldistill.mmd`` is not aliased: at the top level that name is the function
:func:`icldistill.mmd`; the module is :mod:`icldistill.core.mmd`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {
    "icldistill.kernels": "icldistill.core.kernels",
    "icldistill.decomposition": "icldistill.core.decomposition",
    "icldistill.bounds": "icldistill.core.bounds",
    "icldistill.stats": "icldistill.core.stats",
    "icldistill.store": "icldistill.artifacts.store",
    "icldistill.prompts": "icldistill.data.prompts",
    "icldistill.representations": "icldistill.encoders.representations",
    "icldistill.harness": "icldistill.evaluation.harness",
    "icldistill.reports": "icldistill.reporting.reports",
    "icldistill.reporting.document": "icldistill.artifacts.document",
    "icldistill.synthetic": "icldistill.lab.synthetic",
    "icldistill.training": "icldistill.lab.training",
    "icldistill.demo": "icldistill.lab.demo",
    "icldistill.experiments": "icldistill.lab.experiments",
}


def _target(fullname: str) -> str | None:
    for old, new in MOVED.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old):]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        from icldistill.core.validation import warn_caller

        warn_caller(f"{spec.name} moved to {self.new}; import it from there "
                    "(the old path goes in 0.3)", DeprecationWarning)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:  # already executed under its new name
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        new = _target(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Put the alias finder on :data:`sys.meta_path` (idempotent)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
