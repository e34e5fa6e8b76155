"""Adapters that put icldistill's demonstration selectors into prompt frameworks.

- :mod:`icldistill.adapters.langchain`:
  :class:`~icldistill.adapters.langchain.ICLDistillExampleSelector`, a LangChain
  ``BaseExampleSelector`` (for ``FewShotPromptTemplate(example_selector=...)``);
  needs ``pip install icldistill[langchain]``.
- :mod:`icldistill.adapters.dspy`: :class:`~icldistill.adapters.dspy.ICLDistillFewShot`, a DSPy
  teleprompter modelled on ``KNNFewShot``; needs ``pip install icldistill[dspy]``.

Importing this package imports neither framework: each submodule imports its framework when it
is itself imported (and names the extra to install when the framework is missing). The two
classes are also reachable here by name (``from icldistill.adapters import
ICLDistillFewShot``), which imports the matching submodule on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from icldistill.adapters.dspy import ICLDistillFewShot
    from icldistill.adapters.langchain import ICLDistillExampleSelector

__all__ = ["ICLDistillExampleSelector", "ICLDistillFewShot"]

_LAZY = {"ICLDistillExampleSelector": ".langchain", "ICLDistillFewShot": ".dspy"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
