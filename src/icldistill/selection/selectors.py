"""The 0.1 home of the selectors, kept as a re-export of :mod:`icldistill.selection` for one
release. Import from ``icldistill.selection`` (or its modules: ``pool``, ``greedy``, ``base``,
``retrievers``, ``mmd``, ``registry``) instead.
"""

from icldistill.selection import *  # noqa: F403
from icldistill.selection import __all__ as __all__
